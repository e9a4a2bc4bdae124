"""Load benchmark of the HTTP scoring service (`seqctr serve`), on loopback.

One command: ``.venv/bin/python bench/bench_service.py`` (``--quick`` for a smoke run).

For DIN, SIM, TWIN and HSTU (random weights at the serving benchmarks' widths, see
serving_models.py; bundles written with max_len 1,000 on the prepared ml100k vocabularies), each
variant runs as a real `seqctr serve` process:

- ``full``: per-user caches of the full K/V (or the backbone's own state);
- ``ckv``: the CollectiveKV model, whose caches hold user parts + pool indices (not DIN);
- ``none``: no cache (``--cache-bytes 0``): every request prefills the stored history again;

with the embedded store and with Redis (a private redis-server on loopback). Users with 50, 200
and 1,000 stored events (sent once through ``POST /v1/users/{user}/events``) are scored by
``--concurrency`` asyncio + httpx clients, 200 random candidates per request, bounded by a request
count and a time limit per cell. The target cells (SIM and TWIN, 1,000 events, a cache) run
``--target-requests`` requests. Reported: requests/s, p50 / p99 latency (client side), errors, and
the bytes of one user's cache (``KVCache.nbytes``). Results: bench/results/service.{json,md}.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serving_models
from seqctr.serving.store import free_port, group_rss_bytes, stop_process
from seqctr.serving.http import parse_server_timing

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
MODELS = ("din", "sim", "twin", "hstu")
LENGTHS = (50, 200, 1000)
DEFAULTS = {"models": ",".join(MODELS), "lengths": "50,200,1000", "stores": "memory,redis", "variants": "full,ckv,none",
            "concurrency": 8, "tag": "service", "workers": 1, "users": 16, "target_requests": 10000,
            "codecs": "fp32", "threads": 0, "score_slots": 0}


def make_bundles(work: Path, models) -> dict:
    """``{(model, variant): bundle folder}`` (variant full / ckv), written once."""
    from seqctr.config import load_config
    from seqctr.data import prepare
    from seqctr.serving.bundle import write_bundle

    ds, folder, _ = prepare("ml100k")
    out = {}
    for name in models:
        for variant in ("full", "ckv"):
            if variant == "ckv" and name not in serving_models.COLLECTIVE:
                continue
            path = work / f"{name}-{variant}"
            if not (path / "bundle.json").exists():
                cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml",
                                  serving_models.overrides(name, variant == "ckv") + ["data.max_len=1000"])
                write_bundle(serving_models.build(name, ds.meta, variant == "ckv"), cfg, ds, folder, path)
            out[(name, variant)] = path
    return out


def start_server(bundle: Path, port: int, store: str, cache_bytes: int, workers: int, threads: int, work: Path,
                 codec: str = "fp32", score_slots: int = 0):
    env = {**os.environ, **serving_models.TUNED_MALLOC}
    cmd = [sys.executable, "-m", "seqctr", "serve", "--model", str(bundle), "--port", str(port), "--store", store,
           "--cache-bytes", str(cache_bytes), "--workers", str(workers), "--threads", str(threads),
           "--max-events", "1000", "--cache-codec", codec, "--score-slots", str(score_slots)]
    if store == "memory" and workers > 1:   # workers share histories through the SQLite file
        db = work / f"hist-{port}.sqlite"
        cmd += ["--history-file", str(db)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")


async def load(url: str, users: list[str], items: list[str], candidates: int, concurrency: int,
               n_requests: int, max_s: float, seed: int) -> dict:
    """``concurrency`` clients send score requests until ``n_requests`` are done or ``max_s`` passed."""
    import httpx

    rng = random.Random(seed)
    lat, errors, sent = [], 0, 0
    server = {}                                  # Server-Timing parts of the answered requests, ms
    t_end = time.perf_counter() + max_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker():
            nonlocal errors, sent
            while sent < n_requests and time.perf_counter() < t_end:
                sent += 1
                body = {"user": rng.choice(users), "candidates": rng.sample(items, candidates)}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/score", json=body)
                    ok = r.status_code == 200 and len(r.json()["scores"]) == candidates
                    if ok:
                        for name, ms in parse_server_timing(r.headers.get("server-timing", "")).items():
                            server.setdefault(name, []).append(ms)
                except httpx.HTTPError:
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(lat), "errors": errors, "wall_s": wall, "rps": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "max_ms": 1000 * lat[-1],
            **{f"server_{k}_p50_ms": statistics.median(v) for k, v in server.items() if v}}


def memory_cell(client, proc, base: int, store: str, name: str, variant: str, n_users: int, codec: str = "fp32") -> dict:
    """Resident memory of the server's processes per cached user after ``n_users`` users' histories
    were appended (each append builds the user's cache), beside the bytes the cache is charged."""
    from prometheus_client.parser import text_string_to_metric_families

    grown = group_rss_bytes(proc.pid) - base
    figures = {s.name: s.value for fam in text_string_to_metric_families(client.get("/metrics").text)
               for s in fam.samples if s.name in ("seqctr_cache_bytes", "seqctr_cached_users")}
    cached = int(figures.get("seqctr_cached_users", 0))
    charged = figures.get("seqctr_cache_bytes", 0) / max(cached, 1)
    return {"store": store, "model": name, "variant": variant, "codec": codec, "users": n_users, "cached_users": cached,
            "rss_grown_mb": grown / 1e6, "rss_per_user_kb": grown / max(n_users, 1) / 1e3,
            "charged_per_user_kb": charged / 1e3, "users_per_gb": 1e9 / charged if charged else None}


def cache_bytes_per_user(bundle: Path, items: list[str], lengths) -> dict:
    import seqctr

    sc = seqctr.load(bundle)
    rng = random.Random(0)
    return {L: sc.prefill("probe", [rng.choice(items) for _ in range(L)]).nbytes() for L in lengths}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--stores", default="memory,redis")
    ap.add_argument("--variants", default="full,ckv,none")
    ap.add_argument("--users", type=int, default=16, help="users per history length")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="requests per ordinary cell")
    ap.add_argument("--max-seconds", type=float, default=20, help="time limit per ordinary cell")
    ap.add_argument("--target-requests", type=int, default=10000, help="requests per target cell")
    ap.add_argument("--target-seconds", type=float, default=400, help="time limit per target cell")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per server worker (0 = default)")
    ap.add_argument("--score-slots", type=int, default=0, help="seqctr serve --score-slots (0 = no bound)")
    ap.add_argument("--tag", default="service", help="results file name: bench/results/<tag>.{json,md}")
    ap.add_argument("--codecs", default="fp32", help="cache codecs (seqctr serve --cache-codec), each its own server")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory cells (users per GB of cache per codec), no load cells")
    ap.add_argument("--quick", action="store_true", help="smoke run: few requests, one model")
    args = ap.parse_args()
    if args.quick:
        args.models, args.lengths, args.requests, args.target_requests, args.max_seconds = "twin", "50,1000", 40, 80, 10
    models = args.models.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    from seqctr.utils.io import write_json, write_text

    work = Path(tempfile.mkdtemp(prefix="seqctr-bench-service-"))
    bundles = make_bundles(ROOT / "bench" / "work" / "service_bundles", models)
    import seqctr

    vocab = list(seqctr.load(bundles[(models[0], "full")]).bundle.vocabs["item_id"])
    results = {"config": vars(args), "cells": [], "cache_bytes": {}}
    for (name, variant), b in bundles.items():
        results["cache_bytes"][f"{name}/{variant}"] = cache_bytes_per_user(b, vocab, lengths)
    import contextlib

    from seqctr.serving.store import local_redis

    for store_kind in args.stores.split(","):
        ctx = local_redis() if store_kind == "redis" else contextlib.nullcontext("memory")
        with ctx as store:
            for name, variant, codec in [(n, v, c) for n in models for v in args.variants.split(",")
                                         for c in args.codecs.split(",")]:
                    key = (name, "ckv" if variant == "ckv" else "full")
                    if key not in bundles or (variant == "none" and codec != "fp32"):
                        continue
                    if store_kind == "redis":
                        import redis

                        redis.Redis.from_url(store).flushdb()
                    port = free_port()
                    proc = start_server(bundles[key], port, store, 0 if variant == "none" else 1 << 30, args.workers,
                                        args.threads, work, codec, args.score_slots)
                    url = f"http://127.0.0.1:{port}"
                    try:
                        import httpx

                        rng = random.Random(1)
                        users = {L: [f"u{L}_{k}" for k in range(args.users)] for L in lengths}
                        with httpx.Client(base_url=url, timeout=120) as c:
                            for _ in range(3):              # warm up: the first requests allocate the workspace
                                c.post("/v1/score", json={"user": "warm", "candidates": vocab[:args.candidates]})
                            base = group_rss_bytes(proc.pid)
                            for L in lengths:
                                for u in users[L]:
                                    r = c.post(f"/v1/users/{u}/events",
                                               json={"events": [rng.choice(vocab) for _ in range(L)]})
                                    assert r.status_code == 200, r.text
                            results.setdefault("memory", []).append(
                                memory_cell(c, proc, base, store_kind, name, variant, sum(map(len, users.values())),
                                            codec))
                        for L in ([] if args.memory_only else lengths):
                            target = name in ("sim", "twin") and L == 1000 and variant != "none"
                            n, t = ((args.target_requests, args.target_seconds) if target
                                    else (args.requests, args.max_seconds))
                            asyncio.run(load(url, users[L], vocab, args.candidates, 2, 2 * len(users[L]), 60, 7))
                            res = asyncio.run(load(url, users[L], vocab, args.candidates, args.concurrency, n, t, L))
                            cell = {"store": store_kind, "model": name, "variant": variant, "codec": codec, "events": L,
                                    "target": target, **res}
                            results["cells"].append(cell)
                            print(f"{store_kind:6s} {name:5s} {variant:4s} {codec:4s} L={L:5d}: {res['rps']:7.1f} req/s  "
                                  f"p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  "
                                  f"errors {res['errors']}/{res['requests']}", flush=True)
                            write_json(OUT / f"{args.tag}.json", results)
                    finally:
                        stop_process(proc)
    write_json(OUT / f"{args.tag}.json", results)
    write_text(OUT / f"{args.tag}.md", render(results))
    print(render(results))
    return 0


def render(results: dict) -> str:
    cfg = results["config"]
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.items()
                     if k in ("models", "lengths", "stores", "variants", "concurrency", "tag", "workers", "users",
                              "target_requests", "codecs", "threads", "score_slots") and v != DEFAULTS.get(k))
    flags += " --memory-only" * bool(cfg.get("memory_only"))
    lines = ["# The HTTP scoring service under load (loopback, `seqctr serve`)", "",
             f"Command: `.venv/bin/python bench/bench_service.py {flags}`".replace(" `", "`") + f" ({cfg['concurrency']} concurrent clients, "
             f"{cfg['candidates']} candidates per request, {cfg['users']} users per history length, "
             f"{cfg['workers']} server worker(s) x {cfg['threads'] or 'default'} torch threads, "
             f"score slots {cfg.get('score_slots') or 'unbounded'}, random weights at the serving benchmarks' widths; target cells "
             f"(SIM / TWIN, 1,000 events, a cache) {cfg['target_requests']:,} requests, others {cfg['requests']} or "
             f"{cfg['max_seconds']:.0f} s). Client-side latency; `none` = no cache (every request prefills the stored "
             "history). Server side (the responses' `Server-Timing`, medians): `app`, the request's whole time in the "
             "server's app (body, validation, wait, cache, model, JSON); `wait`, waiting for a score slot (`--score-slots`); `cache`, getting the user's cache (store read and "
             "decode, or the build); `model`, scoring with it. Client p50 minus `app` is the time queued and on the "
             "wire.", "",
             "| store | model | cache | codec | events | requests | errors | req/s | p50 ms | p99 ms "
             "| server app ms | wait ms | cache ms | model ms |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ms(c, part):
        v = c.get(f"server_{part}_p50_ms")
        return "—" if v is None else f"{v:.1f}"

    for c in results["cells"]:
        mark = " **target**" if c["target"] else ""
        lines.append(f"| {c['store']} | {c['model']} | {c['variant']}{mark} | {c.get('codec', 'fp32')} | {c['events']:,} | "
                     f"{c['requests']:,} | "
                     f"{c['errors']} | {c['rps']:.1f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | "
                     f"{ms(c, 'app')} | {ms(c, 'wait')} | {ms(c, 'cache')} | {ms(c, 'model')} |")
    if results.get("memory"):
        lines += ["", "Memory per user: the server's resident memory (all its processes) grown while the users' "
                  "histories were appended (each append builds the cache), per user, beside the bytes the cache "
                  "is charged per cached user (`seqctr_cache_bytes` / `seqctr_cached_users`; a shared store's "
                  "caches live in Redis, not in the server):", "",
                  "| store | model | cache | codec | users | cached | RSS grown MB | RSS KB / user | charged KB / user "
                  "| users / GB of cache |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for m in results["memory"]:
            per_gb = f"{m['users_per_gb']:,.0f}" if m.get("users_per_gb") else "—"
            lines.append(f"| {m['store']} | {m['model']} | {m['variant']} | {m.get('codec', 'fp32')} | {m['users']:,} | "
                         f"{m['cached_users']:,} | {m['rss_grown_mb']:.1f} | {m['rss_per_user_kb']:.1f} | "
                         f"{m['charged_per_user_kb']:.1f} | {per_gb} |")
    lines += ["", "Cache bytes per user (`KVCache.nbytes`), and CollectiveKV's share of the full cache:", "",
              "| model | events | full | CollectiveKV | share |", "|---|---:|---:|---:|---:|"]
    cb = results["cache_bytes"]
    for key, per in cb.items():
        name, variant = key.split("/")
        if variant != "full":
            continue
        for L, full in per.items():
            ck = cb.get(f"{name}/ckv", {}).get(L)
            share = f"{100 * ck / full:.2f}%" if ck else "—"
            lines.append(f"| {name} | {int(L):,} | {full:,} | {ck if ck is None else f'{ck:,}'} | {share} |"
                         .replace("| None |", "| — |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    serving_models.with_tuned_malloc(__file__)
    sys.exit(main())
