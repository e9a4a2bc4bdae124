"""The hand-written GRU/AUGRU recurrence == torch.nn.GRU / autograd, values and gradients."""
from __future__ import annotations

import pytest
import torch

from seqctr.ops.recurrence import _forward, gated_recurrence, gru


def test_gru_equals_torch_gru_values_and_gradients():
    torch.manual_seed(0)
    ref = torch.nn.GRU(6, 5, batch_first=True)
    x = torch.randn(3, 7, 6, requires_grad=True)
    h0 = torch.randn(3, 5, requires_grad=True)
    want, _ = ref(x, h0.unsqueeze(0))
    got = gru(x, ref, h0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    w = torch.randn_like(want)
    g_want = torch.autograd.grad((want * w).sum(), [x, h0, *ref.parameters()])
    g_got = torch.autograd.grad((got * w).sum(), [x, h0, *ref.parameters()])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _args(att: bool):
    torch.manual_seed(1)
    B, T, H = 3, 5, 4
    d = dict(dtype=torch.float64, requires_grad=True)
    return (torch.randn(B, T, 3 * H, **d), torch.randn(B, H, **d), torch.randn(3 * H, H, **d),
            torch.randn(3 * H, **d), torch.rand(B, T, **d) if att else None)


def test_backward_passes_gradcheck_gru_and_augru():
    for att in (False, True):
        args = _args(att)
        assert torch.autograd.gradcheck(lambda *a: gated_recurrence(*a), args, atol=1e-6)


def test_backward_equals_autograd_through_the_forward_loop():
    """The fused backward against autograd run over the very same forward ops."""
    for att in (False, True):
        args = _args(att)
        w = torch.randn(3, 5, 4, dtype=torch.float64)
        ins = [a for a in args if a is not None]
        want = torch.autograd.grad((_forward(*args, save=False)[0] * w).sum(), ins)
        got = torch.autograd.grad((gated_recurrence(*args) * w).sum(), ins)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


def test_zero_attention_keeps_the_state_exactly():
    """AUGRU: a_t = 0 leaves h unchanged bit for bit (how padded steps are skipped)."""
    gx, h0, w_h, b_h, att = (a.detach().float() for a in _args(True))
    att[:, 2:] = 0
    states = gated_recurrence(gx, h0, w_h, b_h, att)
    assert torch.equal(states[:, 2], states[:, 1]) and torch.equal(states[:, -1], states[:, 1])
    assert not torch.equal(states[:, 1], states[:, 0])


def test_indexed_rows_equal_the_gathered_input_gates():
    """``gx [U, 3H]`` rows read through ``index [B, T]`` == the materialised ``gx[index]``:
    states and every gradient (the rows' gradient is the per-step gradients added per row)."""
    for att in (False, True):
        gx_full, h0, w_h, b_h, a = _args(att)
        torch.manual_seed(2)
        rows = torch.randn(4, gx_full.shape[-1], dtype=torch.float64, requires_grad=True)
        index = torch.randint(0, 4, gx_full.shape[:2])
        index[0, :] = 1                                                    # a row read at every step
        w = torch.randn(3, 5, 4, dtype=torch.float64)
        ins = [rows, h0, w_h, b_h] + ([a] if att else [])
        got = gated_recurrence(rows, h0, w_h, b_h, a, index=index)
        want = gated_recurrence(rows[index], h0, w_h, b_h, a)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
        g_got = torch.autograd.grad((got * w).sum(), ins)
        g_want = torch.autograd.grad((want * w).sum(), ins)
        for x, y in zip(g_got, g_want):
            torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)
        assert torch.autograd.gradcheck(lambda r, *p: gated_recurrence(r, *p, index=index),
                                        (rows, h0, w_h, b_h, a), atol=1e-6)
        with torch.no_grad():                                              # the inference loop too
            torch.testing.assert_close(gated_recurrence(rows, h0, w_h, b_h, a, index=index), want,
                                       atol=1e-12, rtol=1e-10)


def test_gru_over_rows_equals_gru_over_the_sequence():
    torch.manual_seed(3)
    ref = torch.nn.GRU(6, 5, batch_first=True)
    rows = torch.randn(9, 6, requires_grad=True)
    index = torch.randint(0, 9, (3, 7))
    torch.testing.assert_close(gru(rows, ref, index=index), gru(rows[index], ref), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gru(rows, ref, index=index), ref(rows[index])[0], atol=1e-6, rtol=1e-5)


def test_tanh_form_and_final_state_only():
    """The CPU ``tanh`` form is within 2e-7 of float64 tanh, in place or under autograd; ``final``
    returns exactly the last state, with or without autograd."""
    from seqctr.ops.recurrence import _tanh

    x = torch.linspace(-30, 30, 200_001)
    want = torch.tanh(x.double())
    assert (_tanh(x.clone()).double() - want).abs().max() <= 2e-7
    assert (_tanh(x.clone().requires_grad_()).double() - want).abs().max() <= 2e-7
    gx, h0, w_h, b_h, att = (a.detach().float() for a in _args(True))
    full = gated_recurrence(gx, h0, w_h, b_h, att)
    assert torch.equal(gated_recurrence(gx, h0, w_h, b_h, att, final=True), full[:, -1])
    w_h.requires_grad_()
    last = gated_recurrence(gx, h0, w_h, b_h, att, final=True)
    assert last.requires_grad and torch.equal(last.detach(), full[:, -1])


def test_dien_in_the_reference_recurrence_equals_the_fast_one(synth_ds):
    """``set_impl(model, "reference")`` reaches DIEN's extractor and AUGRU: the plain autograd loop
    gives the loss and every gradient of the hand-written backward (float64)."""
    from seqctr.data import gather_batch
    from seqctr.ops import set_impl
    from tests.models.test_models import make_model

    batch = gather_batch(synth_ds, synth_ds.indices("train")[:48], max_len=30)
    grads = {}
    for impl in ("fast", "reference"):
        torch.manual_seed(0)
        model = set_impl(make_model(synth_ds, "dien").double().train(), impl)
        model.loss(model(batch), batch.label.double()).backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["fast"].keys() == grads["reference"].keys() and len(grads["fast"]) > 5
    for n in grads["fast"]:
        torch.testing.assert_close(grads["fast"][n], grads["reference"][n], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("lengths", [[9, 0, 3, 9, 1, 5, 5], [4, 0, 3, 2, 1, 4, 0]])   # max(L) = T, < T
def test_lengths_step_each_row_over_its_own_events_packed_or_not(lengths):
    """With ``lengths``: states past a row's length are 0 and ``final`` is the state after its last
    step (``h0`` for an empty row); the packed form (no autograd, ``fast``), the reference loop and the
    autograd form all equal each row run alone over its own steps — dense and indexed input gates,
    GRU and AUGRU, float64."""
    torch.manual_seed(0)
    B, T, H, U = 7, 9, 5, 13
    L = torch.tensor(lengths)
    f64 = dict(dtype=torch.float64)
    h0, w, b = torch.randn(B, H, **f64), torch.randn(3 * H, H, **f64), torch.randn(3 * H, **f64)
    for indexed in (False, True):
        gx = torch.randn(U, 3 * H, **f64) if indexed else torch.randn(B, T, 3 * H, **f64)
        index = torch.randint(0, U, (B, T)) if indexed else None
        for att in (None, torch.rand(B, T, **f64)):
            for final in (False, True):
                alone = []
                for i in range(B):
                    n = int(L[i])
                    g = gx[index[i, :n]].unsqueeze(0) if indexed else gx[i:i + 1, :n]
                    a = None if att is None else att[i:i + 1, :n]
                    if n:
                        o = gated_recurrence(g, h0[i:i + 1], w, b, a, final=final, impl="reference")
                    else:
                        o = h0[i:i + 1] if final else torch.zeros(1, 0, H, **f64)
                    alone.append(o if final else torch.cat([o, torch.zeros(1, T - n, H, **f64)], 1))
                alone = torch.cat(alone)
                with torch.no_grad():
                    packed = gated_recurrence(gx, h0, w, b, att, index, final, "fast", L)
                ref = gated_recurrence(gx, h0, w, b, att, index, final, "reference", L)
                grad = gated_recurrence(gx.requires_grad_(), h0, w, b, att, index, final, "fast", L)
                gx.requires_grad_(False)
                for got in (packed, ref, grad.detach()):
                    torch.testing.assert_close(got, alone, atol=1e-12, rtol=1e-10)
