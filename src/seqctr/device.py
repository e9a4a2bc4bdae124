"""Which torch device a run uses (``auto``: CUDA when present, else the CPU)."""
from __future__ import annotations

import torch

from .errors import SeqctrError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> a device; CUDA asked for where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqctrError("train.device is cuda but no CUDA device is available; use device: auto or cpu")
    return torch.device(name)
