"""Target-attention ops: each step a function with named implementations and a plain reference.

A target attention scores the history events against a query, selects some (top-k), softmaxes and
pools. The events come in one of two exact forms (:class:`Events`): dense ``x [B, T, D]``, or the
batch's distinct events ``rows [U, D]`` read through ``index [B, T]`` (``x == rows[index]``; on
ml100k ``U`` is ~1,400 against ``B T`` = 51,200). Each op takes ``impl``, one of:

- ``reference``: plain PyTorch over the dense events (``einsum``; the oracle of the tests);
- ``dense``: the batched mat-vec products of :mod:`~seqctr.ops.kernels` over the dense events;
- ``distinct``: one GEMM over ``rows`` (scores), or the weights summed per distinct event (pool);
- ``sparse``: sampled / sparse CSR products over ``rows`` (no ``[B, T, D]`` tensor or gradient).

All four give the same values and gradients within float rounding (``tests/ops``). Which form is
fastest depends on the data: :func:`fast_form` is the one place that choice is made, for the
``fast`` setting of a module (``seqctr.ops.set_impl``, or ``model.impl`` in a config). Whole-epoch
speed of the forms: bench/results/ops_epoch.md.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .kernels import (RowPattern, distinct_scores, matvec, needs_grad, pool_distinct, row_pattern, row_pool, row_scores,
                      sparse_pays, vecmat)

FORMS = ("reference", "dense", "distinct", "sparse")
IMPLS = ("fast",) + FORMS


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention implementation {impl!r}: expected one of {list(IMPLS)}")
    return impl


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [B, T, D]`` at ``idx [B, ...]`` -> ``[B, ..., D]`` (e.g. ``[B, k]`` or ``[B, H, k]``).

    Done as one ``index_select`` over the flattened rows: its backward is an ``index_add``, much
    cheaper on CPU than the scatter behind ``torch.gather``'s backward."""
    B, T, D = x.shape
    flat = (idx + torch.arange(B, device=idx.device).view(B, *([1] * (idx.dim() - 1))) * T).reshape(-1)
    return torch.index_select(x.reshape(B * T, D), 0, flat).view(*idx.shape, D)


@dataclass(frozen=True)
class Events:
    """The events one attention reads, per sample (``[B, T]``) or per sample and head (``[B, H, k]``,
    an ESU's or top-k's selection). Exactly one form:

    - dense: ``x [B, T, D]`` or ``[B, H, k, D]``;
    - distinct: ``rows [U, D]`` and ``index [B, T]`` or ``[B, H, k]`` (int64), the events being
      ``rows[index]``; ``pattern`` the :class:`~seqctr.ops.kernels.RowPattern` of ``index`` per
      head when prepared for the sparse form (:meth:`with_pattern`).

    A plain value: nothing is computed on read."""

    x: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    index: torch.Tensor | None = None
    pattern: RowPattern | None = None

    def __post_init__(self):
        if (self.x is None) == (self.rows is None) or (self.rows is None) != (self.index is None):
            raise ValueError("Events: give either x, or rows and index")

    @classmethod
    def dense_of(cls, x: torch.Tensor) -> "Events":
        return cls(x=x)

    @classmethod
    def distinct_of(cls, rows: torch.Tensor, index: torch.Tensor) -> "Events":
        return cls(rows=rows, index=index)

    @property
    def is_distinct(self) -> bool:
        return self.rows is not None

    @property
    def per_head(self) -> bool:
        """True for a per-head selection (``[B, H, k]`` positions)."""
        return (self.index.dim() if self.is_distinct else self.x.dim() - 1) == 3

    @property
    def positions(self) -> tuple[int, ...]:
        """``(B, T)`` or ``(B, H, k)``."""
        return tuple(self.index.shape) if self.is_distinct else tuple(self.x.shape[:-1])

    def dense(self) -> torch.Tensor:
        """The events as one tensor ``[*positions, D]`` (distinct rows gathered: an ``index_select``)."""
        if not self.is_distinct:
            return self.x
        return self.rows.index_select(0, self.index.reshape(-1)).view(*self.index.shape, self.rows.shape[-1])

    def as_dense(self) -> "Events":
        return self if not self.is_distinct else Events(x=self.dense())

    def last(self, n: int) -> "Events":
        """The most recent ``n`` positions (per-sample events only)."""
        if self.is_distinct:
            return Events(rows=self.rows, index=self.index[:, -n:])
        return Events(x=self.x[:, -n:])

    def at(self, idx: torch.Tensor) -> "Events":
        """The events at positions ``idx [B, k]`` or per head ``[B, H, k]`` (of per-sample events)."""
        if self.is_distinct:
            if idx.dim() == 3:
                B, H, _ = idx.shape
                return Events(rows=self.rows, index=torch.gather(self.index.unsqueeze(1).expand(B, H, -1), -1, idx))
            return Events(rows=self.rows, index=torch.gather(self.index, 1, idx))
        return Events(x=gather_positions(self.x, idx))

    def head_index(self, heads: int) -> torch.Tensor:
        """``index`` as ``[B H, T]``: one row per sample and head."""
        idx = self.index if self.per_head else self.index.unsqueeze(1).expand(-1, heads, -1)
        B, H, T = idx.shape
        return idx.reshape(B * H, T)

    def with_pattern(self, heads: int) -> "Events":
        """Distinct events with the CSR pattern of :meth:`head_index` made (for ``sparse``)."""
        if self.pattern is not None:
            return self
        return replace(self, pattern=row_pattern(self.head_index(heads), self.rows.shape[0]))


def fast_form(ev: Events, heads: int, scoring_for_topk: bool = False) -> str:
    """The form the ``fast`` setting uses for ``ev``: dense events -> ``dense``; distinct events ->
    ``distinct`` to score every event before a top-k (one GEMM over ``U`` rows), else ``sparse`` when
    :func:`~seqctr.ops.kernels.sparse_pays` (eager, ``U`` no more than the entries read), else
    ``dense`` (the rows gathered)."""
    if not ev.is_distinct:
        return "dense"
    if scoring_for_topk and not ev.per_head:
        return "distinct"
    n = ev.index.numel() * (1 if ev.per_head else heads)
    return "sparse" if sparse_pays(ev.rows.shape[0], n) else "dense"


def resolve(impl: str, ev: Events, heads: int, scoring_for_topk: bool = False) -> tuple[Events, str]:
    """``(events, form)`` ready for :func:`event_scores` / :func:`event_pool`: ``fast`` resolved by
    :func:`fast_form`, events made dense for the dense forms and given their pattern for ``sparse``;
    ``distinct`` and ``sparse`` asked of dense events run ``dense``."""
    form = fast_form(ev, heads, scoring_for_topk) if impl == "fast" else check_impl(impl)
    if form in ("distinct", "sparse") and not ev.is_distinct:
        form = "dense"               # (those forms read distinct rows; dense events have none)
    if form == "dense" and ev.is_distinct:
        ev = ev.as_dense()
    if form == "sparse":
        ev = ev.with_pattern(heads)
    return ev, form


def event_scores(q: torch.Tensor, ev: Events, form: str) -> torch.Tensor:
    """``s[b, h, t] = q[b, h] . e[b, (h,) t][:K]``: ``q [B, H, K]`` (``K <= D``: the events' first ``K``
    features) -> ``[B, H, T]``."""
    B, H, K = q.shape
    if form == "reference":
        e = ev.dense()[..., :K]
        return torch.einsum("bhk,bhtk->bht", q, e) if ev.per_head else torch.einsum("bhk,btk->bht", q, e)
    if form == "dense":
        if ev.per_head:
            T = ev.x.shape[2]
            return matvec(ev.x[..., :K].reshape(B * H, T, K), q.reshape(B * H, K, 1)).view(B, H, T)
        return matvec(ev.x[..., :K], q.transpose(1, 2)).transpose(1, 2)
    if form == "distinct":
        if ev.per_head:                 # every row scored per head, then each head's picks read
            U = ev.rows.shape[0]
            s = distinct_scores(q, ev.rows[:, :K], torch.arange(U, device=q.device).expand(B, U))
            return torch.gather(s, -1, ev.index)
        return distinct_scores(q, ev.rows[:, :K], ev.index)
    if form == "sparse":
        ev = ev.with_pattern(H)
        return row_scores(q.reshape(B * H, K), ev.rows[:, :K], ev.pattern).view(B, H, -1)
    raise ValueError(f"unknown form {form!r}; expected one of {list(FORMS)}")


def event_pool(w: torch.Tensor, ev: Events, form: str) -> torch.Tensor:
    """``p[b, h] = sum_t w[b, h, t] e[b, (h,) t]``: ``w [B, H, T]`` -> ``[B, H, D]``."""
    B, H, T = w.shape
    if form == "reference":
        e = ev.dense()
        return torch.einsum("bht,bhtd->bhd", w, e) if ev.per_head else torch.einsum("bht,btd->bhd", w, e)
    if form == "dense":
        if ev.per_head:
            D = ev.x.shape[-1]
            return vecmat(w.reshape(B * H, 1, T), ev.x.reshape(B * H, T, D)).view(B, H, D)
        return vecmat(w, ev.x)
    if form == "distinct":
        return pool_distinct(w.reshape(B * H, T), ev.head_index(H), ev.rows).view(B, H, -1)
    if form == "sparse":
        ev = ev.with_pattern(H)
        return row_pool(w.reshape(B * H, T), ev.rows, ev.pattern).view(B, H, -1)
    raise ValueError(f"unknown form {form!r}; expected one of {list(FORMS)}")


# ------------------------------------------------------------------- cached K/V (serving)
def shared(t: torch.Tensor) -> torch.Tensor | None:
    """``t[0]`` when ``t [B, ...]`` is one tensor broadcast over the batch (stride 0, ``B > 1``): one
    user's cache expanded over its candidates."""
    return t[0] if t.shape[0] > 1 and t.stride(0) == 0 else None


class Picks:
    """Positions ``idx [B, H, n]`` picked from a cache's events (a GSU's choice), for :func:`head_scores` and
    :func:`head_pool` of the same picks: their block-diagonal CSR pattern (:func:`_shared_csr`) is made at most
    once for both (its ascending-order check reads every pick)."""

    def __init__(self, idx: torch.Tensor):
        self.idx, self._patterns = idx, {}

    @classmethod
    def of(cls, idx: torch.Tensor | Picks) -> Picks:
        """``idx`` itself when it is already :class:`Picks` (its pattern kept), else new picks of it."""
        return idx if isinstance(idx, cls) else cls(idx)

    def pattern(self, T: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(crow, col)`` of the picks over ``T`` events per head (row ``b H + h``: columns ``h T + idx[b, h]``),
        or None where that is not a valid CSR (a row's positions not strictly ascending, as
        :func:`~seqctr.ops.select.topk_select` returns them, or no picks)."""
        if T not in self._patterns:
            idx = self.idx
            B, H, n = idx.shape
            ok = n > 0 and (n == 1 or bool((idx.diff() > 0).all()))
            self._patterns[T] = None if not ok else (
                torch.arange(0, B * H * n + 1, n, device=idx.device),
                (idx + torch.arange(H, device=idx.device).view(1, H, 1) * T).reshape(-1))
        return self._patterns[T]


def _shared_csr(picks: Picks, T: int, values: torch.Tensor) -> torch.Tensor | None:
    """The picks of a broadcast cache as one block-diagonal CSR matrix ``[B H, H T]`` (row ``b H + h`` holds
    ``values[b, h]`` at columns ``h T + idx[b, h]``), or None where :meth:`Picks.pattern` is None or the dtype
    has no sparse product here (float32 / float64 only)."""
    pattern = picks.pattern(T) if values.dtype in (torch.float32, torch.float64) else None
    if pattern is None:
        return None
    B, H, _ = picks.idx.shape
    return torch.sparse_csr_tensor(*pattern, values.reshape(-1), (B * H, H * T), check_invariants=False)


def _sparse_ok(*ts: torch.Tensor) -> bool:
    """The CSR products serve only eager inference: no gradient taken here (autograd off, or no input
    needing it) and no graph being captured (``torch.compile`` / ``torch.export`` take the gathers)."""
    return not torch.compiler.is_compiling() and not needs_grad(*ts)


def head_scores(q: torch.Tensor, k: torch.Tensor, impl: str, idx: torch.Tensor | Picks | None = None) -> torch.Tensor:
    """``q [B, H, hd] . k [B, H, T, hd]`` / sqrt(hd) -> ``[B, H, T]``; with ``idx [B, H, n]`` (or its
    :class:`Picks`) only the events at those positions -> ``[B, H, n]`` (as ``head_scores(q, head_rows(k, idx))``).

    ``fast`` with one user's cache broadcast over the candidates: every event, one GEMM per head against
    the shared ``[H, T, hd]`` (no copy); the picks, one sampled product (SDDMM) over the shared rows
    instead of copying each candidate's picks out (``torch.sparse.sampled_addmm`` on :func:`_shared_csr`)."""
    hd = q.shape[-1]
    k0 = shared(k) if impl != "reference" else None
    if idx is not None:
        picks = Picks.of(idx)
        ok = k0 is not None and k0.dtype == q.dtype and _sparse_ok(q, k)
        csr = _shared_csr(picks, k.shape[2], q.new_zeros(picks.idx.shape)) if ok else None
        if csr is None:
            return head_scores(q, head_rows(k, picks.idx, impl), impl)
        H, T, _ = k0.shape
        out = torch.sparse.sampled_addmm(csr, q.reshape(-1, hd), k0.reshape(H * T, hd).t(), beta=0, alpha=hd ** -0.5)
        return out.values().view(picks.idx.shape)
    if k0 is not None:   # [H, B, hd] @ [H, hd, T], the 1/sqrt(hd) applied inside the GEMM
        return torch.baddbmm(q.new_zeros(1, 1, 1), q.transpose(0, 1), k0.transpose(-1, -2),
                             beta=0, alpha=hd ** -0.5).transpose(0, 1)
    return (q.unsqueeze(2) @ k.transpose(-1, -2)).squeeze(2) / hd ** 0.5


def head_rows(x: torch.Tensor, idx: torch.Tensor, impl: str) -> torch.Tensor:
    """Per-head rows of ``x [B, H, T, hd]`` at ``idx [B, H, k]`` -> ``[B, H, k, hd]``; ``fast`` reads a
    broadcast cache's shared ``[H, T, hd]`` once (one ``index_select``)."""
    hd = x.shape[-1]
    x0 = shared(x) if impl != "reference" else None
    if x0 is None:
        return torch.gather(x, 2, idx.unsqueeze(-1).expand(*idx.shape, hd))
    H, T, _ = x0.shape
    flat = (idx + torch.arange(H, device=idx.device).view(1, H, 1) * T).reshape(-1)
    return x0.reshape(H * T, hd).index_select(0, flat).view(*idx.shape, hd)


def head_pool(w: torch.Tensor, v: torch.Tensor, impl: str, idx: torch.Tensor | Picks | None = None) -> torch.Tensor:
    """``sum_t w[b, h, t] v[b, h, t]``: ``w [B, H, T]``, ``v [B, H, T, hd]`` -> ``[B, H, hd]``; with
    ``idx [B, H, n]`` (or its :class:`Picks`), ``w [B, H, n]`` weighs the events at those positions (as
    ``head_pool(w, head_rows(v, idx))``). ``fast`` with a broadcast cache: every event, one GEMM per head; the
    picks, one sparse-dense product over the shared rows (no per-candidate copy of the picked values)."""
    v0 = shared(v) if impl != "reference" else None
    if idx is not None:
        picks = Picks.of(idx)
        ok = v0 is not None and v0.dtype == w.dtype and _sparse_ok(w, v)
        csr = _shared_csr(picks, v.shape[2], w) if ok else None
        if csr is None:
            return head_pool(w, head_rows(v, picks.idx, impl), impl)
        H, T, hd = v0.shape
        return (csr @ v0.reshape(H * T, hd)).view(*picks.idx.shape[:2], hd)
    if v0 is not None:
        return (w.transpose(0, 1) @ v0).transpose(0, 1)
    return (w.unsqueeze(2) @ v).squeeze(2)


def selection_as_mask(select: tuple, k: torch.Tensor, impl: str) -> tuple[torch.Tensor | None, tuple | None]:
    """An exact search's ``select = (idx [B, n], sel_mask [B, n])`` over cached ``k [B, H, T, hd]``:
    ``(mask [B, T], None)`` to attend over every event with the others masked, or ``(None, select)``
    to gather the picks. ``fast`` masks when the cache is shared and ``4 n >= T`` (then the full-history
    GEMMs cost less than per-candidate copies of the picks, bench/bench_serving.py); the two are equal."""
    idx, sel = select
    B, _, T, _ = k.shape
    if torch.compiler.is_exporting():    # a captured graph takes one form for every history length
        return None, select
    if impl == "fast" and shared(k) is not None and 4 * idx.shape[-1] >= T:
        return torch.zeros(B, T, dtype=torch.bool, device=k.device).scatter(1, idx, sel), None
    return None, select


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring positions where ``mask`` is False; all-masked rows give zeros
    (an empty history attends to nothing instead of producing NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(w, nan=0.0)


def set_impl(module: torch.nn.Module, impl: str) -> torch.nn.Module:
    """Run every target attention in ``module`` with ``impl`` (``fast`` by default); returns ``module``."""
    check_impl(impl)
    for m in module.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return module
