"""The compression suite end to end on a tiny synthetic table: trains full and CollectiveKV runs, scores
the test split through the serving path in every codec, and writes the frontier page."""
from __future__ import annotations

import json

from seqctr.cli import main
from tests.experiments.test_lain_suite import make_configs


def test_compression_frontier_through_the_serving_path(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    out = tmp_path / "exp"
    args = ["experiment", "compression", "--backbones", "twin", "--seeds", "1",
            "--config-dir", str(cdir), "--out", str(out), "--jobs", "2", "--codecs", "fp32,bf16,int8,int8@5",
            "--collective", '{"user_dim": 1, "pool_size": 50, "branches": ["short", "long"]}']
    assert main(args) == 0
    res = json.loads((out / "compression" / "results.json").read_text())["backbones"]["twin"]
    groups = {f"twin/{v}_{c}" for v in ("full", "ckv") for c in ("fp32", "bf16", "int8", "int8@5")}
    assert set(res["groups"]) == groups
    # the fp32 serving path is the training forward pass, within float rounding
    assert max(res["fp32_serving_vs_forward_max_abs"]) < 1e-5
    b = res["bytes_per_user"]
    assert b["twin/full_int8"] < b["twin/full_bf16"] < b["twin/full_fp32"]
    assert b["twin/ckv_fp32"] < b["twin/full_fp32"] and b["twin/ckv_int8"] <= b["twin/ckv_fp32"]
    assert b["twin/full_int8@5"] < b["twin/full_int8"]            # a 5-event window: fewer bytes
    d = res["groups"]["twin/full_int8"]["delta_vs_twin/full_fp32"]["overall"]["auc"]
    assert d["lo"] <= d["delta"] <= d["hi"] and abs(d["delta"]) < 0.01
    page = (out / "compression" / "results.md").read_text()
    assert "x full fp32" in page and "serving path vs the training forward pass" in page
    # resumable: a second call trains and scores nothing again
    assert main(args) == 0
