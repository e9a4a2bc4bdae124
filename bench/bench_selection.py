"""The GSU's exact top-k over a prefiltered few candidates against the plain selection, paired.

    python bench/bench_selection.py --cpu 1 --rounds 31   ->  docs/results/topk_prefilter.{json,md}

`seqctr.ops.select.topk_select` on CPU picks the k best of each row either by one `np.partition` over
the whole row (`_positions_numpy`, "plain") or, for rows of at least 10 k events, over the events at or
above a lower bound of the k-th value (`_positions_prefiltered`); the two give the same positions
(tests/ops/test_select.py). Timed here, one thread, in paired rounds (each round calls both, in
alternating order; ratio = plain / prefiltered, median [first, third quartile]):

1. the selection alone, on rows shaped like a serving request's (200 candidates x 8 heads, T events):
   Gaussian scores, and scores drawn from 300 values (a history of repeated items: ties at the k-th);
2. whole cached requests of the benchmark models (`bench/serving_models.py`: SIM, TWIN, ETA at the paper
   width, full and CollectiveKV caches, random weights), one user of T events, `--candidates` candidates,
   with the selection switched between the two forms; the scores are checked equal.
"""
from __future__ import annotations


import serving_models as sm


def main() -> int:
    sm.with_tuned_malloc(__file__)
    args = sm.cache_bench_args(__doc__.splitlines()[0], "sim,twin,eta", "docs/results/topk_prefilter",
                               extra=[("--rounds", int, 31, "paired rounds per cell"),
                                      ("--topk", int, 50, "k of the selection-alone rows")],
                               lengths="200,1000,3000")
    import numpy as np
    import torch

    from seqctr.ops import select
    from seqctr.serving.runtime import score

    prefiltered = select._positions_cpu
    rng = np.random.default_rng(0)
    kernel, requests = [], []
    for T in map(int, args.lengths.split(",")):
        for kind in ("gaussian", "300 values"):
            shape = (args.candidates * 8, T)
            x = (rng.standard_normal(shape) if kind == "gaussian"
                 else rng.standard_normal(300)[rng.integers(0, 300, shape)]).astype(np.float32)
            assert np.array_equal(select._positions_numpy(x, args.topk), prefiltered(x, args.topk))
            row = {"events": T, "scores": kind, "rows": shape[0], "k": args.topk,
                   **sm.paired({"plain": lambda: select._positions_numpy(x, args.topk),
                                "prefiltered": lambda: prefiltered(x, args.topk)}, args.rounds)}
            kernel.append(row)
            print(row, flush=True)

    def plain_then(fn):
        def run():
            select._positions_cpu = select._positions_numpy
            try:
                return fn()
            finally:
                select._positions_cpu = prefiltered
        return run

    with torch.no_grad():
        for name, variant, T, model, cache, cands in sm.benchmark_caches(args):
            def request():
                return score(model, cache, cands)
            same = torch.equal(plain_then(request)(), request())
            row = {"model": name, "cache": variant, "events": T, "candidates": args.candidates, "equal": same,
                   **sm.paired({"plain": plain_then(request), "prefiltered": request}, args.rounds)}
            requests.append(row)
            print(row, flush=True)
    cmd, load, out = sm.write_results(args, __file__, {"selection": kernel, "requests": requests})

    def ratio(r):
        return f"{r['speedup']:.2f} [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}]"

    lines = ["# Exact top-k over prefiltered candidates against the plain selection", "",
             f"`{cmd}` (generated; do not edit). One thread; {args.rounds} paired rounds per cell (each calls both "
             "forms, in alternating order); `x plain`: median per-round ratio plain / prefiltered [first, third "
             f"quartile]. Load average (1 min) at the end: {load:.1f} on 2 cores. What it is: "
             "`seqctr.ops.select._positions_prefiltered` (the same positions as the plain selection, tested in "
             "tests/ops/test_select.py).", "",
             f"**The selection alone** ({args.candidates} candidates x 8 heads = rows, k = {args.topk}):", "",
             "| events | scores | plain ms | prefiltered ms | x plain [q1, q3] |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['events']:,} | {r['scores']} | {r['plain_ms']:.2f} | {r['prefiltered_ms']:.2f} | {ratio(r)} |"
              for r in kernel]
    lines += ["", f"**Whole cached requests** (one user, {args.candidates} candidates, benchmark models of "
              "`bench/serving_models.py`; `equal`: the two forms' scores are identical):", "",
              "| model | cache | events | plain ms | prefiltered ms | x plain [q1, q3] | equal |",
              "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['cache']} | {r['events']:,} | {r['plain_ms']:.2f} | {r['prefiltered_ms']:.2f} | "
              f"{ratio(r)} | {'yes' if r['equal'] else 'NO'} |" for r in requests]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
