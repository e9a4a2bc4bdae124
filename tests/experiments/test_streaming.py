"""The streaming suite end to end on a tiny synthetic log: time slices, the frozen / warm / scratch
strategies, the staleness page, and resuming without training again."""
from __future__ import annotations

import json

import numpy as np
import yaml

from seqctr.cli import main
from seqctr.experiments.streaming import slice_edges
from tests.helpers import synthetic_interactions, write_csv


def test_slice_edges_split_samples_evenly():
    ts = np.arange(1000) * 7
    e = slice_edges(ts, 4)
    assert len(e) == 5 and e[0] == 0 and e[-1] == ts[-1] + 1
    counts = np.histogram(ts, bins=e)[0]
    assert counts.tolist() == [250, 250, 250, 250]


def test_streaming_page(tmp_path, seqctr_home):
    rows = synthetic_interactions(n_users=30, n_items=150, max_len=50, seed=5)
    data = write_csv(tmp_path / "inter.csv", rows)
    cdir = tmp_path / "configs"
    cdir.mkdir()
    (cdir / "din.yaml").write_text(yaml.safe_dump({
        "data": {"source": str(data), "max_len": 20, "batch_size": 64, "label": {"column": "label"},
                 "columns": {"category": "category"}},
        "model": {"name": "din", "embedding_dim": 8, "mlp_hidden": [16]}, "train": {"epochs": 1}}))
    out = tmp_path / "exp"
    args = ["experiment", "streaming", "--backbone", "din", "--slices", "3", "--seeds", "1,2",
            "--config-dir", str(cdir), "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    res = json.loads((out / "streaming" / "results.json").read_text())
    assert len(res["edges"]) == 4
    assert set(res["slices"]) == {"t0", "t1"}
    assert set(res["slices"]["t1"]["groups"]) == {"t1/frozen", "t1/warm", "t1/scratch"}
    for k in ("warm", "scratch"):
        d = res["slices"]["t1"]["groups"][f"t1/{k}"]["delta_vs_t1/frozen"]["overall"]["auc"]
        assert d["lo"] <= d["delta"] <= d["hi"]
    # the warm run grew its vocabularies from the slice-0 model's
    warm = json.loads((out / "streaming" / "warm" / "t1" / "seed1" / "metrics.json").read_text())
    frozen = json.loads((out / "streaming" / "scratch" / "t0" / "seed1" / "metrics.json").read_text())
    assert warm["dataset"]["vocab_sizes"]["item_id"] > frozen["dataset"]["vocab_sizes"]["item_id"]
    assert "warm start from" in (out / "streaming" / "warm" / "t1" / "seed1" / "train.log").read_text()
    # every strategy's AUC at the first test slice is the slice-0 model's
    c = res["curve"]
    assert c["frozen"][0] == c["warm"][0] == c["scratch"][0]
    page = (out / "streaming" / "results.md").read_text()
    assert "Staleness: din" in page and "Test slice 2" in page
    # resumable: nothing trains again
    before = sorted(p.stat().st_mtime for p in (out / "streaming").rglob("best.pt"))
    assert main(args) == 0
    assert sorted(p.stat().st_mtime for p in (out / "streaming").rglob("best.pt")) == before
