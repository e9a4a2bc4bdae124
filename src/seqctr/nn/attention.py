"""Target attention layers shared by the backbones."""
from __future__ import annotations

import torch
from torch import nn

from .mlp import MLP, activation


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring positions where ``mask`` is False; all-masked rows give zeros
    (an empty history attends to nothing instead of producing NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, dim=dim)
    return torch.nan_to_num(w, nan=0.0)


class MaskedDice(nn.Module):
    """Dice activation (DIN paper): ``p = sigmoid(BN(x)); y = p*x + (1-p)*alpha*x``.

    Unlike a plain BatchNorm, the training-time statistics use only rows where ``mask`` is True,
    so the amount of padding in a batch never changes any output. ``x [..., H]``, ``mask [...]``."""

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.eps, self.momentum = eps, momentum

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            m = mask.unsqueeze(-1).to(x.dtype)
            n = m.sum().clamp_min(1.0)
            flat_dims = tuple(range(x.dim() - 1))
            mean = (x * m).sum(flat_dims) / n
            var = (((x - mean) ** 2) * m).sum(flat_dims) / n
            with torch.no_grad():
                if mask.any():
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1.0), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((x - mean) / torch.sqrt(var + self.eps))
        return p * x + (1 - p) * self.alpha * x


class DINAttention(nn.Module):
    """DIN's activation unit: score(q, k) = MLP([q, k, q-k, q*k]); pooled = sum_t w_t k_t.

    The first layer is applied in a fused form that is exactly equal to the concatenation:
    ``W [q, k, q-k, q*k] = (Wq + Wd) q + (Wk - Wd) k + Wp (q*k)``, so the key term is computed once
    per history event (no ``[B, T, 4D]`` tensor), and the query term once per target.

    ``fused=False`` runs the textbook form instead (same outputs; for benchmarks and as the oracle).

    Shapes: ``query [B, D]``, ``keys [B, T, D]``, ``mask [B, T]`` -> ``pooled [B, D]``,
    ``weights [B, T]`` (softmax-normalised when ``use_softmax``, else raw masked scores as in DIN).
    """

    def __init__(self, dim: int, hidden: list[int] = (64,), act: str = "dice", use_softmax: bool = False,
                 fused: bool = True):
        super().__init__()
        self.fused = fused
        hidden = list(hidden)
        self.first = nn.Linear(4 * dim, hidden[0])
        self.dice = act.lower() == "dice"
        self.act = MaskedDice(hidden[0]) if self.dice else activation(act)
        self.rest = MLP(hidden[0], hidden[1:], out_dim=1, act="relu" if self.dice else act)
        self.dim, self.use_softmax = dim, use_softmax

    def _activate(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.dice:
            return self.act(h, mask if mask is not None else torch.ones(h.shape[:-1], dtype=torch.bool,
                                                                         device=h.device))
        return self.act(h)

    def scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unmasked scores ``[B, T]`` (``mask`` only feeds Dice's batch statistics)."""
        D = self.dim
        W = self.first.weight                      # [H, 4D]
        wq, wk, wd, wp = W[:, :D], W[:, D:2 * D], W[:, 2 * D:3 * D], W[:, 3 * D:]
        q_term = query @ (wq + wd).T + self.first.bias          # [B, H]
        k_term = keys @ (wk - wd).T                              # [B, T, H]
        p_term = (query.unsqueeze(1) * keys) @ wp.T              # [B, T, H]
        h = self._activate(k_term + p_term + q_term.unsqueeze(1), mask)
        return self.rest(h).squeeze(-1)

    def reference_scores(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None):
        """The textbook form (concatenate, then the MLP); kept as the test oracle of :meth:`scores`."""
        q = query.unsqueeze(1).expand_as(keys)
        x = torch.cat([q, keys, q - keys, q * keys], dim=-1)
        return self.rest(self._activate(self.first(x), mask)).squeeze(-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
        s = (self.scores if self.fused else self.reference_scores)(query, keys, mask)
        if self.use_softmax:
            w = masked_softmax(s, mask)
        else:
            w = s * mask.to(s.dtype)
        pooled = torch.einsum("bt,btd->bd", w, keys)
        return pooled, w


class MultiHeadTargetAttention(nn.Module):
    """Scaled dot-product attention of one target query over a sequence (LongCTR's layer).

    ``W_q, W_k, W_v: in -> attention_dim`` and ``W_o: attention_dim -> in`` (no biases). Split into
    :meth:`project_kv` (depends on the history only: what a serving cache stores) and
    :meth:`attend`, so cached and uncached scoring run the same code.

    Shapes: ``query [B, D]``, ``keys [B, T, D]``, ``mask [B, T]`` -> ``out [B, D]``, ``weights [B, H, T]``.
    """

    def __init__(self, input_dim: int, attention_dim: int = 64, num_heads: int = 1, dropout: float = 0.0):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim={attention_dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, attention_dim // num_heads
        self.W_q = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_k = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_v = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_o = nn.Linear(attention_dim, input_dim, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, H*hd] -> [B, H, T, hd]``."""
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def project_kv(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``keys [B, T, D]`` -> per-head ``K, V [B, H, T, hd]``."""
        return self.split_heads(self.W_k(keys)), self.split_heads(self.W_v(keys))

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        """Attention of ``query [B, D]`` over projected ``k, v [B, H, T, hd]``."""
        B = query.shape[0]
        q = self.W_q(query).view(B, self.num_heads, 1, self.head_dim)
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / self.head_dim ** 0.5      # [B, H, T]
        w = masked_softmax(scores, mask.unsqueeze(1))
        out = (self.dropout(w).unsqueeze(2) @ v).squeeze(2)                        # [B, H, hd]
        return self.W_o(out.reshape(B, -1)), w

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
        k, v = self.project_kv(keys)
        return self.attend(query, k, v, mask)
