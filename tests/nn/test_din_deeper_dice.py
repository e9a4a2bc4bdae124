"""DIN's activation unit with several hidden layers: Dice in every one (as FuxiCTR), still exactly the
textbook form, and still blind to padding (Dice's batch statistics use real events only)."""
from __future__ import annotations

import torch

from seqctr.nn.attention import DINAttention, MaskedDice


def test_every_hidden_layer_uses_dice_and_fused_equals_reference():
    torch.manual_seed(0)
    att = DINAttention(8, [16, 8, 4])
    assert sum(isinstance(m, MaskedDice) for m in att.modules()) == 3
    q, k = torch.randn(4, 8), torch.randn(4, 6, 8)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, :3] = False
    for training in (True, False):
        att.train(training)
        torch.testing.assert_close(att.scores(q, k, mask), att.reference_scores(q, k, mask), atol=1e-5, rtol=1e-5)


def test_deeper_dice_statistics_ignore_padding():
    torch.manual_seed(1)
    att = DINAttention(8, [16, 8]).train()
    q, k = torch.randn(3, 8), torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, :2] = False
    base = att(q, k, mask).out
    padded_k = torch.cat([torch.randn(3, 4, 8) * 100, k], 1)           # 4 more padded slots, garbage values
    padded_m = torch.cat([torch.zeros(3, 4, dtype=torch.bool), mask], 1)
    torch.testing.assert_close(att(q, padded_k, padded_m).out, base, atol=1e-5, rtol=1e-5)
