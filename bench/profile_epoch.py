"""Where a whole ml100k epoch's time goes, per backbone: inference and training on one thread.

``python bench/profile_epoch.py --models din,sim,eta,dien --cpu 0``

Per backbone, in a fresh process pinned to ``--cpu`` (``--threads`` torch threads), with the
benchmark's settings (configs/ml100k/<name>.yaml, batch 256, max_len 200, length-bucketed batches):

- **inference** over the whole test split, timed twice: once with wall-clock forward hooks on the
  model's modules two levels deep (``embedding``, ``backbone.<layer>``, ``head``; a parent's own time
  is what its timed children do not cover, e.g. SIM's GSU in ``backbone``), then under
  ``torch.profiler`` (over ``--profile-batches`` batches spread over the split; 0 = all) with FLOP
  counting, which gives the time per ATen op, each op's class (GEMM, gather/scatter, element-wise,
  other) and the GEMMs' achieved GFLOP/s;
- **training** over ``--train-batches`` batches of an epoch (0 = all): forward, backward and optimiser
  step timed apart (the Trainer's own :func:`~seqctr.training.train_step`, its ``clock``), and the
  profiler's op classes over 40 of the same batches (or ``--profile-batches`` spread over them);
- the core's **fp32 GEMM ceiling**: the GFLOP/s of a large square ``torch.mm`` on the same thread, so a
  GEMM's share of that ceiling says how much faster it could run on this CPU.

Writes ``bench/results/profile_epoch.{json,md}`` (merged per model, like bench_vs_fuxictr). Profiles
only seqctr (FuxiCTR's ratios are in vs_fuxictr.md). Times are for the machine as it was: run it with
nothing else on the pinned core.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import serving_models

ROOT = Path(__file__).resolve().parents[1]
GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation"}
GATHER = {"aten::index_select", "aten::index", "aten::gather", "aten::embedding", "aten::index_add_",
          "aten::index_copy_", "aten::scatter_add_", "aten::embedding_dense_backward", "aten::index_put_",
          "aten::_index_put_impl_", "aten::embedding_backward", "aten::take"}
SHAPE = {"aten::view", "aten::reshape", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::permute",
         "aten::transpose", "aten::t", "aten::slice", "aten::select", "aten::as_strided", "aten::narrow",
         "aten::unbind", "aten::split", "aten::chunk", "aten::detach", "aten::alias", "aten::numpy_T",
         "aten::lift_fresh", "aten::_unsafe_view", "aten::empty", "aten::empty_like", "aten::empty_strided",
         "aten::resize_", "aten::zeros", "aten::new_zeros", "aten::new_empty", "aten::zero_"}


def op_class(name: str) -> str:
    """GEMM / gather-scatter / element-wise; view and allocation ops count as ``other``."""
    if name in GEMM:
        return "gemm"
    if name in GATHER:
        return "gather"
    if name in SHAPE or not name.startswith("aten::"):
        return "other"
    return "elementwise"


class ModuleTimer:
    """Inclusive wall-clock seconds per named module (forward only), via pre/post forward hooks."""

    def __init__(self, model, depth: int = 2):
        self.total: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        self.names = [n for n, _ in model.named_modules() if n and n.count(".") < depth]
        self._handles = []
        for name, mod in model.named_modules():
            if name in self.names:
                self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
                self._handles.append(mod.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(_mod, _inp):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(_mod, _inp, _out):
            self.total[name] += time.perf_counter() - self._start.pop(name)
        return hook

    def own(self) -> dict[str, float]:
        """Seconds per module minus its timed children's (what the module itself does)."""
        out = {}
        for n in self.names:
            kids = sum(self.total[c] for c in self.names if c.startswith(n + ".") and c.count(".") == n.count(".") + 1)
            out[n] = self.total[n] - kids
        return out

    def remove(self):
        for h in self._handles:
            h.remove()


def op_table(prof, flops_prof, seconds: float, top: int = 8) -> dict:
    """Self time per op class and the top ops from ``prof``; the GEMMs' FLOPs from ``flops_prof``, a
    second pass over the same batches with FLOP counting (it records every op's inputs, which keeps
    them alive and makes the ops themselves slower, so its times are not used)."""
    flops = {e.key: e.flops for e in flops_prof.key_averages() if e.flops}
    classes: dict[str, float] = defaultdict(float)
    ops = []
    for e in prof.key_averages():
        s = e.self_cpu_time_total / 1e6
        classes[op_class(e.key)] += s
        ops.append({"op": e.key, "seconds": s, "calls": e.count, "class": op_class(e.key),
                    "gflops_per_s": flops[e.key] / 1e9 / s if e.key in flops and s > 0 else None})
    ops.sort(key=lambda o: -o["seconds"])
    gemm_flops = sum(v for k, v in flops.items() if k in GEMM)
    return {"profiled_seconds": sum(classes.values()), "wall_seconds": seconds, "class_seconds": dict(classes),
            "gemm_gflops_per_s": gemm_flops / 1e9 / classes["gemm"] if classes["gemm"] else None,
            "top_ops": ops[:top]}


def profiled(run) -> tuple:
    """``run()`` under the profiler twice: op times, then FLOPs (see :func:`op_table`)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as flops_prof:
        run()
    return prof, flops_prof


def spread(batches: list, n: int) -> list:
    """``n`` batches evenly spaced over ``batches`` (all of them when ``n`` is 0 or larger)."""
    if not n or n >= len(batches):
        return list(batches)
    return [batches[round(i * (len(batches) - 1) / (n - 1))] if n > 1 else batches[0] for i in range(n)]


def profile_model(name: str, threads: int, train_batches: int, profile_batches: int = 0) -> dict:
    """Child process: the inference and training profiles of one backbone (see the module docstring)."""
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader, prepare
    from seqctr.models import build_model
    from seqctr.training import make_optimizer, train_step
    from seqctr.utils.malloc import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml")
    ds, _, _ = prepare("ml100k")
    model = build_model(cfg.model, ds.meta)
    res: dict = {"gemm_ceiling_gflops_per_s": serving_models.gemm_ceiling()}

    # inference: whole test split, batches of 256, as bench_vs_fuxictr (gathering the batch included)
    te = BatchLoader(ds, "test", max_len=200, batch_size=256, shuffle=False)
    model.eval()
    with torch.no_grad():
        for b in te.batches()[:2]:
            model(te.batch(b))
        timer = ModuleTimer(model)
        t0, gather = time.perf_counter(), 0.0
        for pos in te.batches():
            g0 = time.perf_counter()
            b = te.batch(pos)
            gather += time.perf_counter() - g0
            model(b)
        wall = time.perf_counter() - t0
        timer.remove()
        sample = spread(te.batches(), profile_batches)
        profs = profiled(lambda: [model(te.batch(pos)) for pos in sample])
    modules = timer.own()
    res["infer"] = {"samples": len(te.indices), "wall_seconds": wall, "samples_per_s": len(te.indices) / wall,
                    "parts_seconds": {"batch gather": gather, **modules,
                                      "model glue": wall - gather - sum(modules.values())},
                    "ops": op_table(*profs, wall), "profiled_batches": len(sample)}

    # training: forward / backward / step apart (train_step's clock), then the op classes
    tr = BatchLoader(ds, "train", max_len=200, batch_size=256, shuffle=True, seed=0)
    opt = make_optimizer(model, 1e-3)
    model.train()
    batches = tr.batches(1)[: train_batches + 3] if train_batches else tr.batches(1)
    parts, n = defaultdict(float), 0

    def step(pos, clock: bool):
        nonlocal n
        t0 = time.perf_counter()
        b = tr.batch(pos)
        if clock:
            n += len(pos)
            parts["batch gather"] += time.perf_counter() - t0
        train_step(model, opt, b, clock=parts if clock else None)

    for i, pos in enumerate(batches):
        step(pos, clock=i >= 3)
    wall = sum(parts.values())
    sample = spread(batches[3:], profile_batches) if profile_batches else batches[3:3 + 40]
    profs = profiled(lambda: [step(pos, clock=False) for pos in sample])
    res["train"] = {"samples": n, "batches": len(batches) - 3, "wall_seconds": wall, "samples_per_s": n / wall,
                    "parts_seconds": dict(parts), "ops": op_table(*profs, wall), "profiled_batches": len(sample)}
    return res


PART_GROUPS = ("batch gather", "embedding", "sequence layers", "head MLP", "glue")


def group_parts(parts: dict[str, float]) -> dict[str, float]:
    """Either library's module times in common groups: the loader's batch, embedding lookups,
    the sequence layers (everything else in the model), the head MLP (seqctr ``head``/``aux_head``,
    FuxiCTR ``dnn``) and the forward's own code (``glue``: seqctr's model calls its embedding tables
    directly, so its lookups land here; FuxiCTR's output sigmoid too)."""
    out = dict.fromkeys(PART_GROUPS, 0.0)
    for k, v in parts.items():
        top = k.split(".")[0]
        g = ("batch gather" if k == "batch gather" else "glue" if k in ("model glue", "output_activation")
             else "embedding" if top.startswith("embedding") else "head MLP" if top in ("head", "aux_head", "dnn")
             else "sequence layers")
        out[g] += v
    return out


def render(results: dict) -> str:
    """The markdown report: per backbone, where inference and training time goes."""
    from bench_vs_fuxictr import commands_line
    lines = ["# Where an ml100k epoch's time goes (seqctr, one thread)", "",
             commands_line(results) + " (each model's row from the last of them that ran it). Parts: wall clock; op classes: `torch.profiler` self time "
             "(GEMM = mm/addmm/bmm; gather = index_select/gather/embedding and their backward scatter); "
             "GEMM GFLOP/s vs this core's large-`torch.mm` ceiling.", ""]
    for kind in ("infer", "train"):
        lines += [f"## {'Inference (whole test split)' if kind == 'infer' else 'Training (one epoch)'}", "",
                  "| model | samples/s | parts (share of wall time) | op classes (share of profiled time) | "
                  "GEMM GFLOP/s (ceiling) | top ops |", "|---|---:|---|---|---:|---|"]
        for name, r in results["models"].items():
            k = r[kind]
            parts = ", ".join(f"{p} {100 * v / k['wall_seconds']:.0f}%"
                              for p, v in sorted(k["parts_seconds"].items(), key=lambda x: -x[1]) if v / k["wall_seconds"] >= 0.02)
            o = k["ops"]
            cls = ", ".join(f"{c} {100 * v / o['profiled_seconds']:.0f}%"
                            for c, v in sorted(o["class_seconds"].items(), key=lambda x: -x[1]))
            g = o["gemm_gflops_per_s"]
            top = ", ".join(f"{t['op'].removeprefix('aten::')} {100 * t['seconds'] / o['profiled_seconds']:.0f}%"
                            for t in o["top_ops"][:5])
            lines.append(f"| {name} | {k['samples_per_s']:,.0f} | {parts} | {cls} | "
                         f"{g:.0f} ({r['gemm_ceiling_gflops_per_s']:.0f}) | {top} |" if g else
                         f"| {name} | {k['samples_per_s']:,.0f} | {parts} | {cls} | — | {top} |")
        lines.append("")
    both = {n: r for n, r in results["models"].items() if "fuxictr_infer" in r}
    if both:
        lines += ["## Inference, seqctr vs FuxiCTR by part (ms per 1,000 test samples; wall-clock module hooks)", "",
                  "| model | " + " | ".join(PART_GROUPS) + " | total | speed-up |", "|---|" + "---:|" * (len(PART_GROUPS) + 2)]
        for name, r in both.items():
            ours, fx = r["infer"], r["fuxictr_infer"]
            a, b = group_parts(ours["parts_seconds"]), group_parts(fx["parts_seconds"])
            per = lambda v, k: 1e6 * v / k["samples"]  # noqa: E731
            cells = [f"{per(a[g], ours):.0f} / {per(b[g], fx):.0f}" for g in PART_GROUPS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {per(ours['wall_seconds'], ours):.0f} / "
                         f"{per(fx['wall_seconds'], fx):.0f} | {ours['samples_per_s'] / fx['samples_per_s']:.2f}x |")
        lines += ["", "Cells: seqctr / FuxiCTR."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="din,dien,sim,sdim,twin,eta,hstu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", default="0", help="taskset CPU list ('' = no pinning)")
    ap.add_argument("--train-batches", type=int, default=0, help="training batches to time (0 = the whole epoch)")
    ap.add_argument("--no-fuxictr", dest="fuxictr", action="store_false",
                    help="skip FuxiCTR's per-module inference times")
    ap.add_argument("--quick", action="store_true", help="5 training batches")
    ap.add_argument("--profile-batches", type=int, default=0,
                    help="profile the ops over this many batches spread over each split (0 = the whole test "
                         "split and 40 training batches; the FLOP pass keeps every op's inputs alive, which "
                         "for DIEN's per-step recurrences outgrows 24 GB: use e.g. 8)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/profile_epoch"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.train_batches = 5
    if args.child:
        print(json.dumps(profile_model(args.child, args.threads, args.train_batches, args.profile_batches)))
        return 0
    from bench_vs_fuxictr import BACKBONES, FX_PARAMS, WORK, ensure_fuxictr_venv, export_longctr, merge_results, run_json

    names = args.models.split(",")
    results = {"models": {}, "settings": {"threads": args.threads, "cpu": args.cpu, "train_batches": args.train_batches,
                                          "command": "python bench/profile_epoch.py " + " ".join(sys.argv[1:])}}
    pin = ["taskset", "-c", args.cpu] if args.cpu else []
    fx = None                      # (FuxiCTR's python, the exported data), made on first use
    for name in names:
        results["models"][name] = run_json(pin + [sys.executable, __file__, "--threads", str(args.threads),
                                                  "--train-batches", str(args.train_batches),
                                                  "--profile-batches", str(args.profile_batches), "--child", name])
        if args.fuxictr and BACKBONES[name]:
            if fx is None:
                from seqctr.data import prepare

                fx = ensure_fuxictr_venv(), export_longctr(prepare("ml100k")[0], WORK / "longctr_ml100k")
            results["models"][name]["fuxictr_infer"] = run_json(pin + [
                str(fx[0]), str(ROOT / "bench/fuxictr_runner.py"), "--data", str(fx[1]), "--model", BACKBONES[name],
                "--threads", str(args.threads), "--params", json.dumps(FX_PARAMS[name]), "--mode", "profile",
                "--eval-batch", "256", "--out", str(WORK / f"fx_{name}_profile.json")])["infer"]
        print(f"{name}: infer {results['models'][name]['infer']['samples_per_s']:,.0f}/s, "
              f"train {results['models'][name]['train']['samples_per_s']:,.0f}/s", flush=True)
        merge_results(Path(args.out + ".json"), results, [name], results["settings"]["command"], render)
    print(render(json.loads(Path(args.out + ".json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
