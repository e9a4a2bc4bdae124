"""ETA (Chen et al., 2021): SimHash codes from fixed random rotations; the top-k events closest
to the target in Hamming distance go to target attention."""
from __future__ import annotations

import torch

from ..ops import simhash, topk_select
from .base import SeqInputs, prefixed, register
from .two_branch import BranchOutput, TwoBranchBackbone


def hamming(codes: torch.Tensor, tcode: torch.Tensor) -> torch.Tensor:
    """Hamming distances, as floats, of history codes ``[B, T, bits]`` (or one user's ``[1, T, bits]``)
    to target codes ``tcode [B or N, bits]`` -> ``[B or N, T]``.

    ``|a| + |b| - 2 a.b`` on 0/1 vectors: one dot product per pair (a GEMM when one history meets
    many candidates) instead of a ``[N, T, bits]`` comparison; exact in float32 for any realistic
    number of bits."""
    c, t = codes.to(torch.float32), tcode.to(torch.float32)
    if c.shape[0] == 1 and t.shape[0] > 1:
        dot = t @ c[0].T
    else:
        dot = torch.linalg.vecdot(c, t.unsqueeze(1))
    return c.sum(-1) + t.sum(-1, keepdim=True) - 2 * dot


@register("eta")
class ETA(TwoBranchBackbone):
    """Options: ``hash_bits`` (32), ``topk`` (50), ``hash_seed`` (fixed rotations, saved with the
    model), plus the two-branch options."""

    two_stage = True

    def __init__(self, item_dim: int, hash_bits: int = 32, topk: int = 50, hash_seed: int = 0, **kw):
        super().__init__(item_dim, **kw)
        self.topk = topk
        g = torch.Generator().manual_seed(hash_seed)
        self.register_buffer("rotations", torch.randn(item_dim, hash_bits, generator=g))
        self.long_attention = self.make_attention("long")

    def hamming(self, x: SeqInputs) -> torch.Tensor:
        """Hamming distance of each history event's code to the target's ``[B, T]``."""
        tcode = simhash(x.target, self.rotations)
        d = x.rows
        if d is None:
            return hamming(simhash(x.hist, self.rotations), tcode)
        rows, inv = d                      # distances of the U distinct events to the B targets, gathered
        dist = hamming(simhash(rows, self.rotations).unsqueeze(0), tcode)            # [B, U]
        return torch.gather(dist, 1, inv)

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        idx, sel_mask = topk_select(-self.hamming(x), x.mask, self.topk)
        return self.exact_search(self.long_attention, x, idx, sel_mask)

    def prefill_long(self, x: SeqInputs) -> dict:
        return {**prefixed(self.long_attention.cache_kv(x.hist), "long_"),
                "codes": simhash(x.hist, self.rotations)}                            # codes [1, T, bits]

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:
        dist = hamming(state["codes"], simhash(x.target, self.rotations))           # [N, T]
        idx, sel = topk_select(-dist, mask, self.topk)
        return self.exact_search_cached(state, x, idx, sel)
