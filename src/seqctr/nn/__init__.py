"""Shared neural layers every backbone is built from."""
from .attention import DINAttention, MaskedDice, MultiHeadTargetAttention, masked_softmax
from .embedding import FeatureEmbedding
from .mlp import MLP
from .retrieval import gather_positions, simhash, topk_select

__all__ = ["DINAttention", "MaskedDice", "MultiHeadTargetAttention", "masked_softmax", "FeatureEmbedding", "MLP",
           "gather_positions", "simhash", "topk_select"]
