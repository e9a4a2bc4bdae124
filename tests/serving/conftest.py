"""Fixtures of the serving tests: a tiny trained run exported as a bundle (trained once per session)."""
from __future__ import annotations

import pytest

from tests.serving.test_bundle import train_run


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    import os

    old = os.environ.get("SEQCTR_HOME")
    os.environ["SEQCTR_HOME"] = str(root / "home")
    try:
        rows, bundle = train_run(root)
    finally:
        if old is None:
            os.environ.pop("SEQCTR_HOME")
        else:
            os.environ["SEQCTR_HOME"] = old
    return rows, bundle, root
