"""``seqctr analyze data``: how users and samples spread over history-length buckets (LAIN
paper, Table 1 / Fig. 1b). Users are bucketed by their full history length, samples by theirs."""
from __future__ import annotations


import numpy as np

from ..data import SeqDataset
from ..metrics import DEFAULT_BUCKETS, bucket_masks


def analyze_dataset(ds: SeqDataset, edges=DEFAULT_BUCKETS, category_feature: int | None = 1) -> dict:
    """Per bucket: users, samples, their shares, label rate, coefficient of variation of the
    per-user label rate, mean distinct categories per user, and samples-per-user imbalance."""
    n_users = len(ds.offsets) - 1
    user_len = np.diff(ds.offsets)
    per_user_n = np.bincount(ds.sample_user, minlength=n_users)
    per_user_pos = np.bincount(ds.sample_user, weights=ds.label, minlength=n_users)
    rate = np.divide(per_user_pos, per_user_n, out=np.full(n_users, np.nan), where=per_user_n > 0)
    has_cat = category_feature is not None and ds.item_feats.shape[1] > category_feature
    if has_cat:
        cats = ds.item_feats[ds.seq_items, category_feature]
        users_of_event = np.repeat(np.arange(n_users), user_len)
        pairs = np.unique(users_of_event.astype(np.int64) * (int(cats.max()) + 1) + cats)
        distinct = np.bincount(pairs // (int(cats.max()) + 1), minlength=n_users)
    out = {"n_users": int(n_users), "n_samples": int(len(ds.label)), "buckets": {}}
    sample_masks = bucket_masks(ds.sample_pos, edges)
    for label, u in bucket_masks(user_len, edges).items():
        s = sample_masks[label]
        r = rate[u & (per_user_n > 0)]
        out["buckets"][label] = {
            "users": int(u.sum()), "user_share": float(u.mean()),
            "samples": int(s.sum()), "sample_share": float(s.mean()),
            "label_rate": float(ds.label[s].mean()) if s.any() else float("nan"),
            "label_rate_cv_across_users": float(r.std() / r.mean()) if len(r) > 1 and r.mean() > 0 else float("nan"),
            "mean_distinct_categories_per_user": float(distinct[u].mean()) if has_cat and u.any() else float("nan"),
            "samples_per_user_share_ratio": float(s.mean() / u.mean()) if u.any() else float("nan"),
        }
    return out


def format_data_table(a: dict) -> str:
    lines = ["| bucket | users | user share | samples | sample share | label rate | CV of user label rate | "
             "distinct categories / user |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in a["buckets"].items():
        lines.append(f"| {k} | {v['users']:,} | {v['user_share']:.1%} | {v['samples']:,} | {v['sample_share']:.1%} | "
                     f"{v['label_rate']:.3f} | {v['label_rate_cv_across_users']:.3f} | "
                     f"{v['mean_distinct_categories_per_user']:.1f} |")
    return "\n".join(lines)
