"""Compiled cached scoring (torch.export + AOTInductor, `seqctr export --compile`) against eager scoring.

For each benchmark model of `bench/serving_models.py` and cache (`--variants`: full, CollectiveKV, HSTU's
CollectiveKV with the candidate token projected; paper widths, random weights): capture the
cached scoring once (windows up to 1,024 events, up to 1,000 candidates), compile it, then per history length
time one user's request of `--candidates` candidates both ways in paired rounds (each round calls both, in
alternating order) on one thread; check the outputs agree. A window of at most k events (TWIN, SIM, ETA:
k = 50) is outside the captured range and runs eagerly: marked as such.

    python bench/bench_export.py --cpu 1 --rounds 31   ->  docs/results/export_scoring.{json,md}
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import serving_models as sm

WINDOW = 1024


def compiled_scoring(model, ds, items, work: Path):
    """``(CompiledScoring, spec, compile seconds)`` of ``model``'s cached scoring (fp32 cache, no event times)."""
    import torch

    from seqctr.serving.codecs import Codec
    from seqctr.serving.export import capture, compile_program

    user = torch.from_numpy(ds.user_feats[0]).long()
    scorer = SimpleNamespace(model=model, items=items, user_row=lambda _: user, uses_time=False,
                             max_len=WINDOW, codec=Codec("fp32"))
    t0 = time.perf_counter()
    program, spec = capture(scorer, max_candidates=1000)
    return compile_program(program, spec, work), spec, time.perf_counter() - t0


def main() -> int:
    sm.with_tuned_malloc(__file__)
    args = sm.cache_bench_args(__doc__.splitlines()[0], "din,sdim,sim,twin,eta,hstu", "docs/results/export_scoring",
                               extra=[("--rounds", int, 31, "paired rounds per cell"),
                                      ("--variants", str, "full,ckv,ckv-proj",
                                       "caches of bench/serving_models.py, where the model has them")])
    ds, items = sm.setup(args.cpu)
    import torch

    from seqctr.serving.runtime import prefill, score

    g = torch.Generator().manual_seed(0)
    user = torch.from_numpy(ds.user_feats[0]).long()
    cands = items[torch.randint(2, len(items), (args.candidates,), generator=g)]
    rows, compile_s = [], {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, variant in [(n, v) for n in args.models.split(",") for v in sm.variants(n)
                              if v in args.variants.split(",")]:
            model = sm.build(name, ds.meta, collective=variant)
            work = Path(tmp) / f"{name}-{variant}"
            work.mkdir()
            fast, spec, compile_s[f"{name}/{variant}"] = compiled_scoring(model, ds, items, work)
            print(f"{name}/{variant}: compiled in {compile_s[f'{name}/{variant}']:.0f} s (windows "
                  f"{spec['min_window']}-{spec['max_window']})", flush=True)
            for T in map(int, args.lengths.split(",")):
                hist = items[torch.randint(2, len(items), (T,), generator=g)]
                cache = prefill(model, user, hist, max_len=WINDOW)
                ref = score(model, cache, cands)
                out = fast(cache, cands)
                row = {"model": name, "cache": variant, "events": T, "candidates": args.candidates}
                if out is None:
                    row.update(note=f"window <= k = {spec['min_window'] - 1}: eager")
                else:
                    row.update(max_abs_diff=float((out - ref).abs().max()),
                               **sm.paired({"eager": lambda: score(model, cache, cands),
                                           "compiled": lambda: fast(cache, cands)}, args.rounds))
                rows.append(row)
                print(row, flush=True)
    cmd, load, out = sm.write_results(args, __file__, {"torch": torch.__version__, "compile_seconds": compile_s,
                                                       "rows": rows})
    lines = ["# Compiled cached scoring (torch.export + AOTInductor) against eager", "",
             f"`{cmd}` (generated; do not edit). torch {torch.__version__}, one thread, one user, {args.candidates} "
             "candidates, benchmark models of `bench/serving_models.py` (paper widths, random weights, fp32 caches: full, "
             f"CollectiveKV (`ckv`), HSTU's with the candidate token projected (`ckv-proj`); no event times). `x eager`: median over {args.rounds} paired rounds of eager time / compiled time "
             f"[first, third quartile]; `max diff`: largest |compiled - eager| probability. Load average (1 min) at the "
             f"end: {load:.1f} on 2 cores. What it is: `seqctr export --compile` (src/seqctr/serving/export.py).", "",
             "| model | cache | events | eager ms | compiled ms | x eager [q1, q3] | max diff |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['model']} | {r['cache']} | {r['events']:,} | | | {r['note']} | |")
        else:
            lines.append(f"| {r['model']} | {r['cache']} | {r['events']:,} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | "
                         f"{r['speedup']:.2f} [{r['speedup_q1']:.2f}, {r['speedup_q3']:.2f}] | {r['max_abs_diff']:.1e} |")
    lines += ["", "Compile time per model (capture + AOTInductor, seconds): "
              + ", ".join(f"{k} {v:.0f}" for k, v in compile_s.items()) + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
