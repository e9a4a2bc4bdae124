"""What the exact top-k selection alone costs at a cached request's shape, against the whole request.

``python bench/bench_selection.py [--cpu 1] [--repeats 21]``

TWIN scores every (candidate, head) row of its GSU against every cached event and keeps the ``k`` best:
200 candidates x 8 heads = 1,600 rows of 1,000 scores at 1,000 events. Whatever else gets faster, a
request cannot take less than selecting those. This times, on one thread: ``seqctr.ops.topk_select``
(the library's selection: NumPy's ``partition`` plus the exact tie rule), a bare ``np.partition``,
``torch.topk`` and ``torch.kthvalue`` on random scores of that shape, beside the whole cached TWIN request
(``seqctr.serving.runtime.score``, the serving benchmarks' model). Medians of ``--repeats`` calls.
Writes ``bench/results/selection.{json,md}``; run it with nothing else on the machine.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import serving_models as sm

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    sm.with_tuned_malloc(__file__)
    args = sm.cache_bench_args(__doc__.splitlines()[0], "twin", "bench/results/selection")
    import numpy as np
    import torch

    from seqctr.ops import topk_select
    from seqctr.serving.runtime import score

    rows = []
    for name, variant, T, model, cache, cands in sm.benchmark_caches(args):
        if variant != "full":
            continue
        R, k = cands.shape[0] * model.backbone.long_attention.num_heads, min(model.backbone.topk, T)
        x = torch.randn(R, T, generator=torch.Generator().manual_seed(0))
        a = x.numpy()
        mask = torch.ones(1, T, dtype=torch.bool)
        with torch.no_grad():
            cell = {"model": name, "events": T, "rows": R, "k": k,
                    "request_ms": sm.timed(lambda: score(model, cache, cands), args.repeats),
                    "topk_select_ms": sm.timed(lambda: topk_select(x, mask, k), args.repeats),
                    "np_partition_ms": sm.timed(lambda: np.partition(a, T - k, axis=-1), args.repeats),
                    "torch_topk_ms": sm.timed(lambda: torch.topk(x, k, dim=-1, sorted=False), args.repeats),
                    "torch_kthvalue_ms": sm.timed(lambda: torch.kthvalue(x, T - k + 1, dim=-1), args.repeats)}
        for key in [c for c in cell if c.endswith("_ms")]:
            cell[key] = 1e3 * statistics.median(cell[key])
        cell["selection_share"] = cell["topk_select_ms"] / cell["request_ms"]
        rows.append(cell)
        print(cell, flush=True)
    cmd = "python bench/bench_selection.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()[0]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "load_average_1m": load, "rows": rows}, indent=1))
    lines = ["# The exact top-k selection at a cached request's shape", "",
             f"`{cmd}` (generated; do not edit). One thread, medians of {args.repeats} calls, random scores of the "
             "request's GSU shape (candidates x heads rows, one column per cached event); `request`: the whole cached "
             "TWIN request of `bench/serving_models.py` (200 candidates). Load average (1 min) at the end: "
             f"{load:.1f} on 2 cores.", "",
             "| model | events | rows x events | k | request ms | topk_select ms | share of the request | "
             "np.partition ms | torch.topk ms | torch.kthvalue ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['events']:,} | {r['rows']:,} x {r['events']:,} | {r['k']} | "
                     f"{r['request_ms']:.2f} | {r['topk_select_ms']:.2f} | {100 * r['selection_share']:.0f}% | "
                     f"{r['np_partition_ms']:.2f} | {r['torch_topk_ms']:.2f} | {r['torch_kthvalue_ms']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
