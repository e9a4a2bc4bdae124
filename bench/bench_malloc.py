"""Benchmark: glibc malloc as shipped vs seqctr's ``keep_freed_memory`` — training and inference
samples/s per backbone, and the same malloc setting given to FuxiCTR 2.3.10 (``--fuxictr``).

One command: ``.venv/bin/python bench/bench_malloc.py`` (``--models din,sim``; ``--quick`` for a
smoke run). Writes ``bench/results/malloc.{json,md}``.

Each measurement is a fresh process pinned to one core (``--cpu``, 1 thread) running
``bench_vs_fuxictr.py``'s own throughput child (``--batches`` training steps after 3 warm-up ones,
then the whole test split), with ``SEQCTR_MALLOC=system`` (glibc's defaults) or unset (seqctr's
default: mmap and trim thresholds at 1 GiB, ``seqctr.utils.malloc``); the two alternate
``--repeats`` times and the table gives medians and their ratio. FuxiCTR gets the same thresholds
through glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, to show what part of the
gain is the allocator, which either library could have.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_fuxictr as vs  # noqa: E402  (the same children, data export and FuxiCTR venv)

GLIBC_REUSE = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
KEYS = ("train_samples_per_s", "infer_samples_per_s", "peak_rss_mb")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="din,dien,sim,sdim,twin,eta,hstu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=100, help="timed training batches per run")
    ap.add_argument("--cpu", default="0", help="taskset CPU list ('' = no pinning)")
    ap.add_argument("--fuxictr", action="store_true", help="also FuxiCTR with glibc's defaults vs the same thresholds")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 10 batches")
    ap.add_argument("--out", default=str(vs.ROOT / "bench/results/malloc"))
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.batches = 1, 10

    from seqctr.data import prepare

    pin = ["taskset", "-c", args.cpu] if args.cpu else []
    ours = pin + [sys.executable, str(vs.ROOT / "bench/bench_vs_fuxictr.py"), "--threads", "1", "--batches",
                  str(args.batches), "--eval-batch", "256", "--child", "throughput"]
    fx = None
    if args.fuxictr:
        ds, _, _ = prepare("ml100k")
        data = vs.export_longctr(ds, vs.WORK / "longctr_ml100k")
        fx = pin + [str(vs.ensure_fuxictr_venv()), str(vs.ROOT / "bench/fuxictr_runner.py"), "--data", str(data),
                    "--threads", "1", "--mode", "throughput", "--batches", str(args.batches), "--eval-batch", "256"]
    command = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])
    results = {"settings": vars(args), "models": {}}
    names = args.models.split(",")
    for name in names:
        variants = {"seqctr system": (ours + [name], {"SEQCTR_MALLOC": "system"}),
                    "seqctr reuse": (ours + [name], {"SEQCTR_MALLOC": "reuse"})}
        if fx and vs.BACKBONES[name]:
            fx_cmd = fx + ["--model", vs.BACKBONES[name], "--params", json.dumps(vs.FX_PARAMS[name]),
                           "--out", str(vs.WORK / f"fx_{name}_malloc.json")]
            variants |= {"fuxictr system": (fx_cmd, {}), "fuxictr reuse": (fx_cmd, GLIBC_REUSE)}
        runs = {v: [] for v in variants}
        for rep in range(args.repeats):
            for v, (cmd, env) in variants.items():
                runs[v].append(vs.run_json(cmd, env))
            print(f"{name} {rep + 1}/{args.repeats}: " + ", ".join(
                f"{v} {r[-1]['train_samples_per_s']:.0f}/{r[-1]['infer_samples_per_s']:.0f}" for v, r in runs.items())
                + " train/infer samples/s", flush=True)
        med = {v: {k: statistics.median(x[k] for x in r) for k in KEYS} for v, r in runs.items()}
        for lib in ("seqctr", "fuxictr"):
            if f"{lib} reuse" in med:
                for kind in ("train", "infer"):
                    med[f"{lib} {kind} gain"] = (med[f"{lib} reuse"][f"{kind}_samples_per_s"]
                                                 / med[f"{lib} system"][f"{kind}_samples_per_s"])
        results["models"][name] = {"median": med, "runs": runs, "cpu": args.cpu}
        vs.merge_results(Path(args.out + ".json"), results, names, command, render)
    print(render(results | {"commands": [command]}))
    return 0


def render(results: dict) -> str:
    s = results["settings"]
    cpus = ", ".join(f"{n}: CPU {r.get('cpu') or '-'}" for n, r in results["models"].items())
    lines = ["# glibc malloc as shipped vs freed memory kept (mmap / trim thresholds 1 GiB)", "",
             "Command" + ("s" if len(results["commands"]) > 1 else "") + ": " +
             " and ".join(f"`{c}`" for c in results["commands"]) + f". Median of {s['repeats']} alternating fresh "
             f"processes, {s['batches']} training batches of 256 (after 3 warm-up) + the whole ml100k test split in "
             f"batches of 256, 1 thread, each model's processes pinned to one CPU ({cpus}). `system` = glibc's defaults; `reuse` = seqctr's "
             "default (`seqctr.utils.malloc`; FuxiCTR: the same thresholds by glibc's environment variables).", "",
             "| model | seqctr train/s system | reuse | gain | infer/s system | reuse | gain | peak RSS MB system / reuse "
             "| FuxiCTR train gain | FuxiCTR infer gain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        m = r["median"]
        a, b = m["seqctr system"], m["seqctr reuse"]
        fx = [f"{m[k]:.2f}x" if k in m else "—" for k in ("fuxictr train gain", "fuxictr infer gain")]
        lines.append(f"| {name} | {a['train_samples_per_s']:,.0f} | {b['train_samples_per_s']:,.0f} | "
                     f"{m['seqctr train gain']:.2f}x | {a['infer_samples_per_s']:,.0f} | {b['infer_samples_per_s']:,.0f} | "
                     f"{m['seqctr infer gain']:.2f}x | {a['peak_rss_mb']:,.0f} / {b['peak_rss_mb']:,.0f} | "
                     f"{fx[0]} | {fx[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
