"""Bare backbones against each other (``seqctr experiment backbones``): each backbone's own packaged
config x seeds, summarised per length bucket with paired bootstraps against a baseline backbone —
e.g. HSTU vs DIN at convergence (``--set train.epochs=10``: early stopping on validation AUC decides
when each run stops; the epochs each run took are in the table)."""
from __future__ import annotations

from pathlib import Path

from .runner import run_specs
from .summary import finish, format_summary, mark_significance, specs, summarise


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
    mark_significance(res)
    md = [format_summary(res, f"Backbones vs {baseline}"), "",
          "| backbone | best epoch per seed | epochs run per seed |", "|---|---|---|"]
    md += [f"| {b} | {res['best_epoch'][b]} | {res['epochs_run'][b]} |" for b in names]
    return finish(out.parent, "backbones", res, "\n".join(md), {"backbones": res}, f"Δ test AUC vs {baseline}")


def ab(names: list[str], seeds: list[int], out: Path, config_dir: Path, b_sets: list[str], sets: list[str] = (),
       jobs: int = 2, threads: int = 1, log=print) -> dict:
    """A/B of one setting (``seqctr experiment ab --b train.precision=bf16``): per backbone, its config
    as it is (``a``) and with the ``b_sets`` overrides (``b``), x seeds; Δ of b vs a per bucket,
    paired by seed — the check that a speed lever (bf16, a new kernel) leaves accuracy where it was."""
    if not b_sets:
        from ..errors import SeqctrError

        raise SeqctrError("experiment ab: give the B side's overrides with --b KEY=VALUE")
    out = Path(out) / "ab"
    per, specs_all = {}, []
    for n in names:
        cfg = str(Path(config_dir) / f"{n}.yaml")
        specs_all += specs({f"{n}/a": (cfg, []), f"{n}/b": (cfg, list(b_sets))}, seeds, sets)
    metrics = run_specs(specs_all, out, jobs, threads, log)
    md = [f"# A/B: {' '.join(b_sets)} (b) vs as configured (a)", ""]
    for n in names:
        per[n] = summarise(out, {f"{n}/a": None, f"{n}/b": None}, seeds, f"{n}/a", metrics)
    page = {"b": list(b_sets), "backbones": per}
    mark_significance(page)
    for n in names:
        md += [format_summary(per[n], n), ""]
    return finish(out.parent, "ab", page, "\n".join(md), per,
                  f"{' '.join(b_sets)}: Δ test AUC")
