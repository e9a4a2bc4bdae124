"""GSU selection: the k-th largest value vs a full sort, and whether it is tied."""
from __future__ import annotations

import pytest
import torch

from seqctr.nn.retrieval import kth_largest


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kth_largest_equals_the_sorted_reference(dtype):
    """Every k, with ties (integer-valued scores) and -inf padding; float32/64 take the NumPy
    path on CPU, bfloat16 the torch.topk one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (4, 3, 17), generator=g).to(dtype)
    x[0, 0, :9] = float("-inf")
    x[1] = torch.randn(3, 17, generator=g).to(dtype)
    ref = x.sort(-1, descending=True).values
    for k in range(1, 18):
        got, tied = kth_largest(x, k)
        assert got.shape == (4, 3, 1) and got.dtype == dtype
        assert torch.equal(got, ref[..., k - 1: k]), k
        assert torch.equal(tied, (x >= got).sum(-1) > k), k
