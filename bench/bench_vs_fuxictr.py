"""Benchmark: seqctr vs FuxiCTR 2.3.10 LongCTR on the identical ml100k split, in one run.

One command: ``.venv/bin/python bench/bench_vs_fuxictr.py`` (``--quick`` for a smoke run).

1. Exports our prepared ml100k (protocol ml100k-seqctr v1) to LongCTR's layout: train/valid/test
   parquet (user_index, item_index, seq_len, label, user features), ``user_info.parquet``
   (``full_item_seq``), ``item_info.parquet`` and ``feature_map.json`` — same vocabularies, same
   samples, same histories.
2. Creates ``bench/.venv-fuxictr`` (``torch==2.13.0`` + ``fuxictr==2.3.10``) if missing.
3. Per backbone, same hyper-parameters (embedding 64, MLP [512,128,64] ReLU, dropout 0.2, Adam
   1e-3, batch 256, max_len 200, short_seq_len 50, top-k 50, attention_dim 64, 1 head):
   - throughput: FuxiCTR and seqctr alternate, ``--repeats`` times, each in a fresh process pinned
     to one core (``--cpu``, ``--threads 1``; FuxiCTR's loader in-process like ours), so other work
     on the machine cannot skew the ratio; one **whole training epoch** (every batch of each
     library's own sampler, so the real length mix; the first 3 batches are warm-up and not timed;
     ``--batches N`` times only N batches, for smoke runs), then inference over the test split;
     ``--threads 1,2`` repeats the throughput phase per thread count (accuracy always uses 1); results
     for 1 thread go under ``throughput``, others under ``throughput_<n>_threads``, so ``--threads 2`` adds
     the 2-thread table without replacing the 1-thread one;
     ``--precision fp32,bf16`` also times seqctr under ``train.precision=bf16`` in the same rounds;
   - accuracy: both train for ``--epochs`` epochs (patience 2, LR x0.1 on plateau, best-on-valid
     weights), each library over the same ``--seeds``; both prediction sets are scored by seqctr's
     metrics, and the project's interval method (a bootstrap over users and seeds,
     :func:`seqctr.metrics.stats.cluster_bootstrap`) gives each library's AUC interval and the
     interval of seqctr - FuxiCTR (``--accuracy-models`` picks the backbones; DIEN's FuxiCTR epoch
     takes half an hour).
4. Writes ``bench/results/vs_fuxictr.{json,md}``, merged per model under a lock: two runs on
   different models, each pinned to its own core (``--models din,sim,... --cpu 0`` beside
   ``--models dien,... --cpu 1``), fill one table in half the time; each run's ratio is still measured
   against FuxiCTR on the same core in the same rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FX_VENV = ROOT / "bench" / ".venv-fuxictr"
WORK = ROOT / "bench" / "work"
BACKBONES = {"din": "DIN", "dien": "DIEN", "sim": "SIM", "sdim": "SDIM", "twin": "TWIN", "eta": "ETA",
             "hstu": None}  # None: FuxiCTR 2.3.10's LongCTR has no such model; seqctr rows only
# FuxiCTR-side options that mirror ours for each backbone (ours come from configs/ml100k/<name>.yaml)
FX_PARAMS = {
    "din": {"attention_hidden_units": [64], "attention_hidden_activations": "Dice", "din_use_softmax": False},
    "dien": {"gru_type": "AUGRU", "attention_type": "bilinear_attention", "use_attention_softmax": True},
    "sim": {"gsu_type": "soft", "alpha": 1, "beta": 1},
    "sdim": {"num_hashes": 8, "hash_bits": 4, "l2_norm": True},
    "twin": {"Kc_cross_features": 0},
    "eta": {"hash_bits": 32},
    "hstu": {},
}


def ensure_fuxictr_venv() -> Path:
    py = FX_VENV / "bin" / "python"
    if not (FX_VENV / ".ok").exists():
        subprocess.run([sys.executable, "-m", "venv", str(FX_VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["fuxictr==2.3.10"], check=True)
        (FX_VENV / ".ok").write_text("ok\n")
    return py


def export_longctr(ds, out: Path) -> Path:
    """Write ``ds`` in LongCTR's parquet layout once (``seqctr export-data --format longctr``)."""
    from seqctr.data.longctr import export_longctr as export

    return out if (out / "feature_map.json").exists() else export(ds, out, dataset_id="ml100k")


def ours_throughput(name: str, batches: int, threads: int, precision: str = "fp32", eval_batch: int = 256,
                    compile: bool = False, infer_seconds: float = 0.0) -> dict:
    """seqctr's training step and inference, measured like the FuxiCTR runner (child process); inference over
    whole test-split passes repeated for at least ``infer_seconds``.
    ``compile``: as ``train.compile`` (torch.compile); its compilation falls in the untimed warm-up
    (3 training batches; 2 inference batches, scored again in the timed pass), reported as
    ``warmup_seconds`` / ``infer_warmup_seconds``, and ``train_samples_per_s_with_warmup`` counts it."""
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader, prepare
    from seqctr.models import build_model
    from seqctr.training import compiled, make_optimizer, train_step
    from seqctr.training.trainer import autocast

    from seqctr.utils.malloc import keep_freed_memory

    keep_freed_memory()                 # as the Trainer does (SEQCTR_MALLOC=system: glibc as shipped)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml")
    ds, _, _ = prepare("ml100k")
    model = build_model(cfg.model, ds.meta)
    opt = make_optimizer(model, 1e-3)   # the Trainer's optimizer
    tr = BatchLoader(ds, "train", max_len=200, batch_size=256, shuffle=True, seed=0)
    fwd = compiled(model) if compile else model
    model.train()
    n, n_all, start = 0, 0, time.perf_counter()
    t0 = start
    for i, pos in enumerate(tr.batches(1)[: batches + 3] if batches else tr.batches(1)):
        if i == 3:
            n, t0 = 0, time.perf_counter()
        train_step(model, opt, tr.batch(pos), 10.0, forward=fwd, precision=precision)    # the Trainer's step
        n += len(pos)
        n_all += len(pos)
    end = time.perf_counter()
    train_sps = n / (end - t0)
    te = BatchLoader(ds, "test", max_len=200, batch_size=eval_batch, shuffle=False)
    model.eval()
    with torch.no_grad(), autocast(precision):
        w0 = time.perf_counter()
        if compile:                              # compile the evaluation graph before the clock starts
            for b in te.batches()[:2]:
                fwd(te.batch(b))
        w1 = time.perf_counter()
        passes = 0
        while not passes or time.perf_counter() - w1 < infer_seconds:   # whole test passes for >= infer_seconds
            for b in te:
                fwd(b)
            passes += 1
    infer = passes * len(te.indices) / (time.perf_counter() - w1)
    out = {"train_samples_per_s": train_sps, "infer_samples_per_s": infer, "padding_fraction": tr.padding_fraction(1),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if compile:
        out.update(warmup_seconds=t0 - start, infer_warmup_seconds=w1 - w0,
                   train_samples_per_s_with_warmup=n_all / (end - start))
    return out


def ours_accuracy(name: str, epochs: int, seed: int, threads: int, out: Path) -> dict:
    from seqctr.config import load_config
    from seqctr.data import prepare
    from seqctr.training import Trainer

    cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml",
                      [f"train.epochs={epochs}", f"train.seed={seed}", f"train.threads={threads}"])
    ds, _, _ = prepare("ml100k")
    t0 = time.perf_counter()
    res = Trainer(cfg, ds, out, progress=False).fit(resume=True, log=lambda *_: None)
    return {"test": res["test"], "fit_seconds": time.perf_counter() - t0, "epochs_run": len(res["history"])}


def merge_results(path: Path, results: dict, names: list[str], command: str, render) -> None:
    """Merge ``results["models"][name]`` for ``names`` into the JSON at ``path`` (and its ``.md``,
    by ``render``) under a lock: two runs on different models (e.g. one pinned to CPU 0, one to
    CPU 1) fill one table. Every command that wrote to it is listed in ``commands``."""
    import fcntl

    from seqctr.utils.io import write_json, write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(path.read_text()) if path.exists() else {}
        disk.setdefault("models", {}).update({n: results["models"][n] for n in names if n in results["models"]})
        disk.update({k: v for k, v in results.items() if k not in ("models", "commands")})
        if command not in disk.setdefault("commands", []):
            disk["commands"].append(command)
        write_json(path, disk)
        write_text(path.with_suffix(".md"), render(disk))


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    """Run a child that prints one JSON line last (``env``: variables added to ours)."""
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="din,dien,sim,sdim,twin,eta,hstu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=0, help="training batches to time (0 = the whole epoch)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="2024,2025,2026")
    ap.add_argument("--threads", default="1", help="thread counts for the throughput phase, e.g. 1,2")
    ap.add_argument("--cpu", default="0", help="taskset CPU list for the timed runs ('' = no pinning)")
    ap.add_argument("--eval-batch", type=int, default=256, help="samples per inference batch, both libraries "
                                                               "(the throughput phase)")
    ap.add_argument("--infer-seconds", type=float, default=10.0,
                    help="inference is timed over whole test-split passes repeated for at least this long, both "
                         "libraries (one pass is 1-4 s: too short to be stable)")
    ap.add_argument("--precision", default="fp32", help="seqctr precisions to time, e.g. fp32,bf16 (first: the "
                                                         "main table; bf16 rows in their own table)")
    ap.add_argument("--compile", action="store_true", help="also time seqctr with train.compile (torch.compile)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--accuracy-models", default="", help="backbones of the accuracy phase (default: --models)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-thread accuracy jobs")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 5 batches, 1 epoch, 1 seed")
    ap.add_argument("--out", default=str(ROOT / "bench/results/vs_fuxictr"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, name = args.child[0], args.child[1]
        if kind == "throughput":
            print(json.dumps(ours_throughput(name, args.batches, int(args.threads), args.precision, args.eval_batch,
                                             args.compile, args.infer_seconds)))
        else:
            print(json.dumps(ours_accuracy(name, args.epochs, int(args.child[2]), 1, Path(args.child[3]))))
        return 0
    if args.quick:
        args.repeats, args.batches, args.epochs, args.seeds = 1, 5, 1, "2024"
    thread_counts = [int(t) for t in args.threads.split(",")]

    from seqctr.data import BatchLoader, prepare
    from seqctr.metrics import evaluate_predictions
    from seqctr.metrics.stats import cluster_bootstrap
    ds, _, _ = prepare("ml100k")
    data = export_longctr(ds, WORK / "longctr_ml100k")
    fx_py = ensure_fuxictr_venv()
    me = [sys.executable, __file__, "--batches", str(args.batches), "--epochs", str(args.epochs),
          "--eval-batch", str(args.eval_batch), "--infer-seconds", str(args.infer_seconds)]
    results_path = Path(args.out + ".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("models", {})
    results["settings"] = {"repeats": args.repeats, "batches": args.batches, "epochs": args.epochs,
                           "eval_batch": args.eval_batch, "infer_seconds": args.infer_seconds,
                           "seeds": args.seeds, "threads": args.threads, "jobs": args.jobs, "cpu": args.cpu,
                           "command": "python bench/bench_vs_fuxictr.py " + " ".join(sys.argv[1:])}
    names = args.models.split(",")

    pin = ["taskset", "-c", args.cpu] if args.cpu else []

    def fx_cmd(name, threads):
        return [str(fx_py), str(ROOT / "bench/fuxictr_runner.py"), "--data", str(data), "--model",
                BACKBONES[name], "--threads", str(threads), "--params", json.dumps(FX_PARAMS[name])]

    def save():
        merge_results(results_path, results, names, results["settings"]["command"], render)

    # Phase 1: throughput, one process at a time (nothing else running), libraries alternating.
    if not args.skip_throughput:
        for name in names:
            r = results["models"].setdefault(name, {})
            for threads in thread_counts:
                runs = {"seqctr": []} if BACKBONES[name] is None else {"fuxictr": [], "seqctr": []}
                first, *extra = args.precision.split(",")
                extra += ["compile"] if args.compile else []           # variant -> its child-process flags
                flags = {v: ["--precision", first, "--compile"] if v == "compile" else ["--precision", v] for v in extra}
                runs.update({f"seqctr_{v}": [] for v in extra})
                cpus = pin if threads == 1 or not args.cpu else []
                for rep in range(args.repeats):
                    if "fuxictr" in runs:
                        runs["fuxictr"].append(run_json(cpus + fx_cmd(name, threads) + [
                            "--mode", "throughput", "--batches", str(args.batches), "--eval-batch", str(args.eval_batch),
                            "--infer-seconds", str(args.infer_seconds),
                            "--out", str(WORK / f"fx_{name}_tp.json")]))
                    for v, f in {"": ["--precision", first], **flags}.items():
                        runs["seqctr" + (v and "_" + v)].append(run_json(
                            cpus + me + ["--threads", str(threads)] + f + ["--child", "throughput", name]))
                    print(f"{name} throughput ({threads} thread(s)) {rep + 1}/{args.repeats}: " + ", ".join(
                        f"{lib} {v[-1]['train_samples_per_s']:.0f}" for lib, v in runs.items()) + " train samples/s",
                        flush=True)
                keys = ("train_samples_per_s", "infer_samples_per_s", "peak_rss_mb", "padding_fraction",
                        "warmup_seconds", "infer_warmup_seconds", "train_samples_per_s_with_warmup")
                tp = {lib: {k: statistics.median(x[k] for x in v) for k in keys if k in v[0]}
                      for lib, v in runs.items()}
                tp["runs"], tp["cpu"] = runs, (args.cpu if cpus else "")
                if "fuxictr" in runs:
                    for lib in [k for k in runs if k.startswith("seqctr")]:
                        sfx = lib[len("seqctr"):]
                        for kind in ("train", "infer"):
                            tp[f"{kind}_speedup{sfx}"] = (tp[lib][f"{kind}_samples_per_s"]
                                                          / tp["fuxictr"][f"{kind}_samples_per_s"])
                r["throughput" if threads == 1 else f"throughput_{threads}_threads"] = tp   # --threads 2 alone keeps the 1-thread table
                save()

    # Phase 2: accuracy; independent single-thread jobs, --jobs at a time (timing is not measured here).
    if not args.skip_accuracy:
        from concurrent.futures import ThreadPoolExecutor

        seeds = [int(x) for x in args.seeds.split(",")]
        acc_names = [n for n in (args.accuracy_models.split(",") if args.accuracy_models else names) if n in names]
        jobs = []
        for name in acc_names:
            if BACKBONES[name] is not None:
                jobs += [("fuxictr", name, sd) for sd in seeds]
            jobs += [("seqctr", name, sd) for sd in seeds]

        test_loader = BatchLoader(ds, "test", max_len=200, batch_size=1024, shuffle=False, bucket=False)
        ti = test_loader.indices
        y, users, L = ds.label[ti], ds.sample_user[ti], ds.sample_pos[ti]
        where = np.full(len(ds.label), -1, np.int64)
        where[ti] = np.arange(len(ti))

        def run_job(job):
            lib, name, sd = job
            if lib == "fuxictr":
                out = WORK / f"fx_{name}_acc_seed{sd}.json"
                if not (out.exists() and out.with_suffix(".npy").exists()):
                    subprocess.run(fx_cmd(name, 1) + ["--mode", "accuracy", "--epochs", str(args.epochs),
                                                      "--seed", str(sd), "--out", str(out)], check=True,
                                   capture_output=True)
                return job, {**json.loads(out.read_text()), "pred": np.load(out.with_suffix(".npy"))}
            run = WORK / f"ours_{name}_{sd}"
            res = run_json(me + ["--threads", "1", "--child", "accuracy", name, str(sd), str(run)])
            saved = np.load(run / "predictions_test.npz")
            pred = np.empty(len(ti))
            pred[where[saved["index"]]] = saved["prob"]                 # in the test split's order, as FuxiCTR's
            return job, {**res, "pred": pred}

        preds: dict = {n: {"fuxictr": {}, "seqctr": {}} for n in acc_names}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for (lib, name, sd), res in pool.map(run_job, jobs):
                preds[name][lib][sd] = res.pop("pred")
                r = results["models"].setdefault(name, {})
                acc = r.get(f"{lib}_accuracy")
                if not acc or "runs" not in acc:               # (a single-seed entry of an earlier run)
                    acc = r[f"{lib}_accuracy"] = {"runs": []}
                acc["runs"] = sorted([o for o in acc["runs"] if o["seed"] != sd]
                                     + [{"seed": sd, "test": evaluate_predictions(y, preds[name][lib][sd], users, L),
                                         "fit_seconds": res["fit_seconds"]}], key=lambda o: o["seed"])
                acc["seeds"] = [o["seed"] for o in acc["runs"]]
                acc.update({f"{m}_mean": float(np.mean([o["test"]["overall"][m] for o in acc["runs"]]))
                            for m in ("auc", "gauc", "logloss")})
                acc["auc_std"] = float(np.std([o["test"]["overall"]["auc"] for o in acc["runs"]]))
                fx, us = preds[name]["fuxictr"], preds[name]["seqctr"]
                if len(fx) == len(us) == len(seeds):                      # both libraries done: the intervals
                    fxp, usp = [fx[k] for k in sorted(fx)], [us[k] for k in sorted(us)]
                    r["fuxictr_accuracy"]["auc_ci"] = cluster_bootstrap(y, users, fxp)
                    r["seqctr_accuracy"]["auc_ci"] = cluster_bootstrap(y, users, usp)
                    r["accuracy_delta"] = cluster_bootstrap(y, users, fxp, usp)    # seqctr - FuxiCTR
                print(f"done: {lib} {name} {sd}", flush=True)
                save()
    save()
    print(render(results))
    return 0


def _ratio(tp: dict, key: str) -> str:
    """``4.52x``, or an em dash for a backbone FuxiCTR has no counterpart of (never 0.00x / nan)."""
    return f"{tp[key]:.2f}x" if key in tp else "—"


def _num(d: dict, key: str, fmt: str = ",.0f") -> str:
    return format(d[key], fmt) if key in d else "—"


def _per_model(values: dict, default) -> str:
    """One value for every model, or each value with the models that have it (``1 (dien), 2 (din, sim)``)."""
    if len(set(values.values())) <= 1:
        return str(next(iter(values.values()), default))
    return ", ".join(f"{v} ({', '.join(m for m in values if values[m] == v)})" for v in sorted(set(values.values())))


def _repeats(results: dict, key: str = "throughput") -> str:
    """How many alternating runs each library's medians under ``key`` come from (per model if they differ)."""
    default = results.get("settings", {}).get("repeats")
    return _per_model({name: len(r[key].get("runs", {}).get("seqctr", [])) or default
                       for name, r in results["models"].items() if key in r}, default)


def _cpus(results: dict) -> str:
    """The CPU the 1-thread runs were pinned to, per model when two runs used different CPUs."""
    default = results.get("settings", {}).get("cpu")
    return _per_model({n: r["throughput"].get("cpu", default)
                       for n, r in results["models"].items() if "throughput" in r}, default)


def commands_line(results: dict) -> str:
    """``Command(s): `...` and `...` `` — every command that wrote to a merged results file."""
    cmds = results.get("commands") or [results.get("settings", {}).get("command", "")]
    return "Command" + ("s" if len(cmds) > 1 else "") + ": " + " and ".join(f"`{c}`" for c in cmds)


def render(results: dict) -> str:
    s = results.get("settings", {})
    timed = f"{s.get('batches')} training batches" if s.get("batches") else "one whole training epoch"
    lines = ["# seqctr vs FuxiCTR 2.3.10 (LongCTR) on ml100k", "",
             commands_line(results) + ". Same split, features and hyper-parameters; throughput = median "
             f"of {_repeats(results)} alternating runs of {timed} (batch 256, 3 warm-up batches untimed) + test "
             f"inference, 1 thread pinned to CPU {_cpus(results)}; "
             + (f"accuracy after at most {s.get('epochs')} epochs (mean over each library's seeds where both have "
                "several, see the interval table below; FuxiCTR: 1 seed in rows without it), both scored by "
                "seqctr's metrics; " if any("seqctr_accuracy" in m for m in results.get("models", {}).values())
                else "no accuracy in this file (speed only); ")
             + f"inference in batches of {s.get('eval_batch', 1024)} for both libraries"
             + (f", timed over whole test passes repeated for at least {s['infer_seconds']:g} s" if s.get("infer_seconds")
                else "") + ". — = FuxiCTR "
             "2.3.10 has no such model.", "",
             "| model | FuxiCTR train/s | seqctr train/s | speed-up | FuxiCTR infer/s | seqctr infer/s | speed-up "
             "| RSS MB fx / ours | AUC fx | AUC ours | ΔAUC | GAUC fx / ours | logloss fx / ours |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        tp = r.get("throughput", {})
        fx, us = tp.get("fuxictr", {}), tp.get("seqctr", {})
        fxa = r.get("fuxictr_accuracy", {})
        fa = (fxa.get("test", {}).get("overall", {}) if "auc_mean" not in fxa else   # one run, or the mean of seeds
              {m: fxa[f"{m}_mean"] for m in ("auc", "gauc", "logloss")})
        sa = r.get("seqctr_accuracy", {})
        d = f"{sa['auc_mean'] - fa['auc']:+.4f}" if "auc_mean" in sa and "auc" in fa else "—"
        lines.append(
            f"| {name} | {_num(fx, 'train_samples_per_s')} | {_num(us, 'train_samples_per_s')} | "
            f"{_ratio(tp, 'train_speedup')} | {_num(fx, 'infer_samples_per_s')} | "
            f"{_num(us, 'infer_samples_per_s')} | {_ratio(tp, 'infer_speedup')} | "
            f"{_num(fx, 'peak_rss_mb')} / {_num(us, 'peak_rss_mb')} | {_num(fa, 'auc', '.4f')} | "
            f"{_num(sa, 'auc_mean', '.4f')} | {d} | {_num(fa, 'gauc', '.4f')} / {_num(sa, 'gauc_mean', '.4f')} | "
            f"{_num(fa, 'logloss', '.4f')} / {_num(sa, 'logloss_mean', '.4f')} |")
    acc = [(n, r) for n, r in results["models"].items() if "accuracy_delta" in r]
    if acc:
        lines += ["", "Accuracy with the project's interval method (a bootstrap over test users and over each "
                  "library's seeds, 1,000 draws; 95% intervals). \"level\": the interval of seqctr - FuxiCTR "
                  "includes 0.", "",
                  "| model | seeds (each) | AUC FuxiCTR | AUC seqctr | seqctr - FuxiCTR | p | reading |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for n, r in acc:
            fc, sc, d = r["fuxictr_accuracy"]["auc_ci"], r["seqctr_accuracy"]["auc_ci"], r["accuracy_delta"]
            reading = ("level" if d["lo"] <= 0 <= d["hi"] else "seqctr higher" if d["lo"] > 0 else "seqctr lower")
            lines.append(f"| {n} | {d['seeds']} | {fc['value']:.4f} [{fc['lo']:.4f}, {fc['hi']:.4f}] | "
                         f"{sc['value']:.4f} [{sc['lo']:.4f}, {sc['hi']:.4f}] | {d['delta']:+.4f} "
                         f"[{d['lo']:+.4f}, {d['hi']:+.4f}] | {d['p']:.3f} | {reading} |")
    pads = [f"{n} {100 * r['throughput']['seqctr']['padding_fraction']:.1f}%" for n, r in results["models"].items()
            if "padding_fraction" in r.get("throughput", {}).get("seqctr", {})]
    if pads:
        lines += ["", "Padded token share of seqctr's training batches (length-bucketed): " + ", ".join(pads) + "."]
    for p in sorted({k[len("seqctr_"):] for r in results["models"].values()
                     for k in r.get("throughput", {}) if k.startswith("seqctr_")}):
        if p == "compile":
            lines += ["", "seqctr with `train.compile: true` (torch.compile, inductor, dynamic shapes; same rounds as the "
                      "table above). Compilation happens in the untimed warm-up; its seconds are shown, and "
                      "\"epoch incl. compile\" is the whole epoch's samples/s with them counted:", "",
                      "| model | seqctr compiled train/s | speed-up vs FuxiCTR | vs eager seqctr | compile s (train / infer) "
                      "| epoch incl. compile /s | seqctr compiled infer/s | speed-up vs FuxiCTR |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
        else:
            lines += ["", f"seqctr with `train.precision={p}` (same rounds as the table above):", "",
                      f"| model | seqctr {p} train/s | speed-up vs FuxiCTR | seqctr {p} infer/s | speed-up vs FuxiCTR |",
                      "|---|---:|---:|---:|---:|"]
        for name, r in results["models"].items():
            tp = r.get("throughput", {})
            us = tp.get(f"seqctr_{p}", {})
            if p == "compile":
                eager = tp.get("seqctr", {})
                vs = (f"{us['train_samples_per_s'] / eager['train_samples_per_s']:.2f}x"
                      if "train_samples_per_s" in us and "train_samples_per_s" in eager else "—")
                lines.append(f"| {name} | {_num(us, 'train_samples_per_s')} | {_ratio(tp, 'train_speedup_compile')} | "
                             f"{vs} | {_num(us, 'warmup_seconds', '.0f')} / {_num(us, 'infer_warmup_seconds', '.0f')} | "
                             f"{_num(us, 'train_samples_per_s_with_warmup')} | {_num(us, 'infer_samples_per_s')} | "
                             f"{_ratio(tp, 'infer_speedup_compile')} |")
                continue
            lines.append(f"| {name} | {_num(us, 'train_samples_per_s')} | {_ratio(tp, f'train_speedup_{p}')} | "
                         f"{_num(us, 'infer_samples_per_s')} | {_ratio(tp, f'infer_speedup_{p}')} |")
    more = sorted({k for r in results["models"].values() for k in r if k.startswith("throughput_")})
    for key in more:
        lines += ["", f"Throughput with {key.split('_')[1]} threads (median of {_repeats(results, key)} alternating "
                      "runs; models without a row were not run at this thread count):", "",
                  "| model | FuxiCTR train/s | seqctr train/s | speed-up | FuxiCTR infer/s | seqctr infer/s | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in results["models"].items():
            if key not in r:
                continue
            tp = r[key]
            fx, us = tp.get("fuxictr", {}), tp.get("seqctr", {})
            lines.append(f"| {name} | {_num(fx, 'train_samples_per_s')} | {_num(us, 'train_samples_per_s')} | "
                         f"{_ratio(tp, 'train_speedup')} | {_num(fx, 'infer_samples_per_s')} | "
                         f"{_num(us, 'infer_samples_per_s')} | {_ratio(tp, 'infer_speedup')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
