"""Helpers shared by the tests (synthetic logs, ../shared fixture paths)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def synthetic_interactions(n_users=30, n_items=40, min_len=2, max_len=60, seed=0, string_ids=False):
    """A learnable synthetic log: label = 1 iff the item's 'taste' group matches the user's group.

    Returns a dict of columns (user, item, timestamp, label, category, age)."""
    rng = np.random.default_rng(seed)
    rows = {"user": [], "item": [], "timestamp": [], "label": [], "category": [], "age": []}
    item_group = rng.integers(0, 2, n_items)
    for u in range(n_users):
        g = u % 2
        n = int(rng.integers(min_len, max_len + 1))
        items = rng.integers(0, n_items, n)
        ts = np.sort(rng.integers(1_000_000, 2_000_000, n))
        for it, t in zip(items, ts):
            rows["user"].append(f"u{u}" if string_ids else u + 100)
            rows["item"].append(f"i{it}" if string_ids else int(it) + 7)
            rows["timestamp"].append(int(t))
            p = 0.85 if item_group[it] == g else 0.15
            rows["label"].append(int(rng.random() < p))
            rows["category"].append(f"c{item_group[it]}{it % 3}")
            rows["age"].append(str(20 + 10 * (u % 3)))
    return rows


def write_csv(path: Path, rows: dict) -> Path:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    pacsv.write_csv(pa.table(rows), path)
    return path


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present (../shared is absent)")
    return p
