"""train.precision: bf16 autocast is an option (fp32 stays exact and the default), every backbone
trains under it, and its numbers stay close to float32's without being float32's."""
from __future__ import annotations

import pytest
import torch

from seqctr.config import ModelConfig, RunConfig
from seqctr.data import BatchLoader, gather_batch
from seqctr.errors import ConfigError
from seqctr.models import backbone_names, build_model
from seqctr.ops.kernels import matvec, vecmat
from seqctr.training.trainer import autocast, make_optimizer, predict, train_step


def test_fp32_is_the_default_and_unknown_precisions_are_refused():
    assert RunConfig().train.precision == "fp32"
    with pytest.raises(ConfigError, match="train.precision"):
        autocast("fp16")
    with autocast("fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast("bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_batched_products_take_mixed_dtypes_under_autocast_with_float32_gradients():
    torch.manual_seed(0)
    A = torch.randn(3, 5, 4, requires_grad=True)
    X = torch.randn(3, 4, 1, requires_grad=True)
    W = torch.randn(3, 1, 5, requires_grad=True)
    with autocast("bf16"):
        s = matvec(A, X.to(torch.bfloat16))
        p = vecmat(W.to(torch.bfloat16), A)
        (s.float().sum() + p.float().square().sum()).backward()
    ref = [t.detach().clone().requires_grad_() for t in (A, X, W)]
    (matvec(ref[0], ref[1]).sum() + vecmat(ref[2], ref[0]).square().sum()).backward()
    for t, r in zip((A, X, W), ref):
        assert t.grad.dtype == torch.float32
        torch.testing.assert_close(t.grad, r.grad, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("name", backbone_names())
def test_every_backbone_trains_under_bf16_close_to_fp32(synth_ds, name):
    batch = gather_batch(synth_ds, synth_ds.indices("train")[:96], max_len=20)
    losses = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16], dropout=0.0), synth_ds.meta)
        opt = make_optimizer(model, 1e-3, 0.0)
        losses[prec] = [train_step(model, opt, batch, 10.0, precision=prec) for _ in range(4)]
        assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay float32"
    assert losses["fp32"] != losses["bf16"], "bf16 really ran"
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(a - b) < 0.02 * max(abs(a), 1.0)


def test_predict_under_bf16_is_close_to_fp32(synth_ds):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="din", embedding_dim=8, mlp_hidden=[16]), synth_ds.meta)
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.normal_(0, 0.5)
    loader = BatchLoader(synth_ds, "test", max_len=20, batch_size=64, shuffle=False)
    a = predict(model, loader, torch.device("cpu"))["prob"]
    b = predict(model, loader, torch.device("cpu"), precision="bf16")["prob"]
    assert abs(a - b).max() < 0.02 and abs(a - b).max() > 0
