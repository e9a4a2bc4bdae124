"""Benchmark: preparing 1M, 10M and 30M synthetic events — wall time, events/s, peak RSS.

One command: ``.venv/bin/python bench/bench_prepare.py`` (``--quick``: 1M and 3M, 1 repeat).
Writes ``bench/results/prepare.json`` and ``.md``.

Data: ``bench/make_synthetic.py`` (lognormal lengths, mean ~1,000 events, max 50,000; Zipf items
over 1M ids), written once under ``bench/work/`` in two orders: ``user`` (each user's events
together, as an exported table) and ``time`` (one global time-ordered log, users interleaved —
preparation has to sort it). Each measurement is a fresh process pinned to one core (``--cpu``)
that runs ``seqctr.data.prepare`` (read in record batches, build, save) with ``force=True``; it
reports the time of that call and its own peak RSS (``ru_maxrss``, which includes the ~60 MB of
the interpreter, NumPy and PyArrow). Median of ``--repeats``. The "x arrays" column is peak RSS
over the bytes of the prepared ``.npy`` files; the growth exponent is the slope of log(time) vs
log(events) between the smallest and the largest size.

``--train-steps N`` adds a training check on the 10M set: DIN (max_len 200, batch 256) trains N
steps on the memory-mapped arrays, RSS sampled every N/8 steps — it must stay flat (nothing of
size samples x max_len is materialised).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_prepare(source: str, home: str) -> dict:
    from seqctr.data import prepare

    t0 = time.perf_counter()
    ds, folder, _ = prepare(source, home=Path(home), force=True)
    dt = time.perf_counter() - t0
    arrays = sum(f.stat().st_size for f in Path(folder).iterdir() if f.suffix == ".npy")
    return {"seconds": dt, "events": int(ds.meta.n_events), "samples": int(len(ds.label)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "arrays_mb": arrays / 2**20,
            "folder": str(folder)}


def child_train(folder: str, steps: int) -> dict:
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader, SeqDataset
    from seqctr.models import build_model
    from seqctr.training import make_optimizer, train_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = SeqDataset.load(Path(folder))
    cfg = load_config(ROOT / "src/seqctr/configs/ml100k/din.yaml")
    model = build_model(cfg.model, ds.meta)
    opt = make_optimizer(model, cfg.train.lr)
    tr = BatchLoader(ds, "train", max_len=cfg.data.max_len, batch_size=cfg.data.batch_size, shuffle=True, seed=0)
    samples = []
    every = max(steps // 8, 1)
    t0 = time.perf_counter()
    for k, pos in enumerate(tr.batches(0)[:steps], start=1):
        train_step(model, opt, tr.batch(pos))
        if k % every == 0:
            samples.append({"step": k, "rss_mb": rss_mb()})
    dt = time.perf_counter() - t0
    return {"steps": steps, "samples_per_s": steps * cfg.data.batch_size / dt, "rss": samples,
            "train_samples": int(len(tr.indices)), "max_len": cfg.data.max_len,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ensure_data(events: int, order: str) -> Path:
    path = WORK / f"synthetic_{order}_{events // 1_000_000}m.parquet"
    if not path.is_file():
        subprocess.run([sys.executable, str(ROOT / "bench/make_synthetic.py"), "--events", str(events), "--order",
                        order, "--out", str(path)], check=True)
    return path


def run_child(args: list[str], cpu: str) -> dict:
    pin = ["taskset", "-c", cpu] if cpu else []
    out = subprocess.run(pin + [sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", default="1,10,30", help="millions of events")
    ap.add_argument("--orders", default="user,time", help="row orders of the raw table")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", default="0", help="taskset CPU list for each measured process ('' = no pinning)")
    ap.add_argument("--train-steps", type=int, default=0, help="also train DIN this many steps on the 10M set")
    ap.add_argument("--quick", action="store_true", help="sizes 1,3, one repeat (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/prepare"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-train", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_prepare(*args.child)))
        return 0
    if args.child_train:
        print(json.dumps(child_train(args.child_train[0], int(args.child_train[1]))))
        return 0
    if args.quick:
        args.sizes, args.repeats = "1,3", 1
    sizes = [int(float(s) * 1_000_000) for s in args.sizes.split(",")]
    orders = args.orders.split(",")
    home = WORK / "prepare_home"
    rows, runs = [], {}
    for order in orders:
        for n in sizes:
            src = ensure_data(n, order)
            rs = []
            for r in range(args.repeats):
                rs.append(run_child(["--child", str(src), str(home)], args.cpu))
                print(f"{order} {n:,}: {rs[-1]['seconds']:.2f} s, peak {rs[-1]['peak_rss_mb']:.0f} MB", flush=True)
            runs[f"{order}_{n}"] = rs
            sec = statistics.median(x["seconds"] for x in rs)
            peak = statistics.median(x["peak_rss_mb"] for x in rs)
            rows.append({"order": order, "events": n, "seconds": sec, "events_per_s": n / sec,
                         "peak_rss_mb": peak, "arrays_mb": rs[0]["arrays_mb"],
                         "rss_over_arrays": peak / rs[0]["arrays_mb"], "folder": rs[0]["folder"]})
    growth = {}
    for order in orders:
        r = [x for x in rows if x["order"] == order]
        if len(r) >= 2:
            a, b = r[0], r[-1]
            growth[order] = math.log(b["seconds"] / a["seconds"]) / math.log(b["events"] / a["events"])
    train = None
    if args.train_steps:
        ten = next((x for x in rows if x["events"] == 10_000_000 and x["order"] == orders[0]), rows[-1])
        train = run_child(["--child-train", ten["folder"], str(args.train_steps)], args.cpu)
    import numpy
    import pyarrow

    result = {"benchmark": "seqctr prepare on synthetic interactions (bench/make_synthetic.py)", "command": COMMAND,
              "repeats": args.repeats, "cpu": args.cpu or "unpinned",
              "machine": {"python": platform.python_version(), "numpy": numpy.__version__,
                          "pyarrow": pyarrow.__version__, "cores": os.cpu_count()},
              "rows": rows, "time_growth_exponent": growth, "train": train, "runs": runs}
    from seqctr.utils.io import write_json

    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    lines = ["# Preparation at scale\n", f"Command: `{COMMAND}` — one process per measurement, pinned to CPU "
             f"{args.cpu or '(unpinned)'}, median of {args.repeats}. Peak RSS includes the interpreter (~60 MB).\n",
             "| raw order | events | time (s) | events/s | peak RSS (MB) | prepared arrays (MB) | RSS / arrays |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for x in rows:
        lines.append(f"| {x['order']} | {x['events']:,} | {x['seconds']:.2f} | {x['events_per_s']:,.0f} | "
                     f"{x['peak_rss_mb']:.0f} | {x['arrays_mb']:.0f} | {x['rss_over_arrays']:.2f} |")
    lines.append("")
    for order, g in growth.items():
        lines.append(f"- time grows as events^{g:.2f} ({order} order, {rows[0]['events']:,} -> {rows[-1]['events']:,})")
    if train:
        lines += ["", f"Training DIN on the 10M set ({train['train_samples']:,} training samples, max_len "
                  f"{train['max_len']}), {train['steps']} steps, {train['samples_per_s']:.0f} samples/s: RSS by step "
                  + ", ".join(f"{s['step']}: {s['rss_mb']:.0f} MB" for s in train["rss"])]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
