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
        per_tensor = n * m.kv_width() * float_bytes                 # one of K, V in full
        stored = getattr(m, "cached", True)                         # False: rebuilt per request (HSTU's first layer)
        layer, layer_no_idx = 2 * per_tensor * stored, 2 * per_tensor * stored
        if m.ckv is not None:
            shared = sum(m.ckv.share.values())                      # K and/or V replaced by codes
            user = n * m.ckv.user_dim * float_bytes
            layer = ((2 - shared) * per_tensor + shared * (user + n * m.ckv.idx_dtype.itemsize)) * stored
            layer_no_idx = ((2 - shared) * per_tensor + shared * user) * stored
            pool += m.ckv.pool_bytes()
            ckv_full += 2 * per_tensor
            ckv_cached += layer
        full += 2 * per_tensor
        cached += layer
        cached_no_idx += layer_no_idx
    return {"events": events, "full_bytes": full, "cached_bytes": cached, "ratio": cached / full if full else float("nan"),
            "ratio_without_indices": cached_no_idx / full if full else float("nan"), "pool_bytes": pool,
            "ratio_compressed": ckv_cached / ckv_full if ckv_full else float("nan")}
