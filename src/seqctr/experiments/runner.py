"""Run many training jobs: in parallel, resumable, each in its own process and run folder.

A run is finished when its ``metrics.json`` exists; anything else is (re)started with
``seqctr train --resume``, which continues after the last finished epoch. Jobs run ``jobs`` at a
time with ``threads`` torch threads each (2 x 1 uses both cores of a small machine best).
"""
from __future__ import annotations

import os
import subprocess
import time
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.io import read_metrics

from ..errors import SeqctrError


@dataclass
class RunSpec:
    """One training run: ``config`` YAML + ``overrides`` (``key=value``), written to ``out/name``."""

    name: str
    config: str
    overrides: list = field(default_factory=list)


def run_dir(out: Path, spec: RunSpec) -> Path:
    return Path(out) / spec.name


def load_metrics(out: Path, spec: RunSpec) -> dict | None:
    p = run_dir(out, spec) / "metrics.json"
    return read_metrics(p) if p.is_file() else None


def last_error(log: Path) -> str:
    """The line of a run's log that says why it failed (the ``seqctr: error:`` line, else the last one)."""
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no train.log"
    errs = [ln for ln in lines if ln.startswith("seqctr: error:") or "Error" in ln.split(":")[0]]
    return (errs or lines or ["empty train.log"])[-1]


def run_specs(specs: list[RunSpec], out: Path, jobs: int = 2, threads: int = 1, log=print) -> dict[str, dict]:
    """Train every spec not yet finished; returns ``{name: metrics}`` for all specs."""
    out = Path(out)
    todo = [s for s in specs if load_metrics(out, s) is None]
    log(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; running {len(todo)} "
        f"({jobs} at a time, {threads} thread(s) each)")

    def one(spec: RunSpec):
        d = run_dir(out, spec)
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "seqctr", "train", "--config", spec.config, "--out", str(d), "--resume",
               "--set", f"train.threads={threads}"]
        for o in spec.overrides:
            cmd += ["--set", o]
        with open(d / "train.log", "a") as logf:
            res = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return spec, res.returncode

    failed, t0 = [], time.monotonic()
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        for k, (spec, code) in enumerate(pool.map(one, todo), start=1):
            elapsed = time.monotonic() - t0
            eta = elapsed / max(k, min(jobs, len(todo))) * (len(todo) - k)   # runs finish in parallel waves
            if code != 0:
                failed.append(spec.name)
                log(f"[{k}/{len(todo)}] FAILED: {spec.name}: {last_error(run_dir(out, spec) / 'train.log')}")
            else:
                log(f"[{k}/{len(todo)}] done: {spec.name}  ({elapsed / 60:.1f} min elapsed, ~{eta / 60:.1f} min left)")
    if failed:
        first = last_error(run_dir(out, next(s for s in todo if s.name == failed[0])) / "train.log")
        raise SeqctrError(f"{len(failed)} run(s) failed: {', '.join(failed)}; first error: {first} "
                          "(whole logs: train.log in each run folder)")
    return {s.name: load_metrics(out, s) for s in specs}
