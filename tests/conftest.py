"""Shared fixtures: synthetic interaction tables (unit tests), ../shared fixtures, ml100k (integration)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import synthetic_interactions, write_csv

@pytest.fixture
def seqctr_home(tmp_path, monkeypatch):
    """An empty cache folder for this test (SEQCTR_HOME)."""
    home = tmp_path / "home"
    monkeypatch.setenv("SEQCTR_HOME", str(home))
    return home


@pytest.fixture
def synth_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "inter.csv", synthetic_interactions())


@pytest.fixture
def synth_ds(tmp_path, synth_csv):
    from seqctr.data import prepare

    ds, _, _ = prepare(str(synth_csv), columns={"category": "category", "user_features": ["age"]},
                       label={"column": "label"}, home=tmp_path / "h")
    return ds


@pytest.fixture(scope="session")
def ml100k_ds():
    """The real ml100k dataset (downloads the recbole wheel with pip into the user cache once)."""
    from seqctr.data import prepare

    ds, folder, _ = prepare("ml100k")
    return ds


