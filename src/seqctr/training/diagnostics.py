"""Attention diagnostics of a trained model: polarization (Gini, entropy) per branch and bucket."""
from __future__ import annotations

import numpy as np
import torch

from ..data import BatchLoader
from ..metrics import DEFAULT_BUCKETS
from ..metrics.attention import polarization_by_bucket


@torch.no_grad()
def attention_polarization(model, loader: BatchLoader, device, edges=DEFAULT_BUCKETS) -> dict:
    """``{branch: polarization_by_bucket(...)}`` over every sample of ``loader``.

    Each branch's weights ``[B, H, T]`` are averaged over heads; the distribution is taken over
    the positions that branch can attend to (real events where its weights are defined)."""
    model.eval()
    per_branch: dict[str, list] = {}
    for batch in loader:
        batch = batch.to(device)
        att = model(batch, need_weights=True).attention
        for name, w in att.items():
            if w is None:
                continue
            w = w.mean(1).double().cpu().numpy()
            mask = batch.mask.cpu().numpy()
            if name == "short":  # the short branch sees only the most recent short_seq_len - 1 events
                S = model.backbone.short_seq_len - 1
                mask = mask & (np.arange(mask.shape[1]) >= mask.shape[1] - S)[None, :]
            if name == "long" and model.backbone.two_stage:  # GSU -> ESU: the selected events
                mask = mask & (w != 0)
            per_branch.setdefault(name, []).append((w, mask, batch.seq_len.cpu().numpy()))
    out = {}
    for name, parts in per_branch.items():
        T = max(p[0].shape[1] for p in parts)
        pad = lambda a, v: np.pad(a, ((0, 0), (T - a.shape[1], 0)), constant_values=v)  # noqa: E731
        w = np.concatenate([pad(p[0], 0.0) for p in parts])
        m = np.concatenate([pad(p[1], False) for p in parts])
        L = np.concatenate([p[2] for p in parts])
        out[name] = polarization_by_bucket(w, m, L, edges)
    return out
