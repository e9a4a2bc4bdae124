"""Benchmark: scoring latency from a per-user cache — full recompute vs full K/V cache vs
CollectiveKV cache.

One command: ``.venv/bin/python bench/bench_serving.py`` (``--quick`` for a smoke run). For users
with 50, 200 and 1,000 events and requests of 1..512 candidates, one process pinned to one core
times ``CTRModel.score`` (median and p99 over ``--repeats``) with:

- ``forward``: no cache at all — the model's ordinary forward pass over a batch of one row per
  candidate, each row carrying the whole history (what a server without a serving split runs, and
  the reference the cache-equivalence tests compare against);
- ``recompute``: the cache holds only the embedded history; every request runs the backbone once
  for all candidates (history embedded and shared once per request);
- ``rebuild``: no stored cache — every request prefills the user's cache from the raw history and
  scores from it (``prefill`` + ``score``: the cheapest exact no-cache path when a request has many
  candidates, since the history's K/V are then projected once per request, not per candidate);
- ``cache``: the backbone's own cache (K/V of target attention, GSU projections, HSTU's per-layer K/V);
- ``collective``: the same model with CollectiveKV (``d_u`` 1, pool 10,000; the cache holds user
  parts + int16 indices) on both branches' target attention, or on every HSTU layer; timed with
  the routing memo warm (the candidates' item tokens routed before, as for items a server has
  seen) and, as ``collective_cold``, with every memo emptied before each request (first sight of
  every item). Only HSTU routes at scoring time (its candidate tokens' own K/V), and only its first
  layer memoises (a deeper layer's tokens depend on the user's history).

Models use the CollectiveKV paper's width (attention_dim 256, 8 heads) and random weights
(latency does not depend on training). "Bytes read" = the request's cached K/V bytes. Writes
``bench/results/serving.{json,md}``. "Batch size" here = candidates per request.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import serving_models
from seqctr.serving.runtime import prefill, score

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])  # recorded with the results


def scorer(model, cache, cands, forget=()):
    """One request: ``score(model, cache, cands)``, the routing memos in ``forget`` emptied first."""
    def run():
        for memo in forget:
            memo.table.clear()
        return score(model, cache, cands)
    return run


def fuxictr_forward(args, ds) -> dict:
    """``(model, events, candidates) -> median ms`` of FuxiCTR 2.3.10's LongCTR forward pass over
    the request (one row per candidate, as it has no serving split), same widths as ours, run by
    ``fuxictr_runner.py --mode serving`` in FuxiCTR's venv on this process's core and allocator."""
    import json
    import subprocess

    import bench_vs_fuxictr as bvf

    data = bvf.export_longctr(ds, bvf.WORK / "longctr_ml100k")
    py = bvf.ensure_fuxictr_venv()
    out = {}
    for name in args.models.split(","):
        if bvf.BACKBONES.get(name) is None:
            continue
        params = {**bvf.FX_PARAMS[name], "attention_dim": 256, "num_heads": 8}
        res = subprocess.run([str(py), str(ROOT / "bench/fuxictr_runner.py"), "--data", str(data), "--model",
                              bvf.BACKBONES[name], "--mode", "serving", "--threads", "1", "--lengths", args.lengths,
                              "--candidates", args.candidates, "--repeats", str(args.repeats),
                              "--params", json.dumps(params), "--out", str(bvf.WORK / f"fx_serving_{name}.json")],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"FuxiCTR {name} serving run failed:\n{res.stderr[-3000:]}")
        for c in json.loads(res.stdout.strip().splitlines()[-1])["cells"]:
            out[(name, c["events"], c["candidates"])] = c["median_ms"]
            print(f"{name:5s} fuxictr    L={c['events']:5d} N={c['candidates']:4d}: {c['median_ms']:9.2f} ms", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sim,twin,hstu")
    ap.add_argument("--lengths", default="50,200,1000")
    ap.add_argument("--candidates", default="1,8,64,200,512")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cpu", default="0")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                    help="tuned: glibc keeps freed memory (no page faults per request); default: glibc as shipped")
    ap.add_argument("--fuxictr", action="store_true",
                    help="also time FuxiCTR 2.3.10's forward pass for the same requests (its own venv, same core)")
    ap.add_argument("--out", default=None, help="default bench/results/serving (tuned) or serving_glibc_default")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / ("bench/results/serving" if args.malloc == "tuned" else
                                       "bench/results/serving_glibc_default"))
    if args.malloc == "tuned":
        serving_models.with_tuned_malloc(__file__)
    if args.quick:
        args.lengths, args.candidates, args.repeats = "50,1000", "1,200", 3
    ds, items = serving_models.setup(args.cpu)
    import torch

    from seqctr.data import SeqBatch
    from seqctr.experiments.accounting import kv_cache_bytes
    from seqctr.utils.io import write_json, write_text

    g = torch.Generator().manual_seed(0)
    fuxictr = fuxictr_forward(args, ds) if args.fuxictr else {}
    rows = []
    for name in args.models.split(","):
        variants = {"forward": (False, None), "recompute": (False, "recompute"), "rebuild": (False, "cache"),
                    "cache": (False, "cache")}
        if name in serving_models.COLLECTIVE:
            variants["collective"] = variants["collective_cold"] = (True, "cache")
        models = {}
        for v, (collective, _) in variants.items():
            models[v] = (models["collective"] if v == "collective_cold"
                         else serving_models.build(name, ds.meta, collective))
        for L in [int(x) for x in args.lengths.split(",")]:
            hist = items[torch.randint(2, len(items), (L,), generator=g)]
            user = torch.from_numpy(ds.user_feats[0]).long()
            for N in [int(x) for x in args.candidates.split(",")]:
                cands = items[torch.randint(2, len(items), (N,), generator=g)]
                for v, (_, mode) in variants.items():
                    m = models[v]
                    if v in ("recompute", "forward") and name == "hstu" and N * L * L > 20 * 1000 * 1000:
                        continue  # [N, heads, L, L] attention would not fit a small machine
                    if v == "forward":
                        batch = SeqBatch.for_candidates(user, hist, cands)
                        run = lambda: m(batch)                                           # noqa: E731
                        cache = None
                    elif v == "rebuild":
                        run = lambda: score(m, prefill(m, user, hist), cands)              # noqa: E731
                        cache = None
                    else:
                        cache = prefill(m, user, hist, max_len=None, mode=mode)
                        forget = ([mm for mod in m.modules() for mm in getattr(mod, "memos", {}).values()]
                                  if v == "collective_cold" else [])
                        run = scorer(m, cache, cands, forget)
                    slow = v in ("recompute", "forward") and L >= 1000
                    reps = max(2, args.repeats // (4 if slow else 1))
                    with torch.no_grad():
                        times = serving_models.timed(run, reps)
                    median = statistics.median(times)
                    acc = kv_cache_bytes(m.backbone, L) if name != "hstu" else None
                    kv_keys = [k for k in cache.tensors if k not in ("user", "ids", "user_ids")] if cache else []
                    rows.append({"model": name, "variant": v, "events": L, "candidates": N,
                                 "median_ms": 1000 * median,
                                 "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
                                 "repeats": reps,
                                 "candidates_per_s": N / median,
                                 "cache_bytes": cache.nbytes(kv_keys) if v in ("cache", "collective") else 0,
                                 "kv_accounting": acc})
                    print(f"{name:5s} {v:10s} L={L:5d} N={N:4d}: {rows[-1]['median_ms']:9.2f} ms "
                          f"(p99 {rows[-1]['p99_ms']:.2f}), cache {rows[-1]['cache_bytes']:,} B", flush=True)
    write_json(args.out + ".json", {"command": COMMAND, "malloc": args.malloc, "rows": rows,
                                    "fuxictr_forward_ms": [{"model": k[0], "events": k[1], "candidates": k[2],
                                                            "median_ms": v} for k, v in fuxictr.items()]})
    lines = ["# Serving latency: recompute vs cache vs CollectiveKV cache", "",
             f"Command: `{COMMAND}`; one core, 1 thread; glibc malloc {args.malloc} "
             f"({'MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ 4 GiB' if args.malloc == 'tuned' else 'as shipped'}); "
             "median per request (the cache's p99 and candidates/s in their own column, every p99 in the JSON). "
             "`forward` = the model's forward pass over one row per candidate (no serving split); "
             "`recompute` = the backbone run once per request over the embedded history; "
             "`rebuild` = prefill the cache from the raw history, then score from it, every request; "
             "(x / y / z) = speed-up of the variant over forward / recompute / rebuild, same run"
             + ("; `FuxiCTR forward` = FuxiCTR 2.3.10's LongCTR model over the same request (it has no serving "
                "split), same widths, same core, same run, with the cache's speed-up over it." if fuxictr else "."),
             "",
             "| model | events | candidates |" + (" FuxiCTR forward ms (cache speed-up) |" if fuxictr else "")
             + " forward ms | recompute ms | rebuild ms | cache ms (x / y / z) | CollectiveKV ms (x / y / z) "
             "| CKV, memo cold ms | cache p99 ms / candidates/s | cache bytes | CKV bytes |",
             "|---|---:|---:|" + ("---:|" if fuxictr else "") + "---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    key = {(r["model"], r["events"], r["candidates"], r["variant"]): r for r in rows}
    for (mname, L, N, v), r in key.items():
        if v != "cache":
            continue
        fw, rc, rb, ck, cold = (key.get((mname, L, N, x)) for x in ("forward", "recompute", "rebuild", "collective",
                                                                    "collective_cold"))

        def ms(x):
            return f"{x['median_ms']:.2f}" if x else "n/a (too large)"

        def cell(x):
            if x is None:
                return "n/a"
            ratios = [f"{b['median_ms'] / x['median_ms']:.1f}x" if b else "-" for b in (fw, rc, rb)]
            return f"{x['median_ms']:.2f} ({' / '.join(ratios)})"
        ck_bytes = f"{ck['cache_bytes']:,}" if ck else "n/a"
        cold_ms = f"{cold['median_ms']:.2f}" if cold else "n/a"
        fx = fuxictr.get((mname, L, N))
        fx_cell = (f" {fx:.2f} ({fx / r['median_ms']:.1f}x) |" if fx else " n/a |") if fuxictr else ""
        lines.append(f"| {mname} | {L} | {N} |{fx_cell} {ms(fw)} | {ms(rc)} | {ms(rb)} | {cell(r)} | {cell(ck)} | {cold_ms} "
                     f"| {r['p99_ms']:.2f} / {r['candidates_per_s']:,.0f} | {r['cache_bytes']:,} | {ck_bytes} |")
    write_text(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
