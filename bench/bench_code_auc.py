"""Benchmark: does a code change move test AUC? The same configs trained at two commits, paired.

One command (from the repository, with its .venv): ``python bench/bench_code_auc.py --before 29a04ca
--models sim,twin,eta,sdim`` (``--after`` defaults to the working tree's HEAD). For every model and
seed it runs ``seqctr train --config ml100k/M --set train.epochs=E --set train.threads=1 --set
train.seed=S`` once with each commit's code (``git worktree`` checkouts under ``--work``, this
repository's .venv, ``PYTHONPATH`` pointing at the checkout's ``src``), two runs at a time pinned one
per core, and skips runs whose ``predictions_test.npz`` already exist (so an interrupted comparison
resumes). Then the paired bootstrap (:func:`seqctr.metrics.stats.paired_bootstrap`, seed ``s`` of
*before* with seed ``s`` of *after*, 500 resamples) of test AUC after minus before, overall and per
length bucket, once over the test samples and once over seeds and test samples (two-level), and the
largest per-sample probability change per seed. The goal of a pure speed change:
every interval includes 0. ``--control`` makes it a 2 x 2 design: both codes are also trained with
``ATEN_CPU_CAPABILITY=avx2`` (PyTorch's own kernels in another vector width: the same arithmetic summed in
another order), and the table adds *before* with avx2 kernels minus *before* (what a rounding-only
difference does to the AUC) and *after* minus *before*, both with avx2 kernels (the code change under
another rounding): a shift that is the code's should show in both kernel widths. Writes
``bench/results/<--name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = " ".join(["python", f"bench/{Path(__file__).name}", *sys.argv[1:]])  # recorded with the results


def checkout(commit: str, work: Path) -> tuple[str, Path]:
    """A detached worktree of ``commit`` under ``work`` (reused when present): ``(full sha, path)``."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], check=True, capture_output=True,
                         text=True).stdout.strip()
    path = work / f"src-{sha[:10]}"
    if not (path / "src" / "seqctr").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(path), sha],
                       check=True, capture_output=True)
    return sha, path


def check_import(src: Path) -> None:
    """Fail unless ``PYTHONPATH=src/src`` makes this interpreter import the checkout's seqctr (an
    editable install must not shadow it)."""
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    got = subprocess.run([sys.executable, "-c", "import seqctr; print(seqctr.__file__)"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    if not Path(got).resolve().is_relative_to((src / "src").resolve()):
        raise SystemExit(f"seqctr imports from {got}, not from the checkout {src}")


def run_all(jobs: list[tuple[Path, Path, list[str], dict]], cpus: list[str]) -> None:
    """Run the ``(checkout, out dir, train args, extra env)`` jobs, ``len(cpus)`` at a time, each pinned
    to a CPU."""
    python = sys.executable
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < len(cpus):
            free = next(c for c in cpus if c not in running)
            src, out, argv, extra = pending.pop(0)
            env = {**os.environ, **extra, "PYTHONPATH": str(src / "src")}
            cmd = [python, "-m", "seqctr", "train", *argv, "--out", str(out), "--no-progress"]
            if free:
                cmd = ["taskset", "-c", free, *cmd]
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "bench.log", "w")
            running[free] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), out, log)
            print(f"[cpu {free or '-'}] {' '.join(argv)} -> {out}", flush=True)
        for cpu, (proc, out, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[cpu]
                if proc.returncode != 0:
                    raise SystemExit(f"training failed (rc {proc.returncode}); see {out / 'bench.log'}")
        if running:
            time.sleep(2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="commit of the reference code")
    ap.add_argument("--after", default="HEAD", help="commit of the changed code (default HEAD)")
    ap.add_argument("--models", default="sim,twin,eta,sdim")
    ap.add_argument("--seeds", default="2024,2025,2026")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cpus", default="0,1", help="one training run per listed CPU at a time ('' = unpinned, one)")
    ap.add_argument("--work", default=str(ROOT / "bench/work/code_auc"))
    ap.add_argument("--name", default="code_auc_ml100k", help="results file stem under bench/results")
    ap.add_argument("--control", action="store_true",
                    help="also train both codes with ATEN_CPU_CAPABILITY=avx2 (a 2 x 2 of code x kernel rounding)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np

    from seqctr.config import load_config
    from seqctr.data import prepare_config
    from seqctr.metrics import DEFAULT_BUCKETS, auc, bucket_masks
    from seqctr.experiments.summary import predictions
    from seqctr.metrics.stats import paired_bootstrap
    from seqctr.utils.io import atomic_path, write_json

    work = Path(args.work)
    models, seeds = args.models.split(","), [int(s) for s in args.seeds.split(",")]
    code = {side: checkout(c, work) for side, c in (("before", args.before), ("after", args.after))}
    runs = {"before": (code["before"], "", {}), "after": (code["after"], "", {})}    # side: code, dir suffix, env
    if args.control:
        runs["control"] = (code["before"], "-avx2", {"ATEN_CPU_CAPABILITY": "avx2"})
        runs["after_control"] = (code["after"], "-avx2", {"ATEN_CPU_CAPABILITY": "avx2"})

    def folder(side: str, m: str, s: int) -> Path:
        """Where one run of ``side``'s code for model ``m`` and seed ``s`` writes (and is found)."""
        (sha, _), suffix, _ = runs[side]
        return work / "runs" / (sha[:10] + suffix) / f"{m}-{s}"

    jobs = []
    for m in models:
        for s in seeds:
            for side, ((_, src), _, extra) in runs.items():
                out = folder(side, m, s)
                if not (out / "predictions_test.npz").exists():
                    jobs.append((src, out, ["--config", f"ml100k/{m}", "--set", f"train.epochs={args.epochs}",
                                            "--set", "train.threads=1", "--set", f"train.seed={s}"], extra))
    for _, src in code.values():
        check_import(src)
    run_all(jobs, args.cpus.split(",") if args.cpus else [""])

    result = {"command": COMMAND, "before": code["before"][0], "after": code["after"][0],
              "train": f"seqctr train --config ml100k/M --set train.epochs={args.epochs} --set train.threads=1 "
                       f"--set train.seed=S, S in {seeds}", "n_boot": 500, "models": {}}
    lines = [f"# Test AUC, code at {code['after'][0][:10]} minus code at {code['before'][0][:10]} (ml100k)", "",
             f"Command: `{COMMAND}`. {result['train']}, once per commit; paired bootstrap (500 resamples) of the test "
             "AUC after minus before, seed s paired with seed s, overall and per history-length bucket: resampling the "
             "test samples (the trained models held fixed), and resampling the seeds too (two-level; it also covers "
             "how the difference varies from one training run to the next).", "",
             "| comparison | AUC reference (per seed) | AUC compared (per seed) | delta overall [95%, test samples] | buckets including 0 | "
             "[95%, seeds and test samples] | buckets including 0 | max abs prob change |",
             "|---|---|---|---|---:|---|---:|---:|"]
    cfg = load_config("ml100k/sim")                          # every ml100k config shares the data section
    ds, _, _ = prepare_config(cfg.data)
    test = ds.indices("test")
    y, seq_len = ds.label[test], ds.sample_pos[test]

    parts = {"overall": None, **bucket_masks(seq_len, DEFAULT_BUCKETS)}
    for m in models:
        p = {side: [predictions(folder(side, m, s), test) for s in seeds] for side in runs}
        entry = {f"{side}_auc": [round(float(auc(y, q)), 5) for q in p[side]] for side in runs}
        for ref, side, label in (("before", "after", m),
                                 ("before", "control", f"{m} control: before with avx2 kernels minus before"),
                                 ("control", "after_control", f"{m} control: after minus before, both with avx2 kernels")):
            if side not in p:
                continue
            a, b = p[ref], p[side]
            cells = []
            for key, two_level in ((f"delta_{side}_minus_{ref}", False), (f"delta_{side}_minus_{ref}_two_level", True)):
                deltas = {k: paired_bootstrap(y, a, b, metric="auc", n_boot=500, mask=mask, resample_pairs=two_level)
                          for k, mask in parts.items()}
                entry[key] = deltas
                o = deltas["overall"]
                inside = sum(d["lo"] <= 0 <= d["hi"] for k, d in deltas.items() if k != "overall")
                cells += [(f"{o['delta']:+.5f} " if not two_level else "") + f"[{o['lo']:+.5f}, {o['hi']:+.5f}]",
                          f"{inside} / {len(deltas) - 1}"]
            entry[f"max_abs_prob_diff_per_seed_{side}"] = [float(np.abs(pa - pb).max()) for pa, pb in zip(a, b)]
            lines.append(f"| {label} | {', '.join(f'{v:.4f}' for v in entry[f'{ref}_auc'])} | "
                         f"{', '.join(f'{v:.4f}' for v in entry[f'{side}_auc'])} | {' | '.join(cells)} | "
                         f"{max(entry[f'max_abs_prob_diff_per_seed_{side}']):.2g} |")
        result["models"][m] = entry
    out = ROOT / "bench/results" / args.name
    write_json(out.with_suffix(".json"), result)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
