"""Soak run of the HTTP scoring service (`seqctr serve`) as operators run it, on loopback.

One command: ``.venv/bin/python bench/soak_service.py`` (``--quick`` for a smoke run).

A TWIN bundle (random weights at the serving benchmarks' widths, see serving_models.py, window
1,000 events) served by ``--workers`` processes with a persistent store (``--store sqlite``: a
shared history file; ``--store redis``: a private redis-server) and a cache budget
(``--cache-bytes``). ``--concurrency`` asyncio + httpx clients send ``--requests`` mixed requests:
``--append-share`` of them appends of 1-3 events (with times), the rest scores of ``--candidates``
candidates, for ``--users`` users drawn with Zipf popularity (``--zipf``): a few users grow long
histories, most stay short. Then ``--unknown-paths`` requests to random unknown paths.

Reported (docs/results/<tag>.{json,md}): errors (any non-200), latency p50 / p99 per kind and per
tenth of the run, the server's resident memory (all its processes) sampled through the run, the
``/metrics`` page size before and after the unknown paths, and the audit of every acknowledged
append against the store at the end: events lost or duplicated.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from seqctr.serving.store import free_port, group_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"


def pct(xs, q: float) -> float:
    return 1000 * float(np.percentile(xs, q)) if len(xs) else float("nan")


def start(bundle: Path, args, store: str, db: Path | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "seqctr", "serve", "--model", str(bundle), "--port", str(port), "--workers",
           str(args.workers), "--threads", "1", "--cache-bytes", str(args.cache_bytes), "--store", store]
    if db is not None:
        cmd += ["--history-file", str(db)]
    log = open(Path(tempfile.gettempdir()) / f"seqctr-soak-{port}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"server did not start; see {log.name}")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def soak(url: str, args, items: list[str]) -> dict:
    import httpx

    rng = random.Random(args.seed)
    ranks = np.arange(1, args.users + 1, dtype=np.float64)
    p = ranks ** -args.zipf
    draws = np.random.default_rng(args.seed).choice(args.users, size=args.requests, p=p / p.sum())
    lat = {"score": [], "append": []}
    per_tenth = [[] for _ in range(10)]
    errors: dict = {}
    acked: dict = {}
    clock = [0]
    next_i = [0]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            while next_i[0] < args.requests:
                i = next_i[0]
                next_i[0] += 1
                user = f"z{draws[i]}"
                if rng.random() < args.append_share:
                    kind = "append"
                    clock[0] += 1
                    events = [{"item": rng.choice(items), "timestamp": 1_700_000_000 + clock[0]}
                              for _ in range(rng.randint(1, 3))]
                    req = client.post(f"/v1/users/{user}/events", json={"events": events})
                else:
                    kind = "score"
                    req = client.post("/v1/score", json={"user": user, "candidates": rng.sample(items, args.candidates)})
                t0 = time.perf_counter()
                try:
                    r = await req
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                dt = time.perf_counter() - t0
                lat[kind].append(dt)
                per_tenth[min(9, i * 10 // args.requests)].append(dt)
                if code != 200:
                    errors[str(code)] = errors.get(str(code), 0) + 1
                elif kind == "append":
                    acked[user] = acked.get(user, 0) + len(events)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
        m0 = len((await client.get("/metrics")).content)
        unknown_errors = 0
        for k in range(args.unknown_paths):
            r = await client.get(f"/x{rng.random()}/{k}")
            unknown_errors += r.status_code != 404
        m1 = (await client.get("/metrics")).text
    return {"wall_s": wall, "rps": args.requests / wall, "errors": errors, "acked": acked,
            "p50_ms": {k: pct(v, 50) for k, v in lat.items()}, "p99_ms": {k: pct(v, 99) for k, v in lat.items()},
            "requests": {k: len(v) for k, v in lat.items()},
            "p99_by_tenth_ms": [pct(v, 99) for v in per_tenth], "p50_by_tenth_ms": [pct(v, 50) for v in per_tenth],
            "metrics_bytes_before_unknown": m0, "metrics_bytes_after_unknown": len(m1.encode()),
            "unknown_path_non404": unknown_errors, "metrics": m1}


def gauges(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name in ("seqctr_cache_bytes", "seqctr_cached_users")}


def stored_lengths(store: str, db: Path | None, redis_url: str | None) -> dict:
    if db is not None:
        import sqlite3

        conn = sqlite3.connect(db)
        out = dict(conn.execute("SELECT user, COUNT(*) FROM events GROUP BY user").fetchall())
        dup = conn.execute("SELECT COUNT(*) FROM (SELECT user, pos FROM events GROUP BY user, pos HAVING COUNT(*) > 1)"
                           ).fetchone()[0]
        conn.close()
        return {"lengths": out, "duplicate_positions": dup}
    import redis

    c = redis.Redis.from_url(redis_url)
    return {"lengths": {k.decode().split(":", 2)[2]: c.llen(k) for k in c.scan_iter("seqctr:hist:*")},
            "duplicate_positions": 0}


def main() -> int:
    from seqctr.cli import byte_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "redis"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--append-share", type=float, default=0.3)
    ap.add_argument("--zipf", type=float, default=1.05, help="popularity exponent (rank ** -zipf)")
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cache-bytes", type=byte_size, default=500_000_000, help="the service's cache budget (500MB, 2GiB)")
    ap.add_argument("--unknown-paths", type=int, default=10_000)
    ap.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling period")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default=None, help="results name (default service_soak_<store>)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 requests over 500 users")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.users, args.unknown_paths = 2000, 500, 500
    tag = args.tag or f"service_soak_{args.store}" + ("_quick" if args.quick else "")
    import bench_service
    import seqctr
    from seqctr.serving.store import local_redis
    from seqctr.utils.io import write_json, write_text

    bundle = bench_service.make_bundles(ROOT / "bench" / "work" / "service_bundles", ["twin"])[("twin", "full")]
    items = list(seqctr.load(bundle).bundle.vocabs["item_id"])
    work = Path(tempfile.mkdtemp(prefix="seqctr-soak-"))
    import contextlib

    ctx = local_redis() if args.store == "redis" else contextlib.nullcontext(None)
    with ctx as redis_url:
        db = work / "histories.sqlite" if args.store == "sqlite" else None
        proc, url = start(bundle, args, redis_url or "memory", db)
        rss, done = [], threading.Event()
        t_start = time.perf_counter()

        def sample():
            while not done.is_set():
                rss.append((round(time.perf_counter() - t_start, 1), round(group_rss_bytes(proc.pid) / 1e6, 1)))
                done.wait(args.sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            res = asyncio.run(soak(url, args, items))
        finally:
            done.set()
            sampler.join()
            stop(proc)
        audit = stored_lengths(args.store, db, redis_url)
    lengths = audit["lengths"]
    acked = res.pop("acked")
    lost = sum(max(0, n - lengths.get(u, 0)) for u, n in acked.items())
    extra = sum(max(0, lengths.get(u, 0) - acked.get(u, 0)) for u in lengths)
    metrics_text = res.pop("metrics")
    warm = [m for t, m in rss if t >= 0.2 * res["wall_s"]]
    out = {"config": vars(args), **res, "rss_mb": rss, "appended_events": sum(acked.values()),
           "events_lost": lost, "events_extra": extra, "duplicate_positions": audit["duplicate_positions"],
           "users_with_history": len(lengths), "longest_history": max(lengths.values(), default=0),
           "rss_after_warmup_mb": {"min": min(warm, default=None), "max": max(warm, default=None)},
           "server_errors_in_metrics": "seqctr_server_errors_total{" in metrics_text,
           "cache_gauges": gauges(metrics_text),
           "env": {k: v for k, v in os.environ.items() if k.startswith(("SEQCTR_MALLOC", "MALLOC_"))}}
    write_json(OUT / f"{tag}.json", out)
    write_text(OUT / f"{tag}.md", render(out, tag))
    print(render(out, tag))
    return 0


def render(r: dict, tag: str) -> str:
    c = r["config"]
    flags = "" if c["store"] == "sqlite" else f" --store {c['store']}"
    if c["workers"] != 2:
        flags += f" --workers {c['workers']}"
    if c["tag"]:
        flags += f" --tag {c['tag']}"
    if c["quick"]:
        flags += " --quick"
    rss = r["rss_mb"]
    n_err = sum(r["errors"].values())
    lines = [f"# Soak run of the scoring service ({c['store']} store, {c['workers']} workers)", "",
             f"Command: `.venv/bin/python bench/soak_service.py{flags}` — TWIN (random weights at the serving "
             f"benchmarks' widths, window 1,000), {c['requests']:,} requests from {c['concurrency']} concurrent "
             f"clients over {c['users']:,} users with Zipf popularity (exponent {c['zipf']}), "
             f"{100 * c['append_share']:.0f}% appends of 1-3 events, the rest scores of {c['candidates']} "
             f"candidates; `--cache-bytes {c['cache_bytes']:,}`; client and server on the same 2 cores. "
             f"Results: `docs/results/{tag}.json`.", "",
             "| figure | value |", "|---|---:|",
             f"| requests (score / append) | {r['requests']['score']:,} / {r['requests']['append']:,} |",
             f"| errors (any non-200) | {n_err} {r['errors'] if n_err else ''} |",
             f"| wall time, throughput | {r['wall_s']:.0f} s, {r['rps']:.0f} req/s |",
             f"| score p50 / p99 | {r['p50_ms']['score']:.1f} / {r['p99_ms']['score']:.1f} ms |",
             f"| append p50 / p99 | {r['p50_ms']['append']:.1f} / {r['p99_ms']['append']:.1f} ms |",
             f"| events acknowledged / lost / extra | {r['appended_events']:,} / {r['events_lost']} / {r['events_extra']} |",
             f"| duplicate (user, position) rows | {r['duplicate_positions']} |",
             f"| server malloc settings | {', '.join(f'{k}={v}' for k, v in r['env'].items()) or 'the library defaults'} |",
             f"| users with a history, longest | {r['users_with_history']:,}, {r['longest_history']:,} events |",
             f"| resident memory (all server processes): start, after 20% of the run (min-max), end | "
             f"{rss[0][1]:.0f}, {r['rss_after_warmup_mb']['min']:.0f}-{r['rss_after_warmup_mb']['max']:.0f}, "
             f"{rss[-1][1]:.0f} MB |",
             f"| caches held at the end (bytes charged, users) | {r['cache_gauges'].get('seqctr_cache_bytes', 0) / 1e6:.0f} MB, "
             f"{int(r['cache_gauges'].get('seqctr_cached_users', 0)):,} |",
             f"| `/metrics` bytes before / after {c['unknown_paths']:,} unknown paths | "
             f"{r['metrics_bytes_before_unknown']:,} / {r['metrics_bytes_after_unknown']:,} |", "",
             "Latency p50 / p99 (ms) by tenth of the run:", "",
             "| tenth | " + " | ".join(str(k + 1) for k in range(10)) + " |", "|---" * 11 + "|",
             "| p50 | " + " | ".join(f"{x:.1f}" for x in r["p50_by_tenth_ms"]) + " |",
             "| p99 | " + " | ".join(f"{x:.1f}" for x in r["p99_by_tenth_ms"]) + " |", "",
             "Resident memory over the run (s, MB), every tenth sample:", "",
             ", ".join(f"{t:.0f} s: {m:.0f}" for t, m in rss[::max(1, len(rss) // 10)])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
