"""Serving split: scoring from a cache equals the full forward pass, for every backbone."""
from __future__ import annotations

import pytest
import torch

from seqctr.config import ModelConfig
from seqctr.data import SeqBatch
from seqctr.models import backbone_names, build_model
from seqctr.serving import KVCache
from seqctr.serving.runtime import append, prefill, score

MAX_LEN = 12


def make(ds, name, lain=False, **options):
    torch.manual_seed(0)
    opts = {"short_seq_len": 5, "topk": 4} if name in ("sim", "eta", "twin") else {}
    if name == "sdim":
        opts = {"short_seq_len": 5}
    cfg = ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16], dropout=0.0, options={**opts, **options},
                      lain={"enabled": True, "hidden": 16} if lain else {})
    return visible(build_model(cfg, ds.meta).eval())


def visible(model):
    """Embeddings at N(0, 0.5) instead of the training init N(0, 1e-4): with near-zero inputs a
    wrong key or value would hide under the 1e-5 tolerance."""
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.normal_(0, 0.5)
        for name, p in model.named_parameters():
            if name.endswith((".rab", ".ts_w")):   # HSTU's relative biases: randomised, so their indexing is tested
                p.normal_(0, 0.5)
    return model


def full_forward(model, user, hist, seq_len, cands):
    """The ordinary batch forward: one row per candidate, the same (truncated) history each."""
    batch = SeqBatch.for_candidates(user, hist[max(hist.shape[0] - MAX_LEN, 0):], cands, seq_len)
    with torch.no_grad():
        return torch.sigmoid(model(batch).logits)


def random_user(ds, T, seed):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, ds.item_feats.shape[0], (T,), generator=g)
    hist = torch.from_numpy(ds.item_feats).long()[items]
    user = torch.from_numpy(ds.user_feats[seed % len(ds.user_feats)]).long().unsqueeze(0)
    cands = torch.from_numpy(ds.item_feats).long()[torch.randint(2, ds.item_feats.shape[0], (7,), generator=g)]
    return user, hist, cands


@pytest.mark.parametrize("name", backbone_names())
@pytest.mark.parametrize("T", [0, 1, 5, 12, 30])
def test_cached_scoring_equals_full_forward(synth_ds, name, T):
    model = make(synth_ds, name)
    user, hist, cands = random_user(synth_ds, T, seed=T)
    cache = prefill(model, user[0], hist, seq_len=T, max_len=MAX_LEN)
    assert "hist" not in cache.tensors, "the backbone's own cache, not the recompute fallback"
    got = score(model, cache, cands)
    want = full_forward(model, user, hist, T, cands)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    recompute = prefill(model, user[0], hist, seq_len=T, max_len=MAX_LEN, mode="recompute")
    torch.testing.assert_close(score(model, recompute, cands), want, atol=1e-5, rtol=1e-5)


def forward_vectors(model, user, hist, seq_len, cands):
    """The backbone's pooled vectors ``[N, out_dim]`` on the ordinary forward path."""
    batch = SeqBatch.for_candidates(user, hist[max(hist.shape[0] - MAX_LEN, 0):], cands, seq_len)
    with torch.no_grad():
        return model.backbone(model.inputs(batch)).vector


@pytest.mark.parametrize("name,lain", [(n, lain) for n in backbone_names() for lain in (False, True)
                                       if not (lain and n == "hstu")])     # LAIN does not apply to HSTU
def test_cached_pooled_vectors_equal_the_forward_pass(synth_ds, name, lain):
    """The interest vectors themselves, not only the probability: a 0.1% error in a backbone's
    vector can hide under the sigmoid's tolerance (DIEN's moved the output by 6e-6)."""
    from seqctr.serving.runtime import backbone_output

    model = make(synth_ds, name, lain=lain)
    user, hist, cands = random_user(synth_ds, 20, seed=11)
    cache = prefill(model, user[0], hist, seq_len=20, max_len=MAX_LEN)
    got = backbone_output(model, cache, cands)[1].vector
    want = forward_vectors(model, user, hist, 20, cands)
    assert want.abs().mean() > 1e-3, "vectors large enough for the tolerance to mean something"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", backbone_names())
def test_empty_history_and_no_candidates(synth_ds, name):
    """A user with no events scores like the forward pass does; a request with no candidates
    returns no scores (not an error from inside a layer)."""
    model = make(synth_ds, name)
    user, hist, cands = random_user(synth_ds, 0, seed=3)
    empty = prefill(model, user[0], hist)
    torch.testing.assert_close(score(model, empty, cands), full_forward(model, user, hist, 0, cands),
                               atol=1e-5, rtol=1e-5)
    user, hist, _ = random_user(synth_ds, 6, seed=3)
    none = score(model, prefill(model, user[0], hist), cands[:0])
    assert none.shape == (0,) and none.dtype == torch.float32


@pytest.mark.parametrize("attention_dim", [64, 8])
def test_sim_caches_its_gsu_keys_as_ids(synth_ds, attention_dim):
    """Soft search keeps no copy of the events: it embeds the cache's item ids again at scoring,
    with the same scores as the forward pass, before and after an append."""
    model = make(synth_ds, "sim", attention_dim=attention_dim)
    user, hist, cands = random_user(synth_ds, 20, seed=6)
    cache = prefill(model, user[0], hist[:15], max_len=MAX_LEN)
    ids = cache.tensors["ids"]
    T = min(15, MAX_LEN)                                  # the window's events
    assert not ids.dtype.is_floating_point and ids.shape == (1, T, hist.shape[-1])
    assert torch.equal(ids[0].long(), hist[15 - T:15])
    assert not any(k.startswith("gsu") for k in cache.tensors)      # no copy of the events
    torch.testing.assert_close(score(model, cache, cands), full_forward(model, user, hist[:15], 15, cands),
                               atol=1e-5, rtol=1e-5)
    grown = append(model, cache, hist[15:])
    torch.testing.assert_close(score(model, grown, cands), full_forward(model, user, hist, 20, cands),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in backbone_names() if n != "hstu"])
def test_cached_scoring_with_lain(synth_ds, name):
    model = make(synth_ds, name, lain=True)
    user, hist, cands = random_user(synth_ds, 20, seed=3)
    cache = prefill(model, user[0], hist, seq_len=20, max_len=MAX_LEN)
    torch.testing.assert_close(score(model, cache, cands), full_forward(model, user, hist, 20, cands),
                               atol=1e-5, rtol=1e-5)


def test_cache_bytes_round_trip_and_version_check(synth_ds):
    model = make(synth_ds, "twin")
    user, hist, cands = random_user(synth_ds, 9, seed=1)
    cache = prefill(model, user[0], hist, max_len=MAX_LEN)
    back = KVCache.from_bytes(cache.to_bytes())
    assert back.history_len == 9 and back.model_version == cache.model_version
    assert set(back.tensors) == set(cache.tensors)
    for k in cache.tensors:
        assert back.tensors[k].dtype == cache.tensors[k].dtype
        assert back.tensors[k].data_ptr() % 8 == 0                     # views of one buffer, each aligned
        torch.testing.assert_close(back.tensors[k], cache.tensors[k], rtol=0, atol=0)
    torch.testing.assert_close(score(model, back, cands), score(model, cache, cands))
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    with pytest.raises(ValueError, match="other model weights"):
        score(model, cache, cands)
    with pytest.raises(ValueError, match="not a seqctr KV cache"):
        KVCache.from_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")


def test_cache_bytes_without_alignment_padding_still_read():
    """A body whose float tensor starts at an odd offset (blobs written before the padding)."""
    import json
    import struct

    b, f = torch.tensor([True, False, True]), torch.arange(5, dtype=torch.float32) / 3
    header = {"format": "seqctr-kvcache-1", "model_version": "v", "history_len": 3, "meta": {},
              "tensors": {"b": {"dtype": "|b1", "shape": [3], "offset": 0},
                          "f": {"dtype": "<f4", "shape": [5], "offset": 3}}}
    h = json.dumps(header).encode()
    back = KVCache.from_bytes(struct.pack("<Q", len(h)) + h + b.numpy().tobytes() + f.numpy().tobytes())
    assert torch.equal(back.tensors["b"], b) and torch.equal(back.tensors["f"], f)


def test_damaged_cache_bytes_are_a_clear_error_naming_the_source(synth_ds):
    model = make(synth_ds, "sim")
    user, hist, _ = random_user(synth_ds, 9, seed=2)
    data = prefill(model, user[0], hist, max_len=MAX_LEN).to_bytes()
    for bad, why in [(data[:5], "unreadable header"), (data[:40], "unreadable header"),
                     (b"\xff" * 64, "unreadable header"), (data[:-3], "truncated"),
                     (b"\x04\x00\x00\x00\x00\x00\x00\x00null", "format None")]:
        with pytest.raises(ValueError, match=f"^redis key 'u7': .*{why}"):
            KVCache.from_bytes(bad, source="redis key 'u7'")


CKV_CASES = [(n, b) for n in ("sim", "eta", "sdim", "twin") for b in (["short"], ["short", "long"])
             if not (n == "sdim" and b == ["short", "long"])]  # SDIM's long branch hashes: no K/V to compress


@pytest.mark.parametrize("name,branches", CKV_CASES)
def test_collective_kv_cache_equals_full_forward(synth_ds, name, branches):
    torch.manual_seed(0)
    opts = {"short_seq_len": 5, "collective_kv": {"user_dim": 1, "pool_size": 64, "branches": branches},
            "silu_qkv": True}
    if name != "sdim":
        opts["topk"] = 4
    model = visible(build_model(ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16], dropout=0.0, options=opts),
                                synth_ds.meta).eval())
    user, hist, cands = random_user(synth_ds, 20, seed=5)
    cache = prefill(model, user[0], hist, max_len=MAX_LEN)
    assert cache.tensors["short_idx_k"].dtype == torch.uint8 and cache.tensors["short_u_k"].shape[-1] == 1
    assert "short_k" not in cache.tensors
    torch.testing.assert_close(score(model, cache, cands), full_forward(model, user, hist, 20, cands),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T,n", [(0, 4), (6, 3), (20, 2)])
def test_hstu_collective_kv_cache_equals_full_forward_and_appends(synth_ds, T, n):
    """Every HSTU layer keeps only d_u-wide user parts + pool indices; scoring from them (and
    after appending events) equals the full forward pass."""
    model = make(synth_ds, "hstu", collective_kv={"user_dim": 1, "pool_size": 300})
    user, hist, cands = random_user(synth_ds, T + n, seed=T)
    cache = prefill(model, user[0], hist[:T], max_len=MAX_LEN)
    for i in range(2):
        assert cache.tensors[f"l{i}_idx_k"].dtype == torch.int16 and cache.tensors[f"l{i}_u_v"].shape[-1] == 1
        assert f"l{i}_k" not in cache.tensors
    torch.testing.assert_close(score(model, cache, cands), full_forward(model, user, hist[:T], T, cands),
                               atol=1e-5, rtol=1e-5)
    grown = append(model, cache, hist[T:])
    torch.testing.assert_close(score(model, grown, cands), full_forward(model, user, hist, T + n, cands),
                               atol=1e-5, rtol=1e-5)
    # the first layer memoises routing (now warm: every item seen), deeper layers do not; a model
    # without any memo scores the same
    assert len(model.backbone.blocks[0].ckv.memos["k"].table) > 0 and model.backbone.blocks[1].ckv.memos == {}
    plain = make(synth_ds, "hstu", collective_kv={"user_dim": 1, "pool_size": 300, "memo_rows": 0})
    assert all(blk.ckv.memos == {} for blk in plain.backbone.blocks)
    torch.testing.assert_close(score(model, grown, cands),
                               score(plain, append(plain, prefill(plain, user[0], hist[:T], max_len=MAX_LEN), hist[T:]),
                                           cands), atol=1e-6, rtol=1e-6)


def test_hstu_collective_kv_trains_with_every_layers_router_loss(synth_ds):
    model = make(synth_ds, "hstu", collective_kv={"user_dim": 2, "pool_size": 40, "mask_aux": True}).train()
    user, hist, cands = random_user(synth_ds, 6, seed=2)
    N, T = cands.shape[0], hist.shape[0]
    mask = torch.arange(T).unsqueeze(0) >= torch.arange(N).unsqueeze(1) % T      # ragged left padding
    batch = SeqBatch(user=user.expand(N, -1), target=cands, hist=hist.unsqueeze(0).expand(N, T, -1), mask=mask,
                     seq_len=mask.sum(1), label=(torch.arange(N) % 2).float(), user_index=torch.zeros(N, dtype=torch.long))
    out = model(batch)
    emb = model.embedding
    seq = torch.cat([emb.items(batch.hist), emb.items(batch.target).unsqueeze(1)], 1)
    valid = torch.cat([mask, mask.new_ones(N, 1)], 1)
    per_layer = []
    for blk in model.backbone.blocks:
        seq, _, aux = blk(seq, valid)
        per_layer.append(aux)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    torch.testing.assert_close(out.aux_loss, sum(per_layer))
    model.loss(out, batch.label).backward()
    for blk in model.backbone.blocks:
        assert blk.ckv.router_k.weight.grad.abs().sum() > 0 and blk.ckv.pool_v.grad.abs().sum() > 0


def test_cache_accounting_on_the_paper_configuration():
    """d = 256, d_u = 1, m = 10,000 (int16 indices): the compressed cache is under 1% of full K/V."""
    from seqctr.models.hstu import HSTU
    from seqctr.models.sim import SIM
    from seqctr.experiments.accounting import kv_cache_bytes

    both = SIM(16, attention_dim=256, num_heads=8,
               collective_kv={"user_dim": 1, "pool_size": 10000, "branches": ["short", "long"]})
    acc = kv_cache_bytes(both, events=1000)
    per_event_full, per_event_ckv = 2 * 256 * 4, 2 * (1 * 4 + 2)
    assert acc["full_bytes"] == (49 + 1000) * per_event_full
    assert acc["cached_bytes"] == (49 + 1000) * per_event_ckv
    assert acc["ratio"] == pytest.approx(12 / 2048) and acc["ratio"] < 0.01
    assert acc["ratio_without_indices"] == pytest.approx(8 / 2048)
    assert acc["pool_bytes"] == 2 * 2 * 10000 * 255 * 4                 # K and V pools of both layers

    hstu = HSTU(64, num_layers=2, collective_kv={"user_dim": 1, "pool_size": 10000})
    acc = kv_cache_bytes(hstu, events=1000)
    assert acc["full_bytes"] == 2 * 1000 * 2 * 64 * 4                    # two layers, K and V
    assert acc["ratio"] == pytest.approx(12 / 512)
    assert acc["pool_bytes"] == 2 * 2 * 10000 * 63 * 4

    short_only = kv_cache_bytes(SIM(16, attention_dim=256, num_heads=8,
                                    collective_kv={"user_dim": 1, "pool_size": 10000}), events=1000)
    assert short_only["cached_bytes"] == 49 * per_event_ckv + 1000 * per_event_full
    assert short_only["ratio_compressed"] == pytest.approx(12 / 2048)       # the short branch alone


@pytest.mark.parametrize("name", backbone_names())
@pytest.mark.parametrize("T,n", [(0, 3), (4, 3), (9, 6), (20, 4)])
def test_append_equals_prefill_of_the_longer_history(synth_ds, name, T, n):
    """Including growth past max_len (12): the window slides; exact or re-prefilled."""
    model = make(synth_ds, name)
    user, hist, cands = random_user(synth_ds, T + n, seed=T + n)
    cache = prefill(model, user[0], hist[:T], max_len=MAX_LEN)
    grown = append(model, cache, hist[T:])
    fresh = prefill(model, user[0], hist, max_len=MAX_LEN)
    assert grown.history_len == T + n
    torch.testing.assert_close(score(model, grown, cands), score(model, fresh, cands), atol=1e-5, rtol=1e-5)
    for k in fresh.tensors:
        torch.testing.assert_close(grown.tensors[k].float(), fresh.tensors[k].float(), atol=1e-5, rtol=1e-5)


def test_append_updates_in_place_where_exact(synth_ds, monkeypatch):
    """Two-branch caches update without a full prefill, even when the window slides."""
    import seqctr.serving.runtime as runtime

    model = make(synth_ds, "twin")
    user, hist, cands = random_user(synth_ds, 20, seed=9)
    cache = prefill(model, user[0], hist[:10], max_len=MAX_LEN)
    monkeypatch.setattr(runtime, "prefill", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-prefilled")))
    grown = append(model, cache, hist[10:])
    assert grown.tensors["mask"].shape[1] == MAX_LEN


def test_bad_serving_input_is_a_clear_error_naming_argument_feature_and_row(synth_ds):
    """Unknown or negative ids, float ids and wrong shapes are refused at the serving entry points
    with the argument, the feature and the row, not as an index error deep in the model."""
    from seqctr.errors import InputError

    model = make(synth_ds, "twin")
    user, hist, cands = random_user(synth_ds, 6, seed=1)
    cache = prefill(model, user[0], hist)
    names, vocab = model.embedding.item_features, model.embedding.tables
    bad = cands.clone()
    bad[3, -1] = vocab[names[-1]].num_embeddings
    with pytest.raises(InputError, match=rf"column '{names[-1]}', row 3: score\(candidates\): id \d+ is outside"):
        score(model, cache, bad)
    bad_hist = hist.clone()
    bad_hist[2, 0] = -1
    with pytest.raises(InputError, match=rf"column '{names[0]}', row 2: prefill\(hist\): id -1 is outside"):
        prefill(model, user[0], bad_hist)
    with pytest.raises(InputError, match=r"append\(new_events\): id"):
        append(model, cache, bad[2:4])
    with pytest.raises(InputError, match=r"score\(candidates\): ids must be integers, got torch.float32"):
        score(model, cache, cands.float())
    with pytest.raises(InputError, match=r"prefill\(hist\): expected \[events, item features\], got shape \[6\]"):
        prefill(model, user[0], hist[:, 0])
    with pytest.raises(InputError, match=r"prefill\(user\): expected shape"):
        prefill(model, torch.cat([user[0], user[0]]), hist)
    torch.testing.assert_close(score(model, cache, cands), score(model, prefill(model, user[0], hist), cands))


@pytest.fixture(scope="module")
def rich_ds(tmp_path_factory):
    """A LongCTR-layout dataset with a multi-valued, a binned numeric and a pre-trained item
    feature and a per-sample context feature (tests/data/test_longctr.py writes it)."""
    from seqctr.data import prepare
    from tests.data.test_longctr import write_longctr

    folder = tmp_path_factory.mktemp("rich")
    write_longctr(folder / "lc", seed=2)
    return prepare(str(folder / "lc"), home=folder / "h")[0]


@pytest.mark.parametrize("name", backbone_names())
def test_cached_scoring_with_multi_valued_and_pretrained_features(rich_ds, name):
    model = make(rich_ds, name)
    model.embedding.load_pretrained(rich_ds.pretrained)
    assert rich_ds.item_feats.shape[1] > len(dict.fromkeys(rich_ds.meta.item_features)), "multi-valued columns"
    user, hist, cands = random_user(rich_ds, 9, seed=1)
    user = torch.cat([user, torch.tensor([[5]])], dim=1)                 # user feature + the context feature
    got = score(model, prefill(model, user[0], hist, seq_len=9, max_len=MAX_LEN), cands)
    torch.testing.assert_close(got, full_forward(model, user, hist, 9, cands), atol=1e-5, rtol=1e-5)
