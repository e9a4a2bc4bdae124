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


def left_rows(inv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct row each left-aligned step reads: ``inv [B, T]`` (right-aligned, from
    :func:`~seqctr.models.base.distinct_rows`) -> ``(index [B, T], left-aligned mask [B, T])``."""
    pos, new_mask = left_index(mask)
    return torch.gather(inv, 1, pos), new_mask


def left_align(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real events to the front: ``[B, T, D]`` right-aligned -> left-aligned."""
    idx, new_mask = left_index(mask)
    out = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out * new_mask.unsqueeze(-1), new_mask


_HASH_P, _HASH_BASE = 2_147_483_629, 1_000_003      # a prime below 2^31 and a base for prefix hashes


def prefix_hosts(index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """For each row, a row of the batch whose first ``L`` events are its own (left-aligned
    ``index [B, T]`` of distinct events, ``lengths [B]``) -> ``host [B]``: the longest such row, and
    every host is its own host. A GRU's states over a prefix are the host's first ``L`` states, so
    the rows of one user whose windows start at the same event (an untruncated history grows by
    appending; length-bucketed batches hold a user's consecutive samples) run the extractor once.
    Candidates come from polynomial prefix hashes (``[B, B]`` comparisons, in blocks of 1,024 rows), each
    checked event by event: a hash collision only costs the sharing."""
    B, T = index.shape
    own = torch.arange(B, device=index.device)
    if B < 2 or T == 0:
        return own
    pw = torch.tensor([pow(_HASH_BASE, t, _HASH_P) for t in range(T)], dtype=torch.int64, device=index.device)
    pref = ((index.long() % _HASH_P + 1) * pw).remainder(_HASH_P).cumsum(1).remainder(_HASH_P)   # [B, T]
    last = (lengths - 1).clamp_min(0)
    full = pref.gather(1, last.unsqueeze(1)).squeeze(1)                           # each row's whole-history hash
    host = torch.empty_like(own)
    for s in range(0, B, 1024):                                   # [B, <= 1024] at a time, whatever the batch
        rows = slice(s, s + 1024)
        match = (pref[:, last[rows]] == full[rows].unsqueeze(0)) & (lengths.unsqueeze(1) >= lengths[rows].unsqueeze(0))
        host[rows] = torch.where(match, lengths.unsqueeze(1), -1).argmax(0)      # the longest, the first of ties
    real = torch.arange(T, device=index.device) < lengths.unsqueeze(1)
    ok = ((index.index_select(0, host) == index) | ~real).all(1) & (lengths > 0)
    host = torch.where(ok, host, own)
    return torch.where(host.index_select(0, host) == host, host, own)


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

    @eager
    def forward_shared(self, states: torch.Tensor, state_len: torch.Tensor, slot: torch.Tensor,
                       att: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` where row ``b``'s inputs are the first ``lengths[b]`` of
        ``states[slot[b]]`` (``states [S, T, H]``, ``state_len [S]``): the input gates are one GEMM over
        the ``S`` sequences' real states, read by every row that shares them -> ``[B, H]``."""
        S, T, _ = states.shape
        real = torch.arange(T, device=states.device) < state_len.unsqueeze(1)          # [S, T]
        gx = self.x2h(states[real])                                                   # [real states, 3H]
        where = (real.flatten().cumsum(0) - 1).view(S, T).index_select(0, slot).clamp_min(0)   # [B, T]
        h0 = states.new_zeros(slot.shape[0], self.hidden_dim)
        # with ``lengths`` no step past a row's own length is read: its attention there needs no masking
        return gated_recurrence(gx, h0, self.h2h.weight, self.h2h.bias, att, index=where, final=True,
                                impl=self.impl, lengths=lengths)


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
        index, mask = left_rows(inv, x.mask)                                   # [B, T] distinct row per step
        if P:
            B = index.shape[0]
            prompt_rows = rows.shape[0] + torch.arange(B * P, device=index.device).view(B, P)
            rows = torch.cat([rows, cond.prompts.flatten(0, 1)])
            index = torch.cat([prompt_rows, index], 1)
            mask = torch.cat([mask.new_ones(B, P), mask], 1)
        states = gru(rows, self.gru, index=index, impl=self.impl) * mask.unsqueeze(-1)
        return states, mask, mask.sum(1), lambda: rows[index] * mask.unsqueeze(-1)

    def shares_prefixes(self, x: SeqInputs) -> bool:
        """Whether :meth:`forward` runs the shared-prefix form: inference (no autograd) with the
        ``fast`` implementation, the distinct rows known and no LAIN prompts (they depend on each
        row's length, so no row's sequence would be another's prefix)."""
        cond = x.condition("long")
        return (self.impl != "reference" and not torch.is_grad_enabled() and x.rows is not None
                and (cond is None or cond.num_prompts == 0))

    def forward_shared(self, x: SeqInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference over rows that share prefixes (:func:`prefix_hosts`): the extractor runs once per
        host, each row stepping only its own events, and the AUGRU's input gates are computed once per
        host state -> ``(final [B, H], attention [B, T], lengths [B])``, the values of the plain form."""
        rows, inv = x.rows
        index, mask = left_rows(inv, x.mask)
        L = mask.sum(1)
        hosts, slot = torch.unique(prefix_hosts(index, L), return_inverse=True)
        host_len = L.index_select(0, hosts)
        shared = gru(rows, self.gru, index=index.index_select(0, hosts), impl=self.impl, lengths=host_len)
        states = shared.index_select(0, slot) * mask.unsqueeze(-1)                       # [B, T, H]
        att = self.attention(x.target, states, mask, x.condition("long"))
        return self.augru.forward_shared(shared, host_len, slot, att, L), att, L

    def forward(self, x: SeqInputs) -> BackboneOutput:
        cond = x.condition("long")
        P = cond.num_prompts if cond is not None else 0
        if self.shares_prefixes(x):
            final, att, L = self.forward_shared(x)
            return BackboneOutput(vector=final, aux_loss=None, attention=self._weights(x, att, L, 0))
        states, mask, L, seq = self.sequence(x)
        att = self.attention(x.target, states, mask, cond)
        final = self.augru(states, att, L)
        aux = None
        if self.use_aux and self.training and states.shape[1] - P > 1:
            # events only: LAIN's prompt tokens are neither predicted nor predictors of the next event
            aux = self.aux_loss_weight * self.auxiliary_loss(states[:, P:], seq()[:, P:], mask[:, P:])
        return BackboneOutput(vector=final, aux_loss=aux, attention=self._weights(x, att, L, P))

    @staticmethod
    def _weights(x: SeqInputs, att: torch.Tensor, L: torch.Tensor, P: int) -> dict:
        """The AUGRU's attention over the history, back to right-aligned positions (if asked)."""
        if not x.need_weights:
            return {}
        att, L = att[:, P:], L - P
        T = att.shape[1]
        idx = (torch.arange(T, device=att.device).unsqueeze(0) - (T - L).unsqueeze(1)) % max(T, 1)
        return {"augru": (torch.gather(att, 1, idx) * x.mask).unsqueeze(1)}

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
        """The AUGRU per candidate over the one cached state sequence: its input gates once, not per candidate."""
        N = x.target.shape[0]
        states, mask = state["states"], state["state_mask"]
        att = self.attention(x.target, expand(states, N), expand(mask, N), x.condition("long"))
        L = mask.sum(1)
        slot = torch.zeros(N, dtype=torch.long, device=states.device)
        return BackboneOutput(vector=self.augru.forward_shared(states, L, slot, att, L.expand(N)))
