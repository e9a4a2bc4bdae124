"""train.compile: torch.compile'd training and evaluation equal eager (the reference) within float
rounding, across the sequence lengths of length-bucketed batches, and the Trainer wires it in."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

from seqctr.config import ModelConfig
from seqctr.data import gather_batch
from seqctr.models import build_model
from seqctr.training import Trainer, compiled

from .test_trainer import small_cfg


@pytest.fixture(autouse=True, scope="module")
def _own_inductor_cache(tmp_path_factory):
    """Compiled kernels in a folder of this test run (not a cache another process may be writing)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    yield
    mp.undo()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# one per code path: Dice activation unit; GSU top-k (eager between compiled pieces) + softmax
# attention + LAIN's prompts and temperature; a GRU and the AUGRU's per-step row counts.
@pytest.mark.parametrize("name,lain", [("din", False), ("twin", True), ("dien", False)])
def test_compiled_model_equals_eager_in_training_and_evaluation(synth_ds, name, lain):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16], dropout=0.0, lain={"enabled": lain})
    model = build_model(cfg, synth_ds.meta)
    fast = compiled(model)
    frames = counters["frames"]["ok"]
    idx = synth_ds.indices("train")
    # two batch sizes and two max lengths: one dynamic graph must serve both (as length buckets need)
    for rows, max_len in ((idx[:50], 20), (idx[50:87], 7)):
        batch = gather_batch(synth_ds, rows, max_len=max_len)
        model.train()
        out = {}
        for label, fwd in (("eager", model), ("compiled", fast)):
            model.zero_grad(set_to_none=True)
            o = fwd(batch)
            model.loss(o, batch.label).backward()
            out[label] = (o.logits.detach(), _grads(model))
        torch.testing.assert_close(out["compiled"][0], out["eager"][0], atol=1e-5, rtol=1e-4)
        assert out["compiled"][1].keys() == out["eager"][1].keys()
        for n, g in out["eager"][1].items():
            torch.testing.assert_close(out["compiled"][1][n], g, atol=1e-5, rtol=1e-4, msg=n)
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(fast(batch).logits, model(batch).logits, atol=1e-5, rtol=1e-4)
    assert counters["frames"]["ok"] > frames, "torch.compile really compiled something"


def test_trainer_compiles_training_and_evaluation_of_the_same_model(synth_ds, tmp_path):
    over = {"train.epochs": 1, "model.dropout": 0.0, "model.mlp_hidden": "[16]"}    # DIN, as above
    eager = Trainer(small_cfg(**over), synth_ds, tmp_path / "a", progress=False)
    tr = Trainer(small_cfg(**over, **{"train.compile": "true"}), synth_ds, tmp_path / "b", progress=False)
    assert not isinstance(eager.forward, OptimizedModule) and eager.infer is eager.model
    assert isinstance(tr.infer, OptimizedModule) and tr.infer._orig_mod is tr.model
    assert tr.forward is tr.infer          # one process: training and evaluation share the compiled module
    a, b = eager.fit(log=lambda *_: None), tr.fit(log=lambda *_: None)
    assert abs(a["history"][0]["loss"] - b["history"][0]["loss"]) < 1e-4
    assert abs(a["test"]["overall"]["auc"] - b["test"]["overall"]["auc"]) < 1e-3
    # checkpoints hold the plain model's weights (no torch.compile "_orig_mod." prefix)
    assert tr.model.state_dict().keys() == eager.model.state_dict().keys()


def test_importing_seqctr_does_not_import_the_compiler():
    """Marking steps eager must not cost every CLI start and serving worker torch._dynamo's import (~1.7 s)."""
    code = ("import sys, seqctr.models, seqctr.training, seqctr.serving, seqctr.cli\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'\n"
            "from seqctr.ops.select import topk_select\nimport torch\n"
            "idx, m = topk_select(torch.tensor([[3., 1., 2.]]), torch.ones(1, 3, dtype=torch.bool), 2)\n"
            "assert idx.tolist() == [[0, 2]], idx\nassert 'torch._dynamo' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_compile_under_ddp_is_refused_before_anything_is_built(synth_ds, tmp_path, monkeypatch):
    from seqctr.errors import ConfigError
    from seqctr.training import distributed, trainer

    monkeypatch.setattr(trainer, "init_distributed", lambda device: (distributed.Dist(rank=0, world=2),
                                                                     torch.device("cpu")))
    built = []
    monkeypatch.setattr(trainer, "build_model", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError, match="train.compile: not supported under DDP"):
        Trainer(small_cfg(**{"train.compile": "true"}), synth_ds, tmp_path / "ddp", progress=False)
    assert not built, "refused before the model (and a DDP wrapper) was built"
