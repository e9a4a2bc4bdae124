"""General-search units (GSU) of two-stage long-sequence models: top-k selection and hashing."""
from __future__ import annotations

import torch


def topk_select(scores: torch.Tensor, mask: torch.Tensor, k: int):
    """Indices of the ``k`` highest-scoring real positions (padding ranks last).

    ``scores [B, T]`` (or ``[B, H, T]``), ``mask`` broadcastable to it. Returns ``(index [.., k'],
    selected mask [.., k'])`` with ``k' = min(k, T)``; slots beyond a row's real events are masked.
    Ties are broken towards the more recent (rightmost) event, so the choice never depends on
    how much left padding a batch has."""
    T = scores.shape[-1]
    k = min(k, T)
    mask = mask.expand_as(scores)
    key = torch.where(mask, scores, torch.full_like(scores, float("-inf")))
    # stable sort of the time-reversed scores: among equal scores the most recent event wins
    top = torch.sort(key.flip(-1), dim=-1, descending=True, stable=True).indices[..., :k]
    idx = T - 1 - top
    return idx, torch.gather(mask, -1, idx)


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [B, T, D]`` at ``idx [B, ...]`` -> ``[B, ..., D]`` (e.g. ``[B, k]`` or ``[B, H, k]``).

    Done as one ``index_select`` over the flattened rows: its backward is an ``index_add``, much
    cheaper on CPU than the scatter behind ``torch.gather``'s backward."""
    B, T, D = x.shape
    flat = (idx + torch.arange(B, device=idx.device).view(B, *([1] * (idx.dim() - 1))) * T).reshape(-1)
    return torch.index_select(x.reshape(B * T, D), 0, flat).view(*idx.shape, D)


def simhash(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Sign bits of random projections: ``x [..., D]``, ``rotations [D, ...bits]`` -> bool ``[..., ...bits]``."""
    return torch.tensordot(x, rotations, dims=([-1], [0])) > 0
