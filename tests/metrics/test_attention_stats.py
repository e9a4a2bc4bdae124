"""Polarization metrics vs hand-computed values; intervals that cover what they should."""
from __future__ import annotations

import numpy as np
import pytest

from seqctr.metrics.attention import entropy, gini, polarization_by_bucket
from seqctr.metrics.core import auc
from seqctr.metrics.stats import mean_ci, paired_bootstrap


def test_gini_and_entropy_hand_computed():
    w = np.array([[0.0, 0.25, 0.25, 0.25, 0.25],    # padding + uniform over 4
                  [0.0, 0.0, 0.0, 0.0, 1.0],          # one event
                  [0.1, 0.2, 0.3, 0.4, 0.0],          # 4 events, last slot padding
                  [0.0, 0.0, 0.0, 0.0, 0.0]])         # empty history
    mask = np.array([[0, 1, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=bool)
    g = gini(w, mask)
    assert g[0] == pytest.approx(0.0)
    assert g[1] == pytest.approx(0.0)                 # a single event: nothing to be unequal about
    # sorted 0.1,0.2,0.3,0.4: 2*(1*.1+2*.2+3*.3+4*.4)/(4*1) - 5/4 = 2*3/4 - 1.25 = 0.25
    assert g[2] == pytest.approx(0.25)
    assert np.isnan(g[3])
    h = entropy(w, mask)
    assert h[0] == pytest.approx(np.log(4))
    assert h[1] == pytest.approx(0.0)
    assert h[2] == pytest.approx(-sum(p * np.log(p) for p in (0.1, 0.2, 0.3, 0.4)))
    assert entropy(w, mask, normalised=True)[0] == pytest.approx(1.0)
    # all weight on one of many events: Gini (n-1)/n
    w2 = np.zeros((1, 10)); w2[0, 3] = 1.0
    assert gini(w2, np.ones((1, 10), bool))[0] == pytest.approx(0.9)


def test_polarization_by_bucket_groups_rows():
    rng = np.random.default_rng(0)
    w = rng.random((30, 8))
    mask = np.ones((30, 8), bool)
    L = np.repeat([10, 60, 300], 10)
    out = polarization_by_bucket(w, mask, L)
    assert out["buckets"]["[1,50)"]["n"] == 10 and out["buckets"]["[100,200)"]["n"] == 0
    assert out["buckets"]["[200,inf)"]["gini"] == pytest.approx(gini(w[20:], mask[20:]).mean())


def test_mean_ci_matches_t_interval():
    ci = mean_ci([0.78, 0.79, 0.80])
    assert ci["mean"] == pytest.approx(0.79)
    assert ci["hi"] - ci["mean"] == pytest.approx(4.303 * 0.01 / np.sqrt(3))


def test_paired_bootstrap_empty_or_single_class_subset_gives_nan_interval():
    y = np.array([1, 1, 1, 0])
    a, b = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.4, 0.3, 0.2, 0.1])
    r = paired_bootstrap(y, [a], [b], mask=np.zeros(4, bool))
    assert r["n"] == 0 and np.isnan(r["lo"])
    r = paired_bootstrap(y, [a], [b], mask=np.array([True, True, True, False]))
    assert np.isnan(r["delta"]) and r["n_boot"] == 0


def test_paired_bootstrap_covers_the_true_delta():
    """Over repeated test sets drawn from a known population, the 95% interval covers the
    population's AUC difference in most trials (and the interval is not degenerate)."""
    rng = np.random.default_rng(1)
    N = 200_000
    y_pop = rng.integers(0, 2, N)
    s = rng.normal(size=N)
    a_pop = y_pop * 0.8 + s                               # model A
    b_pop = y_pop * 1.0 + s + 0.3 * rng.normal(size=N)   # model B: better signal, correlated noise
    true = auc(y_pop, b_pop) - auc(y_pop, a_pop)
    covered = 0
    trials = 30
    for t in range(trials):
        idx = rng.integers(0, N, 1500)
        r = paired_bootstrap(y_pop[idx], [a_pop[idx]], [b_pop[idx]], n_boot=300, seed=t)
        assert r["lo"] < r["delta"] < r["hi"]
        covered += r["lo"] <= true <= r["hi"]
    assert covered >= 0.8 * trials


def test_two_level_bootstrap_covers_seed_to_seed_variation():
    """Pairs whose difference is pure run-to-run noise (a mean difference of 0 over seeds): the one-level
    interval, which holds the runs fixed, often excludes 0; resampling the pairs too covers it. With one
    pair the two levels give the same interval."""
    rng = np.random.default_rng(3)
    n, k = 600, 6
    one, two, trials = 0, 0, 16
    for t in range(trials):
        y = rng.integers(0, 2, n)
        base = y * 1.0 + rng.normal(size=n)
        A, B = [], []
        for _ in range(k):                 # each "seed" a model of its own; b differs from a by a run-level shift
            a = base + 0.2 * rng.normal(size=n)
            A.append(a)
            B.append(a + rng.choice([-0.4, 0.4]) * y * rng.uniform(0.5, 1.0) + 0.05 * rng.normal(size=n))
        true = 0.0                          # shifts of either sign equally likely: no difference in expectation
        r1 = paired_bootstrap(y, A, B, n_boot=120, seed=t)
        r2 = paired_bootstrap(y, A, B, n_boot=120, seed=t, resample_pairs=True)
        assert r2["delta"] == r1["delta"] and r2["hi"] - r2["lo"] > r1["hi"] - r1["lo"]
        one += r1["lo"] <= true <= r1["hi"]
        two += r2["lo"] <= true <= r2["hi"]
    assert two >= 0.8 * trials and one <= 0.5 * trials
    r1 = paired_bootstrap(y, A[:1], B[:1], n_boot=100, seed=5)
    r2 = paired_bootstrap(y, A[:1], B[:1], n_boot=100, seed=5, resample_pairs=True)
    assert (r1["lo"], r1["hi"]) == (r2["lo"], r2["hi"])
