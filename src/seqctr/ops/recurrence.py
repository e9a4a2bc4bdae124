"""GRU and AUGRU recurrences (DIEN's two) as an op: a hand-written backward (``fast``) beside the plain
autograd step loop (``reference``).

Both are one gated recurrence over precomputed input gates ``gx = x W_x + b_x  [B, T, 3H]``
(one GEMM outside, under autograd) and the hidden gates ``g_t = h_{t-1} W_h^T + b_h  [B, 3H]``
(gate order r, u, n as in ``torch.nn.GRU``)::

    r = sigma(gx_r + g_r),  v = sigma(gx_u + g_u),  n = tanh(gx_n + r * g_n)
    GRU:    h_t = lerp(n, h_{t-1}, v)      = (1 - v) n + v h_{t-1}      (torch.nn.GRU's z = v)
    AUGRU:  h_t = lerp(h_{t-1}, n, a_t v)  = (1 - a_t v) h_{t-1} + a_t v n   (DIEN: u' = a_t u)

The input gates may also come as rows ``gx [U, 3H]`` with ``index [B, T]`` (step ``t`` of row ``b``
reads ``gx[index[b, t]]``): DIEN's extractor computes them once per *distinct* event of the batch
(``U`` ~1,400 on ml100k against ``B T`` = 51,200), and the recurrence gathers each step's ``[B, 3H]``
slice as it goes (its backward adds each step's gradient into ``[U, 3H]``), so neither the
``[B, T, 3H]`` gates nor their gradient are ever materialised.

Why not autograd: its backward records ~15 small ops and two small GEMMs per step and sums the
recurrent weight's gradient through extra buffers. Here the backward runs the recurrence once with
fused element-wise expressions, one ``[B, 3H] x [3H, H]`` product per step for the state and one
``[3H, B] x [B, H]`` accumulation for ``dW_h``. Same arithmetic as autograd's (tested against it
and with ``gradcheck``); float results agree within rounding.
"""
from __future__ import annotations

import torch

from ..utils.compile import eager
from .kernels import needs_grad


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)`` (in place when no autograd records it) as ``2 sigmoid(2x) - 1`` on CPU: there PyTorch's float ``tanh`` runs
    ~6x slower than its ``sigmoid`` (121 vs 19 us on ``[256, 128]``), and this form takes ~55 us
    against ~117 us with the gate's ``addcmul``; absolute error <= 2e-7 (``torch.tanh``: 6e-8)."""
    if x.device.type != "cpu":
        return torch.tanh(x)
    if x.requires_grad:                      # autograd through the loop (the tests' reference)
        return torch.sigmoid(2 * x) * 2 - 1
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def _step(x_t: torch.Tensor, h: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor, a_t: torch.Tensor | None):
    """One step over input gates ``x_t [n, 3H]`` from states ``h [n, H]`` (``a_t [n, 1]``: the AUGRU's
    attention, None for the GRU) -> ``(new state, [r, v], n, hidden gates g)``."""
    H = h.shape[1]
    g = torch.addmm(b_h, h, w_h.t())                                       # [n, 3H]
    rv = torch.sigmoid(x_t[:, :2 * H] + g[:, :2 * H])                      # [n, 2H]: r, v
    c = _tanh(torch.addcmul(x_t[:, 2 * H:], rv[:, :H], g[:, 2 * H:]))
    v = rv[:, H:]
    return (torch.lerp(c, h, v) if a_t is None else torch.lerp(h, c, a_t * v)), rv, c, g


def _zero_past(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``out [B, T, H]`` with the steps at ``t >= lengths [B]`` set to 0."""
    return out * (torch.arange(out.shape[1], device=out.device) < lengths.unsqueeze(1)).unsqueeze(-1)


def _forward(gx: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor,
             att: torch.Tensor | None, save: bool, index: torch.Tensor | None = None, final: bool = False):
    """All states ``[B, T, H]`` (``final``: only the last, ``[B, 1, H]``) and, if ``save``, per step
    what the backward needs: the previous state, ``[r, v]``, ``n`` and the hidden gates ``g``
    (small per-step tensors, not stacked)."""
    B, H = h0.shape
    T = gx.shape[1] if index is None else index.shape[1]
    h, states, saved = h0, [], []
    gx_t = gx.unbind(1) if index is None else None
    at = None if index is None else index.t().contiguous()              # [T, B]: the rows step t reads
    a_t = att.unsqueeze(-1).unbind(1) if att is not None else None
    for t in range(T):
        x_t = gx_t[t] if at is None else gx.index_select(0, at[t])        # [B, 3H]
        new, rv, n, g = _step(x_t, h, w_h, b_h, None if a_t is None else a_t[t])
        if save:
            saved.append((h, rv, n, g))
        h = new
        if not final:
            states.append(h)
    if final:
        return h.unsqueeze(1), saved
    out = torch.stack(states, 1) if T else h0.new_zeros(B, 0, H)
    return out, saved


def _forward_packed(gx: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor,
                    att: torch.Tensor | None, index: torch.Tensor | None, lengths: torch.Tensor,
                    final: bool) -> torch.Tensor:
    """:func:`_forward` without autograd over each row's own ``lengths [B]`` steps only, as a packed
    sequence runs: the rows are ordered longest first and step ``t`` updates the first ``n_t`` of
    them (those longer than ``t``), so a batch of mixed lengths costs its real steps, not
    ``B x max(L)``. States ``[B, T, H]`` (0 at ``t >= L``), or with ``final`` the state after each
    row's last step ``[B, H]`` (``h0`` where ``L`` is 0)."""
    B, H = h0.shape
    T = gx.shape[1] if index is None else index.shape[1]
    lengths = lengths.clamp(0, T)
    order = torch.argsort(lengths, descending=True, stable=True)
    L = lengths[order]
    steps = int(L[0]) if B else 0
    ends = torch.bincount(L, minlength=steps + 1).cumsum(0)          # rows with L <= t
    active = (B - ends[:steps]).tolist()                               # rows still running at step t
    h = h0.index_select(0, order)
    if index is None:
        reads, gx_t = None, gx.transpose(0, 1)                         # [T, B, 3H] view
    else:
        reads = index.index_select(0, order).t().contiguous()          # [T, B] rows step t reads
    a = att.index_select(0, order).t().contiguous() if att is not None else None   # [T, B]
    states = []
    for t, n in enumerate(active):
        x_t = gx_t[t].index_select(0, order[:n]) if reads is None else gx.index_select(0, reads[t, :n])
        h[:n] = _step(x_t, h[:n], w_h, b_h, None if a is None else a[t, :n].unsqueeze(-1))[0]
        if not final:
            states.append(h.clone())
    back = torch.empty_like(order)
    back[order] = torch.arange(B, device=order.device)
    if final:
        return h.index_select(0, back)
    if not states:
        return h0.new_zeros(B, T, H)
    out = _zero_past(torch.stack(states, 1).index_select(0, back), lengths)   # [B, steps, H]
    return out if steps == T else torch.cat([out, out.new_zeros(B, T - steps, H)], 1)


class _Recurrence(torch.autograd.Function):
    """``(gx [B,T,3H], h0 [B,H], w_h [3H,H], b_h [3H], att [B,T] | None, index) -> states [B, T, H]``
    (``gx [U, 3H]`` rows when ``index [B, T]`` is given).

    The backward keeps every per-step tensor small (``[B, 3H]``, reused from the allocator's cache)
    and writes the big ``[B, T, 3H]`` input-gate gradient once, by one ``stack``: writing step slices
    into a fresh big buffer costs a page fault per 4 KiB on this kind of machine."""

    @staticmethod
    def forward(ctx, gx, h0, w_h, b_h, att, index):
        out, saved = _forward(gx, h0, w_h, b_h, att, save=True, index=index)
        ctx.steps = saved
        none = torch.empty(0)
        ctx.save_for_backward(w_h, att if att is not None else none, index if index is not None else none)
        ctx.has_att, ctx.indexed, ctx.gx_shape = att is not None, index is not None, gx.shape
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_h, att, index = ctx.saved_tensors
        steps = ctx.steps
        T = len(steps)
        B, H = d_out.shape[0], w_h.shape[1]
        dh = d_out.new_zeros(B, H)
        d_w, d_b = torch.zeros_like(w_h), d_out.new_zeros(3 * H)
        dgx = [None] * T
        if ctx.indexed:                       # rows' gradient: each step's [B, 3H] added where it was read
            d_rows, at = d_out.new_zeros(ctx.gx_shape), index.t().contiguous()
        datt = [None] * T if ctx.has_att else None
        for t in range(T - 1, -1, -1):
            h, rv, n, g = steps[t]
            r, v = rv[:, :H], rv[:, H:]
            dh = dh + d_out[:, t]
            if ctx.has_att:
                a = att[:, t].unsqueeze(-1)
                dn = dh * (a * v)
                dw = dh * (n - h)
                datt[t] = (dw * v).sum(-1)
                dv = dw * a
                dh_direct = dh - dn                                  # dh * (1 - a v)
            else:
                dn = dh * (1 - v)
                dv = dh * (h - n)
                dh_direct = dh * v
            dgx_t = d_out.new_empty(B, 3 * H)                         # [dr_pre, dv_pre, dn_pre]
            dpre_n = torch.mul(dn, 1 - n * n, out=dgx_t[:, 2 * H:])
            torch.mul(dpre_n * g[:, 2 * H:], r * (1 - r), out=dgx_t[:, :H])
            torch.mul(dv, v * (1 - v), out=dgx_t[:, H:2 * H])
            dg_t = dgx_t.clone()                                      # the hidden gates: n part times r
            dg_t[:, 2 * H:].mul_(r)
            d_w.addmm_(dg_t.t(), h)
            d_b.add_(dg_t.sum(0))
            dh = torch.addmm(dh_direct, dg_t, w_h)
            if ctx.indexed:
                d_rows.index_add_(0, at[t], dgx_t)
            else:
                dgx[t] = dgx_t
        d_gx = d_rows if ctx.indexed else torch.stack(dgx, 1)
        return d_gx, dh, d_w, d_b, torch.stack(datt, 1) if ctx.has_att else None, None


@eager   # a Python loop over a data-dependent step count: traced, it would recompile per length
def gated_recurrence(gx: torch.Tensor, h0: torch.Tensor, w_h: torch.Tensor, b_h: torch.Tensor,
                     att: torch.Tensor | None = None, index: torch.Tensor | None = None,
                     final: bool = False, impl: str = "fast", lengths: torch.Tensor | None = None) -> torch.Tensor:
    """States ``[B, T, H]`` of the GRU (``att`` None) or the AUGRU (``att [B, T]``, 0 = keep the
    state) over input gates ``gx [B, T, 3H]`` (or rows ``gx [U, 3H]`` read through ``index [B, T]``)
    from ``h0 [B, H]``; see the module docstring. ``final``: only the last state ``[B, H]`` (without
    autograd the others are then never stacked). ``impl``: ``reference`` runs the plain step loop under
    autograd (the oracle); any other setting the hand-written backward (``fast``).

    ``lengths [B]``: each row runs its own first ``L`` steps; states at ``t >= L`` are 0 and
    ``final`` is the state after step ``L - 1`` (``h0`` when ``L`` is 0). Without autograd, ``fast``
    then steps only the rows still running (:func:`_forward_packed`); ``reference`` and the
    autograd forms run every step and mask, the same values.

    Under autocast the whole recurrence runs in the autocast dtype (inputs cast once, not per step),
    as ``torch.nn.GRU`` does: ``train.precision: bf16``'s speed and measured accuracy are for that."""
    dev = gx.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return gated_recurrence(gx.to(dt), h0.to(dt), w_h.to(dt), b_h.to(dt),
                                    att.to(dt) if att is not None else None, index, final, impl, lengths)
    grad = needs_grad(gx, h0, w_h, b_h, att)
    if lengths is not None and impl != "reference" and not grad:
        return _forward_packed(gx, h0, w_h, b_h, att, index, lengths, final)
    if impl == "reference":
        out = _forward(gx, h0, w_h, b_h, att, save=False, index=index)[0]
    elif grad:
        out = _Recurrence.apply(gx, h0, w_h, b_h, att, index)
    else:
        out = _forward(gx, h0, w_h, b_h, att, save=False, index=index, final=final)[0]   # lengths: packed above
    if lengths is None:
        return out[:, -1] if final else out
    T = out.shape[1]
    lengths = lengths.clamp(0, T)
    if final:                                          # the state after each row's own last step
        last = out.gather(1, (lengths - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)
        return torch.where((lengths > 0).unsqueeze(1), last, h0)
    return _zero_past(out, lengths)


def gru(x: torch.Tensor, module: torch.nn.GRU, h0: torch.Tensor | None = None,
        index: torch.Tensor | None = None, impl: str = "fast", lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.GRU`` (one layer, batch_first, with biases) through :func:`gated_recurrence`:
    ``x [B, T, D]`` -> states ``[B, T, H]``, the module's own parameters (checkpoints unchanged).
    With ``index [B, T]``, ``x [U, D]`` are rows and step ``t`` of row ``b`` reads ``x[index[b, t]]``:
    the input gates are then one ``[U, D] x [D, 3H]`` GEMM, however long the sequences."""
    if index is None:
        B, T, D = x.shape
        H = module.hidden_size
        gx = torch.addmm(module.bias_ih_l0, x.reshape(B * T, D), module.weight_ih_l0.t()).view(B, T, 3 * H)
    else:
        B = index.shape[0]
        gx = torch.addmm(module.bias_ih_l0, x, module.weight_ih_l0.t())                   # [U, 3H]
    h0 = x.new_zeros(B, module.hidden_size) if h0 is None else h0
    return gated_recurrence(gx, h0, module.weight_hh_l0, module.bias_hh_l0, index=index, impl=impl, lengths=lengths)
