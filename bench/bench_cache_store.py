"""Benchmark: reading users' caches from a real Redis — full K/V cache vs CollectiveKV cache.

One command: ``.venv/bin/python bench/bench_cache_store.py`` (needs ``redis-server``; ``--quick``
for a smoke run). Starts a private redis-server pinned to one core (``--redis-cpu``), this process
pinned to the other (``--cpu``). For each model (bench/serving_models.py: TWIN, SIM, HSTU, full and
CollectiveKV) and history length, it prefills ``max(batches)`` users with different random
histories, writes their caches to Redis, then times reading a batch of B users' caches: one
``MGET`` round trip plus decoding (``KVCache.from_bytes``), median over ``--repeats``. This is the
step CollectiveKV shrinks when caches live outside the serving process (the paper's setting).
For context it also times scoring 200 candidates from one decoded cache (``CTRModel.score``).
Writes ``bench/results/cache_store.{json,md}``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import serving_models

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])  # recorded with the results


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and slowest wall time of ``fn()`` in ms, after one warm-up call."""
    times = serving_models.timed(fn, repeats)
    return 1000 * statistics.median(times), 1000 * times[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="twin,sim,hstu")
    ap.add_argument("--lengths", default="200,1000")
    ap.add_argument("--batches", default="1,8,64,512", help="users per batch read")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cpu", default="0")
    ap.add_argument("--redis-cpu", default="1")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench/results/cache_store"))
    args = ap.parse_args()
    serving_models.with_tuned_malloc(__file__)     # as bench_serving.py: no page faults per request
    if args.quick:
        args.lengths, args.batches, args.repeats = "200", "1,8", 3
    ds, items = serving_models.setup(args.cpu)
    import redis
    import torch

    from seqctr.serving import KVCache
    from seqctr.serving.store import RedisCacheStore, local_redis
    from seqctr.utils.io import write_json, write_text

    users = torch.from_numpy(ds.user_feats).long()
    batches = [int(b) for b in args.batches.split(",")]
    n_users = max(batches)
    rows = []
    with local_redis(cpu=int(args.redis_cpu) if args.redis_cpu else None) as url:
        client = redis.Redis.from_url(url)
        for name in args.models.split(","):
            for collective in (False, True):
                model = serving_models.build(name, ds.meta, collective)
                variant = "collective" if collective else "full"
                for L in [int(x) for x in args.lengths.split(",")]:
                    g = torch.Generator().manual_seed(L)
                    client.flushdb()
                    store = RedisCacheStore(client, namespace=f"bench:{model.model_version()}")
                    for start in range(0, n_users, 64):        # write in chunks: bounded memory here
                        chunk = {}
                        for u in range(start, min(start + 64, n_users)):
                            hist = items[torch.randint(2, len(items), (L,), generator=g)]
                            chunk[u] = model.prefill(users[u % len(users)], hist)
                        store.put_many(chunk)
                    one = store.get(0)
                    cands = items[torch.randint(2, len(items), (200,), generator=g)]
                    with torch.no_grad():
                        score_ms, _ = median_ms(lambda: model.score(one, cands), args.repeats)
                    nbytes = len(one.to_bytes())
                    for B in batches:
                        ids = list(range(B))
                        fetch_ms, _ = median_ms(lambda: store.get_bytes(ids), args.repeats)
                        read_ms, read_max = median_ms(lambda: [KVCache.from_bytes(b) for b in store.get_bytes(ids)],
                                                      args.repeats)
                        rows.append({"model": name, "variant": variant, "events": L, "users": B,
                                     "bytes_per_user": nbytes, "fetch_ms": fetch_ms, "read_ms": read_ms,
                                     "read_max_ms": read_max, "score_200_ms": score_ms, "repeats": args.repeats})
                        print(f"{name:5s} {variant:10s} L={L:5d} B={B:4d}: {nbytes:>10,} B/user, fetch {fetch_ms:8.2f} "
                              f"ms, fetch+decode {read_ms:8.2f} ms (score 200: {score_ms:.2f} ms)", flush=True)
        client.flushdb()
    write_json(args.out + ".json", {"command": COMMAND, "rows": rows})
    lines = ["# Reading caches from Redis: full K/V vs CollectiveKV", "",
             f"Command: `{COMMAND}`; this process on one core, redis-server (loopback) on the other, 1 torch "
             "thread, glibc malloc tuned as in bench_serving.py. `fetch` = one MGET of the batch's keys (bytes "
             "in hand); `read` = fetch + `KVCache.from_bytes` for each; medians of the repeats; `score 200` = scoring 200 candidates from one "
             "decoded cache (context: what a request does next). Ratio = full / CollectiveKV, same run.", "",
             "| model | events | users per batch | full: bytes/user | full: fetch / read ms | CKV: bytes/user "
             "| CKV: fetch / read ms | read ratio | score 200 ms (full / CKV) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    key = {(r["model"], r["events"], r["users"], r["variant"]): r for r in rows}
    for (mname, L, B, v), full in key.items():
        if v != "full":
            continue
        ckv = key.get((mname, L, B, "collective"))
        if ckv is None:
            continue
        lines.append(f"| {mname} | {L} | {B} | {full['bytes_per_user']:,} | {full['fetch_ms']:.2f} / {full['read_ms']:.2f} | "
                     f"{ckv['bytes_per_user']:,} | {ckv['fetch_ms']:.2f} / {ckv['read_ms']:.2f} | "
                     f"{full['read_ms'] / ckv['read_ms']:.1f}x | "
                     f"{full['score_200_ms']:.2f} / {ckv['score_200_ms']:.2f} |")
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
