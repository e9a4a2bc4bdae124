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


# ---------------------------------------------------------------- grammar and validation (pinned)
def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("seqctr: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_version(capsys):
    import pytest

    from seqctr import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"seqctr {__version__}"


def test_debug_works_after_the_subcommand(tmp_path):
    import pytest

    from seqctr.errors import SeqctrError

    with pytest.raises(SeqctrError):
        main(["prepare", str(tmp_path / "nope.csv"), "--debug"])
    assert main(["prepare", str(tmp_path / "nope.csv")]) == 2


def test_every_option_has_help():
    from seqctr.cli import build_parser

    def walk(parser):
        for action in parser._actions:
            if action.dest in ("help", "version"):
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for sub in action.choices.values():
                    yield from walk(sub)
            else:
                yield parser.prog, action

    missing = [f"{prog} {a.option_strings or a.dest}" for prog, a in walk(build_parser()) if not a.help]
    assert not missing, missing


def test_one_list_style(tmp_path, synth_csv, seqctr_home, capsys):
    assert main(["prepare", str(synth_csv), "--label-column", "label", "--json", "--buckets", "1,20,40"]) == 0
    assert list(json.loads(capsys.readouterr().out)["test"]["buckets"]) == ["[1,20)", "[20,40)", "[40,inf)"]
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["experiment", "compare", "--seeds", "1,two"])
    assert e.value.code == 2 and "comma-separated list of int" in capsys.readouterr().err


def test_config_values_are_validated_before_any_work(tmp_path, capsys):
    missing = str(tmp_path / "no-such-table.csv")       # would fail if data preparation ran first
    for setting, needle in [("model.mlp_hidden=[a,b]", "model.mlp_hidden"), ("data.max_len=-5", "data.max_len"),
                            ("model.dropout=1.5", "model.dropout"), ("train.device=gpu", "train.device"),
                            ("eval.buckets=[50,1]", "eval.buckets"), ("model.name=nope", "model.name"),
                            ("model.options={topk: 3}", "model.options"), ("model.lain={prompt: 1}", "model.lain"),
                            ("data.split={test: 0.1}", "data.split"), ("data.label={col: x}", "data.label"),
                            ("model.impl=sparce", "model.impl")]:
        assert main(["train", "--config", _cfg(tmp_path, missing), "--set", setting]) == 2, setting
        _one_error_line(capsys, needle)


def _cfg(tmp_path, source):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"source": source}, "model": {"name": "din"}}))
    return str(p)


def test_evaluate_refuses_an_unknown_device(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--device", "gpu"]) == 2
    _one_error_line(capsys, "--device", "gpu")


def test_json_output_is_strict(tmp_path):
    """NaN (an empty bucket's AUC) is written as null, never as the invalid token NaN."""
    from seqctr.utils.io import dumps, write_json

    obj = {"auc": float("nan"), "n": 0, "x": [1.0, float("inf")]}
    assert json.loads(dumps(obj)) == {"auc": None, "n": 0, "x": [1.0, None]}
    write_json(tmp_path / "m.json", obj)
    assert "NaN" not in (tmp_path / "m.json").read_text()


def test_closed_pipe_is_not_a_traceback(tmp_path, synth_csv):
    import os
    import subprocess
    import sys

    env = {**os.environ, "SEQCTR_HOME": str(tmp_path / "h")}
    proc = subprocess.Popen([sys.executable, "-m", "seqctr", "prepare", str(synth_csv), "--label-column", "label",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()                                           # the reader (`| head`) is gone
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_packaged_configs_work_from_any_directory(tmp_path, monkeypatch, capsys):
    from seqctr.config import load_config, resolve_config_dir

    monkeypatch.chdir(tmp_path)                      # not the repository root
    assert load_config("din").model.name == "din"
    assert load_config("mlls/twin_1000").data.max_len == 1000
    assert (resolve_config_dir("mlls") / "sim.yaml").is_file()
    assert main(["configs"]) == 0 and "ml100k/din" in capsys.readouterr().out
    assert main(["train", "--config", "nope"]) == 2
    _one_error_line(capsys, "packaged", "ml100k/din")


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the code; regenerate with `seqctr configs --reference`."""
    from pathlib import Path

    from seqctr.config_reference import reference

    doc = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert doc.read_text().strip() == reference().strip(), "run: seqctr configs --reference > docs/configuration.md"
    for key in ("max_len", "tensorboard", "qk_condition", "collective_kv", "min_history"):
        assert f"`{key}`" in doc.read_text()


def test_a_failed_experiment_run_says_why(tmp_path, capsys):
    from seqctr.errors import SeqctrError
    from seqctr.experiments.runner import RunSpec, run_specs

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": str(tmp_path / "missing.csv")}}))
    import pytest

    with pytest.raises(SeqctrError, match="missing.csv"):
        run_specs([RunSpec("a/seed1", str(cfg))], tmp_path / "out", jobs=1, log=lambda m: None)


def test_train_records_provenance_and_can_log_to_tensorboard(tmp_path, synth_csv, seqctr_home):
    cfg = {"data": {"source": str(synth_csv), "max_len": 10, "batch_size": 64, "label": {"column": "label"}},
           "model": {"name": "din", "embedding_dim": 4, "mlp_hidden": [8]},
           "train": {"epochs": 1, "threads": 1, "tensorboard": True}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    for f in ("metrics.json", "config.json"):
        prov = json.loads((tmp_path / "r" / f).read_text())["provenance"]
        assert prov["seqctr"] and prov["torch"]
    events = list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/samples_per_s", "valid/auc"} <= set(tags)
    assert any(t.startswith("valid_auc_by_length/") for t in tags)


def test_help_shows_defaults_and_every_reporting_command_has_json(capsys):
    import pytest

    from seqctr.cli import build_parser

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "(default: 1,50,100,200)" in capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(getattr(a, "choices", None), dict)).choices
    reporting = {"prepare": sub["prepare"], "evaluate": sub["evaluate"], "predict": sub["predict"],
                 "analyze data": sub["analyze"]._actions[-1].choices["data"],
                 "analyze kv": sub["analyze"]._actions[-1].choices["kv"]}
    exp = next(a for a in sub["experiment"]._actions if isinstance(getattr(a, "choices", None), dict)).choices
    reporting.update({f"experiment {k}": v for k, v in exp.items()})
    missing = [n for n, p in reporting.items() if not any("--json" in a.option_strings for a in p._actions)]
    assert not missing, missing


def test_every_suite_is_registered_once_for_the_parser_and_the_report(tmp_path):
    """A suite in seqctr.experiments.suites is a sub-command of ``experiment`` and a page of ``seqctr report``."""
    from seqctr.cli import build_parser
    from seqctr.experiments.report import write_experiments_report
    from seqctr.experiments.suites import SUITES, report_pages

    parser = build_parser()
    for name, suite in SUITES.items():
        args = parser.parse_args(["experiment", name, *(["--dataset", "kuaivideo", "--source", "x"]
                                                        if name == "paper" else [])])
        assert args.kind == name and args.func.__name__ == "cmd_experiment"
        assert (name, "results.md", suite.title) in report_pages()
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.md").write_text(f"# page of {name}\n")
    report = write_experiments_report(tmp_path).read_text()
    assert all(f"page of {name}" in report for name in SUITES)
    assert {"backbones", "ab"} <= set(SUITES)
