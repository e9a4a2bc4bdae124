"""Every registered backbone: a training step, padding invariance, empty histories, weights."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from seqctr.config import ModelConfig
from seqctr.data import gather_batch
from seqctr.models import backbone_names, build_model

BACKBONES = backbone_names()


def make_model(ds, name, dropout=0.0):
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16, 8], dropout=dropout), ds.meta)


def left_pad(batch, extra):
    """The same batch with ``extra`` more padded slots on the left (their event times arbitrary:
    a padded slot's time must not matter either)."""
    B, T, F_ = batch.hist.shape
    hist = torch.cat([torch.zeros(B, extra, F_, dtype=batch.hist.dtype), batch.hist], 1)
    mask = torch.cat([torch.zeros(B, extra, dtype=torch.bool), batch.mask], 1)
    times = {}
    if batch.hist_time is not None:
        junk = torch.randint(0, 10**9, (B, extra), generator=torch.Generator().manual_seed(extra))
        times = {"hist_time": torch.cat([junk, batch.hist_time], 1)}
    return dataclasses.replace(batch, hist=hist, mask=mask, **times)


def test_din_is_registered():
    assert "din" in BACKBONES


@pytest.mark.parametrize("name", BACKBONES)
def test_train_step_reduces_loss_on_fixed_batch(synth_ds, name):
    model = make_model(synth_ds, name)
    batch = gather_batch(synth_ds, synth_ds.indices("train")[:64], max_len=30)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = model(batch)
        loss = model.loss(out, batch.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert out.logits.shape == (64,)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_padding_invariance(synth_ds, name, mode):
    model = make_model(synth_ds, name)  # dropout 0: train mode is deterministic
    getattr(model, mode)()
    batch = gather_batch(synth_ds, synth_ds.indices("test"), max_len=25)
    with torch.no_grad():
        a = model(batch, need_weights=True)
        b = model(left_pad(batch, 13), need_weights=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    for branch, w in a.attention.items():
        torch.testing.assert_close(w, b.attention[branch][..., 13:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", BACKBONES)
def test_empty_history_gives_finite_prediction(synth_ds, name):
    model = make_model(synth_ds, name).eval()
    batch = gather_batch(synth_ds, synth_ds.indices("test")[:4], max_len=10)
    empty = dataclasses.replace(batch, hist=torch.zeros(4, 0, batch.hist.shape[2], dtype=torch.long),
                                mask=torch.zeros(4, 0, dtype=torch.bool), seq_len=torch.zeros(4, dtype=torch.long),
                                hist_time=torch.zeros(4, 0, dtype=torch.long))
    all_pad = dataclasses.replace(batch, hist=torch.zeros_like(batch.hist), mask=torch.zeros_like(batch.mask),
                                  seq_len=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        e = model(empty).logits
        p = model(all_pad).logits
    assert torch.isfinite(e).all()
    torch.testing.assert_close(e, p)


@pytest.mark.parametrize("name", BACKBONES)
def test_attention_weights_only_on_request(synth_ds, name):
    model = make_model(synth_ds, name).eval()
    batch = gather_batch(synth_ds, synth_ds.indices("test")[:5], max_len=10)
    with torch.no_grad():
        assert model(batch).attention == {}
        att = model(batch, need_weights=True).attention
    assert att, "attention weights requested but none returned"
    for w in att.values():
        assert w.dim() == 3 and w.shape[0] == 5 and w.shape[-1] <= batch.mask.shape[1]


def _with_lain():
    from seqctr.models.base import _REGISTRY

    return [(n, False) for n in BACKBONES] + [(n, True) for n in BACKBONES if not _REGISTRY[n].lain_unsupported]


@pytest.mark.parametrize("name,lain", _with_lain())
def test_every_trainable_parameter_gets_a_gradient(synth_ds, name, lain):
    """DDP (find_unused_parameters=False, the fast setting) needs a gradient for every trainable
    parameter on every step: a parameter the loss never reaches would hang or fail the second step."""
    cfg = ModelConfig(name=name, embedding_dim=8, mlp_hidden=[16, 8], dropout=0.0,
                      lain={"enabled": True} if lain else {})
    torch.manual_seed(0)
    model = build_model(cfg, synth_ds.meta)
    model.train()
    batch = gather_batch(synth_ds, synth_ds.indices("train")[:64], max_len=30)
    model.loss(model(batch), batch.label).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_full_history_is_embedded_only_by_backbones_that_read_it(synth_ds, mode):
    """``CTRModel`` passes ``hist=None``: SIM, TWIN, ETA, SDIM and DIEN work from the distinct events
    and never look up the ``[B, T]`` history; DIN reads it, and it is embedded exactly once."""
    batch = gather_batch(synth_ds, synth_ds.indices("train")[:32], max_len=30)
    for name, full_lookups in (("sim", 0), ("twin", 0), ("eta", 0), ("sdim", 0), ("dien", 0), ("din", 1)):
        model = getattr(make_model(synth_ds, name), mode)()
        shapes, items = [], model.embedding.items
        model.embedding.items = lambda ids: shapes.append(tuple(ids.shape)) or items(ids)  # noqa: B023
        with torch.set_grad_enabled(mode == "train"):
            model(batch)
        assert shapes.count(tuple(batch.hist.shape)) == full_lookups, (name, shapes)


def test_seq_inputs_is_a_plain_value():
    """Reading a field computes nothing; ``events()`` is the distinct rows when made, else ``hist``."""
    from seqctr.models.base import SeqInputs, distinct_rows

    ids = torch.randint(0, 5, (2, 3, 1))
    embed = lambda t: t.float() * 2                                      # noqa: E731
    x = SeqInputs(target=torch.zeros(2, 1), hist=None, mask=ids[..., 0] > 0, seq_len=torch.tensor([3, 3]),
                  hist_ids=ids, rows=distinct_rows(ids, embed))
    assert x.hist is None and x.events().is_distinct
    assert torch.equal(x.events().dense(), embed(ids))
    y = SeqInputs(target=torch.zeros(2, 1), hist=embed(ids), mask=x.mask, seq_len=x.seq_len)
    assert not y.events().is_distinct and y.events().x is y.hist
    with pytest.raises(TypeError):
        SeqInputs(target=torch.zeros(2, 1), mask=x.mask, seq_len=x.seq_len)   # hist is a required field
