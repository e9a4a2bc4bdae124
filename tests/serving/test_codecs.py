"""Cache codecs: round trips through the stores' byte form, their byte counts, and a scorer (and a real
service) in a codec scoring exactly as the codec's offline scores."""
from __future__ import annotations

import httpx
import pytest
import torch

from seqctr.models import backbone_names
from seqctr.serving import KVCache
from seqctr.serving.codecs import BLOCK, CODECS, SCALE, Codec, from_low_rank, low_rank, pack_bits, unpack_bits
from seqctr.serving.runtime import prefill, score
from tests.serving.servers import Serve
from tests.serving.test_cache import MAX_LEN, make, random_user


def _float_bytes(c: KVCache) -> int:
    return sum(t.numel() * t.element_size() for t in c.tensors.values() if t.dtype.is_floating_point)


@pytest.mark.parametrize("name", backbone_names())
def test_every_codec_round_trips_through_bytes(synth_ds, name):
    """encode -> bytes -> decode gives the cache back: exactly in fp32, within bfloat16's rounding, within
    half an int8 step per row; same names, dtypes and shapes; the integer tensors packed losslessly.
    int8 keeps at most 26% of the floating bytes; the decoded caches score within 0.02 of the model's.
    ``rankR`` stores fewer values for every tensor it factors (a tensor of at most R rows is never factored:
    at this window, 12 events, ``rank12`` factors none of the per-event tensors and scores as int8)."""
    model = make(synth_ds, name)
    user, hist, cands = random_user(synth_ds, 12, seed=3)
    cache = prefill(model, user[0], hist, seq_len=12, max_len=MAX_LEN)
    want = score(model, cache, cands)
    for codec in CODECS + ("rank12", "rank2"):
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
            elif k in stored.meta.get("rank", {}):               # factors: only the rank-2 codec factors
                assert codec.startswith("rank") and stored.tensors[k].numel() < t.numel(), k
                assert t.shape[-2] > int(codec[4:]), (codec, k)
                continue
            else:                                                # half a step of each value's block
                step = stored.tensors[k + SCALE].float().repeat_interleave(BLOCK)[:t.numel()].view(t.shape)
                assert ((got - t).abs() <= step / 2 + 1e-7).all(), (codec, k)
        if codec == "int8" and _float_bytes(cache):
            assert stored.nbytes() - (cache.nbytes() - _float_bytes(cache)) <= 0.26 * _float_bytes(cache) + 2 * BLOCK * 8
        if not stored.meta.get("rank"):
            torch.testing.assert_close(score(model, back, cands), want, atol=0.02, rtol=0)


@pytest.mark.parametrize("values", [[3, 9000, 7], [5, 6], [True, True, True], [False, True], [-2 ** 40, 2 ** 40, 0],
                                    [], [7]])
def test_bit_packing_is_lossless_and_takes_the_bits_of_the_range(values):
    t = torch.tensor(values, dtype=torch.bool if values and isinstance(values[0], bool) else torch.int64)
    packed, lo, bits = pack_bits(t)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-len(values) * bits // 8)
    assert bits == ((int(t.max()) - int(t.min())).bit_length() if len(values) else 0)
    assert torch.equal(unpack_bits(packed, lo, bits, len(values)).to(t.dtype), t)


def test_integer_tensors_are_bit_packed_and_an_unknown_codec_refused():
    cache = KVCache({"idx": torch.tensor([[3, 9000, 17]]), "ids": torch.tensor([5, 6], dtype=torch.int32),
                     "mask": torch.ones(1, 1000, dtype=torch.bool), "t": torch.tensor(1_700_000_000)},
                    history_len=3)
    stored = Codec("int8").encode(cache)
    assert stored.tensors["idx"].numel() == 6 and stored.tensors["ids"].numel() == 1     # 14 bits x 3, 1 bit x 2
    assert stored.tensors["mask"].numel() == 0                                             # all true: no bits
    back = Codec.decode(KVCache.from_bytes(stored.to_bytes()))
    for k, t in cache.tensors.items():
        assert back.tensors[k].dtype == t.dtype and torch.equal(back.tensors[k], t), k
    for bad in ("fp8", "rank0", "rank", "rank-3", "rank1.5"):
        with pytest.raises(ValueError, match="expected one of"):
            Codec(bad)


def test_a_cache_written_before_bit_packing_still_decodes():
    """A store keeps caches across upgrades: an int8 cache whose integers were narrowed (not packed) and whose
    header is plain JSON reads back as it was written."""
    import json
    import struct

    old = KVCache({"idx": torch.tensor([[3, 9000]], dtype=torch.int16), "x": torch.tensor([1, 2], dtype=torch.int8)},
                  history_len=2, meta={"codec": "int8", "dtypes": {"idx": "int64", "x": "int32"}})
    header = {"format": "seqctr-kvcache-1", "model_version": "", "history_len": 2, "meta": old.meta, "tensors": {
        "idx": {"dtype": "<i2", "shape": [1, 2], "offset": 0}, "x": {"dtype": "|i1", "shape": [2], "offset": 8}}}
    h = json.dumps(header).encode()
    blob = struct.pack("<Q", len(h)) + h + old.tensors["idx"].numpy().tobytes() + b"\0" * 4 + b"\1\2"
    back = Codec.decode(KVCache.from_bytes(blob))
    assert torch.equal(back.tensors["idx"], torch.tensor([[3, 9000]])) and back.tensors["x"].dtype == torch.int32


@pytest.mark.parametrize("shape", [(1, 30, 12), (1, 4, 30, 3)])
def test_low_rank_factors_are_the_best_approximation_and_exact_at_full_rank(shape):
    """At the matrix's own rank the factors give it back; below, the error is the truncated SVD's (Eckart-Young:
    the norm of the dropped singular values); a rank that saves nothing is refused (None)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g)
    m = t[0] if len(shape) == 3 else t[0].transpose(0, 1).reshape(30, -1)
    sv = torch.linalg.svdvals(m.double())
    exact = torch.randn(30, 5, generator=g) @ torch.randn(5, 12, generator=g)      # rank 5
    texact = exact.unsqueeze(0) if len(shape) == 3 else exact.view(30, 4, 3).transpose(0, 1).unsqueeze(0)
    torch.testing.assert_close(from_low_rank(low_rank(texact, 5), 5, list(shape)), texact, atol=1e-4, rtol=1e-4)
    for r in (1, 3, 6):
        err = (from_low_rank(low_rank(t, r), r, list(shape)) - t).double().norm()
        torch.testing.assert_close(err, sv[r:].norm(), atol=1e-4, rtol=1e-4)
    assert low_rank(t, 9) is None and low_rank(t[0, 0], 1) is None       # 9 (30 + 12) >= 360; a vector


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
    assert (got == want).all() and Codec.decode(short.store.get_cache(user)).tensors["ids"].shape[1] == 4
    assert abs(got - whole.score(user, cands, history=items)).max() > 0, "the window changed nothing: untested"
    with Serve(bundle, "--window", "4", "--cache-codec", "int8", "--history-file", tmp_path / "h.db") as srv:
        r = httpx.post(f"{srv.url}/v1/users/{user}/events", json={"events": items}, timeout=30)
        assert r.status_code == 200, r.text
        served = httpx.post(f"{srv.url}/v1/score", json={"user": user, "candidates": cands}, timeout=30).json()
        assert served["scores"] == pytest.approx(want.tolist(), abs=1e-6)
    from seqctr.cli import main

    assert main(["serve", "--model", str(bundle), "--window", "100000"]) == 2   # over the model's max_len
    assert main(["serve", "--model", str(bundle), "--score-slots", "-1"]) == 2     # a bound below 0


def test_the_bundle_records_its_cache_form_and_serving_uses_it(trained, tmp_path):
    """``seqctr export --cache-codec int8`` records the form in bundle.json; ``seqctr.load`` and ``seqctr serve``
    use it unless told otherwise (the stored cache is int8, scores equal to an explicit int8 scorer's); a form
    the model does not allow is refused at export (nothing written) and at serve."""
    from seqctr.cli import main
    from seqctr.serving.bundle import load_bundle
    from seqctr.serving.scorer import load

    rows, bundle, root = trained
    ck = str(root / "run" / "best.pt")
    out = tmp_path / "b8"
    assert main(["export", "--checkpoint", ck, "--out", str(out), "--cache-codec", "int8"]) == 0
    assert load_bundle(out).serving == {"cache_codec": "int8", "rebuild_first_layer": False}
    assert load_bundle(bundle).serving == {"cache_codec": "fp32", "rebuild_first_layer": False}
    user, items, cands = rows["user"][0], list(rows["item"][:10]), list(rows["item"][10:15])
    recorded, explicit, plain = load(out), load(bundle, codec="int8"), load(out, codec="fp32")
    assert (recorded.codec.name, plain.codec.name) == ("int8", "fp32")
    for s in (recorded, explicit):
        s.prefill(user, items)
    assert recorded.store.get_cache(user).meta.get("codec") == "int8"
    assert (recorded.score(user, cands) == explicit.score(user, cands)).all()
    with Serve(out, "--history-file", tmp_path / "h.db") as srv:
        r = httpx.post(f"{srv.url}/v1/users/{user}/events", json={"events": items}, timeout=30)
        assert r.status_code == 200, r.text
        served = httpx.post(f"{srv.url}/v1/score", json={"user": user, "candidates": cands}, timeout=30).json()
    assert served["scores"] == pytest.approx(explicit.score(user, cands).tolist(), abs=1e-6)
    for bad in (["--cache-codec", "int3"], ["--rebuild-first-layer"]):        # unknown; not an HSTU
        assert main(["export", "--checkpoint", ck, "--out", str(tmp_path / "bad"), *bad]) == 2
        assert not (tmp_path / "bad").exists()
    assert main(["serve", "--model", str(out), "--rebuild-first-layer"]) == 2
