"""SVD diagnostic: a planted shared subspace is found; principal parts correlate, residuals don't."""
from __future__ import annotations

import numpy as np

from seqctr.experiments.kv_analysis import svd_share


def test_planted_low_rank_shared_structure():
    rng = np.random.default_rng(0)
    U, n, d, r = 60, 10, 16, 3
    shared = rng.normal(size=(n, r))                       # the same "pattern" for every user ...
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = np.stack([(shared * rng.choice([-1, 1], size=(1, r)) * 5) @ basis[:, :r].T     # ... up to sign
                  + 0.3 * rng.normal(size=(n, d)) for _ in range(U)])
    res = svd_share(x, energy=0.9)
    assert res["rank_at_energy"] <= 5
    assert abs(sum(res["energy_share"]) - 1) < 1e-9
    assert res["principal_corr"]["mean_abs"] > 0.3          # broad: strongly +/- correlated
    assert res["residual_corr"]["mean_abs"] < 0.1           # clustered at 0
    assert res["energy_beyond_rank"]["1"] < res["energy_beyond_rank"]["8"]
    assert sum(res["principal_corr"]["hist"]) == U * (U - 1) // 2


def test_analyze_kv_cli_on_a_trained_checkpoint(tmp_path, synth_csv, seqctr_home, capsys):
    import json

    import yaml

    from seqctr.cli import main

    cfg = {"data": {"source": str(synth_csv), "max_len": 20, "batch_size": 32, "label": {"column": "label"}},
           "model": {"name": "twin", "embedding_dim": 8, "mlp_hidden": [16],
                     "options": {"short_seq_len": 5, "topk": 4, "attention_dim": 8}},
           "train": {"epochs": 1, "threads": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert main(["analyze", "kv", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--users", "12",
                 "--out", str(tmp_path / "kv")]) == 0
    res = json.loads((tmp_path / "kv" / "kv.json").read_text())
    assert set(res) == {"k", "v"} and res["k"]["dim"] == 8 and res["k"]["events_per_user"] == 4
    assert 2 <= res["k"]["users"] <= 12 and 1 <= res["k"]["rank_at_energy"] <= 8
    assert "| K |" in capsys.readouterr().out
