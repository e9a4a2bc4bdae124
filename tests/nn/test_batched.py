"""matvec / vecmat: the values and gradients of torch.bmm, for one head and several."""
from __future__ import annotations

import pytest
import torch

from seqctr.nn.batched import matvec, vecmat


@pytest.mark.parametrize("heads", [1, 3])
def test_matvec_and_vecmat_equal_bmm_with_gradients(heads):
    torch.manual_seed(0)
    A = torch.randn(4, 7, 5, dtype=torch.float64, requires_grad=True)
    X = torch.randn(4, 5, heads, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, heads, 7, dtype=torch.float64, requires_grad=True)
    for ours, ref, args in ((matvec, torch.bmm, (A, X)), (vecmat, torch.bmm, (W, A))):
        got, want = ours(*args), ref(*args)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad(got, args, g), torch.autograd.grad(want, args, g))
        assert torch.autograd.gradcheck(ours, args)


def test_gradient_only_where_asked():
    A = torch.randn(2, 3, 4)                                   # a constant event matrix
    X = torch.randn(2, 4, 1, requires_grad=True)
    matvec(A, X).sum().backward()
    torch.testing.assert_close(X.grad, A.sum(1).unsqueeze(-1))
