"""Shared neural layers every backbone is built from."""
from .attention import (AttentionResult, BilinearAttention, DINAttention, MaskedDice, MultiHeadTargetAttention,
                        masked_softmax)
from .condition import AttentionCondition, Conditionable, apply_temperature
from .embedding import FeatureEmbedding
from .mlp import MLP
from .retrieval import gather_positions, simhash, topk_select

__all__ = ["AttentionResult", "BilinearAttention", "DINAttention", "MaskedDice", "MultiHeadTargetAttention",
           "masked_softmax", "AttentionCondition", "Conditionable", "apply_temperature", "FeatureEmbedding", "MLP",
           "gather_positions", "simhash", "topk_select"]
