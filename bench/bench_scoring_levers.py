"""Cached scoring before and after a change (one lever), paired, per model, cache and history length;
or, with ``--test-pass``, whole ml100k test-split inference passes, per model and precision.

``python bench/bench_scoring_levers.py --before /path/to/old/checkout [--models twin,sim] [--lengths 200,1000]``
``python bench/bench_scoring_levers.py --before /path/to/old/checkout --test-pass --models dien --precisions fp32,bf16``

Each round runs one fresh process per variant (``before``: ``PYTHONPATH=<tree>/src``; ``after``: this
checkout), alternating, each pinned to ``--cpu`` on one thread with the serving benchmarks' malloc settings:
the benchmark models of ``bench/serving_models.py`` (random weights, serving widths), one user's cache
per length, 200 candidates, the median of ``--calls`` calls of ``seqctr.serving.runtime.score``. The
table gives, per cell, the median over ``--rounds`` rounds of each variant and their ratio measured in the
same run, and the largest difference between the two versions' probabilities (a lever must not change
the scores beyond float rounding). ``--test-pass``: each process times ``--calls`` whole passes over the
ml100k test split as ``bench_vs_fuxictr`` does (``configs/ml100k/<name>.yaml``, seeded random weights,
length-bucketed batches of 256, the batch gathering included, one thread) per ``--precisions`` entry; a
cell's time is one pass. Writes ``bench/results/scoring_levers.{json,md}`` (or ``--out``); run it with
nothing else on the machine (the page records the load average).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import serving_models as sm

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> int:
    import torch

    from seqctr.serving.runtime import score

    out = {}
    for name, variant, T, model, cache, cands in sm.benchmark_caches(args):
        if variant not in args.caches.split(","):
            continue
        with torch.no_grad():
            times = sm.timed(lambda: score(model, cache, cands), args.repeats)
            probs = score(model, cache, cands).numpy()
        key = f"{name}/{variant}/{T}"
        out[key] = statistics.median(times) * 1e3
        np.save(Path(args.out) / f"{key.replace('/', '_')}.npy", probs)
    (Path(args.out) / "times.json").write_text(json.dumps(out))
    return 0


def child_test_pass(args) -> int:
    """``--test-pass``: ms per whole test-split pass per model x precision, and the pass's probabilities."""
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader
    from seqctr.models import build_model
    from seqctr.training import predict
    from seqctr.training.trainer import autocast

    ds, _ = sm.setup(args.cpu)
    te = BatchLoader(ds, "test", max_len=200, batch_size=256, shuffle=False)
    out = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(load_config(ROOT / f"configs/ml100k/{name}.yaml").model, ds.meta).eval()
        for precision in args.precisions.split(","):
            def one_pass():
                for b in te:
                    model(b)
            with torch.no_grad(), autocast(precision):
                for b in te.batches()[:2]:
                    model(te.batch(b))
                times = sm.timed(one_pass, args.repeats)
            key = f"{name}/test-pass/{precision}"
            out[key] = statistics.median(times) * 1e3
            prob = predict(model, te, torch.device("cpu"), precision=precision)["prob"]
            np.save(Path(args.out) / f"{key.replace('/', '_')}.npy", prob)
    (Path(args.out) / "times.json").write_text(json.dumps(out))
    return 0


def main() -> int:
    if "--child" in sys.argv:
        sm.with_tuned_malloc(str(Path(__file__).resolve()))          # (re-executes itself once, --child kept)
        sys.argv.remove("--child")
        own = {}
        for flag in ("--caches", "--precisions", "--test-pass"):          # this script's own, not cache_bench_args'
            i = sys.argv.index(flag)
            own[flag] = sys.argv[i + 1]
            del sys.argv[i:i + 2]
        args = sm.cache_bench_args("child", "twin,sim", "")
        args.caches, args.precisions = own["--caches"], own["--precisions"]
        return child_test_pass(args) if own["--test-pass"] == "1" else child(args)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="source tree of the earlier commit")
    ap.add_argument("--models", default="twin,sim")
    ap.add_argument("--lengths", default="200,1000")
    ap.add_argument("--caches", default="full,ckv")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=15, help="score calls per process (their median is its time)")
    ap.add_argument("--cpu", default="1")
    ap.add_argument("--test-pass", action="store_true", help="time whole ml100k test-split passes instead")
    ap.add_argument("--precisions", default="fp32", help="with --test-pass: fp32 and/or bf16")
    ap.add_argument("--lever", default="", help="what the change is, for the page")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scoring_levers")
    args = ap.parse_args()
    runs: dict = {"before": [], "after": []}
    probs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in ("before", "after"):
                d = Path(tmp) / f"{variant}{r}"
                d.mkdir()
                env = dict(os.environ)
                if variant == "before":
                    env["PYTHONPATH"] = str(args.before / "src")
                else:
                    env.pop("PYTHONPATH", None)
                subprocess.run([sys.executable, str(ROOT / "bench" / "bench_scoring_levers.py"), "--child",
                                "--models", args.models, "--lengths", args.lengths, "--caches", args.caches,
                                "--precisions", args.precisions, "--test-pass", str(int(args.test_pass)),
                                "--repeats", str(args.calls), "--cpu", args.cpu, "--out", str(d)],
                               env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runs[variant].append(json.loads((d / "times.json").read_text()))
                if r == 0:
                    probs[variant] = {k: np.load(d / f"{k.replace('/', '_')}.npy") for k in runs[variant][-1]}
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {runs['before'][-1][k]:.2f} -> {runs['after'][-1][k]:.2f} ms" for k in runs["after"][-1]),
                flush=True)
    cells = {}
    for k in runs["after"][0]:
        b = statistics.median(x[k] for x in runs["before"])
        a = statistics.median(x[k] for x in runs["after"])
        cells[k] = {"before_ms": b, "after_ms": a, "speedup": b / a,
                    **sm.ratio_summary([x[k] for x in runs["before"]], [x[k] for x in runs["after"]], "paired"),
                    "max_prob_diff": float(np.abs(probs["before"][k] - probs["after"][k]).max())}
    cmd, load, _ = sm.write_results(args, __file__, {"lever": args.lever, "rounds": args.rounds, "calls": args.calls,
                                                     "cpu": args.cpu, "cells": cells, "runs": runs})
    what = ("Whole passes over the ml100k test split (`configs/ml100k/<name>.yaml`, seeded random weights, "
            "length-bucketed batches of 256 with their gathering, as bench_vs_fuxictr); each cell one pass, the "
            if args.test_pass else
            "Benchmark models of `bench/serving_models.py` (random weights, serving widths), one user, 200 "
            "candidates; each cell the ")
    lines = ["# One scoring lever, paired: before vs after", "",
             f"`{cmd}` (generated; do not edit). Lever: {args.lever or '(see the command)'}. {what}"
             f"median over {args.rounds} alternating rounds (a fresh process per variant and round, pinned to CPU "
             f"{args.cpu}, one thread) of the median of {args.calls} {'passes' if args.test_pass else 'calls'}. Load average (1 min) at the end: "
             f"{load:.1f} on 2 cores. `speed-up`: before / after of the medians; `paired`: the median of the rounds' own "
             "ratios [first, third quartile] (a round's two processes run back to back, so a change of the machine's "
             "speed moves both). `max |dp|`: the largest difference between the two versions' probabilities.",
             "", "| " + ("model / pass / precision" if args.test_pass else "model / cache / events")
             + " | before ms | after ms | speed-up | paired [q1, q3] | max |dp| |", "|---|---:|---:|---:|---:|---:|"]
    for k, c in cells.items():
        lines.append(f"| {k} | {c['before_ms']:.2f} | {c['after_ms']:.2f} | {c['speedup']:.2f}x | "
                     f"{c['paired']:.2f}x [{c['paired_q1']:.2f}, {c['paired_q3']:.2f}] | {c['max_prob_diff']:.1e} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
