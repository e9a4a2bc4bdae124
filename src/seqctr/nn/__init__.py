"""Shared neural layers every backbone is built from (on the functional ops of :mod:`seqctr.ops`)."""
from .attention import AttentionResult, BilinearAttention, DINAttention, MaskedDice, MultiHeadTargetAttention
from .condition import AttentionCondition, Conditionable, apply_temperature
from .embedding import FeatureEmbedding
from .mlp import MLP

__all__ = ["AttentionResult", "BilinearAttention", "DINAttention", "MaskedDice", "MultiHeadTargetAttention",
           "AttentionCondition", "Conditionable", "apply_temperature", "FeatureEmbedding", "MLP"]
