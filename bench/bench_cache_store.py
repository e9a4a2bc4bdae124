"""Benchmark: serving batches of users whose state lives in a real Redis — recompute from the
stored history vs full K/V cache vs CollectiveKV cache.

One command: ``.venv/bin/python bench/bench_cache_store.py`` (needs ``redis-server``; ``--quick``
for a smoke run). Starts a private redis-server pinned to one core (``--redis-cpu``), this process
pinned to the other (``--cpu``). For each model (bench/serving_models.py: TWIN, SIM, ETA, HSTU) and
history length it writes ``max(batches)`` users with different random histories to Redis three
ways — the history's item ids (int32), the full cache, the CollectiveKV model's cache — and times:

- reading a batch of B users' caches: one ``MGET`` (``fetch``) and ``fetch`` + decoding
  (``read``; ``KVCache.from_bytes``): the step CollectiveKV shrinks (the paper's setting);
- a whole request for B users, 200 different candidates each (the issue's batch sizes 1..512):
  ``recompute`` = MGET the ids, then ``prefill`` + ``score`` per user (the best no-cache server:
  the history's K/V are rebuilt once per user, not per candidate); ``cache`` / ``CollectiveKV`` =
  MGET the caches, decode, ``score`` per user. Median and p99 (= the slowest repeat when there are
  fewer than 100; repeats per cell in the JSON), candidates scored per second, bytes read.

Users in a batch are scored one after another: on CPU a request of 200 candidates is already one
batched computation per user, and the per-call overhead is ~1 ms of 10-30 ms (a padded multi-user
kernel would matter on GPU; not built). Writes ``bench/results/cache_store.{json,md}``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import serving_models
from seqctr.serving.runtime import fingerprint, prefill, score

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])  # recorded with the results


def percentiles_ms(fn, repeats: int) -> tuple[float, float]:
    """Median and p99 (the slowest when ``repeats`` < 100) wall time of ``fn()`` in ms."""
    times = serving_models.timed(fn, repeats)
    return 1000 * statistics.median(times), 1000 * times[min(len(times) - 1, int(0.99 * len(times)))]


def request_repeats(B: int, repeats: int) -> int:
    """Fewer repeats for big batches (a 512-user request at 1,000 events takes seconds)."""
    return max(3, min(repeats, 600 // B))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="twin,sim,eta,hstu")
    ap.add_argument("--lengths", default="50,200,1000")
    ap.add_argument("--batches", default="1,8,64,512", help="users per request")
    ap.add_argument("--candidates", type=int, default=200, help="candidates per user")
    ap.add_argument("--repeats", type=int, default=21, help="per cell; big batches use fewer (request_repeats)")
    ap.add_argument("--cpu", default="0")
    ap.add_argument("--redis-cpu", default="1")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench/results/cache_store"))
    args = ap.parse_args()
    serving_models.with_tuned_malloc(__file__)     # as bench_serving.py: no page faults per request
    if args.quick:
        args.lengths, args.batches, args.repeats = "200", "1,8", 3
    ds, items = serving_models.setup(args.cpu)
    import numpy as np
    import redis
    import torch

    from seqctr.serving import KVCache
    from seqctr.serving.store import RedisCacheStore, local_redis
    from seqctr.utils.io import write_json, write_text

    users = torch.from_numpy(ds.user_feats).long()
    batches = [int(b) for b in args.batches.split(",")]
    n_users, C = max(batches), args.candidates
    reads, requests = [], []
    with local_redis(cpu=int(args.redis_cpu) if args.redis_cpu else None) as url:
        client = redis.Redis.from_url(url)
        for name in args.models.split(","):
            full, ckv = serving_models.build(name, ds.meta), serving_models.build(name, ds.meta, collective=True)
            for L in [int(x) for x in args.lengths.split(",")]:
                g = torch.Generator().manual_seed(L)
                hist_ids = torch.randint(2, len(items), (n_users, L), generator=g)
                cands = items[torch.randint(2, len(items), (n_users, C), generator=g)]       # [U, C, Fi]
                client.flushdb()
                stores = {v: RedisCacheStore(client, namespace=f"bench:{v}:{fingerprint(m)}")
                          for v, m in (("cache", full), ("collective", ckv))}
                ids_key = "bench:ids:{}".format
                for start in range(0, n_users, 64):            # write in chunks: bounded memory here
                    chunk = range(start, min(start + 64, n_users))
                    client.mset({ids_key(u): hist_ids[u].numpy().astype(np.int32).tobytes() for u in chunk})
                    for v, m in (("cache", full), ("collective", ckv)):
                        stores[v].put_many({u: prefill(m, users[u], items[hist_ids[u]]) for u in chunk})

                fetch = {"recompute": lambda B: client.mget([ids_key(u) for u in range(B)]),
                         "cache": lambda B: stores["cache"].get_bytes(range(B)),
                         "collective": lambda B: stores["collective"].get_bytes(range(B))}

                def request(v, B):
                    """One request: B users' stored state in one MGET, then each user's candidates scored."""
                    model = ckv if v == "collective" else full
                    out = []
                    for u, raw in enumerate(fetch[v](B)):
                        if v == "recompute":
                            cache = prefill(full, users[u], items[torch.from_numpy(np.frombuffer(raw, np.int32)).long()])
                        else:
                            cache = KVCache.from_bytes(raw)
                        out.append(score(model, cache, cands[u]))
                    return out

                with torch.no_grad():                           # the stored cache scores as recomputing does
                    if not torch.allclose(request("cache", 1)[0], request("recompute", 1)[0], atol=1e-5):
                        raise AssertionError(f"{name}: cached scores differ from recompute")
                for B in batches:
                    for v in ("cache", "collective"):
                        fetch_ms, _ = percentiles_ms(lambda: fetch[v](B), args.repeats)
                        read_ms, read_p99 = percentiles_ms(lambda: [KVCache.from_bytes(b) for b in fetch[v](B)],
                                                           args.repeats)
                        reads.append({"model": name, "variant": v, "events": L, "users": B,
                                      "bytes_per_user": len(fetch[v](1)[0]), "fetch_ms": fetch_ms,
                                      "read_ms": read_ms, "read_p99_ms": read_p99, "repeats": args.repeats})
                    for v in fetch:
                        reps = request_repeats(B, args.repeats)
                        with torch.no_grad():
                            med, p99 = percentiles_ms(lambda: request(v, B), reps)
                        nbytes = sum(map(len, fetch[v](B)))
                        requests.append({"model": name, "variant": v, "events": L, "users": B, "candidates": C,
                                         "median_ms": med, "p99_ms": p99, "repeats": reps,
                                         "candidates_per_s": 1000 * B * C / med, "bytes_read": nbytes})
                        print(f"{name:5s} {v:10s} L={L:5d} B={B:4d}: {med:9.2f} ms (p99 {p99:.2f}), "
                              f"{nbytes:>12,} B read", flush=True)
        client.flushdb()
    write_json(args.out + ".json", {"command": COMMAND, "reads": reads, "requests": requests})
    write_text(args.out + ".md", "\n".join(report(reads, requests, C)) + "\n")
    print(open(args.out + ".md").read())
    return 0


def by_cell(rows: list[dict], *variants: str):
    """``((model, events, users), (row of each variant))`` per cell, in the order the cells were run."""
    key = {(r["model"], r["events"], r["users"], r["variant"]): r for r in rows}
    for (mname, L, B, v) in key:
        if v == variants[0]:
            yield (mname, L, B), tuple(key[(mname, L, B, x)] for x in variants)


def report(reads: list[dict], requests: list[dict], C: int) -> list[str]:
    """The two markdown tables: whole requests, then cache reads."""
    lines = ["# Serving batches of users from Redis: recompute vs full K/V cache vs CollectiveKV", "",
             f"Command: `{COMMAND}`; this process on one core, redis-server (loopback) on the other, 1 torch "
             "thread, glibc malloc tuned as in bench_serving.py.", "",
             f"## Whole requests: B users x {C} candidates each", "",
             "`recompute` = MGET the users' history ids, prefill + score each; `cache` / `CKV` = MGET the caches, "
             "decode, score each. Median and p99 ms per request (p99 = the slowest repeat; repeats in the JSON), "
             "candidates/s at the median, bytes read from Redis per request; (x) = recompute / variant.", "",
             "| model | events | users | recompute ms (p99) | cache ms (p99) (x) | CKV ms (p99) (x) "
             "| candidates/s: recompute / cache / CKV | bytes read: recompute / cache / CKV |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (mname, L, B), (rc, ca, ck) in by_cell(requests, "recompute", "cache", "collective"):
        def cell(r, ratio=True):
            x = f" ({rc['median_ms'] / r['median_ms']:.1f}x)" if ratio else ""
            return f"{r['median_ms']:.2f} ({r['p99_ms']:.2f}){x}"
        rate = " / ".join(f"{r['candidates_per_s']:,.0f}" for r in (rc, ca, ck))
        nbytes = " / ".join(f"{r['bytes_read']:,}" for r in (rc, ca, ck))
        lines.append(f"| {mname} | {L} | {B} | {cell(rc, False)} | {cell(ca)} | {cell(ck)} | {rate} | {nbytes} |")
    lines += ["", "## Reading the caches only", "",
              "`fetch` = one MGET of the batch's keys (bytes in hand); `read` = fetch + `KVCache.from_bytes` for "
              "each; medians. Ratio = full / CollectiveKV read, same run.", "",
              "| model | events | users per batch | full: bytes/user | full: fetch / read ms | CKV: bytes/user "
              "| CKV: fetch / read ms | read ratio |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (mname, L, B), (full, ckv) in by_cell(reads, "cache", "collective"):
        lines.append(f"| {mname} | {L} | {B} | {full['bytes_per_user']:,} | {full['fetch_ms']:.2f} / "
                     f"{full['read_ms']:.2f} | {ckv['bytes_per_user']:,} | {ckv['fetch_ms']:.2f} / "
                     f"{ckv['read_ms']:.2f} | {full['read_ms'] / ckv['read_ms']:.1f}x |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
