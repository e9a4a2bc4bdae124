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


# --------------------------------------------------------------------------- users x seeds (the default method)
class WeightedAUC:
    """AUC of fixed predictions under any sample weights, in O(n) per call: the sort by score and its
    tie groups are computed once, so a bootstrap that reweights samples never sorts again.
    ``(y [n] 0/1, p [n])``; ``__call__(w [n])`` -> AUC (NaN without both classes)."""

    def __init__(self, y, p):
        y, p = np.asarray(y), np.asarray(p, dtype=np.float64)
        self.order = np.argsort(p, kind="stable")
        ps = p[self.order]
        self.group = np.concatenate([[0], np.cumsum(ps[1:] != ps[:-1])])     # tie group of each sorted sample
        self.pos = (y[self.order] > 0.5).astype(np.float64)
        self.n_groups = int(self.group[-1]) + 1 if len(ps) else 0

    def __call__(self, w) -> float:
        w = np.asarray(w, dtype=np.float64)[self.order]
        wp = w * self.pos
        gp = np.bincount(self.group, wp, self.n_groups)
        gn = np.bincount(self.group, w - wp, self.n_groups)
        tp, tn = gp.sum(), gn.sum()
        if tp <= 0 or tn <= 0:
            return float("nan")
        below = np.cumsum(gn) - gn                       # negatives' weight strictly below each group
        return float((gp * (below + 0.5 * gn)).sum() / (tp * tn))


class WeightedLogloss:
    """Log loss of fixed predictions under sample weights (the same interface as :class:`WeightedAUC`)."""

    def __init__(self, y, p, eps: float = 1e-7):
        y = np.asarray(y, dtype=np.float64)
        p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
        self.loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))

    def __call__(self, w) -> float:
        w = np.asarray(w, dtype=np.float64)
        s = w.sum()
        return float((w * self.loss).sum() / s) if s > 0 else float("nan")


WEIGHTED = {"auc": WeightedAUC, "logloss": WeightedLogloss}


def _user_draws(users: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts [n_boot, U], inverse [n])``: replicate ``r`` draws the ``U`` users with replacement
    (``counts[r]``) and every sample of a user weighs as often as its user was drawn
    (``counts[r][inverse]``)."""
    _, inv = np.unique(users, return_inverse=True)
    n_users = int(inv.max()) + 1 if len(inv) else 0
    counts = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_boot) if n_users else \
        np.zeros((n_boot, 0), np.int64)
    return counts, inv.reshape(-1)


def _two_sided_p(reps: np.ndarray) -> float:
    """Bootstrap two-sided p-value of "the statistic is 0": twice the smaller tail share at 0."""
    if len(reps) == 0:
        return float("nan")
    lo, hi = np.mean(reps <= 0), np.mean(reps >= 0)
    return float(min(1.0, 2 * min(lo, hi)))


def cluster_bootstrap(y, users, preds_a: list, preds_b: list | None = None, metric: str = "auc",
                      n_boot: int = 1000, seed: int = 0, mask=None, resample_seeds: bool = True) -> dict:
    """The project's interval method: a two-level bootstrap over **users and seeds**.

    Test samples cluster by user (a long-history user contributes hundreds of samples), and a
    trained model is one draw of its seed. Each replicate draws the users with replacement (all
    of a user's samples together, as sample weights) and, independently for each variant, its
    seeds with replacement. ``preds_a`` (and ``preds_b``) are lists of per-seed prediction arrays
    over the same samples; with ``preds_b`` the statistic is ``mean_b - mean_a`` of ``metric``
    over the drawn seeds (``mean_a`` alone without). ``mask`` restricts to a subset (a length
    bucket). Returns the observed value (``delta``, or ``value`` for one variant), the 2.5 / 97.5
    percentiles, a two-sided bootstrap p-value against 0 (Δ only), and the counts.

    With one seed per variant the seed level draws nothing: the interval then holds the trained
    model fixed and covers only the users (reports say so)."""
    f = WEIGHTED[metric]
    y, users = np.asarray(y), np.asarray(users)
    A = [np.asarray(p) for p in preds_a]
    B = [np.asarray(p) for p in preds_b] if preds_b is not None else None
    if mask is not None:
        mask = np.asarray(mask, bool)
        y, users, A = y[mask], users[mask], [p[mask] for p in A]
        B = [p[mask] for p in B] if B is not None else None
    nan = float("nan")
    key = "delta" if B is not None else "value"
    n = len(y)
    n_users = len(np.unique(users))
    if n == 0:
        return {key: nan, "lo": nan, "hi": nan, "p": nan, "n": 0, "users": 0, "seeds": len(A), "n_boot": 0}
    fa = [f(y, p) for p in A]
    fb = [f(y, p) for p in B] if B is not None else None
    ones = np.ones(n)
    obs_a = float(np.mean([g(ones) for g in fa]))
    obs = float(np.mean([g(ones) for g in fb])) - obs_a if fb is not None else obs_a
    rng = np.random.default_rng([seed, 7])
    counts, inv = _user_draws(users, rng, n_boot)
    ka, kb = len(fa), len(fb) if fb is not None else 0
    sa = rng.integers(0, ka, (n_boot, ka)) if resample_seeds else np.tile(np.arange(ka), (n_boot, 1))
    sb = (rng.integers(0, kb, (n_boot, kb)) if resample_seeds else np.tile(np.arange(kb), (n_boot, 1))) if kb else None
    va, vb = np.empty((ka, n_boot)), np.empty((kb, n_boot))
    for r in range(n_boot):                  # each seed's metric under this replicate's user weights
        w = counts[r][inv]
        for j in set(sa[r].tolist()):
            va[j, r] = fa[j](w)
        for j in set(sb[r].tolist()) if kb else ():
            vb[j, r] = fb[j](w)
    cols = np.arange(n_boot)
    reps = va[sa.T, cols].mean(0)
    if kb:
        reps = vb[sb.T, cols].mean(0) - reps
    reps = reps[np.isfinite(reps)]
    out = {key: obs, "lo": nan, "hi": nan, "n": int(n), "users": n_users, "seeds": ka if kb == 0 else min(ka, kb),
           "n_boot": int(len(reps))}
    if len(reps):
        out["lo"], out["hi"] = float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))
    if fb is not None:
        out["p"] = _two_sided_p(reps)
    return out


def benjamini_hochberg(pvalues, q: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``(q-values, significant)`` of a family of p-values under the Benjamini-Hochberg procedure
    (false discovery rate ``q``); NaN p-values are left out of the family and never significant."""
    p = np.asarray(pvalues, dtype=np.float64)
    qv = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        ranked = p[order] * m / np.arange(1, m + 1)
        qv[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return qv, np.isfinite(qv) & (qv <= q)
