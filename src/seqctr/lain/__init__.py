"""LAIN (Length-Adaptive Interest Network): a plug-in that conditions any backbone on the
user's history length. See :mod:`seqctr.lain.plugin`."""
from .plugin import LAIN, LainConfig, SpectralLengthEncoder

__all__ = ["LAIN", "LainConfig", "SpectralLengthEncoder"]
