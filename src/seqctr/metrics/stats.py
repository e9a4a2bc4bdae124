"""Uncertainty: intervals over seeds and paired bootstrap intervals of metric differences."""
from __future__ import annotations

import math

import numpy as np

from .core import auc, logloss

# two-sided 97.5% quantiles of Student's t for df = 1..30 (beyond: normal)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_ci(values) -> dict:
    """Mean and 95% t-interval over independent runs (e.g. seeds)."""
    v = np.asarray([x for x in values if x == x], dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = float(v.mean())
    if n == 1:
        return {"mean": m, "lo": float("nan"), "hi": float("nan"), "n": 1}
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * float(v.std(ddof=1)) / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


METRICS = {"auc": auc, "logloss": logloss}


def paired_bootstrap(y, preds_a: list, preds_b: list, metric: str = "auc", n_boot: int = 1000, seed: int = 0,
                     mask=None, resample_pairs: bool = False) -> dict:
    """Interval of ``metric(b) - metric(a)`` under resampling of the test samples.

    ``preds_a`` / ``preds_b``: lists of prediction arrays, paired by position (e.g. seed ``s`` of
    the bare model with seed ``s`` of +LAIN); the statistic is the mean paired difference, each
    bootstrap replicate resamples the samples once for all pairs. ``mask`` restricts to a subset
    (a length bucket). Returns the observed delta and the 2.5 / 97.5 percentiles.

    ``resample_pairs=True`` makes it a two-level bootstrap: each replicate also draws the pairs with
    replacement (from a generator of its own, so with one pair it is the one-level interval). The
    one-level interval only holds the trained models fixed and asks how a new test set would
    move their difference; when the pairs are training runs whose difference varies from seed to
    seed (two codes equal up to float rounding), the two-level one also covers that variation."""
    f = METRICS[metric]
    y = np.asarray(y)
    A = [np.asarray(p) for p in preds_a]
    B = [np.asarray(p) for p in preds_b]
    if mask is not None:
        y, A, B = y[mask], [p[mask] for p in A], [p[mask] for p in B]

    def stat(idx, pairs):
        return float(np.mean([f(y[idx], B[j][idx]) - f(y[idx], A[j][idx]) for j in pairs]))

    n, k = len(y), len(A)
    nan = float("nan")
    if n == 0:
        return {"delta": nan, "lo": nan, "hi": nan, "n": 0, "n_boot": 0}
    rng, rng_pairs = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    every = np.arange(k)
    obs = stat(np.arange(n), every)
    reps = np.array([stat(rng.integers(0, n, n), rng_pairs.integers(0, k, k) if resample_pairs else every)
                     for _ in range(n_boot)])
    reps = reps[np.isfinite(reps)]            # replicates with one class have no AUC
    if len(reps) == 0:
        return {"delta": obs, "lo": nan, "hi": nan, "n": int(n), "n_boot": 0}
    return {"delta": obs, "lo": float(np.percentile(reps, 2.5)), "hi": float(np.percentile(reps, 97.5)),
            "n": int(n), "n_boot": int(len(reps))}
