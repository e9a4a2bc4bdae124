"""Shared attention layers: fused DIN form == textbook form; masking; Dice ignores padding."""
from __future__ import annotations

import pytest
import torch

from seqctr.nn import DINAttention
from seqctr.ops import IMPLS, Events, masked_softmax, set_impl
from seqctr.nn.attention import MaskedDice


def _inputs(B=6, T=9, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, D, generator=g)
    k = torch.randn(B, T, D, generator=g)
    mask = torch.arange(T)[None, :] >= torch.tensor([0, 3, 9, 5, 8, 1])[:, None]  # row 2 empty
    return q, k, mask


def test_fused_scores_equal_concatenated_form():
    for act in ("relu", "dice", "prelu"):
        att = DINAttention(8, [16, 4], act=act).eval()
        q, k, mask = _inputs()
        torch.testing.assert_close(att.scores(q, k, mask), att.reference_scores(q, k, mask), atol=1e-5, rtol=1e-5)


def test_masked_positions_get_zero_weight_and_empty_rows_pool_to_zero():
    for softmax in (False, True):
        att = DINAttention(8, [16], use_softmax=softmax)
        q, k, mask = _inputs()
        pooled, w = att(q, k, mask)[:2]
        w = w[:, 0]
        assert (w[~mask] == 0).all()
        assert torch.isfinite(pooled).all()
        assert (pooled[2] == 0).all()  # empty history
        if softmax:
            torch.testing.assert_close(w[mask.any(1)].sum(1), torch.ones(int(mask.any(1).sum())))


def test_masked_softmax_matches_softmax_on_valid_part():
    s = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    w = masked_softmax(s, mask)
    torch.testing.assert_close(w[0], torch.softmax(s[0], -1))
    torch.testing.assert_close(w[1, 2:], torch.softmax(s[1, 2:], -1))
    assert (w[2] == 0).all()


def test_dice_training_statistics_ignore_padding():
    dice = MaskedDice(4).train()
    x = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    y1 = dice(x, mask)
    x_pad = torch.cat([torch.randn(3, 7, 4) * 100, x], dim=1)  # garbage in padded slots
    mask_pad = torch.cat([torch.zeros(3, 7, dtype=torch.bool), mask], dim=1)
    y2 = dice(x_pad, mask_pad)[:, 7:]
    torch.testing.assert_close(y1, y2)


def test_fused_switch_gives_same_pooled_output():
    q, k, mask = _inputs()
    a = DINAttention(8, [16]).eval()
    b = DINAttention(8, [16], fused=False).eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(q, k, mask)[0], b(q, k, mask)[0], atol=1e-5, rtol=1e-5)


def test_absorbed_forward_equals_projected_attention():
    """forward (no per-event projection) == attend(project_kv(...)) with every option on."""
    from seqctr.nn import AttentionCondition, MultiHeadTargetAttention

    torch.manual_seed(0)
    q, k, mask = _inputs(D=8)
    att = MultiHeadTargetAttention(8, 12, num_heads=3, key_dim=6).eval()
    att.enable_condition(4)
    cond = AttentionCondition(prompts=torch.randn(6, 2, 8), qk=torch.randn(6, 4), temperature=torch.rand(6) + 1)
    bias = torch.randn(6, 3, 9)
    for topk in (None, 3, 50):
        for c in (None, cond):
            got = att(q, k, mask, c, topk=topk, score_bias=bias)
            kk, vv, _ = att.project_kv(k)
            want = att.attend(q, kk, vv, mask, c, topk=topk, score_bias=bias)
            torch.testing.assert_close(got.out, want.out, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got.weights, want.weights, atol=1e-6, rtol=1e-5)


def test_attend_on_a_shared_cache_equals_a_materialised_copy():
    """One user's K/V broadcast over the candidates (stride 0: the GEMM / shared-row paths) gives
    the same outputs and weights as per-candidate copies of it, for full, top-k and GSU-selected
    attention, with conditioning and score bias; ``need_weights=False`` changes no output."""
    from seqctr.nn import AttentionCondition, MultiHeadTargetAttention

    torch.manual_seed(1)
    B, T, H = 6, 9, 3
    att = MultiHeadTargetAttention(8, 12, num_heads=H).eval()
    att.enable_condition(4)
    q = torch.randn(B, 8)
    k1, v1, _ = att.project_kv(torch.randn(1, T, 8))
    mask = torch.ones(B, T, dtype=torch.bool)
    cond = AttentionCondition(prompts=torch.randn(B, 2, 8), qk=torch.randn(B, 4), temperature=torch.rand(B) + 1)
    bias = torch.randn(B, H, T)
    idx = torch.stack([torch.randperm(T)[:4] for _ in range(B)])     # dense: run as a mask over all T
    sel = torch.rand(B, 4) > 0.3
    idx2, sel2 = idx[:, :2], sel[:, :2]                                  # sparse: rows gathered per candidate
    shared_k, shared_v = k1.expand(B, -1, -1, -1), v1.expand(B, -1, -1, -1)
    assert shared_k.stride(0) == 0
    copy_k, copy_v = shared_k.contiguous(), shared_v.contiguous()
    for c in (None, cond):
        for kw in ({}, {"topk": 3}, {"topk": 50}, {"topk": 3, "score_bias": bias}, {"select": (idx, sel)},
                   {"select": (idx2, sel2)}):
            want = att.attend(q, copy_k, copy_v, mask, c, **kw)
            got = att.attend(q, shared_k, shared_v, mask, c, **kw)
            torch.testing.assert_close(got.out, want.out, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(got.weights, want.weights, atol=1e-6, rtol=1e-5)
            lean = att.attend(q, shared_k, shared_v, mask, c, need_weights=False, **kw)
            torch.testing.assert_close(lean.out, want.out, atol=1e-6, rtol=1e-5)


def test_cached_kv_is_head_major_and_attends_as_the_projection():
    """``cache_kv`` keeps K/V contiguous per head (so the shared-cache ops read ``[H*T, hd]`` rows without a
    copy per request), with the values of ``project_kv``'s strided views; attention over either, broadcast
    over the candidates with a GSU's picks, is the same."""
    from seqctr.nn import MultiHeadTargetAttention

    torch.manual_seed(2)
    B, T, H = 5, 12, 4
    att = MultiHeadTargetAttention(8, 16, num_heads=H).eval()
    keys = torch.randn(1, T, 8)
    cached = att.cache_kv(keys)
    k, v, _ = att.project_kv(keys)
    assert cached["k"].is_contiguous() and cached["v"].is_contiguous() and not k.is_contiguous()
    torch.testing.assert_close(cached["k"], k, rtol=0, atol=0)
    torch.testing.assert_close(cached["v"], v, rtol=0, atol=0)
    q, mask = torch.randn(B, 8), torch.ones(B, T, dtype=torch.bool)
    idx = torch.sort(torch.stack([torch.randperm(T)[:5] for _ in range(B)]), dim=-1).values
    sel = torch.ones(B, 5, dtype=torch.bool)
    with torch.no_grad():
        for kw in ({}, {"topk": 4}, {"select": (idx, sel)}):
            got = att.attend(q, cached["k"].expand(B, -1, -1, -1), cached["v"].expand(B, -1, -1, -1), mask, **kw)
            want = att.attend(q, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), mask, **kw)
            torch.testing.assert_close(got.out, want.out, atol=1e-6, rtol=1e-5)

def test_attend_with_a_selection_equals_attention_over_the_gathered_events():
    """``select=(idx, sel_mask)`` == attention over the history cut down to those events."""
    from seqctr.nn import MultiHeadTargetAttention
    from seqctr.ops import gather_positions

    torch.manual_seed(2)
    B, T = 5, 11
    att = MultiHeadTargetAttention(8, 16, num_heads=2).eval()
    q, hist = torch.randn(B, 8), torch.randn(B, T, 8)
    idx = torch.stack([torch.randperm(T)[:6] for _ in range(B)])
    sel = torch.rand(B, 6) > 0.3
    sel[0] = False                                                     # a candidate with nothing selected
    k, v, _ = att.project_kv(hist)
    got = att.attend(q, k, v, None, select=(idx, sel))
    want = att(q, gather_positions(hist, idx), sel)
    torch.testing.assert_close(got.out, want.out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.weights.gather(-1, idx.unsqueeze(1).expand(-1, 2, -1)), want.weights,
                               atol=1e-6, rtol=1e-5)
    assert torch.equal(got.out[0], torch.zeros(8))


def _dice_statistics(att: DINAttention, seed: int = 0) -> None:
    """Non-trivial running statistics and Dice slopes (the defaults make Dice a plain gate)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in att.modules():
            if isinstance(m, MaskedDice):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 3 + 0.1)
                m.alpha.copy_(torch.randn(m.alpha.shape, generator=g))


def test_inference_dice_fold_equals_the_textbook_form():
    """Eval mode without autograd folds Dice's running statistics and the output layer into three
    passes (MaskedDice.score_eval): the scores equal the concatenated form and the autograd path,
    and the serving form (cached key term) takes the same fold."""
    from seqctr.nn import AttentionCondition

    torch.manual_seed(0)
    for hidden in ([16], [16, 4]):
        att = DINAttention(8, hidden).eval()
        att.enable_condition(4)
        _dice_statistics(att)
        q, k, mask = _inputs()
        want = att.reference_scores(q, k, mask)
        slow = att.scores(q, k, mask)                       # autograd on: Dice, then the layer
        with torch.no_grad():
            fast = att.scores(q, k, mask)
            cached = att.scores(q, k, mask, key_term=att.key_term(k))
            cond = AttentionCondition(prompts=torch.randn(6, 2, 8), qk=torch.randn(6, 4), temperature=torch.rand(6) + 1)
            fast_out = att(q, k, mask, cond)
        torch.testing.assert_close(fast, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached, want, atol=1e-5, rtol=1e-5)
        slow_out = att(q, k, mask, cond)
        torch.testing.assert_close(fast_out.out, slow_out.out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast_out.prompt_weights, slow_out.prompt_weights, atol=1e-5, rtol=1e-5)
        assert want.std() > 1e-2                                # the scores are not a constant


def test_pool_argument_replaces_the_history_sum_and_keeps_the_prompts():
    """``pool`` computes the history's weighted sum; prompts are still pooled by the layer."""
    from seqctr.nn import AttentionCondition

    att = DINAttention(8, [16]).eval()
    q, k, mask = _inputs()
    cond = AttentionCondition(prompts=torch.randn(6, 2, 8))
    calls = []

    def pool(w):
        calls.append(w.shape)
        return torch.einsum("bt,btd->bd", w, k)

    got, want = att(q, k, mask, cond, pool=pool), att(q, k, mask, cond)
    assert calls == [(6, 9)]                                 # the history's weights only, not the prompts'
    torch.testing.assert_close(got.out, want.out, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_over_distinct_rows_equals_attention_over_their_events(impl):
    """``Events.distinct_of(R, inv)`` gives the outputs, weights and gradients of attending over
    ``keys = R[inv]`` in the reference form, whatever ``impl`` runs: full attention (a short window,
    an ESU's selection), top-k below and above ``T``, one and three heads, a key width below the
    input's, prompts, length shift, temperature, score bias; float64; and with more distinct rows
    than entries."""
    from seqctr.nn import AttentionCondition, MultiHeadTargetAttention

    g = torch.Generator().manual_seed(3)
    _, _, mask = _inputs()
    for U in (5, 60):                                        # fewer rows than entries, and more
        inv = torch.randint(0, U, (6, 9), generator=g)
        for heads, key_dim in ((1, None), (3, 6)):
            att = MultiHeadTargetAttention(8, 12, num_heads=heads, key_dim=key_dim)
            att.enable_condition(4)
            att.double()
            for topk in (None, 3, 50):
                for cond in (False, True):
                    c = AttentionCondition(prompts=torch.randn(6, 2, 8, dtype=torch.float64, generator=g),
                                           qk=torch.randn(6, 4, dtype=torch.float64, generator=g),
                                           temperature=torch.rand(6, dtype=torch.float64, generator=g) + 1) if cond else None
                    results = []
                    for form, use_rows in ((impl, True), ("reference", False)):
                        set_impl(att, form)
                        R = torch.randn(U, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
                        q = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
                        bias = torch.randn(6, heads, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
                        ev = Events.distinct_of(R, inv) if use_rows else R[inv]
                        res = att(q, ev, mask, c, topk=topk, score_bias=bias)
                        res.out.sin().sum().backward()
                        results.append([res.out, res.weights, R.grad, q.grad,
                                        *(p.grad.clone() for p in att.parameters() if p.grad is not None)])
                        att.zero_grad(set_to_none=True)
                    assert len(results[0]) == len(results[1])
                    for a, b in zip(*results):
                        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
