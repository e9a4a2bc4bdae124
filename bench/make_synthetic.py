"""Deterministic synthetic interactions for scale benchmarks (never for results about models).

One command: ``.venv/bin/python bench/make_synthetic.py --events 10000000 --out /tmp/syn10m.parquet``
(``--parts N`` writes a folder of N parquet parts instead of one file; ``--order time`` writes the
events in global time order, users interleaved, as a raw log is — the order preparation must sort).

What it writes: ``user, item, timestamp, label`` (int64, int64, int64, int8), users contiguous in
time order, written in row groups of whole users so memory stays at one chunk of users:

- history lengths lognormal (``--mean-len`` ~1,000 by default, clipped to ``[3, --max-len]`` =
  50,000), so a few users hold most events — the shape of production logs;
- items Zipf-distributed over ``--items`` ids (exponent 1.1, ids shuffled so popularity does not
  follow the id order);
- a planted, length-dependent click signal: every user prefers one of 64 item clusters; a click is
  likelier on an item of that cluster, and the effect is stronger for short histories (logit
  ``-1.5 + match * (2.5 if length < 100 else 1.0)``), so a length-aware model has something to find.

The same ``--seed`` and sizes give byte-identical data.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CLUSTERS = 64
SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("timestamp", pa.int64()), ("label", pa.int8())])


def user_lengths(n_events: int, mean_len: float, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """Lognormal history lengths summing to exactly ``n_events`` (sigma 1.2: heavy tail)."""
    sigma = 1.2
    mu = np.log(mean_len) - sigma ** 2 / 2
    out, total = [], 0
    while total < n_events:
        ln = np.clip(np.round(rng.lognormal(mu, sigma, 4096)), 3, max_len).astype(np.int64)
        cum = total + np.cumsum(ln)
        k = int(np.searchsorted(cum, n_events))
        if k < len(ln):                       # the last user takes what is left (at least 3 events)
            ln = ln[: k + 1]
            ln[-1] = max(3, n_events - (total + int(ln[:-1].sum())))
        out.append(ln)
        total += int(ln.sum())
    return np.concatenate(out)


def zipf_items(n: int, n_items: int, rng: np.random.Generator, perm: np.ndarray) -> np.ndarray:
    """``n`` item ids, Zipf(1.1) by rank over ``n_items`` ids (ranks mapped through ``perm``)."""
    r = rng.zipf(1.1, n)
    bad = r > n_items
    while bad.any():
        r[bad] = rng.zipf(1.1, int(bad.sum()))
        bad = r > n_items
    return perm[r - 1]


def _user_chunks(lengths, pref, perm, n_items, rng, lo: int, hi: int, chunk_events: int):
    """Tables of whole users ``lo..hi-1``, about ``chunk_events`` events each."""
    u0 = lo
    while u0 < hi:
        cum = np.cumsum(lengths[u0:hi])
        u1 = u0 + max(1, int(np.searchsorted(cum, chunk_events)))
        ln = lengths[u0:u1]
        users = np.repeat(np.arange(u0, u1, dtype=np.int64) + 1000, ln)
        m = len(users)
        items = zipf_items(m, n_items, rng, perm)
        step = rng.integers(1, 3600, m)            # seconds between a user's events
        cs, first = np.cumsum(step), np.cumsum(ln) - ln
        ts = 1_500_000_000 + cs - np.repeat(cs[first] - step[first], ln)
        match = (items % CLUSTERS) == np.repeat(pref[u0:u1], ln)
        gain = np.where(np.repeat(ln, ln) < 100, 2.5, 1.0)
        p_click = 1 / (1 + np.exp(-(-1.5 + match * gain)))
        label = (rng.random(m) < p_click).astype(np.int8)
        yield pa.table({"user": users, "item": items, "timestamp": ts, "label": label}, schema=SCHEMA)
        u0 = u1


def generate(out: Path, n_events: int, *, n_items: int = 1_000_000, mean_len: float = 1000.0,
             max_len: int = 50_000, seed: int = 0, parts: int = 1, chunk_events: int = 2_000_000,
             order: str = "user") -> dict:
    """Write the table (a file, or a folder of ``parts`` files) and return its summary. ``order``:
    ``user`` (each user's events together, in time order) or ``time`` (all events by timestamp)."""
    rng = np.random.default_rng(seed)
    lengths = user_lengths(n_events, mean_len, max_len, rng)
    perm = rng.permutation(n_items).astype(np.int64) + 1
    n_users = len(lengths)
    pref = rng.integers(0, CLUSTERS, n_users)
    if parts > 1:
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"part-{i:03d}.parquet" for i in range(parts)]
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = [out]
    if order == "time":            # everything in memory, sorted by time, cut into parts by time
        t = pa.concat_tables(list(_user_chunks(lengths, pref, perm, n_items, rng, 0, n_users, chunk_events)))
        t = t.take(np.argsort(t.column("timestamp").to_numpy(), kind="stable"))
        cuts = np.linspace(0, t.num_rows, len(paths) + 1).astype(int)
        for p, path in enumerate(paths):
            pq.write_table(t.slice(cuts[p], cuts[p + 1] - cuts[p]), path, row_group_size=1 << 20)
    else:                          # users split into contiguous groups, one per part, written in chunks
        bounds = np.linspace(0, n_users, len(paths) + 1).astype(int)
        for p, path in enumerate(paths):
            with pq.ParquetWriter(path, SCHEMA) as w:
                for t in _user_chunks(lengths, pref, perm, n_items, rng, bounds[p], bounds[p + 1], chunk_events):
                    w.write_table(t)
    return {"events": int(lengths.sum()), "users": n_users, "mean_len": float(lengths.mean()),
            "max_len": int(lengths.max()), "median_len": float(np.median(lengths)), "items": n_items,
            "seed": seed, "files": [str(p) for p in paths]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="total events")
    ap.add_argument("--out", type=Path, required=True, help="parquet file (or folder with --parts > 1)")
    ap.add_argument("--items", type=int, default=1_000_000, help="item vocabulary")
    ap.add_argument("--mean-len", type=float, default=1000.0, help="mean history length")
    ap.add_argument("--max-len", type=int, default=50_000, help="longest history")
    ap.add_argument("--parts", type=int, default=1, help="write a folder of this many parquet parts")
    ap.add_argument("--order", choices=["user", "time"], default="user",
                    help="rows grouped by user, or in global time order (a raw log)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    info = generate(a.out, a.events, n_items=a.items, mean_len=a.mean_len, max_len=a.max_len, seed=a.seed,
                    parts=a.parts, order=a.order)
    print(f"{info['events']:,} events, {info['users']:,} users (mean {info['mean_len']:.0f}, median "
          f"{info['median_len']:.0f}, max {info['max_len']:,} events) -> {a.out}")


if __name__ == "__main__":
    main()
