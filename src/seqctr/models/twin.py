"""TWIN (Chang et al., KDD 2023): one consistency-preserving multi-head attention serves both
stages — the top-k events are chosen by the very scores the exact search then soft-maxes."""
from __future__ import annotations

import torch
from torch import nn

from .base import SeqInputs, expand, prefixed, register, unprefixed
from .two_branch import BranchOutput, TwoBranchBackbone


@register("twin")
class TWIN(TwoBranchBackbone):
    """Options: ``topk`` (50), ``behavior_features`` (number of trailing item features treated as
    behaviour features: they enter the values but not the keys, and add a learned per-head bias
    to the scores, TWIN's cross-feature term; 0 = off), plus the two-branch options.

    Per head ``h``: ``s_ht = (W_q target)_h . (W_k e_t)_h / sqrt(d_h) [+ bias_ht]``; top-k per head
    by ``s``; softmax over the selected scores; values ``W_v e_t``; ``W_o`` over the heads
    (:class:`~seqctr.nn.MultiHeadTargetAttention` with ``topk``)."""

    two_stage = True

    def __init__(self, item_dim: int, topk: int = 50, behavior_features: int = 0, **kw):
        super().__init__(item_dim, **kw)
        self.topk = topk
        self.bdim = behavior_features * self.feature_dim
        self.long_attention = self.make_attention("long", key_dim=item_dim - self.bdim)
        self.bias = nn.Linear(self.bdim, self.num_heads, bias=False) if self.bdim else None

    def scores(self, x: SeqInputs) -> torch.Tensor:
        """Consistent scores ``[B, H, T]`` used for both retrieval and attention (unconditioned)."""
        att = self.long_attention
        B, T, _ = x.hist.shape
        k, _, _ = att.project_kv(x.hist)
        q = att.W_q(x.target[..., : att.key_dim]).view(B, att.num_heads, 1, att.head_dim)
        s = (q @ k.transpose(-1, -2)).squeeze(2) / att.head_dim ** 0.5
        return s if self.bias is None else s + self.score_bias(x)

    def score_bias(self, x: SeqInputs) -> torch.Tensor:
        """The behaviour features' per-head bias ``[B, H, T]`` (per distinct event when the rows are made)."""
        return x.per_event(lambda e: self.bias(e[..., -self.bdim:])).transpose(1, 2)

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        """Over the batch's distinct events when the ids are known (scores one GEMM over ``U`` rows,
        the top-k read from them; ``hist`` never embedded), else over ``hist``: the same values."""
        res = self.long_attention(x.target, x.events(), x.mask, x.condition("long"),
                                  topk=self.topk, score_bias=self.score_bias(x) if self.bias is not None else None)
        return BranchOutput(res.out, res.weights if x.need_weights else None, aux_loss=res.aux_loss)

    def prefill_long(self, x: SeqInputs) -> dict:
        state = prefixed(self.long_attention.cache_kv(x.hist), "long_")
        if self.bias is not None:
            state["score_bias"] = self.score_bias(x)                                  # [1, H, T]
        return state

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:
        N = x.target.shape[0]
        bias = expand(state.get("score_bias"), N)
        K, V = self.long_attention.kv_from_cache(unprefixed(state, "long_"))
        return self.long_attention.attend(x.target, expand(K, N), expand(V, N), mask, x.condition("long"),
                                          topk=self.topk, score_bias=bias, need_weights=False).out
