"""Training loop: it learns, early-stops, checkpoints atomically and resumes without losing epochs."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from seqctr.config import load_config
from seqctr.checkpoint import load_checkpoint
from seqctr.training import Trainer


def small_cfg(**over):
    sets = ["model.embedding_dim=8", "model.mlp_hidden=[16,8]", "model.dropout=0.1", "data.max_len=20",
            "data.batch_size=32", "train.epochs=3", "train.patience=5", "train.lr=0.005", "train.threads=1"]
    sets += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, sets)


def test_learns_the_synthetic_signal(synth_ds, tmp_path):
    res = Trainer(small_cfg(**{"train.epochs": 6}), synth_ds, tmp_path / "run", progress=False).fit(log=lambda *_: None)
    # label depends on (user group x item group): a model that learns beats chance clearly
    assert res["test"]["overall"]["auc"] > 0.7
    for f in ("config.json", "metrics.json", "best.pt", "last.pt"):
        assert (tmp_path / "run" / f).is_file()
    assert not list((tmp_path / "run").glob("*.tmp")), "temporary files left behind"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]["buckets"]) == {"[1,50)", "[50,100)", "[100,200)", "[200,inf)"}
    assert 0 <= metrics["history"][0]["padding_fraction"] < 1


def test_early_stopping_respects_patience(synth_ds, tmp_path):
    cfg = small_cfg(**{"train.epochs": 50, "train.patience": 1, "train.lr": 0.05})
    res = Trainer(cfg, synth_ds, tmp_path / "run", progress=False).fit(log=lambda *_: None)
    hist = res["history"]
    assert len(hist) < 50
    best = max(h["valid"]["auc"] for h in hist)
    assert hist[res["best_epoch"] - 1]["valid"]["auc"] == best
    assert len(hist) == res["best_epoch"] + 1  # stopped after one epoch without improvement


def test_resume_after_interruption_equals_uninterrupted_run(synth_ds, tmp_path, monkeypatch):
    straight = Trainer(small_cfg(), synth_ds, tmp_path / "a", progress=False)
    straight.fit(log=lambda *_: None)

    interrupted = Trainer(small_cfg(), synth_ds, tmp_path / "b", progress=False)
    real = Trainer.train_epoch

    def crash_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(log=lambda *_: None)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["epoch"] == 2  # finished epochs kept

    resumed = Trainer(small_cfg(), synth_ds, tmp_path / "b", progress=False)
    logs = []
    resumed.fit(resume=True, log=logs.append)
    assert "resumed" in logs[0] and len(resumed.state["history"]) == 3
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_resume_inside_an_epoch_equals_uninterrupted_run(synth_ds, tmp_path, monkeypatch):
    """``train.checkpoint_steps``: a run killed mid-epoch resumes after its last saved step and ends with
    the weights and epoch losses of a run never interrupted (which saved nothing inside its epochs)."""
    from seqctr.training import trainer as trainer_mod

    straight = Trainer(small_cfg(), synth_ds, tmp_path / "a", progress=False)
    straight.fit(log=lambda *_: None)
    steps = len(straight.train_loader.batches(2))
    assert steps >= 5

    cfg = small_cfg(**{"train.checkpoint_steps": 2})
    interrupted = Trainer(cfg, synth_ds, tmp_path / "b", progress=False)
    real, calls = trainer_mod.train_step, []

    def crash(*args, **kwargs):                     # killed in epoch 2, after step 5 (last saved: step 4)
        calls.append(1)
        if len(calls) == steps + 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(log=lambda *_: None)
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ck["state"]["epoch"] == 1 and ck["state"]["step"] == 4 and len(ck["partial_ranks"]) == 1

    resumed = Trainer(cfg, synth_ds, tmp_path / "b", progress=False)
    logs = []
    resumed.fit(resume=True, log=logs.append)
    assert "step 4 of epoch 2" in logs[0]
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert b["state"]["step"] == 0
    for ha, hb in zip(a["state"]["history"], b["state"]["history"]):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=1e-12) and ha["samples"] == hb["samples"]


def test_train_step_clock_times_its_parts_without_changing_the_step(synth_ds):
    """``clock`` only reads the time: the same weights and seed give the same losses with and without it."""
    from seqctr.config import ModelConfig
    from seqctr.data import gather_batch
    from seqctr.models import build_model
    from seqctr.nn import dropout
    from seqctr.training import train_step

    batch = gather_batch(synth_ds, synth_ds.indices("train")[:64], max_len=20)
    base = build_model(ModelConfig(name="din", embedding_dim=8, mlp_hidden=[16]), synth_ds.meta)
    runs = []
    for clocked in (False, True):
        model = copy.deepcopy(base)
        opt, clock = torch.optim.SGD(model.parameters(), lr=0.5), {}
        dropout.seed(0)                                          # the same dropout masks
        runs.append([train_step(model, opt, batch, clock=clock if clocked else None) for _ in range(3)])
        if clocked:
            times = clock
    assert runs[0] == runs[1] and runs[0][0] != runs[0][-1]
    assert set(times) == {"forward", "backward", "clip + optimiser"} and all(v > 0 for v in times.values())


def test_a_wrong_checkpoint_says_what_it_is_and_what_was_expected(tmp_path):
    import torch

    from seqctr.errors import SeqctrError
    from seqctr.training.trainer import load_checkpoint

    notes = tmp_path / "notes.txt"
    notes.write_text("some notes")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    cases = {notes: "is not a PyTorch checkpoint (10 bytes", empty: "is an empty file",
             bundle: "is a folder — it is a model bundle: pass it as --model", tmp_path / "nope.pt": "does not exist",
             foreign: "is a PyTorch file but not a seqctr checkpoint"}
    for path, needle in cases.items():
        with pytest.raises(SeqctrError) as e:
            load_checkpoint(path)
        assert needle in str(e.value) and "expected a run's best.pt" in str(e.value), str(e.value)


def test_a_collective_kv_run_logs_the_mean_training_gate_of_its_validation_events(synth_ds, tmp_path):
    """Every epoch of a CollectiveKV model records the mean gate (sigmoid of the top-1 router logit) of the
    validation events, equal to metering the saved weights' validation pass afresh; other models record none."""
    from seqctr.nn.collective_kv import GateMeter
    cfg = small_cfg(**{"model.name": "twin", "train.epochs": 2,
                       "model.options.collective_kv": '{"user_dim": 1, "pool_size": 20}'})
    logs = []
    t = Trainer(cfg, synth_ds, tmp_path / "ckv", progress=False)
    res = t.fit(log=logs.append)
    gates = [h["collective_gate"] for h in res["history"]]
    assert all(set(g) == {"k", "v"} and all(0 < x < 1 for x in g.values()) for g in gates)
    assert gates[0] != gates[1]                                      # measured per epoch, not carried over
    assert all("gate k" in line for line in logs if line.startswith("epoch"))
    t.model.load_state_dict(load_checkpoint(tmp_path / "ckv" / "last.pt")["model"])
    with GateMeter(t.model) as meter:
        t.evaluate("valid")
    assert meter.means() == pytest.approx(gates[-1], rel=1e-9)
    plain = Trainer(small_cfg(**{"train.epochs": 1}), synth_ds, tmp_path / "din", progress=False)
    assert "collective_gate" not in plain.fit(log=lambda *_: None)["history"][0]
