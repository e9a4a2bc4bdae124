"""Functional ops of the model core, each with named implementations beside a plain reference.

- :mod:`.attention`: target-attention scores and pooling over dense or distinct events
  (:class:`Events`), cached-K/V forms, masked softmax, and :func:`set_impl` (the explicit switch);
- :mod:`.select`: top-k selection and SimHash;
- :mod:`.recurrence`: DIEN's GRU / AUGRU recurrence (hand-written backward, or the plain autograd loop);
- :mod:`.kernels`: the custom autograd products the fast forms are built from.

Imports only PyTorch, NumPy and ``seqctr.utils``: every layer of :mod:`seqctr.nn` and every backbone is
built on these ops.
"""
from .attention import (FORMS, IMPLS, Events, Picks, check_impl, event_pool, event_scores, fast_form, gather_positions,
                        head_pool, head_rows, head_scores, masked_softmax, resolve, selection_as_mask, set_impl,
                        shared)
from .select import simhash, topk_select

__all__ = ["FORMS", "IMPLS", "Events", "Picks", "check_impl", "event_pool", "event_scores", "fast_form",
           "gather_positions", "head_pool", "head_rows", "head_scores", "masked_softmax", "resolve",
           "selection_as_mask", "set_impl", "shared", "simhash", "topk_select"]
