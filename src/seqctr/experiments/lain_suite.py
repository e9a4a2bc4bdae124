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

from ..metrics.stats import mean_ci, paired_bootstrap
from ..utils.io import read_metrics, write_json, write_text
from .runner import RunSpec, run_dir, run_specs

ABLATION = {  # paper Table 6, one config each
    "bare": [],
    "full": ["model.lain.enabled=true"],
    "no_lcp": ["model.lain.enabled=true", "model.lain.prompts=0"],
    "no_qk_condition": ["model.lain.enabled=true", "model.lain.qk_condition=false"],
    "no_temperature": ["model.lain.enabled=true", "model.lain.temperature=false"],
    "no_lma": ["model.lain.enabled=true", "model.lain.qk_condition=false", "model.lain.temperature=false"],
    "no_short_branch": ["model.lain.enabled=true", "model.lain.branches=[long]"],
}


def _specs(groups: dict[str, tuple[str, list]], seeds: list[int], sets: list[str]) -> list[RunSpec]:
    return [RunSpec(f"{g}/seed{s}", cfg, list(sets) + list(ov) + [f"train.seed={s}"])
            for g, (cfg, ov) in groups.items() for s in seeds]


def _test_labels(out_specs_metrics: dict):
    """Labels and bucket edges of the test split, from the dataset the runs used."""
    from ..config import config_from_dict
    from ..data import prepare_config

    cfg = config_from_dict(next(iter(out_specs_metrics.values()))["config"])
    ds, _, _ = prepare_config(cfg.data)
    idx = ds.indices("test")
    return ds.label[idx], ds.sample_pos[idx], idx, cfg.eval.buckets


def _predictions(out: Path, spec: RunSpec, test_idx: np.ndarray) -> np.ndarray:
    z = np.load(run_dir(out, spec) / "predictions_test.npz")
    order = np.argsort(z["index"])
    assert np.array_equal(z["index"][order], test_idx), "run predictions do not cover the test split"
    return z["prob"][order]


def summarise(out: Path, groups: dict, seeds: list[int], baseline: str | None, metrics: dict) -> dict:
    """Per group: mean/CI per metric and bucket; per non-baseline group: bootstrap delta vs baseline."""
    from ..metrics import bucket_labels

    y, L, idx, edges = _test_labels(metrics)
    buckets = bucket_labels(edges)
    e = list(edges) + [np.inf]
    masks = {"overall": np.ones(len(y), bool)}
    masks.update({b: (L >= lo) & (L < hi) for b, lo, hi in zip(buckets, e[:-1], e[1:])})
    res: dict = {"groups": {}, "baseline": baseline, "seeds": seeds, "buckets": buckets}
    preds = {g: [_predictions(out, RunSpec(f"{g}/seed{s}", ""), idx) for s in seeds] for g in groups}
    for g in groups:
        ms = [metrics[f"{g}/seed{s}"]["test"] for s in seeds]
        block = {}
        for part in ["overall"] + buckets:
            get = (lambda m: m["overall"]) if part == "overall" else (lambda m, p=part: m["buckets"][p])
            block[part] = {k: mean_ci([get(m)[k] for m in ms]) for k in ("auc", "gauc", "logloss")}
        res["groups"][g] = {"metrics": block}
        if baseline and g != baseline:
            res["groups"][g]["delta_vs_" + baseline] = {
                part: {k: paired_bootstrap(y, preds[baseline], preds[g], metric=k, n_boot=500, mask=m)
                       for k in ("auc", "logloss")}
                for part, m in masks.items()}
    return res


def delta_cell(c: dict) -> str:
    """A bootstrap delta as ``+0.0012 [-0.0003, +0.0025]``."""
    return f"{c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def format_summary(res: dict, title: str) -> str:
    """Markdown: AUC per bucket (mean [95% CI over seeds]) and the bootstrap delta vs baseline."""
    parts = ["overall"] + res["buckets"]
    base = res["baseline"]
    lines = [f"## {title}", "", f"Seeds {res['seeds']}. Cells: test AUC, mean over seeds [95% t-interval]. "
             f"Δ rows: paired bootstrap (500 resamples of the test samples) of the AUC difference to `{base}`, "
             f"[2.5%, 97.5%].", "", "| variant | " + " | ".join(parts) + " | GAUC | logloss |",
             "|---|" + "---:|" * (len(parts) + 2)]

    def ci(c):
        return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]" if c["n"] > 1 else f"{c['mean']:.4f}"

    for g, r in res["groups"].items():
        m = r["metrics"]
        lines.append(f"| {g} | " + " | ".join(ci(m[p]["auc"]) for p in parts)
                     + f" | {m['overall']['gauc']['mean']:.4f} | {m['overall']['logloss']['mean']:.4f} |")
        d = r.get(f"delta_vs_{base}")
        if d:
            lines.append(f"| Δ {g} | " + " | ".join(delta_cell(d[p]["auc"]) for p in parts)
                         + f" | | {d['overall']['logloss']['delta']:+.4f} |")
    return "\n".join(lines)


def _plot_deltas(res_by_name: dict[str, dict], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [(n, g, r) for n, res in res_by_name.items() for g, r in res["groups"].items()
            if r.get(f"delta_vs_{res['baseline']}")]
    if not rows:
        return
    parts = ["overall"] + next(iter(res_by_name.values()))["buckets"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(parts)), 3.6))
    width = 0.8 / len(rows)
    for i, (n, g, r) in enumerate(rows):
        d = r[f"delta_vs_{res_by_name[n]['baseline']}"]
        x = np.arange(len(parts)) + i * width
        mid = [d[p]["auc"]["delta"] for p in parts]
        err = [[m - d[p]["auc"]["lo"] for m, p in zip(mid, parts)], [d[p]["auc"]["hi"] - m for m, p in zip(mid, parts)]]
        ax.bar(x, mid, width, yerr=err, capsize=2, label=f"{n}: {g}" if len(res_by_name) > 1 else g)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, parts)
    ax.set_ylabel("Δ test AUC vs baseline")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from ..utils.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _finish(out: Path, name: str, results: dict, markdown: str, plot: dict | None = None, title: str = "") -> dict:
    d = Path(out) / name
    write_json(d / "results.json", results)
    if plot:
        _plot_deltas(plot, d / "results.png", title)
        if (d / "results.png").exists():
            markdown += f"\n\n![{title}](results.png)"
    write_text(d / "results.md", markdown + "\n")
    return results


def compare(backbones: list[str], seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (),
            jobs: int = 2, threads: int = 1, log=print) -> dict:
    """Backbones x {bare, +LAIN} x seeds (paper Tables 3-4)."""
    out = Path(out) / "compare"
    per = {}
    specs_all = []
    for b in backbones:
        cfg = str(Path(config_dir) / f"{b}.yaml")
        specs_all += _specs({f"{b}/bare": (cfg, []), f"{b}/lain": (cfg, ["model.lain.enabled=true"])}, seeds, sets)
    metrics = run_specs(specs_all, out, jobs, threads, log)
    md = ["# LAIN vs bare backbones", ""]
    for b in backbones:
        groups = {f"{b}/bare": None, f"{b}/lain": None}
        per[b] = summarise(out, groups, seeds, f"{b}/bare", metrics)
        md.append(format_summary(per[b], b))
        md.append("")
    return _finish(Path(out).parent, "compare", {"backbones": per}, "\n".join(md), per, "+LAIN: Δ test AUC per bucket")


def maxlen(backbones: list[str], lengths: list[int], seeds: list[int], out: Path, config_dir: Path,
           sets: list[str] = (), with_lain: bool = True, jobs: int = 2, threads: int = 1, log=print) -> dict:
    """max_len sweep (paper Fig. 1a / Table 5): per-bucket AUC and attention polarization."""
    root = Path(out) / "maxlen"
    variants = {"bare": []} | ({"lain": ["model.lain.enabled=true"]} if with_lain else {})
    groups = {f"{b}/{v}/len{n}": (str(Path(config_dir) / f"{b}.yaml"), ov + [f"data.max_len={n}"])
              for b in backbones for v, ov in variants.items() for n in lengths}
    metrics = run_specs(_specs(groups, seeds, list(sets) + ["eval.polarization=true"]), root, jobs, threads, log)
    res, md = {}, ["# max_len sweep", ""]
    for b in backbones:
        base = f"{b}/bare/len{lengths[0]}"
        summ = summarise(root, {g: None for g in groups if g.startswith(b + "/")}, seeds, base, metrics)
        pol = {}
        for g in groups:
            if g.startswith(b + "/"):
                pol[g] = [read_metrics(run_dir(root, RunSpec(f"{g}/seed{s}", "")) / "attention.json")
                          for s in seeds]
        summ["polarization"] = {g: {br: {part: float(np.mean([p[br]["buckets"][part]["gini"] if part != "overall"
                                                              else p[br]["overall"]["gini"] for p in ps]))
                                         for part in ["overall"] + summ["buckets"]}
                                    for br in ps[0]} for g, ps in pol.items()}
        if with_lain:   # LAIN's own effect at each max_len: +LAIN vs bare at the same length
            summ["lain_vs_bare"] = {n: summarise(root, {f"{b}/bare/len{n}": None, f"{b}/lain/len{n}": None}, seeds,
                                                 f"{b}/bare/len{n}", metrics) for n in lengths}
        res[b] = summ
        md.append(format_summary(summ, f"{b}: AUC by max_len (Δ vs max_len {lengths[0]})"))
        if with_lain:
            md += ["", f"+LAIN vs bare at the same max_len, {b} (paired bootstrap of the AUC difference):", "",
                   "| max_len | " + " | ".join(["overall"] + summ["buckets"]) + " |",
                   "|---|" + "---:|" * (len(summ["buckets"]) + 1)]
            for n, r in summ["lain_vs_bare"].items():
                d = r["groups"][f"{b}/lain/len{n}"][f"delta_vs_{b}/bare/len{n}"]
                md.append(f"| {n} | " + " | ".join(delta_cell(d[p]["auc"]) for p in ["overall"] + summ["buckets"]) + " |")
        md += ["", f"Mean attention Gini (over seeds) per branch and bucket, {b}:", "",
               "| run | branch | " + " | ".join(["overall"] + summ["buckets"]) + " |",
               "|---|---|" + "---:|" * (len(summ["buckets"]) + 1)]
        for g, brs in summ["polarization"].items():
            for br, vals in brs.items():
                md.append(f"| {g} | {br} | " + " | ".join(f"{v:.3f}" for v in vals.values()) + " |")
        md.append("")
    return _finish(Path(out), "maxlen", {"backbones": res, "lengths": lengths}, "\n".join(md))


def ablation(backbone: str, seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (), jobs: int = 2,
             threads: int = 1, log=print) -> dict:
    """LAIN component ablation (paper Table 6) on one backbone."""
    root = Path(out) / "ablation"
    cfg = str(Path(config_dir) / f"{backbone}.yaml")
    groups = {f"{backbone}/{k}": (cfg, v) for k, v in ABLATION.items()}
    metrics = run_specs(_specs(groups, seeds, sets), root, jobs, threads, log)
    res = summarise(root, groups, seeds, f"{backbone}/bare", metrics)
    return _finish(Path(out), "ablation", res, format_summary(res, f"LAIN ablation on {backbone}"),
                   {backbone: res}, f"LAIN ablation ({backbone}): Δ test AUC vs bare")


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
    metrics = run_specs(_specs(groups, seeds, sets), root, jobs, threads, log)
    res = summarise(root, groups, seeds, f"{backbone}/bare", metrics)
    return _finish(Path(out), "sensitivity", res, format_summary(res, f"LAIN sensitivity on {backbone}"))
