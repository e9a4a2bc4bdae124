"""Metrics against scikit-learn and brute-force references."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from seqctr.metrics import auc, bucket_labels, evaluate_predictions, gauc, logloss


def brute_gauc(y, p, g):
    num = den = 0.0
    for u in np.unique(g):
        m = g == u
        if 0 < y[m].sum() < m.sum():
            num += roc_auc_score(y[m], p[m]) * m.sum()
            den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2000)
    p = np.round(rng.random(2000) * 0.5 + 0.3 * y, 2)  # many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_one_class_is_nan():
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    g = rng.integers(0, 150, n)
    y = (rng.random(n) < rng.random(150)[g]).astype(float)
    p = np.round(rng.random(n) * 0.6 + 0.2 * y, 2)
    assert gauc(y, p, g) == pytest.approx(brute_gauc(y, p, g), abs=1e-12)


def test_gauc_skips_single_class_users():
    y = np.array([1, 0, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.1, 0.5, 0.6, 0.2, 0.8, 0.3])
    g = np.array([0, 0, 1, 1, 2, 2, 2])
    # user 0: AUC 1 (2 samples); user 1 skipped (one class); user 2: pos 0.2 vs negs 0.8, 0.3 -> 0
    assert gauc(y, p, g) == pytest.approx((1.0 * 2 + 0.0 * 3) / 5)


def test_logloss_matches_sklearn_and_clips():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)
    assert np.isfinite(logloss(np.array([1, 0]), np.array([0.0, 1.0])))
    assert logloss(np.array([1]), np.array([0.0])) == pytest.approx(-np.log(1e-7))


def test_per_bucket_equals_metrics_on_the_subset():
    rng = np.random.default_rng(7)
    n = 4000
    L = rng.integers(0, 400, n)
    g = rng.integers(0, 80, n)
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    m = evaluate_predictions(y, p, g, L, [1, 50, 100, 200])
    assert list(m["buckets"]) == bucket_labels([1, 50, 100, 200]) == ["[1,50)", "[50,100)", "[100,200)", "[200,inf)"]
    sel = (L >= 100) & (L < 200)
    b = m["buckets"]["[100,200)"]
    assert b["n"] == sel.sum()
    assert b["auc"] == pytest.approx(roc_auc_score(y[sel], p[sel]))
    assert b["gauc"] == pytest.approx(brute_gauc(y[sel], p[sel], g[sel]))
    assert m["overall"]["auc"] == pytest.approx(roc_auc_score(y, p))
    assert sum(v["n"] for v in m["buckets"].values()) == (L >= 1).sum()
