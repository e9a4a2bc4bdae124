"""Fixtures of the serving tests: a tiny trained run exported as a bundle (trained once per session)."""
from __future__ import annotations

import os

import pytest
import torch

from tests.serving.test_bundle import train_run


def train_in_own_home(root, **kw):
    """:func:`train_run` with ``SEQCTR_HOME`` under ``root`` for its duration (a session fixture
    cannot use monkeypatch): ``(rows, bundle folder)``."""
    old = os.environ.get("SEQCTR_HOME")
    os.environ["SEQCTR_HOME"] = str(root / "home")
    try:
        return train_run(root, **kw)
    finally:
        if old is None:
            os.environ.pop("SEQCTR_HOME")
        else:
            os.environ["SEQCTR_HOME"] = old


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    rows, bundle = train_in_own_home(root)
    return rows, bundle, root


@pytest.fixture(scope="session")
def hstu_bundle(tmp_path_factory):
    """A time-aware bundle (HSTU, its time bias): ``(rows, bundle folder, state)``, ``state`` the
    weights with the time bias made larger (so a wrong time shows); the bundle on disk keeps the
    trained weights."""
    from seqctr.serving.scorer import load

    root = tmp_path_factory.mktemp("hstu_time")
    rows, bundle = train_in_own_home(root, name="hstu", options={"num_layers": 2, "max_len": 16})
    scorer = load(bundle)
    with torch.no_grad():     # trained one epoch from N(0, 0.02): made larger so a wrong time shows
        for blk in scorer.model.backbone.blocks:
            blk.ts_w.normal_(0, 1.0)
    return rows, bundle, scorer.model.state_dict()
