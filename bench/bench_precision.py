"""Benchmark: ``train.precision`` fp32 vs bf16 — training-step and inference samples/s per backbone.

One command: ``.venv/bin/python bench/bench_precision.py`` (``--models din,dien``; ``--quick`` for a
smoke run). Writes ``bench/results/precision.{json,md}``.

Both precisions live in one process and alternate round by round over the same ml100k batches
(``--batches`` training batches of 256 and ``--batches`` inference batches of 256 per round,
``--rounds`` rounds, 1 thread), so a load that comes and goes on the machine hits both alike; the
table gives the medians and their ratio. Accuracy is not measured here: ``seqctr experiment ab --b
train.precision=bf16`` (docs/results/precision_bf16_ml100k.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])


def measure(name: str, batches: int, rounds: int) -> dict:
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader, prepare_config
    from seqctr.models import build_model
    from seqctr.training import make_optimizer, train_step
    from seqctr.training.trainer import autocast

    torch.set_num_threads(1)
    cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml")
    ds, _, _ = prepare_config(cfg.data)
    tr = BatchLoader(ds, "train", max_len=cfg.data.max_len, batch_size=256, shuffle=True, seed=0)
    train = [tr.batch(p) for p in tr.batches()[: batches + 1]]
    te = BatchLoader(ds, "test", max_len=cfg.data.max_len, batch_size=256, shuffle=True, seed=0)
    test = [te.batch(p) for p in te.batches()[:batches]]
    models = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(cfg.model, ds.meta)
        opt = make_optimizer(model, 1e-3)
        model.train()
        train_step(model, opt, train[0], 10.0, precision=prec)        # warm-up
        models[prec] = (model, opt)
    times = {(p, k): [] for p in models for k in ("train", "infer")}
    for _ in range(rounds):
        for prec, (model, opt) in models.items():
            model.train()
            t0 = time.perf_counter()
            for b in train[1:]:
                train_step(model, opt, b, 10.0, precision=prec)
            times[prec, "train"].append(time.perf_counter() - t0)
            model.eval()
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(prec):
                for b in test:
                    model(b)
            times[prec, "infer"].append(time.perf_counter() - t0)
    n_train, n_test = sum(len(b) for b in train[1:]), sum(len(b) for b in test)
    out = {f"{p}_{k}_samples_per_s": (n_train if k == "train" else n_test) / statistics.median(v)
           for (p, k), v in times.items()}
    for k in ("train", "infer"):
        out[f"{k}_ratio"] = out[f"bf16_{k}_samples_per_s"] / out[f"fp32_{k}_samples_per_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="din,dien,sim,eta,sdim,twin,hstu")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 batches, 1 round")
    ap.add_argument("--out", default=str(ROOT / "bench/results/precision"))
    args = ap.parse_args()
    if args.quick:
        args.batches, args.rounds = 2, 1
    from seqctr.experiments.report import write_bench_markdown
    from seqctr.utils.io import write_json

    res = {"command": COMMAND, "models": {}}
    rows = []
    for name in args.models.split(","):
        r = res["models"][name] = measure(name, args.batches, args.rounds)
        rows.append([name, f"{r['fp32_train_samples_per_s']:,.0f}", f"{r['bf16_train_samples_per_s']:,.0f}",
                     f"{r['train_ratio']:.2f}x", f"{r['fp32_infer_samples_per_s']:,.0f}",
                     f"{r['bf16_infer_samples_per_s']:,.0f}", f"{r['infer_ratio']:.2f}x"])
        print(rows[-1], flush=True)
    write_json(args.out + ".json", res)
    print(write_bench_markdown(
        args.out + ".md", "train.precision: fp32 vs bf16 (ml100k, one thread)",
        f"Command: `{COMMAND}`. {args.batches} training and {args.batches} inference batches of 256 per round, "
        f"both precisions alternating in one process, median of {args.rounds} rounds.",
        ["model", "fp32 train/s", "bf16 train/s", "train x", "fp32 infer/s", "bf16 infer/s", "infer x"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
