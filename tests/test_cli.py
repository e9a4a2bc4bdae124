"""The CLI end to end on a synthetic table: prepare --json, train, evaluate."""
from __future__ import annotations

import json

import yaml

from seqctr.cli import main


def test_prepare_json_train_evaluate(tmp_path, synth_csv, seqctr_home, capsys):
    assert main(["prepare", str(synth_csv), "--json", "--label-column", "label"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cached"] is False
    total = out["train"]["rows"] + out["valid"]["rows"] + out["test"]["rows"]
    assert total > 0 and sum(out["test"]["buckets"].values()) <= out["test"]["rows"]

    assert main(["prepare", str(synth_csv), "--json", "--label-column", "label"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True

    cfg = {"data": {"source": str(synth_csv), "max_len": 20, "batch_size": 32, "label": {"column": "label"},
                    "columns": {"category": "category"}},
           "model": {"name": "din", "embedding_dim": 8, "mlp_hidden": [16]},
           "train": {"epochs": 2, "threads": 1}}
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "--no-progress",
                 "--set", "train.lr=0.003"]) == 0
    printed = capsys.readouterr().out
    assert "| overall |" in printed and "[200,inf)" in printed
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["lr"] == 0.003 and saved["train"]["epochs"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "report.md").read_text().count("| overall |") == 2

    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert abs(ev["overall"]["auc"] - metrics["test"]["overall"]["auc"]) < 1e-9
    assert ev["buckets"].keys() == metrics["test"]["buckets"].keys()


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "epochz" in err and "train" in err


def test_bad_override_type(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--set", "train.epochs=many"]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_unknown_backbone(tmp_path, synth_csv, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  source: {synth_csv}\n  label: {{column: label}}\nmodel:\n  name: nope\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "nope" in capsys.readouterr().err
