"""GSU selection: every implementation of the top-k positions (NumPy, torch, the dense traceable form)
against a stable-sort reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seqctr.ops.select import (_positions_cpu, _positions_dense, _positions_numpy, _positions_prefiltered,
                               _positions_torch, topk_positions, topk_select, traced_form)


def reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """The textbook rule: stable sort of the time-reversed row, best first; ties go to the
    rightmost positions. ``[R, T] -> [R, k]`` ascending."""
    T = x.shape[-1]
    order = torch.sort(x.float().flip(-1), dim=-1, descending=True, stable=True).indices[:, :k]
    return (T - 1 - order).sort(-1).values


@pytest.mark.parametrize("impl", ["numpy", "torch", "torch-bf16", "dense", "op", "op-bf16"])
def test_topk_positions_equal_the_stable_sort_reference(impl):
    """Every k, integer-valued scores full of ties, -inf padding, rows of distinct values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (12, 17), generator=g).float()
    x[0, :9] = float("-inf")
    x[1:4] = torch.randn(3, 17, generator=g)
    x[4] = 2.0                                                   # one value everywhere
    x = x.bfloat16().float()                                     # the same values in every dtype
    for k in range(1, 18):
        if impl == "numpy":
            got = torch.from_numpy(_positions_numpy(x.numpy(), k))
        elif impl == "dense":
            got = _positions_dense(x, k)
        elif impl.startswith("op"):                                  # the op a captured graph calls
            got = topk_positions(x.bfloat16() if impl == "op-bf16" else x, k)
        else:
            got = _positions_torch(x.bfloat16() if impl == "torch-bf16" else x, k)
        assert got.shape == (12, k)
        assert torch.equal(got, reference(x, k)), k


@pytest.mark.parametrize("T", [10, 11, 37, 500, 1003])
def test_prefiltered_positions_equal_the_reference_on_long_rows(T):
    """The candidate prefilter picks what the stable-sort reference picks for every k it takes
    (T >= 10 k): ties everywhere, rows all -inf but a few (fewer than k real events), rows of one value,
    lengths the groups do not divide, float32 and float64."""
    g = torch.Generator().manual_seed(T)
    x = torch.randn(9, T, generator=g)
    x[1] = torch.randint(0, 4, (T,), generator=g).float()                 # a handful of distinct values
    x[2] = 1.5                                                             # one value everywhere
    x[3, : T - 3] = float("-inf")                                          # three real events
    x[4, ::2] = float("-inf")                                              # every other event padding
    x[5] = torch.randn(T // 3 + 1, generator=g).repeat(3)[:T]              # each value three times
    x[6] = torch.arange(T).float()                                         # ascending: the best at the end
    x[7] = -torch.arange(T).float()                                        # descending: the best at the start
    for k in range(1, T // 10 + 1):
        want = reference(x, k)
        for dtype in (np.float32, np.float64):
            got = _positions_prefiltered(x.numpy().astype(dtype), k)
            assert np.array_equal(got, want.numpy()), (k, dtype)
        assert np.array_equal(_positions_cpu(x.numpy(), k), want.numpy())


@pytest.mark.parametrize("impl", ["numpy", "prefiltered", "torch"])
@pytest.mark.parametrize("where", [0, 2, 5])
def test_topk_positions_refuse_nan_anywhere(impl, where):
    """A NaN is refused wherever it sits (inside or outside the top k), not silently ranked."""
    x = torch.tensor([[3.0, 1.0, 1.0, 4.0, 0.5, 2.0]]).repeat(2, 1)
    x[1, where] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        if impl == "numpy":
            _positions_numpy(x.numpy(), 2)
        elif impl == "prefiltered":
            _positions_prefiltered(x.repeat(1, 10).numpy(), 2)     # 60 events: the prefilter's lengths
        else:
            _positions_torch(x, 2)


def test_numpy_positions_on_a_long_row_with_duplicated_items():
    """The serving case: 1,000 events drawn from 300 items (many equal scores), k = 50."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(300).astype(np.float32)[rng.integers(0, 300, (64, 1000))]
    got = torch.from_numpy(_positions_numpy(x, 50))
    assert torch.equal(got, reference(torch.from_numpy(x), 50))
    assert np.array_equal(_positions_prefiltered(x, 50), got.numpy())
    assert torch.equal(_positions_dense(torch.from_numpy(x), 50), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_select_reads_transposed_scores_as_their_contiguous_copy(dtype):
    """Scores laid out [H, B, T] and viewed as [B, H, T] (the shared-cache GEMM's layout) select the
    same indices and masks as their contiguous copy, with and without padding."""
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 5, (8, 6, 40), generator=g).to(dtype).transpose(0, 1)
    for mask in (torch.ones(6, 1, 40, dtype=torch.bool), torch.rand(6, 1, 40, generator=g) > 0.3):
        got, got_mask = topk_select(s, mask, 7)
        want, want_mask = topk_select(s.contiguous(), mask, 7)
        assert torch.equal(got, want) and torch.equal(got_mask, want_mask)


def test_topk_select_mask_of_an_all_real_history_is_all_true_and_owned():
    """Every position real (a user's cache, the mask broadcast): the selected mask is all True, of the picks'
    shape, a tensor of its own (not a view of the caller's mask); with padding the padded picks stay False."""
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 3, 30, generator=g)
    every = torch.ones(1, 1, 30, dtype=torch.bool)
    idx, sel = topk_select(s, every, 6)
    assert sel.shape == idx.shape == (5, 3, 6) and bool(sel.all()) and sel.stride()[-1] == 1
    sel[0, 0, 0] = False                                    # writable: the caller's mask is untouched
    assert bool(every.all())
    few = torch.zeros(5, 1, 30, dtype=torch.bool)
    few[:, :, -4:] = True                                   # 4 real events, 6 picks
    idx, sel = topk_select(s, few, 6)
    assert torch.equal(sel.sum(-1), torch.full((5, 3), 4)) and torch.equal(sel, torch.gather(few.expand(5, 3, 30), -1, idx))


def test_the_selection_op_passes_torch_s_op_checks_and_forms_are_named():
    """``seqctr::topk_positions`` registered as torch expects (schema, fake shapes, no aliasing: what
    ``torch.export`` and AOTInductor rely on); an unknown traced form is refused."""
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(topk_positions, (x, 5), test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(ValueError, match="traced form"):
        with traced_form("sparse"):
            pass
