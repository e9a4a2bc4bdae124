"""Warm start (``train.init``): the trained model continues on newer data with grown vocabularies;
old rows are kept bit for bit, and before any new training it scores exactly as the old model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seqctr.config import load_config
from seqctr.data import BatchLoader
from seqctr.models import load_trained
from seqctr.training import Trainer, predict
from seqctr.training.warm_start import grow_state, warm_data
from seqctr.errors import SeqctrError
from tests.data.test_remap import COLS, LABEL
from tests.helpers import synthetic_interactions, write_csv


def _cfg(source, **over):
    sets = [f"data.source={source}", f"data.columns={COLS}", f"data.label={LABEL}", "model.embedding_dim=8",
            "model.mlp_hidden=[16,8]", "data.max_len=20", "data.batch_size=32", "train.epochs=2", "train.lr=0.005",
            "train.threads=1", "model.name=twin", "model.lain.enabled=true"]
    return load_config(None, sets + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture
def logs(tmp_path, seqctr_home):
    rows = synthetic_interactions(n_users=30, n_items=60, string_ids=True, seed=3)
    cut = np.quantile(rows["timestamp"], 0.6)
    for i, t in enumerate(rows["timestamp"]):        # later events: new items of a new category
        if t >= cut and i % 3 == 0:
            rows["item"][i], rows["category"][i] = "new-" + rows["item"][i], "c-new"
    old = {k: [v for v, t in zip(col, rows["timestamp"]) if t < cut] for k, col in rows.items()}
    return write_csv(tmp_path / "old.csv", old), write_csv(tmp_path / "new.csv", rows)


def test_warm_start_keeps_rows_and_scores(logs, tmp_path):
    old_csv, new_csv = logs
    from seqctr.data import prepare_config

    cfg0 = _cfg(old_csv)
    ds0, _, _ = prepare_config(cfg0.data)
    Trainer(cfg0, ds0, tmp_path / "old", progress=False).fit(log=lambda *_: None)
    old_state = torch.load(tmp_path / "old" / "best.pt", weights_only=True)["model"]

    cfg1 = _cfg(new_csv, **{"train.init": str(tmp_path / "old" / "best.pt"), "train.epochs": 1})
    ds1, folder1, init = warm_data(cfg1)
    tr = Trainer(cfg1, ds1, tmp_path / "new", progress=False, init=init)
    assert tr.grown, "no table grew: the newer data has new items"
    state = tr.model.state_dict()
    for k, (n_old, n_new) in tr.grown.items():
        assert n_new > n_old
        assert torch.equal(state[k][:n_old], old_state[k]), f"{k}: an old row changed"
        assert torch.equal(state[k][n_old:], old_state[k][1].expand(n_new - n_old, -1)), "new rows: the OOV row"
    for k, v in old_state.items():
        if k not in tr.grown:
            assert torch.equal(state[k], v), k

    # from the run's bundle: the same grown data and weights
    from seqctr.serving.bundle import export_bundle

    export_bundle(tmp_path / "old" / "best.pt", tmp_path / "bundle")
    ds_b, _, init_b = warm_data(_cfg(new_csv, **{"train.init": str(tmp_path / "bundle")}))
    assert ds_b.vocab_sizes == ds1.vocab_sizes and np.array_equal(ds_b.seq_items, ds1.seq_items)
    assert all(torch.equal(init_b[k], v) for k, v in init.items())

    # LAIN's L0: kept from the trained model, or taken from the new data
    assert torch.equal(tr.model.lain.L0, old_state["lain.L0"])
    cfg_l0 = _cfg(new_csv, **{"train.init": str(tmp_path / "old" / "best.pt"), "train.init_l0": "data"})
    fresh = Trainer(cfg_l0, ds1, tmp_path / "l0", progress=False, init=init).model.lain.L0
    from seqctr.models import build_model

    assert torch.equal(fresh, build_model(cfg_l0.model, ds1.meta).lain.L0) and not torch.equal(fresh, old_state["lain.L0"])

    # before any new training: the grown model scores the newer data as the old model does with the
    # new ids out of vocabulary (the new items' features are new too: every row the same vector)
    old_model, cfg_old, ds_old_space, _ = load_trained(tmp_path / "old" / "best.pt", source=str(folder1))
    kw = dict(max_len=20, batch_size=64, shuffle=False)
    p_old = predict(old_model, BatchLoader(ds_old_space, "test", **kw), "cpu")["prob"]
    p_new = predict(tr.model, BatchLoader(ds1, "test", **kw), "cpu")["prob"]
    assert (ds_old_space.seq_items == 1).any(), "the old space sees no new item: nothing is tested"
    np.testing.assert_allclose(p_new, p_old, rtol=0, atol=1e-6)

    # it trains on, and the new run stands on its own: its config names the grown data
    cfg1.data.source = str(folder1)
    res = tr.fit(log=lambda *_: None)
    assert np.isfinite(res["test"]["overall"]["auc"])
    model, cfg, ds, _ = load_trained(tmp_path / "new" / "best.pt")
    assert ds.vocab_sizes == ds1.vocab_sizes


def test_grow_state_refuses_other_shapes():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)
    with pytest.raises(SeqctrError, match="only vocabulary tables may grow"):
        grow_state(a, b.state_dict())
    emb = torch.nn.Embedding(6, 2)
    grown = grow_state(emb, torch.nn.Embedding(4, 2).state_dict(), rows="fresh")
    assert grown == {"weight": (4, 6)}
