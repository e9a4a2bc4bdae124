"""``torch.compile`` for seqctr models (``train.compile``), and the steps it must leave eager.

Importing ``torch._dynamo`` costs ~1.7 s, so nothing here imports it until something is compiled:
:func:`eager` marks a function (data-dependent control flow, NumPy, per-step Python loops) that
runs outside compiled graphs; until :func:`compiled` is first called the mark is a plain call."""
from __future__ import annotations

import functools

import torch

_MARKED: list = []          # one [plain function, what calls run] holder per eager-marked function


def eager(fn):
    """Run ``fn`` eagerly between the compiled pieces of a :func:`compiled` module (a graph break:
    dynamo would otherwise trace it, failing on or re-specialising to its data-dependent steps)."""
    holder = [fn, fn]
    _MARKED.append(holder)

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        return holder[1](*args, **kwargs)

    return inner


def compiled(module: torch.nn.Module):
    """``module`` under ``torch.compile`` (inductor; shapes dynamic from the first call, so the
    length-bucketed batches share one graph instead of compiling one per sequence length). Same
    parameters as ``module``; outputs equal eager's within float rounding (fused kernels sum in
    another order), tested in tests/training/test_compile.py."""
    for holder in _MARKED:
        if holder[1] is holder[0]:
            holder[1] = torch.compiler.disable(holder[0])
    return torch.compile(module, dynamic=True)
