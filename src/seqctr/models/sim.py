"""SIM (Pi et al., CIKM 2020): a general search unit picks top-k events, an exact search unit
attends over them. Soft search (learned inner product) with an auxiliary GSU CTR loss, or hard
search by category."""
from __future__ import annotations

import torch
from torch import nn

from ..ops import topk_select
from ..ops.kernels import distinct_scores, matvec, pool_distinct, vecmat
from .base import SeqInputs, expand, prefixed, register
from .two_branch import BranchOutput, TwoBranchBackbone


@register("sim")
class SIM(TwoBranchBackbone):
    """Options: ``gsu`` (``soft`` | ``hard``), ``topk`` (50), ``aux_weight`` (alpha, 1.0: weight of
    the GSU's auxiliary BCE, soft search only), ``category_feature`` (index of the item feature
    used by hard search; 1 = the first side feature, e.g. genre), plus the two-branch options.

    Soft GSU (as LongCTR): ``s_t = (W_a target) . (W_b e_t)`` on real events; the auxiliary head
    sees ``sum_t s_t e_t``; top-k by ``s``. Hard GSU: the ``topk`` most recent events sharing the
    target's category."""

    two_stage = True

    def __init__(self, item_dim: int, gsu: str = "soft", topk: int = 50, aux_weight: float = 1.0,
                 category_feature: int = 1, **kw):
        super().__init__(item_dim, **kw)
        if gsu not in ("soft", "hard"):
            raise ValueError(f"gsu must be 'soft' or 'hard', got {gsu!r}")
        self.gsu, self.topk, self.category_feature = gsu, topk, category_feature
        self.long_attention = self.make_attention("long")
        if gsu == "soft":
            self.W_a = nn.Linear(item_dim, self.attention_dim, bias=False)
            self.W_b = nn.Linear(item_dim, self.attention_dim, bias=False)
            self.aux_dim, self.aux_weight = item_dim, aux_weight

    def gsu_query(self, target: torch.Tensor) -> torch.Tensor:
        """``W_b^T W_a t``: ``[B, D] -> [B, D]``. The soft GSU's ``(W_a t) . (W_b e)`` is this dot ``e``,
        so no event is ever projected."""
        return self.W_a(target) @ self.W_b.weight

    def gsu_scores(self, x: SeqInputs) -> torch.Tensor:
        """Relevance of every history event to the target ``[B, T]`` (padding excluded later), per
        event over ``hist``: the path when the ids are unknown (else :meth:`soft_gsu_distinct`)."""
        if self.gsu == "soft":  # (W_a t) . (W_b e) = (W_b^T W_a t) . e: no per-event projection
            q = self.gsu_query(x.target)                                                  # [B, D]
            return matvec(x.hist, q.unsqueeze(-1)).squeeze(-1)
        raise AssertionError("hard search uses category ids, see long_branch")

    def soft_gsu_distinct(self, x: SeqInputs, R: torch.Tensor, inv: torch.Tensor):
        """Soft-GSU scores ``[B, T]`` and, in training, the auxiliary vector ``[B, D]`` (None at
        inference), over the batch's ``U`` distinct events (``R [U, D]``, ``inv [B, T]``; ``SeqInputs.rows``):
        ``S = q R^T`` and ``aux = W R``, with ``W [B, U]`` the masked scores summed per distinct
        event. The per-event products' values, but forward and backward are GEMMs over ``R`` and the
        gradient reaches the tables through ``U`` rows: no ``[B, T, D]`` gradient is formed (on
        ml100k U ~ 1,400 against B T = 51,200; SIM trains ~1.1x faster). Inference takes the same
        path, so the full ``[B, T, D]`` history is never embedded."""
        # in the embeddings' dtype even under bf16 autocast, as the per-event products (promoted to
        # float32): top-k over bfloat16 scores would tie, and W sums scores per event
        with torch.autocast(R.device.type, enabled=False):
            q = self.gsu_query(x.target.to(R.dtype))                                       # [B, D]
            s = distinct_scores(q.unsqueeze(1), R, inv).squeeze(1)                         # [B, T]
            aux = pool_distinct(s * x.mask, inv, R) if self.training else None            # [B, D]
        return s, aux

    def long_branch(self, x: SeqInputs) -> BranchOutput:
        T = x.mask.shape[1]
        aux = None
        if self.gsu == "soft":
            d = x.rows
            if d is not None:
                s, aux = self.soft_gsu_distinct(x, *d)
            else:
                s = self.gsu_scores(x)
                if self.training:   # the auxiliary head only trains the GSU: no [B, T, D] pass at inference
                    aux = vecmat((s * x.mask).unsqueeze(1), x.hist).squeeze(1)
            idx, sel_mask = topk_select(s, x.mask, self.topk)
        else:
            cat = x.hist_ids[..., self.category_feature] if x.hist_ids is not None else None
            if cat is None:
                raise ValueError("hard search needs the history's category ids (SeqInputs.hist_ids)")
            match = (cat == x.target_ids[:, self.category_feature].unsqueeze(1)) & x.mask
            recency = torch.arange(T, device=x.mask.device, dtype=x.target.dtype).expand(x.mask.shape)
            idx, sel_mask = topk_select(recency, match, self.topk)
        out = self.exact_search(self.long_attention, x, idx, sel_mask)
        out.aux_vector = aux
        return out

    def prefill_long(self, x: SeqInputs) -> dict:
        """Long-branch K/V (hard search: plus the category ids). The soft GSU's keys are the window's
        events themselves, and the cache already keeps their item feature ids (``ids [1, T, Fi]``,
        :func:`seqctr.serving.runtime.prefill`): scoring embeds them again (``SeqInputs.embed``) — the
        same values as caching ``D`` floats per event, for no extra byte."""
        state = prefixed(self.long_attention.cache_kv(x.hist), "long_")
        if self.gsu == "hard":
            state["hist_cat"] = x.hist_ids[..., self.category_feature]
        return state

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:
        N = x.target.shape[0]
        if self.gsu == "soft":
            s = self.gsu_query(x.target) @ x.embed(state["ids"][0].long()).T          # [N, T]
            idx, sel = topk_select(s, mask, self.topk)
        else:
            match = (expand(state["hist_cat"], N) == x.target_ids[:, self.category_feature].unsqueeze(1)) & mask
            recency = torch.arange(mask.shape[1], device=mask.device, dtype=x.target.dtype).expand(mask.shape)
            idx, sel = topk_select(recency, match, self.topk)
        return self.exact_search_cached(state, x, idx, sel)
