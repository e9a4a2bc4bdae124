"""The model interface every backbone implements, and the CTR model that wraps a backbone.

``CTRModel = FeatureEmbedding -> Backbone -> MLP head``. A backbone sees embedded inputs only
(:class:`SeqInputs`) and returns a pooled user-interest vector plus optional auxiliary loss and
attention weights, so input handling, the head and the training step exist once for all models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MLP, AttentionCondition, FeatureEmbedding

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


@dataclass
class SeqInputs:
    """Embedded inputs of a backbone.

    ``target [B, D]``, ``hist [B, T, D]`` (right-aligned, most recent last), ``mask [B, T]`` bool,
    ``seq_len [B]`` (true length before truncation), ``need_weights``: fill attention weights;
    ``target_ids [B, Fi]`` / ``hist_ids [B, T, Fi]``: the raw feature ids (e.g. for search by category)."""

    target: torch.Tensor
    hist: torch.Tensor
    mask: torch.Tensor
    seq_len: torch.Tensor
    need_weights: bool = False
    target_ids: torch.Tensor | None = None
    hist_ids: torch.Tensor | None = None
    cond: dict[str, AttentionCondition] | None = None

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


class Backbone(nn.Module):
    """Turns a target and a behaviour sequence into a fixed-size vector.

    Subclasses take ``item_dim`` (width of one embedded item), ``feature_dim`` (width of one
    feature's embedding) plus their own options, set
    ``self.out_dim`` and implement :meth:`forward`. They must accept empty histories (all-False
    mask) and must not depend on the amount of left padding."""

    registry_name = "?"
    supports_lain: bool | str = True   # or a string saying why the plug-in does not apply
    out_dim: int
    aux_dim: int = 0          # > 0: the model adds an auxiliary CTR head on [user, target, aux_vector]
    aux_weight: float = 0.0   # its BCE weight in the loss

    def forward(self, x: SeqInputs) -> BackboneOutput:  # pragma: no cover - interface
        raise NotImplementedError


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
            lain_cfg, mean_len = lain
            from ..lain import LAIN

            self.lain = LAIN(lain_cfg, embedding.item_dim, embedding.dim, mean_len)
            self.lain.attach(backbone)

    def forward(self, batch, need_weights: bool = False) -> ModelOutput:
        emb = self.embedding
        target = emb.items(batch.target)
        x = SeqInputs(target=target, hist=emb.items(batch.hist), mask=batch.mask, seq_len=batch.seq_len,
                      need_weights=need_weights, target_ids=batch.target, hist_ids=batch.hist,
                      cond=self.lain(batch.seq_len) if self.lain is not None else None)
        out = self.backbone(x)
        user = emb.user(batch.user)
        logits = self.head(torch.cat([user, target, out.vector], dim=-1)).squeeze(-1)
        aux_logits = None
        if self.aux_head is not None and out.aux_vector is not None and self.training:
            aux_logits = self.aux_head(torch.cat([user, target, out.aux_vector], dim=-1)).squeeze(-1)
        return ModelOutput(logits=logits, aux_loss=out.aux_loss, aux_logits=aux_logits, attention=out.attention)

    def loss(self, out: ModelOutput, label: torch.Tensor) -> torch.Tensor:
        """The training objective of every model: BCE on the logits, plus the auxiliary head's
        weighted BCE and the backbone's own auxiliary losses when present."""
        loss = F.binary_cross_entropy_with_logits(out.logits, label)
        if out.aux_logits is not None:
            loss = loss + self.backbone.aux_weight * F.binary_cross_entropy_with_logits(out.aux_logits, label)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        return loss


def build_model(model_cfg, meta: dict) -> CTRModel:
    """Build a :class:`CTRModel` from a ``ModelConfig`` and a prepared dataset's ``meta``."""
    from ..errors import ConfigError

    if model_cfg.name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown backbone {model_cfg.name!r}; known: {backbone_names()}")
    emb = FeatureEmbedding(meta["vocab_sizes"], meta["user_features"], meta["item_features"],
                           model_cfg.embedding_dim)
    try:
        backbone = _REGISTRY[model_cfg.name](item_dim=emb.item_dim, feature_dim=emb.dim, **model_cfg.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.options for {model_cfg.name}: {e}") from None
    lain = None
    from ..lain import LainConfig

    lain_cfg = LainConfig.from_dict(model_cfg.lain)
    if lain_cfg.enabled:
        lain = (lain_cfg, float(meta.get("mean_train_len", 0.0)))
    return CTRModel(emb, backbone, model_cfg.mlp_hidden, model_cfg.dropout, lain=lain)
