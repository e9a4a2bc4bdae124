"""HSTU (Zhai et al., ICML 2024): stacked blocks of pointwise aggregated attention,
``A = SiLU(q k^T / sqrt(d_h) + rab) / N`` (no softmax), with a learned relative bias and a causal
mask, gated by ``u``. For CTR the target item is appended as the last token, so it attends to the
whole history while no history token sees it (target-aware ranking); its final state is the user
interest vector.

The relative bias is the reference's (``RelativeBucketedTimeAndPositionBasedBias``): a position
part by distance ``i - j`` plus a time part by ``bucket(t_i - t_j) = floor(ln(max(|dt|, 1)) / 0.301)``
(clipped to ``time_buckets``), both shared by all heads and drawn from N(0, 0.02). The target row's
time is the candidate's (request) time, as the reference's last row. A history row uses its own
event's time — the reference uses the next event's (its row ``i`` predicts event ``i + 1``); here
the history rows predict nothing, and keeping them to their own time keeps every cached state
independent of the candidate and exact under appends. Without event times (data without
timestamps, or a request without them) the time part is left out, in training and serving alike.

``collective_kv`` (options of :class:`~seqctr.nn.collective_kv.CollectiveKV`) gives every layer its
own CollectiveKV, as the authors' ``HSTUBlock_GMUS_v2``: ``f1`` then projects to ``u, q`` only and
``k, v = [pool entry, SiLU(W x)]`` are routed from the normalised input (biased Linears there);
the layers' auxiliary losses are summed into the training loss. A serving cache then holds each
layer's d_u-wide user parts and pool indices instead of full keys and values.

``collective_target``: how the candidate's own token gets its ``k, v`` under CollectiveKV. ``"routed"``
(default, the authors' code: every token goes through the pool) routes it like a history event, which at
serving time means one ``[candidates, pool]`` router GEMM per layer and request (a deeper layer's target
token depends on the user's history, so it cannot be memoised). ``"projected"``: the target token, which
no cache ever stores, takes the plain HSTU projection ``SiLU(W x)`` for its ``k, v`` (``2 D^2`` more
parameters per layer) and only the history events are routed — the cached scoring then costs what the
full cache's does plus the pool gather (docs/results/profile_scoring.md).

``cache_first_layer`` (serving only; the weights do not depend on it): the first layer's tokens are the
items' embeddings, so its keys and values (full, or CollectiveKV codes) are a function of the item alone.
``False`` leaves them out of the cache and rebuilds them at each request from the item ids the cache
keeps anyway (memoised routing under CollectiveKV): about half of a two-layer cache, for one pass of
the first layer's K/V projection over the history per request."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.dropout import Dropout
from .base import Backbone, BackboneOutput, SeqInputs, concat_events, prefixed, register, unprefixed


class HSTUBlock(nn.Module):
    """One HSTU layer. ``x [B, N, D]``, ``valid [B, N]`` -> ``[B, N, D]`` (and weights ``[B, H, N, N]``)."""

    branch = "layer"   # every history event is cached in every layer (see experiments.accounting)
    cached = True      # False: this layer's K/V are rebuilt per request, not cached (HSTU.cache_first_layer)

    def __init__(self, dim: int, num_heads: int, max_len: int, dropout: float, collective: dict | None = None,
                 shared_bias: bool = True, bias_init_std: float = 0.02, time_buckets: int = 0,
                 collective_target: str = "routed"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.h, self.hd, self.max_len = num_heads, dim // num_heads, max_len
        self.norm_in = nn.LayerNorm(dim)
        self.ckv = self.f_target = None
        if collective_target not in ("routed", "projected"):
            raise ValueError(f"collective_target must be 'routed' or 'projected', got {collective_target!r}")
        if collective:
            from ..nn.collective_kv import CollectiveKV

            self.ckv = CollectiveKV(dim, dim, dim, **{"bias": True, **collective})
            if collective_target == "projected":      # the target token's k, v (see the module docstring)
                self.f_target = nn.Linear(dim, 2 * dim)
        self.f1 = nn.Linear(dim, (2 if self.ckv is not None else 4) * dim)
        self.norm_av = nn.LayerNorm(dim)
        self.f2 = nn.Linear(dim, dim)
        # bias by distance i - j (clipped): one row shared by every head (the reference), or one per head
        self.rab = nn.Parameter(torch.zeros(1 if shared_bias else num_heads, max_len + 1))
        # bias by time bucket of t_i - t_j (0 buckets: no time part)
        self.time_buckets = time_buckets
        self.ts_w = nn.Parameter(torch.zeros(self.rab.shape[0], time_buckets + 1)) if time_buckets > 0 else None
        if bias_init_std > 0:
            nn.init.normal_(self.rab, std=bias_init_std)
            if self.ts_w is not None:
                nn.init.normal_(self.ts_w, std=bias_init_std)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()

    def time_bucket(self, q_time: torch.Tensor, k_time: torch.Tensor) -> torch.Tensor:
        """``floor(ln(max(|t_q - t_k|, 1)) / 0.301)`` clipped to ``time_buckets``, in float32 as the
        reference: ``[B, Nq]``, ``[B, Nk]`` -> ``[B, Nq, Nk]`` int64 (in place: no gradient to carry)."""
        with torch.no_grad():
            dt = q_time.unsqueeze(-1) - k_time.unsqueeze(-2)
            return dt.abs_().clamp_(min=1).float().log_().div_(0.301).long().clamp_(max=self.time_buckets)

    def rel_index(self, q_pos: torch.Tensor, k_pos: torch.Tensor, q_time: torch.Tensor | None = None,
                  k_time: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
        """``(index [1 or B, Nq, Nk], timed)`` into this layer's bias table (:meth:`rel_bias`): the
        position distance clipped to ``[0, max_len]`` and, with times, its time bucket. The same for
        every layer of a model (they share ``max_len`` and ``time_buckets``), so computed once."""
        dist = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).clamp_(0, self.max_len).unsqueeze(0)
        if self.ts_w is None or q_time is None or k_time is None:
            return dist, False
        idx = self.time_bucket(q_time, k_time)
        idx += dist * (self.time_buckets + 1)
        return idx, True

    def rel_bias(self, index: tuple[torch.Tensor, bool]) -> torch.Tensor:
        """The relative bias ``[1 or B, H or 1, Nq, Nk]`` at :meth:`rel_index`'s ``index``: position
        part plus time part, read in one gather from their sums ``rab[d] + ts_w[b]``."""
        idx, timed = index
        table = (self.rab.unsqueeze(-1) + self.ts_w.unsqueeze(1)).flatten(1) if timed else self.rab
        return table[:, idx].movedim(0, 1)

    def kv_width(self) -> int:
        return self.h * self.hd

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, H, N, hd]``."""
        B, N, _ = t.shape
        return t.view(B, N, self.h, self.hd).transpose(1, 2)

    def project(self, x: torch.Tensor, valid: torch.Tensor | None = None, target_last: bool = False):
        """Gate ``u``, ``q``, ``k``, ``v`` ``[B, N, D]`` (one ``f1``, or ``f1`` for ``u, q`` and
        CollectiveKV for ``k, v``) and the CollectiveKV auxiliary loss (None unless training with it).
        ``target_last``: the last token of each row is the candidate (with ``f_target``, projected
        instead of routed)."""
        n = self.norm_in(x)
        if self.ckv is None:
            u, q, k, v = F.silu(self.f1(n)).chunk(4, -1)
            return u, q, k, v, None
        u, q = F.silu(self.f1(n)).chunk(2, -1)
        if self.f_target is None or not target_last:
            k, v, aux = self.ckv(n, n, valid)
            return u, q, k, v, aux
        k_t, v_t = F.silu(self.f_target(n[:, -1:])).chunk(2, -1)                 # [B, 1, D] each
        if n.shape[1] == 1:
            return u, q, k_t, v_t, None
        h = n[:, :-1]
        k, v, aux = self.ckv(h, h, None if valid is None else valid[:, :-1])
        return u, q, torch.cat([k, k_t], 1), torch.cat([v, v_t], 1), aux

    def qkvu(self, x: torch.Tensor, valid: torch.Tensor | None = None, target_last: bool = False):
        """Per-head ``q, k, v [B, H, N, hd]``, gate ``u [B, N, D]`` and the auxiliary loss."""
        u, q, k, v, aux = self.project(x, valid, target_last)
        return self.split(q), self.split(k), self.split(v), u, aux

    def project_cached(self, x: torch.Tensor):
        """One projection of tokens ``x [B, T, D]`` for serving: gate ``u`` and ``q`` ``[B, T, D]``,
        what the cache keeps (full ``k, v`` or the CollectiveKV codes), and ``k, v [B, T, D]`` as
        read back from it — so a prefill or append projects each layer once."""
        if self.ckv is None:
            u, q, k, v, _ = self.project(x)
            return u, q, {"k": k, "v": v}, k, v
        n = self.norm_in(x)
        u, q = F.silu(self.f1(n)).chunk(2, -1)
        codes = self.ckv.codes(n, n)
        return (u, q, codes, *self.ckv.from_codes(codes))

    def cache_kv(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a serving cache keeps of this layer for tokens ``x [B, T, D]``, every tensor
        ``[B, T, ...]``: full ``k, v`` or the CollectiveKV codes (user parts + pool indices)."""
        if self.ckv is None:
            return self.project_cached(x)[2]
        n = self.norm_in(x)
        return self.ckv.codes(n, n)

    def kv_plain(self, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``k, v [B, N, D]`` of normalised tokens ``n`` without CollectiveKV: ``f1``'s k, v rows only."""
        D = n.shape[-1]
        return F.silu(F.linear(n, self.f1.weight[2 * D:], self.f1.bias[2 * D:])).chunk(2, -1)

    def kv_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head ``k, v [B, H, T, hd]`` of tokens ``x [B, T, D]`` as a cache would hold them (what
        :meth:`kv_from_cache` returns after :meth:`cache_kv`), computed directly."""
        if self.ckv is not None:
            return self.kv_from_cache(self.cache_kv(x))
        k, v = self.kv_plain(self.norm_in(x))
        return self.split(k), self.split(v)

    def kv_from_cache(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head ``k, v [B, H, T, hd]`` from :meth:`cache_kv`'s tensors."""
        k, v = (state["k"], state["v"]) if self.ckv is None else self.ckv.from_codes(state)
        return self.split(k), self.split(v)

    def target_step(self, x_t: torch.Tensor, k_hist: torch.Tensor, v_hist: torch.Tensor, valid: torch.Tensor,
                    t_time: torch.Tensor | None = None, h_time: torch.Tensor | None = None):
        """One layer for the target tokens only, from one user's cached ``k, v [1, H, T, hd]``
        (``valid [1, T]``; event times ``h_time [1, T]``, candidate times ``t_time [N]``):
        ``x_t [N, D] -> [N, D]``, exactly the last row of :meth:`forward` on ``[history; target]``.
        The history K/V are broadcast, never copied per candidate."""
        N, D = x_t.shape
        q, k, v, u, _ = self.qkvu(x_t.unsqueeze(1), target_last=True)             # [N, H, 1, hd]
        T = k_hist.shape[2]
        qh = q[:, :, 0].transpose(0, 1)                                           # [H, N, hd]
        timed = t_time is not None and h_time is not None
        pos = torch.arange(T + 1, device=x_t.device)                              # keys 0..T-1, target at T
        q_time = k_time = None
        if timed:                          # keys: the history's times, then the target's own (dt = 0)
            q_time = t_time.view(N, 1).to(h_time.dtype)
            k_time = torch.cat([h_time.expand(N, T), q_time], 1)
        index = self.rel_index(pos[T:], pos, q_time, k_time)
        bias = self.rel_bias(index)[:, :, 0]                                      # [N or 1, H|1, T+1]
        b_hist, b_self = bias[..., :T].transpose(0, 1), bias[..., T].unsqueeze(-1)  # [H|1, N|1, T], [N|1, H|1, 1]
        s_hist = qh @ k_hist[0].transpose(-1, -2) / self.hd ** 0.5 + b_hist      # [H, N, T]
        a_hist = F.silu(s_hist) / self.max_len * valid.view(1, 1, T)
        a_self = F.silu((q * k).sum(-1) / self.hd ** 0.5 + b_self) / self.max_len  # [N, H, 1]
        av = (a_hist @ v_hist[0]).transpose(0, 1) + a_self * v[:, :, 0]          # [N, H, hd]
        return (x_t + self.dropout(self.f2(self.norm_av(av.reshape(N, D)) * u[:, 0])))

    def extend(self, x_new: torch.Tensor, k_old: torch.Tensor, v_old: torch.Tensor, valid_old: torch.Tensor,
               time_old: torch.Tensor | None = None, time_new: torch.Tensor | None = None):
        """New tokens ``x_new [B, n, D]`` (times ``time_new [B, n]``) appended after cached ones
        (times ``time_old [B, T]``): this layer's outputs for them and their cache entries (as
        :meth:`cache_kv`)."""
        B, n, D = x_new.shape
        u, q, state, k, v = self.project_cached(x_new)
        T = k_old.shape[2]
        pos = torch.arange(T + n, device=x_new.device)
        key_valid = torch.cat([valid_old, valid_old.new_ones(B, n)], 1)
        k_time = None if time_old is None or time_new is None else torch.cat([time_old, time_new], 1)
        index = self.rel_index(pos[T:], pos, time_new, k_time)
        a = self.attention(self.split(q), torch.cat([k_old, self.split(k)], 2), pos[T:], pos, key_valid, index)
        av = (a @ torch.cat([v_old, self.split(v)], 2)).transpose(1, 2).reshape(B, n, D) / self.max_len
        return x_new + self.dropout(self.f2(self.norm_av(av) * u)), state

    def attention(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                  key_valid: torch.Tensor, index: tuple[torch.Tensor, bool]) -> torch.Tensor:
        """Pointwise weights ``[B, H, Nq, Nk]`` before the ``1 / max_len`` normaliser (the callers
        divide ``a @ v``, N times fewer numbers): causal (k_pos <= q_pos), real keys only, biased by
        :meth:`rel_bias` at ``index``."""
        s = (q * self.hd ** -0.5) @ k.transpose(-1, -2)
        s = s + self.rel_bias(index)
        allowed = (k_pos.unsqueeze(0) <= q_pos.unsqueeze(-1)).unsqueeze(0) & key_valid[:, None, :]   # [B, Nq, Nk]
        return F.silu(s) * allowed.unsqueeze(1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, need_weights: bool = False, last_only: bool = False,
                index: tuple[torch.Tensor, bool] | None = None):
        """``x``: history tokens then the target token (last). All positions, or with ``last_only`` just the last one (``[B, 1, D]``; what a
        target-aware final layer needs: its keys and values still come from every position);
        ``index``: :meth:`rel_index` over all ``N x N`` positions (computed once for all layers; None:
        positions only, no time part).
        Returns ``(y, weights or None, CollectiveKV aux loss or None)``."""
        if last_only and self.ckv is None:   # only the target's u, q; every token's k, v
            n = self.norm_in(x)
            D = x.shape[-1]
            k, v = self.kv_plain(n)
            u, q = F.silu(F.linear(n[:, -1:], self.f1.weight[:2 * D], self.f1.bias[:2 * D])).chunk(2, -1)
            q, k, v, aux = self.split(q), self.split(k), self.split(v), None
        else:
            q, k, v, u, aux = self.qkvu(x, valid, target_last=True)
        y, a = self.mix(x, q, k, v, u, valid, need_weights, last_only, index)
        return y, a, aux

    def mix(self, x, q, k, v, u, valid, need_weights: bool = False, last_only: bool = False, index=None):
        """The layer after its projections: per-head ``q, k, v [B, H, N, hd]`` (with ``last_only``,
        ``q`` and ``u`` may already be the last token's), gate ``u [B, N, D]``."""
        B, N, D = x.shape
        pos = torch.arange(N, device=x.device)
        if index is None:
            index = self.rel_index(pos, pos)
        q_pos = pos
        if last_only:
            q, u, x, q_pos = q[:, :, -1:], u[:, -1:], x[:, -1:], pos[-1:]
            index = (index[0][:, -1:], index[1])
        a = self.attention(q, k, q_pos, pos, valid, index)
        av = (a @ v).transpose(1, 2).reshape(B, len(q_pos), D) / self.max_len
        y = x + self.dropout(self.f2(self.norm_av(av) * u))
        return (y if last_only else y * valid.unsqueeze(-1)), (a / self.max_len if need_weights else None)


@register("hstu")
class HSTU(Backbone):
    """Options: ``num_layers`` (2), ``num_heads`` (2), ``max_len`` (relative-position range and the
    1/N normaliser; 256), ``dropout`` (0.0), ``collective_kv`` (CollectiveKV options for every
    layer; None = off), ``shared_bias`` (True: one relative-position bias for all heads, as the
    reference; False: one per head, seqctr <= 0.1), ``bias_init_std`` (0.02, the reference's
    N(0, 0.02); 0 = zeros), ``time_bias`` (True: the reference's time-bucket bias, from the data's
    event timestamps), ``time_buckets`` (128, the reference's), ``collective_target`` ("routed", the
    authors'; "projected": the never-cached target token's k, v by a plain projection, see the module
    docstring), ``cache_first_layer`` (True; False: the first layer's K/V rebuilt from the cached item
    ids per request instead of cached, see the module docstring)."""

    lain_unsupported = ("HSTU has no softmax to temper and its relative-position bias would move prompt tokens "
                     "with the padding; LAIN is not attached to it")

    def __init__(self, item_dim: int, feature_dim: int = 64, num_layers: int = 2, num_heads: int = 2,
                 max_len: int = 256, dropout: float = 0.0, collective_kv: dict | None = None,
                 shared_bias: bool = True, bias_init_std: float = 0.02, time_bias: bool = True,
                 time_buckets: int = 128, collective_target: str = "routed", cache_first_layer: bool = True):
        super().__init__()
        if time_bias and time_buckets < 1:
            raise ValueError(f"time_buckets must be >= 1 with time_bias, got {time_buckets}")
        self.uses_time = bool(time_bias)
        self.blocks = nn.ModuleList(
            HSTUBlock(item_dim, num_heads, max_len, dropout, self.layer_collective(collective_kv, i),
                      shared_bias, bias_init_std, time_buckets if time_bias else 0, collective_target)
            for i in range(num_layers))
        self.set_cache_first_layer(cache_first_layer)
        self.norm_out = nn.LayerNorm(item_dim)
        self.out_dim = item_dim

    @staticmethod
    def layer_collective(collective: dict | None, i: int) -> dict | None:
        """Layer ``i``'s CollectiveKV options. Only the first layer memoises its routing by default
        (``memo_rows``): its tokens are item embeddings, seen again across users and requests,
        while a deeper layer's tokens depend on the user's history and rarely repeat."""
        if not collective or i == 0 or "memo_rows" in collective:
            return collective
        return {**collective, "memo_rows": 0}

    def set_cache_first_layer(self, cached: bool) -> None:
        """Cache the first layer's K/V (True) or rebuild them per request from the cached ids (False;
        serving only, the weights are the same). Caches of either form are read by either setting."""
        self.blocks[0].cached = bool(cached)         # what prefill / append store; read by experiments.accounting

    @property
    def cache_first_layer(self) -> bool:
        return self.blocks[0].cached

    def _layer(self, state: dict, i: int, embed=None):
        """Layer ``i``'s per-head ``k, v`` for the cached events: read from the cache, or, where the cache
        has no first layer (made with ``cache_first_layer=False``), rebuilt from the cached ids with ``embed``."""
        part = unprefixed(state, f"l{i}_")
        if i == 0 and not part:
            return self.blocks[0].kv_of(embed(state["ids"].long()))
        return self.blocks[i].kv_from_cache(part)

    def _keep(self, state: dict, i: int, part: dict) -> None:
        """Store layer ``i``'s cache entries ``part`` in ``state`` (unless that layer is rebuilt per request)."""
        if self.blocks[i].cached:
            state.update(prefixed(part, f"l{i}_"))

    def _times(self, x: SeqInputs, with_target: bool) -> torch.Tensor | None:
        """Token times ``[B, T (+1)]`` (history, then the candidate), or None without time bias or times."""
        if not self.uses_time or x.hist_time is None or (with_target and x.target_time is None):
            return None
        if not with_target:
            return x.hist_time
        return torch.cat([x.hist_time, x.target_time.view(-1, 1).to(x.hist_time.dtype)], 1)

    def _index(self, seq: torch.Tensor, time: torch.Tensor | None):
        """The relative-bias index over all token pairs of ``seq [B, N, D]``, shared by every layer."""
        pos = torch.arange(seq.shape[1], device=seq.device)
        return self.blocks[0].rel_index(pos, pos, time, time)

    def prefill(self, x: SeqInputs) -> dict:
        """Every layer's cache form of the history tokens (causal: it never depends on the
        target), ``[1, T, ...]`` per tensor, under ``l{i}_``; the events' times under ``time``."""
        time = self._times(x, False)
        state, seq = {"mask": x.mask, "time": time}, x.hist
        index = self._index(seq, time)
        for i, blk in enumerate(self.blocks[:-1]):
            u, q, cached, k, v = blk.project_cached(seq)
            self._keep(state, i, cached)
            seq, _ = blk.mix(seq, blk.split(q), blk.split(k), blk.split(v), u, x.mask, index=index)  # next input
        self._keep(state, len(self.blocks) - 1, self.blocks[-1].cache_kv(seq))
        return state

    def append(self, state: dict, new: SeqInputs, evicted, max_len):
        """Exact while nothing is evicted (causal: new tokens read the cached keys and values of
        every layer); once the window slides, earlier tokens' states would change, so None."""
        if evicted is not None or any(k.startswith("l0_") for k in state) != self.cache_first_layer:
            return None          # (or made with the other cache_first_layer: prefill again in this one's form)
        out, h = dict(state), new.hist
        n = h.shape[1]
        t_old, t_new = state.get("time"), self._times(new, False)
        if (t_old is None) != (t_new is None):
            return None          # times on one side only: prefill again from the stored events
        for i, blk in enumerate(self.blocks):
            if i < len(self.blocks) - 1:
                h, part = blk.extend(h, *self._layer(state, i, new.embed), state["mask"], t_old, t_new)
            else:
                part = blk.cache_kv(h)
            if blk.cached:
                new_part = prefixed(part, f"l{i}_")
                out.update(concat_events(state, new_part, None, new_part))
        out["mask"] = torch.cat([state["mask"], state["mask"].new_ones(1, n)], 1)
        if t_old is not None:
            out["time"] = torch.cat([t_old, t_new.to(t_old.dtype)], 1)
        return out

    def score(self, state: dict, x: SeqInputs) -> BackboneOutput:
        h, h_time = x.target, state.get("time")
        t_time = x.target_time if h_time is not None else None
        for i, blk in enumerate(self.blocks):
            h = blk.target_step(h, *self._layer(state, i, x.embed), state["mask"], t_time, h_time)
        return BackboneOutput(vector=self.norm_out(h))

    def encode(self, x: SeqInputs, need_weights: bool = False):
        """All token states ``[B, T+1, D]`` (history then target) and the last layer's weights."""
        seq = torch.cat([x.hist, x.target.unsqueeze(1)], 1)
        valid = torch.cat([x.mask, x.mask.new_ones(x.mask.shape[0], 1)], 1)
        index = self._index(seq, self._times(x, True))
        w = None
        for blk in self.blocks:
            seq, w, _ = blk(seq, valid, need_weights, index=index)
        return seq, w

    def forward(self, x: SeqInputs) -> BackboneOutput:
        seq = torch.cat([x.hist, x.target.unsqueeze(1)], 1)
        valid = torch.cat([x.mask, x.mask.new_ones(x.mask.shape[0], 1)], 1)
        index = self._index(seq, self._times(x, True))
        auxes = []
        for blk in self.blocks[:-1]:
            seq, _, aux = blk(seq, valid, index=index)
            auxes.append(aux)
        out, w, aux = self.blocks[-1](seq, valid, x.need_weights, last_only=True, index=index)   # only the target row
        auxes = [a for a in auxes + [aux] if a is not None]
        att = {"hstu": w[:, :, -1, :-1]} if x.need_weights else {}                  # [B, H, T]
        return BackboneOutput(vector=self.norm_out(out[:, -1]), attention=att,
                              aux_loss=sum(auxes) if auxes else None)
