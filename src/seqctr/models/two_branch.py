"""The LongCTR two-branch layout shared by SIM, ETA, SDIM and TWIN.

- short-term branch: multi-head target attention over the most recent ``short_seq_len - 1``
  events (LongCTR's ``[:, -short_seq_len:-1]`` where the last slot is the target);
- long-term branch: model-specific, over the whole (truncated) history.

Output vector = ``[short, long]`` (``2 * item_dim``). A subclass implements only
:meth:`long_branch`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nn import MultiHeadTargetAttention, gather_positions
from .base import Backbone, BackboneOutput, SeqInputs, expand


@dataclass
class BranchOutput:
    """``vector [B, D]``; ``weights [B, H, T]`` over history positions (or None); optional aux."""

    vector: torch.Tensor
    weights: torch.Tensor | None = None
    aux_vector: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def scatter_weights(w: torch.Tensor, idx: torch.Tensor, T: int) -> torch.Tensor:
    """Weights of selected positions ``w [B, H, k]`` (indices ``idx [B, k]`` or ``[B, H, k]``)
    written back to their places in ``[B, H, T]`` (0 elsewhere)."""
    if idx.dim() == 2:
        idx = idx.unsqueeze(1).expand_as(w)
    return torch.zeros(*w.shape[:-1], T, dtype=w.dtype, device=w.device).scatter(-1, idx, w)


def left_pad_to(w: torch.Tensor, T: int) -> torch.Tensor:
    """Weights over the last ``w.shape[-1]`` positions, padded on the left to length ``T``."""
    return F.pad(w, (T - w.shape[-1], 0))


class TwoBranchBackbone(Backbone):
    """Base class: short-term target attention + a long-term branch from the subclass.

    Options shared by all: ``short_seq_len`` (50), ``attention_dim`` (64), ``num_heads`` (1),
    ``attention_dropout`` (0)."""

    def __init__(self, item_dim: int, feature_dim: int = 64, short_seq_len: int = 50, attention_dim: int = 64,
                 num_heads: int = 1, attention_dropout: float = 0.0):
        super().__init__()
        self.feature_dim = feature_dim
        if short_seq_len < 2:
            raise ValueError("short_seq_len must be >= 2 (it counts the target slot, as in LongCTR)")
        self.item_dim, self.short_seq_len = item_dim, short_seq_len
        self.attention_dim, self.num_heads, self.attention_dropout = attention_dim, num_heads, attention_dropout
        self.short_attention = MultiHeadTargetAttention(item_dim, attention_dim, num_heads, attention_dropout,
                                                        branch="short")
        self.out_dim = 2 * item_dim

    def short_window(self, x: SeqInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The most recent ``short_seq_len - 1`` events: ``([B, S, D], [B, S])``."""
        S = self.short_seq_len - 1
        return x.hist[:, -S:], x.mask[:, -S:]

    def short_branch(self, x: SeqInputs) -> BranchOutput:
        hist, mask = self.short_window(x)
        res = self.short_attention(x.target, hist, mask, x.condition("short"))
        return BranchOutput(res.out, left_pad_to(res.weights, x.hist.shape[1]) if x.need_weights else None)

    def long_branch(self, x: SeqInputs) -> BranchOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def exact_search(self, attention, x: SeqInputs, idx: torch.Tensor, sel_mask: torch.Tensor) -> BranchOutput:
        """ESU: ``attention`` over the events a GSU selected (``idx [B, k]``); prompts come after
        the selection, so top-k can never drop them. Weights are mapped back to positions."""
        res = attention(x.target, gather_positions(x.hist, idx), sel_mask, x.condition("long"))
        return BranchOutput(res.out, scatter_weights(res.weights, idx, x.hist.shape[1]) if x.need_weights else None)

    # -- serving: short-branch K/V + whatever the long branch caches ----------------------------
    def prefill(self, x: SeqInputs) -> dict[str, torch.Tensor]:
        hist, mask = self.short_window(x)
        k, v = self.short_attention.project_kv(hist)
        return {"short_k": k, "short_v": v, "short_mask": mask, "mask": x.mask, **self.prefill_long(x)}

    def score(self, state: dict, x: SeqInputs) -> BackboneOutput:
        N = x.target.shape[0]
        short = self.short_attention.attend(x.target, expand(state["short_k"], N), expand(state["short_v"], N),
                                            expand(state["short_mask"], N), x.condition("short"))
        long = self.score_long(state, x, expand(state["mask"], N))
        return BackboneOutput(vector=torch.cat([short.out, long], dim=-1))

    def prefill_long(self, x: SeqInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def exact_search_cached(self, state: dict, x: SeqInputs, idx: torch.Tensor, sel_mask: torch.Tensor,
                            attention=None) -> torch.Tensor:
        """ESU from cached per-event ``long_k``/``long_v`` ``[1, H, T, hd]``: gather the selected."""
        attention = attention or self.long_attention
        N, k = idx.shape
        H, hd = state["long_k"].shape[1], state["long_k"].shape[-1]
        gidx = idx.view(N, 1, k, 1).expand(N, H, k, hd)
        ks = torch.gather(expand(state["long_k"], N), 2, gidx)
        vs = torch.gather(expand(state["long_v"], N), 2, gidx)
        return attention.attend(x.target, ks, vs, sel_mask, x.condition("long")).out

    def forward(self, x: SeqInputs) -> BackboneOutput:
        short, long = self.short_branch(x), self.long_branch(x)
        att = {}
        if x.need_weights:
            att = {"short": short.weights, "long": long.weights}
        return BackboneOutput(vector=torch.cat([short.vector, long.vector], dim=-1), aux_loss=long.aux_loss,
                              aux_vector=long.aux_vector, attention=att)
