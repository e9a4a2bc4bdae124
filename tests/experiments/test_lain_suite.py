"""The experiment suite end to end on a tiny synthetic table: runs in subprocesses, resumes,
summarises with intervals, writes the report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from seqctr.cli import main
from tests.helpers import synthetic_interactions, write_csv


def make_configs(tmp_path):
    data = write_csv(tmp_path / "inter.csv", synthetic_interactions(n_users=24, max_len=40, seed=3))
    cdir = tmp_path / "configs"
    cdir.mkdir()
    base = {"data": {"source": str(data), "max_len": 20, "batch_size": 64, "label": {"column": "label"},
                     "columns": {"category": "category"}},
            "model": {"embedding_dim": 8, "mlp_hidden": [16], "lain": {"hidden": 16}},
            "train": {"epochs": 1}}
    (cdir / "base.yaml").write_text(yaml.safe_dump(base))
    (cdir / "din.yaml").write_text("extends: base.yaml\nmodel: {name: din}\n")
    (cdir / "twin.yaml").write_text("extends: base.yaml\nmodel: {name: twin, options: {topk: 5, short_seq_len: 6}}\n")
    return cdir


def test_compare_resume_and_report(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    out = tmp_path / "exp"
    args = ["experiment", "compare", "--backbones", "twin", "--seeds", "1,2", "--config-dir", str(cdir),
            "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    res = json.loads((out / "compare" / "results.json").read_text())["backbones"]["twin"]
    assert set(res["groups"]) == {"twin/bare", "twin/lain"}
    auc = res["groups"]["twin/lain"]["metrics"]["overall"]["auc"]
    assert auc["n"] == 2 and auc["lo"] <= auc["mean"] <= auc["hi"] and auc["users"] == 24
    d = res["groups"]["twin/lain"]["delta_vs_twin/bare"]
    assert set(d) == {"overall", "[1,50)", "[50,100)", "[100,200)", "[200,inf)",         # our buckets
                      "paper [0,100)", "paper [100,200)", "paper [200,inf)"}               # the paper's groups
    # the observed delta is the mean paired difference of the per-seed test AUCs
    m = {g: [json.loads((out / "compare" / g / f"seed{s}" / "metrics.json").read_text())["test"]["overall"]["auc"]
             for s in (1, 2)] for g in ("twin/bare", "twin/lain")}
    assert abs(d["overall"]["auc"]["delta"] - float(np.mean(np.subtract(m["twin/lain"], m["twin/bare"])))) < 1e-9
    assert d["overall"]["auc"]["lo"] <= d["overall"]["auc"]["delta"] <= d["overall"]["auc"]["hi"]
    # users x seeds: a p-value, and Benjamini-Hochberg over the page's delta AUC cells
    assert 0 <= d["overall"]["auc"]["p"] <= 1 and "q" in d["overall"]["auc"] and "significant" in d["overall"]["auc"]
    page = json.loads((out / "compare" / "results.json").read_text())
    assert page["multiplicity"]["cells"] == 8          # overall + 4 buckets + 3 paper groups, one backbone
    md = (out / "compare" / "results.md").read_text()
    assert "Δ twin/lain" in md and "bootstrap over users and seeds" in md and "Benjamini-Hochberg" in md
    findings_page_renders(tmp_path, out, page)
    capsys.readouterr()

    stamp = (out / "compare" / "twin/lain/seed1/metrics.json").stat().st_mtime_ns
    assert main(args) == 0                                         # resumes: nothing re-trained
    assert (out / "compare" / "twin/lain/seed1/metrics.json").stat().st_mtime_ns == stamp

    assert main(["analyze", "data", str(tmp_path / "inter.csv"), "--out", str(out / "data")]) == 0
    assert main(["report", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "LAIN vs bare backbones" in report and "Δ twin/lain" in report
    assert "| [1,50) |" in report and "users" in report     # the data analysis table is included


def findings_page_renders(tmp_path, out, page):
    """bench/lain_findings.py turns the evidence tree into the findings page: the < 100 events answer
    per backbone, every cell, and the suites not run yet."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("lain_findings",
                                                  Path(__file__).resolve().parents[2] / "bench" / "lain_findings.py")
    lf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lf)
    evidence = tmp_path / "evidence" / "ml100k" / "compare-din-twin"
    evidence.mkdir(parents=True)
    (evidence / "compare").symlink_to(out / "compare")
    lf.STORE = tmp_path / "store"
    text = lf.render(lf.collect(tmp_path / "evidence"))
    d = page["backbones"]["twin"]["groups"]["twin/lain"]["delta_vs_twin/bare"]["paper [0,100)"]["auc"]
    assert f"| ml100k | twin | 2 | {lf.cell(d)} | {lf.verdict(d)} |" in text
    assert "Not run yet:" in text and "ml-latest-small compare-din-twin" in text
    assert "### ml100k, twin (seeds [1, 2])" in text and "*increases*" in text


def test_maxlen_sweep_records_polarization(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    out = tmp_path / "exp"
    assert main(["experiment", "maxlen", "--backbones", "din", "--lengths", "3,20", "--seeds", "1",
                 "--config-dir", str(cdir), "--out", str(out), "--jobs", "2"]) == 0
    res = json.loads((out / "maxlen" / "results.json").read_text())["backbones"]["din"]
    pol = res["polarization"]
    assert set(pol) == {"din/bare/len3", "din/bare/len20", "din/lain/len3", "din/lain/len20"}
    for n in ("3", "20"):   # LAIN's effect at each length: the paired difference of the same-length runs
        d = res["lain_vs_bare"][n]["groups"][f"din/lain/len{n}"][f"delta_vs_din/bare/len{n}"]["overall"]["auc"]
        m = {v: json.loads((out / "maxlen" / f"din/{v}/len{n}/seed1/metrics.json").read_text())["test"]["overall"]["auc"]
             for v in ("bare", "lain")}
        assert abs(d["delta"] - (m["lain"] - m["bare"])) < 1e-9
    assert "+LAIN vs bare at the same max_len" in (out / "maxlen" / "results.md").read_text()
    g3, g20 = pol["din/bare/len3"]["din"]["overall"], pol["din/bare/len20"]["din"]["overall"]
    assert 0 <= g3 <= 1 and 0 <= g20 <= 1


def test_backbones_suite_compares_bare_backbones_with_a_baseline(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    (cdir / "hstu.yaml").write_text("extends: base.yaml\nmodel: {name: hstu, options: {max_len: 20}}\n")
    out = tmp_path / "exp"
    args = ["experiment", "backbones", "--backbones", "din,hstu", "--seeds", "1,2", "--config-dir", str(cdir),
            "--out", str(out), "--set", "train.epochs=2", "--jobs", "2"]
    assert main(args) == 0
    res = json.loads((out / "backbones" / "results.json").read_text())
    assert res["baseline"] == "din" and set(res["groups"]) == {"din", "hstu"}
    assert "delta_vs_din" in res["groups"]["hstu"] and "delta_vs_din" not in res["groups"]["din"]
    m = {g: [json.loads((out / "backbones" / g / f"seed{s}" / "metrics.json").read_text()) for s in (1, 2)]
         for g in ("din", "hstu")}
    want = float(np.mean([h["test"]["overall"]["auc"] - d["test"]["overall"]["auc"] for d, h in zip(*m.values())]))
    assert abs(res["groups"]["hstu"]["delta_vs_din"]["overall"]["auc"]["delta"] - want) < 1e-9
    assert res["epochs_run"]["hstu"] == [len(x["history"]) for x in m["hstu"]]
    assert all(1 <= e <= 2 for e in res["best_epoch"]["hstu"] + res["epochs_run"]["din"])
    assert "Δ hstu" in (out / "backbones" / "results.md").read_text()
    capsys.readouterr()
    assert main(args[:2] + ["--backbones", "din,hstu", "--baseline", "twin", "--config-dir", str(cdir),
                            "--out", str(out)]) == 2
    assert "--baseline 'twin'" in capsys.readouterr().err


def test_ablation_rows_include_the_open_lain_choices_against_full(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    out = tmp_path / "exp"
    args = ["experiment", "ablation", "--backbones", "din", "--rows", "bare,full,l0_samples,prompt_small",
            "--seeds", "1,2", "--config-dir", str(cdir), "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    res = json.loads((out / "ablation" / "results.json").read_text())
    assert set(res["groups"]) == {"din/bare", "din/full", "din/l0_samples", "din/prompt_small"}
    for g in ("din/l0_samples", "din/prompt_small"):
        assert "delta_vs_din/bare" in res["groups"][g] and "delta_vs_din/full" in res["groups"][g]
    assert "delta_vs_din/full" not in res["groups"]["din/full"]
    run = lambda g, s=1: json.loads((out / "ablation" / g / f"seed{s}" / "metrics.json").read_text())  # noqa: E731
    assert run("din/l0_samples")["config"]["model"]["lain"]["l0"] == "samples"
    assert run("din/prompt_small")["config"]["model"]["lain"]["prompt_scale"] == 0.001
    full, samples = run("din/full"), run("din/l0_samples")
    want = float(np.mean([run("din/l0_samples", s)["test"]["overall"]["auc"] - run("din/full", s)["test"]["overall"]["auc"]
                          for s in (1, 2)]))
    assert abs(res["groups"]["din/l0_samples"]["delta_vs_din/full"]["overall"]["auc"]["delta"] - want) < 1e-9
    assert full["test"]["overall"]["auc"] != samples["test"]["overall"]["auc"]    # the choice changed the model
    assert "vs full LAIN" in (out / "ablation" / "results.md").read_text()
    capsys.readouterr()
    assert main(args[:4] + ["--rows", "full,l0_samples", "--config-dir", str(cdir), "--out", str(out)]) == 2
    assert "--rows: need bare" in capsys.readouterr().err


def test_ab_suite_pairs_each_backbone_with_its_overridden_twin(tmp_path, seqctr_home, capsys):
    cdir = make_configs(tmp_path)
    out = tmp_path / "exp"
    args = ["experiment", "ab", "--backbones", "din", "--b", "train.precision=bf16", "--seeds", "1,2",
            "--config-dir", str(cdir), "--out", str(out), "--jobs", "2"]
    assert main(args) == 0
    res = json.loads((out / "ab" / "results.json").read_text())
    assert res["b"] == ["train.precision=bf16"]
    g = res["backbones"]["din"]["groups"]
    assert set(g) == {"din/a", "din/b"} and "delta_vs_din/a" in g["din/b"]
    cfg = lambda side: json.loads((out / "ab" / f"din/{side}/seed1/metrics.json").read_text())["config"]  # noqa: E731
    assert cfg("b")["train"]["precision"] == "bf16" and cfg("a")["train"]["precision"] == "fp32"
    assert main(["report", "--out", str(out)]) == 0                 # the report covers every suite's page
    assert "A/B: train.precision=bf16 (b) vs as configured (a)" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(args[:4] + ["--config-dir", str(cdir), "--out", str(out)]) == 2
    assert "--b KEY=VALUE" in capsys.readouterr().err


def test_run_predictions_come_back_in_split_order_or_fail_naming_the_file(tmp_path):
    from seqctr.experiments.summary import predictions
    np.savez(tmp_path / "predictions_test.npz", index=np.array([7, 3, 5]), prob=np.array([0.7, 0.3, 0.5]))
    assert predictions(tmp_path, np.array([3, 5, 7])).tolist() == [0.3, 0.5, 0.7]
    with pytest.raises(ValueError, match=r"predictions_test\.npz: the predictions do not cover the test split"):
        predictions(tmp_path, np.array([3, 5, 8]))
