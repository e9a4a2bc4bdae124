"""seqctr's dropout (NumPy-drawn masks): nn.Dropout's semantics, reproducible from its seed/state."""
from __future__ import annotations

import pytest
import torch

from seqctr.nn import dropout
from seqctr.nn.dropout import Dropout


def test_zeroes_at_rate_p_and_keeps_the_expectation():
    d = Dropout(0.2).train()
    x = torch.ones(1000, 1000)
    y = d(x)
    zero = (y == 0).float().mean().item()
    assert abs(zero - d.threshold / 65536) < 3e-3
    kept = y[y != 0]
    assert torch.all(kept == d.scale)                       # survivors scaled, nothing else changes
    assert abs(y.mean().item() - 1.0) < 5e-3                # expectation preserved


def test_identity_in_eval_and_at_p_zero():
    x = torch.randn(50, 7)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_gradient_is_the_same_mask():
    d = Dropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)
    y = d(x)
    y.sum().backward()
    mask = (y != 0).float() * d.scale
    torch.testing.assert_close(x.grad, mask, rtol=0, atol=0)


def test_same_seed_or_state_same_masks():
    d = Dropout(0.2).train()
    x = torch.ones(40, 40)
    dropout.seed(11)
    a = d(x)
    state = dropout.get_state()
    b = d(x)
    dropout.seed(11)
    assert torch.equal(d(x), a)
    dropout.set_state(state)
    assert torch.equal(d(x), b)
    assert not torch.equal(a, b)
