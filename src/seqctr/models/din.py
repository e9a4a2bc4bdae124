"""DIN (Zhou et al., KDD 2018): target attention with an activation unit over the whole history."""
from __future__ import annotations

from ..nn import DINAttention
from .base import Backbone, BackboneOutput, SeqInputs, concat_events, expand, register


@register("din")
class DIN(Backbone):
    """Pools the (truncated) history with :class:`~seqctr.nn.DINAttention` against the target.

    Options: ``attention_hidden`` (activation-unit layers), ``attention_act`` (``dice`` with masked batch statistics, or relu/prelu/...), ``use_softmax``
    (normalise the weights; DIN's original uses raw scores), ``fused`` (the fast exact form)."""

    def __init__(self, item_dim: int, feature_dim: int = 64, attention_hidden: list[int] = (64,), attention_act: str = "dice",
                 use_softmax: bool = False, fused: bool = True):
        super().__init__()
        self.att = DINAttention(item_dim, list(attention_hidden), act=attention_act, use_softmax=use_softmax,
                                fused=fused)
        self.out_dim = item_dim

    def history_forms(self, grad: bool) -> frozenset[str]:
        """``hist`` for the activation unit; without autograd also the distinct rows, over which the
        weighted sum is one GEMM (:meth:`SeqInputs.weighted_sum`)."""
        return frozenset({"dense"} if grad else {"dense", "distinct"})

    def forward(self, x: SeqInputs) -> BackboneOutput:
        res = self.att(x.target, x.hist, x.mask, x.condition("long"), pool=x.weighted_sum)
        return BackboneOutput(vector=res.out, attention={"din": res.weights} if x.need_weights else {})

    def prefill(self, x: SeqInputs) -> dict:
        """The history's part of the activation unit's first layer, ``[1, T, H1]``, and the keys
        (the unit still needs ``q * k`` per candidate). LAIN prompts / key shifts are applied at
        scoring time from the same cached keys."""
        return {"keys": x.hist, "mask": x.mask, "k_term": self.att.key_term(x.hist)}

    def append(self, state: dict, new: SeqInputs, evicted, max_len):
        """Exact: every cached entry is per event."""
        fresh = self.prefill(new)
        return {**state, **concat_events(state, fresh, max_len, list(fresh))}

    def score(self, state: dict, x: SeqInputs) -> BackboneOutput:
        N = x.target.shape[0]
        res = self.att(x.target, expand(state["keys"], N), expand(state["mask"], N), x.condition("long"),
                       key_term=expand(state["k_term"], N))
        return BackboneOutput(vector=res.out)
