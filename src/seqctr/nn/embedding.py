"""Shared feature embeddings: one table per categorical feature; items share tables between the
target and the history, so a history event and the same target item have the same vector."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


class FeatureEmbedding(nn.Module):
    """Embeds user features ``[B, Cu] -> [B, Fu*d]`` and item features ``[..., Ci] -> [..., Fi*d]``.

    ``user_features`` / ``item_features`` name the input *columns*; a multi-valued feature (genres)
    spans several consecutive columns under one name and is mean-pooled over its non-padding ids
    (a row with no values embeds to zero), so ``F`` counts distinct names and ``C >= F``.
    ``pretrained``: name -> ``[I, P]`` shape of a pre-trained item vector table, looked up by the
    item id (column 0), kept frozen (a buffer, saved with the weights) and mapped to ``d`` by a
    trainable projection; fill it with :meth:`load_pretrained`. Id 0 (padding) embeds to the zero
    vector. ``vocab_sizes`` maps feature name -> table rows."""

    def __init__(self, vocab_sizes: dict[str, int], user_features: list[str], item_features: list[str],
                 dim: int, init_std: float = 1e-4, pretrained: dict | None = None):
        super().__init__()
        self.user_features, self.item_features, self.dim = list(user_features), list(item_features), dim
        names = list(dict.fromkeys(self.user_features + self.item_features))
        self.tables = nn.ModuleDict({n: nn.Embedding(vocab_sizes[n], dim, padding_idx=0) for n in names})
        for t in self.tables.values():
            nn.init.normal_(t.weight, std=init_std)
            with torch.no_grad():
                t.weight[0].zero_()
        self.pretrained_names = list(pretrained or {})
        self.proj = nn.ModuleDict()
        for n, shape in (pretrained or {}).items():
            self.register_buffer(f"pretrained_{n}", torch.zeros(*shape))
            self.proj[n] = nn.Linear(int(shape[1]), dim, bias=False)
        for kind, cols in (("user", self.user_features), ("item", self.item_features)):
            pool = _pool_matrix(cols)
            self.register_buffer(f"_{kind}_pool", pool, persistent=False)

    def load_pretrained(self, arrays: dict) -> None:
        """Copy pre-trained item vectors (name -> ``[I, P]`` array) into their frozen tables."""
        for n in self.pretrained_names:
            buf = getattr(self, f"pretrained_{n}")
            buf.copy_(torch.as_tensor(arrays[n], dtype=buf.dtype))

    @property
    def user_dim(self) -> int:
        return len(dict.fromkeys(self.user_features)) * self.dim

    @property
    def item_dim(self) -> int:
        return (len(dict.fromkeys(self.item_features)) + len(self.pretrained_names)) * self.dim

    def _embed(self, x: torch.Tensor, names: list[str], pool: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., F]`` ids -> ``[..., F*d]``. Several features are looked up in one gather from
        the tables stacked row-wise (ids shifted by each table's offset; every padding id goes to
        row 0, the first table's zero padding row): the result is laid out ``[..., F, d]`` and needs
        no concatenation — on a ``[B, T]`` history that copy and its backward are a sizeable
        share of a training step. Same values and gradients as one lookup per table."""
        if len(names) == 1:
            return self.tables[names[0]](x[..., 0])
        uniq = list(dict.fromkeys(names))
        weights = [self.tables[n].weight for n in uniq]
        start = torch.tensor([0] + [w.shape[0] for w in weights[:-1]]).cumsum(0)
        offsets = start[[uniq.index(n) for n in names]].to(x.device)               # [C]: the column's table
        ids = torch.where(x == 0, 0, x + offsets)
        out = F.embedding(ids, torch.cat(weights), padding_idx=0)                  # [..., C, d]
        if pool is not None:  # multi-valued columns: mean over the non-padding ids of each feature
            count = (x != 0).to(out.dtype) @ pool.T                                 # [..., F]
            out = torch.einsum("...cd,fc->...fd", out, pool) / count.clamp(min=1).unsqueeze(-1)
        return out.reshape(*x.shape[:-1], out.shape[-2] * self.dim)

    def user(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x, self.user_features, self._user_pool)

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
                                 "(unseen ids: map them to 1, the out-of-vocabulary id, or retrain)",
                                 column=name, row=at[0] if at else None)

    def items(self, x: torch.Tensor) -> torch.Tensor:
        out = self._embed(x, self.item_features, self._item_pool)
        if not self.pretrained_names:
            return out
        pre = [self.proj[n](getattr(self, f"pretrained_{n}")[x[..., 0]]) for n in self.pretrained_names]
        return torch.cat([out] + pre, dim=-1)


def _pool_matrix(columns: list[str]) -> torch.Tensor | None:
    """``[F, C]`` 0/1 matrix grouping columns by feature name, or None when every name has one
    column (then no pooling is done: the plain path stays exactly as it was)."""
    names = list(dict.fromkeys(columns))
    if len(names) == len(columns):
        return None
    pool = torch.zeros(len(names), len(columns))
    for c, n in enumerate(columns):
        pool[names.index(n), c] = 1.0
    return pool
