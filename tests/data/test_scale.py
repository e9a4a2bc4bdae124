"""Preparation at scale: the fast paths give exactly what the simple ones give.

- ``event_order`` == a stable ``lexsort`` by (user, timestamp, item), ties included, on the packed
  key path and on the lexsort fallback; ``None`` for input already in order;
- ``int_unique_inverse`` == ``np.unique(return_inverse=True)`` (lookup-table and sort paths);
- a table read in record batches of any size == read in one; a folder of parquet parts == the
  same rows in one file; time-ordered rows == user-grouped rows (same prepared arrays);
- a bad row in a later batch / part is named by its file and its row in that file;
- prepared arrays open memory-mapped and batch exactly as in-memory ones.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.data import BatchLoader, SeqDataset, SplitRule, build_dataset, prepare, read_table
from seqctr.data.construct import event_order
from seqctr.data.dataset import ARRAYS
from seqctr.data.encode import int_unique_inverse
from seqctr.errors import InputError
from tests.helpers import synthetic_interactions, write_csv


def reference_order(u, t, i):
    return np.lexsort((np.arange(len(u)), i, t, u))


@pytest.mark.parametrize("t_range", [5, 10**6, 2**61])   # many ties / few ties / too wide to pack
def test_event_order_is_a_stable_lexsort(t_range):
    rng = np.random.default_rng(t_range % 1000)
    n = 5000
    u = rng.integers(0, 40, n) * 1000 + 7
    t = rng.integers(0, t_range, n)
    i = rng.integers(0, 3, n)                 # duplicates of (user, ts, item) too: input order decides
    got = event_order(u, t, i)
    assert got is not None
    np.testing.assert_array_equal(got, reference_order(u, t, i))
    s = reference_order(u, t, i)
    assert event_order(u[s], t[s], i[s]) is None          # already in order: no sort at all


def test_int_unique_inverse_matches_numpy():
    rng = np.random.default_rng(0)
    for raw in (rng.integers(-50, 500, 3000), rng.integers(0, 2**40, 3000), np.array([7]), np.array([5, 5, 5])):
        values, inv = int_unique_inverse(raw)
        ref_v, ref_inv = np.unique(raw, return_inverse=True)
        np.testing.assert_array_equal(values, ref_v)
        np.testing.assert_array_equal(inv, ref_inv.reshape(-1))
        assert inv.dtype == np.int32


def _table(seed=0, n_users=25):
    rows = synthetic_interactions(n_users=n_users, seed=seed)
    return pa.table({k: rows[k] for k in ("user", "item", "timestamp", "label", "category")})


def _same_dataset(a: SeqDataset, b: SeqDataset):
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.meta.vocab_sizes == b.meta.vocab_sizes


def test_batch_size_does_not_change_the_result(tmp_path):
    p = tmp_path / "t.parquet"
    pq.write_table(_table(), p, row_group_size=100)
    cols = {"category": "category"}
    whole = read_table(p, cols, batch_rows=1 << 20)
    small = read_table(p, cols, batch_rows=7)
    for k in ("user", "item", "timestamp", "label"):
        np.testing.assert_array_equal(getattr(whole, k), getattr(small, k))
    np.testing.assert_array_equal(whole.item_features["category"], small.item_features["category"])
    rule = SplitRule()
    _same_dataset(build_dataset(whole, rule, "t"), build_dataset(small, rule, "t"))


def test_parts_folder_and_time_order_equal_one_user_grouped_file(tmp_path, seqctr_home):
    t = _table(seed=3)
    one = tmp_path / "one.parquet"
    pq.write_table(t, one)
    by_time = t.take(np.argsort(t.column("timestamp").to_numpy(), kind="stable"))
    parts = tmp_path / "parts"
    parts.mkdir()
    cuts = [0, 100, 101, by_time.num_rows // 2, by_time.num_rows]
    for k in range(4):
        pq.write_table(by_time.slice(cuts[k], cuts[k + 1] - cuts[k]), parts / f"part-{k:03d}.parquet")
    a, _, _ = prepare(str(one))
    b, folder, _ = prepare(str(parts))
    _same_dataset(a, b)
    assert folder.name.startswith("parts-table-v1-")


def test_bad_row_in_a_later_batch_names_its_row(tmp_path):
    rows = synthetic_interactions(n_users=8, seed=1)
    rows["timestamp"] = [float(x) for x in rows["timestamp"]]
    bad = 57
    rows["timestamp"][bad] = float("nan")
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table({k: rows[k] for k in ("user", "item", "timestamp", "label")}), p)
    with pytest.raises(InputError) as e:
        read_table(p, batch_rows=10)
    assert e.value.row == bad + 1 and e.value.column == "timestamp" and str(p) in str(e.value)


def test_bad_row_in_a_part_names_that_part(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    good = _table(seed=4, n_users=6)
    pq.write_table(good, parts / "part-000.parquet")
    labels = good.column("label").to_numpy().astype(float)
    labels[4] = 3.0
    pq.write_table(good.set_column(good.schema.get_field_index("label"), "label", pa.array(labels)),
                   parts / "part-001.parquet")
    with pytest.raises(InputError) as e:
        read_table(parts)
    assert e.value.path == parts / "part-001.parquet" and e.value.row == 5 and e.value.column == "label"


def test_csv_streams_like_parquet(tmp_path):
    rows = synthetic_interactions(n_users=12, seed=5)
    c = write_csv(tmp_path / "t.csv", rows)
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table(rows), p)
    a, b = read_table(c), read_table(p, batch_rows=13)
    for k in ("user", "item", "timestamp", "label"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_memory_mapped_dataset_batches_like_in_memory(synth_ds, tmp_path):
    synth_ds.save(tmp_path / "ds")
    mm = SeqDataset.load(tmp_path / "ds")
    ram = SeqDataset.load(tmp_path / "ds", mmap=False)
    assert isinstance(mm.seq_items, np.memmap) and not isinstance(ram.seq_items, np.memmap)
    assert not mm.seq_items.flags.writeable
    a = BatchLoader(mm, "train", max_len=20, batch_size=16, shuffle=True, seed=1)
    b = BatchLoader(ram, "train", max_len=20, batch_size=16, shuffle=True, seed=1)
    for x, y in zip(a, b):
        for f in ("user", "target", "hist", "mask", "seq_len", "label", "user_index"):
            assert torch_equal(getattr(x, f), getattr(y, f)), f


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
