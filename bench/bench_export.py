"""Compiled cached scoring (torch.export + AOTInductor, `seqctr export --compile`) against eager scoring.

For each benchmark model of `bench/serving_models.py` and cache (`--variants`: full, CollectiveKV, HSTU's
CollectiveKV with the candidate token projected; paper widths, random weights): capture the
cached scoring once (windows up to 1,024 events, up to 1,000 candidates), compile it, then per history length
time one user's request of `--candidates` candidates both ways in paired rounds (each round calls both, in
alternating order) on one thread; check the outputs agree. A window of at most k events (TWIN, SIM, ETA:
k = 50) is outside the captured range and runs eagerly: marked as such. `--select op,dense` compiles the
top-k models twice, once per captured form of the selection (`seqctr export --compiled-select`), and times
eager and both graphs in the same rounds (`dense / op`: the op form's gain over the dense one, paired).

    python bench/bench_export.py --cpu 1 --rounds 31   ->  docs/results/export_scoring.{json,md}
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import serving_models as sm

WINDOW = 1024


def compiled_scoring(model, ds, items, work: Path, select: str = "op"):
    """``(CompiledScoring, spec, compile seconds)`` of ``model``'s cached scoring (fp32 cache, no event times),
    selections captured in the form ``select``."""
    import torch

    from seqctr.serving.codecs import Codec
    from seqctr.serving.export import capture, compile_program

    user = torch.from_numpy(ds.user_feats[0]).long()
    scorer = SimpleNamespace(model=model, items=items, user_row=lambda _: user, uses_time=False,
                             max_len=WINDOW, codec=Codec("fp32"))
    t0 = time.perf_counter()
    program, spec = capture(scorer, max_candidates=1000, select=select)
    return compile_program(program, spec, work), spec, time.perf_counter() - t0


def main() -> int:
    sm.with_tuned_malloc(__file__)
    args = sm.cache_bench_args(__doc__.splitlines()[0], "din,sdim,sim,twin,eta,hstu", "docs/results/export_scoring",
                               extra=[("--rounds", int, 31, "paired rounds per cell"),
                                      ("--variants", str, "full,ckv,ckv-proj",
                                       "caches of bench/serving_models.py, where the model has them"),
                                      ("--select", str, "op",
                                       "captured forms of a top-k selection to compile and time (op, dense or both)")])
    ds, items = sm.setup(args.cpu)
    import statistics

    import torch

    from seqctr.serving.export import min_window, paired_times
    from seqctr.serving.runtime import prefill, score

    forms = args.select.split(",")
    g = torch.Generator().manual_seed(0)
    user = torch.from_numpy(ds.user_feats[0]).long()
    cands = items[torch.randint(2, len(items), (args.candidates,), generator=g)]
    rows, compile_s = [], {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, variant in [(n, v) for n in args.models.split(",") for v in sm.variants(n)
                              if v in args.variants.split(",")]:
            model = sm.build(name, ds.meta, collective=variant)
            fast, topk = {}, min_window(model) > 1
            for form in (forms if topk else forms[:1]):                      # the form matters only with a top-k
                work = Path(tmp) / f"{name}-{variant}-{form}"
                work.mkdir()
                key = f"{name}/{variant}" + (f"/{form}" if topk else "")
                fast[form], spec, compile_s[key] = compiled_scoring(model, ds, items, work, form)
                print(f"{key}: compiled in {compile_s[key]:.0f} s (windows {spec['min_window']}-{spec['max_window']})",
                      flush=True)
            for T in map(int, args.lengths.split(",")):
                hist = items[torch.randint(2, len(items), (T,), generator=g)]
                cache = prefill(model, user, hist, max_len=WINDOW)
                ref = score(model, cache, cands)
                outs = {f: fn(cache, cands) for f, fn in fast.items()}
                row = {"model": name, "cache": variant, "events": T, "candidates": args.candidates, "topk": topk}
                if any(o is None for o in outs.values()):
                    row.update(note=f"window <= k = {spec['min_window'] - 1}: eager")
                else:
                    runs = {"eager": lambda: score(model, cache, cands),
                            **{f: (lambda fn=fn: fn(cache, cands)) for f, fn in fast.items()}}
                    ts = paired_times(runs, args.rounds)
                    row["eager_ms"] = statistics.median(ts["eager"]) * 1e3
                    for f in fast:
                        row[f] = {"ms": statistics.median(ts[f]) * 1e3, "max_abs_diff": float((outs[f] - ref).abs().max()),
                                  **sm.ratio_summary(ts["eager"], ts[f])}
                    if {"op", "dense"} <= set(fast):
                        row["dense_vs_op"] = sm.ratio_summary(ts["dense"], ts["op"])
                rows.append(row)
                print(row, flush=True)
    cmd, load, out = sm.write_results(args, __file__, {"torch": torch.__version__, "compile_seconds": compile_s,
                                                       "rows": rows})
    both = {"op", "dense"} <= set(forms)
    lines = ["# Compiled cached scoring (torch.export + AOTInductor) against eager", "",
             f"`{cmd}` (generated; do not edit). torch {torch.__version__}, one thread, one user, {args.candidates} "
             "candidates, benchmark models of `bench/serving_models.py` (paper widths, random weights, fp32 caches: full, "
             "CollectiveKV (`ckv`), HSTU's with the candidate token projected (`ckv-proj`); no event times). `form`: how a "
             "top-k selection is captured (`op`: the eager selection as one op the graph calls; `dense`: plain torch ops, "
             "a top-k over every score; `-`: the model selects nothing). `x eager`: median over "
             f"{args.rounds} paired rounds of eager time / compiled time [first, third quartile]"
             + ("; `dense / op`: the same for the two compiled forms (all three timed in the same rounds)" if both else "")
             + f"; `max diff`: largest |compiled - eager| probability. Load average (1 min) at the end: {load:.1f} on 2 "
             "cores. What it is: `seqctr export --compile` (src/seqctr/serving/export.py).", "",
             "| model | cache | events | form | eager ms | compiled ms | x eager [q1, q3] | max diff |"
             + (" dense / op [q1, q3] |" if both else ""),
             "|---|---|---:|---|---:|---:|---:|---:|" + ("---:|" if both else "")]
    fmt = "{0:.2f} [{1:.2f}, {2:.2f}]"
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['model']} | {r['cache']} | {r['events']:,} | | | | {r['note']} | |" + (" |" if both else ""))
            continue
        for f in [f for f in forms if f in r]:
            x, sel = r[f], f if r["topk"] else "-"
            cell = fmt.format(x["speedup"], x["speedup_q1"], x["speedup_q3"])
            extra = ""
            if both:
                d = r.get("dense_vs_op")
                extra = (" " + fmt.format(d["speedup"], d["speedup_q1"], d["speedup_q3"]) + " |") if d and f == "op" else " |"
            lines.append(f"| {r['model']} | {r['cache']} | {r['events']:,} | {sel} | {r['eager_ms']:.2f} | {x['ms']:.2f} | "
                         f"{cell} | {x['max_abs_diff']:.1e} |{extra}")
    lines += ["", "Compile time per model (capture + AOTInductor, seconds): "
              + ", ".join(f"{k} {v:.0f}" for k, v in compile_s.items()) + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
