"""``seqctr experiment kv`` end to end on a tiny synthetic table."""
from __future__ import annotations

import json

from seqctr.cli import main
from tests.experiments.test_lain_suite import make_configs


def test_kv_experiment_variants_sweeps_and_cache_bytes(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    out = tmp_path / "exp"
    assert main(["experiment", "kv", "--backbones", "twin", "--variants", "base,silu,ckv", "--user-dims", "1,2",
                 "--pool-sizes", "50", "--seeds", "1", "--config-dir", str(cdir), "--out", str(out),
                 "--jobs", "2"]) == 0
    res = json.loads((out / "kv" / "results.json").read_text())
    groups = res["backbones"]["twin"]["groups"]
    assert set(groups) == {"twin/base", "twin/silu", "twin/ckv", "twin/ckv_du2", "twin/ckv_m50"}
    assert "delta_vs_twin/silu" in groups["twin/ckv"]                 # compared with the SiLU control
    cfg = json.loads((out / "kv" / "twin/ckv_m50/seed1/config.json").read_text())
    assert cfg["model"]["options"]["collective_kv"]["pool_size"] == 50
    assert cfg["model"]["options"]["attention_dim"] == 256 and cfg["model"]["options"]["silu_qkv"] is True
    cache = res["cache"]
    base, ckv, du2 = (cache[g]["max_len"] for g in ("twin/base", "twin/ckv", "twin/ckv_du2"))
    assert base["cached_bytes"] == base["full_bytes"] and base["ratio"] == 1.0
    assert ckv["full_bytes"] == base["full_bytes"] and ckv["cached_bytes"] < base["cached_bytes"]
    assert du2["cached_bytes"] > ckv["cached_bytes"]                   # wider user part, more bytes
    # the short branch (5 events at max_len 20) is the compressed part: K and V, d_u floats + 1 index byte each
    assert base["cached_bytes"] - ckv["cached_bytes"] == 5 * 2 * (256 * 4 - (4 + 2))
    assert "Per-user cache bytes" in (out / "kv" / "results.md").read_text()


def test_every_backbone_keeps_its_control_group():
    """Asking for CK / CV alone still runs (or reuses) the control the deltas are taken against."""
    from pathlib import Path

    from seqctr.experiments.kv_suite import kv_groups

    groups = kv_groups(["sim", "hstu"], Path("configs/ml100k"), variants=("ck", "cv"))
    assert set(groups) == {"sim/silu", "sim/ck", "sim/cv", "hstu/base", "hstu/ck", "hstu/cv"}
