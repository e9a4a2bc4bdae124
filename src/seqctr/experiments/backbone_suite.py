"""Bare backbones against each other (``seqctr experiment backbones``): each backbone's own packaged
config x seeds, summarised per length bucket with paired bootstraps against a baseline backbone —
e.g. HSTU vs DIN at convergence (``--set train.epochs=10``: early stopping on validation AUC decides
when each run stops; the epochs each run took are in the table)."""
from __future__ import annotations

from pathlib import Path

from .runner import run_specs
from .summary import finish, format_summary, specs, summarise


def backbones(names: list[str], seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (),
              baseline: str | None = None, jobs: int = 2, threads: int = 1, log=print) -> dict:
    """``names`` x seeds, each from ``<config_dir>/<name>.yaml``; deltas vs ``baseline`` (default the first)."""
    baseline = baseline or names[0]
    if baseline not in names:
        from ..errors import SeqctrError

        raise SeqctrError(f"--baseline {baseline!r} is not one of --backbones {names}")
    out = Path(out) / "backbones"
    groups = {b: (str(Path(config_dir) / f"{b}.yaml"), []) for b in names}
    metrics = run_specs(specs(groups, seeds, sets), out, jobs, threads, log)
    res = summarise(out, groups, seeds, baseline, metrics)
    res["best_epoch"] = {b: [metrics[f"{b}/seed{s}"].get("best_epoch") for s in seeds] for b in names}
    res["epochs_run"] = {b: [len(metrics[f"{b}/seed{s}"].get("history", [])) for s in seeds] for b in names}
    md = [format_summary(res, f"Backbones vs {baseline}"), "",
          "| backbone | best epoch per seed | epochs run per seed |", "|---|---|---|"]
    md += [f"| {b} | {res['best_epoch'][b]} | {res['epochs_run'][b]} |" for b in names]
    return finish(out.parent, "backbones", res, "\n".join(md), {"backbones": res}, f"Δ test AUC vs {baseline}")
