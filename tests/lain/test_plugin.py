"""LAIN: switches, temperature law, prompts survive masking and top-k, all-off == bare backbone."""
from __future__ import annotations

import pytest
import torch

from seqctr.config import ModelConfig
from seqctr.data import gather_batch
from seqctr.errors import ConfigError
from seqctr.lain import LAIN, LainConfig
from seqctr.models import build_model
from seqctr.nn import AttentionCondition, MultiHeadTargetAttention
from tests.models.test_long_sequence import inputs

LAIN_BACKBONES = ["din", "dien", "sim", "eta", "sdim", "twin"]


def model(ds, name, lain=None, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16], dropout=0.0, lain=lain or {}),
                       ds.meta).eval()


@pytest.mark.parametrize("name", LAIN_BACKBONES)
def test_all_switches_off_is_exactly_the_bare_backbone(synth_ds, name):
    batch = gather_batch(synth_ds, synth_ds.indices("test"), max_len=30)
    bare = model(synth_ds, name)
    off = model(synth_ds, name, {"enabled": True, "prompts": 0, "qk_condition": False, "temperature": False})
    with torch.no_grad():
        torch.testing.assert_close(off(batch).logits, bare(batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", LAIN_BACKBONES)
def test_full_lain_changes_outputs_and_keeps_padding_invariance(synth_ds, name):
    from tests.models.test_models import left_pad

    batch = gather_batch(synth_ds, synth_ds.indices("test"), max_len=30)
    bare = model(synth_ds, name)
    full = model(synth_ds, name, {"enabled": True, "hidden": 32})
    with torch.no_grad():
        a = full(batch).logits
        assert not torch.allclose(a, bare(batch).logits)
        torch.testing.assert_close(full(left_pad(batch, 9)).logits, a, atol=1e-5, rtol=1e-5)


def test_temperature_above_one_for_short_and_falling_with_length():
    lain = LAIN(LainConfig(enabled=True, prompts=0, qk_condition=False), item_dim=8, feature_dim=8, l0=100.0)
    L = torch.tensor([0, 1, 10, 50, 99, 100, 150, 400, 3000])
    tau = lain.temperature(L)
    assert (tau[L < 100] > 1).all()
    assert (tau[1:] < tau[:-1]).all()                    # strictly decreasing in L
    assert tau[L == 100].item() == pytest.approx(1.25)   # 1 + sigmoid(0) * 0.5
    assert 1 <= tau[-1] < 1.01                           # long users: almost plain softmax
    g = torch.autograd.grad(tau.sum(), [lain.gamma_raw, lain.beta_raw])
    assert all(x.abs() > 0 for x in g)                   # gamma and beta are learnable


def test_temperature_stays_above_one_whatever_training_does_to_gamma_and_beta():
    """tau > 1 by construction: however far an optimiser pushes the learned values (the paper's
    unconstrained form reaches tau <= 0 with gamma below -1 / sigmoid), and it keeps falling with L."""
    lain = LAIN(LainConfig(enabled=True, prompts=0, qk_condition=False), item_dim=8, feature_dim=8, l0=100.0)
    L = torch.tensor([0, 1, 10, 99, 100, 400, 3000])
    for raw_g in (-50.0, -3.0, 0.0, 3.0, 50.0):
        for raw_b in (-50.0, -3.0, 0.0, 3.0):
            with torch.no_grad():
                lain.gamma_raw.fill_(raw_g)
                lain.beta_raw.fill_(raw_b)
            tau = lain.temperature(L)
            assert torch.isfinite(tau).all() and (tau >= 1).all() and (tau <= 1 + lain.gamma + 1e-6).all()
            assert (tau[1:] <= tau[:-1]).all()
    # gradient steps that drive gamma down keep it positive
    with torch.no_grad():
        lain.gamma_raw.fill_(0.0)
    opt = torch.optim.SGD([lain.gamma_raw], lr=10.0)
    for _ in range(50):
        opt.zero_grad()
        lain.temperature(L).sum().backward()          # minimising tau pushes gamma towards 0
        opt.step()
    assert lain.gamma.item() > 0 and (lain.temperature(L) >= 1).all()


def test_weights_saved_with_the_unconstrained_gamma_and_beta_load_to_the_same_temperature():
    lain = LAIN(LainConfig(enabled=True, prompts=0, qk_condition=False), item_dim=8, feature_dim=8, l0=80.0)
    state = {k: v for k, v in lain.state_dict().items() if not k.endswith("_raw")}
    state["gamma"], state["beta"] = torch.tensor(0.73), torch.tensor(0.02)    # the old names and meaning
    fresh = LAIN(LainConfig(enabled=True, prompts=0, qk_condition=False), item_dim=8, feature_dim=8, l0=1.0)
    fresh.load_state_dict(state)
    L = torch.tensor([0.0, 40.0, 80.0, 500.0])
    expect = 1 + torch.sigmoid(-0.02 * (L - 80.0)) * 0.73
    torch.testing.assert_close(fresh.temperature(L), expect)


@pytest.mark.parametrize("topk", [1, 3, 50])
def test_prompts_are_never_masked_or_dropped_by_topk(topk):
    torch.manual_seed(0)
    att = MultiHeadTargetAttention(16, 8, num_heads=2).eval()
    x = inputs()
    prompts = torch.randn(5, 3, 16)
    res = att(x.target, x.hist, x.mask, AttentionCondition(prompts=prompts), topk=topk)
    assert res.prompt_weights.shape == (5, 2, 3) and (res.prompt_weights > 0).all()   # every row, row 2 is empty
    kept = (res.weights > 0).sum(-1)
    assert (kept <= topk).all()
    total = res.prompt_weights.sum(-1) + res.weights.sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total))
    # an empty history now attends to the prompts alone
    assert res.weights[2].sum() == 0 and torch.isfinite(res.out).all() and res.out[2].abs().sum() > 0


@pytest.mark.parametrize("name", ["sim", "eta", "twin"])
def test_two_stage_prompts_come_after_selection(synth_ds, name):
    """Even with top-1 retrieval the prompts reach the long branch: outputs depend on them."""
    m = model(synth_ds, name, {"enabled": True, "qk_condition": False, "temperature": False, "hidden": 16})
    m.backbone.topk = 1
    batch = gather_batch(synth_ds, synth_ds.indices("test")[:8], max_len=30)
    with torch.no_grad():
        a = m(batch).logits
        m.lain.prompt[-1].bias.add_(1.0)                 # move the prompts only
        b = m(batch).logits
    assert not torch.allclose(a, b)


def test_key_conditioning_alone_is_a_no_op_in_softmax_attention():
    """Documented property: one vector added to every key shifts all scores equally."""
    torch.manual_seed(0)
    att = MultiHeadTargetAttention(16, 8, num_heads=2).eval()
    att.enable_condition(4)
    x = inputs()
    e = torch.randn(5, 4)
    with torch.no_grad():
        att.q_len.weight.zero_()
        base = att(x.target, x.hist, x.mask)
        shifted = att(x.target, x.hist, x.mask, AttentionCondition(qk=e))
    torch.testing.assert_close(shifted.weights, base.weights)


def test_branches_switch_and_unsupported_backbone(synth_ds):
    m = model(synth_ds, "sim", {"enabled": True, "branches": ["long"]})
    assert m.backbone.short_attention.q_len is None and m.backbone.long_attention.q_len is not None
    cond = m.lain(torch.tensor([3, 300]))
    assert set(cond) == {"long"}
    with pytest.raises(ConfigError, match="hstu"):
        model(synth_ds, "hstu", {"enabled": True})
    with pytest.raises(ConfigError, match="branches"):
        LainConfig.from_dict({"branches": ["middle"]})


def test_parameter_overhead_is_reported(synth_ds):
    from seqctr.experiments.lain_overhead import parameter_overhead

    ov = parameter_overhead(ModelConfig(name="twin", embedding_dim=8, mlp_hidden=[16], lain={"enabled": True}),
                            synth_ds.meta)
    bare = sum(p.numel() for p in model(synth_ds, "twin").parameters())
    assert ov["bare_parameters"] == bare
    assert ov["lain_parameters"] > bare
    assert ov["parameter_ratio"] == pytest.approx(ov["lain_parameters"] / bare - 1)


def test_l0_is_the_sample_mean_the_user_mean_or_a_number(synth_ds):
    """``model.lain.l0``: samples (the default), users (each user once) or a fixed number; it is a
    buffer of the model, so a served model keeps its trained L0."""
    import numpy as np
    import pytest

    from seqctr.config import ModelConfig
    from seqctr.errors import ConfigError
    from seqctr.models import build_model

    tr = synth_ds.indices("train")
    longest = {}
    for u, L in zip(synth_ds.sample_user[tr], synth_ds.sample_pos[tr]):
        longest[int(u)] = max(longest.get(int(u), 0), int(L))
    assert synth_ds.meta.mean_user_len == pytest.approx(np.mean(list(longest.values())))
    assert synth_ds.meta.mean_train_len == pytest.approx(synth_ds.sample_pos[tr].mean())
    for l0, want in (("samples", synth_ds.meta.mean_train_len), ("users", synth_ds.meta.mean_user_len),
                     (37.5, 37.5)):
        m = build_model(ModelConfig(name="din", embedding_dim=8, mlp_hidden=[8], lain={"enabled": True, "l0": l0}),
                        synth_ds.meta)
        assert float(m.lain.L0) == pytest.approx(want)
        assert "lain.L0" in m.state_dict()
    with pytest.raises(ConfigError, match="l0"):
        build_model(ModelConfig(name="din", lain={"enabled": True, "l0": "median"}), synth_ds.meta)


def test_prompt_scale_starts_prompts_at_the_items_size(synth_ds):
    import torch

    from seqctr.config import ModelConfig
    from seqctr.models import build_model

    def prompt_norm(scale):
        torch.manual_seed(0)
        m = build_model(ModelConfig(name="twin", embedding_dim=8, mlp_hidden=[8],
                                    options={"topk": 4, "short_seq_len": 4, "attention_dim": 8},
                                    lain={"enabled": True, "prompt_scale": scale}), synth_ds.meta)
        return m, m.lain(torch.tensor([3, 40]))["short"].prompts.norm(dim=-1).mean()

    plain, n1 = prompt_norm(1.0)
    small, n2 = prompt_norm(1e-3)
    assert torch.isclose(n2, n1 * 1e-3, rtol=1e-4)
    assert "lain.prompt_scale" in small.state_dict() and "lain.prompt_scale" not in plain.state_dict()
    assert small.lain.prompt_scale.requires_grad, "learnable"
