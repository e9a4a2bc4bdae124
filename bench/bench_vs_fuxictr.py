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
     on the machine cannot skew the ratio; ``--batches`` training batches after 3 warm-up batches,
     then inference over the test split;
   - accuracy: both train for ``--epochs`` epochs (patience 2, LR x0.1 on plateau, best-on-valid
     weights); seqctr over ``--seeds`` seeds. Both prediction sets are scored by seqctr's metrics.
4. Writes ``bench/results/vs_fuxictr.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
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


def ours_throughput(name: str, batches: int, threads: int) -> dict:
    """seqctr's training step and inference, measured like the FuxiCTR runner (child process)."""
    import torch

    from seqctr.config import load_config
    from seqctr.data import BatchLoader, prepare
    from seqctr.models import build_model
    from seqctr.training import make_optimizer, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / f"configs/ml100k/{name}.yaml")
    ds, _, _ = prepare("ml100k")
    model = build_model(cfg.model, ds.meta)
    opt = make_optimizer(model, 1e-3)   # the Trainer's optimizer
    tr = BatchLoader(ds, "train", max_len=200, batch_size=256, shuffle=True, seed=0)
    model.train()
    n, t0 = 0, None
    for i, pos in enumerate(tr.batches(1)[: batches + 3]):
        if i == 3:
            n, t0 = 0, time.perf_counter()
        train_step(model, opt, tr.batch(pos), 10.0)          # the Trainer's step
        n += len(pos)
    train_sps = n / (time.perf_counter() - t0)
    te = BatchLoader(ds, "test", max_len=200, batch_size=1024, shuffle=False)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in te:
            model(b)
    infer = len(te.indices) / (time.perf_counter() - t0)
    return {"train_samples_per_s": train_sps, "infer_samples_per_s": infer,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


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


def run_json(cmd: list[str]) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="din,dien,sim,sdim,twin,eta,hstu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", default="2024,2025,2026")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu", default="0", help="taskset CPU list for the timed runs ('' = no pinning)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-thread accuracy jobs")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 5 batches, 1 epoch, 1 seed")
    ap.add_argument("--out", default=str(ROOT / "bench/results/vs_fuxictr"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, name = args.child[0], args.child[1]
        if kind == "throughput":
            print(json.dumps(ours_throughput(name, args.batches, args.threads)))
        else:
            print(json.dumps(ours_accuracy(name, args.epochs, int(args.child[2]), args.threads, Path(args.child[3]))))
        return 0
    if args.quick:
        args.repeats, args.batches, args.epochs, args.seeds = 1, 5, 1, "2024"

    from seqctr.data import BatchLoader, prepare
    from seqctr.metrics import evaluate_predictions
    from seqctr.utils.io import write_json, write_text

    ds, _, _ = prepare("ml100k")
    data = export_longctr(ds, WORK / "longctr_ml100k")
    fx_py = ensure_fuxictr_venv()
    me = [sys.executable, __file__, "--batches", str(args.batches), "--epochs", str(args.epochs)]
    results_path = Path(args.out + ".json")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("models", {})
    results["settings"] = {"repeats": args.repeats, "batches": args.batches, "epochs": args.epochs,
                           "seeds": args.seeds, "threads": args.threads, "jobs": args.jobs, "cpu": args.cpu,
                           "command": "python bench/bench_vs_fuxictr.py " + " ".join(sys.argv[1:])}
    names = args.models.split(",")

    pin = ["taskset", "-c", args.cpu] if args.cpu else []

    def fx_cmd(name, threads):
        return [str(fx_py), str(ROOT / "bench/fuxictr_runner.py"), "--data", str(data), "--model",
                BACKBONES[name], "--threads", str(threads), "--params", json.dumps(FX_PARAMS[name])]

    def save():
        write_json(results_path, results)
        write_text(args.out + ".md", render(results))

    # Phase 1: throughput, one process at a time (nothing else running), libraries alternating.
    if not args.skip_throughput:
        for name in names:
            r = results["models"].setdefault(name, {})
            runs = {"seqctr": []} if BACKBONES[name] is None else {"fuxictr": [], "seqctr": []}
            for rep in range(args.repeats):
                if "fuxictr" in runs:
                    runs["fuxictr"].append(run_json(pin + fx_cmd(name, args.threads) + [
                        "--mode", "throughput", "--batches", str(args.batches), "--out", str(WORK / f"fx_{name}_tp.json")]))
                runs["seqctr"].append(run_json(pin + me + ["--threads", str(args.threads), "--child", "throughput",
                                                            name]))
                print(f"{name} throughput {rep + 1}/{args.repeats}: " + ", ".join(
                    f"{lib} {v[-1]['train_samples_per_s']:.0f}" for lib, v in runs.items()) + " train samples/s",
                    flush=True)
            keys = ("train_samples_per_s", "infer_samples_per_s", "peak_rss_mb")
            tp = {lib: {k: statistics.median(x[k] for x in v) for k in keys} for lib, v in runs.items()}
            tp["runs"] = runs
            if "fuxictr" in runs:
                tp["train_speedup"] = tp["seqctr"]["train_samples_per_s"] / tp["fuxictr"]["train_samples_per_s"]
                tp["infer_speedup"] = tp["seqctr"]["infer_samples_per_s"] / tp["fuxictr"]["infer_samples_per_s"]
            r["throughput"] = tp
            save()

    # Phase 2: accuracy; independent single-thread jobs, --jobs at a time (timing is not measured here).
    if not args.skip_accuracy:
        from concurrent.futures import ThreadPoolExecutor

        seeds = [int(x) for x in args.seeds.split(",")]
        jobs = []
        for name in names:
            if BACKBONES[name] is not None:
                jobs.append(("fuxictr", name, None))
            jobs += [("seqctr", name, sd) for sd in seeds]

        def run_job(job):
            lib, name, sd = job
            if lib == "fuxictr":
                out = WORK / f"fx_{name}_acc.json"
                if not (out.exists() and out.with_suffix(".npy").exists()):
                    subprocess.run(fx_cmd(name, 1) + ["--mode", "accuracy", "--epochs", str(args.epochs),
                                                      "--out", str(out)], check=True, capture_output=True)
                return job, {**json.loads(out.read_text()), "pred": np.load(out.with_suffix(".npy"))}
            return job, run_json(me + ["--threads", "1", "--child", "accuracy", name, str(sd),
                                       str(WORK / f"ours_{name}_{sd}")])

        test_loader = BatchLoader(ds, "test", max_len=200, batch_size=1024, shuffle=False, bucket=False)
        ti = test_loader.indices
        y, users, L = ds.label[ti], ds.sample_user[ti], ds.sample_pos[ti]
        ours: dict[str, list] = {n: [] for n in names}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for (lib, name, sd), res in pool.map(run_job, jobs):
                r = results["models"].setdefault(name, {})
                if lib == "fuxictr":
                    r["fuxictr_accuracy"] = {"test": evaluate_predictions(y, res["pred"], users, L),
                                             "fit_seconds": res["fit_seconds"]}
                else:
                    ours[name].append({"seed": sd, **res})
                    runs = sorted(ours[name], key=lambda o: o["seed"])
                    r["seqctr_accuracy"] = {
                        "seeds": [o["seed"] for o in runs], "runs": runs,
                        **{f"{m}_mean": float(np.mean([o["test"]["overall"][m] for o in runs]))
                           for m in ("auc", "gauc", "logloss")},
                        "auc_std": float(np.std([o["test"]["overall"]["auc"] for o in runs]))}
                print(f"done: {lib} {name} {sd or ''}", flush=True)
                save()
    save()
    print(render(results))
    return 0


def render(results: dict) -> str:
    s = results.get("settings", {})
    lines = ["# seqctr vs FuxiCTR 2.3.10 (LongCTR) on ml100k", "",
             f"Command: `{s.get('command', '')}`. Same split, features and hyper-parameters; throughput = median "
             f"of {s.get('repeats')} alternating runs of {s.get('batches')} training batches (batch 256) + test "
             f"inference, {s.get('threads')} thread(s) pinned to CPU {s.get('cpu')}; accuracy after at most {s.get('epochs')} epochs (FuxiCTR: "
             f"1 seed; seqctr: mean over seeds {s.get('seeds')}), both scored by seqctr's metrics.", "",
             "| model | FuxiCTR train/s | seqctr train/s | speed-up | FuxiCTR infer/s | seqctr infer/s | speed-up "
             "| RSS MB fx / ours | AUC fx | AUC ours | ΔAUC | GAUC fx / ours | logloss fx / ours |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        tp = r.get("throughput", {})
        fx, us = tp.get("fuxictr", {}), tp.get("seqctr", {})
        fa = r.get("fuxictr_accuracy", {}).get("test", {}).get("overall", {})
        sa = r.get("seqctr_accuracy", {})
        nan = float("nan")
        d = sa.get("auc_mean", nan) - fa.get("auc", nan)
        lines.append(
            f"| {name} | {fx.get('train_samples_per_s', 0):,.0f} | {us.get('train_samples_per_s', 0):,.0f} | "
            f"{tp.get('train_speedup', 0):.2f}x | {fx.get('infer_samples_per_s', 0):,.0f} | "
            f"{us.get('infer_samples_per_s', 0):,.0f} | {tp.get('infer_speedup', 0):.2f}x | "
            f"{fx.get('peak_rss_mb', 0):,.0f} / {us.get('peak_rss_mb', 0):,.0f} | {fa.get('auc', float('nan')):.4f} | "
            f"{sa.get('auc_mean', float('nan')):.4f} | {d:+.4f} | {fa.get('gauc', float('nan')):.4f} / "
            f"{sa.get('gauc_mean', float('nan')):.4f} | {fa.get('logloss', float('nan')):.4f} / "
            f"{sa.get('logloss_mean', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
