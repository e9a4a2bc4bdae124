"""Attention polarization diagnostics (LAIN paper, Table 5 / Fig. 2): Gini coefficient and
entropy of each sample's attention distribution over its real history positions.

Weights are taken in absolute value and renormalised over real positions first, so raw-score
attention (DIN without softmax) is measured as a distribution too. ``w [N, T]``, ``mask [N, T]``.
"""
from __future__ import annotations


import numpy as np

from .core import DEFAULT_BUCKETS, bucket_masks


def _normalise(w: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.where(mask, np.abs(np.asarray(w, dtype=np.float64)), 0.0)
    s = x.sum(1, keepdims=True)
    n = mask.sum(1)
    return np.divide(x, s, out=np.zeros_like(x), where=s > 0), n


def gini(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gini coefficient per row ``[N]`` (0 = uniform, -> 1 = all weight on one event); NaN for
    rows without events. ``G = 2 sum_i i x_(i) / (n sum x) - (n + 1) / n`` with ascending ``x``."""
    p, n = _normalise(w, mask)
    xs = np.sort(np.where(mask, p, -1.0), axis=1)          # padding (-1) sorts first
    n_pad = (~mask).sum(1, keepdims=True)
    rank = np.arange(1, p.shape[1] + 1)[None, :] - n_pad    # ranks 1..n of the real entries
    num = np.where(xs >= 0, rank * xs, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = 2 * num / n - (n + 1) / n
    return np.where(n > 0, g, np.nan)


def entropy(w: np.ndarray, mask: np.ndarray, normalised: bool = False) -> np.ndarray:
    """Shannon entropy (nats) per row; ``normalised`` divides by ``log n`` (1 = uniform)."""
    p, n = _normalise(w, mask)
    h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)
    if normalised:
        with np.errstate(invalid="ignore", divide="ignore"):
            h = np.where(n > 1, h / np.log(np.maximum(n, 2)), np.nan)
    return np.where(n > 0, h, np.nan)


def polarization_by_bucket(w: np.ndarray, mask: np.ndarray, seq_len: np.ndarray, edges=DEFAULT_BUCKETS) -> dict:
    """Mean Gini and entropy overall and per length bucket: ``{"overall": {...}, "buckets": {...}}``."""
    g, h, hn = gini(w, mask), entropy(w, mask), entropy(w, mask, normalised=True)

    def block(m):
        return {"n": int(m.sum()), "gini": float(np.nanmean(g[m])) if m.any() else float("nan"),
                "entropy": float(np.nanmean(h[m])) if m.any() else float("nan"),
                "normalised_entropy": float(np.nanmean(hn[m])) if np.isfinite(hn[m]).any() else float("nan")}

    out = {"overall": block(mask.any(1)), "buckets": {}}
    for label, m in bucket_masks(seq_len, edges).items():
        out["buckets"][label] = block(m & mask.any(1))
    return out
