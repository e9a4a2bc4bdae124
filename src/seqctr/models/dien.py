"""DIEN (Zhou et al., AAAI 2019): an interest-extractor GRU over the history, then an AUGRU whose
update gate is scaled by target attention; the final AUGRU state is the user interest.

Histories arrive right-aligned; they are left-aligned here, so every real state is computed
from real events only and padding changes nothing (LongCTR packs its left-padded rows, which
feeds the GRU padding instead of events). Both recurrences run through
:mod:`seqctr.ops.recurrence` (``nn.GRU``'s parameters, a fused hand-written backward; ``impl``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import BilinearAttention
from ..ops.recurrence import gated_recurrence, gru
from ..utils.compile import eager
from .base import Backbone, BackboneOutput, SeqInputs, expand, register


def left_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each left-aligned position reads from: ``mask [B, T]`` (right-aligned) ->
    ``(positions [B, T], left-aligned mask [B, T])``; padded positions read padded ones."""
    B, T = mask.shape
    L = mask.sum(1)
    ar = torch.arange(T, device=mask.device).unsqueeze(0)
    return (ar + (T - L).unsqueeze(1)) % max(T, 1), ar < L.unsqueeze(1)


def left_align(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real events to the front: ``[B, T, D]`` right-aligned -> left-aligned."""
    idx, new_mask = left_index(mask)
    out = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out * new_mask.unsqueeze(-1), new_mask


class AUGRU(nn.Module):
    """GRU with attentional update gate: ``u' = a_t * u_t``, ``h_t = (1-u') h_{t-1} + u' h~_t``.

    ``x [B, T, D]`` left-aligned, ``att [B, T]``, ``lengths [B]`` -> final state ``[B, H]``. Steps
    past a row's length get ``a_t = 0``, which leaves its state exactly as it was; the recurrence
    is :func:`~seqctr.ops.recurrence.gated_recurrence` (hand-written backward)."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.x2h = nn.Linear(input_dim, 3 * hidden_dim)
        self.h2h = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.hidden_dim = hidden_dim
        self.impl = "fast"         # seqctr.ops implementation (ops.set_impl)

    @eager   # the step count T is data: traced, it would recompile per batch
    def forward(self, x: torch.Tensor, att: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        T = int(lengths.max()) if B else 0
        h0 = x.new_zeros(B, self.hidden_dim)
        if T == 0:
            return h0
        a = att[:, :T] * (torch.arange(T, device=x.device).unsqueeze(0) < lengths.unsqueeze(1))
        gx = self.x2h(x[:, :T])                                       # [B, T, 3H] in one matmul
        return gated_recurrence(gx, h0, self.h2h.weight, self.h2h.bias, a, final=True, impl=self.impl)


@register("dien")
class DIEN(Backbone):
    """Options: ``aux_loss`` (False; DIEN's next-event auxiliary loss on the extractor states,
    with in-batch negatives), ``aux_loss_weight`` (1.0), ``hidden_dim`` (= item_dim).

    Attention: bilinear ``softmax_t(h_t W e_target)`` over real events (LongCTR's default).
    LAIN: prompt tokens are prepended to the sequence the extractor GRU reads."""

    def __init__(self, item_dim: int, feature_dim: int = 64, aux_loss: bool = False, aux_loss_weight: float = 1.0,
                 hidden_dim: int | None = None):
        super().__init__()
        H = hidden_dim or item_dim
        self.gru = nn.GRU(item_dim, H, batch_first=True)
        self.attention = BilinearAttention(item_dim, H)
        self.augru = AUGRU(H, H)
        self.impl = "fast"         # the extractor's recurrence (seqctr.ops.recurrence; ops.set_impl)
        self.use_aux, self.aux_loss_weight = aux_loss, aux_loss_weight
        self.aux_proj = nn.Linear(H, item_dim, bias=False) if aux_loss else None
        self.out_dim = H

    def extract(self, hist: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interest states ``[B, T, H]`` (left-aligned, 0 beyond each length) and ``lengths [B]``.

        The input is left-aligned, so the state at a real position depends on real events only;
        the padded tail is zeroed. (Not packed: PyTorch's packed-sequence GRU backward on CPU
        re-allocates the whole packed input at every step, which is quadratic in T.)"""
        L = mask.sum(1)
        B, T, _ = hist.shape
        if T == 0:
            return hist.new_zeros(B, 0, self.gru.hidden_size), L
        return gru(hist, self.gru, impl=self.impl) * mask.unsqueeze(-1), L

    def auxiliary_loss(self, states: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-event prediction: ``h_t`` scores event ``t+1`` above another row's event ``t+1``."""
        h = self.aux_proj(states[:, :-1])
        pos, neg = seq[:, 1:], seq.roll(1, dims=0)[:, 1:]
        valid = (mask[:, 1:] & mask.roll(1, dims=0)[:, 1:]).float()
        lp = F.logsigmoid((h * pos).sum(-1))
        ln = F.logsigmoid(-(h * neg).sum(-1))
        return -((lp + ln) * valid).sum() / valid.sum().clamp_min(1.0)

    def history_forms(self, grad: bool) -> frozenset[str]:
        """The distinct rows: the extractor's input gates are computed once per distinct event."""
        return frozenset({"distinct"})

    def sequence(self, x: SeqInputs):
        """The extractor's states over LAIN's prompts (if any) then the events, left-aligned:
        ``(states [B, P+T, H], mask [B, P+T], lengths [B], seq)``, ``seq()`` giving the
        embedded sequence ``[B, P+T, D]`` (0 beyond each length) for the auxiliary loss.

        When the ids are known, the extractor's input gates are computed once per distinct event
        of the batch and per prompt (``gru(rows, index=...)``): the same values as over the
        left-aligned ``[B, T, D]`` sequence, a GEMM of ``U + B P`` rows instead of ``B (P+T)``, and
        the gradient reaches the tables through ``U`` rows."""
        cond = x.condition("long")
        P = cond.num_prompts if cond is not None else 0
        d = x.rows
        if d is None:
            seq, mask = left_align(x.hist, x.mask)
            if P:  # LAIN prompts open the sequence: the extractor reads them first, the AUGRU attends to them
                seq = torch.cat([cond.prompts, seq], 1)
                mask = torch.cat([mask.new_ones(mask.shape[0], P), mask], 1)
            states, L = self.extract(seq, mask)
            return states, mask, L, lambda: seq
        rows, inv = d
        pos, mask = left_index(x.mask)
        index = torch.gather(inv, 1, pos)                                      # [B, T] distinct row per step
        if P:
            B = index.shape[0]
            prompt_rows = rows.shape[0] + torch.arange(B * P, device=index.device).view(B, P)
            rows = torch.cat([rows, cond.prompts.flatten(0, 1)])
            index = torch.cat([prompt_rows, index], 1)
            mask = torch.cat([mask.new_ones(B, P), mask], 1)
        states = gru(rows, self.gru, index=index, impl=self.impl) * mask.unsqueeze(-1)
        return states, mask, mask.sum(1), lambda: rows[index] * mask.unsqueeze(-1)

    def forward(self, x: SeqInputs) -> BackboneOutput:
        cond = x.condition("long")
        P = cond.num_prompts if cond is not None else 0
        states, mask, L, seq = self.sequence(x)
        att = self.attention(x.target, states, mask, cond)
        final = self.augru(states, att, L)
        aux = None
        if self.use_aux and self.training and states.shape[1] - P > 1:
            # events only: LAIN's prompt tokens are neither predicted nor predictors of the next event
            aux = self.aux_loss_weight * self.auxiliary_loss(states[:, P:], seq()[:, P:], mask[:, P:])
        weights = {}
        if x.need_weights:  # history part, back to right-aligned positions
            att, L = att[:, P:], L - P
            T = att.shape[1]
            idx = (torch.arange(T, device=att.device).unsqueeze(0) - (T - L).unsqueeze(1)) % max(T, 1)
            weights = {"augru": (torch.gather(att, 1, idx) * x.mask).unsqueeze(1)}
        return BackboneOutput(vector=final, aux_loss=aux, attention=weights)

    def prefill(self, x: SeqInputs) -> dict:
        """The interest extractor's states ``[1, T(+P), H]`` (they do not depend on the target);
        the attention-gated AUGRU still runs per candidate."""
        states, mask, _, _ = self.sequence(x)
        return {"states": states, "state_mask": mask}

    cache_uses_condition = True   # LAIN prompts run through the cached GRU states: they move with L

    def append(self, state: dict, new: SeqInputs, evicted, max_len):
        """Exact while nothing is evicted: the GRU continues from the last real state."""
        if evicted is not None:
            return None
        states, mask = state["states"], state["state_mask"]
        L = int(mask.sum())
        more = gru(new.hist, self.gru, states[:, L - 1] if L else None, impl=self.impl)
        return {**state, "states": torch.cat([states[:, :L], more], 1),
                "state_mask": torch.ones(1, L + more.shape[1], dtype=torch.bool, device=mask.device)}

    def score(self, state: dict, x: SeqInputs) -> BackboneOutput:
        N = x.target.shape[0]
        states, mask = expand(state["states"], N), expand(state["state_mask"], N)
        att = self.attention(x.target, states, mask, x.condition("long"))
        return BackboneOutput(vector=self.augru(states, att, mask.sum(1)))
