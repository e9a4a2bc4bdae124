"""Shared feature embeddings: one table per categorical feature; items share tables between the
target and the history, so a history event and the same target item have the same vector."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def items(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, self.item_features)
