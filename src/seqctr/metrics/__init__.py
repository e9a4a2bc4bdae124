"""CTR metrics: AUC, GAUC, logloss, overall and per length bucket (vectorised numpy)."""
from .core import DEFAULT_BUCKETS, PAPER_GROUPS, auc, bucket_labels, bucket_masks, evaluate_predictions, gauc, logloss

__all__ = ["DEFAULT_BUCKETS", "PAPER_GROUPS", "auc", "bucket_labels", "bucket_masks", "evaluate_predictions", "gauc", "logloss"]
