"""What batching requests across users could save: one cached request's time against its candidate count.

A request's time at 1 candidate is its fixed part (dispatch, the per-user reads of the cache, SIM's re-embedded
GSU keys): the most that scoring several users' requests in one call could share, since each user's GSU, top-k
and ESU run over that user's own cache. Benchmark models of `bench/serving_models.py` (paper widths, random
weights, full cache), one thread, median of `--repeats` calls.

    python bench/request_overhead.py --cpu 1   ->  bench/results/request_overhead.{json,md}
"""
from __future__ import annotations


import serving_models as sm


def main() -> int:
    sm.with_tuned_malloc(__file__)
    args = sm.cache_bench_args(__doc__.splitlines()[0], "sim,twin", "bench/results/request_overhead",
                               extra=[("--counts", str, "1,25,200", "candidate counts")])
    args.repeats = max(args.repeats, 31)
    import torch

    from seqctr.serving.runtime import score

    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    args.candidates = max(args.candidates, max(counts))
    for name, variant, T, model, cache, cands in sm.benchmark_caches(args):
        if variant != "full":
            continue
        with torch.no_grad():
            ms = {n: sm.timed(lambda: score(model, cache, cands[:n]), args.repeats)[args.repeats // 2] * 1e3
                  for n in counts}
        rows.append({"model": name, "events": T, "ms": ms, "fixed_share": ms[counts[0]] / ms[counts[-1]]})
        print(rows[-1], flush=True)
    cmd, _, out = sm.write_results(args, __file__, {"rows": rows})
    lines = ["# One cached request's time against its candidate count", "", f"`{cmd}` (generated). "
             + __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| model | events | " + " | ".join(f"{n} cand. ms" for n in counts) + f" | {counts[0]} / {counts[-1]} |",
             "|---|---:|" + "---:|" * (len(counts) + 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['events']:,} | " + " | ".join(f"{r['ms'][n]:.2f}" for n in counts)
                     + f" | {r['fixed_share']:.0%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
