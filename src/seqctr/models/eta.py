"""ETA (Chen et al., 2021): SimHash codes from fixed random rotations; the top-k events closest
to the target in Hamming distance go to target attention."""
from __future__ import annotations

import torch

from ..nn import simhash, topk_select
from .base import SeqInputs, prefixed, register
from .two_branch import BranchOutput, TwoBranchBackbone


@register("eta")
class ETA(TwoBranchBackbone):
    """Options: ``hash_bits`` (32), ``topk`` (50), ``hash_seed`` (fixed rotations, saved with the
    model), plus the two-branch options."""

    def __init__(self, item_dim: int, hash_bits: int = 32, topk: int = 50, hash_seed: int = 0, **kw):
        super().__init__(item_dim, **kw)
        self.topk = topk
        g = torch.Generator().manual_seed(hash_seed)
        self.register_buffer("rotations", torch.randn(item_dim, hash_bits, generator=g))
        self.long_attention = self.make_attention("long")

    def hamming(self, x: SeqInputs) -> torch.Tensor:
        """Hamming distance of each history event's code to the target's ``[B, T]``."""
        codes = simhash(x.hist, self.rotations)                  # [B, T, bits]
        tcode = simhash(x.target, self.rotations).unsqueeze(1)   # [B, 1, bits]
        return (codes != tcode).sum(-1)

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        idx, sel_mask = topk_select(-self.hamming(x).to(x.hist.dtype), x.mask, self.topk)
        return self.exact_search(self.long_attention, x, idx, sel_mask)

    def prefill_long(self, x: SeqInputs) -> dict:
        return {**prefixed(self.long_attention.cache_kv(x.hist), "long_"),
                "codes": simhash(x.hist, self.rotations)}                            # codes [1, T, bits]

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:
        tcode = simhash(x.target, self.rotations).unsqueeze(1)                       # [N, 1, bits]
        dist = (state["codes"] != tcode).sum(-1)                                     # [N, T]
        idx, sel = topk_select(-dist.to(x.target.dtype), mask, self.topk)
        return self.exact_search_cached(state, x, idx, sel)
