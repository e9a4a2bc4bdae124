"""The sample construction against a brute-force reference, vocabularies, caching, real fixtures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqctr.data import prepare
from seqctr.data.encode import OOV
from seqctr.errors import InputError
from seqctr.data.stats import split_summary

from tests.helpers import shared_path, synthetic_interactions, write_csv


def brute_force_samples(rows, valid_frac=0.1, test_frac=0.1, min_history=1):
    """Per-sample tuples (user, target, history tuple, label, seq_len, split) built the slow way."""
    by_user = {}
    for u, i, t, y in zip(rows["user"], rows["item"], rows["timestamp"], rows["label"]):
        by_user.setdefault(u, []).append((t, i, y))
    out = []
    for u in sorted(by_user, key=lambda x: int(x) if str(x).isdigit() else x):
        ev = sorted(by_user[u], key=lambda e: (e[0], e[1]))
        samples = list(range(min_history, len(ev)))
        n = len(samples)
        n_test = min(n, max(1, round(test_frac * n))) if n else 0
        n_valid = min(n - n_test, max(1, round(valid_frac * n))) if n else 0
        for k, i in enumerate(samples):
            split = 0 if k < n - n_test - n_valid else 1 if k < n - n_test else 2
            out.append((u, ev[i][1], tuple(e[1] for e in ev[:i]), float(ev[i][2]), i, split))
    return out


def decode(ds, vocab_items):
    """Same tuples from the prepared dataset (item ids mapped back to raw values; OOV -> None)."""
    inv = {k + 2: v for k, v in enumerate(vocab_items)}
    out = []
    for s in range(len(ds.sample_pos)):
        u, pos = ds.sample_user[s], ds.sample_pos[s]
        seq = ds.seq_items[ds.offsets[u]:ds.offsets[u + 1]]
        out.append((seq[pos], tuple(seq[:pos]), float(ds.label[s]), int(pos), int(ds.split[s])))
    return out, inv


def test_construction_matches_brute_force(tmp_path):
    rows = synthetic_interactions(n_users=25, seed=3)
    path = write_csv(tmp_path / "t.csv", rows)
    ds, folder, cached = prepare(str(path), label={"column": "label"}, home=tmp_path / "h")
    assert not cached
    ref = brute_force_samples(rows)
    assert len(ref) == len(ds.sample_pos)
    got, inv = decode(ds, ds.raw_vocab(folder, "item_id"))
    for (u, tgt, hist, y, L, split), (g_tgt, g_hist, g_y, g_L, g_split) in zip(ref, got):
        assert (L, y, split) == (g_L, g_y, g_split)
        # known ids decode to the raw id; OOV only for items never seen by training
        assert inv.get(int(g_tgt), None) in (str(tgt), None)
        assert len(g_hist) == len(hist)
        assert all(inv.get(int(a)) in (str(b), None) for a, b in zip(g_hist, hist))


def test_oov_only_for_items_unseen_in_training(tmp_path):
    rows = synthetic_interactions(n_users=10, seed=1)
    # an item that appears only as the very last event of one user -> test target, never in training
    rows["user"].append(100); rows["item"].append(99999); rows["timestamp"].append(3_000_000)
    rows["label"].append(1); rows["category"].append("new"); rows["age"].append("20")
    ds, folder, _ = prepare(str(write_csv(tmp_path / "t.csv", rows)), label={"column": "label"},
                            home=tmp_path / "h")
    vocab = ds.raw_vocab(folder, "item_id")
    assert "99999" not in set(vocab.tolist())
    u = 0  # user 100 sorts first
    last = ds.seq_items[ds.offsets[u + 1] - 1]
    assert last == OOV
    train = ds.indices("train")
    tgt = ds.seq_items[ds.offsets[ds.sample_user[train]] + ds.sample_pos[train]]
    assert (tgt >= 2).all(), "every training target is in the vocabulary"
    assert ds.seq_items.min() >= 1, "0 is reserved for padding"


def test_string_ids_and_date_timestamps(tmp_path):
    rows = synthetic_interactions(n_users=8, string_ids=True, seed=2)
    import datetime as dt
    rows["timestamp"] = [dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                         for t in rows["timestamp"]]
    ds, _, _ = prepare(str(write_csv(tmp_path / "s.csv", rows)), label={"column": "label"}, home=tmp_path / "h")
    ref = brute_force_samples(synthetic_interactions(n_users=8, string_ids=True, seed=2))
    assert len(ds.sample_pos) == len(ref)
    assert sorted(ds.sample_pos.tolist()) == sorted(r[4] for r in ref)


def test_timestamp_columns_read_as_ints_and_refuse_non_dates_by_row():
    import pyarrow as pa

    from seqctr.data.columns import read_times

    got = read_times(pa.array(["2020-01-01", "2020-01-01T00:00:10Z"]), Path("t.csv"), "ts")
    assert got.tolist() == [1577836800, 1577836810]
    assert read_times(pa.array(["17", "+5", "-3"]), Path("t.csv"), "ts").tolist() == [17, 5, -3]
    assert read_times(pa.array(["17", "2020-01-01"]), Path("t.csv"), "ts").tolist() == [17, 1577836800]
    assert read_times(pa.array([3.9, 4.0]), Path("t.csv"), "ts").tolist() == [3, 4]
    for bad, row in ([["2020-01-01", ""], 2], [["2020-01-01", "2020-01-02", "soon"], 3]):
        with pytest.raises(InputError, match=f"file t.csv, column 'ts', row {row}: timestamp is") as e:
            read_times(pa.array(bad), Path("t.csv"), "ts")
        assert repr(bad[row - 1]) in str(e.value)


def test_second_run_uses_cache(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "t.csv", synthetic_interactions())
    ds1, f1, c1 = prepare(str(path), label={"column": "label"}, home=tmp_path / "h")
    import seqctr.data.construct as P

    def boom(*a, **k):
        raise AssertionError("preprocessing ran again")

    monkeypatch.setattr(P, "build_dataset", boom)
    ds2, f2, c2 = prepare(str(path), label={"column": "label"}, home=tmp_path / "h")
    assert (c1, c2) == (False, True) and f1 == f2
    np.testing.assert_array_equal(ds1.seq_items, ds2.seq_items)
    # a changed source is a new cache key
    rows = synthetic_interactions(seed=5)
    write_csv(path, rows)
    monkeypatch.undo()
    _, f3, c3 = prepare(str(path), label={"column": "label"}, home=tmp_path / "h")
    assert f3 != f1 and not c3


def test_split_rule_is_configurable(tmp_path):
    path = write_csv(tmp_path / "t.csv", synthetic_interactions(seed=4))
    ds, _, _ = prepare(str(path), label={"column": "label"}, split={"valid_frac": 0.2, "test_frac": 0.2,
                                                                     "min_history": 0}, home=tmp_path / "h")
    ref = brute_force_samples(synthetic_interactions(seed=4), 0.2, 0.2, 0)
    assert [r[5] for r in ref] == ds.split.tolist()
    assert ds.sample_pos.min() == 0  # empty histories kept when min_history = 0


def test_taobao_userbehavior_head_real_fixture(tmp_path):
    """The real Taobao head (no header; behaviour strings) through the generic table path."""
    path = shared_path("data", "taobao-userbehavior-head", "UserBehavior_head.csv")
    cols = {"names": ["user", "item", "category", "behavior", "timestamp"], "category": "category"}
    ds, _, _ = prepare(str(path), columns=cols, label={"column": "behavior", "positive": ["buy", "cart", "fav"]},
                       home=tmp_path / "h")
    # SOURCE.md: 43 users, 4,321 rows, 4,278 protocol-style samples, [1,50) 43.1%, >=200 10.8%
    assert ds.meta.n_users == 43 and ds.meta.n_events == 4321
    assert len(ds.sample_pos) == 4278
    s = split_summary(ds)
    n = {k: sum(s[sp]["buckets"][k] for sp in ("train", "valid", "test")) for k in s["train"]["buckets"]}
    assert round(100 * n["[1,50)"] / 4278, 1) == 43.1
    assert round(100 * n["[200,inf)"] / 4278, 1) == 10.8
    raw = np.loadtxt(path, delimiter=",", dtype=str)
    first_pos = {u: i for i, u in reversed(list(enumerate(raw[:, 0])))}
    # label rate of samples == rate over non-first events of each user
    mask = np.ones(len(raw), bool)
    mask[list(first_pos.values())] = False
    assert ds.label.mean() == pytest.approx(np.isin(raw[mask, 3], ["buy", "cart", "fav"]).mean())


def test_dataset_meta_is_typed_and_round_trips_through_its_dict(synth_ds, tmp_path):
    """``meta`` is a :class:`DatasetMeta`; its dict form (meta.json, checkpoints, bundles) reads back
    equal, a key of a newer layout is kept, and a saved dataset reopens with the same meta."""
    from seqctr.data import DatasetMeta, SeqDataset

    m = synth_ds.meta
    assert isinstance(m, DatasetMeta) and m.has_time == synth_ds.has_time
    assert m.batch_user_features == m.user_features + m.context_features
    assert DatasetMeta.from_dict(m.to_dict()) == m
    newer = DatasetMeta.from_dict({**m.to_dict(), "shard_count": 4})
    assert newer.extra == {"shard_count": 4} and newer.to_dict()["shard_count"] == 4
    synth_ds.save(tmp_path / "again")
    assert SeqDataset.load(tmp_path / "again").meta == m
