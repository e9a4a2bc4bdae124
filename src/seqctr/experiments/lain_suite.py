"""The length-analysis suite: LAIN vs bare backbones, max_len sweep, ablation, sensitivity.

Every experiment is a list of :class:`RunSpec` (configs + ``--set`` overrides + seeds) run by
:func:`run_specs` (parallel, resumable), then summarised into ``results.json``, ``results.md``
and a PNG in ``<out>/<experiment>/``: mean and 95% t-interval over seeds for AUC / GAUC /
logloss overall and per length bucket, and for each variant a paired bootstrap interval of its
difference to the baseline on the test split (seed ``s`` paired with seed ``s``). Model
selection uses the validation split only; the test split is only ever scored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.io import read_metrics
from .runner import RunSpec, run_dir, run_specs
from .summary import delta_cell, finish, format_summary, mark_significance, specs, summarise  # noqa: F401

ABLATION = {  # paper Table 6, one config each
    "bare": [],
    "full": ["model.lain.enabled=true"],
    "no_lcp": ["model.lain.enabled=true", "model.lain.prompts=0"],
    "no_qk_condition": ["model.lain.enabled=true", "model.lain.qk_condition=false"],
    "no_temperature": ["model.lain.enabled=true", "model.lain.temperature=false"],
    "no_lma": ["model.lain.enabled=true", "model.lain.qk_condition=false", "model.lain.temperature=false"],
    "no_short_branch": ["model.lain.enabled=true", "model.lain.branches=[long]"],
}
# choices the paper leaves open, measured against full LAIN (not in the default rows)
LAIN_CHOICES = {
    "l0_users": ["model.lain.enabled=true", "model.lain.l0=users"],            # L0 = mean over users (the default)
    "l0_samples": ["model.lain.enabled=true", "model.lain.l0=samples"],        # L0 = mean over training samples
    "prompt_small": ["model.lain.enabled=true", "model.lain.prompt_scale=0.001"],  # prompts at the items' scale
}


def compare(backbones: list[str], seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (),
            jobs: int = 2, threads: int = 1, log=print) -> dict:
    """Backbones x {bare, +LAIN} x seeds (paper Tables 3-4)."""
    out = Path(out) / "compare"
    per = {}
    specs_all = []
    for b in backbones:
        cfg = str(Path(config_dir) / f"{b}.yaml")
        specs_all += specs({f"{b}/bare": (cfg, []), f"{b}/lain": (cfg, ["model.lain.enabled=true"])}, seeds, sets)
    metrics = run_specs(specs_all, out, jobs, threads, log)
    md = ["# LAIN vs bare backbones", ""]
    for b in backbones:
        per[b] = summarise(out, {f"{b}/bare": None, f"{b}/lain": None}, seeds, f"{b}/bare", metrics)
    page = {"backbones": per}
    mark_significance(page)
    for b in backbones:
        md += [format_summary(per[b], b), ""]
    return finish(Path(out).parent, "compare", page, "\n".join(md), per, "+LAIN: Δ test AUC per bucket")


def maxlen(backbones: list[str], lengths: list[int], seeds: list[int], out: Path, config_dir: Path,
           sets: list[str] = (), with_lain: bool = True, jobs: int = 2, threads: int = 1, log=print) -> dict:
    """max_len sweep (paper Fig. 1a / Table 5): per-bucket AUC and attention polarization."""
    root = Path(out) / "maxlen"
    variants = {"bare": []} | ({"lain": ["model.lain.enabled=true"]} if with_lain else {})
    groups = {f"{b}/{v}/len{n}": (str(Path(config_dir) / f"{b}.yaml"), ov + [f"data.max_len={n}"])
              for b in backbones for v, ov in variants.items() for n in lengths}
    metrics = run_specs(specs(groups, seeds, list(sets) + ["eval.polarization=true"]), root, jobs, threads, log)
    res, md = {}, ["# max_len sweep", ""]
    for b in backbones:
        res[b] = _maxlen_summary(root, b, groups, lengths, seeds, metrics, with_lain)
    page = {"backbones": res, "lengths": lengths}
    mark_significance(page)
    for b in backbones:
        summ = res[b]
        md.append(format_summary(summ, f"{b}: AUC by max_len (Δ vs max_len {lengths[0]})"))
        if with_lain:
            md += ["", f"+LAIN vs bare at the same max_len, {b} (bootstrap over users and seeds of the AUC "
                   "difference):", "",
                   "| max_len | " + " | ".join(["overall"] + summ["buckets"]) + " |",
                   "|---|" + "---:|" * (len(summ["buckets"]) + 1)]
            for n, r in summ["lain_vs_bare"].items():
                d = r["groups"][f"{b}/lain/len{n}"][f"delta_vs_{b}/bare/len{n}"]
                md.append(f"| {n} | " + " | ".join(delta_cell(d[p]["auc"]) for p in ["overall"] + summ["buckets"]) + " |")
        md += ["", f"Mean attention Gini (over seeds) per branch and bucket, {b}:", "",
               "| run | branch | " + " | ".join(["overall"] + summ["pol_buckets"]) + " |",
               "|---|---|" + "---:|" * (len(summ["pol_buckets"]) + 1)]
        for g, brs in summ["polarization"].items():
            for br, vals in brs.items():
                md.append(f"| {g} | {br} | " + " | ".join(f"{v:.3f}" for v in vals.values()) + " |")
        md.append("")
    return finish(Path(out), "maxlen", page, "\n".join(md))


def _maxlen_summary(root: Path, b: str, groups: dict, lengths: list[int], seeds: list[int], metrics: dict,
                    with_lain: bool) -> dict:
    """One backbone's max_len sweep: AUC per length vs the shortest, attention Gini per branch and
    bucket, and (``with_lain``) +LAIN vs bare at each length."""
    base = f"{b}/bare/len{lengths[0]}"
    summ = summarise(root, {g: None for g in groups if g.startswith(b + "/")}, seeds, base, metrics)
    pol = {g: [read_metrics(run_dir(root, RunSpec(f"{g}/seed{s}", "")) / "attention.json") for s in seeds]
           for g in groups if g.startswith(b + "/")}
    first = next(iter(pol.values()))[0]
    summ["pol_buckets"] = list(next(iter(first.values()))["buckets"])       # the runs' own length buckets
    summ["polarization"] = {g: {br: {part: float(np.mean([p[br]["buckets"][part]["gini"] if part != "overall"
                                                          else p[br]["overall"]["gini"] for p in ps]))
                                     for part in ["overall"] + summ["pol_buckets"]}
                                for br in ps[0]} for g, ps in pol.items()}
    if with_lain:   # LAIN's own effect at each max_len: +LAIN vs bare at the same length
        summ["lain_vs_bare"] = {n: summarise(root, {f"{b}/bare/len{n}": None, f"{b}/lain/len{n}": None}, seeds,
                                             f"{b}/bare/len{n}", metrics) for n in lengths}
    return summ


def ablation(backbone: str, seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (), jobs: int = 2,
             threads: int = 1, log=print, rows: list[str] | None = None) -> dict:
    """LAIN component ablation (paper Table 6) on one backbone: ``rows`` of :data:`ABLATION` (default
    all) and of :data:`LAIN_CHOICES`. Deltas vs bare; with ``full`` among the rows, also every other
    LAIN row vs full (``delta_vs_<backbone>/full``, a second table)."""
    known = {**ABLATION, **LAIN_CHOICES}
    rows = list(rows or ABLATION)
    unknown = [r for r in rows if r not in known]
    if unknown or "bare" not in rows:
        from ..errors import SeqctrError

        raise SeqctrError(f"--rows: need bare, and only rows of {list(known)}; got {rows}")
    root = Path(out) / "ablation"
    cfg = str(Path(config_dir) / f"{backbone}.yaml")
    groups = {f"{backbone}/{k}": (cfg, known[k]) for k in rows}
    metrics = run_specs(specs(groups, seeds, sets), root, jobs, threads, log)
    res = summarise(root, groups, seeds, f"{backbone}/bare", metrics)
    full = f"{backbone}/full"
    vs_full = None
    if full in groups and len(groups) > 2:
        lain_groups = {g: v for g, v in groups.items() if g != f"{backbone}/bare"}
        vs_full = summarise(root, lain_groups, seeds, full, metrics)
        for g, r in vs_full["groups"].items():
            if f"delta_vs_{full}" in r:       # the same cells: marked once, shown in both tables
                res["groups"][g][f"delta_vs_{full}"] = r[f"delta_vs_{full}"]
    mark_significance(res)
    md = format_summary(res, f"LAIN ablation on {backbone}")
    if vs_full is not None:
        md += "\n\n" + format_summary(vs_full, f"LAIN variants on {backbone} vs full LAIN")
    return finish(Path(out), "ablation", res, md, {backbone: res}, f"LAIN ablation ({backbone}): Δ test AUC vs bare")


def sensitivity(backbone: str, seeds: list[int], out: Path, config_dir: Path, fourier=(16, 32, 64),
                hidden=(128, 512), prompts=(2, 4), sets: list[str] = (), jobs: int = 2, threads: int = 1,
                log=print) -> dict:
    """Grid over Fourier dimension x hidden size x prompt count (paper Fig. 4)."""
    root = Path(out) / "sensitivity"
    cfg = str(Path(config_dir) / f"{backbone}.yaml")
    groups = {f"{backbone}/bare": (cfg, [])}
    for f in fourier:
        for h in hidden:
            for k in prompts:
                groups[f"{backbone}/df{f}_h{h}_k{k}"] = (cfg, ["model.lain.enabled=true", f"model.lain.fourier_dim={f}",
                                                             f"model.lain.hidden={h}", f"model.lain.prompts={k}"])
    metrics = run_specs(specs(groups, seeds, sets), root, jobs, threads, log)
    res = summarise(root, groups, seeds, f"{backbone}/bare", metrics)
    mark_significance(res)
    return finish(Path(out), "sensitivity", res, format_summary(res, f"LAIN sensitivity on {backbone}"))
