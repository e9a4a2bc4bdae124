"""How a plug-in (LAIN) reaches every attention layer without editing each backbone.

A backbone passes ``x.condition(branch)`` to each of its attention layers; the layers that
implement :class:`Conditionable` apply whatever the :class:`AttentionCondition` carries. A layer
belongs to one ``branch`` (``"short"`` or ``"long"``; single-sequence models use ``"long"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttentionCondition:
    """Per-sample conditioning of one branch's attention; any field may be None (= off).

    - ``prompts [B, P, D]``: tokens prepended to the attended sequence with mask 1 (after any
      top-k selection, so they can never be dropped);
    - ``qk [B, Dc]``: a vector concatenated to the query and every key before their projections
      (implemented as ``W [x; e] = W_x x + W_e e``, so the base weights are untouched);
    - ``temperature [B]``: softmax temperature (scores are divided by it).
    """

    prompts: torch.Tensor | None = None
    qk: torch.Tensor | None = None
    temperature: torch.Tensor | None = None

    @property
    def num_prompts(self) -> int:
        return 0 if self.prompts is None else self.prompts.shape[1]


class Conditionable(nn.Module):
    """Mixin for attention layers that accept an :class:`AttentionCondition`.

    ``enable_condition(cond_dim)`` adds the two projections of the conditioning vector
    (``q_len``, ``k_len``, sized by the layer); until then the layer is exactly its bare self."""

    branch: str = "long"

    def __init__(self):
        super().__init__()
        self.q_len: nn.Module | None = None   # set as instance attributes: a class-level None would
        self.k_len: nn.Module | None = None   # shadow the submodules registered later

    def condition_widths(self) -> tuple[int, int]:  # pragma: no cover - interface
        """Widths of the query and of a key where the conditioning vector is added."""
        raise NotImplementedError

    def enable_condition(self, cond_dim: int) -> None:
        q_out, k_out = self.condition_widths()
        self.q_len = nn.Linear(cond_dim, q_out, bias=False)
        self.k_len = nn.Linear(cond_dim, k_out, bias=False)

    def condition_query(self, q: torch.Tensor, cond: AttentionCondition | None) -> torch.Tensor:
        """``q [B, Dq]`` (+ ``W_e e``)."""
        if cond is not None and cond.qk is not None and self.q_len is not None:
            return q + self.q_len(cond.qk)
        return q

    def key_shift(self, cond: AttentionCondition | None) -> torch.Tensor | None:
        """``W_e e`` added to every key ``[B, Dk]``, or None."""
        if cond is not None and cond.qk is not None and self.k_len is not None:
            return self.k_len(cond.qk)
        return None


def apply_temperature(scores: torch.Tensor, cond: AttentionCondition | None) -> torch.Tensor:
    """``scores [B, ...]`` divided by the per-sample temperature, if any."""
    if cond is None or cond.temperature is None:
        return scores
    t = cond.temperature
    return scores / t.view(t.shape[0], *([1] * (scores.dim() - 1)))
