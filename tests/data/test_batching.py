"""Vectorised window gathering vs a per-sample reference; the length-bucketed sampler."""
from __future__ import annotations

import numpy as np
import pytest

from seqctr.data import BatchLoader, gather_batch, make_batches, padding_fraction
from seqctr.data.batching import gather_windows


def reference_window(seq_items, offsets, u, pos, max_len):
    hist = seq_items[offsets[u]:offsets[u] + pos]
    return list(hist[-max_len:]) if max_len > 0 else []


@pytest.mark.parametrize("max_len", [1, 5, 17, 1000])
def test_gather_windows_matches_reference(max_len):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 40, 12)
    offsets = np.r_[0, np.cumsum(counts)]
    seq_items = rng.integers(2, 500, offsets[-1]).astype(np.int32)
    users = rng.integers(0, 12, 64)
    pos = np.array([rng.integers(0, counts[u]) for u in users])
    items, mask = gather_windows(seq_items, offsets, users, pos, max_len)
    T = items.shape[1]
    assert T == min(pos.max(), max_len)
    for r, (u, p) in enumerate(zip(users, pos)):
        ref = reference_window(seq_items, offsets, u, p, max_len)
        n = len(ref)
        assert mask[r].sum() == n
        assert mask[r, T - n:].all() and not mask[r, :T - n].any(), "right-aligned, most recent last"
        assert items[r, T - n:].tolist() == ref
        assert (items[r, :T - n] == 0).all()


def test_gather_batch_fields(synth_ds):
    idx = synth_ds.indices("test")[:20]
    b = gather_batch(synth_ds, idx, max_len=7)
    assert b.hist.shape[:2] == b.mask.shape and b.hist.shape[2] == len(synth_ds.item_feature_names)
    assert b.seq_len.tolist() == synth_ds.sample_pos[idx].tolist()       # true length, not truncated
    assert b.mask.sum(1).tolist() == np.minimum(synth_ds.sample_pos[idx], 7).tolist()
    # target features are the item feature rows of the target ids
    tgt_ids = synth_ds.seq_items[synth_ds.offsets[synth_ds.sample_user[idx]] + synth_ds.sample_pos[idx]]
    assert b.target[:, 0].tolist() == tgt_ids.tolist()
    assert (b.hist[~b.mask] == 0).all()


@pytest.mark.parametrize("shuffle,bucket", [(True, True), (True, False), (False, True), (False, False)])
def test_batches_cover_each_sample_once(shuffle, bucket):
    lengths = np.random.default_rng(1).integers(0, 300, 1001)
    batches = make_batches(lengths, 64, shuffle=shuffle, bucket=bucket, chunk=4, rng=np.random.default_rng(2))
    allpos = np.concatenate(batches)
    assert sorted(allpos.tolist()) == list(range(1001))
    assert all(len(b) <= 64 for b in batches)


def test_bucketing_cuts_padding_and_fraction_is_exact():
    lengths = np.random.default_rng(3).integers(1, 400, 5000)
    plain = make_batches(lengths, 100, shuffle=True, bucket=False, rng=np.random.default_rng(0))
    bucketed = make_batches(lengths, 100, shuffle=True, bucket=True, chunk=10, rng=np.random.default_rng(0))
    brute = 1 - sum(lengths[b].sum() for b in bucketed) / sum(len(b) * lengths[b].max() for b in bucketed)
    assert padding_fraction(lengths, bucketed) == pytest.approx(brute)
    assert padding_fraction(lengths, bucketed) < 0.1 < padding_fraction(lengths, plain)


def test_epochs_differ_but_are_reproducible(synth_ds):
    a = BatchLoader(synth_ds, "train", max_len=20, batch_size=8, shuffle=True, seed=5)
    b = BatchLoader(synth_ds, "train", max_len=20, batch_size=8, shuffle=True, seed=5)
    e1, e1b, e2 = a.batches(1), b.batches(1), a.batches(2)
    assert all((x == y).all() for x, y in zip(e1, e1b))
    assert not all(len(x) == len(y) and (x == y).all() for x, y in zip(e1, e2))
