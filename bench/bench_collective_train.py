"""Benchmark: training throughput of CollectiveKV against its uncompressed baselines.

One command: ``.venv/bin/python bench/bench_collective_train.py``. For each backbone (default
TWIN), the ``seqctr experiment kv`` variants — ``base`` (uncompressed, attention width 256),
``silu`` (its SiLU control), ``ckv`` (CollectiveKV, d_u 1, m 10,000) — and ``ckv_every_event``
(the same CollectiveKV with the router run on every event instead of once per distinct event row,
``dedup: false``: the previous implementation) each train on the same ``--batches`` ml100k batches
(batch 256, max_len 200), interleaved ``--repeats`` times in one process pinned to one core, one
thread. Reports the median train samples/s and each ratio to ``ckv_every_event`` and to ``silu``
measured in the same run. Writes ``bench/results/collective_train.{json,md}``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import serving_models

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])  # recorded with the results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="twin")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu", default="0", help="pin to this CPU ('' = no pinning)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/collective_train"))
    args = ap.parse_args()
    ds, _ = serving_models.setup(args.cpu)          # pinned, one thread, ml100k
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader
    from seqctr.experiments.kv_suite import variant_overrides
    from seqctr.models import build_model
    from seqctr.training import make_optimizer, train_step
    from seqctr.utils.io import write_json, write_text

    loader = BatchLoader(ds, "train", max_len=200, batch_size=256, shuffle=True, seed=0)
    batches = [loader.batch(p) for p in loader.batches(1)[: args.batches]]
    n_samples = sum(len(b) for b in batches)
    results = {}
    for name in args.models.split(","):
        variants = {v: variant_overrides(name, v) for v in ("base", "silu", "ckv")}
        variants = {v: ov for v, ov in variants.items() if ov is not None}
        variants["ckv_every_event"] = variant_overrides(name, "ckv")[:-1] + [
            variant_overrides(name, "ckv")[-1].replace("}", ", dedup: false}")]
        models = {}
        for v, ov in variants.items():
            torch.manual_seed(0)
            m = build_model(load_config(ROOT / f"configs/ml100k/{name}.yaml", ov).model, ds.meta).train()
            models[v] = (m, make_optimizer(m, 1e-3))
        times = {v: [] for v in variants}
        for r in range(args.repeats + 1):                       # round 0 = warm-up, not counted
            for v, (m, opt) in models.items():
                t0 = time.perf_counter()
                for b in batches:
                    train_step(m, opt, b, 0.0)
                if r:
                    times[v].append(time.perf_counter() - t0)
            print(f"{name} round {r}: " + ", ".join(f"{v} {t[-1]:.2f}s" for v, t in times.items() if t), flush=True)
        sps = {v: n_samples / statistics.median(t) for v, t in times.items()}
        results[name] = {v: {"train_samples_per_s": sps[v], "seconds": times[v],
                             "vs_every_event": sps[v] / sps["ckv_every_event"],
                             "vs_silu": sps[v] / sps["silu"] if "silu" in sps else None} for v in variants}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"command": COMMAND, "batches": args.batches, "samples": n_samples,
                                          "repeats": args.repeats, "results": results})
    lines = ["# CollectiveKV training throughput (ml100k, one core, one thread)", "",
             f"Command: `{COMMAND}`", "",
             f"{args.batches} training batches ({n_samples} samples) per round, median of {args.repeats} rounds.",
             "", "| model | variant | train samples/s | x vs router on every event | x vs SiLU control |",
             "|---|---|---:|---:|---:|"]
    for name, res in results.items():
        for v, r in res.items():
            vs_silu = f"{r['vs_silu']:.2f}" if r["vs_silu"] is not None else "-"
            lines.append(f"| {name} | {v} | {r['train_samples_per_s']:.0f} | {r['vs_every_event']:.2f} | {vs_silu} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
