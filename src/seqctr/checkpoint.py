"""Checkpoints of training runs: written atomically by the trainer, read back as tensors only.
A leaf of the package (torch and file helpers only), below models, training and serving."""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import SeqctrError
from .utils.io import atomic_path


def save_torch(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint the trainer wrote. Only tensors and plain containers are accepted
    (``weights_only=True``): a checkpoint cannot run code when it is loaded."""
    path = Path(path)
    expected = "expected a run's best.pt or last.pt, written by seqctr train"
    if path.is_dir():
        hint = (" — it is a model bundle: pass it as --model" if (path / "bundle.json").is_file() else
                " — it is a run folder: pass its best.pt" if (path / "best.pt").is_file() else "")
        raise SeqctrError(f"checkpoint {path} is a folder{hint} ({expected})")
    if not path.is_file():
        raise SeqctrError(f"checkpoint {path} does not exist ({expected})")
    size = path.stat().st_size
    if size == 0:
        raise SeqctrError(f"checkpoint {path} is an empty file ({expected})")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":                    # torch.save writes a zip archive
        raise SeqctrError(f"checkpoint {path} is not a PyTorch checkpoint ({size:,} bytes, not a torch.save "
                          f"archive; {expected})")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that are not tensors
        raise SeqctrError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}; "
                          f"{expected})") from e
    if not isinstance(ck, dict) or "model" not in ck or "config" not in ck:
        raise SeqctrError(f"checkpoint {path} is a PyTorch file but not a seqctr checkpoint (no model and config; "
                          f"{expected})")
    return ck
