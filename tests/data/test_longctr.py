"""LongCTR / FuxiCTR parquet: a fixture in that exact layout read back field by field, the export ->
read round trip, a model trained on its features, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.cli import main
from seqctr.data import BatchLoader, prepare
from seqctr.data.longctr import N_BINS
from tests.data.test_bad_input import assert_clean_error, run_cli
from tests.helpers import synthetic_interactions, write_csv

N_USERS, N_ITEMS, P = 7, 30, 5


def write_longctr(folder, seed=0):
    """A small LongCTR folder: per-user sequences, an item table with a categorical, a multi-valued
    (sequence), a numeric and a pre-trained embedding feature, samples with a user-level feature
    (constant per user), a context feature (varying) and the label ``is_click``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seqs = [rng.integers(1, N_ITEMS, rng.integers(3, 25)).tolist() for _ in range(N_USERS)]
    pq.write_table(pa.table({"full_item_seq": seqs}), folder / "user_info.parquet")
    tags = [rng.integers(1, 9, rng.integers(0, 4)).tolist() for _ in range(N_ITEMS)]
    items = {"item_index": np.arange(N_ITEMS), "cate_id": rng.integers(1, 6, N_ITEMS), "tags": tags,
             "price": rng.random(N_ITEMS) * 100,
             "item_emb": [rng.standard_normal(P).astype(np.float32).tolist() for _ in range(N_ITEMS)]}
    items["cate_id"][0] = 0
    pq.write_table(pa.table(items), folder / "item_info.parquet")
    splits = {}
    for k, split in enumerate(("train", "valid", "test")):
        n = 40 if split == "train" else 12
        u = rng.integers(0, N_USERS, n)
        sl = np.array([rng.integers(0, len(seqs[x]) + 1) for x in u])
        cols = {"user_index": u, "item_index": rng.integers(1, N_ITEMS, n), "seq_len": sl,
                "is_click": rng.integers(0, 2, n), "user_gender": (u % 2) + 1, "hour": rng.integers(1, 24, n)}
        pq.write_table(pa.table(cols), folder / f"{split}.parquet")
        splits[split] = cols
    fmap = {"dataset_id": "tiny", "labels": ["is_click"], "features": [
        {"user_gender": {"source": "user", "type": "categorical", "vocab_size": 3}},
        {"hour": {"source": "context", "type": "categorical", "vocab_size": 25}},
        {"cate_id": {"source": "item", "type": "categorical", "vocab_size": 6}},
        {"tags": {"source": "item", "type": "sequence", "vocab_size": 9, "max_len": 3}},
        {"price": {"source": "item", "type": "numeric"}},
        {"item_emb": {"source": "item", "type": "embedding", "pretrain_dim": P}},
        {"user_index": {"type": "meta"}}, {"item_index": {"type": "meta"}}, {"seq_len": {"type": "meta"}}]}
    (folder / "feature_map.json").write_text(json.dumps(fmap))
    return seqs, items, splits


def test_reads_the_layout_field_by_field(tmp_path):
    seqs, items, splits = write_longctr(tmp_path / "lc")
    ds, folder, cached = prepare(str(tmp_path / "lc"), home=tmp_path / "h")
    assert folder.name.startswith("lc-longctr-v1-") and not cached
    # histories and samples exactly as given, splits as given
    for u, s in enumerate(seqs):
        assert ds.seq_items[ds.offsets[u]:ds.offsets[u + 1]].tolist() == s
    for k, split in enumerate(("train", "valid", "test")):
        idx = ds.indices(split)
        c = splits[split]
        assert ds.sample_user[idx].tolist() == c["user_index"].tolist()
        assert ds.sample_target[idx].tolist() == c["item_index"].tolist()
        assert ds.sample_pos[idx].tolist() == c["seq_len"].tolist()
        assert ds.label[idx].tolist() == c["is_click"].astype(float).tolist()
    # user_gender is constant per user -> a user feature; hour varies -> a per-sample context feature
    assert ds.meta.user_features == ["user_gender"] and ds.meta.context_features == ["hour"]
    all_hour = np.concatenate([splits[s]["hour"] for s in ("train", "valid", "test")])
    assert ds.context_feats[:, 0].tolist() == all_hour.tolist()
    # item table: id, category, 3 tag columns (0-padded, values as given), price bins; vectors frozen apart
    names = ds.meta.item_features
    assert names == ["item_id", "cate_id", "tags", "tags", "tags", "price"]
    assert not ds.item_feats[0].any() and not ds.pretrained["item_emb"][0].any(), "index 0 is padding"
    assert ds.item_feats[1:, 1].tolist() == items["cate_id"][1:].tolist()
    for i, t in enumerate(items["tags"][1:], start=1):
        row = ds.item_feats[i, 2:5]
        assert row[:len(t)].tolist() == t and not row[len(t):].any()
    bins = ds.item_feats[1:, 5]
    assert bins.min() >= 2 and bins.max() <= N_BINS + 1
    order = np.argsort(items["price"][1:])
    assert (np.diff(bins[order]) >= 0).all(), "bins follow the numeric order"
    np.testing.assert_allclose(ds.pretrained["item_emb"][1:], np.array(items["item_emb"])[1:], rtol=0, atol=0)
    assert ds.vocab_sizes["tags"] == 9 and ds.vocab_sizes["price"] == N_BINS + 2
    # a batch gathers user + context columns and the candidate's features
    b = next(iter(BatchLoader(ds, "test", max_len=8, batch_size=64, shuffle=False, bucket=False)))
    assert b.user.shape[1] == 2 and b.target.shape[1] == len(names)
    assert b.target[:, 0].tolist() == splits["test"]["item_index"].tolist()


def test_model_trains_on_multi_valued_and_pretrained_features(tmp_path):
    import torch

    from seqctr.config import load_config
    from seqctr.training import Trainer

    write_longctr(tmp_path / "lc", seed=1)
    ds, _, _ = prepare(str(tmp_path / "lc"), home=tmp_path / "h")
    cfg = load_config(None, [f"data.source={tmp_path / 'lc'}", "model.name=twin", "data.max_len=16",
                             "data.batch_size=16", "train.epochs=1", "model.embedding_dim=8",
                             "model.options={topk: 4, short_seq_len: 4, attention_dim: 8}"])
    tr = Trainer(cfg, ds, tmp_path / "run", progress=False)
    emb = tr.model.embedding
    np.testing.assert_array_equal(emb.pretrained_item_emb.numpy(), ds.pretrained["item_emb"])
    assert emb.item_dim == (4 + 1) * 8        # item_id, cate_id, tags (pooled), price + the projected vector
    before = emb.pretrained_item_emb.clone()
    result = tr.fit(log=lambda m: None)
    assert np.isfinite(result["test"]["overall"]["logloss"])
    assert torch.equal(before, emb.pretrained_item_emb), "pre-trained vectors stay frozen"
    assert "embedding.pretrained_item_emb" in tr.model.state_dict(), "and travel with the weights"


def test_export_then_read_is_the_same_dataset(tmp_path):
    rows = synthetic_interactions(n_users=12, seed=6)
    genres = {i: "|".join(sorted({f"g{i % 4}", f"g{i % 3 + 4}"})[: 1 + i % 2]) for i in set(rows["item"])}
    write_csv(tmp_path / "items.csv", {"item": list(genres), "genres": list(genres.values())})
    src = write_csv(tmp_path / "t.csv", rows)
    a, _, _ = prepare(str(src), label={"column": "label"}, columns={"user_features": ["age"]},
                      items={"path": str(tmp_path / "items.csv"), "multi": {"genres": "|"}}, home=tmp_path / "h")
    code = main(["export-data", str(src), "--label-column", "label", "--columns", "user_features=age",
                 "--items", str(tmp_path / "items.csv"), "--multi-valued", "genres", "--out", str(tmp_path / "lc")])
    assert code == 0
    b, _, _ = prepare(str(tmp_path / "lc"), home=tmp_path / "h")
    assert_same_dataset(a, b)


def assert_same_dataset(a, b):
    """Identical histories, feature tables, vocabulary sizes and, per split in order, samples and labels."""
    for n in ("seq_items", "offsets", "item_feats", "user_feats"):
        np.testing.assert_array_equal(getattr(a, n), getattr(b, n), err_msg=n)
    assert a.meta.item_features == b.meta.item_features
    assert a.meta.user_features == b.meta.user_features
    assert a.vocab_sizes == b.vocab_sizes
    for s in ("train", "valid", "test"):
        ia, ib = a.indices(s), b.indices(s)
        for n in ("sample_user", "sample_pos", "sample_target", "label"):
            np.testing.assert_array_equal(getattr(a, n)[ia], getattr(b, n)[ib], err_msg=f"{s}.{n}")


def test_missing_feature_map(tmp_path, seqctr_home, capsys):
    write_longctr(tmp_path / "lc")
    (tmp_path / "lc" / "feature_map.json").unlink()
    code, _, err = run_cli(["prepare", str(tmp_path / "lc")], capsys)
    assert_clean_error(code, err, seqctr_home, "feature_map.json", "missing")


def test_sequence_column_that_is_not_a_list(tmp_path, seqctr_home, capsys):
    write_longctr(tmp_path / "lc")
    pq.write_table(pa.table({"full_item_seq": np.arange(N_USERS)}), tmp_path / "lc" / "user_info.parquet")
    code, _, err = run_cli(["prepare", str(tmp_path / "lc")], capsys)
    assert_clean_error(code, err, seqctr_home, "user_info.parquet", "'full_item_seq'", "expected a list")


def test_seq_len_beyond_the_sequence(tmp_path, seqctr_home, capsys):
    seqs, _, splits = write_longctr(tmp_path / "lc")
    c = dict(splits["valid"])
    c["seq_len"] = c["seq_len"].copy()
    c["seq_len"][3] = len(seqs[c["user_index"][3]]) + 1
    pq.write_table(pa.table(c), tmp_path / "lc" / "valid.parquet")
    code, _, err = run_cli(["prepare", str(tmp_path / "lc")], capsys)
    assert_clean_error(code, err, seqctr_home, "valid.parquet", "'seq_len'", "row 4", "exceeds")


@pytest.mark.parametrize("column,value,needle", [("cate_id", 6, "outside"), ("item_index", 3, "duplicate")])
def test_bad_item_table(tmp_path, seqctr_home, capsys, column, value, needle):
    _, items, _ = write_longctr(tmp_path / "lc")
    items[column] = items[column].copy()
    items[column][5] = value
    pq.write_table(pa.table(items), tmp_path / "lc" / "item_info.parquet")
    code, _, err = run_cli(["prepare", str(tmp_path / "lc")], capsys)
    assert_clean_error(code, err, seqctr_home, "item_info.parquet", needle)
