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
