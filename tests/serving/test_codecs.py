"""Cache codecs: round trips through the stores' byte form, their byte counts, and a scorer (and a real
service) in a codec scoring exactly as the codec's offline scores."""
from __future__ import annotations

import httpx
import pytest
import torch

from seqctr.models import backbone_names
from seqctr.serving import KVCache
from seqctr.serving.codecs import BLOCK, CODECS, SCALE, Codec
from seqctr.serving.runtime import prefill, score
from tests.serving.servers import Serve
from tests.serving.test_cache import MAX_LEN, make, random_user


def _float_bytes(c: KVCache) -> int:
    return sum(t.numel() * t.element_size() for t in c.tensors.values() if t.dtype.is_floating_point)


@pytest.mark.parametrize("name", backbone_names())
def test_every_codec_round_trips_through_bytes(synth_ds, name):
    """encode -> bytes -> decode gives the cache back: exactly in fp32, within bfloat16's rounding, within
    half an int8 step per row; same names, dtypes and shapes; the integer tensors packed losslessly.
    int8 keeps at most 26% of the floating bytes; the decoded caches score within 0.02 of the model's."""
    model = make(synth_ds, name)
    user, hist, cands = random_user(synth_ds, 12, seed=3)
    cache = prefill(model, user[0], hist, seq_len=12, max_len=MAX_LEN)
    want = score(model, cache, cands)
    for codec in CODECS:
        stored = Codec(codec).encode(cache)
        back = Codec.decode(KVCache.from_bytes(stored.to_bytes()))
        assert back.tensors.keys() == cache.tensors.keys() and back.meta == cache.meta, codec
        for k, t in cache.tensors.items():
            got = back.tensors[k]
            assert got.dtype == t.dtype and got.shape == t.shape, (codec, k)
            if not t.dtype.is_floating_point or codec == "fp32":
                assert torch.equal(got, t), (codec, k)
            elif codec == "bf16":
                torch.testing.assert_close(got, t, atol=1e-30, rtol=2 ** -8)
            else:                                                # half a step of each value's block
                step = stored.tensors[k + SCALE].float().repeat_interleave(BLOCK)[:t.numel()].view(t.shape)
                assert ((got - t).abs() <= step / 2 + 1e-7).all(), (codec, k)
        if codec == "int8" and _float_bytes(cache):
            assert stored.nbytes() - (cache.nbytes() - _float_bytes(cache)) <= 0.26 * _float_bytes(cache) + 2 * BLOCK * 8
        torch.testing.assert_close(score(model, back, cands), want, atol=0.02, rtol=0)


def test_integer_tensors_are_packed_and_an_unknown_codec_refused():
    cache = KVCache({"idx": torch.tensor([[3, 9000]]), "ids": torch.tensor([5, 6], dtype=torch.int32),
                     "mask": torch.tensor([True, False])}, history_len=2)
    stored = Codec("int8").encode(cache)
    assert stored.tensors["idx"].dtype == torch.int16 and stored.tensors["ids"].dtype == torch.int8
    assert torch.equal(Codec.decode(stored).tensors["idx"], cache.tensors["idx"])
    with pytest.raises(ValueError, match="expected one of"):
        Codec("fp8")


@pytest.mark.parametrize("codec", ["bf16", "int8"])
def test_a_scorer_in_a_codec_scores_as_the_codec_offline(trained, codec):
    """Hit or miss, after a prefill through the store: the probabilities of the decoded stored cache."""
    from seqctr.serving.scorer import load

    rows, bundle, _ = trained
    scorer = load(bundle, codec=codec)
    user, items, cands = rows["user"][0], list(rows["item"][:10]), list(rows["item"][10:16])
    offline = Codec.decode(Codec(codec).encode(scorer._build(user, items)))
    want = score(scorer.model, offline, scorer.item_rows(cands)).numpy()
    scorer.prefill(user, items)
    first, hit = scorer.score_ex(user, cands)
    again, hit2 = scorer.score_ex(user, cands)
    assert hit and hit2
    assert (first == want).all() and (again == want).all()
    exact = score(scorer.model, scorer._build(user, items), scorer.item_rows(cands)).numpy()
    assert abs(first - exact).max() < 0.02 and scorer.store.get_cache(user).meta["codec"] == codec


def test_the_service_serves_the_codec_offline_scores(trained, tmp_path):
    """``seqctr serve --cache-codec int8`` (a real server on loopback): the scores of stored caches equal
    the in-process scorer's in the same codec."""
    from seqctr.serving.scorer import load

    rows, bundle, _ = trained
    scorer = load(bundle, codec="int8")
    users = sorted(set(rows["user"]))[:3]
    cands = list(rows["item"][:5])
    with Serve(bundle, "--cache-codec", "int8", "--history-file", tmp_path / "h.db") as srv:
        for u in users:
            items = [i for v, i in zip(rows["user"], rows["item"]) if v == u][:8]
            r = httpx.post(f"{srv.url}/v1/users/{u}/events", json={"events": [{"item": i} for i in items]}, timeout=30)
            assert r.status_code == 200, r.text
            scorer.prefill(u, items)
            for _ in range(2):                                   # a miss, then a hit
                got = httpx.post(f"{srv.url}/v1/score", json={"user": u, "candidates": cands}, timeout=30).json()
                want = scorer.score(u, cands)
                assert got["scores"] == pytest.approx(want.tolist(), abs=1e-6), (u, got)


def test_a_recent_window_scores_as_its_offline_path_and_is_served(trained, tmp_path):
    """``--window K`` (recent-window truncation): the cache holds the last K events, the true length still
    conditions; equal to the compression suite's offline path, different from the whole window, never
    served to a scorer of another window, and the same through a real server."""
    from seqctr.serving.runtime import prefill
    from seqctr.serving.scorer import Scorer, load
    from seqctr.serving.stores import MemoryStore

    rows, bundle, _ = trained
    user, items, cands = rows["user"][0], list(rows["item"][:12]), list(rows["item"][12:18])
    store = MemoryStore()
    whole = load(bundle, store=store)
    short = Scorer(whole.bundle, store, max_len=4, codec="int8")
    assert short.max_history == whole.max_history                 # the request cap is the model's, not the window's
    offline = prefill(short.model, short.user_row(user), short.item_rows(items)[-4:], seq_len=12, max_len=4)
    want = score(short.model, Codec.decode(Codec("int8").encode(offline)), short.item_rows(cands)).numpy()
    whole.prefill(user, items)
    got, hit = short.score_ex(user, cands)
    assert not hit, "a cache of another window was served"
    assert (got == want).all() and short.store.get_cache(user).tensors["ids"].shape[1] == 4
    assert abs(got - whole.score(user, cands, history=items)).max() > 0, "the window changed nothing: untested"
    with Serve(bundle, "--window", "4", "--cache-codec", "int8", "--history-file", tmp_path / "h.db") as srv:
        r = httpx.post(f"{srv.url}/v1/users/{user}/events", json={"events": items}, timeout=30)
        assert r.status_code == 200, r.text
        served = httpx.post(f"{srv.url}/v1/score", json={"user": user, "candidates": cands}, timeout=30).json()
        assert served["scores"] == pytest.approx(want.tolist(), abs=1e-6)
    from seqctr.cli import main

    assert main(["serve", "--model", str(bundle), "--window", "100000"]) == 2   # over the model's max_len
