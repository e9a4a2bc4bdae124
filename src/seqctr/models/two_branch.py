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

from ..nn import MultiHeadTargetAttention
from ..ops import Events
from .base import Backbone, BackboneOutput, SeqInputs, concat_events, expand, prefixed, unprefixed


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
    ``attention_dropout`` (0), ``collective_kv`` (CollectiveKV options plus ``branches``, default
    ``[short]`` as in the authors' code; None = off), ``silu_qkv`` (the authors' extra SiLU on
    q/K/V; with CollectiveKV off it is the control for the uncompressed baseline) on the branches
    ``silu_branches`` (default: where CollectiveKV is, else ``[short]`` — in the authors' code only
    the compressed short-branch module has it, so the long branch and TWIN's retrieval stay as in
    the plain model)."""

    two_branch = True

    def __init__(self, item_dim: int, feature_dim: int = 64, short_seq_len: int = 50, attention_dim: int = 64,
                 num_heads: int = 1, attention_dropout: float = 0.0, collective_kv: dict | None = None,
                 silu_qkv: bool = False, silu_branches: list | None = None):
        super().__init__()
        self.feature_dim = feature_dim
        if short_seq_len < 2:
            raise ValueError("short_seq_len must be >= 2 (it counts the target slot, as in LongCTR)")
        self.item_dim, self.short_seq_len = item_dim, short_seq_len
        self.attention_dim, self.num_heads, self.attention_dropout = attention_dim, num_heads, attention_dropout
        ckv = dict(collective_kv or {})
        self.ckv_branches = ckv.pop("branches", ["short"]) if collective_kv else []
        self.ckv_options, self.silu_qkv = ckv, silu_qkv
        self.silu_branches = list(silu_branches) if silu_branches is not None else (self.ckv_branches or ["short"])
        self.short_attention = self.make_attention("short")
        self.out_dim = 2 * item_dim

    def make_attention(self, branch: str, key_dim: int | None = None) -> MultiHeadTargetAttention:
        """A branch's target attention, with CollectiveKV / SiLU as configured for that branch."""
        return MultiHeadTargetAttention(self.item_dim, self.attention_dim, self.num_heads, self.attention_dropout,
                                        key_dim=key_dim, branch=branch,
                                        silu=self.silu_qkv and branch in self.silu_branches,
                                        collective=self.ckv_options if branch in self.ckv_branches else None)

    def short_window(self, x: SeqInputs) -> tuple[Events, torch.Tensor]:
        """The most recent ``short_seq_len - 1`` events and their mask ``[B, S]``."""
        return x.recent(self.short_seq_len - 1)

    def short_branch(self, x: SeqInputs) -> BranchOutput:
        events, mask = self.short_window(x)
        res = self.short_attention(x.target, events, mask, x.condition("short"))
        return BranchOutput(res.out, left_pad_to(res.weights, x.mask.shape[1]) if x.need_weights else None,
                            aux_loss=res.aux_loss)

    def long_branch(self, x: SeqInputs) -> BranchOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def exact_search(self, attention, x: SeqInputs, idx: torch.Tensor, sel_mask: torch.Tensor) -> BranchOutput:
        """ESU: ``attention`` over the events a GSU selected (``idx [B, k]``); prompts come after
        the selection, so top-k can never drop them. Weights are mapped back to positions."""
        res = attention(x.target, x.events().at(idx), sel_mask, x.condition("long"))
        return BranchOutput(res.out, scatter_weights(res.weights, idx, x.mask.shape[1]) if x.need_weights else None,
                            aux_loss=res.aux_loss)

    # -- serving: short-branch K/V + whatever the long branch caches ----------------------------
    def prefill(self, x: SeqInputs) -> dict[str, torch.Tensor]:
        events, mask = self.short_window(x)
        return {**prefixed(self.short_attention.cache_kv(events.dense()), "short_"), "short_mask": mask, "mask": x.mask,
                **self.prefill_long(x)}

    def score(self, state: dict, x: SeqInputs) -> BackboneOutput:
        N = x.target.shape[0]
        k, v = self.short_attention.kv_from_cache(unprefixed(state, "short_"))
        short = self.short_attention.attend(x.target, expand(k, N), expand(v, N), expand(state["short_mask"], N),
                                            x.condition("short"), need_weights=False)
        long = self.score_long(state, x, expand(state["mask"], N))
        return BackboneOutput(vector=torch.cat([short.out, long], dim=-1))

    summed_state: tuple = ()   # long-branch cache entries that are sums over events (not per event)

    def append(self, state: dict, new: SeqInputs, evicted, max_len):
        """Exact for every two-branch cache: per-event entries are concatenated and cut to the
        window (the last ``short_seq_len - 1`` for the short branch), summed ones updated by the
        new and the evicted events."""
        fresh = self.prefill(new)
        out = dict(state)
        short = [k for k in fresh if k.startswith("short_")]
        per_event = [k for k in fresh if not k.startswith("short_") and k not in self.summed_state]
        out.update(concat_events(state, fresh, self.short_seq_len - 1, short))
        out.update(concat_events(state, fresh, max_len, per_event))
        if self.summed_state:
            gone = None
            if evicted is not None:
                gone = self.prefill_long(SeqInputs(target=None, hist=evicted, seq_len=new.seq_len,
                                                   mask=torch.ones(evicted.shape[:2], dtype=torch.bool)))
            for k in self.summed_state:
                out[k] = state[k] + fresh[k] - (gone[k] if gone is not None else 0)
        return out

    def prefill_long(self, x: SeqInputs) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def score_long(self, state: dict, x: SeqInputs, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def exact_search_cached(self, state: dict, x: SeqInputs, idx: torch.Tensor, sel_mask: torch.Tensor) -> torch.Tensor:
        """ESU from the cached per-event long-branch K/V ``[1, H, T, hd]`` over the events the GSU
        selected (``idx [N, k]``, ``sel_mask [N, k]``)."""
        K, V = self.long_attention.kv_from_cache(unprefixed(state, "long_"))
        N = idx.shape[0]
        return self.long_attention.attend(x.target, expand(K, N), expand(V, N), None, x.condition("long"),
                                          select=(idx, sel_mask), need_weights=False).out

    def history_forms(self, grad: bool) -> frozenset[str]:
        """The distinct rows: every branch reads its events from them (one lookup of ``U`` rows, and
        the gradient reaches the tables through them); ``hist`` only when they cannot be made."""
        return frozenset({"distinct"})

    def forward(self, x: SeqInputs) -> BackboneOutput:
        short, long = self.short_branch(x), self.long_branch(x)
        att = {}
        if x.need_weights:
            att = {"short": short.weights, "long": long.weights}
        auxes = [a for a in (short.aux_loss, long.aux_loss) if a is not None]
        return BackboneOutput(vector=torch.cat([short.vector, long.vector], dim=-1),
                              aux_loss=sum(auxes) if auxes else None, aux_vector=long.aux_vector, attention=att)
