"""LAIN as one plug-in for every backbone.

- **Spectral Length Encoder**: ``[sin(L w); cos(L w)] -> Linear -> LayerNorm -> MLP -> h_len``
  (``w`` learnable, ``d_f`` frequencies; ``L`` = true history length before truncation).
- **Length-Conditioned Prompting**: ``k`` tokens ``MLP(h_len)`` prepended to the short- and the
  long-term sequences with mask 1 (for two-stage models after the GSU, so top-k never drops them).
- **Length-Modulated Attention**: ``e_len = MLP(h_len)`` concatenated to the query and to every
  key before their projections, and temperature ``tau = 1 + sigmoid(-beta (L - L0)) * gamma``
  (``gamma = 0.5``, ``beta = 0.01`` at init, both learnable; ``L0`` = mean training length).

The plug-in never edits a backbone: :meth:`LAIN.attach` enables the query/key conditioning
projections on the backbone's :class:`~seqctr.nn.Conditionable` layers of the chosen branches,
and :meth:`LAIN.forward` builds one :class:`~seqctr.nn.AttentionCondition` per branch, which the
backbone hands to its attention layers. With every switch off the model is the bare backbone.

Note (a property of the method, not of this code): in softmax attention, adding the same vector
``W_e e_len`` to every key shifts all of a query's scores by one constant, so key conditioning
alone changes nothing there; it matters for non-softmax scorers (DIN's activation unit).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import LainConfig
from ..errors import ConfigError
from ..nn import AttentionCondition, Conditionable

def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (``y > 0``)."""
    y = float(y)
    if y <= 0:
        raise ValueError(f"softplus takes only positive values, got {y}")
    return y + math.log(-math.expm1(-y))


class SpectralLengthEncoder(nn.Module):
    """``L [B] -> h_len [B, out_dim]`` through learnable Fourier features.

    Frequencies start log-spaced between 1 and 1/4096 so both short and very long histories are
    resolved before training adjusts them."""

    def __init__(self, fourier_dim: int = 32, hidden: int = 512, out_dim: int = 64):
        super().__init__()
        self.freq = nn.Parameter(torch.exp(-torch.linspace(0.0, math.log(4096.0), fourier_dim)))
        self.proj = nn.Linear(2 * fourier_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, length: torch.Tensor) -> torch.Tensor:
        phase = length.to(self.freq.dtype).unsqueeze(-1) * self.freq
        return self.mlp(self.norm(self.proj(torch.cat([phase.sin(), phase.cos()], -1))))


class LAIN(nn.Module):
    """Builds per-branch :class:`AttentionCondition` from ``seq_len``; see the module docstring.

    ``item_dim`` = width of an embedded item (prompt tokens are items); ``feature_dim`` = width of
    ``h_len`` (the backbone's embedding size)."""

    def __init__(self, cfg: LainConfig, item_dim: int, feature_dim: int, l0: float):
        super().__init__()
        self.cfg, self.item_dim = cfg, item_dim
        self.encoder = SpectralLengthEncoder(cfg.fourier_dim, cfg.hidden, feature_dim)
        self.prompt = None
        if cfg.prompts > 0:
            self.prompt = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(),
                                        nn.Linear(feature_dim, cfg.prompts * item_dim))
        # Prompts start ~1000x larger than N(0, 1e-4) item embeddings; a scale initialised small
        # (e.g. 1e-3) starts them at the items' size (the paper gives no initialisation).
        self.prompt_scale = nn.Parameter(torch.tensor(float(cfg.prompt_scale))) \
            if cfg.prompts > 0 and cfg.prompt_scale != 1.0 else None
        self.e_len = None
        if cfg.qk_condition:
            self.e_len = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(),
                                       nn.Linear(feature_dim, cfg.cond_dim))
        if cfg.temperature:          # gamma = softplus(gamma_raw) > 0, beta likewise: tau stays in (1, 1 + gamma)
            self.gamma_raw = nn.Parameter(torch.tensor(inverse_softplus(cfg.gamma)))
            self.beta_raw = nn.Parameter(torch.tensor(inverse_softplus(cfg.beta)))
        self.register_buffer("L0", torch.tensor(float(l0)))   # saved with the weights: serving uses the trained L0

    def attach(self, backbone: nn.Module) -> int:
        """Enable query/key conditioning on the backbone's layers of the chosen branches.
        Returns how many attention layers were found in those branches."""
        if backbone.lain_unsupported:
            raise ConfigError(f"model.lain: not available for {backbone.registry_name}: {backbone.lain_unsupported}")
        layers = [m for m in backbone.modules() if isinstance(m, Conditionable) and m.branch in self.cfg.branches]
        if self.cfg.qk_condition:
            for m in layers:
                m.enable_condition(self.cfg.cond_dim)
        return len(layers)

    @property
    def gamma(self) -> torch.Tensor:
        return F.softplus(self.gamma_raw)

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.beta_raw)

    def temperature(self, length: torch.Tensor) -> torch.Tensor:
        """``tau [B] = 1 + sigmoid(-beta (L - L0)) * gamma``, with ``gamma, beta > 0`` by construction
        (softplus of the learned values): tau lies in ``(1, 1 + gamma)``, never 1 or below (the paper's
        unconstrained form lets training push gamma below 0 and so tau to 1, 0 or negative, which flips
        the attention), and it falls with the length as the paper intends (beta > 0)."""
        return 1 + torch.sigmoid(-self.beta * (length.to(self.L0.dtype) - self.L0)) * self.gamma

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights saved before gamma and beta were constrained hold them as they are: stored as the
        raw values that give them (a value <= 0, which the old form allowed, becomes 1e-6)."""
        for name in ("gamma", "beta"):
            old = state_dict.pop(prefix + name, None)
            if old is not None and prefix + name + "_raw" not in state_dict:
                state_dict[prefix + name + "_raw"] = torch.tensor(inverse_softplus(max(float(old), 1e-6)),
                                                                  dtype=old.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, seq_len: torch.Tensor) -> dict[str, AttentionCondition]:
        h = self.encoder(seq_len)
        B = seq_len.shape[0]
        prompts = self.prompt(h).view(B, self.cfg.prompts, self.item_dim) if self.prompt is not None else None
        if prompts is not None and self.prompt_scale is not None:
            prompts = prompts * self.prompt_scale
        qk = self.e_len(h) if self.e_len is not None else None
        tau = self.temperature(seq_len) if self.cfg.temperature else None
        cond = AttentionCondition(prompts=prompts, qk=qk, temperature=tau)
        return {b: cond for b in self.cfg.branches}

