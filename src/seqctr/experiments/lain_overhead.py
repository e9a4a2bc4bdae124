"""What LAIN costs: extra parameters (and, in ``bench/bench_lain_overhead.py``, inference time)."""
from __future__ import annotations

import copy


def parameter_overhead(model_cfg, meta: dict) -> dict:
    """Parameters of the bare backbone and with LAIN as configured (``enabled`` forced on)."""
    from ..models import build_model

    bare_cfg = copy.deepcopy(model_cfg)
    bare_cfg.lain = {}
    lain_cfg = copy.deepcopy(model_cfg)
    lain_cfg.lain = {**(model_cfg.lain or {}), "enabled": True}
    bare = sum(p.numel() for p in build_model(bare_cfg, meta).parameters())
    full = build_model(lain_cfg, meta)
    with_lain = sum(p.numel() for p in full.parameters())
    emb = sum(p.numel() for p in full.embedding.parameters())
    return {"bare_parameters": bare, "lain_parameters": with_lain, "parameter_ratio": with_lain / bare - 1,
            "parameter_ratio_without_embeddings": (with_lain - bare) / max(bare - emb, 1)}
