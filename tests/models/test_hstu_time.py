"""HSTU's time-bucket bias: the reference's bucketing, events' times from the prepared data, the
bias is a no-op when zero, and cached / appended scoring with times equals the forward pass."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqctr.data import SeqBatch, gather_batch
from seqctr.models.hstu import HSTU, HSTUBlock
from seqctr.serving.runtime import append, prefill, score
from tests.serving.test_cache import MAX_LEN, make, random_user


def test_time_buckets_are_the_references_log_buckets():
    blk = HSTUBlock(8, 2, 16, 0.0, time_buckets=40)
    with torch.no_grad():
        blk.ts_w.copy_(torch.arange(41.0).view(1, -1))          # bias value == bucket number
    dts = [0, 1, 2, 3, 59, 60, 3600, 86_400, -86_400, 10**9, 10**12]
    q = torch.tensor([[10**12 + 5]])
    k = q - torch.tensor([dts])
    got = blk.ts_w[0, blk.time_bucket(q, k)[0, 0]].long().tolist()
    want = [min(int(math.log(max(abs(d), 1)) / 0.301), 40) for d in dts]
    assert got == want
    assert want[-1] == 40 and want[5] == int(math.log(60) / 0.301)   # clipped at the last bucket


def test_prepared_events_carry_their_timestamps(synth_ds, synth_csv):
    """seq_ts is each user's time order of the input rows; a batch's hist_time is the window's
    times (0 on padding) and target_time the target event's own time."""
    import pyarrow.csv as pacsv

    t = pacsv.read_csv(synth_csv).to_pydict()
    assert synth_ds.has_time and synth_ds.meta.has_time
    raw = {}
    for u, ts in zip(t["user"], t["timestamp"]):
        raw.setdefault(u, []).append(ts)
    got = [synth_ds.seq_ts[synth_ds.offsets[i]:synth_ds.offsets[i + 1]].tolist()
           for i in range(len(synth_ds.offsets) - 1)]
    assert sorted(got) == sorted(sorted(v) for v in raw.values())
    idx = synth_ds.indices("test")[:9]
    b = gather_batch(synth_ds, idx, max_len=7)
    for r, s in enumerate(idx):
        u, pos = synth_ds.sample_user[s], synth_ds.sample_pos[s]
        ev = synth_ds.seq_ts[synth_ds.offsets[u]:synth_ds.offsets[u] + pos][-7:]
        row = b.hist_time[r][b.mask[r]].tolist()
        assert row == ev.tolist() and (b.hist_time[r][~b.mask[r]] == 0).all()
        assert int(b.target_time[r]) == int(synth_ds.seq_ts[synth_ds.offsets[u] + pos])


def test_prepared_times_survive_the_cache(synth_csv, tmp_path):
    from seqctr.data import prepare

    kw = dict(columns={"category": "category"}, label={"column": "label"}, home=tmp_path)
    ds, _, cached = prepare(str(synth_csv), **kw)
    again, _, cached2 = prepare(str(synth_csv), **kw)
    assert not cached and cached2
    np.testing.assert_array_equal(again.seq_ts, ds.seq_ts)
    np.testing.assert_array_equal(again.sample_ts, ds.sample_ts)


def test_time_bias_acts_and_a_zero_one_is_the_position_only_model(synth_ds):
    """Times change HSTU's output; with the time weights at zero it equals the model without the
    time part (same other weights); without times in the batch the time part is left out."""
    batch = gather_batch(synth_ds, synth_ds.indices("test")[:16], max_len=20)
    timed = make(synth_ds, "hstu")
    plain = make(synth_ds, "hstu", time_bias=False)
    with torch.no_grad():
        a = timed(batch).logits
        shifted = SeqBatch(**{**batch.__dict__, "hist_time": batch.hist_time // 1000})
        assert (timed(shifted).logits - a).abs().max() > 1e-4, "times move the output"
        no_time = SeqBatch(**{**batch.__dict__, "hist_time": None, "target_time": None})
        state = {k: v for k, v in timed.state_dict().items() if not k.endswith(".ts_w")}
        plain.load_state_dict(state)
        torch.testing.assert_close(timed(no_time).logits, plain(batch).logits, rtol=0, atol=0)
        for blk in timed.backbone.blocks:
            blk.ts_w.zero_()
        torch.testing.assert_close(timed(batch).logits, plain(batch).logits, atol=1e-6, rtol=1e-6)


def _times(T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randint(0, 200_000, (T,), generator=g), 0) + 10**9


def forward_with_times(model, user, hist, times, seq_len, cands, now):
    keep = max(hist.shape[0] - MAX_LEN, 0)
    batch = SeqBatch.for_candidates(user, hist[keep:], cands, seq_len, hist_time=times[keep:], target_time=now)
    with torch.no_grad():
        return torch.sigmoid(model(batch).logits)


@pytest.mark.parametrize("T", [0, 1, 5, 12, 30])
@pytest.mark.parametrize("collective", [None, "routed", "projected"])
def test_cached_scoring_with_times_equals_the_forward_pass(synth_ds, T, collective):
    opts = {"collective_kv": {"user_dim": 1, "pool_size": 50}, "collective_target": collective} if collective else {}
    model = make(synth_ds, "hstu", **opts)
    user, hist, cands = random_user(synth_ds, T, seed=T + 3)
    times = _times(T, T)
    now = (int(times[-1]) if T else 0) + 7_200
    cache = prefill(model, user[0], hist, seq_len=T, max_len=MAX_LEN, hist_time=times)
    assert cache.tensors["time"].shape == (1, min(T, MAX_LEN))
    want = forward_with_times(model, user, hist, times, T, cands, now)
    torch.testing.assert_close(score(model, cache, cands, time=now), want, atol=1e-5, rtol=1e-5)
    # default request time: the latest event's
    latest = int(times[-1]) if T else 0
    torch.testing.assert_close(score(model, cache, cands), forward_with_times(model, user, hist, times, T, cands,
                                                                             latest), atol=1e-5, rtol=1e-5)
    recompute = prefill(model, user[0], hist, seq_len=T, max_len=MAX_LEN, mode="recompute", hist_time=times)
    torch.testing.assert_close(score(model, recompute, cands, time=now), want, atol=1e-5, rtol=1e-5)
    if T > 1:
        assert (score(model, cache, cands, time=now + 10**8) - want).abs().max() > 1e-6, "the request time matters"


@pytest.mark.parametrize("T,n", [(0, 3), (4, 3), (5, 7)])     # within max_len (12)
def test_append_with_times_is_in_place_and_equals_prefill(synth_ds, T, n, monkeypatch):
    import seqctr.serving.runtime as runtime

    model = make(synth_ds, "hstu")
    user, hist, cands = random_user(synth_ds, T + n, seed=T + n)
    times = _times(T + n, 5)
    cache = prefill(model, user[0], hist[:T], max_len=MAX_LEN, hist_time=times[:T])
    fresh = prefill(model, user[0], hist, max_len=MAX_LEN, hist_time=times)
    with monkeypatch.context() as m:          # within the window: updated in place, never re-prefilled
        m.setattr(runtime, "prefill", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-prefilled")))
        grown = append(model, cache, hist[T:], new_times=times[T:])
    now = int(times[-1]) + 99
    torch.testing.assert_close(score(model, grown, cands, time=now), score(model, fresh, cands, time=now),
                               atol=1e-5, rtol=1e-5)
    for k in fresh.tensors:
        torch.testing.assert_close(grown.tensors[k].float(), fresh.tensors[k].float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="new_times"):
        append(model, cache, hist[T:])


def test_append_past_max_len_with_times_re_prefills_exactly(synth_ds):
    model = make(synth_ds, "hstu")
    user, hist, cands = random_user(synth_ds, 20, seed=4)
    times = _times(20, 6)
    grown = append(model, prefill(model, user[0], hist[:10], max_len=MAX_LEN, hist_time=times[:10]), hist[10:],
                   new_times=times[10:])
    fresh = prefill(model, user[0], hist, max_len=MAX_LEN, hist_time=times)
    torch.testing.assert_close(grown.tensors["time"], fresh.tensors["time"])
    torch.testing.assert_close(score(model, grown, cands, time=10**10), score(model, fresh, cands, time=10**10))


def test_non_time_models_ignore_times(synth_ds):
    model = make(synth_ds, "din")
    user, hist, cands = random_user(synth_ds, 8, seed=1)
    cache = prefill(model, user[0], hist, max_len=MAX_LEN, hist_time=_times(8, 1))
    assert "time" not in cache.tensors
    torch.testing.assert_close(score(model, cache, cands, time=5), score(model, prefill(model, user[0], hist,
                                                                                       max_len=MAX_LEN), cands))


def test_time_options_are_checked():
    with pytest.raises(ValueError, match="time_buckets"):
        HSTU(item_dim=8, time_buckets=0)
    assert not HSTU(item_dim=8, time_bias=False).uses_time
    assert all(b.ts_w is None for b in HSTU(item_dim=8, time_bias=False).blocks)


def test_projected_target_routes_only_the_history(synth_ds):
    """With ``collective_target="projected"`` the candidate's k, v come from ``f_target`` (a change to
    the pool or the router moves history tokens only), and scoring never calls the router on the
    candidates; the routed default does."""
    user, hist, cands = random_user(synth_ds, 6, seed=2)
    times = _times(6, 6)
    calls = {}
    for target in ("routed", "projected"):
        model = make(synth_ds, "hstu", collective_kv={"user_dim": 1, "pool_size": 50, "memo_rows": 0},
                     collective_target=target)
        assert all((blk.f_target is not None) == (target == "projected") for blk in model.backbone.blocks)
        cache = prefill(model, user[0], hist, seq_len=6, max_len=MAX_LEN, hist_time=times)
        rows = []
        hooks = [blk.ckv.router_k.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
                 for blk in model.backbone.blocks]
        score(model, cache, cands, time=int(times[-1]))
        for h in hooks:
            h.remove()
        calls[target] = sum(rows)
    assert calls["projected"] == 0 and calls["routed"] >= len(cands)
    with pytest.raises(ValueError, match="collective_target"):
        HSTUBlock(8, 2, 16, 0.0, collective={"user_dim": 1, "pool_size": 5}, collective_target="pooled")


@pytest.mark.parametrize("collective", [False, True])
def test_uncached_first_layer_scores_and_appends_as_the_forward_pass(synth_ds, monkeypatch, collective):
    """``cache_first_layer=False``: no ``l0_`` tensor in the cache, the first layer's K/V rebuilt from the
    cached ids; scoring equals the forward pass and the cached model's, appends stay in place and equal a
    fresh prefill, and the accounting counts the layer as not cached."""
    import seqctr.serving.runtime as runtime
    from seqctr.experiments.accounting import kv_cache_bytes

    opts = {"collective_kv": {"user_dim": 1, "pool_size": 50}} if collective else {}
    kept, lean = make(synth_ds, "hstu", **opts), make(synth_ds, "hstu", cache_first_layer=False, **opts)
    lean.load_state_dict(kept.state_dict())          # the option adds no weight: the same model, cached differently
    T, n = 6, 4
    user, hist, cands = random_user(synth_ds, T + n, seed=11)
    times = _times(T + n, 8)
    now = int(times[-1]) + 60
    full = prefill(lean, user[0], hist, max_len=MAX_LEN, hist_time=times)
    assert not any(k.startswith("l0_") for k in full.tensors) and any(k.startswith("l1_") for k in full.tensors)
    want = forward_with_times(lean, user, hist, times, T + n, cands, now)
    torch.testing.assert_close(score(lean, full, cands, time=now), want, atol=1e-5, rtol=1e-5)
    ref = prefill(kept, user[0], hist, max_len=MAX_LEN, hist_time=times)
    torch.testing.assert_close(score(kept, ref, cands, time=now), want, atol=1e-5, rtol=1e-5)
    assert full.nbytes() < ref.nbytes()
    cache = prefill(lean, user[0], hist[:T], max_len=MAX_LEN, hist_time=times[:T])
    with monkeypatch.context() as m:
        m.setattr(runtime, "prefill", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-prefilled")))
        grown = append(lean, cache, hist[T:], new_times=times[T:])
    torch.testing.assert_close(score(lean, grown, cands, time=now), want, atol=1e-5, rtol=1e-5)
    acc_kept, acc_lean = kv_cache_bytes(kept.backbone, 100), kv_cache_bytes(lean.backbone, 100)
    assert acc_lean["full_bytes"] == acc_kept["full_bytes"]
    assert acc_lean["cached_bytes"] * 2 == acc_kept["cached_bytes"]        # two equal layers, one left out
