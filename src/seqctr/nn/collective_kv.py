"""CollectiveKV (arXiv 2601.19178): each history event's key and value = a small user-specific
part plus an entry of a learnable pool shared by all users, chosen by a router.

Follows the authors' code (the CollectiveKV repository's history, target_attention.py; the paper gives the
equations, the code the details):

- user part ``u = W_u s`` (width ``d_u``; SiLU on it when ``user_silu``), separate routers for K
  and V, pools of ``m`` entries of width ``d - d_u`` initialised N(0, 1);
- training: top-1 entry gated by ``sigmoid(top-1 logit)``; peak loss ``-mean log sigmoid(top-1)``
  and load-balance loss ``KL(mean softmax || uniform)`` (padded positions included unless
  ``mask_aux``, as in the code); inference: argmax entry, no gate; ``balance_weight=0`` (the authors'
  recovered HSTU build applies neither loss) also skips the ``[rows, m]`` softmax and the router
  product's backward — the cost of a CollectiveKV training step where rows do not repeat;
- order ``[collective, user]`` (the code) or ``[user, collective]`` (the paper), ``user_first``;
- ``share_k`` / ``share_v`` give CollectiveK / CollectiveV / CollectiveKV; an unshared tensor is a
  plain full-width projection.

What a cache keeps per event: ``u_k, u_v`` (``d_u`` floats each) and the two pool indices
(the smallest integer type that holds ``m``).

Serving: inference routing is memoised per distinct input row (:class:`RoutingMemo`), so the
rows a server sees again and again — a candidate item's own token at HSTU's first layer, popular
history items at prefill — skip the ``[rows, m]`` router GEMM.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class WeightedMeanSoftmax(torch.autograd.Function):
    """``w @ softmax(logits)``: ``logits [N, m]``, ``w [N]`` (no gradient) -> ``[m]``.

    The router's load-balance term needs the mean routing distribution over every position and
    all ``m`` pool entries. Autograd would materialise the ``[N, m]`` upstream gradient and then run
    softmax's backward over it; here the gradient ``w_i p_ij (g_j - sum_k p_ik g_k)`` is written in
    one pass over ``p`` (the same values; a third fewer passes over the largest tensor of a
    CollectiveKV training step)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits, -1)
        ctx.save_for_backward(p, w)
        return w @ p

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        p, w = ctx.saved_tensors
        ws = w * (p @ g)                                                 # [N]
        grad = torch.addcmul(-ws.unsqueeze(1), w.unsqueeze(1), g.unsqueeze(0)).mul_(p)
        return grad, None


def unique_rows(x: torch.Tensor, w: torch.Tensor | None = None):
    """Distinct rows of ``x [N, D]`` (and of the weights ``w [N]`` beside them): ``(xu [U, D], inv [N],
    wu [U] or None)`` with ``x == xu[inv]``. ``xu`` is the mean of each group's (equal) rows, so its
    gradient reaches every member in equal shares: exact, because a group's rows and weights are equal.

    Why: a router over ``m`` entries costs ``O(N m)``, and a batch's history events repeat the same
    items many times (about 11% of the events of an ml100k TWIN batch are distinct)."""
    key = x.detach() if w is None else torch.cat([x.detach(), w.detach().unsqueeze(1).to(x.dtype)], 1)
    _, inv, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    c = counts.to(x.dtype).unsqueeze(1)
    xu = x.new_zeros(len(counts), x.shape[1]).index_add(0, inv, x) / c
    wu = None if w is None else w.new_zeros(len(counts)).index_add(0, inv, w.detach())
    return xu, inv, wu


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """Index of the largest entry of each row of ``x [N, m]`` -> ``[N]`` int64: the first on ties,
    a NaN counts as the largest (as ``torch.argmax``). CPU float32/64 go through NumPy's argmax,
    ~10x faster than ``torch.argmax`` over a router's 10,000-wide rows here (3.5 -> 0.3 ms for 200
    rows): most of an HSTU CollectiveKV scoring request was these argmaxes."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 2:
        return torch.from_numpy(np.argmax(x.detach().numpy(), axis=-1).astype(np.int64, copy=False))
    return x.argmax(-1)


def row_keys(x: torch.Tensor) -> list[bytes]:
    """The bytes of each row of a CPU tensor ``x [N, D]``: bit-identical rows, equal keys."""
    return [r.tobytes() for r in np.ascontiguousarray(x.detach().numpy())]


class RoutingMemo:
    """Inference-time memo of a router's argmax per input row: ``lookup(keys) -> idx [N]`` (int64,
    -1 where not known), then ``store(keys, idx)`` for the rows routed (keys: :func:`row_keys`).

    Keyed by the row's bytes (bit-identical input -> the same entry, so it is exact wherever
    routing a row does not depend on what else is in the batch). It forgets everything when the
    router's weights change (``_version`` of its tensors, bumped by every in-place update:
    optimiser steps, ``load_state_dict``) and when it would exceed ``max_rows`` (bounded memory:
    about ``4 * in + 90`` bytes per row). CPU float tensors only."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.table: dict[bytes, int] = {}
        self.token = None

    def lookup(self, keys: list[bytes], router: nn.Linear) -> torch.Tensor:
        token = tuple((t.data_ptr(), t._version) for t in (router.weight, router.bias) if t is not None)
        if token != self.token:
            self.table.clear()
            self.token = token
        got = self.table.get
        return torch.tensor([got(k, -1) for k in keys], dtype=torch.long)

    def store(self, keys: list[bytes], idx: torch.Tensor) -> None:
        if len(self.table) + len(keys) > self.max_rows:
            self.table.clear()
        self.table.update(zip(keys, idx.tolist()))


def index_dtype(m: int) -> torch.dtype:
    """Smallest integer dtype that holds indices ``0 .. m-1``."""
    if m <= 256:
        return torch.uint8
    if m <= 2 ** 15:
        return torch.int16
    return torch.int32


class CollectiveKV(nn.Module):
    """``keys [B, T, key_in]`` (router/user input for K), ``values [B, T, value_in]`` ->
    ``K, V [B, T, dim]`` and the auxiliary loss (training only)."""

    def __init__(self, key_in: int, value_in: int, dim: int, user_dim: int = 1, pool_size: int = 10000,
                 share_k: bool = True, share_v: bool = True, user_first: bool = False, user_silu: bool = True,
                 bias: bool = False, peak_weight: float = 0.01, balance_weight: float = 1.0, mask_aux: bool = False,
                 dedup: bool = True, memo_rows: int = 100_000):
        super().__init__()
        if not 0 < user_dim < dim:
            raise ValueError(f"user_dim must be in (0, {dim}), got {user_dim}")
        self.dim, self.user_dim, self.pool_size = dim, user_dim, pool_size
        self.share = {"k": share_k, "v": share_v}
        self.user_first, self.user_silu = user_first, user_silu
        self.peak_weight, self.balance_weight, self.mask_aux = peak_weight, balance_weight, mask_aux
        self.dedup = dedup
        for name, in_dim in (("k", key_in), ("v", value_in)):
            if self.share[name]:
                setattr(self, f"user_{name}", nn.Linear(in_dim, user_dim, bias=bias))
                setattr(self, f"router_{name}", nn.Linear(in_dim, pool_size, bias=bias))
                setattr(self, f"pool_{name}", nn.Parameter(torch.randn(pool_size, dim - user_dim)))
            else:
                setattr(self, f"full_{name}", nn.Linear(in_dim, dim, bias=False))
        self.idx_dtype = index_dtype(pool_size)
        self.memos = {name: RoutingMemo(memo_rows) for name in ("k", "v") if self.share[name] and memo_rows > 0}
        self._padded: dict[str, tuple] = {}       # serving decode: name -> (pool version token, padded pool)
        self._meter: GateMeter | None = None       # set while a GateMeter is on

    def _join(self, collective: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return torch.cat([user, collective] if self.user_first else [collective, user], -1)

    def _user(self, name: str, x: torch.Tensor) -> torch.Tensor:
        u = getattr(self, f"user_{name}")(x)
        return F.silu(u) if self.user_silu else u

    def _route(self, name: str, x: torch.Tensor, w: torch.Tensor | None = None):
        """Router logits ``[U, m]`` for the distinct rows of ``x [B, T, in]`` (``dedup``; else all
        ``B*T`` rows), the map ``inv [B, T]`` from positions to those rows, and the rows' summed
        weights ``[U]`` when ``w [B, T]`` is given."""
        router = getattr(self, f"router_{name}")
        flat = x.reshape(-1, x.shape[-1])
        wf = None if w is None else w.reshape(-1)
        if self.dedup:
            flat, inv, wf = unique_rows(flat, wf)
        else:
            inv = torch.arange(flat.shape[0], device=x.device)
        return router(flat), inv.view(x.shape[:-1]), wf

    def _index(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Inference routing: the argmax pool entry of every event ``[B, T]`` (int64). On CPU (float32/64)
        rows seen before come from the memo, and only the distinct others (by their bytes) reach the
        router; elsewhere every distinct row is routed."""
        router = getattr(self, f"router_{name}")
        flat = x.reshape(-1, x.shape[-1])
        if torch.compiler.is_exporting():     # a captured graph: every row routed (no memo, no data-dependent dedup)
            return router(flat).argmax(-1).view(x.shape[:-1])
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            logits, inv, _ = self._route(name, x)
            return row_argmax(logits)[inv]
        memo = self.memos.get(name)
        keys = row_keys(flat)
        idx = memo.lookup(keys, router) if memo is not None else torch.full((len(keys),), -1, dtype=torch.long)
        miss = (idx < 0).nonzero().squeeze(1).tolist()
        if miss:
            slot, first, inv = {}, [], []
            for i in miss:                           # distinct rows among the misses, by their bytes
                j = slot.setdefault(keys[i], len(first))
                if j == len(first):
                    first.append(i)
                inv.append(j)
            found = row_argmax(router(flat[first]))
            idx[miss] = found[inv]
            if memo is not None:
                memo.store([keys[i] for i in first], found)
        return idx.view(x.shape[:-1])

    def _top_logit(self, name: str, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The router logit of each event's chosen entry ``idx [B, T]`` -> ``[B, T]``, recomputed from its router
        row: the same value and gradient as ``logits.max(-1)`` without a ``[U, m]`` zero-filled gradient buffer
        (the costly part on CPU)."""
        router = getattr(self, f"router_{name}")
        top = (x * router.weight[idx]).sum(-1)
        return top if router.bias is None else top + router.bias[idx]

    def _part(self, name: str, x: torch.Tensor, mask: torch.Tensor | None):
        if not self.share[name]:
            return getattr(self, f"full_{name}")(x), None
        pool = getattr(self, f"pool_{name}")
        if not self.training:
            idx = self._index(name, x)
            if self._meter is not None:
                self._meter.add(name, torch.sigmoid(self._top_logit(name, x, idx)), mask)
            return self._join(pool[idx], self._user(name, x)), None
        w = mask.to(x.dtype) if (self.mask_aux and mask is not None) else x.new_ones(x.shape[:-1])
        balanced = self.balance_weight != 0
        with torch.set_grad_enabled(balanced and torch.is_grad_enabled()):
            # without the load-balance term the [U, m] logits only choose the entry (no gradient):
            # autograd then keeps nothing of the router product and runs none of its backward
            logits, inv, wu = self._route(name, x, w)                      # [U, m]
        idx = row_argmax(logits)[inv]                                      # [B, T]
        top = self._top_logit(name, x, idx)
        gate = torch.sigmoid(top)
        if self._meter is not None:
            self._meter.add(name, gate, mask)
        collective = gate.unsqueeze(-1) * pool[idx]
        n = w.sum().clamp_min(1.0)
        peak = -(F.logsigmoid(top) * w).sum() / n
        aux = self.peak_weight * peak
        if balanced:
            p_bar = WeightedMeanSoftmax.apply(logits, wu) / n
            p_bar = p_bar.clamp_min(1e-9)
            aux = aux + self.balance_weight * (p_bar * torch.log(p_bar * self.pool_size)).sum()
        return self._join(collective, self._user(name, x)), aux

    def forward(self, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None):
        k, aux_k = self._part("k", keys, mask)
        v, aux_v = self._part("v", values, mask)
        auxes = [a for a in (aux_k, aux_v) if a is not None]
        return k, v, (sum(auxes) if auxes else None)

    # -- cache form -------------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, keys: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the cache stores: per shared tensor ``u_* [B, T, d_u]`` and ``idx_* [B, T]``
        (small integer dtype); an unshared tensor is stored in full."""
        out = {}
        for name, x in (("k", keys), ("v", values)):
            if self.share[name]:
                out[f"u_{name}"] = self._user(name, x)
                out[f"idx_{name}"] = self._index(name, x).to(self.idx_dtype)
            else:
                out[f"full_{name}"] = getattr(self, f"full_{name}")(x)
        return out

    def _padded_pool(self, name: str) -> torch.Tensor:
        """Pool ``name`` widened to ``[m, dim]`` with zeros where the user part goes, kept until the pool
        changes (its ``_version``): one gather then yields a whole ``K`` / ``V`` row (serving's decode)."""
        pool = getattr(self, f"pool_{name}")
        token = (pool.data_ptr(), pool._version, pool.device, pool.dtype)
        held = self._padded.get(name)
        if held is None or held[0] != token:
            zeros = pool.new_zeros(pool.shape[0], self.user_dim)
            held = (token, self._join(pool.detach(), zeros).contiguous())
            self._padded[name] = held
        return held[1]

    def from_codes(self, codes: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``K, V [B, T, dim]`` from :meth:`codes` (the pools are read, nothing is recomputed). Without
        gradients, one gather from :meth:`_padded_pool` and the user part written in place (a quarter of
        the time of gathering and concatenating; the same values)."""
        out = []
        for name in ("k", "v"):
            if not self.share[name]:
                out.append(codes[f"full_{name}"])
                continue
            pool, idx, user = getattr(self, f"pool_{name}"), codes[f"idx_{name}"].long(), codes[f"u_{name}"]
            if (torch.is_grad_enabled() and pool.requires_grad) or torch.compiler.is_exporting():
                out.append(self._join(pool[idx], user))      # (a captured graph: no memo of the padded pool)
                continue
            kv = F.embedding(idx, self._padded_pool(name))
            if user.dtype != kv.dtype:
                kv = kv.to(torch.promote_types(kv.dtype, user.dtype))
            kv[..., slice(0, self.user_dim) if self.user_first else slice(self.dim - self.user_dim, None)] = user
            out.append(kv)
        return out[0], out[1]

    def pool_bytes(self) -> int:
        return sum(getattr(self, f"pool_{n}").numel() * 4 for n in ("k", "v") if self.share[n])


class GateMeter:
    """The mean gate training puts on each event's pool entry, ``sigmoid(top-1 router logit)``, over the events
    that pass through ``model``'s CollectiveKV modules while the meter is on (``with GateMeter(model) as meter:``),
    in training or inference mode. Inference reads the entry ungated (the gate taken as 1, as the authors' code
    does), so a mean well below 1 says training and inference differ — the question the CollectiveKV digest
    leaves open. Per tensor (``k``, ``v``) over every module (layers, branches), real events only where the
    module is given a mask; the modules report what their forward already computed (the chosen entry), so
    metering adds one dot product per event. :meth:`totals` -> ``[sum_k, events_k, sum_v, events_v]``
    (summable over DDP ranks), :meth:`means` -> ``{"k": .., "v": ..}``."""

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if isinstance(m, CollectiveKV)]
        self.sums = {"k": [0.0, 0.0], "v": [0.0, 0.0]}

    def __enter__(self) -> "GateMeter":
        for m in self.modules:
            m._meter = self
        return self

    def __exit__(self, *exc) -> None:
        for m in self.modules:
            m._meter = None

    @torch.no_grad()
    def add(self, name: str, gate: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Count ``gate [B, T]`` of tensor ``name``; ``mask`` (broadcastable to it) marks the real events."""
        g = gate.double()
        w = torch.ones_like(g) if mask is None else mask.to(g.dtype).expand_as(g)
        self.sums[name][0] += float((g * w).sum())
        self.sums[name][1] += float(w.sum())

    def totals(self) -> list[float]:
        return [*self.sums["k"], *self.sums["v"]]

    @staticmethod
    def means_of(totals: list[float]) -> dict[str, float]:
        """``{"k": mean, "v": mean}`` of :meth:`totals` (summed over ranks or not); a tensor no event
        reached is left out."""
        return {name: totals[2 * i] / totals[2 * i + 1] for i, name in enumerate(("k", "v")) if totals[2 * i + 1] > 0}

    def means(self) -> dict[str, float]:
        return self.means_of(self.totals())
