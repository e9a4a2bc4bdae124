"""Row and length-bucket counts of a prepared dataset (what ``seqctr prepare --json`` prints)."""
from __future__ import annotations


import numpy as np

from ..metrics import DEFAULT_BUCKETS, bucket_masks
from .dataset import SPLITS, SeqDataset


def split_summary(ds: SeqDataset, edges=DEFAULT_BUCKETS) -> dict:
    """``{split: {rows, users, label_rate, mean_seq_len, buckets: {"[1,50)": N, ...}}}``."""
    out = {}
    for split in SPLITS:
        idx = ds.indices(split)
        L = ds.seq_len[idx]
        out[split] = {
            "rows": int(len(idx)),
            "users": int(len(np.unique(ds.sample_user[idx]))),
            "label_rate": float(ds.label[idx].mean()) if len(idx) else float("nan"),
            "mean_seq_len": float(L.mean()) if len(idx) else float("nan"),
            "buckets": {lab: int(m.sum()) for lab, m in bucket_masks(L, edges).items()},
        }
    return out
