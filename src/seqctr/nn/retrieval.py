"""General-search units (GSU) of two-stage long-sequence models: top-k selection and hashing."""
from __future__ import annotations

import torch


def topk_select(scores: torch.Tensor, mask: torch.Tensor, k: int):
    """Indices of the ``k`` highest-scoring real positions (padding ranks last).

    ``scores [B, T]`` (or ``[B, H, T]``), ``mask`` broadcastable to it. Returns ``(index [.., k'],
    selected mask [.., k'])`` with ``k' = min(k, T)``, indices in ascending position order; slots
    beyond a row's real events are masked. Ties at the k-th score go to the more recent
    (rightmost) events, so the choice never depends on how much left padding a batch has.

    Done as ``torch.topk`` for the k-th score plus an exact tie rule, not a full sort: O(T) per row
    instead of O(T log T) (a sort over every event is most of TWIN's cached scoring time)."""
    T = scores.shape[-1]
    k = min(k, T)
    mask = mask.expand_as(scores)
    if k == 0:                                                      # an empty history (T = 0)
        idx = torch.zeros(*scores.shape[:-1], 0, dtype=torch.long, device=scores.device)
        return idx, mask[..., :0]
    key = torch.where(mask, scores, torch.full_like(scores, float("-inf")))
    kth = torch.topk(key, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)    # k-th largest
    chosen = key >= kth
    surplus = chosen.sum(-1) > k                 # rows with more than one event tied at the k-th score
    if surplus.any():
        ks, ths = key[surplus], kth[surplus]
        tie = ks == ths
        need = k - (ks > ths).sum(-1, keepdim=True)                                 # ties to take, >= 1
        from_right = tie.flip(-1).cumsum(-1).flip(-1)                               # 1 = the rightmost tie
        chosen[surplus] = (ks > ths) | (tie & (from_right <= need))
    pos = chosen.nonzero()[:, -1]
    if pos.numel() != chosen[..., 0].numel() * k:
        raise ValueError("topk_select: scores contain NaN")
    idx = pos.view(*scores.shape[:-1], k)
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
