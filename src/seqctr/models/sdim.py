"""SDIM (Cao et al., CIKM 2022): sampling-based deep interest modelling. Multi-round LSH
(SimHash, ``hash_bits`` bits per round) puts the target and every history event into buckets;
the user interest is the aggregate of the events that collide with the target."""
from __future__ import annotations

import torch

from ..nn import simhash
from .base import SeqInputs, register
from .two_branch import BranchOutput, TwoBranchBackbone


@register("sdim")
class SDIM(TwoBranchBackbone):
    """Options: ``num_hashes`` (rounds, 8), ``hash_bits`` (4), ``l2_norm`` (True: as the paper,
    each round's sum of colliding events is L2-normalised before averaging over rounds; LongCTR
    leaves it off by default), ``hash_seed``, plus the two-branch options.

    Padding never collides: the collision mask is ANDed with the history mask. The long-branch
    weights are the exact linear weights of the aggregate (mean over rounds of collide / norm).
    LAIN: prompts join every round's sum; hashing has no query/key projections or softmax, so
    query-key conditioning and temperature apply to the short branch only."""

    def __init__(self, item_dim: int, num_hashes: int = 8, hash_bits: int = 4, l2_norm: bool = True,
                 hash_seed: int = 0, **kw):
        super().__init__(item_dim, **kw)
        self.num_hashes, self.hash_bits, self.l2_norm = num_hashes, hash_bits, l2_norm
        g = torch.Generator().manual_seed(hash_seed)
        self.register_buffer("rotations", torch.randn(item_dim, num_hashes, hash_bits, generator=g))

    def collisions(self, x: SeqInputs) -> torch.Tensor:
        """``[B, R, T]`` bool: event ``t`` lands in the target's bucket in round ``r`` (never padding)."""
        codes = simhash(x.hist, self.rotations)                       # [B, T, R, bits]
        tcode = simhash(x.target, self.rotations).unsqueeze(1)        # [B, 1, R, bits]
        same = (codes == tcode).all(-1)                               # [B, T, R]
        return same.transpose(1, 2) & x.mask.unsqueeze(1)

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        c = self.collisions(x).to(x.hist.dtype)                       # [B, R, T]
        sums = c @ x.hist                                             # [B, R, D]
        cond = x.condition("long")
        if cond is not None and cond.prompts is not None:             # LAIN prompts collide in every round
            sums = sums + cond.prompts.sum(1, keepdim=True)
        if self.l2_norm:
            norm = sums.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sums, c = sums / norm, c / norm
        out = sums.mean(1)
        w = c.mean(1, keepdim=True) if x.need_weights else None       # [B, 1, T]
        return BranchOutput(out, w)
