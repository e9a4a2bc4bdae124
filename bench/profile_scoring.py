"""Where one cached scoring request spends its time, against the FLOP bound of this core.

One command: ``.venv/bin/python bench/profile_scoring.py [--models din,sim,twin,hstu] [--lengths 50,200,1000]``

For each benchmark model of ``bench/serving_models.py`` (random weights at the serving widths; full and
CollectiveKV caches), one user with 50 / 200 / 1,000 cached events and 200 candidates, on one thread:

- the request's time (median of ``--repeats`` calls of ``seqctr.serving.runtime.score``) and its FLOPs
  (``torch.utils.flop_counter``: matrix products and attention, the work the arithmetic needs);
- this core's GEMM ceiling (GFLOP/s of a 1536^3 float32 product, one thread), and so the
  request's bound ``FLOPs / ceiling`` and its distance ``time / bound`` — one number per cell;
- time per op class from ``torch.profiler`` (GEMM, embedding / gather, top-k, softmax, elementwise, other)
  and the GEMMs' own GFLOP/s;
- every other cache of a model against its full cache, paired: ``--rounds`` rounds call each cache once,
  in rotating order, and the ratio is the median of the per-round ratios (a change of the machine's load
  moves both sides of a round alike, unlike two medians taken one after the other).

Results: ``docs/results/profile_scoring.{json,md}`` (the page records the machine's load: times are
comparable between runs at a similar load only).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import serving_models as sm

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"gemm": ("mm", "bmm", "addmm", "matmul", "linear", "baddbmm", "einsum", "_efficient_attention",
                    "scaled_dot_product"),
           "gather": ("embedding", "index_select", "gather", "index", "take", "scatter"),
           "topk": ("topk", "sort", "kthvalue"),
           "softmax": ("softmax", "log_softmax"),
           "elementwise": ("add", "mul", "sub", "div", "sigmoid", "relu", "silu", "exp", "where", "masked_fill",
                           "clamp", "neg", "rsqrt", "pow", "tanh", "gelu", "eq", "ne", "lt", "gt", "copy_", "fill_",
                           "sum", "mean", "amax", "max", "cat", "stack", "to", "_to_copy", "clone", "contiguous")}


def op_class(name: str) -> str:
    base = name.removeprefix("aten::")
    for cls, names in CLASSES.items():
        if base in names:
            return cls
    return "other"


def profile_cell(model, cache, cands, repeats: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from seqctr.serving.runtime import score

    with torch.no_grad():
        times = sm.timed(lambda: score(model, cache, cands), repeats)
        with FlopCounterMode(display=False) as fc:
            score(model, cache, cands)
        flops = fc.get_total_flops()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                score(model, cache, cands)
    per = {}
    gemm_flops = 0
    for ev in prof.key_averages():          # every event's self time (non-aten ones, e.g. detach, are "other")
        cls = op_class(ev.key)
        per[cls] = per.get(cls, 0.0) + ev.self_cpu_time_total / 5 / 1e3          # ms per request
    for mod_flops in fc.get_flop_counts().get("Global", {}).items():
        gemm_flops += mod_flops[1]
    return {"ms": statistics.median(times) * 1e3, "min_ms": times[0] * 1e3, "gflop": flops / 1e9,
            "ms_by_class": {k: round(v, 3) for k, v in sorted(per.items(), key=lambda kv: -kv[1])},
            "gemm_gflops_achieved": (gemm_flops / 1e9) / (per.get("gemm", 0) / 1e3) if per.get("gemm") else None}


def paired(cells: dict, rounds: int) -> list[dict]:
    """``cells[(model, events)][variant] = (model, cache, candidates)`` -> per non-full variant: the median
    per-round ratio of its request time to the full cache's, rounds in rotating order."""
    import time

    import torch

    from seqctr.serving.runtime import score

    out = []
    for (name, T), variants in cells.items():
        if "full" not in variants or len(variants) < 2:
            continue
        order = list(variants)
        times = {v: [] for v in order}
        with torch.no_grad():
            for v in order:
                score(*variants[v])                       # warm-up
            for r in range(rounds):
                for v in order[r % len(order):] + order[:r % len(order)]:
                    t0 = time.perf_counter()
                    score(*variants[v])
                    times[v].append(time.perf_counter() - t0)
        for v in order[1:]:
            out.append({"model": name, "events": T, "cache": v, "rounds": rounds,
                        "ms": statistics.median(times[v]) * 1e3, "full_ms": statistics.median(times["full"]) * 1e3,
                        **sm.ratio_summary(times[v], times["full"], "ratio")})
    return out


def main() -> int:
    args = sm.cache_bench_args(__doc__.splitlines()[0], "din,sim,twin,hstu", "docs/results/profile_scoring",
                               extra=[("--rounds", int, 31, "rounds of the paired comparison against the full cache")])
    ceiling = sm.gemm_ceiling()
    rows, cells = [], {}
    for name, variant, T, model, cache, cands in sm.benchmark_caches(args):
        cells.setdefault((name, T), {})[variant] = (model, cache, cands)
        cell = profile_cell(model, cache, cands, args.repeats)
        bound_ms = cell["gflop"] / ceiling * 1e3
        rows.append({"model": name, "cache": variant, "events": T, **cell, "bound_ms": bound_ms,
                     "x_bound": cell["ms"] / bound_ms if bound_ms else None})
        print(f"{name:5s} {variant:4s} T={T:5d}: {cell['ms']:7.2f} ms  {cell['gflop']:.3f} GFLOP  "
              f"bound {bound_ms:.2f} ms  x{rows[-1]['x_bound']:.1f}  {cell['ms_by_class']}", flush=True)
    pairs = paired(cells, args.rounds)
    cmd, load, out = sm.write_results(args, __file__, {"gemm_ceiling_gflops": ceiling, "rows": rows, "paired": pairs})
    classes = ["gemm", "gather", "topk", "softmax", "elementwise", "other"]
    lines = ["# Cached scoring: time per request against the FLOP bound", "",
             f"`{cmd}` (generated; do not edit). One user, {args.candidates} candidates, one thread, benchmark models "
             f"of `bench/serving_models.py` (random weights). This core's GEMM ceiling: **{ceiling:.1f} GFLOP/s** "
             f"(1536^3 float32). `bound`: the request's FLOPs at that ceiling; `x bound`: median time / bound. Op "
             f"classes: self time per request from `torch.profiler`. Load average (1 min) at the end: {load:.1f} on "
             "2 cores (times are comparable only between runs at a similar load).", "",
             "| model | cache | events | ms (median) | GFLOP | bound ms | x bound | GEMM GFLOP/s | "
             + " | ".join(f"{c} ms" for c in classes) + " |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(classes)]
    for r in rows:
        g_ach = f"{r['gemm_gflops_achieved']:.1f}" if r["gemm_gflops_achieved"] else "—"
        lines.append(f"| {r['model']} | {r['cache']} | {r['events']:,} | {r['ms']:.2f} | {r['gflop']:.3f} | "
                     f"{r['bound_ms']:.2f} | {r['x_bound']:.1f} | {g_ach} | "
                     + " | ".join(f"{r['ms_by_class'].get(c, 0):.2f}" for c in classes) + " |")
    lines += ["", f"**Against the full cache, paired** ({args.rounds} rounds, each calling every cache of the model "
                  "once in rotating order; `x full`: median of the per-round ratios, [first, third quartile]). "
                  "HSTU's other caches are `bench/serving_models.py`'s `EXTRA` (see docs/results/cache_codecs.md).", "",
              "| model | events | cache | ms | full ms | x full [q1, q3] |", "|---|---:|---|---:|---:|---:|"]
    lines += [f"| {p['model']} | {p['events']:,} | {p['cache']} | {p['ms']:.2f} | {p['full_ms']:.2f} | "
              f"{p['ratio']:.2f} [{p['ratio_q1']:.2f}, {p['ratio_q3']:.2f}] |" for p in pairs]
    sm.write_page(out, lines)
    return 0


if __name__ == "__main__":
    sm.with_tuned_malloc(__file__)
    sys.exit(main())
