"""Benchmark: DIN on ml100k — train and inference samples/s and peak RSS.

One command: ``.venv/bin/python bench/bench_din.py`` (``--quick`` for a smoke run). Writes
``bench/results/din_ml100k.json`` and ``.md``. Settings are the issue's: max_len 200, batch 256,
embedding 64, MLP [512,128,64], dropout 0.2, Adam 1e-3.

Every variant runs in its own subprocess (so peak RSS is its own), pinned to one core with one
thread (``--cpu``/``--threads``) so other work cannot skew the ratios, ``--repeats`` times; we report
the median and the ratio against the FuxiCTR-style layout measured in the same run:

- ``seqctr``: fused activation unit + length-bucketed batches padded to their own longest history;
- ``no_bucketing``: fused, batches padded to their longest history but not length-grouped;
- ``fixed_padding``: fused, every batch padded to max_len;
- ``fuxictr_layout``: textbook activation unit (concat [q,k,q-k,q*k]) + every batch padded to
  max_len — the way FuxiCTR computes DIN (a layout baseline, not FuxiCTR itself).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])  # recorded with the results
VARIANTS = {
    "seqctr": {"fused": True, "bucket": True, "pad_to_max": False},
    "no_bucketing": {"fused": True, "bucket": False, "pad_to_max": False},
    "fixed_padding": {"fused": True, "bucket": False, "pad_to_max": True},
    "fuxictr_layout": {"fused": False, "bucket": False, "pad_to_max": True},
}


def run_variant(name: str, train_batches: int, threads: int) -> dict:
    """Measure one variant in this process; returns samples/s and peak RSS."""
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader, prepare
    from seqctr.models import build_model
    from seqctr.training import make_optimizer, train_step

    v = VARIANTS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs/ml100k/din.yaml", [f"model.options.fused={v['fused']}"])
    ds, _, _ = prepare("ml100k")
    model = build_model(cfg.model, ds.meta)
    opt = make_optimizer(model, cfg.train.lr)
    max_len, bs = cfg.data.max_len, cfg.data.batch_size
    pad_to = max_len if v["pad_to_max"] else None

    tr = BatchLoader(ds, "train", max_len=max_len, batch_size=bs, shuffle=True, bucket=v["bucket"], seed=0,
                     pad_to=pad_to)
    model.train()
    n, t0 = 0, None
    for i, pos in enumerate(tr.batches(0)[: train_batches + 3]):
        if i == 3:  # warm-up done
            n, t0 = 0, time.perf_counter()
        train_step(model, opt, tr.batch(pos), cfg.train.max_grad_norm)   # the Trainer's step
        n += len(pos)
    train_sps = n / (time.perf_counter() - t0)

    model.eval()
    te = BatchLoader(ds, "test", max_len=max_len, batch_size=1024, shuffle=False, bucket=v["bucket"], pad_to=pad_to)
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in te:
            model(b)
    infer_sps = len(te.indices) / (time.perf_counter() - t0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"train_samples_per_s": train_sps, "infer_samples_per_s": infer_sps, "peak_rss_mb": rss_mb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-batches", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", default="0", help="taskset CPU list for each measured run ('' = no pinning)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 10 batches (smoke run)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/din_ml100k"))
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.train_batches = 1, 10
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.train_batches, args.threads)))
        return 0

    from seqctr.utils.io import write_json

    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    for r in range(args.repeats):  # interleave variants so drift hits all alike
        for name in VARIANTS:
            pin = ["taskset", "-c", args.cpu] if args.cpu else []
            out = subprocess.run(pin + [sys.executable, __file__, "--variant", name, "--train-batches",
                                  str(args.train_batches), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {r + 1}/{args.repeats} {name}: {runs[name][-1]}", flush=True)
    keys = ("train_samples_per_s", "infer_samples_per_s", "peak_rss_mb")
    med = {k: {m: statistics.median(x[m] for x in v) for m in keys} for k, v in runs.items()}
    base = med["fuxictr_layout"]
    for k in med:
        med[k]["train_ratio_vs_fuxictr_layout"] = med[k]["train_samples_per_s"] / base["train_samples_per_s"]
        med[k]["infer_ratio_vs_fuxictr_layout"] = med[k]["infer_samples_per_s"] / base["infer_samples_per_s"]
    import torch

    result = {"benchmark": "DIN on ml100k (max_len 200, batch 256, emb 64, MLP [512,128,64])",
              "command": COMMAND,
              "repeats": args.repeats, "train_batches": args.train_batches, "threads": args.threads,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine()},
              "median": med, "runs": runs}
    write_json(args.out + ".json", result)
    from seqctr.experiments.report import write_bench_markdown

    print(write_bench_markdown(
        args.out + ".md", result["benchmark"],
        f"Command: `{COMMAND}`; median of {args.repeats} runs, {args.train_batches} training batches each, "
        f"{args.threads} thread(s) pinned to CPU {args.cpu}, torch {torch.__version__}.",
        ["variant", "train samples/s", "x vs fuxictr_layout", "inference samples/s", "x", "peak RSS MB"],
        [[k, f"{m['train_samples_per_s']:,.0f}", f"{m['train_ratio_vs_fuxictr_layout']:.2f}",
          f"{m['infer_samples_per_s']:,.0f}", f"{m['infer_ratio_vs_fuxictr_layout']:.2f}", f"{m['peak_rss_mb']:,.0f}"]
         for k, m in med.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
