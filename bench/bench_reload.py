"""Live model swaps under load (``POST /v1/admin/reload``), as operators run the service.

One command: ``.venv/bin/python bench/bench_reload.py`` (``--requests 2000`` for a short run).

A real ``seqctr serve`` with 2 workers and a shared SQLite history file serves bundle A (TWIN at the
serving benchmarks' width, random weights, ml100k vocabularies); ``--concurrency`` clients send
``--requests`` score requests, each with its own 50-event history and 20 candidates drawn from a
pool of 64 requests whose scores under A and under B were computed in process beforehand. Every
``--every`` requests the service is told to swap to the other bundle. Counted: errors, and *mixed*
answers — an answer whose scores are not its named model's offline scores (within 1e-5). Also:
p50 / p99 latency overall and in the second after each swap, and each swap's own time.
Results: bench/results/reload.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import serving_models
from seqctr.serving.store import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
TOKEN = "bench-reload-token"


def make_bundles(work: Path) -> list[Path]:
    import torch

    from seqctr.config import load_config
    from seqctr.data import prepare
    from seqctr.serving.bundle import write_bundle

    ds, folder, _ = prepare("ml100k")
    out = []
    for k in range(2):
        path = work / f"twin-{k}"
        if not (path / "bundle.json").exists():
            cfg = load_config(ROOT / "configs/ml100k/twin.yaml", serving_models.overrides("twin", False))
            model = serving_models.build("twin", ds.meta, False)
            gen = torch.Generator().manual_seed(k)
            with torch.no_grad():                  # bundle 1: other weights (build seeds its own)
                for p in model.parameters():
                    p.add_(k * 0.05 * torch.randn(p.shape, generator=gen))
            write_bundle(model, cfg, ds, folder, path)
        out.append(path)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--every", type=int, default=2000, help="requests between two swaps")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tag", default="reload")
    args = ap.parse_args()
    import httpx

    import seqctr

    work = ROOT / "bench" / "work" / "reload"
    work.mkdir(parents=True, exist_ok=True)
    bundles = make_bundles(work)
    scorers = [seqctr.load(b) for b in bundles]
    if scorers[0].fingerprint == scorers[1].fingerprint:
        raise SystemExit("the two bundles have the same weights: nothing would be tested")
    items = list(scorers[0].bundle.vocabs["item_id"])
    rng = np.random.default_rng(0)
    pool = [{"user": f"u{k}", "history": [str(x) for x in rng.choice(items, 50)],
             "candidates": [str(x) for x in rng.choice(items, 20)]} for k in range(64)]
    expect = {s.fingerprint: [s.score(r["user"], r["candidates"], history=r["history"]) for r in pool] for s in scorers}

    port = free_port()
    db = work / f"hist-{port}.sqlite"
    cmd = [sys.executable, "-m", "seqctr", "serve", "--model", str(bundles[0]), "--port", str(port),
           "--workers", str(args.workers), "--threads", "1", "--history-file", str(db), "--admin-token", TOKEN]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        counter = iter(range(args.requests))
        lock = threading.Lock()
        rec = []                               # (t_start, latency s, model, ok, mixed)
        swaps = []                             # (t, seconds, from, to)
        swap_lock = threading.Lock()

        def client():
            with httpx.Client(base_url=url, timeout=60) as c:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    if i and i % args.every == 0:
                        with swap_lock:
                            target = bundles[(i // args.every) % 2]
                            t0 = time.perf_counter()
                            r = c.post("/v1/admin/reload", json={"model": str(target)},
                                       headers={"Authorization": f"Bearer {TOKEN}"})
                            swaps.append((t0, time.perf_counter() - t0, r.status_code, r.json()))
                    req = pool[i % len(pool)]
                    t0 = time.perf_counter()
                    r = c.post("/v1/score", json=req)
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        rec.append((t0, dt, None, False, False))
                        continue
                    body = r.json()
                    want = expect.get(body["model"])
                    mixed = want is None or not np.allclose(body["scores"], want[i % len(pool)], rtol=0, atol=1e-5)
                    rec.append((t0, dt, body["model"], True, mixed))

        t_start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
    finally:
        stop_process(proc)
    lat = sorted(d for _, d, _, ok, _ in rec if ok)
    after = sorted(d for t0, d, _, ok, _ in rec if ok and any(0 <= t0 - s[0] < 1.0 for s in swaps))
    q = lambda xs, p: 1000 * xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    res = {"requests": len(rec), "errors": sum(not ok for *_, ok, _ in rec), "mixed": sum(m for *_, m in rec),
           "swaps": len(swaps), "swap_errors": sum(s[2] != 200 for s in swaps),
           "swap_seconds": [round(s[1], 3) for s in swaps],
           "answers_per_model": {fp: sum(m == fp for _, _, m, _, _ in rec) for fp in expect},
           "p50_ms": q(lat, 0.5), "p99_ms": q(lat, 0.99), "p99_ms_1s_after_swap": q(after, 0.99),
           "requests_per_s": len(rec) / wall, "concurrency": args.concurrency, "workers": args.workers,
           "load_average_1m_at_end": os.getloadavg()[0],
           "command": "python bench/bench_reload.py " + " ".join(sys.argv[1:])}
    from seqctr.utils.io import write_json, write_text

    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / f"{args.tag}.json", res)
    md = [f"# Live model swaps under load ({args.workers} workers, concurrency {args.concurrency})", "",
          f"`{res['command']}` — TWIN at the serving width, random weights, 50-event request histories, 20 "
          "candidates; a shared SQLite history file; a swap to the other bundle every "
          f"{args.every} requests. *Mixed*: an answer whose scores differ from its named model's offline scores "
          f"by more than 1e-5. Load average (1 min) at the end: {res['load_average_1m_at_end']:.1f} on this 2-core "
          "machine (latencies are not comparable across runs with other jobs beside them).", "",
          "| requests | errors | mixed | swaps (failed) | swap s (each) | p50 ms | p99 ms | p99 ms, 1 s after a swap | req/s |",
          "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
          f"| {res['requests']:,} | {res['errors']} | {res['mixed']} | {res['swaps']} ({res['swap_errors']}) | "
          f"{', '.join(f'{s:.2f}' for s in res['swap_seconds'])} | {res['p50_ms']:.1f} | {res['p99_ms']:.1f} | "
          f"{res['p99_ms_1s_after_swap']:.1f} | {res['requests_per_s']:.0f} |", "",
          "Answers per model: " + ", ".join(f"`{fp[:12]}` {n:,}" for fp, n in res["answers_per_model"].items())]
    write_text(OUT / f"{args.tag}.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if res["errors"] == 0 and res["mixed"] == 0 and res["swap_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
