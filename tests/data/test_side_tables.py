"""Item / user side tables on generic interaction tables, several features per item and user,
multi-valued features, the built-in ml-latest-small, and their bad input."""
from __future__ import annotations

import numpy as np
import pytest

from seqctr.cli import main
from seqctr.data import prepare
from tests.data.test_bad_input import assert_clean_error, run_cli
from tests.helpers import synthetic_interactions, write_csv


def side_tables(tmp_path, rows):
    items = sorted(set(rows["item"]))
    genres = {i: "|".join([f"g{i % 5}", f"g{(i * 7) % 5}"][: 1 + i % 2]) if i % 6 else "" for i in items}
    brand = {i: f"b{i % 3}" for i in items}
    users = sorted(set(rows["user"]))
    write_csv(tmp_path / "items.csv", {"item_key": items, "genres": [genres[i] for i in items],
                                       "brand": [brand[i] for i in items]})
    write_csv(tmp_path / "users.csv", {"user": users, "country": [f"c{u % 4}" for u in users],
                                       "tier": [u % 2 for u in users]})
    return genres, brand


def decode_item(ds, folder, i):
    """Raw (brand, sorted genres) of item id ``i`` read back from the prepared tables."""
    names = ds.meta.item_features
    gv, bv = ds.raw_vocab(folder, "genres"), ds.raw_vocab(folder, "brand")
    g = sorted(gv[v - 2] for v, n in zip(ds.item_feats[i], names) if n == "genres" and v >= 2)
    b = [bv[v - 2] for v, n in zip(ds.item_feats[i], names) if n == "brand" and v >= 2]
    return b, g


def test_item_and_user_side_tables(tmp_path, seqctr_home, capsys):
    rows = synthetic_interactions(n_users=15, seed=8)
    genres, brand = side_tables(tmp_path, rows)
    src = write_csv(tmp_path / "t.csv", rows)
    code, out, _ = run_cli(["prepare", str(src), "--label-column", "label", "--columns", "item_features=category",
                            "--items", str(tmp_path / "items.csv"), "--item-key", "item_key",
                            "--multi-valued", "genres", "--users", str(tmp_path / "users.csv")], capsys)
    assert code == 0
    ds, folder, cached = prepare(str(src), label={"column": "label"}, columns={"item_features": ["category"]},
                                 items={"path": str(tmp_path / "items.csv"), "key": "item_key",
                                        "multi": {"genres": "|"}},
                                 users={"path": str(tmp_path / "users.csv")})
    assert cached, "the CLI options and the keywords describe the same cache"
    assert folder.name.startswith("t-table-v1-"), "a custom table's cache is named after it, not ml100k"
    names = ds.meta.item_features
    assert names[:2] == ["item_id", "category"] and names.count("genres") == 2 and names.count("brand") == 1
    vocab = ds.raw_vocab(folder, "item_id")
    for i in range(2, len(vocab) + 2):
        raw = int(vocab[i - 2])
        b, g = decode_item(ds, folder, i)
        assert b == [brand[raw]]
        assert g == sorted(x for x in genres[raw].split("|") if x)        # "" -> no values (all padding)
    assert ds.meta.user_features == ["user_id", "country", "tier"]
    uv, cv = ds.raw_vocab(folder, "user_id"), ds.raw_vocab(folder, "country")
    for u in np.flatnonzero(ds.user_feats[:, 0] >= 2):        # users with a training sample
        raw = int(uv[ds.user_feats[u, 0] - 2])
        assert cv[ds.user_feats[u, 1] - 2] == f"c{raw % 4}"


def test_multi_valued_pooling_is_a_padding_safe_mean():
    import torch

    from seqctr.nn.embedding import FeatureEmbedding

    emb = FeatureEmbedding({"item_id": 10, "genres": 8, "user_id": 5}, ["user_id"],
                           ["item_id", "genres", "genres", "genres"], dim=4, init_std=1.0)
    x = torch.tensor([[3, 2, 5, 0], [3, 5, 2, 0], [3, 0, 0, 0], [4, 7, 7, 6]])
    out = emb.items(x).reshape(4, 2, 4)
    g = emb.tables["genres"].weight
    torch.testing.assert_close(out[0, 1], (g[2] + g[5]) / 2)
    torch.testing.assert_close(out[0], out[1]), "order of values does not matter"
    assert torch.equal(out[2, 1], torch.zeros(4)), "no values -> zero vector"
    torch.testing.assert_close(out[3, 1], (2 * g[7] + g[6]) / 3)
    torch.testing.assert_close(out[:, 0], emb.tables["item_id"].weight[x[:, 0]])
    assert emb.item_dim == 8
    out.sum().backward()
    assert emb.tables["genres"].weight.grad[0].abs().sum() == 0, "padding gets no gradient"


def test_ml_latest_small_is_built_in(tmp_path, capsys, monkeypatch):
    """Protocol mlls-seqctr v1 on the shipped files: the counts the protocol document states."""
    import json

    from seqctr.data.builtin import ml_latest_small

    folder = ml_latest_small()
    assert "Usage License" in (folder / "README.txt").read_text(), "the licence travels with the data"
    monkeypatch.setenv("SEQCTR_HOME", str(tmp_path / "h"))
    assert main(["prepare", "ml-latest-small", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["train"]["rows"], s["valid"]["rows"], s["test"]["rows"]) == (80178, 10024, 10024)
    assert s["test"]["buckets"] == {"[1,50)": 742, "[50,100)": 975, "[100,200)": 1641, "[200,inf)": 6666}
    assert s["protocol"] == "mlls-seqctr-v1"


@pytest.mark.parametrize("name", ["din", "dien", "sim", "eta", "sdim", "twin", "hstu"])
def test_mlls_configs_load(name):
    from pathlib import Path

    from seqctr.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs" / "mlls"
    for f, max_len in ((f"{name}.yaml", 200), (f"{name}_1000.yaml", 1000)):
        cfg = load_config(root / f)
        assert (cfg.data.source, cfg.model.name, cfg.data.max_len) == ("ml-latest-small", name, max_len)


def test_duplicate_side_table_key(tmp_path, seqctr_home, capsys):
    rows = synthetic_interactions(n_users=5, seed=1)
    write_csv(tmp_path / "items.csv", {"item": [7, 8, 9, 8], "genres": ["a", "b", "c", "d"]})
    src = write_csv(tmp_path / "t.csv", rows)
    code, _, err = run_cli(["prepare", str(src), "--label-column", "label", "--items", str(tmp_path / "items.csv")],
                           capsys)
    assert_clean_error(code, err, seqctr_home, "items.csv", "'item'", "row 4", "duplicate key '8'")


def test_side_table_missing_feature_column(tmp_path, seqctr_home, capsys):
    rows = synthetic_interactions(n_users=5, seed=1)
    write_csv(tmp_path / "items.csv", {"item": [7, 8], "genres": ["a", "b"]})
    src = write_csv(tmp_path / "t.csv", rows)
    code, _, err = run_cli(["prepare", str(src), "--label-column", "label", "--items", str(tmp_path / "items.csv"),
                            "--item-features", "brand"], capsys)
    assert_clean_error(code, err, seqctr_home, "items.csv", "'brand'", "missing column")


def test_analyze_data_takes_the_data_options(tmp_path, seqctr_home, capsys):
    rows = synthetic_interactions(n_users=8, seed=2)
    rows["click"] = rows.pop("label")
    src = write_csv(tmp_path / "t.csv", rows)
    code, out, err = run_cli(["analyze", "data", str(src), "--label-column", "click",
                              "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert (tmp_path / "a" / "data.json").is_file()
    assert np.isclose(sum(1 for _ in rows["user"]), len(rows["click"]))


def test_encode_matches_the_row_by_row_definition():
    """The vectorised encoder (distinct values only) equals the definition: known values sorted as
    strings get ids 2.., anything else the OOV id 1 — for ints, strings and None."""
    from seqctr.data.encode import encode

    rng = np.random.default_rng(3)
    cases = [rng.integers(0, 50, 400), np.array([f"i{x}" for x in rng.integers(0, 50, 400)], dtype=object),
             np.array([None, "a", "b", "a", "", None, "10", "9"] * 5, dtype=object)]
    for raw in cases:
        known = rng.random(len(raw)) < 0.7
        ids, vocab = encode(raw, known)
        s = ["" if v is None else str(v) for v in raw]
        want_vocab = sorted({x for x, k in zip(s, known) if k})
        assert list(vocab) == want_vocab
        index = {v: i + 2 for i, v in enumerate(want_vocab)}
        assert ids.tolist() == [index.get(x, 1) for x in s]
