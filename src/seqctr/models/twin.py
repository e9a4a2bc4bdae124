"""TWIN (Chang et al., KDD 2023): one consistency-preserving multi-head attention serves both
stages — the top-k events are chosen by the very scores the exact search then soft-maxes."""
from __future__ import annotations

import torch
from torch import nn

from ..nn import topk_select
from .base import SeqInputs, register
from .two_branch import BranchOutput, TwoBranchBackbone, scatter_weights


@register("twin")
class TWIN(TwoBranchBackbone):
    """Options: ``topk`` (50), ``behavior_features`` (number of trailing item features treated as
    behaviour features: they enter the values but not the keys, and add a learned per-head bias
    to the scores, TWIN's cross-feature term; 0 = off), plus the two-branch options.

    Per head ``h``: ``s_ht = (W_q target)_h . (W_k e_t)_h / sqrt(d_h) [+ bias_ht]``; top-k per head
    by ``s``; softmax over the selected scores; values ``W_v e_t``; ``W_o`` over the heads."""

    def __init__(self, item_dim: int, topk: int = 50, behavior_features: int = 0, **kw):
        super().__init__(item_dim, **kw)
        self.topk = topk
        self.bdim = behavior_features * self.feature_dim
        kdim = item_dim - self.bdim
        A, H = self.attention_dim, self.num_heads
        self.head_dim = A // H
        self.W_q = nn.Linear(kdim, A, bias=False)
        self.W_k = nn.Linear(kdim, A, bias=False)
        self.W_v = nn.Linear(item_dim, A, bias=False)
        self.W_o = nn.Linear(A, item_dim, bias=False)
        self.bias = nn.Linear(self.bdim, H, bias=False) if self.bdim else None
        self.dropout = nn.Dropout(self.attention_dropout) if self.attention_dropout > 0 else nn.Identity()

    def scores(self, x: SeqInputs) -> torch.Tensor:
        """Consistent scores ``[B, H, T]`` used for both retrieval and attention."""
        B, T, _ = x.hist.shape
        H, hd = self.num_heads, self.head_dim
        content = x.hist[..., : x.hist.shape[-1] - self.bdim]
        q = self.W_q(x.target[..., : x.target.shape[-1] - self.bdim]).view(B, H, 1, hd)
        k = self.W_k(content).view(B, T, H, hd).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)).squeeze(2) / hd ** 0.5
        if self.bias is not None:
            s = s + self.bias(x.hist[..., -self.bdim:]).transpose(1, 2)
        return s

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        B, T, _ = x.hist.shape
        H, hd = self.num_heads, self.head_dim
        s = self.scores(x)
        idx, sel_mask = topk_select(s, x.mask.unsqueeze(1), self.topk)       # [B, H, k]
        sel = torch.gather(s, -1, idx)
        w = torch.softmax(sel.masked_fill(~sel_mask, float("-inf")), -1).nan_to_num(0.0)
        v = self.W_v(x.hist).view(B, T, H, hd).transpose(1, 2)               # [B, H, T, hd]
        v_sel = torch.gather(v, 2, idx.unsqueeze(-1).expand(-1, -1, -1, hd))  # [B, H, k, hd]
        out = (self.dropout(w).unsqueeze(2) @ v_sel).squeeze(2).reshape(B, H * hd)
        return BranchOutput(self.W_o(out), scatter_weights(w, idx, T) if x.need_weights else None)
