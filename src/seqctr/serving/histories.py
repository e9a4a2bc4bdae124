"""Load users' histories from data into a serving store, so a user the model has seen is scored on
their real history from the first request (``seqctr serve --histories SOURCE``, ``seqctr histories``).

The source is read as ``prepare`` reads it (the same source strings and column options): every
event of every user, oldest first by ``(timestamp, item)`` as in the prepared dataset, with its
raw item id and time. Each user's stored history is replaced whole; users are written in chunks
(one transaction each), with a progress bar.
"""
from __future__ import annotations

import time

import numpy as np

from ..data.construct import event_order, resolve_source, sort_key
from ..data.encode import as_str
from ..errors import SeqctrError
from ..utils.progress import Progress


def group_histories(inter) -> tuple[int, object]:
    """``(number of users, iterator of (user, items, times))``: each user's events in the prepared
    dataset's order (raw ids as strings, times as ints), users in key order. The sort keys are
    made once, and the user count comes from the same grouping the iterator walks."""
    ukey = sort_key(inter.user)
    order = event_order(ukey, inter.timestamp, sort_key(inter.item))
    take = (lambda a: a) if order is None else (lambda a: a[order])
    ukey, users, items, ts = take(ukey), take(inter.user), take(inter.item), take(inter.timestamp)
    starts = np.flatnonzero(np.r_[True, ukey[1:] != ukey[:-1]]) if len(ukey) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(ukey)]

    def walk():
        user_str = as_str(users[starts]) if len(starts) else []
        for u, a, b in zip(user_str, starts, ends):
            yield str(u), as_str(items[a:b]).tolist(), ts[a:b].astype(np.int64).tolist()

    return len(starts), walk()


def load_histories(store, source: str, columns: dict | None = None, label: dict | None = None,
                   items: dict | None = None, users: dict | None = None, chunk: int = 1000,
                   progress: bool | None = None) -> dict:
    """Replace each user's stored history by their events in ``source``; returns ``{"users",
    "events", "seconds"}``."""
    t0 = time.perf_counter()
    src = resolve_source(source, columns, label, items=items, users=users)
    if src.read_events is None:
        raise SeqctrError(f"histories from {source}: only event tables are supported (a table, ml100k, "
                          f"ml-latest-small, a MovieLens folder), not the {src.protocol} layout")
    n_users, histories = group_histories(src.read_events())
    n_events, done, batch = 0, 0, []
    for h in Progress(histories, "histories", enabled=progress, total=n_users):
        batch.append(h)
        n_events += len(h[1])
        if len(batch) >= chunk:
            done += store.replace_many(batch)
            batch = []
    if batch:
        done += store.replace_many(batch)
    return {"users": done, "events": n_events, "seconds": round(time.perf_counter() - t0, 3)}
