"""Row and length-bucket counts of a prepared dataset (what ``seqctr prepare --json`` prints)."""
from __future__ import annotations

import math

import numpy as np

from ..metrics import bucket_labels
from .dataset import SPLITS, SeqDataset


def split_summary(ds: SeqDataset, edges=(1, 50, 100, 200)) -> dict:
    """``{split: {rows, users, label_rate, mean_seq_len, buckets: {"[1,50)": N, ...}}}``."""
    e = list(edges) + [math.inf]
    out = {}
    for split in SPLITS:
        idx = ds.indices(split)
        L = ds.seq_len[idx]
        out[split] = {
            "rows": int(len(idx)),
            "users": int(len(np.unique(ds.sample_user[idx]))),
            "label_rate": float(ds.label[idx].mean()) if len(idx) else float("nan"),
            "mean_seq_len": float(L.mean()) if len(idx) else float("nan"),
            "buckets": {lab: int(((L >= a) & (L < b)).sum()) for lab, a, b in zip(bucket_labels(edges), e[:-1], e[1:])},
        }
    return out
