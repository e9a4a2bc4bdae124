"""CollectiveKV: training gate and auxiliary losses by hand, inference lookup, switches, cache form."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqctr.nn import MultiHeadTargetAttention
from seqctr.nn.collective_kv import CollectiveKV, GateMeter, index_dtype, row_argmax


def test_training_gate_and_losses_match_hand_computation():
    torch.manual_seed(0)
    m = CollectiveKV(6, 6, dim=8, user_dim=2, pool_size=5, peak_weight=0.3, balance_weight=0.7).train()
    x = torch.randn(2, 4, 6)
    k, v, aux = m(x, x)
    logits = m.router_k(x)
    top, idx = logits.max(-1)
    want_k = torch.cat([torch.sigmoid(top).unsqueeze(-1) * m.pool_k[idx], F.silu(m.user_k(x))], -1)
    torch.testing.assert_close(k, want_k)                           # [collective, user] as the authors' code
    def losses(lg):
        t = lg.max(-1).values
        peak = -F.logsigmoid(t).mean()
        p = torch.softmax(lg, -1).mean((0, 1)).clamp_min(1e-9)
        return 0.3 * peak + 0.7 * (p * torch.log(p * 5)).sum()
    torch.testing.assert_close(aux, losses(logits) + losses(m.router_v(x)))
    aux.backward()
    assert m.router_k.weight.grad.abs().sum() > 0                   # the router learns through the gate


def test_without_the_balance_term_the_router_product_keeps_no_gradient_and_training_is_unchanged():
    """balance_weight 0 skips the [rows, m] softmax and the router product's backward; the outputs,
    the (peak-only) loss and every gradient equal a model whose balance term weighs 1e-12 (float64)."""
    torch.manual_seed(5)
    a = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=7, peak_weight=0.3, balance_weight=0.0).double().train()
    b = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=7, peak_weight=0.3, balance_weight=1e-12).double().train()
    b.load_state_dict(a.state_dict())
    x0 = torch.randn(3, 5, 6, dtype=torch.float64)
    res = []
    for m in (a, b):
        x = x0.clone().requires_grad_(True)
        k, v, aux = m(x, x)
        (k.sin().sum() + v.cos().sum() + 3 * aux).backward()
        res.append([k, v, aux, x.grad] + [p.grad for p in m.parameters()])
    for got, want in zip(*res):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert a.router_k.weight.grad.abs().sum() > 0                   # still learning through the gate
    with torch.no_grad():
        top = a.router_k(x0).max(-1).values
    peak = -F.logsigmoid(top).mean() - F.logsigmoid(a.router_v(x0).max(-1).values).mean()
    torch.testing.assert_close(res[0][2], 0.3 * peak.detach())


def test_inference_uses_argmax_without_gate_and_codes_reproduce_kv():
    torch.manual_seed(1)
    m = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=300, user_first=True).eval()
    x = torch.randn(3, 5, 6)
    k, v, aux = m(x, x)
    assert aux is None
    idx = m.router_v(x).argmax(-1)
    torch.testing.assert_close(v, torch.cat([F.silu(m.user_v(x)), m.pool_v[idx]], -1))   # user first
    codes = m.codes(x, x)
    assert codes["idx_k"].dtype == torch.int16 and codes["u_k"].shape == (3, 5, 1)
    k2, v2 = m.from_codes(codes)
    torch.testing.assert_close(k2, k)
    torch.testing.assert_close(v2, v)


@pytest.mark.parametrize("training", [False, True])
def test_gate_meter_is_the_masked_mean_of_the_training_gate_and_leaves_outputs_alone(training):
    """The meter's means equal sigmoid(top-1 logit) averaged by hand over the real events of every call
    (two modules, two calls, a mask and an unshared V), and the forward's outputs do not change."""
    torch.manual_seed(3)
    a = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=9).train(training)
    b = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=9, share_v=False).train(training)
    model = torch.nn.ModuleList([a, b])
    xs = [torch.randn(3, 5, 6) for _ in range(2)]
    mask = torch.rand(3, 5) > 0.4
    plain = [a(xs[0], xs[0], mask), b(xs[1], xs[1])]
    with GateMeter(model) as meter:
        metered = [a(xs[0], xs[0], mask), b(xs[1], xs[1])]
    for got, want in zip(metered, plain):
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
    a(xs[0], xs[0], mask)                                            # after the meter: not counted
    def gate(m, name, x):
        with torch.no_grad():
            return torch.sigmoid(getattr(m, f"router_{name}")(x).max(-1).values).double()
    gk = torch.cat([gate(a, "k", xs[0])[mask], gate(b, "k", xs[1]).flatten()])
    gv = gate(a, "v", xs[0])[mask]                                   # b's V is unshared: no gate
    means = meter.means()
    assert means["k"] == pytest.approx(float(gk.mean()), rel=1e-12)
    assert means["v"] == pytest.approx(float(gv.mean()), rel=1e-12)
    assert meter.totals()[1] == gk.numel() and meter.totals()[3] == gv.numel()
    assert GateMeter.means_of([0.0, 0.0, 1.0, 2.0]) == {"v": 0.5}    # no events: left out
    assert a._meter is None and b._meter is None                     # detached on exit


@pytest.mark.parametrize("user_first", [False, True])
def test_decode_without_gradients_equals_the_gather_and_join_and_follows_pool_updates(user_first):
    """``from_codes`` under ``no_grad`` (one gather from the padded pool, the user part written in place)
    equals ``join(pool[idx], user)`` exactly, for either order and a wider user part, and a changed pool
    (an optimiser step, ``load_state_dict``) is read, not the padded copy of the old one."""
    torch.manual_seed(2)
    m = CollectiveKV(6, 6, dim=8, user_dim=2, pool_size=40, user_first=user_first).eval()
    codes = m.codes(torch.randn(2, 7, 6), torch.randn(2, 7, 6))

    def reference():
        return [m._join(getattr(m, f"pool_{n}")[codes[f"idx_{n}"].long()], codes[f"u_{n}"]) for n in ("k", "v")]

    for _ in range(2):
        with torch.no_grad():
            got = m.from_codes(codes)
            assert all(torch.equal(a, b) for a, b in zip(got, reference()))
            m.pool_k.mul_(-2.0)                      # in place, as an optimiser step
    with torch.no_grad():
        m.load_state_dict({**m.state_dict(), "pool_v": torch.randn(40, 6)})
        assert all(torch.equal(a, b) for a, b in zip(m.from_codes(codes), reference()))


def test_sharing_switches_and_index_dtype():
    m = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=10, share_k=True, share_v=False).eval()
    codes = m.codes(torch.randn(1, 2, 6), torch.randn(1, 2, 6))
    assert set(codes) == {"u_k", "idx_k", "full_v"} and codes["full_v"].shape == (1, 2, 8)
    assert index_dtype(256) == torch.uint8 and index_dtype(10000) == torch.int16 and index_dtype(40000) == torch.int32
    with pytest.raises(ValueError):
        CollectiveKV(6, 6, dim=8, user_dim=8)


def test_aux_masking_switch_ignores_padding():
    torch.manual_seed(2)
    x = torch.randn(2, 4, 6)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    a = CollectiveKV(6, 6, dim=8, pool_size=5, mask_aux=True).train()
    b = CollectiveKV(6, 6, dim=8, pool_size=5, mask_aux=False).train()
    b.load_state_dict(a.state_dict())
    _, _, la = a(x, x, mask)
    _, _, lb = b(x, x, mask)
    assert not torch.allclose(la, lb)
    x2 = x.clone()
    x2[0, :2] = 100.0                                                # garbage in padded slots
    _, _, la2 = a(x2, x2, mask)
    torch.testing.assert_close(la2, la)                              # masked: padding cannot move it


def test_attention_with_collective_kv_serves_from_codes():
    torch.manual_seed(3)
    att = MultiHeadTargetAttention(16, 8, num_heads=2, collective={"user_dim": 1, "pool_size": 50},
                                   silu=True).eval()
    q, keys = torch.randn(4, 16), torch.randn(4, 7, 16)
    mask = torch.ones(4, 7, dtype=torch.bool)
    full = att(q, keys, mask).out
    k, v = att.kv_from_cache(att.cache_kv(keys))
    torch.testing.assert_close(att.attend(q, k, v, mask).out, full)


def test_weighted_mean_softmax_matches_autograd():
    """The hand-written backward of the balance term equals autograd's softmax backward."""
    from seqctr.nn.collective_kv import WeightedMeanSoftmax

    torch.manual_seed(0)
    logits = torch.randn(37, 11, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(37, dtype=torch.float64) > 0.3).double()
    g = torch.randn(11, dtype=torch.float64)
    got = WeightedMeanSoftmax.apply(logits, w)
    (gl,) = torch.autograd.grad(got, logits, g)
    want = w @ torch.softmax(logits, -1)
    (wl,) = torch.autograd.grad(want, logits, g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gl, wl)
    assert torch.autograd.gradcheck(lambda x: WeightedMeanSoftmax.apply(x, w), (logits,))


@pytest.mark.parametrize("mask_aux", [False, True])
def test_routing_distinct_rows_once_equals_routing_every_event(mask_aux):
    """``dedup`` (the router runs once per distinct event row) changes no output, loss or gradient,
    with repeated items, padding and masked auxiliary losses — the trained model is the same."""
    torch.manual_seed(4)
    table = torch.randn(6, 6, dtype=torch.float64)
    ids = torch.tensor([[0, 0, 3, 1, 3, 5], [2, 3, 3, 3, 1, 0], [0, 0, 0, 0, 4, 4]])
    mask = ids != 0                                                      # id 0 = padding, a repeated row
    a = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=7, dedup=True, mask_aux=mask_aux).double().train()
    b = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=7, dedup=False, mask_aux=mask_aux).double().train()
    b.load_state_dict(a.state_dict())
    outs, grads = [], []
    for m in (a, b):
        emb = table.clone().requires_grad_(True)
        x = emb[ids]
        k, v, aux = m(x, x, mask)
        (k.sin().sum() + v.cos().sum() + 3 * aux).backward()
        outs.append((k, v, aux))
        grads.append([emb.grad] + [p.grad for p in m.parameters()])
    for got, want in zip(outs[0] + tuple(grads[0]), outs[1] + tuple(grads[1])):
        torch.testing.assert_close(got, want)
    a.eval(), b.eval()
    x = table[ids]
    for got, want in zip(a.codes(x, x).values(), b.codes(x, x).values()):
        torch.testing.assert_close(got, want)


def test_routing_memo_equals_the_router_and_forgets_changed_weights():
    """Inference routing from the memo == the router's argmax, for rows seen before, new rows and
    repeats within one call; after a weight update (in place, as an optimiser step) or over its
    row budget the memo is dropped, never read stale."""
    torch.manual_seed(5)
    m = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=50, memo_rows=8).eval()
    plain = CollectiveKV(6, 6, dim=8, user_dim=1, pool_size=50, memo_rows=0).eval()
    plain.load_state_dict(m.state_dict())
    assert plain.memos == {} and set(m.memos) == {"k", "v"}
    rows = torch.randn(9, 6)

    def check(x):
        got, want = m.codes(x, x), plain.codes(x, x)
        for key in want:
            torch.testing.assert_close(got[key], want[key])
        torch.testing.assert_close(m.codes(x, x)["idx_k"].long(), m.router_k(x).argmax(-1))

    check(rows[torch.tensor([[0, 1, 2, 1]])])                    # new rows, one repeated
    assert len(m.memos["k"].table) == 3
    check(rows[torch.tensor([[2, 1, 3, 4], [0, 0, 5, 2]])])      # half known
    assert len(m.memos["k"].table) == 6
    with torch.no_grad():                                         # an optimiser-like in-place update
        m.router_k.weight.mul_(-1.0)
        plain.router_k.weight.mul_(-1.0)
    check(rows[torch.tensor([[0, 1, 2, 3, 4, 5]])])
    assert len(m.memos["k"].table) == 6                           # rebuilt from scratch, not added to
    check(rows.unsqueeze(0))                                      # 9 distinct rows: over the budget of 8
    assert len(m.memos["k"].table) <= 8
    m.load_state_dict(plain.state_dict())                         # same values, new version: still right
    check(rows.unsqueeze(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_row_argmax_equals_torch_argmax_with_ties_and_nan(dtype):
    """First index on ties, NaN as the largest — the NumPy path (float32/64) and torch's (bf16) alike."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (50, 30), generator=g).to(dtype)      # many ties
    x[3, 7] = float("nan")
    x[4, [2, 9]] = float("nan")
    x[5] = 1.0
    assert torch.equal(row_argmax(x), x.argmax(-1))
    assert row_argmax(x).dtype == torch.int64
    assert row_argmax(x)[3] == 7 and row_argmax(x)[4] == 2 and row_argmax(x)[5] == 0
    assert torch.equal(row_argmax(torch.zeros(0, 30, dtype=dtype)), torch.zeros(0, dtype=torch.long))
