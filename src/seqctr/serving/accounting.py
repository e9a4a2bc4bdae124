"""Cache accounting: bytes per user of the cached K/V, uncompressed vs CollectiveKV."""
from __future__ import annotations

from torch import nn


def kv_cache_bytes(backbone: nn.Module, events: int, float_bytes: int = 4) -> dict:
    """Per-user bytes of every cached K/V: target attention (``events`` history events per
    attention; the short branch holds at most ``short_seq_len - 1``) and every HSTU layer,
    summed over layers.

    ``full``: what an uncompressed cache of the same layers holds; ``cached``: what this model's
    cache holds (CollectiveKV: user parts + indices); ``ratio`` with and without the indices;
    ``pool_bytes``: the shared pools (held once, not per user); ``ratio_compressed``: the ratio
    over the CollectiveKV layers only (what the paper's compression ratio measures; the other
    layers' K/V are cached in full)."""
    from ..models.hstu import HSTUBlock
    from ..nn import MultiHeadTargetAttention

    full = cached = cached_no_idx = pool = ckv_full = ckv_cached = 0
    for m in backbone.modules():
        if not isinstance(m, (MultiHeadTargetAttention, HSTUBlock)):
            continue
        n = events if m.branch != "short" else min(events, backbone.short_seq_len - 1)
        A = m.kv_width()
        full += n * 2 * A * float_bytes
        if m.ckv is None:
            cached += n * 2 * A * float_bytes
            cached_no_idx += n * 2 * A * float_bytes
            continue
        pool += m.ckv.pool_bytes()
        ckv_full += n * 2 * A * float_bytes
        before = cached
        idx_bytes = m.ckv.idx_dtype.itemsize
        for name in ("k", "v"):
            if m.ckv.share[name]:
                cached += n * (m.ckv.user_dim * float_bytes + idx_bytes)
                cached_no_idx += n * m.ckv.user_dim * float_bytes
            else:
                cached += n * A * float_bytes
                cached_no_idx += n * A * float_bytes
        ckv_cached += cached - before
    return {"events": events, "full_bytes": full, "cached_bytes": cached, "ratio": cached / full if full else float("nan"),
            "ratio_without_indices": cached_no_idx / full if full else float("nan"), "pool_bytes": pool,
            "ratio_compressed": ckv_cached / ckv_full if ckv_full else float("nan")}
