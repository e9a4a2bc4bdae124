"""Plain feed-forward stack (Linear -> activation -> dropout)."""
from __future__ import annotations

import torch
from torch import nn

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
