"""Batch prediction (``seqctr predict``): score every event of an interactions table.

Each event is scored as the candidate of its user's earlier events in the same table (sorted by
``(timestamp, item)`` per user, the most recent ``max_len`` kept): what the model would have said
just before the event. Raw ids go through the bundle's vocabularies (unknown -> out-of-vocabulary,
as in :class:`~seqctr.serving.scorer.Scorer`). The id columns are read once, scoring and writing
stream in chunks; the output parquet appears whole or not at all. Rows come out in (user, time)
order with ``row``, the input row number (1-based).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.batching import gather_windows
from ..data.encode import as_str
from ..errors import InputError
from ..utils.io import atomic_path
from ..utils.progress import Progress


@torch.no_grad()
def predict_table(scorer, path: str | Path, out: str | Path, columns: dict | None = None,
                  label_column: str | None = None, chunk: int = 4096, progress: bool | None = None) -> dict:
    """Score ``path`` into the parquet file ``out``; returns ``{"rows": n, "out": out}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..data import SeqBatch
    from ..data.columns import get_column, read_ids, read_times
    from ..data.sources import read_table_file

    path, out = Path(path), Path(out)
    columns = dict(columns or {})
    table = read_table_file(path, columns.get("names"))
    names = {r: columns.get(r, r) for r in ("user", "item", "timestamp")}
    user = read_ids(get_column(table, names["user"], path), path, names["user"])
    item = read_ids(get_column(table, names["item"], path), path, names["item"])
    ts = read_times(get_column(table, names["timestamp"], path), path, names["timestamp"])
    label = None
    if label_column:
        label = get_column(table, label_column, path)
    n = len(user)
    us, it = as_str(user), as_str(item)
    order = np.lexsort((it, ts, us))
    us_s = us[order]
    starts = np.flatnonzero(np.r_[True, us_s[1:] != us_s[:-1]])
    offsets = np.r_[starts, n].astype(np.int64)
    counts = np.diff(offsets)
    user_row = np.repeat(np.arange(len(counts)), counts)
    pos = np.arange(n) - offsets[user_row]
    seq_items = np.asarray(scorer.item_ids(list(it[order])), np.int64)
    seq_ts = np.asarray(ts[order], np.int64) if scorer.uses_time else None
    user_feats = torch.stack([scorer.user_row(u) for u in us_s[starts]]) if n else torch.zeros(0, 0)
    items = scorer.items
    model, max_len = scorer.model, scorer.max_len
    model.eval()
    score_sum = 0.0
    with atomic_path(out) as tmp:
        writer = None
        for s in Progress(range(0, n, chunk), f"predict ({chunk} events a step)", progress):
            sl = slice(s, min(s + chunk, n))
            hist, mask, *hist_ts = gather_windows(seq_items, offsets, user_row[sl], pos[sl], max_len, seq_ts=seq_ts)
            times = {} if seq_ts is None else {"hist_time": torch.from_numpy(hist_ts[0]),
                                                "target_time": torch.from_numpy(seq_ts[sl])}
            batch = SeqBatch(user=user_feats[user_row[sl]], target=items[torch.from_numpy(seq_items[sl])],
                             hist=items[torch.from_numpy(hist)], mask=torch.from_numpy(mask),
                             seq_len=torch.from_numpy(pos[sl].astype(np.int64)),
                             label=torch.zeros(sl.stop - s), user_index=torch.from_numpy(user_row[sl]), **times)
            p = torch.sigmoid(model(batch).logits).double().numpy()
            score_sum += float(p.sum())
            rows = order[sl]
            cols = {"row": rows + 1, names["user"]: user[rows], names["item"]: item[rows],
                    names["timestamp"]: ts[rows], "history_len": pos[sl], "score": p}
            if label is not None:
                cols[label_column] = label.take(pa.array(rows))
            t = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(tmp, t.schema)
            writer.write_table(t)
        if writer is None:
            raise InputError("table has no rows", path=path)
        writer.close()
    return {"rows": n, "out": str(out), "mean_score": score_sum / n}
