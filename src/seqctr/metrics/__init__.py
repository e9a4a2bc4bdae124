"""CTR metrics: AUC, GAUC, logloss, overall and per length bucket (vectorised numpy)."""
from .core import auc, bucket_labels, evaluate_predictions, gauc, logloss

__all__ = ["auc", "bucket_labels", "evaluate_predictions", "gauc", "logloss"]
