"""Every implementation of every target-attention op against its plain reference, over a grid of
shapes, in values and gradients (float64); no internals patched: each form is called by name."""
from __future__ import annotations

import itertools

import pytest
import torch

from seqctr import ops
from seqctr.ops import FORMS, Events, event_pool, event_scores, gather_positions

GRID = [  # B, H, T, D, K (query width <= D), U distinct rows
    (1, 1, 1, 4, 4, 1), (5, 1, 9, 8, 8, 4), (5, 3, 9, 8, 6, 30), (4, 2, 17, 6, 6, 17), (3, 4, 0, 5, 5, 3),
]


def _events(B, T, D, U, per_head=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(U, D, dtype=torch.float64, generator=g).requires_grad_()
    inv = torch.randint(0, U, (B, T), generator=g)
    if per_head:
        inv = torch.randint(0, U, (B, per_head, T), generator=g)
    return R, inv


def _grads(out, *leaves):
    out.sin().sum().backward()
    gs = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    return gs


@pytest.mark.parametrize("shape,per_head", list(itertools.product(GRID, (False, True))))
def test_every_form_of_scores_and_pooling_equals_the_reference(shape, per_head):
    B, H, T, D, K, U = shape
    R, inv = _events(B, T, D, U, per_head=H if per_head else None)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, K, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(B, H, T, dtype=torch.float64, generator=g).requires_grad_()
    want_s = event_scores(q, Events.dense_of(R[inv]), "reference")
    want_gs = _grads(want_s, q, R)
    want_p = event_pool(w, Events.dense_of(R[inv]), "reference")
    want_gp = _grads(want_p, w, R)
    for form in FORMS:
        for distinct in (True, False):
            def ready():
                ev = Events.distinct_of(R, inv) if distinct else Events.dense_of(R[inv])
                return ops.resolve(form, ev, H)
            ev, used = ready()
            assert used == form or (not distinct and form in ("distinct", "sparse") and used == "dense")
            s = event_scores(q, ev, used)
            torch.testing.assert_close(s, want_s, atol=1e-12, rtol=1e-10)
            for a, b in zip(_grads(s, q, R), want_gs):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
            p = event_pool(w, *ready())
            torch.testing.assert_close(p, want_p, atol=1e-12, rtol=1e-10)
            for a, b in zip(_grads(p, w, R), want_gp):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_events_select_and_window_as_gathering_the_dense_events():
    R, inv = _events(4, 11, 6, 7)
    dense = R[inv]
    idx = torch.stack([torch.randperm(11)[:5] for _ in range(4)])
    hidx = torch.stack([torch.stack([torch.randperm(11)[:3] for _ in range(2)]) for _ in range(4)])
    for ev in (Events.distinct_of(R, inv), Events.dense_of(dense)):
        assert torch.equal(ev.at(idx).dense(), gather_positions(dense, idx))
        assert torch.equal(ev.at(hidx).dense(), gather_positions(dense, hidx))
        assert ev.at(hidx).per_head and ev.at(hidx).positions == (4, 2, 3)
        assert torch.equal(ev.last(4).dense(), dense[:, -4:])
    with pytest.raises(ValueError):
        Events(x=dense, rows=R, index=inv)


def test_fast_form_follows_its_rule():
    R, inv = _events(6, 9, 8, 5)
    ev = Events.distinct_of(R, inv)
    assert ops.fast_form(Events.dense_of(R[inv]), 2) == "dense"
    assert ops.fast_form(ev, 2, scoring_for_topk=True) == "distinct"
    assert ops.fast_form(ev, 2) == "sparse"                              # 5 rows read 108 times
    assert ops.fast_form(Events.distinct_of(torch.randn(500, 8), inv), 2) == "dense"   # more rows than reads
    with pytest.raises(ValueError, match="expected one of"):
        ops.check_impl("sparce")


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_cached_head_ops_equal_the_reference_on_a_broadcast_cache(impl):
    """One user's cache expanded over candidates (stride 0): the ``fast`` forms read the shared rows."""
    g = torch.Generator().manual_seed(0)
    B, H, T, hd = 7, 3, 10, 4
    k1 = torch.randn(1, H, T, hd, dtype=torch.float64, generator=g)
    q = torch.randn(B, H, hd, dtype=torch.float64, generator=g)
    w = torch.randn(B, H, T, dtype=torch.float64, generator=g)
    idx = torch.randint(0, T, (B, H, 4), generator=g)
    shared, copy = k1.expand(B, -1, -1, -1), k1.expand(B, -1, -1, -1).contiguous()
    assert ops.shared(shared) is not None and ops.shared(copy) is None
    torch.testing.assert_close(ops.head_scores(q, shared, impl), ops.head_scores(q, copy, "reference"))
    torch.testing.assert_close(ops.head_pool(w, shared, impl), ops.head_pool(w, copy, "reference"))
    assert torch.equal(ops.head_rows(shared, idx, impl), ops.head_rows(copy, idx, "reference"))
    # the picks of a top-k (ascending, distinct per row) or an ESU's selection shared by the heads
    picks = torch.stack([torch.randperm(T, generator=g)[:4].sort().values for _ in range(B * H)]).view(B, H, 4)
    esu = torch.stack([torch.randperm(T, generator=g)[:4].sort().values for _ in range(B)]).unsqueeze(1).expand(B, H, 4)
    for at in (picks, esu, idx):                                     # idx: unsorted, repeats (the gather form)
        wn = torch.randn(B, H, 4, dtype=torch.float64, generator=g)
        wn[0, 0, 1] = 0.0                                              # a masked pick: weight 0
        torch.testing.assert_close(ops.head_scores(q, shared, impl, at),
                                   ops.head_scores(q, ops.head_rows(copy, at, "reference"), "reference"))
        torch.testing.assert_close(ops.head_pool(wn, shared, impl, at),
                                   ops.head_pool(wn, ops.head_rows(copy, at, "reference"), "reference"))
        both = ops.Picks(at)                                           # one pattern for the scores and the pool
        assert torch.equal(ops.head_scores(q, shared, impl, both), ops.head_scores(q, shared, impl, at))
        assert torch.equal(ops.head_pool(wn, shared, impl, both), ops.head_pool(wn, shared, impl, at))
        made = both.pattern(T)
        assert both.pattern(T) is made and (made is None) == (at is idx)   # made once; none for unsorted picks
    from seqctr.ops.attention import _shared_csr
    for at in (picks, esu):                                              # ascending per row: one CSR
        assert _shared_csr(ops.Picks(at), T, q.new_ones(at.shape)) is not None
    assert _shared_csr(ops.Picks(idx), T, q.new_ones(idx.shape)) is None        # not ascending: no CSR
    qg = q.clone().requires_grad_()                                   # autograd on: the gathers, with a gradient
    ops.head_scores(qg, shared, impl, picks).sum().backward()
    assert qg.grad is not None and qg.grad.abs().sum() > 0
    sel = (torch.stack([torch.randperm(T, generator=g)[:3] for _ in range(B)]), torch.rand(B, 3, generator=g) > 0.3)
    mask, select = ops.selection_as_mask(sel, shared, impl)
    if impl == "fast":                                                   # 4 x 3 >= 10: run as a mask
        want = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            want[b, sel[0][b][sel[1][b]]] = True
        assert select is None and torch.equal(mask, want)
    else:
        assert mask is None and select is sel


def test_set_impl_reaches_every_attention_of_a_model(synth_ds):
    from tests.models.test_models import make_model

    model = make_model(synth_ds, "twin")
    ops.set_impl(model, "reference")
    impls = {m.impl for m in model.modules() if hasattr(m, "impl")}
    assert impls == {"reference"}
    with pytest.raises(ValueError):
        ops.set_impl(model, "nope")
