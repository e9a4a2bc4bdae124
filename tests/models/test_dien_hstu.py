"""DIEN: packed recurrence == per-row reference; auxiliary loss switch. HSTU: causal, no leaks."""
from __future__ import annotations

import torch

from seqctr.models.base import SeqInputs
from seqctr.models.dien import AUGRU, DIEN, left_align
from seqctr.models.hstu import HSTU
from tests.models.test_long_sequence import inputs


def test_left_align_moves_events_to_front():
    x = inputs()
    seq, m = left_align(x.hist, x.mask)
    for b in range(5):
        n = int(x.mask[b].sum())
        torch.testing.assert_close(seq[b, :n], x.hist[b, x.mask[b]])
        assert m[b, :n].all() and not m[b, n:].any() and (seq[b, n:] == 0).all()


def test_augru_matches_per_row_reference():
    torch.manual_seed(0)
    cell = AUGRU(6, 5)
    x = torch.randn(4, 7, 6)
    att = torch.rand(4, 7)
    lengths = torch.tensor([7, 0, 3, 5])
    got = cell(x, att, lengths)
    for b in range(4):
        h = torch.zeros(5)
        for t in range(int(lengths[b])):
            gx = cell.x2h(x[b, t]).chunk(3)
            gh = cell.h2h(h).chunk(3)
            r = torch.sigmoid(gx[0] + gh[0])
            u = torch.sigmoid(gx[1] + gh[1]) * att[b, t]
            h = (1 - u) * h + u * torch.tanh(gx[2] + r * gh[2])
        torch.testing.assert_close(got[b], h, atol=1e-6, rtol=1e-5)


def test_dien_extractor_equals_gru_on_each_row_alone():
    torch.manual_seed(0)
    m = DIEN(16).eval()
    x = inputs()
    seq, mask = left_align(x.hist, x.mask)
    states, L = m.extract(seq, mask)
    for b in range(5):
        n = int(L[b])
        if n:
            ref, _ = m.gru(x.hist[b, x.mask[b]].unsqueeze(0))
            torch.testing.assert_close(states[b, :n], ref[0], atol=1e-6, rtol=1e-5)
        assert (states[b, n:] == 0).all()


def test_dien_auxiliary_loss_is_switchable():
    torch.manual_seed(0)
    x = inputs(need_weights=False)
    off = DIEN(16).train()(x)
    assert off.aux_loss is None
    on_model = DIEN(16, aux_loss=True, aux_loss_weight=0.5).train()
    on = on_model(x)
    assert on.aux_loss is not None and torch.isfinite(on.aux_loss) and on.aux_loss > 0
    on.aux_loss.backward()
    assert on_model.gru.weight_ih_l0.grad.abs().sum() > 0   # it trains the extractor
    assert DIEN(16, aux_loss=True).eval()(x).aux_loss is None  # not at inference


def test_hstu_is_causal():
    """Changing event j changes no state at positions < j."""
    torch.manual_seed(0)
    m = HSTU(16, num_layers=2, num_heads=2, max_len=32).eval()
    x = inputs()
    base, _ = m.encode(x)
    j = 8
    hist = x.hist.clone()
    hist[:, j] += torch.randn(5, 16)
    x2 = SeqInputs(target=x.target, hist=hist * x.mask.unsqueeze(-1), mask=x.mask, seq_len=x.seq_len)
    changed, _ = m.encode(x2)
    torch.testing.assert_close(changed[:, :j], base[:, :j])
    assert not torch.allclose(changed[0, j:], base[0, j:])   # row 0 has event j: later states move


def test_hstu_target_sees_whole_history_but_history_never_sees_target():
    torch.manual_seed(0)
    m = HSTU(16, num_layers=2).eval()
    x = inputs()
    base, w = m.encode(x, need_weights=True)
    x2 = SeqInputs(target=x.target + 1.0, hist=x.hist, mask=x.mask, seq_len=x.seq_len)
    changed, _ = m.encode(x2)
    torch.testing.assert_close(changed[:, :-1], base[:, :-1])
    assert (w[..., :-1, -1] == 0).all()                      # no history row attends to the target
    T = x.hist.shape[1]
    assert (w[:, :, -1, :T][~x.mask.unsqueeze(1).expand(-1, 2, -1)] == 0).all()   # nor to padding


def test_hstu_target_only_last_layer_equals_full_encode():
    torch.manual_seed(0)
    m = HSTU(16, num_layers=3).eval()
    x = inputs()
    full, w_full = m.encode(x, need_weights=True)
    out = m(x)
    torch.testing.assert_close(out.vector, m.norm_out(full[:, -1]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attention["hstu"], w_full[:, :, -1, :-1], atol=1e-6, rtol=1e-5)


def test_dien_auxiliary_loss_skips_lain_prompts(synth_ds, monkeypatch):
    """With LAIN, the prompt tokens open the extractor's sequence; the next-event loss must use the
    events only (no prompt predicted, none predicting)."""
    from seqctr.config import ModelConfig
    from seqctr.data import gather_batch
    from seqctr.models import build_model

    cfg = ModelConfig(name="dien", embedding_dim=8, mlp_hidden=[16], options={"aux_loss": True},
                      lain={"enabled": True, "prompts": 3, "hidden": 16})
    model = build_model(cfg, synth_ds.meta).train()
    seen, original = {}, DIEN.auxiliary_loss

    def spy(self, states, seq, mask):
        seen.update(states=states, seq=seq, mask=mask)
        return original(self, states, seq, mask)

    monkeypatch.setattr(DIEN, "auxiliary_loss", spy)
    batch = gather_batch(synth_ds, synth_ds.indices("train")[:16], max_len=20)
    out = model(batch)
    seq, mask = left_align(model.embedding.items(batch.hist), batch.mask)
    assert seen["seq"].shape[1] == batch.hist.shape[1], "no prompt rows"
    torch.testing.assert_close(seen["seq"], seq)
    assert torch.equal(seen["mask"], mask) and seen["states"].shape[1] == seq.shape[1]
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)


def test_hstu_shared_bias_is_one_row_for_every_head():
    """The reference's relative-position bias: one row shared by all heads, N(0, 0.02) at init. A
    per-head model whose rows all equal that row computes exactly the same thing."""
    torch.manual_seed(0)
    shared = HSTU(item_dim=16, num_heads=2, max_len=16)
    for blk in shared.blocks:
        assert blk.rab.shape == (1, 17)
        assert 0.005 < float(blk.rab.detach().std()) < 0.05
    per_head = HSTU(item_dim=16, num_heads=2, max_len=16, shared_bias=False, bias_init_std=0.0)
    assert all(blk.rab.shape == (2, 17) and not blk.rab.any() for blk in per_head.blocks)
    state = {k: (v.expand(2, -1).clone() if k.endswith((".rab", ".ts_w")) else v) for k, v in shared.state_dict().items()}
    per_head.load_state_dict(state)
    shared.eval(), per_head.eval()
    x = inputs()
    torch.testing.assert_close(shared(x).vector, per_head(x).vector, rtol=0, atol=0)


def test_dien_extractor_over_distinct_events_equals_the_sequence_path():
    """With ids known, DIEN's extractor reads its input gates from the batch's distinct events
    (and LAIN's prompts) as rows: the same vector, auxiliary loss and every table, prompt and
    parameter gradient as the left-aligned ``[B, T, D]`` path, in float64."""
    from seqctr.nn import AttentionCondition
    from tests.models.test_long_sequence import _trainable_inputs

    for P in (0, 2):
        torch.manual_seed(0)
        m = DIEN(16, aux_loss=True).double().train()
        tables, make = _trainable_inputs()
        prompts = torch.randn(6, P, 16, dtype=torch.float64, requires_grad=True)
        res = {}
        for with_ids in (True, False):
            x = make(with_ids)
            if P:
                x.cond = {"long": AttentionCondition(prompts=prompts)}
            out = m(x)
            (out.vector.square().sum() + out.aux_loss).backward()
            res[with_ids] = [out.vector.detach(), out.aux_loss.detach(), *(t.grad.clone() for t in tables),
                             *(p.grad.clone() for p in m.parameters())] + ([prompts.grad.clone()] if P else [])
            for p in [*tables, *m.parameters(), prompts]:
                p.grad = None
        assert make(True).rows[0].shape[0] < 6 * 40                            # the rows path really ran
        for a, b in zip(*res.values()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
        with torch.no_grad():                                                 # and at inference
            m.eval()
            torch.testing.assert_close(m(make(True)).vector, m(make(False)).vector, atol=1e-12, rtol=1e-10)


def _windows_batch(windows, seq_ids, D=16, seed=0):
    """Right-aligned SeqInputs whose rows are ``seq_ids[a:b]`` for each ``(a, b)`` window, ids known."""
    from seqctr.models.base import distinct_rows

    g = torch.Generator().manual_seed(seed)
    table = torch.randn(int(seq_ids.max()) + 1, D, generator=g, dtype=torch.float64)
    T = max(b - a for a, b in windows)
    ids = torch.zeros(len(windows), T, 1, dtype=torch.long)
    mask = torch.zeros(len(windows), T, dtype=torch.bool)
    for r, (a, b) in enumerate(windows):
        if b > a:
            ids[r, T - (b - a):, 0], mask[r, T - (b - a):] = seq_ids[a:b], True
    embed = lambda i: table[i[..., 0]]  # noqa: E731
    target_ids = torch.randint(0, table.shape[0], (len(windows), 1), generator=g)
    return SeqInputs(target=embed(target_ids), hist=embed(ids) * mask.unsqueeze(-1), mask=mask,
                     seq_len=mask.sum(1), target_ids=target_ids, hist_ids=ids, rows=distinct_rows(ids, embed))


def test_prefix_hosts_finds_the_longest_prefix_and_checks_every_event(monkeypatch):
    from seqctr.models import dien
    from seqctr.models.dien import left_rows, prefix_hosts

    seq = torch.arange(1, 41)
    windows = [(0, 5), (0, 12), (0, 12), (0, 20), (3, 20), (0, 0), (3, 9), (0, 1)]
    x = _windows_batch(windows, seq)
    index, mask = left_rows(x.rows[1], x.mask)
    expect = torch.tensor([3, 3, 3, 3, 4, 5, 4, 3])          # the longest row that starts the same way
    assert prefix_hosts(index, mask.sum(1)).tolist() == expect.tolist()
    many = index.repeat(150, 1)                                # 1,200 rows: the comparisons run in two blocks
    got = prefix_hosts(many, mask.sum(1).repeat(150)).view(150, 8)
    assert (got % 8 == expect).all()                           # the same host event by event, in some copy
    monkeypatch.setattr(dien, "_HASH_P", 1)        # every hash collides: the check refuses the false hosts
    assert prefix_hosts(index, mask.sum(1)).tolist() == [3, 3, 3, 3, 4, 5, 6, 3]   # row 6 runs alone, exactly
    other = index.clone()
    other[1, 7] = other[3, 19]                                 # row 1 no longer a prefix of row 3
    got = prefix_hosts(other, mask.sum(1)).tolist()
    assert got[1] == 1 and got[2] == 3 and got[0] == 3


def test_dien_inference_over_shared_prefixes_equals_every_row_alone(monkeypatch):
    """At inference DIEN runs its extractor once per prefix host and steps each row only over its own
    events: the same vector and attention as the plain form (every row's whole recurrence), float64;
    and the cached scoring that reads the AUGRU's input gates once for every candidate equals it."""
    torch.manual_seed(0)
    m = DIEN(16).double().eval()
    seq = torch.randint(1, 60, (40,))
    windows = [(0, 5), (0, 12), (0, 12), (0, 20), (3, 20), (0, 0), (3, 9), (0, 1), (7, 40), (0, 33)]
    x = _windows_batch(windows, seq)
    x.need_weights = True
    with torch.no_grad():
        assert m.shares_prefixes(x)
        shared = m(x)
        monkeypatch.setattr(DIEN, "shares_prefixes", lambda self, x: False)
        plain = m(x)
        m.impl = m.augru.impl = "reference"
        ref = m(x)
    for other in (plain, ref):
        torch.testing.assert_close(shared.vector, other.vector, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(shared.attention["augru"], other.attention["augru"], atol=1e-12, rtol=1e-10)
    assert (shared.vector[5] == 0).all()                                   # the empty history
