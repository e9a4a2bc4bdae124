"""Shared feature embeddings: one table per categorical feature; items share tables between the
target and the history, so a history event and the same target item have the same vector."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


class FeatureEmbedding(nn.Module):
    """Embeds user features ``[B, Fu] -> [B, Fu*d]`` and item features ``[..., Fi] -> [..., Fi*d]``.

    Id 0 (padding) embeds to the zero vector. ``vocab_sizes`` maps feature name -> table rows."""

    def __init__(self, vocab_sizes: dict[str, int], user_features: list[str], item_features: list[str],
                 dim: int, init_std: float = 1e-4):
        super().__init__()
        self.user_features, self.item_features, self.dim = list(user_features), list(item_features), dim
        names = list(dict.fromkeys(self.user_features + self.item_features))
        self.tables = nn.ModuleDict({n: nn.Embedding(vocab_sizes[n], dim, padding_idx=0) for n in names})
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=init_std)
            with torch.no_grad():
                t.weight[0].zero_()

    @property
    def user_dim(self) -> int:
        return len(self.user_features) * self.dim

    @property
    def item_dim(self) -> int:
        return len(self.item_features) * self.dim

    def _embed(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        """``x [..., F]`` ids -> ``[..., F*d]``. Several features are looked up in one gather from
        the tables stacked row-wise (ids shifted by each table's offset; every padding id goes to
        row 0, the first table's zero padding row): the result is laid out ``[..., F, d]`` and needs
        no concatenation — on a ``[B, T]`` history that copy and its backward are a sizeable
        share of a training step. Same values and gradients as one lookup per table."""
        if len(names) == 1:
            return self.tables[names[0]](x[..., 0])
        weights = [self.tables[n].weight for n in names]
        offsets = torch.tensor([0] + [w.shape[0] for w in weights[:-1]], device=x.device).cumsum(0)
        ids = torch.where(x == 0, 0, x + offsets)
        out = F.embedding(ids, torch.cat(weights), padding_idx=0)                  # [..., F, d]
        return out.reshape(*x.shape[:-1], len(names) * self.dim)

    def user(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, self.user_features)

    def check_ids(self, x: torch.Tensor, kind: str, what: str, rows: str | None = None) -> None:
        """Refuse what the tables cannot embed, before it becomes an index error deep in a model:
        ``x [..., F]`` (``[rows, F]`` when ``rows`` names the first axis, e.g. "events") must hold
        integer ids of the ``kind`` ("user" or "item") features, each in ``[0, vocabulary)``. The
        :class:`InputError` names ``what`` (the argument), the feature and the row (the position
        along the first axis: event, candidate). Serving entry points call it; training batches were
        checked when the dataset was built."""
        names = self.user_features if kind == "user" else self.item_features
        if rows is not None and x.dim() != 2:
            raise InputError(f"{what}: expected [{rows}, {kind} features], got shape {list(x.shape)}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise InputError(f"{what}: ids must be integers, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != len(names):
            raise InputError(f"{what}: expected shape [..., {len(names)}] (features {names}), got {list(x.shape)}")
        for j, name in enumerate(names):
            col, vocab = x[..., j], self.tables[name].num_embeddings
            bad = (col < 0) | (col >= vocab)
            if bool(bad.any()):
                at = bad.nonzero()[0].tolist()
                raise InputError(f"{what}: id {int(col[tuple(at)])} is outside the vocabulary [0, {vocab}) "
                                 "(unseen ids: map them to 0, the padding id, or retrain)",
                                 column=name, row=at[0] if at else None)

    def items(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, self.item_features)
