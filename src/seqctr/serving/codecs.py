"""Cache codecs: the form a user's :class:`~seqctr.serving.cache.KVCache` takes in a store.

A codec turns the floating tensors a backbone cached into fewer bytes and back; scoring always reads
the decoded cache, so a codec's scores are exactly those of ``score(model, decode(encode(cache)))``
(its *offline* scores) wherever the cache lives. Integer tensors (ids, CollectiveKV pool indices,
times) are packed into the narrowest integer type that holds their values in every codec but
``fp32`` (lossless, undone on decode); booleans stay as they are.

- ``fp32``: the cache as the model made it (the reference);
- ``bf16``: floating tensors in bfloat16 (stored as their 16 bits);
- ``int8``: floating tensors in int8 with one scale per block of :data:`BLOCK` consecutive values
  (``max |x| / 127``, stored in float16 and rounded up so no value clips), blocks of zeros exact; every
  value within half a step of its block.

Collective K/V (CollectiveKV) is a property of the model, not a codec: its cache holds pool indices and
a small user part, which ``bf16`` / ``int8`` shrink further. Byte counts: ``KVCache.nbytes`` of the
encoded cache (what a store keeps, before its own overhead). Results: docs/results/cache_codecs.md.
"""
from __future__ import annotations

import torch

from .cache import KVCache

SCALE = "@scale"     # suffix of an int8 tensor's scales
BLOCK = 128          # values per int8 scale: 2 bytes of scale per 128 bytes of values
CODECS = ("fp32", "bf16", "int8")


def _narrowest(t: torch.Tensor) -> torch.dtype:
    """The narrowest integer dtype holding every value of ``t``."""
    if t.numel() == 0:
        return torch.int8
    lo, hi = int(t.min()), int(t.max())
    for dt in (torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return torch.int64


def int8_blocks(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (any shape, ``n`` values) as int8 ``[n]`` and one float16 scale per :data:`BLOCK` values (the last
    block may be shorter) ``[ceil(n / BLOCK)]``.
    The scale as stored is rounded up (``|x| / scale <= 127``) and decoding multiplies by exactly it."""
    flat = t.reshape(-1).float()
    n = flat.numel()
    flat = torch.cat([flat, flat.new_zeros(-n % BLOCK)]).view(-1, BLOCK)
    scale = (flat.abs().amax(-1, keepdim=True) / 127.0 * (1 + 2 ** -10)).to(torch.float16)
    s = scale.float()
    q = torch.where(s > 0, flat / s.clamp_min(1e-30), torch.zeros_like(flat))
    return q.round_().clamp_(-127, 127).to(torch.int8).reshape(-1)[:n].clone(), scale.reshape(-1)


def from_int8_blocks(q: torch.Tensor, scale: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The float32 tensor of ``shape`` that :func:`int8_blocks` encoded."""
    n = q.numel()
    padded = torch.cat([q.float(), q.new_zeros(-n % BLOCK, dtype=torch.float32)]).view(-1, BLOCK)
    return (padded * scale.float().unsqueeze(-1)).reshape(-1)[:n].reshape(shape)


class Codec:
    """``encode(cache) -> stored cache`` and ``decode(stored) -> cache``; ``meta["codec"]`` names the
    codec and ``meta["dtypes"]`` the original dtype of each tensor it changed."""

    def __init__(self, name: str = "fp32"):
        if name not in CODECS:
            raise ValueError(f"cache codec {name!r}: expected one of {list(CODECS)}")
        self.name = name

    def __repr__(self) -> str:
        return f"Codec({self.name!r})"

    def encode(self, cache: KVCache) -> KVCache:
        if self.name == "fp32":
            return cache
        out, dtypes, shapes = {}, {}, {}
        for key, t in cache.tensors.items():
            if t.dtype.is_floating_point and t.dim() >= 1 and t.shape[-1] > 0:
                dtypes[key] = str(t.dtype).removeprefix("torch.")
                if self.name == "bf16":
                    out[key] = t.detach().to(torch.bfloat16).contiguous().view(torch.int16)
                else:
                    out[key], out[key + SCALE] = int8_blocks(t.detach())
                    shapes[key] = list(t.shape)
            elif t.dtype in (torch.int16, torch.int32, torch.int64) and (narrow := _narrowest(t)) != t.dtype:
                dtypes[key] = str(t.dtype).removeprefix("torch.")
                out[key] = t.to(narrow)
            else:
                out[key] = t
        meta = {**cache.meta, "codec": self.name, "dtypes": dtypes}
        if shapes:
            meta["shapes"] = shapes
        return KVCache(out, cache.history_len, cache.model_version, meta)

    @staticmethod
    def decode(stored: KVCache) -> KVCache:
        """The cache a stored one was made from (any codec: the stored cache names its own)."""
        name = stored.meta.get("codec", "fp32")
        if name == "fp32":
            return stored
        dtypes = stored.meta.get("dtypes", {})
        out = {}
        for key, t in stored.tensors.items():
            if key.endswith(SCALE):
                continue
            dt = getattr(torch, dtypes[key]) if key in dtypes else None
            if dt is not None and dt.is_floating_point:
                if name == "bf16":
                    t = t.contiguous().view(torch.bfloat16).to(dt)
                else:
                    t = from_int8_blocks(t, stored.tensors[key + SCALE], stored.meta["shapes"][key]).to(dt)
            elif dt is not None:
                t = t.to(dt)
            out[key] = t
        meta = {k: v for k, v in stored.meta.items() if k not in ("codec", "dtypes", "shapes")}
        return KVCache(out, stored.history_len, stored.model_version, meta)
