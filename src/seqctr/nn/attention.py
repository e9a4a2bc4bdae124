"""Target attention layers shared by the backbones: short sequences of :mod:`seqctr.ops` calls, run
in the implementation their ``impl`` names (``fast`` by default; :func:`seqctr.ops.set_impl`)."""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..ops import Events, masked_softmax
from .condition import AttentionCondition, Conditionable, apply_temperature
from .dropout import Dropout
from .mlp import MLP, activation


class DiceMLP(nn.Module):
    """``[..., in_dim] -> [..., 1]``: Linear -> :class:`MaskedDice` per hidden layer, then a Linear to
    one score (DIN's activation unit after its first layer). Parameter names match :class:`MLP`'s
    when there is no hidden layer, so checkpoints of the shipped ``[64]`` unit load unchanged."""

    def __init__(self, in_dim: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), MaskedDice(h)]
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        self.net = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x, mask) if isinstance(layer, MaskedDice) else layer(x)
        return x


class MaskedDice(nn.Module):
    """Dice activation (DIN paper): ``p = sigmoid(BN(x)); y = p*x + (1-p)*alpha*x``.

    Unlike a plain BatchNorm, the training-time statistics use only rows where ``mask`` is True,
    so the amount of padding in a batch never changes any output. ``x [..., H]``, ``mask [...]``.
    With ``sync`` (a process group, set by :meth:`~seqctr.models.CTRModel.prepare_distributed` under DDP) the statistics are summed over
    all ranks with an autograd-aware all-reduce, as SyncBatchNorm does: each rank normalises by the *global* batch's
    mean and variance, so a DDP step equals a one-process step on the whole batch."""

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.eps, self.momentum = eps, momentum
        self.sync = False          # or a process group: sum the statistics over its ranks

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.sync is False:
            return t
        import torch.distributed.nn as dist_nn

        return dist_nn.all_reduce(t, group=self.sync)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            m = mask.unsqueeze(-1).to(x.dtype)
            flat_dims = tuple(range(x.dim() - 1))
            xm = x * m
            if self.sync is not False:      # one all-reduce of (count, sum, sum of squares) for the global batch
                dim = x.shape[-1]
                total = self._sum(torch.cat([m.sum().reshape(1), xm.sum(flat_dims), (xm * x).sum(flat_dims)]))
                count = total[0]
                n = count.clamp_min(1.0)
                mean = total[1:1 + dim] / n
                var = (total[1 + dim:] / n - mean * mean).clamp_min(0.0)
            else:              # two passes (the numerically safer form) when the batch is all here
                count = m.sum()
                n = count.clamp_min(1.0)
                mean = xm.sum(flat_dims) / n
                var = (((x - mean) ** 2) * m).sum(flat_dims) / n
            with torch.no_grad():
                if count > 0:
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))
        return p * x + (1 - p) * self.alpha * x

    def score_eval(self, x: torch.Tensor, out: nn.Linear) -> torch.Tensor:
        """``out(self(x, mask))`` for an output layer of width 1, in eval mode without autograd
        (inference): ``sum_h x_h (alpha_h w_h + (1 - alpha_h) w_h p_h) + b`` with ``p = sigmoid(x a + c)``
        (``a = 1/sqrt(var + eps)``, ``c = -mean a``). Three passes over ``x [..., H]`` instead of the
        nine of Dice then the layer; equal within float rounding. ``-> [..., 1]``."""
        a = torch.rsqrt(self.running_var + self.eps)
        p = torch.addcmul(-self.running_mean * a, x, a).sigmoid_()
        w = out.weight[0]
        g = torch.addcmul(self.alpha * w, p, (1 - self.alpha) * w, out=p)
        return (torch.linalg.vecdot(x, g) + out.bias).unsqueeze(-1)


class AttentionResult(NamedTuple):
    """``out [B, D]``; ``weights [B, H, T]`` over the history positions (0 where not attended);
    ``prompt_weights [B, H, P]`` or None; ``aux_loss`` of a CollectiveKV projection (training)."""

    out: torch.Tensor
    weights: torch.Tensor
    prompt_weights: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def _with_prompts(scores, mask, prompt_scores):
    """Prepend prompt scores (always attended) to ``scores``/``mask`` along the last dim."""
    if prompt_scores is None:
        return scores, mask
    ones = torch.ones(prompt_scores.shape, dtype=torch.bool, device=scores.device)
    return torch.cat([prompt_scores, scores], -1), torch.cat([ones, mask.expand_as(scores)], -1)


class DINAttention(Conditionable):
    """DIN's activation unit: score(q, k) = MLP([q, k, q-k, q*k]); pooled = sum_t w_t k_t.

    The first layer is applied in a fused form that is exactly equal to the concatenation:
    ``W [q, k, q-k, q*k] = (Wq + Wd) q + (Wk - Wd) k + Wp (q*k)``, so the key term is computed once
    per history event (no ``[B, T, 4D]`` tensor), and the query term once per target.
    ``impl="reference"`` (or ``fused=False``) runs the textbook form instead (same outputs; the oracle).

    Conditioning (LAIN): the length vector shifts the query and keys fed to the unit, prompts
    are extra keys (pooled like events), and the scores are divided by the temperature.

    Shapes: ``query [B, D]``, ``keys [B, T, D]``, ``mask [B, T]`` -> ``pooled [B, D]``,
    ``weights [B, T]`` (softmax-normalised when ``use_softmax``, else raw masked scores as in DIN).
    """

    def __init__(self, dim: int, hidden: list[int] = (64,), act: str = "dice", use_softmax: bool = False,
                 fused: bool = True, branch: str = "long"):
        super().__init__()
        hidden = list(hidden)
        self.impl, self.branch = "fast" if fused else "reference", branch
        self.first = nn.Linear(4 * dim, hidden[0])
        self.dice = act.lower() == "dice"
        self.act = MaskedDice(hidden[0]) if self.dice else activation(act)
        # deeper layers use the same activation as the first (Dice in every hidden layer, as FuxiCTR)
        self.rest = DiceMLP(hidden[0], hidden[1:]) if self.dice else MLP(hidden[0], hidden[1:], out_dim=1, act=act)
        self.dim, self.use_softmax = dim, use_softmax

    def condition_widths(self) -> tuple[int, int]:
        return self.dim, self.dim

    def _activate(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.dice:
            return self.act(h, mask if mask is not None else torch.ones(h.shape[:-1], dtype=torch.bool,
                                                                         device=h.device))
        return self.act(h)

    def key_term(self, keys: torch.Tensor) -> torch.Tensor:
        """The keys' share of the first layer, ``(Wk - Wd) k``: ``[B, T, D] -> [B, T, H]`` (cacheable)."""
        D, W = self.dim, self.first.weight
        return keys @ (W[:, D:2 * D] - W[:, 2 * D:3 * D]).T

    def scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None,
               key_term: torch.Tensor | None = None) -> torch.Tensor:
        """Unmasked scores ``[B, T]`` (``mask`` only feeds Dice's batch statistics)."""
        D = self.dim
        W = self.first.weight                      # [H, 4D]
        wq, wk, wd, wp = W[:, :D], W[:, D:2 * D], W[:, 2 * D:3 * D], W[:, 3 * D:]
        q_term = query @ (wq + wd).T + self.first.bias          # [B, H]
        if key_term is None:
            # k (Wk - Wd)^T + (q * k) Wp^T = k [(Wk - Wd)^T + diag(q) Wp^T]: one batched GEMM with a
            # per-sample matrix, and no [B, T, D] product tensor
            per_sample = (wk - wd).T.unsqueeze(0) + query.unsqueeze(-1) * wp.T.unsqueeze(0)   # [B, D, H]
            kp = torch.bmm(keys, per_sample)                                                 # [B, T, H]
        else:  # serving: the key term comes from the cache
            kp = key_term + (query.unsqueeze(1) * keys) @ wp.T
        if self.dice and len(self.rest.net) == 1 and not self.training and not torch.is_grad_enabled():
            # inference: Dice's running statistics and the output layer folded into three passes
            return self.act.score_eval(kp.add_(q_term.unsqueeze(1)), self.rest.net[0]).squeeze(-1)
        h = self._activate(kp + q_term.unsqueeze(1), mask)
        return self._rest(h, mask).squeeze(-1)

    def _rest(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not self.dice:
            return self.rest(h)
        return self.rest(h, mask if mask is not None else torch.ones(h.shape[:-1], dtype=torch.bool, device=h.device))

    def reference_scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None):
        """The textbook form (concatenate, then the MLP); kept as the test oracle of :meth:`scores`."""
        q = query.unsqueeze(1).expand_as(keys)
        x = torch.cat([q, keys, q - keys, q * keys], dim=-1)
        return self._rest(self._activate(self.first(x), mask), mask).squeeze(-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                cond: AttentionCondition | None = None, key_term: torch.Tensor | None = None,
                pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AttentionResult:
        """``key_term``: a cached :meth:`key_term` of ``keys`` (serving); ignored when conditioning
        changes the keys. ``pool``: ``w [B, T] -> sum_t w_t keys_t [B, D]`` computed another way
        (e.g. :meth:`~seqctr.models.base.SeqInputs.weighted_sum` over distinct events); prompts are
        pooled here."""
        P = cond.num_prompts if cond is not None else 0
        if P:
            keys = torch.cat([cond.prompts, keys], 1)
            mask = torch.cat([mask.new_ones(mask.shape[0], P), mask], 1)
        q, k = self.condition_query(query, cond), keys
        shift = self.key_shift(cond)
        if shift is not None:
            k = keys + shift.unsqueeze(1)
        fast = self.impl != "reference"
        if P or shift is not None or not fast:
            key_term = None
        s = self.scores(q, k, mask, key_term) if fast else self.reference_scores(q, k, mask)
        s = apply_temperature(s, cond)
        w = masked_softmax(s, mask) if self.use_softmax else s * mask.to(s.dtype)
        if pool is None or not fast:
            pooled = torch.einsum("bt,btd->bd", w, keys)
        else:
            pooled = pool(w[:, P:])
            if P:
                pooled = pooled + torch.einsum("bp,bpd->bd", w[:, :P], cond.prompts)
        return AttentionResult(pooled, w[:, P:].unsqueeze(1), w[:, :P].unsqueeze(1) if P else None)


class MultiHeadTargetAttention(Conditionable):
    """Scaled dot-product attention of one target query over a sequence (LongCTR's layer).

    ``W_q, W_k: key_dim -> attention_dim`` (the first ``key_dim`` features of query and keys; all
    by default), ``W_v: in -> attention_dim``, ``W_o: attention_dim -> in``; no biases. Split into
    :meth:`project_kv` (depends on the history only: what a serving cache stores) and
    :meth:`attend`, so cached and uncached scoring run the same code.

    ``attend(..., topk=k)`` keeps, per head, only the ``k`` best-scoring events by these very
    scores (TWIN's consistent retrieval); ``score_bias [B, H, T]`` is added to the scores.
    Conditioning: prompts are extra keys/values after any top-k; the length vector is added to
    the query and keys through ``q_len``/``k_len``; scores are divided by the temperature.

    ``collective`` (options of :class:`~seqctr.nn.collective_kv.CollectiveKV`) replaces ``W_k``/``W_v``
    by CollectiveKV; ``silu`` applies the SiLU the CollectiveKV authors' code puts on q, K and V
    (on its own: the control for the uncompressed baseline).

    Shapes: ``query [B, D]``, ``keys [B, T, D]``, ``mask [B, T]`` -> ``out [B, D]``, ``weights [B, H, T]``.
    """

    def __init__(self, input_dim: int, attention_dim: int = 64, num_heads: int = 1, dropout: float = 0.0,
                 key_dim: int | None = None, branch: str = "long", collective: dict | None = None,
                 silu: bool = False):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim={attention_dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.branch = num_heads, attention_dim // num_heads, branch
        self.key_dim = key_dim or input_dim
        self.silu = silu
        self.W_q = nn.Linear(self.key_dim, attention_dim, bias=False)
        self.ckv = None
        if collective:
            from .collective_kv import CollectiveKV

            self.ckv = CollectiveKV(self.key_dim, input_dim, attention_dim, **collective)
        else:
            self.W_k = nn.Linear(self.key_dim, attention_dim, bias=False)
            self.W_v = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_o = nn.Linear(attention_dim, input_dim, bias=False)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.impl = "fast"         # seqctr.ops implementation (ops.set_impl)

    def kv_width(self) -> int:
        """Width of the cached K (and V) per event, all heads."""
        return self.num_heads * self.head_dim

    def condition_widths(self) -> tuple[int, int]:
        return self.kv_width(), self.kv_width()

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, H*hd] -> [B, H, T, hd]``."""
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, keys: torch.Tensor, mask: torch.Tensor | None = None):
        """``keys [B, T, D]`` -> per-head ``K, V [B, H, T, hd]`` and the CollectiveKV aux loss (or None)."""
        aux = None
        if self.ckv is not None:
            k, v, aux = self.ckv(keys[..., : self.key_dim], keys, mask)
        else:
            k, v = self.W_k(keys[..., : self.key_dim]), self.W_v(keys)
        if self.silu:
            k, v = F.silu(k), F.silu(v)
        return self.split_heads(k), self.split_heads(v), aux

    def cache_kv(self, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cache form of the history's K/V: full ``k, v`` or CollectiveKV codes."""
        if self.ckv is not None:
            return self.ckv.codes(keys[..., : self.key_dim], keys)
        k, v, _ = self.project_kv(keys)
        # head-major in memory ([1, H, T, hd] contiguous): the shared-cache ops read it as [H*T, hd] rows
        # (ops.head_scores / head_pool with picks) without copying the user's K/V at every request
        return {"k": k.contiguous(), "v": v.contiguous()}

    def kv_from_cache(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ckv is None:
            return state["k"], state["v"]
        k, v = self.ckv.from_codes(state)
        if self.silu:
            k, v = F.silu(k), F.silu(v)
        return self.split_heads(k), self.split_heads(v)

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               cond: AttentionCondition | None = None, topk: int | None = None,
               score_bias: torch.Tensor | None = None, select: tuple | None = None,
               need_weights: bool = True) -> AttentionResult:
        """Attention of ``query [B, D]`` over projected ``k, v [B, H, T, hd]``.

        ``select = (idx [B, k], sel_mask [B, k])``: attend only over those positions (an exact
        search over a GSU's choice), as if the history were ``gather_positions(hist, idx)``;
        ``mask`` is then not used (``sel_mask`` already says which picks are real).
        ``need_weights=False`` (serving) skips mapping the weights back to ``[B, H, T]``.
        ``k``/``v`` may be one user's cache expanded over ``B`` candidates (stride 0 on the batch
        axis): the ``fast`` ops then read the shared rows without a per-candidate copy."""
        B, H, T, hd = k.shape
        if select is not None:
            as_mask, select = ops.selection_as_mask(select, k, self.impl)
            mask = as_mask if as_mask is not None else mask
        q = self.condition_query(self.W_q(query[..., : self.key_dim]), cond)
        q = (F.silu(q) if self.silu else q).view(B, H, hd)
        shift = self.key_shift(cond)
        if shift is not None:
            k = k + shift.view(B, H, 1, hd)
        idx = picks = None
        if select is not None:
            idx, sel_mask = select
            idx = idx.unsqueeze(1).expand(B, H, idx.shape[-1])
            hmask = sel_mask.unsqueeze(1).expand_as(idx)
            picks = ops.Picks(idx)                 # one CSR pattern of the picks for their scores and their pool
            scores = ops.head_scores(q, k, self.impl, picks)                                         # [B, H, k]
            if score_bias is not None:
                scores = scores + torch.gather(score_bias, -1, idx)
        else:
            scores = ops.head_scores(q, k, self.impl)                                                # [B, H, T]
            if score_bias is not None:
                scores = scores + score_bias
            hmask = mask.unsqueeze(1).expand(B, H, T)
            if topk is not None and topk < T:
                idx, hmask = ops.topk_select(scores, hmask, topk)                                    # [B, H, k]
                scores = torch.gather(scores, -1, idx)
                picks = ops.Picks(idx)
        P = cond.num_prompts if cond is not None else 0
        if P:
            ps, pv = self._prompts(q.unsqueeze(2), cond, shift)
            scores, hmask = _with_prompts(scores, hmask, ps)
        w = masked_softmax(apply_temperature(scores, cond), hmask)
        wd = self.dropout(w)
        out = ops.head_pool(wd[..., P:], v, self.impl, picks)                                        # [B, H, hd]
        if P:
            out = out + (wd[..., :P].unsqueeze(2) @ pv).squeeze(2)
        return self._result(out, w, P, idx, T, need_weights)

    def _prompts(self, q: torch.Tensor, cond: AttentionCondition, shift: torch.Tensor | None):
        """Scores ``[B, H, P]`` of the prompt tokens for ``q [B, H, 1, hd]``, and their values ``[B, H, P, hd]``."""
        B, H, _, hd = q.shape
        pk, pv, _ = self.project_kv(cond.prompts)
        if shift is not None:
            pk = pk + shift.view(B, H, 1, hd)
        return (q @ pk.transpose(-1, -2)).squeeze(2) / hd ** 0.5, pv

    def _result(self, out: torch.Tensor, w: torch.Tensor, P: int, idx: torch.Tensor | None, T: int,
                need_weights: bool = True) -> AttentionResult:
        """``out [B, H, hd]`` through ``W_o``; weights split into prompts and history (top-k mapped
        back to T, unless ``need_weights`` is False: then the selected events' weights are returned)."""
        B, H = w.shape[:2]
        w_hist = w[..., P:]
        if idx is not None and need_weights:
            w_hist = torch.zeros(B, H, T, dtype=w.dtype, device=w.device).scatter(-1, idx, w_hist)
        return AttentionResult(self.W_o(out.reshape(B, -1)), w_hist, w[..., :P] if P else None)

    @property
    def absorbed(self) -> bool:
        """Plain linear K/V: :meth:`forward` never projects the events (and takes ``rows``)."""
        return self.ckv is None and not self.silu

    def forward(self, query: torch.Tensor, events: Events | torch.Tensor, mask: torch.Tensor,
                cond: AttentionCondition | None = None, topk: int | None = None,
                score_bias: torch.Tensor | None = None) -> AttentionResult:
        """Same result as ``attend(query, *project_kv(events))``. ``events``: a ``[B, T, D]`` tensor or
        an :class:`~seqctr.ops.Events` (dense, or the batch's distinct rows and their index). With plain
        linear K/V it runs in the absorbed form — scores ``(W_k^T q) . e_t`` and output
        ``W_v (sum_t w_t e_t)`` — which never projects the events: O(T D H) instead of O(T D A) per
        sample. Scores and pooling are :func:`~seqctr.ops.event_scores` / :func:`~seqctr.ops.event_pool`
        in the form :func:`~seqctr.ops.resolve` gives ``self.impl``."""
        ev = events if isinstance(events, Events) else Events.dense_of(events)
        if not self.absorbed:                          # non-linear K/V: project every event
            k, v, aux = self.project_kv(ev.dense(), mask)
            return self.attend(query, k, v, mask, cond, topk, score_bias)._replace(aux_loss=aux)
        B, T = mask.shape
        H, hd, kd = self.num_heads, self.head_dim, self.key_dim
        q = self.condition_query(self.W_q(query[..., :kd]), cond).view(B, H, hd)
        qk = torch.einsum("bhe,hek->bhk", q, self.W_k.weight.view(H, hd, kd))           # W_k^T q per head
        select = topk is not None and topk < T
        read, form = ops.resolve(self.impl, ev, H, scoring_for_topk=select)
        scores = ops.event_scores(qk, read, form) / hd ** 0.5                             # [B, H, T]
        shift = self.key_shift(cond)
        if shift is not None:                                    # (the same for every key)
            scores = scores + (q * shift.view(B, H, hd)).sum(-1, keepdim=True) / hd ** 0.5
        if score_bias is not None:
            scores = scores + score_bias
        hmask = mask.unsqueeze(1).expand_as(scores)
        idx = None
        if select:
            idx, hmask = ops.topk_select(scores, hmask, topk)                              # [B, H, k]
            scores = torch.gather(scores, -1, idx)
            read, form = ops.resolve(self.impl, ev.at(idx), H)
        P = cond.num_prompts if cond is not None else 0
        if P:
            ps, pv = self._prompts(q.unsqueeze(2), cond, shift)
            scores, hmask = _with_prompts(scores, hmask, ps)
        w = masked_softmax(apply_temperature(scores, cond), hmask)
        wd = self.dropout(w)
        pooled = ops.event_pool(wd[..., P:], read, form)                                   # [B, H, D]
        out = torch.einsum("bhd,hed->bhe", pooled, self.W_v.weight.view(H, hd, pooled.shape[-1]))  # W_v per head
        if P:
            out = out + (wd[..., :P].unsqueeze(2) @ pv).squeeze(2)
        return self._result(out, w, P, idx, T)


class BilinearAttention(Conditionable):
    """``w = softmax_t(k_t . W q)`` over real positions (DIEN's attention). ``query [B, Dq]``,
    ``keys [B, T, Dk]``, ``mask [B, T]`` -> ``weights [B, T]``. Conditioning: length vector on
    query and keys, temperature; prompts are the caller's business (DIEN runs them through its GRU)."""

    def __init__(self, query_dim: int, key_dim: int, branch: str = "long"):
        super().__init__()
        self.W = nn.Linear(query_dim, key_dim, bias=False)
        self.key_dim_, self.branch = key_dim, branch

    def condition_widths(self) -> tuple[int, int]:
        return self.key_dim_, self.key_dim_

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                cond: AttentionCondition | None = None) -> torch.Tensor:
        q = self.condition_query(self.W(query), cond)
        shift = self.key_shift(cond)
        if shift is not None:
            keys = keys + shift.unsqueeze(1)
        scores = torch.einsum("btd,bd->bt", keys, q)
        return masked_softmax(apply_temperature(scores, cond), mask)
