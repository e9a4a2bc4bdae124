"""Benchmark: DDP scaling — training samples/s on ml100k with 1 vs 2 processes (1 thread each).

One command: ``.venv/bin/python bench/bench_ddp.py`` (``--quick``: DIN only, 1 repeat, 60 steps).
Writes ``bench/results/ddp.json`` and ``.md``.

Each measurement is a whole ``seqctr train`` run of one epoch (``configs/ml100k/<model>.yaml``,
global batch 256, max_len 200, length-bucketed): 1 process pinned to core 0, or ``torchrun
--standalone --nproc_per_node 2`` pinned to cores 0-1, one torch thread per process. The figure is
the epoch's training samples/s the Trainer records (global samples / epoch wall time, evaluation
excluded). 1- and 2-process runs alternate; median of ``--repeats``; ratio = 2-process / 1-process
median of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])


def run(model: str, nproc: int, steps: int, out: Path, cpus: str) -> float:
    sets = ["--set", "train.epochs=1", "--set", "train.threads=1", "--set", "eval.save_predictions=false"]
    if steps:
        sets += ["--set", f"train.max_steps={steps}"]
    train = ["train", "--config", f"ml100k/{model}", "--out", str(out), "--no-progress", *sets]
    if nproc == 1:
        cmd = [sys.executable, "-m", "seqctr", *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "seqctr", *train]
    pin = ["taskset", "-c", cpus] if cpus else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(pin + cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    hist = json.loads((out / "metrics.json").read_text())["history"]
    return float(hist[0]["train_samples_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="din,sim,twin")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="global steps per run (0 = the whole epoch)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin 1 process to core 0 and 2 processes to cores 0-1")
    ap.add_argument("--quick", action="store_true", help="DIN, 1 repeat, 60 steps (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/ddp"))
    args = ap.parse_args()
    if args.quick:
        args.models, args.repeats, args.steps = "din", 1, 60
    models = args.models.split(",")
    runs: dict = {m: {"1": [], "2": []} for m in models}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for m in models:
                for n in (1, 2):
                    sps = run(m, n, args.steps, Path(tmp) / f"{m}-{n}-{r}", ("0" if n == 1 else "0,1") if args.pin
                              else "")
                    runs[m][str(n)].append(sps)
                    print(f"repeat {r + 1}/{args.repeats} {m} x{n}: {sps:,.0f} samples/s", flush=True)
    rows = []
    for m in models:
        one, two = statistics.median(runs[m]["1"]), statistics.median(runs[m]["2"])
        rows.append({"model": m, "one_process": one, "two_processes": two, "speedup": two / one})
    import torch

    result = {"benchmark": "ml100k training samples/s, 1 vs 2 DDP processes (gloo, 1 thread each)",
              "command": COMMAND, "repeats": args.repeats, "steps": args.steps or "whole epoch",
              "machine": {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count()},
              "rows": rows, "runs": runs}
    from seqctr.utils.io import write_json

    out = Path(args.out)
    write_json(out.with_suffix(".json"), result)
    lines = ["# DDP scaling on ml100k\n",
             f"Command: `{COMMAND}` — {args.steps or 'one whole epoch'} per run, global batch 256, 1 torch thread per "
             f"process, median of {args.repeats} alternating runs.\n",
             "| model | 1 process (samples/s) | 2 processes (samples/s) | speed-up |", "|---|---:|---:|---:|"]
    for x in rows:
        lines.append(f"| {x['model']} | {x['one_process']:,.0f} | {x['two_processes']:,.0f} | {x['speedup']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
