"""The project's interval method (users x seeds): weighted metrics against scikit-learn, coverage of
the truth on synthetic data whose samples cluster by user, the false-positive rate of "same code,
other seeds", and Benjamini-Hochberg against its definition."""
from __future__ import annotations

import numpy as np
import pytest

from seqctr.metrics.stats import WeightedAUC, WeightedLogloss, benjamini_hochberg, cluster_bootstrap, paired_bootstrap

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def test_weighted_auc_and_logloss_equal_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(0)
    for n in (5, 50, 2000):
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        p = np.round(rng.random(n), 1)                 # many ties
        w = rng.integers(0, 4, n).astype(float)
        w[0] = w[1] = 1
        assert WeightedAUC(y, p)(w) == pytest.approx(sklearn_metrics.roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        assert WeightedLogloss(y, p)(w) == pytest.approx(
            sklearn_metrics.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), sample_weight=w), abs=1e-9)
        # integer weights are repeated samples
        rep = np.repeat(np.arange(n), w.astype(int))
        assert WeightedAUC(y, p)(w) == pytest.approx(sklearn_metrics.roc_auc_score(y[rep], p[rep]), abs=1e-12)
    assert np.isnan(WeightedAUC(np.ones(4), np.arange(4.0))(np.ones(4)))


def clustered(rng, n_users=120, per_user=(5, 60), effect_sd=1.0):
    """A test set whose samples cluster by user: a user's label rate and how well the model ranks
    that user's samples both vary by user. Returns ``(y, users, signal)``."""
    sizes = rng.integers(per_user[0], per_user[1], n_users)
    users = np.repeat(np.arange(n_users), sizes)
    base = rng.normal(0, 1.5, n_users)[users]                   # user-level label propensity
    x = rng.normal(0, 1, len(users))
    y = (rng.random(len(users)) < 1 / (1 + np.exp(-(base + x)))).astype(int)
    return y, users, base, x


def test_the_interval_over_users_covers_the_truth_at_about_95_percent():
    """Two models equal in expectation (the truth: Δ = 0) whose difference varies by user: the users
    interval covers 0 at about the nominal rate; resampling samples instead covers it far less."""
    rng = np.random.default_rng(1)
    cover_users = cover_samples = 0
    trials = 40
    for t in range(trials):
        y, users, base, x = clustered(rng)
        tilt = rng.normal(0, 1.2, users.max() + 1)[users]       # a per-user taste for one model or the other
        a = 1 / (1 + np.exp(-(base + x + tilt)))
        b = 1 / (1 + np.exp(-(base + x - tilt)))
        if rng.random() < 0.5:                                  # which model is tilted is a coin flip
            a, b = b, a
        ci = cluster_bootstrap(y, users, [a], [b], n_boot=200, seed=t)
        cover_users += ci["lo"] <= 0 <= ci["hi"]
        one = paired_bootstrap(y, [a], [b], n_boot=200, seed=t)
        cover_samples += one["lo"] <= 0 <= one["hi"]
    print(f'coverage of the truth: {cover_users}/{trials} (users), {cover_samples}/{trials} (samples)')
    assert cover_users / trials >= 0.875, cover_users
    assert cover_samples / trials < cover_users / trials - 0.15, (cover_samples, cover_users)


def test_same_code_other_seeds_is_significant_at_about_the_nominal_rate():
    """Variant B is variant A's code with other seeds: each seed's model is the same ranking, some
    seeds sharper than others. Over many such comparisons (5 seeds each) the users x seeds interval excludes 0
    about 5% of the time; the interval that fixes the seeds excludes it far more often."""
    rng = np.random.default_rng(2)
    y, users, base, x = clustered(rng, n_users=100)
    score = base + x

    def run():      # a training run: how sharply it ranks varies from seed to seed, for every user alike
        return 1 / (1 + np.exp(-(rng.normal(1, 0.25) * score + rng.normal(0, 0.5, len(y)))))

    trials, hits_two, hits_fixed = 40, 0, 0
    for t in range(trials):
        a, b = [run() for _ in range(5)], [run() for _ in range(5)]
        ci = cluster_bootstrap(y, users, a, b, n_boot=200, seed=t)
        hits_two += not (ci["lo"] <= 0 <= ci["hi"])
        fixed = cluster_bootstrap(y, users, a, b, n_boot=200, seed=t, resample_seeds=False)
        hits_fixed += not (fixed["lo"] <= 0 <= fixed["hi"])
    print(f'same code, other seeds: {hits_two}/{trials} significant (users x seeds), {hits_fixed}/{trials} (seeds fixed)')
    assert hits_two / trials <= 0.125, hits_two
    assert hits_fixed > hits_two + 4, (hits_fixed, hits_two)


def test_one_variant_interval_and_masks():
    rng = np.random.default_rng(3)
    y, users, base, x = clustered(rng)
    p = [1 / (1 + np.exp(-(base + x + rng.normal(0, 0.5, len(y))))) for _ in range(3)]
    ci = cluster_bootstrap(y, users, p, n_boot=200)
    assert ci["lo"] < ci["value"] < ci["hi"] and "p" not in ci and ci["users"] == len(np.unique(users))
    assert ci["value"] == pytest.approx(np.mean([sklearn_metrics.roc_auc_score(y, q) for q in p]))
    m = users < 10
    sub = cluster_bootstrap(y, users, p, n_boot=50, mask=m)
    assert sub["n"] == m.sum() and sub["users"] == 10
    empty = cluster_bootstrap(y, users, p, n_boot=50, mask=np.zeros(len(y), bool))
    assert empty["n"] == 0 and np.isnan(empty["value"])


def test_benjamini_hochberg_follows_its_definition():
    p = np.array([0.01, 0.04, 0.03, 0.20, np.nan, 0.005])
    qv, sig = benjamini_hochberg(p, q=0.05)
    # by hand: sorted 0.005, 0.01, 0.03, 0.04, 0.20 (m = 5) -> 0.025, 0.025, 0.05, 0.05, 0.20
    np.testing.assert_allclose(qv[[5, 0, 2, 1, 3]], [0.025, 0.025, 0.05, 0.05, 0.20])
    assert np.isnan(qv[4]) and not sig[4]
    assert sig.tolist() == [True, True, True, False, False, True]
