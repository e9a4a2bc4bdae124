"""Fixtures of the serving tests: a tiny trained run exported as a bundle (trained once per session)."""
from __future__ import annotations

import os

import pytest

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
