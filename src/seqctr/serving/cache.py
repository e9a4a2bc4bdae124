"""``KVCache``: what ``prefill`` keeps for one user, with a small self-describing byte form.

Byte layout: 8-byte little-endian header length, a JSON header (format, model version, history
length, and per tensor its dtype, shape and byte offset) compressed with zlib (it repeats the model's
schema, so it shrinks several times: it was a sixth of a compressed cache's bytes; a plain JSON header, as
written before, is read too), then the raw tensor bytes. No pickle, so a cache read from an outside store
cannot execute code.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

FORMAT = "seqctr-kvcache-1"


@dataclass
class KVCache:
    """``tensors``: name -> tensor (no batch dim: one user); ``history_len``: true length before
    truncation; ``model_version``: the model it belongs to (scoring with another model is an error)."""

    tensors: dict[str, torch.Tensor]
    history_len: int
    model_version: str = ""
    meta: dict = field(default_factory=dict)

    def nbytes(self, names: list[str] | None = None) -> int:
        """Bytes held by the given tensors (all by default)."""
        return sum(t.numel() * t.element_size() for n, t in self.tensors.items() if names is None or n in names)

    def to_bytes(self) -> bytes:
        header = {"format": FORMAT, "model_version": self.model_version, "history_len": int(self.history_len),
                  "meta": self.meta, "tensors": {}}
        blobs, offset = [], 0
        for name, t in self.tensors.items():
            a = t.detach().cpu().contiguous().numpy()
            pad = -offset % 8                              # every tensor 8-byte aligned in the body
            blobs.append(b"\0" * pad)
            offset += pad
            header["tensors"][name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
            blobs.append(a.tobytes())
            offset += a.nbytes
        h = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 6)
        return struct.pack("<Q", len(h)) + h + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "bytes") -> "KVCache":
        """The cache :meth:`to_bytes` wrote. Anything else — truncated, another format, a tensor
        running past the end — is a :class:`ValueError` naming ``source`` (e.g. the store key)."""
        try:
            (n,) = struct.unpack("<Q", data[:8])
            raw = data[8:8 + n]
            header = json.loads(zlib.decompress(raw) if raw[:1] == b"x" else raw)   # zlib: 0x78; JSON never "x"
            fmt = header.get("format") if isinstance(header, dict) else None
        except (struct.error, ValueError, UnicodeDecodeError, zlib.error) as e:
            raise ValueError(f"{source}: not a seqctr KV cache (unreadable header: {e})") from None
        if fmt != FORMAT:
            raise ValueError(f"{source}: not a seqctr KV cache (format {fmt!r})")
        body = bytearray(memoryview(data)[8 + n:])     # one writable copy; the tensors are views of it
        tensors = {}
        for name, spec in header["tensors"].items():
            dt = np.dtype(spec["dtype"])
            count = math.prod(spec["shape"])
            end = spec["offset"] + count * dt.itemsize
            if end > len(body):
                raise ValueError(f"{source}: KV cache truncated: tensor {name!r} needs bytes up to {end}, "
                                 f"{len(body)} present")
            a = np.frombuffer(body, dtype=dt, count=count, offset=spec["offset"]).reshape(spec["shape"])
            tensors[name] = torch.from_numpy(a if a.flags.aligned else a.copy())   # (older unpadded blobs)
        return cls(tensors, header["history_len"], header["model_version"], header.get("meta", {}))
