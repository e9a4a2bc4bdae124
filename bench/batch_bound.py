"""How much could scoring several requests in one batch save? An upper bound, per model and cache.

One command: ``.venv/bin/python bench/batch_bound.py [--models din,sim,twin,hstu] [--lengths 1000] [--users 8]``

Batching requests across users (the service gathering the requests that arrive within a window and
scoring them in one model call) cannot remove work that grows with the candidates: every candidate
still searches and attends over its own user's cached events. What it can remove is each request's fixed
cost — the ops dispatched per call, the user's own part of the head, the small products it leaves under-filled.
This benchmark bounds that saving from above, paired, on one thread:

- ``alone``: ``--users`` users (distinct random histories of the same length), each scored alone with
  ``--candidates`` candidates, one after the other — what the service does today;
- ``one call``: a single request of ``users x candidates`` candidates against one of those caches — the same
  per-candidate work in one model call, with no per-user work repeated; any batched form of the ``--users``
  requests does at least this much (it also has to keep each user's cache apart);
- ``one cache``: the ``--users`` requests one after the other, all against that one cache — so ``one cache / one
  call`` is the per-request fixed cost alone, and ``alone / one cache`` what reading distinct users' caches costs
  (memory traffic a batched form pays too).

``bound = alone / one call`` (median of the per-round ratios of ``--rounds`` rounds calling the three in
alternating order): no batching of these requests can be faster than that. Results:
``bench/results/batch_bound.{json,md}``.
"""
from __future__ import annotations

import statistics
import sys

import serving_models as sm


def main() -> int:
    args = sm.cache_bench_args(__doc__.splitlines()[0], "din,sim,twin,hstu", "bench/results/batch_bound",
                               lengths="1000",
                               extra=[("--users", int, 8, "requests batched together (one per user)"),
                                      ("--rounds", int, 21, "alternating paired rounds")])
    import torch

    from seqctr.serving.export import paired_times
    from seqctr.serving.runtime import prefill, score

    ds, items = sm.setup(args.cpu)
    g = torch.Generator().manual_seed(0)
    rows = []
    for name in args.models.split(","):
        for variant in [v for v in sm.variants(name) if v in ("full", "ckv", "ckv-proj")]:  # HSTU: routed and projected
            model = sm.build(name, ds.meta, collective=variant)
            for T in map(int, args.lengths.split(",")):
                caches, requests = [], []
                for u in range(args.users):
                    user = torch.from_numpy(ds.user_feats[u]).long()
                    hist = items[torch.randint(2, len(items), (T,), generator=g)]
                    caches.append(prefill(model, user, hist, max_len=T))
                    requests.append(items[torch.randint(2, len(items), (args.candidates,), generator=g)])
                merged = torch.cat(requests)

                def alone():
                    for c, r in zip(caches, requests):
                        score(model, c, r)

                def one_cache():
                    for r in requests:
                        score(model, caches[0], r)

                with torch.no_grad():
                    ts = paired_times({"alone": alone, "one_cache": one_cache,
                                       "one_call": lambda: score(model, caches[0], merged)}, args.rounds)
                cell = {f"{k}_ms": statistics.median(v) * 1e3 for k, v in ts.items()}
                for ratio, (a, b) in {"bound": ("alone", "one_call"), "fixed": ("one_cache", "one_call"),
                                      "locality": ("alone", "one_cache")}.items():
                    cell |= sm.ratio_summary(ts[a], ts[b], ratio)
                rows.append({"model": name, "cache": variant, "events": T, "users": args.users,
                             "candidates": args.candidates, **cell})
                print(f"{name:5s} {variant:8s} T={T:5d}: alone {cell['alone_ms']:.2f} ms, one cache "
                      f"{cell['one_cache_ms']:.2f}, one call {cell['one_call_ms']:.2f} ms, bound {cell['bound']:.2f}x",
                      flush=True)
    cmd, load, out = sm.write_results(args, __file__, {"rows": rows})
    lines = ["# Batching requests across users: the most it could save", "",
             f"`{cmd}` (generated; do not edit). Benchmark models of `bench/serving_models.py` (random weights), one "
             f"thread. `alone`: {args.users} users' requests of {args.candidates} candidates scored one after the "
             f"other (each against its own cache); `one call`: one request of {args.users} x {args.candidates} "
             "candidates against one cache — the per-candidate work of the same requests in one model call, none of "
             "the per-request work repeated, so no batched form of those requests is faster; `one cache`: the "
             f"{args.users} requests one after the other against that one cache. Ratios: medians of {args.rounds} "
             "rounds' ratios (the three called in alternating order) [first, third quartile]: `bound` = alone / one "
             "call; `fixed` = one cache / one call (the per-request fixed cost); `locality` = alone / one cache (reading "
             f"distinct users' caches, which a batched form pays too). Load average (1 min) at the end: {load:.1f} on "
             "2 cores.", "",
             "| model | cache | events | alone, ms (all requests) | one cache, ms | one call, ms | bound | fixed | "
             "locality |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['cache']} | {r['events']:,} | {r['alone_ms']:.2f} | {r['one_cache_ms']:.2f} | "
              f"{r['one_call_ms']:.2f} | "
              + " | ".join(f"{r[k]:.2f}x [{r[k + '_q1']:.2f}, {r[k + '_q3']:.2f}]" for k in ("bound", "fixed", "locality"))
              + " |" for r in rows]
    sm.write_page(out, lines)
    return 0


if __name__ == "__main__":
    sm.with_tuned_malloc(__file__)
    sys.exit(main())
