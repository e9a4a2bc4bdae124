"""SDIM (Cao et al., CIKM 2022): sampling-based deep interest modelling. Multi-round LSH
(SimHash, ``hash_bits`` bits per round) puts the target and every history event into buckets;
the user interest is the aggregate of the events that collide with the target."""
from __future__ import annotations

import torch

from ..ops import simhash
from ..ops.kernels import row_pattern, row_pool, sparse_pays
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

    def buckets(self, e: torch.Tensor) -> torch.Tensor:
        """Bucket id per round: ``[..., D] -> [..., R]`` (the round's sign bits read as an integer)."""
        bits = simhash(e, self.rotations).to(torch.int64)             # [..., R, bits]
        return (bits << torch.arange(self.hash_bits, device=e.device)).sum(-1)

    def collisions(self, x: SeqInputs) -> torch.Tensor:
        """``[B, R, T]`` bool: event ``t`` lands in the target's bucket in round ``r`` (never padding)."""
        same = x.per_event(self.buckets) == self.buckets(x.target).unsqueeze(1)   # [B, T, R]
        return same.transpose(1, 2) & x.mask.unsqueeze(1)

    def collision_sums(self, x: SeqInputs, c: torch.Tensor) -> torch.Tensor:
        """``sum_t c[b, r, t] e_t``: ``c [B, R, T]`` -> ``[B, R, D]``. Over the distinct rows when
        made, as one sparse product of the colliding entries only (about ``1 / 2^bits`` of them): no
        ``[B, T, D]`` history or gradient; else a batched product over ``hist``."""
        if x.rows is not None:
            R, inv = x.rows
            B, Rr, T = c.shape
            col = inv.unsqueeze(1).expand(B, Rr, T).reshape(B * Rr, T)
            if sparse_pays(R.shape[0], col.numel()):
                pat = row_pattern(col, R.shape[0], keep=c.reshape(B * Rr, T))
                return row_pool(c.reshape(B * Rr, T).to(R.dtype), R, pat).view(B, Rr, -1)
            return c.to(R.dtype) @ x.events().dense()       # (the sparse form does not pay: rows gathered)
        return c.to(x.hist.dtype) @ x.hist

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        c = self.collisions(x)                                        # [B, R, T] bool
        sums = self.collision_sums(x, c)                              # [B, R, D]
        c = c.to(sums.dtype)
        cond = x.condition("long")
        if cond is not None and cond.prompts is not None:             # LAIN prompts collide in every round
            sums = sums + cond.prompts.sum(1, keepdim=True)
        if self.l2_norm:
            norm = sums.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            sums, c = sums / norm, c / norm
        out = sums.mean(1)
        w = c.mean(1, keepdim=True) if x.need_weights else None       # [B, 1, T]
        return BranchOutput(out, w)

    summed_state = ("bucket_sums",)

    def prefill_long(self, x: SeqInputs) -> dict:
        """Per round and bucket, the sum of the events hashed there: ``[1, R, 2^bits, D]``.
        Scoring then reads one row per round: O(R D) per candidate instead of O(T R D)."""
        bucket = self.buckets(x.hist)                                                # [1, T, R]
        B, T, R = bucket.shape
        table = x.hist.new_zeros(B, R, 2 ** self.hash_bits, x.hist.shape[-1])
        src = (x.hist * x.mask.unsqueeze(-1)).unsqueeze(1).expand(B, R, T, -1)
        table.scatter_add_(2, bucket.transpose(1, 2).unsqueeze(-1).expand(B, R, T, x.hist.shape[-1]), src)
        return {"bucket_sums": table}

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:
        tb = self.buckets(x.target)                                                  # [N, R]
        table = state["bucket_sums"][0]                                              # [R, 2^bits, D]
        sums = table[torch.arange(self.num_hashes, device=tb.device).unsqueeze(0), tb]          # [N, R, D]
        cond = x.condition("long")
        if cond is not None and cond.prompts is not None:
            sums = sums + cond.prompts.sum(1, keepdim=True)
        if self.l2_norm:
            sums = sums / sums.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return sums.mean(1)
