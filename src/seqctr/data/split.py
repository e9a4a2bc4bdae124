"""Splits by time: one global cut in the source's time units (``data.split.train_until``), the rule
behind time slices (``seqctr experiment streaming``); the per-user chronological split is the
constructions' own (``construct``, ``ebnerd``)."""
from __future__ import annotations

import numpy as np

from ..config import SplitRule

UNUSED = 3   # a sample's split value when a split by time leaves it out of train, valid and test


def time_split(sample_ts: np.ndarray, rule: SplitRule) -> tuple[np.ndarray, int]:
    """Split samples by one global time cut (``rule.by_time``): ``[N]`` split values (0 / 1 / 2, or
    :data:`UNUSED` outside the windows) and the time before which events are visible to training
    (the start of validation: vocabularies are built from the events before it). Validation is the
    latest ``valid_frac`` of the training window by time, cut at a time (ties go to validation)."""
    ts = np.asarray(sample_ts)
    lo = -np.inf if rule.train_from is None else rule.train_from
    hi = np.inf if rule.test_until is None else rule.test_until
    window = (ts >= lo) & (ts < rule.train_until)
    sp = np.full(len(ts), UNUSED, np.int8)
    sp[window] = 0
    sp[(ts >= rule.train_until) & (ts < hi)] = 2
    fit_until = rule.train_until
    n_valid = int(round(rule.valid_frac * int(window.sum())))
    if n_valid:
        fit_until = int(np.sort(ts[window])[-n_valid])
        sp[window & (ts >= fit_until)] = 1
    return sp, fit_until
