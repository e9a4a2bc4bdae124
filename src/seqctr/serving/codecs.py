"""Cache codecs: the form a user's :class:`~seqctr.serving.cache.KVCache` takes in a store.

A codec turns the floating tensors a backbone cached into fewer bytes and back; scoring always reads
the decoded cache, so a codec's scores are exactly those of ``score(model, decode(encode(cache)))``
(its *offline* scores) wherever the cache lives. In every codec but ``fp32``, integer and boolean tensors
(ids, CollectiveKV pool indices, times, masks) are **bit-packed**: each value stored as its offset from the
tensor's minimum in the bits the range needs (ids below 2,048: 11 bits; a 10,000-entry pool's indices: 14;
an all-true mask: none), lossless, undone on decode.

- ``fp32``: the cache as the model made it (the reference);
- ``bf16``: floating tensors in bfloat16 (stored as their 16 bits);
- ``int8``: floating tensors in int8 with one scale per block of :data:`BLOCK` consecutive values
  (``max |x| / 127``, stored in float16 and rounded up so no value clips), blocks of zeros exact; every
  value within half a step of its block;
- ``rankR`` (e.g. ``rank16``): each matrix-shaped floating tensor — the per-event K/V ``[1, L, D]``, or
  ``[1, H, L, d]`` read as the ``[L, H d]`` matrix of its events (SDIM's bucket sums alike) — replaced by its
  best rank-``R`` approximation (truncated SVD of this user's matrix: ``R (L + D)`` values instead of
  ``L D``), the two factors in ``int8`` blocks; a tensor where that saves nothing (at most about ``R``
  rows, vectors) is stored as ``int8``. Decided: the basis is the
  user's own (no state outside the cache, any model, the stored bytes include it) rather than one basis
  fit on training users, which would have to travel with the bundle.

Collective K/V (CollectiveKV) is a property of the model, not a codec: its cache holds pool indices and
a small user part, which the codecs shrink further. Byte counts: ``KVCache.nbytes`` of the encoded cache
(what a store keeps, before its own overhead). Results: docs/results/cache_codecs.md.
"""
from __future__ import annotations

import re

import torch

from .cache import KVCache

SCALE = "@scale"     # suffix of an int8 tensor's scales
BLOCK = 128          # values per int8 scale: 2 bytes of scale per 128 bytes of values
CODECS = ("fp32", "bf16", "int8")              # and rankR for any rank R >= 1 (e.g. rank16)
_RANK = re.compile(r"rank([1-9][0-9]*)")


def check_codec(name: str) -> str:
    """``name`` if it names a codec, else a ``ValueError`` listing them."""
    if name not in CODECS and not _RANK.fullmatch(name):
        raise ValueError(f"cache codec {name!r}: expected one of {list(CODECS)} or rankR (R a rank >= 1, e.g. rank16)")
    return name


def pack_bits(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Integer or boolean ``t`` (``n`` values) as uint8 ``[ceil(n b / 8)]``, its minimum ``lo`` and ``b``,
    the bits of ``max - min``: value ``i`` is bits ``[i b, (i + 1) b)``, least significant first."""
    flat = t.reshape(-1).long()
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8), 0, 0
    lo = int(flat.min())
    bits = (int(flat.max()) - lo).bit_length()
    if bits == 0:
        return torch.zeros(0, dtype=torch.uint8), lo, 0
    planes = (((flat - lo).unsqueeze(1) >> torch.arange(bits)) & 1).reshape(-1)
    planes = torch.cat([planes, planes.new_zeros(-planes.numel() % 8)]).view(-1, 8)
    return (planes << torch.arange(8)).sum(1).to(torch.uint8), lo, bits


def unpack_bits(packed: torch.Tensor, lo: int, bits: int, n: int) -> torch.Tensor:
    """The ``n`` int64 values :func:`pack_bits` packed."""
    if bits == 0:
        return torch.full((n,), lo, dtype=torch.int64)
    planes = ((packed.long().unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1)[:n * bits].view(n, bits)
    return (planes << torch.arange(bits)).sum(1) + lo


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


def _as_matrix(t: torch.Tensor) -> torch.Tensor | None:
    """A one-user per-event tensor as the ``[L, D]`` matrix of its events (``[1, L, D]`` as is, ``[1, H, L, d]``
    with the heads side by side); ``None`` for any other shape."""
    if t.dim() == 3 and t.shape[0] == 1:
        return t[0]
    if t.dim() == 4 and t.shape[0] == 1:
        return t[0].transpose(0, 1).reshape(t.shape[2], -1)
    return None


def _from_matrix(m: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`_as_matrix`."""
    if len(shape) == 3:
        return m.reshape(shape)
    return m.reshape(shape[2], shape[1], shape[3]).transpose(0, 1).reshape(shape)


def low_rank(t: torch.Tensor, rank: int) -> torch.Tensor | None:
    """The factors ``[R, L]`` (events, scaled by the singular values) and ``[R, D]`` of ``t``'s best rank-``R``
    approximation, flattened into one vector of ``R (L + D)`` values; ``None`` when that is no smaller than
    ``t`` or ``t`` is not a per-event tensor."""
    m = _as_matrix(t)
    if m is None or rank * sum(m.shape) >= m.numel():
        return None
    m = m.double()                  # the top eigenvectors of the smaller Gram matrix: the SVD's, at its cost
    if m.shape[0] >= m.shape[1]:
        v = torch.linalg.eigh(m.T @ m).eigenvectors[:, -rank:]          # [D, R]
        a, b = (m @ v).T, v.T
    else:
        u = torch.linalg.eigh(m @ m.T).eigenvectors[:, -rank:]          # [L, R]
        a, b = u.T, u.T @ m
    return torch.cat([a.reshape(-1), b.reshape(-1)]).float()


def from_low_rank(flat: torch.Tensor, rank: int, shape: list[int]) -> torch.Tensor:
    """The ``shape`` tensor of the factors :func:`low_rank` made."""
    n_events = shape[-2]
    a = flat[:rank * n_events].view(rank, n_events)
    return _from_matrix(a.T @ flat[rank * n_events:].view(rank, -1), shape)


class Codec:
    """``encode(cache) -> stored cache`` and ``decode(stored) -> cache``; ``meta["codec"]`` names the
    codec, ``meta["dtypes"]`` the original dtype of each tensor it changed, ``meta["shapes"]`` their shapes,
    ``meta["bits"]`` ``[lo, b]`` per bit-packed tensor and ``meta["rank"]`` the rank per factored one."""

    def __init__(self, name: str = "fp32"):
        m = _RANK.fullmatch(check_codec(name))
        self.name, self.rank = name, int(m.group(1)) if m else 0

    def __repr__(self) -> str:
        return f"Codec({self.name!r})"

    def encode(self, cache: KVCache) -> KVCache:
        if self.name == "fp32":
            return cache
        out, meta = {}, {"dtypes": {}, "shapes": {}, "bits": {}, "rank": {}}
        for key, t in cache.tensors.items():
            t = t.detach()
            if t.dtype.is_floating_point and t.dim() >= 1 and t.shape[-1] > 0:
                if self.name == "bf16":
                    out[key] = t.to(torch.bfloat16).contiguous().view(torch.int16)
                else:
                    flat = low_rank(t, self.rank) if self.rank else None
                    if flat is not None:
                        meta["rank"][key] = self.rank
                    out[key], out[key + SCALE] = int8_blocks(t if flat is None else flat)
                    meta["shapes"][key] = list(t.shape)
            elif not t.dtype.is_floating_point and not t.is_complex():
                out[key], lo, bits = pack_bits(t)
                meta["bits"][key], meta["shapes"][key] = [lo, bits], list(t.shape)
            else:
                out[key] = t
                continue
            meta["dtypes"][key] = str(t.dtype).removeprefix("torch.")
        meta = {k: v for k, v in meta.items() if v}
        return KVCache(out, cache.history_len, cache.model_version, {**cache.meta, "codec": self.name, **meta})

    @staticmethod
    def decode(stored: KVCache) -> KVCache:
        """The cache a stored one was made from (any codec: the stored cache names its own)."""
        name = stored.meta.get("codec", "fp32")
        if name == "fp32":
            return stored
        dtypes, shapes = stored.meta.get("dtypes", {}), stored.meta.get("shapes", {})
        bits, ranks = stored.meta.get("bits", {}), stored.meta.get("rank", {})
        out = {}
        for key, t in stored.tensors.items():
            if key.endswith(SCALE):
                continue
            dt = getattr(torch, dtypes[key]) if key in dtypes else None
            if key in bits:
                n = 1
                for d in shapes[key]:
                    n *= d
                t = unpack_bits(t, *bits[key], n).to(dt).view(shapes[key])
            elif dt is not None and dt.is_floating_point:
                if name == "bf16":
                    t = t.contiguous().view(torch.bfloat16).to(dt)
                elif key in ranks:
                    flat = from_int8_blocks(t, stored.tensors[key + SCALE], [t.numel()])
                    t = from_low_rank(flat, ranks[key], shapes[key]).to(dt)
                else:
                    t = from_int8_blocks(t, stored.tensors[key + SCALE], shapes[key]).to(dt)
            elif dt is not None:            # an integer tensor narrowed by an earlier version
                t = t.to(dt)
            out[key] = t
        meta = {k: v for k, v in stored.meta.items() if k not in ("codec", "dtypes", "shapes", "bits", "rank")}
        return KVCache(out, stored.history_len, stored.model_version, meta)
