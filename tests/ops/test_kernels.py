"""matvec / vecmat: the values and gradients of torch.bmm, for one head and several."""
from __future__ import annotations

import pytest
import torch

from seqctr.ops.kernels import matvec, vecmat


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


def _rows_case(N=7, k=5, U=9, D=4, seed=0):
    """Columns with a row's event repeated, a row reading one event k times, float64 operands."""
    g = torch.Generator().manual_seed(seed)
    col = torch.randint(0, U, (N, k), generator=g)
    col[0, 1] = col[0, 3]
    col[2] = 3
    R = torch.randn(U, D, dtype=torch.float64, generator=g, requires_grad=True)
    X = torch.randn(N, D, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(N, k, dtype=torch.float64, generator=g, requires_grad=True)
    return col, R, X, w


def test_row_scores_and_pool_equal_the_gathered_products_with_gradients():
    """The sparse forms give the values and gradients of gathering ``R[col]`` (repeats included)."""
    from seqctr.ops.kernels import row_pattern, row_pool, row_scores

    col, R, X, w = _rows_case()
    pat = row_pattern(col, R.shape[0])
    got = (row_scores(X, R, pat), row_pool(w, R, pat))
    want = ((R[col] * X[:, None]).sum(-1), (w[..., None] * R[col]).sum(1))
    for a, b, args in zip(got, want, ((X, R), (w, R))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        g = torch.randn_like(b)
        torch.testing.assert_close(torch.autograd.grad(a, args, g), torch.autograd.grad(b, args, g),
                                   atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda X, R: row_scores(X, R, pat), (X, R))
    assert torch.autograd.gradcheck(lambda w, R: row_pool(w, R, pat), (w, R))


def test_row_pattern_builds_valid_csr_matrices():
    """Both CSR forms satisfy PyTorch's invariants (sorted, distinct columns per row), so the sparse
    kernels never see undefined input; the merged entries sum a row's repeats."""
    from seqctr.ops.kernels import row_pattern

    col, *_ = _rows_case()
    pat = row_pattern(col, 9)
    v = torch.arange(pat.ucol.numel(), dtype=torch.float64)
    for m in (pat.csr(v), pat.csr_t(v)):
        torch.sparse_csr_tensor(m.crow_indices(), m.col_indices(), m.values(), m.shape, check_invariants=True)
    dense = torch.zeros(7, 9, dtype=torch.float64).scatter_add_(1, col, torch.ones(7, 5, dtype=torch.float64))
    torch.testing.assert_close(pat.csr(pat.merge(torch.ones(7, 5, dtype=torch.float64))).to_dense(), dense)
    torch.testing.assert_close(pat.csr_t(v).to_dense(), pat.csr(v).to_dense().T)
    assert pat.ucol.numel() < col.numel()                          # the repeats really were merged


def test_row_products_gradient_only_where_asked_and_float32_under_autocast():
    from seqctr.ops.kernels import row_pattern, row_pool, row_scores, sparse_pays

    col, R, X, w = _rows_case()
    pat = row_pattern(col, R.shape[0])
    Xc = X.detach().float().requires_grad_()
    row_scores(Xc, R.detach().float(), pat).sum().backward()        # R constant: only X's gradient
    torch.testing.assert_close(Xc.grad, R.detach().float()[col].sum(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = row_pool(w.detach().bfloat16(), R.detach().float(), pat)
    assert out.dtype == torch.float32
    assert sparse_pays(9, col.numel()) and not sparse_pays(36, col.numel()) and not sparse_pays(9, 0)


@pytest.mark.parametrize("share", [0.4, 0.0])
def test_row_pool_over_kept_entries_equals_the_masked_sum(share):
    """``keep`` (SDIM's collisions) drops entries: the pooled sum and its gradients are those of the
    masked dense sum, a row keeping nothing (or every row) pools to zero, and the CSR stays valid."""
    from seqctr.ops.kernels import row_pattern, row_pool, row_scores

    col, R, X, w = _rows_case(N=9, k=6, U=8, seed=1)
    keep = torch.rand(9, 6, generator=torch.Generator().manual_seed(2)) < share
    keep[0] = False
    pat = row_pattern(col, R.shape[0], keep)
    m = pat.csr(torch.ones(pat.ucol.numel(), dtype=torch.float64))
    torch.sparse_csr_tensor(m.crow_indices(), m.col_indices(), m.values(), m.shape, check_invariants=True)
    wk = w * keep
    got, want = row_pool(w, R, pat), (wk[..., None] * R[col]).sum(1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (w, R), g), torch.autograd.grad(want, (w, R), g),
                               atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(row_scores(X, R, pat), (R[col] * X[:, None]).sum(-1) * keep, atol=1e-12, rtol=1e-12)
    assert got[0].abs().sum() == 0 and pat.ucol.numel() <= int(keep.sum())


def test_importing_seqctr_leaves_the_warning_filters_alone():
    """No global filter on the importer's warnings (PyTorch's one CSR beta notice is spent locally)."""
    import subprocess
    import sys

    code = ("import warnings, numpy, torch, torch.jit; before = list(warnings.filters); "
            "import seqctr.ops.kernels, seqctr.models; "
            "assert warnings.filters == before, [f for f in warnings.filters if f not in before]")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
