"""Shared neural layers every backbone is built from."""
from .attention import DINAttention, masked_softmax
from .embedding import FeatureEmbedding
from .mlp import MLP

__all__ = ["DINAttention", "masked_softmax", "FeatureEmbedding", "MLP"]
