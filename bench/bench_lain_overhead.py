"""Benchmark: what LAIN costs on each backbone — parameter ratio and inference-time ratio.

One command: ``.venv/bin/python bench/bench_lain_overhead.py``. For each backbone, the bare model
and the model with LAIN (paper defaults: d_f 32, hidden 512, 4 prompts) score the ml100k test
split (batch 1024, max_len 200) alternately ``--repeats`` times in one process pinned to one
core; we report the median time ratio. Paper: < 1.5% parameters, about 2.3% inference time (on
datasets with millions of item embeddings; ml100k's tables are tiny, so the parameter ratio is
also given without the embedding tables). Writes ``bench/results/lain_overhead.{json,md}``.
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
    ap.add_argument("--models", default="din,dien,sim,sdim,twin,eta")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu", default="0", help="pin to this CPU ('' = no pinning)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/lain_overhead"))
    args = ap.parse_args()
    ds, _ = serving_models.setup(args.cpu)          # pinned, one thread, ml100k
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader
    from seqctr.experiments.lain_overhead import parameter_overhead
    from seqctr.models import build_model
    from seqctr.utils.io import write_json

    loader = BatchLoader(ds, "test", max_len=200, batch_size=1024, shuffle=False)
    batches = list(loader)
    res = {}
    for name in args.models.split(","):
        cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml")
        ov = parameter_overhead(cfg.model, ds.meta)
        torch.manual_seed(0)
        bare = build_model(cfg.model, ds.meta).eval()
        cfg.model.lain = {"enabled": True}
        lain = build_model(cfg.model, ds.meta).eval()
        times = {"bare": [], "lain": []}
        with torch.no_grad():
            for _ in range(args.repeats):
                for key, m in (("bare", bare), ("lain", lain)):
                    t0 = time.perf_counter()
                    for b in batches:
                        m(b)
                    times[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        res[name] = {**ov, "infer_seconds_bare": med["bare"], "infer_seconds_lain": med["lain"],
                     "infer_time_ratio": med["lain"] / med["bare"] - 1, "runs": times}
        print(f"{name}: +{100 * ov['parameter_ratio']:.1f}% parameters, "
              f"+{100 * res[name]['infer_time_ratio']:.1f}% inference time", flush=True)
    write_json(args.out + ".json", {"command": COMMAND, "repeats": args.repeats,
                                    "models": res})
    from seqctr.experiments.report import write_bench_markdown

    print(write_bench_markdown(
        args.out + ".md", "LAIN overhead on ml100k (paper defaults: d_f 32, hidden 512, 4 prompts)",
        f"Command: `{COMMAND}`; inference over the test split (9,889 samples, batch 1024), median of "
        f"{args.repeats} alternating runs, 1 thread pinned to one core.",
        ["backbone", "parameters bare", "with LAIN", "+ parameters", "+ parameters (excl. embeddings)",
         "+ inference time"],
        [[n, f"{r['bare_parameters']:,}", f"{r['lain_parameters']:,}", f"{100 * r['parameter_ratio']:.1f}%",
          f"{100 * r['parameter_ratio_without_embeddings']:.1f}%", f"{100 * r['infer_time_ratio']:+.1f}%"]
         for n, r in res.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
