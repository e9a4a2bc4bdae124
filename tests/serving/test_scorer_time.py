"""A time-aware bundle (HSTU with its time bias) served by raw ids: event times are stored with the
events (memory, SQLite, Redis), read back into the cache, and scoring equals the forward pass
with those times."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from seqctr.data import SeqBatch
from seqctr.errors import InputError
from seqctr.serving.scorer import Scorer, fill_times, load
from seqctr.serving.stores import MemoryStore


def scorer_of(bundle, state, store=None, **kw) -> Scorer:
    s = load(bundle, store, **kw)
    s.model.load_state_dict(state)
    return s


def forward(scorer, user, history, times, candidates, now):
    hist = scorer.item_rows([str(x) for x in history])[-scorer.max_len:]
    t = torch.tensor(times[-scorer.max_len:], dtype=torch.long)
    batch = SeqBatch.for_candidates(scorer.user_row(str(user)), hist, scorer.item_rows(candidates), len(history),
                                    hist_time=t, target_time=now)
    with torch.no_grad():
        return torch.sigmoid(scorer.model(batch).logits).numpy()


def user_log(rows, user=None):
    """A user's items and times in time order (``user`` None: the user with the longest log)."""
    if user is None:
        user = max(set(rows["user"]), key=rows["user"].count)
    idx = [i for i, u in enumerate(rows["user"]) if u == user]
    return [rows["item"][i] for i in idx], [rows["timestamp"][i] for i in idx]


def test_fill_times_takes_the_previous_time_and_reads_times_as_the_training_data_does():
    assert fill_times([None, 5, None, 9], 4, start=2) == [2, 5, 5, 9]
    assert fill_times(None, 2, start=7) == [7, 7]
    assert fill_times([3.9, "17", "2020-01-01", "2020-01-01T00:00:10Z", np.int64(4)], 5) == \
        [3, 17, 1577836800, 1577836810, 4]
    for bad in (float("nan"), True, "soon", "", [1]):
        with pytest.raises(InputError, match="row 2: timestamps: a time must be"):
            fill_times([1, 2, bad], 3)
    with pytest.raises(InputError, match="2 times for 3 events"):
        fill_times([1, 2], 3)


def test_scores_with_stored_times_equal_the_forward_pass(hstu_bundle):
    rows, bundle, state = hstu_bundle
    s = scorer_of(bundle, state)
    assert s.uses_time
    items, times = user_log(rows, "u3")
    cands = sorted(set(rows["item"]))[:6]
    now = times[-1] + 86_400
    s.prefill("u3", items[:-4], times[:-4])
    s.append("u3", items[-4:], times[-4:])                 # in place: HSTU appends exactly
    got = s.score("u3", cands, time=now)
    np.testing.assert_allclose(got, forward(s, "u3", items, times, cands, now), atol=1e-5, rtol=1e-5)
    # the default request time is the latest event's, and the time matters
    np.testing.assert_allclose(s.score("u3", cands), forward(s, "u3", items, times, cands, times[-1]), atol=1e-5)
    assert np.abs(s.score("u3", cands, time=now + 10**9) - got).max() > 1e-5
    # an explicit history with its times, nothing stored
    np.testing.assert_allclose(s.score("u3", cands, history=items[:9], history_times=times[:9], time=now),
                               forward(s, "u3", items[:9], times[:9], cands, now), atol=1e-5, rtol=1e-5)
    assert s.store.timeline("u3") == (items, times)


def test_events_without_times_take_the_previous_events_time(hstu_bundle):
    rows, bundle, state = hstu_bundle
    s = scorer_of(bundle, state)
    items, times = user_log(rows, "u5")
    s.prefill("u5", items[:3], [times[0], None, times[2]])
    s.append("u5", items[3:5])
    want_times = [times[0], times[0], times[2], times[2], times[2]]
    cands = items[:4]
    np.testing.assert_allclose(s.score("u5", cands, time=times[4]),
                               forward(s, "u5", items[:5], want_times, cands, times[4]), atol=1e-5, rtol=1e-5)


def test_a_bad_time_is_refused_before_anything_is_stored(hstu_bundle):
    rows, bundle, state = hstu_bundle
    s = scorer_of(bundle, state)
    s.prefill("u1", ["i1", "i2"], [10, 20])
    with pytest.raises(InputError, match="row 1: timestamps: a time must be an integer"):
        s.append("u1", ["i3", "i4"], [30, "soon"])
    assert s.store.timeline("u1") == (["i1", "i2"], [10, 20])


def test_times_survive_a_restart_with_a_persisted_history(hstu_bundle, tmp_path):
    rows, bundle, state = hstu_bundle
    items, times = user_log(rows)
    a = scorer_of(bundle, state, MemoryStore(history_file=tmp_path / "h.db"))
    a.prefill("u7", items[:5], times[:5])
    a.append("u7", items[5:8], times[5:8])
    want = a.score("u7", items[:5], time=times[8])
    a.store.close()
    b = scorer_of(bundle, state, MemoryStore(history_file=tmp_path / "h.db"))
    assert b.store.timeline("u7") == (items[:8], times[:8])
    np.testing.assert_allclose(b.score("u7", items[:5], time=times[8]), want, atol=1e-6)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_times_round_trip_through_redis(hstu_bundle):
    pytest.importorskip("redis")
    from seqctr.serving.store import local_redis
    from seqctr.serving.stores import RedisStore

    rows, bundle, state = hstu_bundle
    items, times = user_log(rows)
    with local_redis() as url:
        s = scorer_of(bundle, state)
        s.store = RedisStore(url, fingerprint=s.fingerprint)
        s.prefill("u9", items[:4], times[:4])
        s.append("u9", items[4:6], [times[4], None])
        assert s.store.timeline("u9") == (items[:6], times[:5] + [None])
        other = scorer_of(bundle, state)                   # a second process: no cache of its own
        other.store = RedisStore(url, fingerprint=s.fingerprint)
        now = times[6]
        want = forward(s, "u9", items[:6], times[:5] + [times[4]], items[:3], now)
        np.testing.assert_allclose(other.score("u9", items[:3], time=now), want, atol=1e-5, rtol=1e-5)


def test_rebuild_first_layer_stores_no_first_layer_and_scores_the_same(hstu_bundle, trained):
    """``rebuild_first_layer`` (``seqctr serve --rebuild-first-layer``): the stored caches lose HSTU's first
    layer (fewer bytes), scores and in-place appends stay equal to the forward pass, a cache made in the
    other form is still read, and a backbone without the option is refused."""
    rows, bundle, state = hstu_bundle
    plain, lean = scorer_of(bundle, state), scorer_of(bundle, state, rebuild_first_layer=True)
    items, times = user_log(rows, "u3")
    cands = sorted(set(rows["item"]))[:6]
    now = times[-1] + 3_600
    plain.prefill("u3", items, times)
    lean.prefill("u3", items[:-3], times[:-3])
    lean.append("u3", items[-3:], times[-3:])
    kept, rebuilt = plain.store.get_cache("u3"), lean.store.get_cache("u3")
    assert any(k.startswith("l0_") for k in kept.tensors) and not any(k.startswith("l0_") for k in rebuilt.tensors)
    assert rebuilt.nbytes() < kept.nbytes()
    want = forward(lean, "u3", items, times, cands, now)
    np.testing.assert_allclose(lean.score("u3", cands, time=now), want, atol=1e-5, rtol=1e-5)
    # the lean model reads a cache that kept its first layer (e.g. in a store from before the switch)
    lean.store.put_cache("u3", kept)
    np.testing.assert_allclose(lean.score("u3", cands, time=now), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="HSTU only"):
        Scorer(load(trained[1]).bundle, rebuild_first_layer=True)


def test_the_service_serves_with_the_first_layer_rebuilt(hstu_bundle, trained, tmp_path):
    """A real server with ``--rebuild-first-layer`` scores as the forward pass; the flag is refused (one
    line, exit 2) for a backbone without it."""
    import httpx

    from seqctr.cli import main
    from tests.serving.servers import Serve

    rows, bundle, state = hstu_bundle
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    items, times = user_log(rows, "u3")
    cands = sorted(set(rows["item"]))[:6]
    with Serve(folder, "--rebuild-first-layer") as srv:
        r = httpx.post(f"{srv.url}/v1/users/u3/events", timeout=30,
                       json={"events": [{"item": i, "timestamp": t} for i, t in zip(items, times)]})
        assert r.status_code == 200, r.text
        got = httpx.post(f"{srv.url}/v1/score", json={"user": "u3", "candidates": cands}, timeout=30).json()
    want = forward(load(folder), "u3", items, times, cands, times[-1])
    assert got["scores"] == pytest.approx(want.tolist(), abs=1e-5)
    assert main(["serve", "--model", str(trained[1]), "--rebuild-first-layer"]) == 2
