"""Metric computations. All take numpy arrays of equal length ``[N]``.

AUC uses the rank-sum (Mann-Whitney) form with tied scores sharing their average rank, which is
what ``sklearn.metrics.roc_auc_score`` computes. GAUC is done for all users in one sort.
"""
from __future__ import annotations

import math

import numpy as np


def _tie_avg_ranks(sorted_keys: list[np.ndarray]) -> np.ndarray:
    """1-based ranks of already-sorted rows, ties (rows equal on every key) sharing the mean rank."""
    n = len(sorted_keys[0])
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in sorted_keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0                    # mean of ranks start+1 .. end
    return np.repeat(avg, ends - starts)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n_pos = float(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = _tie_avg_ranks([p[order]])
    r_pos = float(ranks[y[order] == 1].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def gauc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float:
    """Per-group AUC averaged with weights = group size, over groups holding both classes."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    g = np.unique(np.asarray(groups), return_inverse=True)[1]
    order = np.lexsort((p, g))
    gs, ps, ys = g[order], p[order], y[order]
    ranks = _tie_avg_ranks([gs, ps])                 # global ranks, ties within (group, score)
    n_g = np.bincount(gs)
    start = np.r_[0, np.cumsum(n_g)[:-1]]
    local = ranks - start[gs]                        # rank inside the group
    n_pos = np.bincount(gs, weights=ys, minlength=len(n_g))
    n_neg = n_g - n_pos
    r_pos = np.bincount(gs, weights=local * ys, minlength=len(n_g))
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    a = (r_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return float(np.sum(a * n_g[ok]) / np.sum(n_g[ok]))


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with predictions clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


DEFAULT_BUCKETS = (1, 50, 100, 200)   # history-length bucket edges of every report: [1,50) [50,100) [100,200) [200,inf)
PAPER_GROUPS = (0, 100, 200)          # the LAIN paper's length groups (Fig. 1, Tables 4-5): < 100, 100-200, >= 200


def bucket_masks(seq_len: np.ndarray, edges=DEFAULT_BUCKETS) -> dict[str, np.ndarray]:
    """``{"[a,b)": seq_len >= a & seq_len < b}`` for the buckets of ``edges`` (last one open)."""
    seq_len = np.asarray(seq_len)
    e = list(edges) + [math.inf]
    return {lab: (seq_len >= a) & (seq_len < b) for lab, a, b in zip(bucket_labels(edges), e[:-1], e[1:])}


def bucket_labels(edges: list[float]) -> list[str]:
    """``[1, 50, 100, 200]`` -> ``["[1,50)", "[50,100)", "[100,200)", "[200,inf)"]``."""
    e = list(edges) + [math.inf]
    return [f"[{_fmt(a)},{_fmt(b)})" for a, b in zip(e[:-1], e[1:])]


def _fmt(x) -> str:
    return "inf" if x == math.inf else str(int(x)) if float(x).is_integer() else str(x)


def _block(y, p, g) -> dict:
    return {"n": int(len(y)), "label_rate": float(np.mean(y)) if len(y) else float("nan"),
            "auc": auc(y, p) if len(y) else float("nan"),
            "gauc": gauc(y, p, g) if len(y) else float("nan"),
            "logloss": logloss(y, p) if len(y) else float("nan")}


def evaluate_predictions(y, p, groups, seq_len, edges=DEFAULT_BUCKETS) -> dict:
    """``{"overall": {n, label_rate, auc, gauc, logloss}, "buckets": {label: {...}}}``.

    Bucket ``[a, b)`` holds samples with ``a <= seq_len < b``; samples below the first edge (e.g.
    empty histories) are in overall only."""
    y, p, groups, seq_len = map(np.asarray, (y, p, groups, seq_len))
    out = {"overall": _block(y, p, groups), "buckets": {}}
    for label, m in bucket_masks(seq_len, edges).items():
        out["buckets"][label] = _block(y[m], p[m], groups[m])
    return out
