"""Typed configs: YAML + extends + --set overrides; every shipped config builds its model."""
from __future__ import annotations

from pathlib import Path

import pytest

from seqctr.config import load_config
from seqctr.errors import ConfigError
from seqctr.models import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "ml100k").glob("*.yaml"))


def test_extends_merges_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {max_len: 50, batch_size: 8}\ntrain: {epochs: 3}\n")
    (tmp_path / "m.yaml").write_text("extends: base.yaml\ndata: {max_len: 70}\nmodel: {name: sim}\n")
    cfg = load_config(tmp_path / "m.yaml", ["train.epochs=9", "model.options.topk=7"])
    assert (cfg.data.max_len, cfg.data.batch_size, cfg.train.epochs) == (70, 8, 9)
    assert cfg.model.name == "sim" and cfg.model.options == {"topk": 7}


def test_extends_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_types_are_checked():
    with pytest.raises(ConfigError, match="data.max_len"):
        load_config(None, ["data.max_len=long"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["data.maxlen=5"])
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0   # ints widen to float


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_build(path, synth_ds):
    cfg = load_config(path)
    if path.stem == "base":
        return
    assert cfg.data.source == "ml100k" and cfg.data.max_len == 200 and cfg.model.mlp_hidden == [512, 128, 64]
    model = build_model(cfg.model, synth_ds.meta)
    assert model.backbone.registry_name == path.stem


def test_data_paths_are_read_against_the_config_file_and_kept_absolute(tmp_path, monkeypatch):
    """A YAML's relative source names a file beside the YAML, wherever the command runs; --set paths
    are read against the working directory; built-in names stay names."""
    from seqctr.config import load_config

    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "clicks.csv").write_text("user,item,timestamp,label\n1,2,3,1\n")
    (proj / "data" / "items.csv").write_text("item,genre\n2,a\n")
    (proj / "run.yaml").write_text("data:\n  source: data/clicks.csv\n  items: {path: data/items.csv}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(proj / "run.yaml")
    assert cfg.data.source == str((proj / "data" / "clicks.csv").resolve())
    assert cfg.data.items["path"] == str((proj / "data" / "items.csv").resolve())
    monkeypatch.chdir(proj)
    assert load_config(None, ["data.source=data/clicks.csv"]).data.source == str((proj / "data" / "clicks.csv").resolve())
    assert load_config(None, ["data.source=ml100k"]).data.source == "ml100k"
    assert load_config(None, ["data.source=not/there.csv"]).data.source == "not/there.csv"   # its error comes later
