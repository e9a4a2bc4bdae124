"""Plain feed-forward stack (Linear -> activation -> dropout)."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .dropout import Dropout

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "tanh": nn.Tanh}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``[..., in_dim] -> [..., out_dim]`` through ``hidden`` layers; no activation on the output.

    ``out_dim=None`` ends after the last hidden layer (its activation and dropout included)."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int | None = 1, act: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), activation(act)]
            if dropout > 0:
                layers.append(Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_parts(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``forward(torch.cat(parts, -1))`` for ``parts [B, d_i]``; a part broadcast over the batch (stride 0
        on ``B``, e.g. one user's features beside its candidates at serving) goes through the first layer once,
        as its slice of the weight times one row, instead of ``B`` times (equal within float rounding).
        Without such a part (or while a graph is captured), exactly ``forward`` of the concatenation."""
        first = self.net[0]
        shared = [ops.shared(p) is not None for p in parts]              # one row broadcast over the batch
        own = [i for i, sh in enumerate(shared) if not sh]
        if (not any(shared) or torch.compiler.is_compiling() or not isinstance(first, nn.Linear) or not own
                or own != list(range(own[0], own[-1] + 1))):       # (the others' columns: one slice of the weight)
            return self.net(torch.cat(parts, dim=-1))
        cols = [0]
        for p in parts:
            cols.append(cols[-1] + p.shape[-1])
        W = first.weight
        const = first.bias if first.bias is not None else W.new_zeros(W.shape[0])
        for i in range(len(parts)):
            if shared[i]:       # one row of this part times its slice of the weight
                const = const + parts[i][0] @ W[:, cols[i]:cols[i + 1]].T
        rest = torch.cat([parts[i] for i in own], dim=-1) if len(own) > 1 else parts[own[0]]
        h = torch.addmm(const, rest, W[:, cols[own[0]]:cols[own[-1] + 1]].T)
        for layer in list(self.net)[1:]:      # (not self.net[1:]: that builds a new Sequential per call)
            h = layer(h)
        return h
