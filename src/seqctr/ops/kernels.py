"""The fast kernels behind :mod:`seqctr.ops.attention`: batched mat-vec products with a backward that
suits them, GEMMs over distinct rows, and sampled / sparse products over them.

Target attention multiplies each sample's event matrix ``A [B, T, D]`` by a few vectors (one per
head): scores ``A @ x`` and pooled ``w @ A``. Autograd's ``bmm`` backward computes the gradient of
``A`` as a batched GEMM of inner dimension 1 (an outer product per sample), which BLAS runs
several times slower than the same numbers written as a broadcast multiply, and a product of
output width 1 about twice as slow as a row-wise dot product. These two functions give the same
values and gradients as ``torch.bmm``, each product in its fastest CPU form (for one head; several
heads keep the GEMMs, whose inner dimension is then the number of heads).
"""
from __future__ import annotations

import warnings

import torch



def _quiet_csr_beta_warning() -> None:
    """PyTorch says once per process that sparse CSR support is beta; the products below use only
    documented, stable operations on valid CSR (sorted, merged columns). Build one CSR tensor here
    under a local filter, so that once is spent without a global filter on the importer's warnings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        torch.sparse_csr_tensor(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0]), (1, 1),
                                check_invariants=False)


_quiet_csr_beta_warning()


def needs_grad(*ts: torch.Tensor | None) -> bool:
    """Whether autograd will record an op on ``ts``: it is on and some input requires a gradient (the
    ops' no-autograd forms, e.g. the packed recurrence or the sparse picks, run only when it will not)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


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


class RowPattern:
    """Which rows of ``R [U, D]`` each of ``N`` attention rows reads (``col [N, k]``; with ``keep
    [N, k]`` only the kept entries, e.g. SDIM's collisions), as valid CSR matrices (columns sorted,
    a row's repeated events merged into one entry): ``[N, U]``, and its transpose ``[U, N]`` made on
    first use (the backward pass). ``where [N k]`` maps each entry to its merged one (a dropped
    entry to ``nnz``, a slot past the end). Made once and shared by :func:`row_scores` and
    :func:`row_pool` of one attention."""

    def __init__(self, col: torch.Tensor, U: int, keep: torch.Tensor | None = None):
        N, k = col.shape
        self.shape, dev = (N, k, U), col.device
        if keep is None:                # every entry: sort each row (cheaper than one long sort)
            scol, order = torch.sort(col, dim=1)
            first = torch.ones_like(scol, dtype=torch.bool)          # first of its (row, column) run
            first[:, 1:] = scol[:, 1:] != scol[:, :-1]
            self.counts = first.sum(1)
            flat = (order + torch.arange(N, device=dev).unsqueeze(1) * k).reshape(-1)
            scol, first = scol.reshape(-1), first.reshape(-1)
        else:                           # the kept entries, sorted by (row, column)
            kept = keep.reshape(-1).nonzero().squeeze(1)
            key = torch.div(kept, k, rounding_mode="floor") * U + col.reshape(-1)[kept]
            skey, order = torch.sort(key)
            flat, scol = kept[order], skey % U
            first = torch.ones_like(skey, dtype=torch.bool)
            first[1:] = skey[1:] != skey[:-1]                         # (row, column) is the key
            self.counts = torch.bincount(torch.div(skey[first], U, rounding_mode="floor"), minlength=N)
        slot = first.cumsum(0) - 1                                   # merged entry of each sorted one
        self.ucol = scol[first]
        self.where = torch.full((N * k,), self.ucol.numel(), dtype=torch.long, device=dev).scatter_(0, flat, slot)
        self.crow = torch.zeros(N + 1, dtype=torch.long, device=dev)
        self.crow[1:] = self.counts.cumsum(0)
        self._t = None

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """``[N, U]`` sparse with the merged entries' ``values [nnz]``."""
        N, _, U = self.shape
        return torch.sparse_csr_tensor(self.crow, self.ucol, values, (N, U), check_invariants=False)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """The transpose ``[U, N]`` of :meth:`csr` (``values`` in :meth:`csr`'s order)."""
        N, _, U = self.shape
        if self._t is None:
            urow = torch.repeat_interleave(torch.arange(N, device=self.ucol.device), self.counts)
            tperm = torch.sort(self.ucol * N + urow)[1]             # by column, then row (all distinct)
            tcrow = torch.zeros(U + 1, dtype=torch.long, device=self.ucol.device)
            tcrow[1:] = torch.bincount(self.ucol, minlength=U).cumsum(0)
            self._t = (tcrow, urow[tperm], tperm)
        tcrow, trow, tperm = self._t
        return torch.sparse_csr_tensor(tcrow, trow, values[tperm], (U, N), check_invariants=False)

    def merge(self, v: torch.Tensor) -> torch.Tensor:
        """Per-entry ``v [N, k]`` summed into the merged entries ``[nnz]`` (dropped ones ignored)."""
        nnz = self.ucol.numel()
        return v.new_zeros(nnz + 1).index_add_(0, self.where, v.reshape(-1))[:nnz]

    def sampled(self, X: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """``X[n] . R[col[n, j]]`` -> ``[N, k]`` (0 at dropped entries): only the read entries of
        ``X R^T`` (one SDDMM)."""
        pattern = self.csr(X.new_zeros(self.ucol.numel()))
        vals = torch.sparse.sampled_addmm(pattern, X, R.T, beta=0.0).values()
        return torch.cat([vals, vals.new_zeros(1)])[self.where].view(self.shape[:2])


def row_pattern(col: torch.Tensor, U: int, keep: torch.Tensor | None = None) -> RowPattern:
    """:class:`RowPattern` of ``col [N, k]`` (int64 indices into ``U`` rows; ``keep [N, k]`` bool)."""
    return RowPattern(col, U, keep)


def sparse_pays(U: int, entries: int) -> bool:
    """True when reading ``entries`` rows of ``R [U, D]`` through :func:`row_scores` / :func:`row_pool`
    is the cheaper form: eager (dynamo does not trace sparse tensors) and ``U`` no larger than the
    number of entries (their gradients are dense ``[U, D]``; the gathered form's are ``[N, k, D]``)."""
    return entries > 0 and U <= entries and not torch.compiler.is_compiling()


class _RowScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, X, R, pat):
        ctx.save_for_backward(X, R)
        ctx.pat = pat
        return pat.sampled(X, R)

    @staticmethod
    def backward(ctx, g):
        X, R = ctx.saved_tensors
        gv = ctx.pat.merge(g)
        gX = ctx.pat.csr(gv) @ R if ctx.needs_input_grad[0] else None
        gR = ctx.pat.csr_t(gv) @ X if ctx.needs_input_grad[1] else None
        return gX, gR, None


class _RowPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, R, pat):
        v = pat.merge(w)
        ctx.save_for_backward(v, R)
        ctx.pat = pat
        return pat.csr(v) @ R

    @staticmethod
    def backward(ctx, g):
        v, R = ctx.saved_tensors
        g = g.contiguous()
        gw = ctx.pat.sampled(g, R) if ctx.needs_input_grad[0] else None
        gR = ctx.pat.csr_t(v) @ g if ctx.needs_input_grad[1] else None
        return gw, gR, None


def row_scores(X: torch.Tensor, R: torch.Tensor, pat: RowPattern) -> torch.Tensor:
    """``s[n, j] = X[n] . R[col[n, j]]``: ``X [N, D]``, ``R [U, D]`` -> ``[N, k]``, without forming
    the ``[N, k, D]`` events or their gradient: forward is one sampled GEMM (SDDMM), backward two
    sparse-dense products (``[N, U] x [U, D]`` and ``[U, N] x [N, D]``). Same values and gradients as
    ``(R[col] * X[:, None]).sum(-1)``, in the promoted dtype even under autocast."""
    X, R = _same_dtype(X, R)
    with torch.autocast(R.device.type, enabled=False):
        return _RowScores.apply(X.contiguous(), R.contiguous(), pat)


def row_pool(w: torch.Tensor, R: torch.Tensor, pat: RowPattern) -> torch.Tensor:
    """``p[n] = sum_j w[n, j] R[col[n, j]]``: ``w [N, k]``, ``R [U, D]`` -> ``[N, D]``, as one sparse
    ``[N, U] x [U, D]`` product (a row's repeated events summed into one entry); backward an SDDMM
    for ``w`` and a sparse ``[U, N] x [N, D]`` product for ``R``: no ``[N, k, D]`` tensor."""
    w, R = _same_dtype(w, R)
    with torch.autocast(R.device.type, enabled=False):
        return _RowPool.apply(w.contiguous(), R.contiguous(), pat)
