"""FeatureEmbedding: the stacked-table lookup equals one lookup per table, gradients included."""
from __future__ import annotations

import torch

from seqctr.nn import FeatureEmbedding


def test_stacked_lookup_equals_per_table_lookup_and_padding_gets_no_gradient():
    torch.manual_seed(0)
    emb = FeatureEmbedding({"u": 4, "item": 9, "genre": 5}, ["u"], ["item", "genre"], dim=3, init_std=1.0)
    x = torch.tensor([[[0, 0], [3, 2], [8, 4]], [[1, 1], [3, 0], [0, 0]]])        # [B=2, T=3, F=2], 0 = padding
    got = emb.items(x)
    want = torch.cat([emb.tables["item"](x[..., 0]), emb.tables["genre"](x[..., 1])], -1)
    torch.testing.assert_close(got, want)
    assert got.shape == (2, 3, 6) and got[0, 0].abs().sum() == 0                   # padding embeds to zero
    g = torch.randn_like(got)
    params = [emb.tables["item"].weight, emb.tables["genre"].weight]
    grads = torch.autograd.grad(got, params, g)
    torch.testing.assert_close(grads, torch.autograd.grad(want, params, g))
    assert grads[0][0].abs().sum() == 0 and grads[1][0].abs().sum() == 0           # padding rows never learn
    assert grads[0][3].abs().sum() > 0 and grads[1][2].abs().sum() > 0
