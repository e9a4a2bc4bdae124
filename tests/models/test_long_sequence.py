"""Two-stage backbones: top-k with k >= L is full attention; SDIM never uses padding; SIM hard search."""
from __future__ import annotations

import pytest
import torch

from seqctr.models.base import SeqInputs, distinct_rows
from seqctr.models.eta import ETA
from seqctr.models.sdim import SDIM
from seqctr.models.sim import SIM
from seqctr.models.twin import TWIN
from seqctr.ops import IMPLS, set_impl, topk_select


def inputs(B=5, T=12, D=16, seed=0, need_weights=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([12, 7, 0, 3, 10])[:B]
    mask = torch.arange(T)[None, :] >= (T - lengths)[:, None]
    hist = torch.randn(B, T, D, generator=g) * mask.unsqueeze(-1)
    ids = torch.randint(2, 5, (B, T, 2), generator=g) * mask.unsqueeze(-1)
    return SeqInputs(target=torch.randn(B, D, generator=g), hist=hist, mask=mask, seq_len=lengths,
                     need_weights=need_weights, target_ids=torch.randint(2, 5, (B, 2), generator=g), hist_ids=ids)


@pytest.mark.parametrize("cls", [SIM, ETA, TWIN])
def test_topk_at_least_length_equals_full_attention(cls):
    """k >= L: the two-stage long branch is exactly full multi-head attention over the history."""
    torch.manual_seed(0)
    m = cls(16, topk=12, attention_dim=8, num_heads=2).eval()
    x = inputs()
    got = m.long_branch(x)
    full, w = m.long_attention(x.target, x.hist, x.mask)[:2]
    torch.testing.assert_close(got.vector, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.weights, w, atol=1e-6, rtol=1e-5)


def test_twin_topk_uses_the_attention_scores():
    """Consistency: the events kept are exactly the k best by the attention's own scores."""
    torch.manual_seed(1)
    m = TWIN(16, topk=3, attention_dim=8, num_heads=2).eval()
    x = inputs()
    out = m.long_branch(x)
    s = m.scores(x).masked_fill(~x.mask.unsqueeze(1), float("-inf"))
    for b in range(5):
        for h in range(2):
            n = min(3, int(x.mask[b].sum()))
            kept = set(torch.nonzero(out.weights[b, h]).flatten().tolist())
            best = set(torch.topk(s[b, h], n).indices.tolist()) if n else set()
            assert kept == best


def test_topk_select_never_prefers_padding_and_is_padding_invariant():
    s = torch.tensor([[0.5, 9.0, 1.0, 1.0, -3.0]])
    mask = torch.tensor([[False, False, True, True, True]])
    idx, sel = topk_select(s, mask, 4)
    assert set(idx[sel].tolist()) == {2, 3, 4} and sel.sum() == 3        # padding only fills a masked slot
    idx1, _ = topk_select(s, mask, 1)
    assert idx1.tolist() == [[3]]                                        # a tie goes to the more recent event
    idx2, sel2 = topk_select(torch.cat([torch.zeros(1, 3), s], 1),
                             torch.cat([torch.zeros(1, 3, dtype=torch.bool), mask], 1), 3)
    assert set((idx2[sel2] - 3).tolist()) == {2, 3, 4}


def test_topk_select_equals_a_stable_sort_reference_with_many_ties():
    """Against the textbook rule (stable sort of the time-reversed scores, padding last): the same
    selected set for every row, on integer scores full of ties, per head, any k."""
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (6, 3, 17), generator=g).float()
    mask = torch.rand(6, 1, 17, generator=g) > 0.3
    for k in (1, 4, 9, 17, 30):
        idx, sel = topk_select(s, mask, k)
        key = torch.where(mask.expand_as(s), s, torch.full_like(s, float("-inf")))
        ref = 16 - torch.sort(key.flip(-1), dim=-1, descending=True, stable=True).indices[..., : min(k, 17)]
        for b in range(6):
            for h in range(3):
                assert set(idx[b, h].tolist()) == set(ref[b, h].tolist())
                assert sel[b, h].tolist() == mask[b, 0, idx[b, h]].tolist()


def test_sdim_never_samples_padding():
    torch.manual_seed(0)
    m = SDIM(16, num_hashes=4, hash_bits=2).eval()
    x = inputs()
    base = m.long_branch(x)
    # put the target itself into every padded slot: it would collide in every round if not masked
    hist = torch.where(x.mask.unsqueeze(-1), x.hist, x.target.unsqueeze(1).expand_as(x.hist))
    x2 = SeqInputs(target=x.target, hist=hist, mask=x.mask, seq_len=x.seq_len, need_weights=True)
    c = m.collisions(x2)
    assert not c[~x.mask.unsqueeze(1).expand_as(c)].any()
    got = m.long_branch(x2)
    torch.testing.assert_close(got.vector, base.vector)
    assert (got.weights[~x.mask.unsqueeze(1)] == 0).all()
    # weights reproduce the output exactly (they are the aggregation's linear weights)
    torch.testing.assert_close(torch.einsum("bt,btd->bd", got.weights[:, 0], x.hist), got.vector, atol=1e-5, rtol=1e-5)


def test_sdim_brute_force_collisions():
    torch.manual_seed(0)
    m = SDIM(16, num_hashes=3, hash_bits=3, l2_norm=False).eval()
    x = inputs()
    out = m.long_branch(x).vector
    for b in range(5):
        acc = torch.zeros(16)
        for r in range(3):
            tbits = (x.target[b] @ m.rotations[:, r]) > 0
            for t in range(12):
                if x.mask[b, t] and torch.equal((x.hist[b, t] @ m.rotations[:, r]) > 0, tbits):
                    acc += x.hist[b, t]
        torch.testing.assert_close(out[b], acc / 3, atol=1e-5, rtol=1e-5)


def test_sim_hard_search_keeps_only_same_category_most_recent():
    torch.manual_seed(0)
    m = SIM(16, gsu="hard", topk=2, attention_dim=8).eval()
    x = inputs()
    w = m.long_branch(x).weights[:, 0]
    for b in range(5):
        match = (x.hist_ids[b, :, 1] == x.target_ids[b, 1]) & x.mask[b]
        want = torch.nonzero(match).flatten()[-2:].tolist()
        assert torch.nonzero(w[b]).flatten().tolist() == want


def test_sim_soft_search_feeds_the_auxiliary_head():
    m = SIM(16, aux_weight=0.5)
    assert m.aux_dim == 16 and m.aux_weight == 0.5
    x = inputs()
    out = m(x)
    assert out.aux_vector is not None and out.aux_vector.shape == (5, 16)
    s = m.gsu_scores(x) * x.mask           # the auxiliary vector is the score-weighted history sum
    torch.testing.assert_close(out.aux_vector, torch.einsum("bt,btd->bd", s, x.hist))
    m.eval()                               # inference: the auxiliary head is not run, nor its input
    ev = m(x)
    assert ev.aux_vector is None


def test_topk_select_refuses_nan_scores():
    with pytest.raises(ValueError, match="NaN"):
        topk_select(torch.tensor([[1.0, float("nan"), 2.0]]), torch.ones(1, 3, dtype=torch.bool), 2)


def test_eta_hamming_equals_counting_differing_bits():
    from seqctr.models.eta import hamming

    g = torch.Generator().manual_seed(0)
    codes = torch.rand(3, 9, 32, generator=g) > 0.5
    tcode = torch.rand(3, 32, generator=g) > 0.5
    want = (codes != tcode.unsqueeze(1)).sum(-1).float()
    torch.testing.assert_close(hamming(codes, tcode), want, rtol=0, atol=0)
    many = torch.rand(5, 32, generator=g) > 0.5                  # one user's codes vs 5 candidates
    torch.testing.assert_close(hamming(codes[:1], many), (codes[:1] != many.unsqueeze(1)).sum(-1).float(),
                               rtol=0, atol=0)


@pytest.mark.parametrize("ckv", [None, {"user_dim": 1, "pool_size": 16}])
def test_silu_only_where_collective_kv_or_its_control_applies(ckv):
    """The authors put the extra SiLU on q/K/V in the compressed short-branch module only: the long
    branch (and TWIN's retrieval scores) stay those of the plain model, for CollectiveKV and its
    SiLU control alike."""
    m = TWIN(16, topk=4, attention_dim=8, short_seq_len=5, silu_qkv=True, collective_kv=ckv)
    assert m.short_attention.silu is True
    assert m.long_attention.silu is False
    both = TWIN(16, topk=4, attention_dim=8, short_seq_len=5, silu_qkv=True,
                collective_kv={"user_dim": 1, "pool_size": 16, "branches": ["short", "long"]})
    assert both.long_attention.silu is True, "CollectiveKV on both branches: SiLU on both"
    plain = TWIN(16, topk=4, attention_dim=8, short_seq_len=5)
    assert not plain.short_attention.silu and not plain.long_attention.silu


def embedded_inputs(B=6, T=40, vocab=(9, 4), seed=0):
    """Inputs whose history is embedded from its ids (as CTRModel builds them): many repeated events."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(v, 8, generator=g) for v in vocab]
    embed = lambda ids: torch.cat([t[ids[..., f]] for f, t in enumerate(tables)], -1)  # noqa: E731
    lengths = torch.tensor([40, 7, 0, 3, 25, 1])[:B]
    mask = torch.arange(T)[None, :] >= (T - lengths)[:, None]
    ids = torch.stack([torch.randint(0, v, (B, T), generator=g) for v in vocab], -1) * mask.unsqueeze(-1)
    tids = torch.stack([torch.randint(0, v, (B,), generator=g) for v in vocab], -1)
    return SeqInputs(target=embed(tids), hist=embed(ids), mask=mask, seq_len=lengths, target_ids=tids,
                     hist_ids=ids, rows=distinct_rows(ids, embed))


def test_distinct_key_is_equal_exactly_for_equal_rows():
    from seqctr.models.base import distinct_key

    ids = torch.randint(0, 4, (50, 3))
    key = distinct_key(ids)
    same_key = key[:, None] == key[None, :]
    same_row = (ids[:, None, :] == ids[None, :, :]).all(-1)
    assert torch.equal(same_key, same_row)
    assert distinct_key(torch.tensor([[-1, 2]])) is None                  # negative ids: no key
    assert distinct_key(torch.tensor([[2 ** 40, 2 ** 40]])) is None        # would overflow int64
    wide = torch.tensor([[65_536, 0], [0, 0], [0, 65_535]], dtype=torch.int32)   # 65,536^2 = 2^32
    assert len(set(distinct_key(wide).tolist())) == 3                      # int32 ids: no int32 overflow


def test_per_event_equals_the_function_of_every_event():
    x = embedded_inputs()
    fn = lambda e: torch.stack([e.sum(-1) > 0, e[..., 0] > e[..., 3]], -1)  # noqa: E731  row-wise, like SimHash
    seen = []
    got = x.per_event(lambda e: seen.append(e.shape) or fn(e))
    assert torch.equal(got, fn(x.hist))
    assert seen == [(len(torch.unique(x.hist_ids.flatten(0, 1), dim=0)), 16)]  # once per distinct event
    x.rows = None                                                           # no distinct rows: plain fn(hist)
    assert torch.equal(x.per_event(fn), fn(x.hist))


@pytest.mark.parametrize("cls", [ETA, SDIM])
def test_hashing_once_per_distinct_event_changes_no_output(cls):
    """ETA's and SDIM's history codes come from per_event: same long branch as hashing every event
    (the same selection; the ESU then reads the rows instead of ``hist``: float rounding apart)."""
    torch.manual_seed(0)
    m = cls(16, attention_dim=8, num_heads=2, **({"topk": 5} if cls is ETA else {})).eval()
    x = embedded_inputs()
    got = m.long_branch(x)
    x.rows = None                                                           # hash every event
    want = m.long_branch(x)
    torch.testing.assert_close(got.vector, want.vector, atol=1e-6, rtol=1e-5)


def test_sim_inference_scores_distinct_events_as_every_event():
    """At inference too SIM's GSU scores the batch's distinct events against every target in one
    GEMM: equal scores (float tolerance), the same top-k and long branch as scoring every event."""
    torch.manual_seed(0)
    m = SIM(16, topk=5, attention_dim=8).eval()
    x = embedded_inputs()
    with torch.no_grad():
        fast, aux = m.soft_gsu_distinct(x, *x.rows)
        slow = m.gsu_scores(x)
        out = m.long_branch(x)
        assert aux is None
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)
        assert torch.equal(topk_select(fast, x.mask, 5)[0], topk_select(slow, x.mask, 5)[0])
        y = embedded_inputs()
        y.rows = None
        torch.testing.assert_close(out.vector, m.long_branch(y).vector, atol=1e-6, rtol=1e-5)


def _trainable_inputs(seed=0):
    """``embedded_inputs`` whose tables are leaves with gradients, plus a fresh embedding of them."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(v, 8, generator=g, dtype=torch.float64).requires_grad_() for v in (30, 5)]
    embed = lambda ids: torch.cat([t[ids[..., f]] for f, t in enumerate(tables)], -1)  # noqa: E731
    base = embedded_inputs(seed=seed)

    def make(with_ids: bool) -> SeqInputs:
        return SeqInputs(target=embed(base.target_ids), hist=embed(base.hist_ids), mask=base.mask,
                         seq_len=base.seq_len, target_ids=base.target_ids, hist_ids=base.hist_ids,
                         rows=distinct_rows(base.hist_ids, embed) if with_ids else None)
    return tables, make


def test_sim_training_gsu_over_distinct_events_equals_every_event():
    """In training SIM's soft GSU scores and pools the batch's distinct events (GEMMs over ``[U, D]``,
    gradients to the tables through U rows): the scores, the auxiliary vector, the long branch and
    every gradient equal those of the per-event products over ``hist``."""
    torch.manual_seed(0)
    m = SIM(16, topk=5, attention_dim=8).double().train()
    tables, make = _trainable_inputs()
    res = {}
    for with_ids in (True, False):
        x = make(with_ids)
        out = m.long_branch(x)
        (out.vector.square().sum() + out.aux_vector.sin().sum()).backward()
        res[with_ids] = (out.vector.detach(), out.aux_vector.detach(),
                         [t.grad.clone() for t in tables],
                         {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        for p in [*tables, *m.parameters()]:
            p.grad = None
    fast, slow = res[True], res[False]
    assert not torch.equal(fast[1], torch.zeros_like(fast[1]))
    torch.testing.assert_close(fast[0], slow[0], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fast[1], slow[1], atol=1e-12, rtol=1e-10)
    assert fast[3].keys() == slow[3].keys() and {"W_a.weight", "W_b.weight"} <= fast[3].keys()
    for a, b in zip(fast[2] + list(fast[3].values()), slow[2] + list(slow[3].values())):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    x = make(True)
    s_fast, _ = m.soft_gsu_distinct(x, *x.rows)
    torch.testing.assert_close(s_fast, m.gsu_scores(make(False)), atol=1e-12, rtol=1e-10)


def test_weighted_sum_over_distinct_events_equals_the_batched_sum():
    """With the distinct rows made ``weighted_sum`` pools them (one GEMM); same values as over hist."""
    x = embedded_inputs()
    w = torch.randn(x.mask.shape) * x.mask
    want = torch.einsum("bt,btd->bd", w, x.hist)
    rows, inv = x.rows
    assert rows.shape[0] < x.hist.shape[0] * x.hist.shape[1]
    torch.testing.assert_close(x.weighted_sum(w), want, atol=1e-5, rtol=1e-5)
    x.rows = None
    torch.testing.assert_close(x.weighted_sum(w), want, atol=0, rtol=0)


def test_din_inference_over_distinct_events_equals_pooling_every_event():
    from seqctr.models.din import DIN

    torch.manual_seed(0)
    m = DIN(16, attention_hidden=[8]).eval()
    x = embedded_inputs()
    with torch.no_grad():
        fast = m(x).vector
        x.rows = None
        slow = m(x).vector
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_sim_training_forward_reads_every_branch_from_the_distinct_rows(impl):
    """A training forward reads the short window and the ESU's selection from the distinct rows, in
    every ops implementation: same output and table / parameter gradients as over ``hist``."""
    torch.manual_seed(0)
    m = set_impl(SIM(16, topk=6, attention_dim=8, short_seq_len=7).double().train(), impl)
    tables, make = _trainable_inputs(seed=1)
    res = []
    for with_ids in (True, False):
        x = make(with_ids)
        out = m(x)
        if with_ids:
            R, inv = x.rows
            assert R.shape[0] == len(torch.unique(x.hist_ids.flatten(0, 1), dim=0))
            torch.testing.assert_close(x.recent(6)[0].dense(), x.hist[:, -6:], atol=0, rtol=0)
        (out.vector.square().sum() + out.aux_vector.sin().sum()).backward()
        res.append((out.vector.detach(), [t.grad.clone() for t in tables],
                    [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        for p in [*tables, *m.parameters()]:
            p.grad = None
    (va, ta, pa), (vb, tb, pb) = res
    torch.testing.assert_close(va, vb, atol=1e-12, rtol=1e-10)
    assert len(pa) == len(pb) == len(list(m.parameters()))
    for a, b in zip(ta + pa, tb + pb):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("topk,heads", [(5, 2), (5, 1), (40, 2)])
def test_twin_over_distinct_events_equals_every_event(topk, heads):
    """With ids known TWIN scores the batch's distinct events in one GEMM and reads its top-k (or,
    k >= T, pools) from them: the same vector and the same table and parameter gradients as the
    absorbed attention over ``hist``, in float64; training and inference."""
    from seqctr.nn import AttentionCondition

    torch.manual_seed(0)
    m = TWIN(16, topk=topk, attention_dim=8, num_heads=heads, short_seq_len=6).double().train()
    tables, make = _trainable_inputs()
    prompts = torch.randn(6, 2, 16, dtype=torch.float64, requires_grad=True)
    res = {}
    for with_ids in (True, False):
        x = make(with_ids)
        x.cond = {"long": AttentionCondition(prompts=prompts)}
        out = m(x)
        out.vector.sin().sum().backward()
        res[with_ids] = [out.vector.detach(), prompts.grad.clone(), *(t.grad.clone() for t in tables),
                         *(p.grad.clone() for p in m.parameters() if p.grad is not None)]
        for p in [*tables, *m.parameters(), prompts]:
            p.grad = None
    assert len(res[True]) == len(res[False])
    for a, b in zip(*res.values()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    m.eval()
    with torch.no_grad():
        fast, slow = make(True), make(False)
        torch.testing.assert_close(m(fast).vector, m(slow).vector, atol=1e-12, rtol=1e-10)
        assert fast.rows is not None and slow.rows is None                   # each path really ran


@pytest.mark.parametrize("name", ["eta", "sdim"])
def test_eta_and_sdim_over_distinct_rows_equal_every_event(name):
    """ETA and SDIM read the batch's distinct rows (codes per row; ESU, SDIM's collision sums and the
    short window as sparse products over them): the same vector, attention weights and table /
    parameter gradients as over the embedded ``hist``, in float64, training and inference, with
    LAIN prompts and an empty history in the batch."""
    from seqctr.nn import AttentionCondition
    from seqctr.ops.kernels import sparse_pays

    torch.manual_seed(0)
    m = (ETA(16, hash_bits=6, topk=6, attention_dim=8, short_seq_len=7) if name == "eta"
         else SDIM(16, num_hashes=3, hash_bits=2, attention_dim=8, short_seq_len=7)).double()
    tables, make = _trainable_inputs()
    prompts = torch.randn(6, 2, 16, dtype=torch.float64, requires_grad=True)
    for train in (True, False):
        m.train(train)
        res = {}
        for with_ids in (True, False):
            x = make(with_ids)
            x.need_weights = True
            x.cond = {"long": AttentionCondition(prompts=prompts)}
            with torch.set_grad_enabled(train):
                out = m(x)
            got = [out.vector.detach(), out.attention["long"].detach(), out.attention["short"].detach()]
            if train:
                out.vector.sin().sum().backward()
                got += [prompts.grad.clone(), *(t.grad.clone() for t in tables),
                        *(p.grad.clone() for p in m.parameters() if p.grad is not None)]
                for p in [*tables, *m.parameters(), prompts]:
                    p.grad = None
            assert (x.rows is not None) == with_ids                   # each path really ran
            if with_ids:                                              # SDIM's collision sums: the sparse form
                assert sparse_pays(x.rows[0].shape[0], 6 * 3 * 40)
            res[with_ids] = got
        assert len(res[True]) == len(res[False]) > 3 * train
        for a, b in zip(*res.values()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
