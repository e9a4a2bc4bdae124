"""Shared attention layers: fused DIN form == textbook form; masking; Dice ignores padding."""
from __future__ import annotations

import torch

from seqctr.nn import DINAttention, masked_softmax
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
