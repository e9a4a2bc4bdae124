"""Selection ops of two-stage long-sequence models (GSU): exact top-k with a padding-free tie rule, and
SimHash codes."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..utils.compile import eager


def _positions_numpy(x: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values of every row of ``x [R, T]``, ascending ``[R, k]``;
    ties at the k-th value go to the rightmost positions.

    One selection of the k-th value per row (``np.partition``), then the positions at or above it
    in row-major order (``flatnonzero``: each row's in ascending order), dropping the oldest ties
    of the rows that have too many. About 2x faster than the torch path below on CPU at T = 1,000
    (no full-row tie scan, no ``nonzero`` over a torch bool tensor)."""
    R, T = x.shape
    part = np.partition(x, T - k, axis=-1)
    if np.isnan(part[:, T - k:]).any():                    # NaN sorts above every number
        raise ValueError("topk_select: scores contain NaN")
    kth = part[:, T - k: T - k + 1]
    pos = np.flatnonzero(x >= kth)
    row = pos // T
    excess = np.bincount(row, minlength=R) - k              # > 0: more events than k reach the k-th
    if excess.any():
        tie = x.ravel()[pos] == kth[row, 0]
        per_row = np.bincount(row, weights=tie, minlength=R).astype(np.int64)
        rank = np.cumsum(tie) - 1 - (np.cumsum(per_row) - per_row)[row]     # 0 = the row's oldest tie
        pos = pos[~(tie & (rank < excess[row]))]
        row = pos // T
    return (pos - row * T).reshape(R, k)


def _positions_prefiltered(x: np.ndarray, k: int) -> np.ndarray:
    """:func:`_positions_numpy` on a row's few candidates: ``x [R, T] -> [R, k]``, the same positions
    (ties included), for rows much longer than ``k`` (``T >= 10 k``; shorter rows go to the plain form).

    The columns are split into ``n`` interleaved groups (column ``c`` in group ``c mod n``, ``n >= 2.5 k``); the
    ``k``-th largest group maximum ``t`` is at most the row's ``k``-th value (the ``k`` groups above it
    hold ``k`` distinct events at or above ``t``), so every event of the top ``k``, and every tie at the
    ``k``-th value, is among the events ``>= t`` — a few more than ``k`` on real scores. The plain
    selection then runs on those candidates (packed left, in position order, ``-inf`` after them: never
    chosen, as each row has at least ``k`` candidates above ``-inf`` or no padding at all). Cost: one
    pass over the row for the group maxima, one compare, one ``flatnonzero``, instead of a
    selection over the whole row (results page: docs/results/topk_prefilter.md)."""
    R, T = x.shape
    groups = min(16, T // (5 * k // 2))
    n = T // groups
    gmax = x[:, :n].copy()
    for start in range(n, T, n):                           # the last slice may be shorter
        chunk = x[:, start:start + n]
        np.maximum(gmax[:, :chunk.shape[1]], chunk, out=gmax[:, :chunk.shape[1]])
    part = np.partition(gmax, n - k, axis=-1)
    if np.isnan(part[:, n - k:]).any():                    # a NaN makes its group's maximum NaN
        raise ValueError("topk_select: scores contain NaN")
    pos = np.flatnonzero(x >= part[:, n - k: n - k + 1])
    row = pos // T
    counts = np.bincount(row, minlength=R)
    width = int(counts.max())
    flat = np.arange(len(pos)) + (row * width - (np.cumsum(counts) - counts)[row])
    cand = np.full(R * width, -np.inf, dtype=x.dtype)
    cand[flat] = x.ravel()[pos]
    at = np.zeros(R * width, dtype=np.int64)
    at[flat] = pos - row * T
    return np.take_along_axis(at.reshape(R, width), _positions_numpy(cand.reshape(R, width), k), 1)


def _positions_cpu(x: np.ndarray, k: int) -> np.ndarray:
    """The NumPy selection for ``x [R, T]``: :func:`_positions_prefiltered` for rows of at least
    ``10 k`` events, else :func:`_positions_numpy` (the same positions)."""
    return _positions_prefiltered(x, k) if x.shape[1] >= 10 * k else _positions_numpy(x, k)


def _positions_torch(x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`_positions_numpy` in torch (any device or dtype): ``x [R, T] -> [R, k]``."""
    kth = torch.topk(x, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    chosen = x >= kth
    tied = chosen.sum(-1) > k
    if tied.any():                                # rows with more than one event at the k-th score
        ks, ths = x[tied], kth[tied]
        above, tie = ks > ths, ks == ths
        drop = tie.sum(-1, keepdim=True) - (k - above.sum(-1, keepdim=True))       # oldest ties left out
        chosen[tied] = above | (tie & (tie.cumsum(-1) > drop))
    pos = chosen.nonzero()[:, -1]
    if pos.numel() != x.shape[0] * k:
        raise ValueError("topk_select: scores contain NaN")
    return pos.view(-1, k)


def _positions_dense(x: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`_positions_numpy` with no data-dependent shape (no ``nonzero``, no NumPy): the form
    ``torch.export`` can capture (:mod:`seqctr.serving.export`). ``x [R, T]`` float32 or narrower ->
    ``[R, k]``; the same positions, ties included (NaN scores are not checked here).

    One top-k over distinct integer keys: each score's float32 bits mapped to an integer of the same
    order (negative floats have their magnitude bits flipped; -0 is read as +0), times ``T``, plus the
    position, so equal scores rank by position (the most recent first) and the k largest keys are the
    exact choice; then the k positions in ascending order."""
    if x.dtype == torch.float64:
        raise TypeError("topk_select: the traceable form takes float32 or narrower scores")
    R, T = x.shape
    bits = torch.where(x == 0, 0.0, x.float()).view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    key = ordered * T + torch.arange(T, device=x.device)
    return torch.topk(key, k, dim=-1, sorted=False).indices.sort(-1).values


def _positions(rows: torch.Tensor, k: int) -> torch.Tensor:
    """The eager selection of ``rows [R, T]`` -> ``[R, k]``: the NumPy path for CPU float32/64 rows
    (:func:`_positions_cpu`), torch's otherwise (:func:`_positions_torch`); the same positions."""
    if rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(_positions_cpu(rows.detach().contiguous().numpy(), k))
    return _positions_torch(rows.detach(), k)


@torch.library.custom_op("seqctr::topk_positions", mutates_args=())
def topk_positions(rows: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`_positions` as one opaque op of a captured graph: ``rows [R, T]`` -> ``[R, k]`` int64.
    ``torch.export`` records the call, not its data-dependent inside; an AOTInductor package calls it back
    through the dispatcher (so it runs where ``seqctr`` is imported). The ``op`` form of :func:`traced_form`."""
    return _positions(rows, k)


@topk_positions.register_fake
def _(rows: torch.Tensor, k: int) -> torch.Tensor:
    return rows.new_empty((rows.shape[0], k), dtype=torch.long)


TRACED_FORMS = ("op", "dense")
_traced = ["op"]


@contextlib.contextmanager
def traced_form(form: str):
    """The selection a graph captured inside this context takes: ``op`` (default; :func:`topk_positions`,
    the eager selection called from the graph) or ``dense`` (:func:`_positions_dense`: plain torch ops only,
    so the graph needs no Python and no ``seqctr`` to run; slower: a top-k over every score)."""
    if form not in TRACED_FORMS:
        raise ValueError(f"topk_select: traced form must be one of {TRACED_FORMS}, got {form!r}")
    _traced.append(form)
    try:
        yield
    finally:
        _traced.pop()


def _all_true(mask: torch.Tensor) -> bool:
    """``mask.all()`` read over the distinct elements only (a broadcast mask is not scanned per copy)."""
    return bool(mask[tuple(slice(0, 1) if st == 0 else slice(None) for st in mask.stride())].all())


@eager    # data-dependent selection (NumPy, nonzero): outside torch.compile's graphs
def topk_select(scores: torch.Tensor, mask: torch.Tensor, k: int):
    """Indices of the ``k`` highest-scoring real positions (padding ranks last).

    ``scores [B, T]`` (or ``[B, H, T]``), ``mask`` broadcastable to it. Returns ``(index [.., k'],
    selected mask [.., k'])`` with ``k' = min(k, T)``, indices in ascending position order; slots
    beyond a row's real events are masked. Ties at the k-th score go to the more recent
    (rightmost) events, so the choice never depends on how much left padding a batch has.

    A selection of the k-th score plus an exact tie rule, not a full sort: O(T) per row instead
    of O(T log T) (the selection is the largest single cost of TWIN's scoring). CPU float32/64 scores take the
    NumPy path (:func:`_positions_cpu`: on rows of at least ``10 k`` events, the selection over a
    prefiltered few, :func:`_positions_prefiltered`), anything else torch's; under ``torch.export`` the form
    :func:`traced_form` names: the same selection as one opaque op (:func:`topk_positions`), or the dense form
    without data-dependent shapes (:func:`_positions_dense`); same positions, tested."""
    T = scores.shape[-1]
    k = min(k, T)
    mask = mask.expand_as(scores)
    if k == 0:                                                      # an empty history (T = 0)
        idx = torch.zeros(*scores.shape[:-1], 0, dtype=torch.long, device=scores.device)
        return idx, mask[..., :0]
    traced = torch.compiler.is_exporting()        # torch.export: the traceable form
    key = scores if not traced and _all_true(mask) else torch.where(mask, scores, float("-inf"))
    # rows in memory order (e.g. [H, B, T] scores seen as [B, H, T]): no copy of the scores
    lead = sorted(range(key.dim() - 1), key=lambda d: -key.stride(d))
    inner = key.detach().permute(*lead, -1)
    rows = inner.reshape(-1, T)
    if traced:
        pos = _positions_dense(rows, k) if _traced[-1] == "dense" else topk_positions(rows, k)
    else:
        pos = _positions(rows, k)
    idx = pos.view(*inner.shape[:-1], k).permute(*[lead.index(d) for d in range(key.dim() - 1)], -1)
    return idx, torch.gather(mask, -1, idx)


def simhash(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Sign bits of random projections: ``x [..., D]``, ``rotations [D, ...bits]`` -> bool ``[..., ...bits]``."""
    return torch.tensordot(x, rotations, dims=([-1], [0])) > 0
