"""The reproduction kit for the LAIN paper's data, end to end on a small synthetic dataset written in
the LongCTR layout: the packaged paper configs, the four experiments, and one page with the paper's
numbers beside ours."""
from __future__ import annotations

import json

from seqctr.cli import main
from seqctr.config import load_config, resolve_config_dir
from seqctr.experiments.paper import TABLE3, TABLE6
from seqctr.lain import LainConfig
from tests.data.test_longctr import write_longctr


def test_packaged_paper_configs_carry_the_papers_settings():
    for ds in ("microvideo", "kuaivideo", "ebnerd"):
        for b in ("din", "dien", "sim", "sdim", "twin"):
            cfg = load_config(resolve_config_dir(f"paper-{ds}") / f"{b}.yaml")
            assert cfg.model.name == b and cfg.data.max_len == 1000 and cfg.model.embedding_dim == 64
            assert cfg.train.lr == 0.001 and cfg.model.dropout == 0.2
            lain = LainConfig.from_dict(cfg.model.lain)
            assert (lain.fourier_dim, lain.hidden, lain.prompts, lain.gamma, lain.beta) == (32, 512, 4, 0.5, 0.01)
            assert cfg.eval.buckets == [0, 100, 200]            # the paper's length groups


def test_paper_command_runs_the_four_tables_and_prints_the_papers_numbers(tmp_path, seqctr_home, capsys):
    src = tmp_path / "MicroVideo1.7M_x2"
    write_longctr(src, seed=4)
    out = tmp_path / "exp"
    tiny = ["data.max_len=20", "data.batch_size=16", "model.embedding_dim=8", "model.mlp_hidden=[16]",
            "model.lain.hidden=16", "model.lain.fourier_dim=8", "train.epochs=1",
            "model.options.topk=4", "model.options.short_seq_len=4", "model.options.attention_dim=8"]
    args = ["experiment", "paper", "--dataset", "microvideo", "--source", str(src), "--backbones", "twin",
            "--lengths", "5,20", "--seeds", "1", "--out", str(out), "--jobs", "2"]
    for s in tiny:
        args += ["--set", s]
    assert main(args) == 0
    page = json.loads((out / "paper" / "results.json").read_text())
    md = (out / "paper" / "results.md").read_text()
    assert set(page["table3"]) == {"twin"} and page["table3"]["twin"]["paper"]["lain"] == list(TABLE3["microvideo"]["twin"]["lain"])
    assert "0.7233" in md and "0.7158" in md                          # TWIN +LAIN / bare AUC as the paper prints
    assert set(page["table4"]) == {"[0,100)", "[100,200)", "[200,inf)", "overall"}
    assert set(page["table5"]) == {"bare/len5", "lain/len5", "bare/len20", "lain/len20"}
    assert page["table5"]["lain/len20"]["paper"] == [0.318, 0.322, 0.321]   # LAIN at the longest max_len
    assert set(page["table6"]) == set(TABLE6)
    for part in ("compare", "maxlen", "ablation"):                     # the suites' own pages are there too
        assert (out / part / "results.md").is_file()
    capsys.readouterr()
