"""MLP.forward_parts: a part broadcast over the batch goes through the first layer once, equal to the
concatenation's forward."""
from __future__ import annotations

import pytest
import torch

from seqctr.nn.mlp import MLP


def _parts(layout: str, B: int = 6):
    """``layout``: one letter per part, ``s`` broadcast over the batch (stride 0), ``o`` its own rows."""
    g = torch.Generator().manual_seed(len(layout) + B)
    out = []
    for i, kind in enumerate(layout):
        d = 2 + i
        if kind == "s":
            out.append(torch.randn(1, d, dtype=torch.float64, generator=g).expand(B, d))
        else:
            out.append(torch.randn(B, d, dtype=torch.float64, generator=g))
    return out


@pytest.mark.parametrize("layout, split", [("soo", True), ("oso", False), ("oos", True), ("ssoo", True),
                                           ("ooo", False), ("sss", False)])
def test_forward_parts_equals_the_concatenation(layout, split):
    parts = _parts(layout)
    m = MLP(sum(p.shape[-1] for p in parts), [7, 3], out_dim=1).double()
    calls = []
    m.net[0].register_forward_hook(lambda *a: calls.append(1))
    got = m.forward_parts(parts)
    assert len(calls) == (0 if split else 1)             # split: the first layer's weight read, the module not called
    calls.clear()
    torch.testing.assert_close(got, m(torch.cat(parts, dim=-1)), rtol=1e-12, atol=1e-12)


def test_forward_parts_of_one_row_and_without_bias():
    m = MLP(5, [4], out_dim=2).double()
    m.net[0].bias = None
    one = [torch.randn(1, 2, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)]   # B = 1: nothing shared
    torch.testing.assert_close(m.forward_parts(one), m(torch.cat(one, -1)))
    parts = [torch.randn(1, 2, dtype=torch.float64).expand(4, 2), torch.randn(4, 3, dtype=torch.float64)]
    torch.testing.assert_close(m.forward_parts(parts), m(torch.cat(parts, -1)), rtol=1e-12, atol=1e-12)
