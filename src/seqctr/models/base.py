"""The model interface every backbone implements, and the CTR model that wraps a backbone.

``CTRModel = FeatureEmbedding -> Backbone -> MLP head``. A backbone sees embedded inputs only
(:class:`SeqInputs`) and returns a pooled user-interest vector plus optional auxiliary loss and
attention weights, so input handling, the head and the training step exist once for all models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LainConfig
from ..data.dataset import DatasetMeta
from ..errors import ConfigError, check_keys
from ..nn import MLP, AttentionCondition, FeatureEmbedding, MaskedDice
from ..ops import IMPLS, Events, set_impl
from ..ops.kernels import pool_distinct
from ..utils.compile import eager

_REGISTRY: dict[str, type["Backbone"]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a backbone buildable by name from a config."""

    def deco(cls):
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def backbone_options(name: str) -> dict:
    """The options a backbone's constructor accepts (name -> default), following ``**kw`` up its
    base classes (two-branch models pass theirs to :class:`TwoBranch`)."""
    import inspect

    out = {}
    for cls in _REGISTRY[name].__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        for p in params.values():
            if p.name not in ("self", "item_dim", "feature_dim") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                out.setdefault(p.name, None if p.default is p.empty else p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return out


def check_options(name: str, options: dict) -> None:
    """Refuse ``model.options`` keys the backbone does not take (before any data is prepared)."""
    check_keys(options, backbone_options(name), f"model.options ({name})")


def check_model_config(model_cfg) -> None:
    """``model.name`` a registered backbone and ``model.options`` keys it takes: one :class:`ConfigError`
    naming the key (the rest of a config is checked by :func:`seqctr.config.validate`)."""
    if model_cfg.name not in _REGISTRY:
        raise ConfigError(f"model.name: expected one of {backbone_names()}, got {model_cfg.name!r}")
    check_options(model_cfg.name, model_cfg.options)
    if model_cfg.impl not in IMPLS:
        raise ConfigError(f"model.impl: expected one of {list(IMPLS)}, got {model_cfg.impl!r}")


def backbone_doc(name: str) -> str:
    """A backbone's class docstring on one line: its options and what it computes (the docs' source)."""
    return " ".join((_REGISTRY[name].__doc__ or "").split())


def distinct_key(ids: torch.Tensor) -> torch.Tensor | None:
    """One int64 per id row: ``ids [..., F]`` -> ``[...]``, equal exactly when the rows are equal
    (mixed radix by each column's largest id); None if ids are negative or the key would overflow."""
    if ids.shape[-1] == 1:
        return ids[..., 0]
    if ids.numel() == 0 or int(ids.min()) < 0:
        return None
    radix = (ids.flatten(0, -2).amax(0) + 1).tolist()
    if math.prod(radix) >= 2 ** 62:
        return None
    key = ids[..., 0].long()           # int64 arithmetic whatever the ids' dtype (int32 would overflow)
    for f in range(1, ids.shape[-1]):
        key = key * radix[f] + ids[..., f]
    return key


@eager   # torch.unique's output size depends on the data
def distinct_rows(hist_ids: torch.Tensor | None, embed: Callable | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's distinct history events, embedded once: ``(R [U, D], inverse [B, T])`` with
    ``embed(hist_ids) == R[inverse]``, or None when the ids are unknown (or negative, or too wide for
    one int64 key). Under autograd the gradient then reaches the tables through ``U`` rows instead of
    a ``[B, T, D]`` gradient (a batch of 256 x 200 ml100k events holds at most 1,682 distinct items)."""
    key = None if hist_ids is None or embed is None else distinct_key(hist_ids)
    if key is None or key.numel() == 0:
        return None
    uniq, inv = torch.unique(key.flatten(), return_inverse=True)
    first = torch.zeros(len(uniq), dtype=torch.long, device=key.device).scatter_(
        0, inv, torch.arange(inv.numel(), device=key.device))          # one position per distinct event
    return embed(hist_ids.flatten(0, 1)[first]), inv.view(key.shape)


@dataclass
class SeqInputs:
    """Embedded inputs of a backbone: a plain value (reading a field computes nothing).

    ``target [B, D]``; the history in the forms the backbone asked for (:meth:`Backbone.history_forms`):
    ``hist [B, T, D]`` (right-aligned, most recent last) and/or ``rows = (R [U, D], inverse [B, T])``,
    the batch's distinct events with ``hist == R[inverse]`` (:func:`distinct_rows`), either None when
    not made; ``mask [B, T]`` bool; ``seq_len [B]`` (true length before truncation); ``need_weights``:
    fill attention weights; ``target_ids [B, Fi]`` / ``hist_ids [B, T, Fi]``: the raw feature ids
    (e.g. for search by category); ``hist_time [B, T]`` / ``target_time [B]`` int64 event and
    candidate times, or None when the data has none (only time-aware backbones read them);
    ``embed``: item feature ids ``[..., Fi]`` -> embedded items ``[..., D]``, given to ``score`` so a
    cache may keep ids instead of vectors (SIM's GSU keys)."""

    target: torch.Tensor
    hist: torch.Tensor | None
    mask: torch.Tensor
    seq_len: torch.Tensor
    need_weights: bool = False
    target_ids: torch.Tensor | None = None
    hist_ids: torch.Tensor | None = None
    cond: dict[str, AttentionCondition] | None = None
    hist_time: torch.Tensor | None = None
    target_time: torch.Tensor | None = None
    rows: tuple[torch.Tensor, torch.Tensor] | None = None
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None

    def events(self) -> Events:
        """The history as :class:`~seqctr.ops.Events`: the distinct rows when made, else ``hist``."""
        return Events.distinct_of(*self.rows) if self.rows is not None else Events.dense_of(self.hist)

    def recent(self, n: int) -> tuple[Events, torch.Tensor]:
        """The most recent ``n`` events and their mask ``[B, n']``."""
        return self.events().last(n), self.mask[:, -n:]

    def weighted_sum(self, w: torch.Tensor) -> torch.Tensor:
        """``sum_t w[b, t] hist[b, t]``: ``w [B, T] -> [B, D]``; over the distinct rows when made (one
        GEMM, :func:`~seqctr.ops.kernels.pool_distinct`), else a batched product over ``hist``."""
        if self.rows is None:
            return torch.einsum("bt,btd->bd", w, self.hist)
        R, inv = self.rows
        return pool_distinct(w, inv, R)

    def per_event(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(hist)`` for a row-wise ``fn`` (an event's output depends on its own embedding only,
        e.g. SimHash codes), once per distinct event when the rows are made, gathered back:
        ``[B, T, D] -> [B, T, ...]``."""
        if self.rows is None:
            return fn(self.hist)
        R, inv = self.rows
        return fn(R)[inv]

    def condition(self, branch: str) -> AttentionCondition | None:
        """What a plug-in (LAIN) gives this branch's attention layers, or None."""
        return None if self.cond is None else self.cond.get(branch)


@dataclass
class BackboneOutput:
    """``vector [B, out_dim]``; ``aux_loss`` scalar or None (label-free auxiliary losses);
    ``aux_vector [B, aux_dim]`` for backbones with an auxiliary CTR head (SIM's GSU);
    ``attention`` branch -> weights over history positions ``[B, H, T]``."""

    vector: torch.Tensor
    aux_loss: torch.Tensor | None = None
    aux_vector: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ModelOutput:
    """``logits [B]``; ``aux_loss`` scalar or None; ``aux_logits [B]`` of an auxiliary head or None;
    ``attention`` branch -> weights ``[B, H, T]``."""

    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None
    aux_logits: torch.Tensor | None = None
    attention: dict[str, torch.Tensor] = field(default_factory=dict)

    def float(self) -> "ModelOutput":
        """The logits and losses in float32 (after a bfloat16 autocast forward)."""
        f = lambda t: None if t is None else t.float()   # noqa: E731
        return ModelOutput(f(self.logits), f(self.aux_loss), f(self.aux_logits), self.attention)


class Backbone(nn.Module):
    """Turns a target and a behaviour sequence into a fixed-size vector.

    Subclasses take ``item_dim`` (width of one embedded item), ``feature_dim`` (width of one
    feature's embedding) plus their own options, set
    ``self.out_dim`` and implement :meth:`forward`. They must accept empty histories (all-False
    mask) and must not depend on the amount of left padding."""

    registry_name = "?"
    # Capabilities, declared (never probed with hasattr):
    lain_unsupported: str = ""          # non-empty: why the LAIN plug-in does not apply to this backbone
    cache_uses_condition: bool = False  # True: cached states depend on LAIN's length condition (append re-prefills)
    two_branch: bool = False            # a short-term branch (``short_attention``) beside the long-term one
    two_stage: bool = False             # the long branch attends to a top-k selection (GSU -> ESU)
    uses_time: bool = False             # reads event / candidate times (SeqInputs.hist_time, target_time)
    out_dim: int
    aux_dim: int = 0          # > 0: the model adds an auxiliary CTR head on [user, target, aux_vector]
    aux_weight: float = 0.0   # its BCE weight in the loss

    def history_forms(self, grad: bool) -> frozenset[str]:
        """Which forms of the history :class:`CTRModel` makes for :meth:`forward`: ``dense``
        (``SeqInputs.hist``) and/or ``distinct`` (``SeqInputs.rows``); ``grad``: autograd is on.
        When the distinct rows cannot be made (ids unknown) ``hist`` is given instead."""
        return frozenset({"dense"})

    def forward(self, x: SeqInputs) -> BackboneOutput:  # pragma: no cover - interface
        raise NotImplementedError

    # -- serving split: prefill(history) -> state; score(state, candidates) -------------------
    def prefill(self, x: SeqInputs) -> dict[str, torch.Tensor]:
        """Everything that does not depend on the candidate, for a batch of one user
        (``x.target`` is None). This default keeps the embedded history (recompute at scoring);
        backbones override it with real caches."""
        return {"hist": x.hist, "mask": x.mask, "hist_ids": x.hist_ids, "time": x.hist_time}

    def append(self, state: dict, new: SeqInputs, evicted: torch.Tensor | None, max_len: int | None) -> dict | None:
        """Update ``state`` with new events (``new.hist [1, n, D]``, oldest first); ``evicted
        [1, e, D]``: the embedded events that fall out of the ``max_len`` window. Returns the
        new state, or None when this architecture cannot update exactly (the caller prefills
        again from the stored ids). This default cannot."""
        return None

    def score(self, state: dict[str, torch.Tensor], x: SeqInputs) -> BackboneOutput:
        """Score ``N`` candidates (``x.target [N, D]``) against one user's ``state`` (tensors with
        a leading batch dim of 1, broadcast over the candidates)."""
        N = x.target.shape[0]
        full = SeqInputs(target=x.target, hist=expand(state["hist"], N), mask=expand(state["mask"], N),
                         seq_len=x.seq_len, target_ids=x.target_ids, hist_ids=expand(state["hist_ids"], N),
                         cond=x.cond, hist_time=expand(state.get("time"), N),
                         target_time=x.target_time if state.get("time") is not None else None)
        return self.forward(full)


def event_axis(t: torch.Tensor) -> int:
    """The history axis of a cached tensor: ``[1, H, T, hd]`` -> 2, ``[1, T, ...]`` -> 1."""
    return 2 if t.dim() == 4 else 1


def concat_events(old: dict, new: dict, keep: int | None, names) -> dict:
    """Per-event cached tensors: old events then new ones, keeping the last ``keep``."""
    out = {}
    for n in names:
        ax = event_axis(old[n])
        t = torch.cat([old[n], new[n]], ax)
        out[n] = t if keep is None else t.narrow(ax, max(t.shape[ax] - keep, 0), min(keep, t.shape[ax]))
    return out


def expand(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``[1, ...] -> [n, ...]`` without copying."""
    return None if t is None else t.expand(n, *t.shape[1:])


class CTRModel(nn.Module):
    """Embedding + backbone + MLP head. ``forward(batch) -> ModelOutput`` with logits ``[B]``."""

    def __init__(self, embedding: FeatureEmbedding, backbone: Backbone, mlp_hidden: list[int], dropout: float,
                 lain=None):
        super().__init__()
        self.embedding, self.backbone = embedding, backbone
        in_dim = embedding.user_dim + embedding.item_dim + backbone.out_dim
        self.head = MLP(in_dim, list(mlp_hidden), out_dim=1, act="relu", dropout=dropout)
        self.aux_head = None
        if backbone.aux_dim > 0:
            aux_in = embedding.user_dim + embedding.item_dim + backbone.aux_dim
            self.aux_head = MLP(aux_in, list(mlp_hidden), out_dim=1, act="relu", dropout=dropout)
        for m in self.modules():  # xavier-normal Linears, zero biases (embeddings keep their own init)
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Plug-ins come last, so the bare model's parameters are initialised exactly as without them.
        self.lain = None
        if lain is not None:
            lain_cfg, l0 = lain
            from ..lain import LAIN

            self.lain = LAIN(lain_cfg, embedding.item_dim, embedding.dim, l0)
            self.lain.attach(backbone)

    def inputs(self, batch, need_weights: bool = False) -> SeqInputs:
        """The backbone's inputs for a batch: the target embedded, the history in the forms the backbone
        declares (:meth:`Backbone.history_forms`; the distinct rows made here, explicitly), LAIN's
        condition. ``batch``: a :class:`~seqctr.data.SeqBatch`."""
        emb = self.embedding
        forms = self.backbone.history_forms(torch.is_grad_enabled())
        rows = distinct_rows(batch.hist, emb.items) if "distinct" in forms else None
        hist = emb.items(batch.hist) if "dense" in forms or rows is None else None
        return SeqInputs(target=emb.items(batch.target), hist=hist, mask=batch.mask, seq_len=batch.seq_len,
                         need_weights=need_weights, target_ids=batch.target, hist_ids=batch.hist,
                         cond=self.lain(batch.seq_len) if self.lain is not None else None,
                         hist_time=batch.hist_time, target_time=batch.target_time, rows=rows)

    def history_inputs(self, hist_ids: torch.Tensor, seq_len: torch.Tensor, hist_time: torch.Tensor | None = None,
                       condition: bool = True) -> SeqInputs:
        """One user's history without a target (what serving caches): ``hist_ids [1, T, Fi]`` (oldest first),
        ``seq_len [1]`` the true length, ``hist_time [1, T]`` or None; LAIN's condition unless ``condition``
        is False (events appended to a cache)."""
        return SeqInputs(target=None, hist=self.embedding.items(hist_ids), seq_len=seq_len, hist_ids=hist_ids,
                         mask=torch.ones(hist_ids.shape[:2], dtype=torch.bool, device=hist_ids.device),
                         cond=self.lain(seq_len) if self.lain is not None and condition else None,
                         hist_time=hist_time, embed=self.embedding.items)

    def candidate_inputs(self, candidates: torch.Tensor, history_len: int,
                         target_time: torch.Tensor | None = None) -> SeqInputs:
        """``N`` candidates ``[N, Fi]`` of one cached user whose history has ``history_len`` events (the
        backbone's ``score`` reads the history from its cache)."""
        N = candidates.shape[0]
        # (history_len: an int, or a tensor in a captured graph, seqctr.serving.export)
        L = torch.as_tensor(history_len, dtype=torch.long, device=candidates.device).reshape(-1).expand(N)
        return SeqInputs(target=self.embedding.items(candidates), hist=None, mask=None, seq_len=L,
                         target_ids=candidates, cond=self.lain(L) if self.lain is not None else None,
                         target_time=None if target_time is None else target_time.expand(N),
                         embed=self.embedding.items)

    def logits(self, user: torch.Tensor, target: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """The head: embedded user ``[B, Du]``, target ``[B, Di]`` and the backbone's vector ``[B, out]``
        -> logits ``[B]`` (the one place training, evaluation and serving score from). At serving ``user`` is
        one row broadcast over the candidates: its share of the head's first layer is computed once
        (:meth:`~seqctr.nn.mlp.MLP.forward_parts`)."""
        return self.head.forward_parts([user, target, vector]).squeeze(-1)

    def forward(self, batch, need_weights: bool = False) -> ModelOutput:
        emb = self.embedding
        x = self.inputs(batch, need_weights)
        target = x.target
        out = self.backbone(x)
        user = emb.user(batch.user)
        logits = self.logits(user, target, out.vector)
        aux_logits = None
        if self.aux_head is not None and out.aux_vector is not None and self.training:
            aux_logits = self.aux_head(torch.cat([user, target, out.aux_vector], dim=-1)).squeeze(-1)
        return ModelOutput(logits=logits, aux_loss=out.aux_loss, aux_logits=aux_logits, attention=out.attention)

    def prepare_distributed(self, new_group: Callable[[], object]) -> None:
        """Before DDP wraps the model (every rank calls it alike): layers whose forward needs the whole
        global batch — Dice's masked batch statistics — sum over a process group of their own
        (``new_group()``, made only when such a layer exists), so that their all-reduces never
        interleave with DDP's gradient buckets and a DDP step equals a one-process step."""
        dice = [m for m in self.modules() if isinstance(m, MaskedDice)]
        if dice:
            group = new_group()
            for m in dice:
                m.sync = group

    def loss(self, out: ModelOutput, label: torch.Tensor) -> torch.Tensor:
        """The training objective of every model: BCE on the logits, plus the auxiliary head's
        weighted BCE and the backbone's own auxiliary losses when present."""
        loss = F.binary_cross_entropy_with_logits(out.logits, label)
        if out.aux_logits is not None:
            loss = loss + self.backbone.aux_weight * F.binary_cross_entropy_with_logits(out.aux_logits, label)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        return loss


def build_model(model_cfg, meta: DatasetMeta | dict) -> CTRModel:
    """Build a :class:`CTRModel` from a ``ModelConfig`` and a prepared dataset's :class:`~seqctr.data.DatasetMeta`
    (or its dict form, as checkpoints and bundles carry it)."""
    meta = DatasetMeta.from_dict(meta)
    check_model_config(model_cfg)
    emb = FeatureEmbedding(meta.vocab_sizes, meta.batch_user_features, meta.item_features, model_cfg.embedding_dim,
                           pretrained=meta.pretrained)
    try:
        backbone = _REGISTRY[model_cfg.name](item_dim=emb.item_dim, feature_dim=emb.dim, **model_cfg.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.options for {model_cfg.name}: {e}") from None
    lain = None
    lain_cfg = LainConfig.from_dict(model_cfg.lain)
    if lain_cfg.enabled:
        lain = (lain_cfg, lain_cfg.resolve_l0(meta))
    return set_impl(CTRModel(emb, backbone, model_cfg.mlp_hidden, model_cfg.dropout, lain=lain), model_cfg.impl)


def prefixed(d: dict, prefix: str) -> dict:
    """Cache tensors of one part under ``prefix`` (``{"k": t} -> {"short_k": t}``)."""
    return {prefix + k: v for k, v in d.items()}


def unprefixed(d: dict, prefix: str) -> dict:
    """The inverse of :func:`prefixed`: the tensors under ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
