"""Batched matrix-vector products of target attention, with a backward that suits them.

Target attention multiplies each sample's event matrix ``A [B, T, D]`` by a few vectors (one per
head): scores ``A @ x`` and pooled ``w @ A``. Autograd's ``bmm`` backward computes the gradient of
``A`` as a batched GEMM of inner dimension 1 (an outer product per sample), which BLAS runs
several times slower than the same numbers written as a broadcast multiply, and a product of
output width 1 about twice as slow as a row-wise dot product. These two functions give the same
values and gradients as ``torch.bmm``, each product in its fastest CPU form (for one head; several
heads keep the GEMMs, whose inner dimension is then the number of heads).
"""
from __future__ import annotations

import torch


def _scores(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``A [B, T, D] @ X [B, D, H]`` -> ``[B, T, H]``; for ``H == 1`` as a row-wise dot product
    (about twice as fast as a batched GEMM of output width 1 on CPU)."""
    if X.shape[-1] == 1:
        return torch.linalg.vecdot(A, X.transpose(1, 2)).unsqueeze(-1)
    return torch.bmm(A, X)


def _outer(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u [B, T, H] @ v [B, H, D]`` -> ``[B, T, D]``; for ``H == 1`` as a broadcast multiply."""
    return u * v if u.shape[-1] == 1 else torch.bmm(u, v)


class _MatVec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, X):
        ctx.save_for_backward(A, X)
        return _scores(A, X)

    @staticmethod
    def backward(ctx, g):
        A, X = ctx.saved_tensors
        g = g.to(A.dtype)        # under autocast the forward's bmm may have returned bfloat16
        gA = _outer(g, X.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gX = torch.bmm(g.transpose(1, 2), A).transpose(1, 2) if ctx.needs_input_grad[1] else None
        return gA, gX


class _VecMat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W, A):
        ctx.save_for_backward(W, A)
        return torch.bmm(W, A)

    @staticmethod
    def backward(ctx, g):
        W, A = ctx.saved_tensors
        g = g.to(A.dtype)        # under autocast the forward's bmm may have returned bfloat16
        gW = _scores(A, g.transpose(1, 2)).transpose(1, 2) if ctx.needs_input_grad[0] else None
        gA = _outer(W.transpose(1, 2), g) if ctx.needs_input_grad[1] else None
        return gW, gA


def _same_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in their promoted dtype (under bfloat16 autocast one side may be bfloat16, the other
    float32: these memory-bound products then run in float32)."""
    dt = torch.promote_types(a.dtype, b.dtype)
    return a.to(dt), b.to(dt)


def matvec(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``A [B, T, D] @ X [B, D, H]`` -> ``[B, T, H]`` (scores of T events for H query vectors)."""
    return _MatVec.apply(*_same_dtype(A, X))


def vecmat(W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``W [B, H, T] @ A [B, T, D]`` -> ``[B, H, D]`` (H weighted sums of T events)."""
    return _VecMat.apply(*_same_dtype(W, A))


def pool_distinct(w: torch.Tensor, inv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``sum_t w[b, t] rows[inv[b, t]]`` as ``W @ rows``, with ``W [B, U]`` the weights summed per
    distinct event: ``w, inv [B, T]``, ``rows [U, D]`` -> ``[B, D]`` (differentiable in ``w`` and
    ``rows``)."""
    dt = torch.promote_types(w.dtype, rows.dtype)
    W = torch.zeros(w.shape[0], rows.shape[0], dtype=dt, device=w.device)
    return W.scatter_add(1, inv, w.to(dt)) @ rows.to(dt)


def distinct_scores(Q: torch.Tensor, R: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """``Q [B, H, D]`` against every event ``R[inv] [B, T, D]`` -> ``[B, H, T]``, as one
    ``[B H, D] x [D, U]`` GEMM over the ``U`` distinct rows ``R [U, D]`` gathered back by
    ``inv [B, T]``, in the promoted dtype even under autocast (top-k over bfloat16 scores would
    tie). Its backward is a GEMM too: no ``[B, T, D]`` gradient is formed."""
    B, H, D = Q.shape
    Q, R = _same_dtype(Q, R)
    with torch.autocast(R.device.type, enabled=False):
        s = (Q.reshape(B * H, D) @ R.T).view(B, H, -1)                                   # [B, H, U]
    return torch.gather(s, -1, inv.unsqueeze(1).expand(B, H, inv.shape[-1]))
