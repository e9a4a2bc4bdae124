"""Summaries shared by the experiment suites (LAIN and CollectiveKV): the runs of a set of groups
x seeds, mean and 95% t-interval over seeds per metric and length bucket, paired bootstrap
intervals of each group's difference to a baseline on the test split, the markdown table, the
plot of the deltas and the results folder (``results.json`` / ``results.md`` / PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics.stats import mean_ci, paired_bootstrap
from ..utils.io import write_json, write_text
from .runner import RunSpec, run_dir


def specs(groups: dict[str, tuple[str, list]], seeds: list[int], sets: list[str]) -> list[RunSpec]:
    return [RunSpec(f"{g}/seed{s}", cfg, list(sets) + list(ov) + [f"train.seed={s}"])
            for g, (cfg, ov) in groups.items() for s in seeds]


def split_labels(out_specs_metrics: dict):
    """Labels and bucket edges of the test split, from the dataset the runs used."""
    from ..config import config_from_dict
    from ..data import prepare_config

    cfg = config_from_dict(next(iter(out_specs_metrics.values()))["config"])
    ds, _, _ = prepare_config(cfg.data)
    idx = ds.indices("test")
    return ds.label[idx], ds.sample_pos[idx], idx, cfg.eval.buckets


def predictions(folder: Path, test_idx: np.ndarray) -> np.ndarray:
    """A run's test probabilities (``folder/predictions_test.npz``) in the order of ``test_idx``, the
    split's sample indices; a ValueError naming the file if they do not cover exactly that split."""
    path = Path(folder) / "predictions_test.npz"
    z = np.load(path)
    order = np.argsort(z["index"])
    if not np.array_equal(z["index"][order], test_idx):
        raise ValueError(f"{path}: the predictions do not cover the test split")
    return z["prob"][order]


def summarise(out: Path, groups: dict, seeds: list[int], baseline: str | None, metrics: dict) -> dict:
    """Per group: mean/CI per metric and bucket; per non-baseline group: bootstrap delta vs baseline."""
    from ..metrics import bucket_masks

    y, L, idx, edges = split_labels(metrics)
    masks = {"overall": np.ones(len(y), bool), **bucket_masks(L, edges)}
    buckets = list(masks)[1:]
    res: dict = {"groups": {}, "baseline": baseline, "seeds": seeds, "buckets": buckets,
                 "dataset": next(iter(metrics.values())).get("dataset", {}).get("name", "?")}
    preds = {g: [predictions(run_dir(out, RunSpec(f"{g}/seed{s}", "")), idx) for s in seeds] for g in groups}
    for g in groups:
        ms = [metrics[f"{g}/seed{s}"]["test"] for s in seeds]
        block = {}
        for part in ["overall"] + buckets:
            get = (lambda m: m["overall"]) if part == "overall" else (lambda m, p=part: m["buckets"][p])
            block[part] = {k: mean_ci([get(m)[k] for m in ms]) for k in ("auc", "gauc", "logloss")}
        res["groups"][g] = {"metrics": block}
        if baseline and g != baseline:
            delta = {}
            for part, m in masks.items():
                delta[part] = {k: paired_bootstrap(y, preds[baseline], preds[g], metric=k, n_boot=500, mask=m)
                               for k in ("auc", "logloss")}
                if len(seeds) > 1:    # the AUC interval with the seeds resampled too (run-to-run variation)
                    delta[part]["auc_seeds"] = paired_bootstrap(y, preds[baseline], preds[g], metric="auc",
                                                                n_boot=500, mask=m, resample_pairs=True)
            res["groups"][g]["delta_vs_" + baseline] = delta
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
             f"[2.5%, 97.5%]; \"seeds too\" rows: the same with the seeds resampled as well (two-level), "
             f"an interval that also covers how the difference varies between training runs.", "",
             "| variant | " + " | ".join(parts) + " | GAUC | logloss |",
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
            if "auc_seeds" in d["overall"]:
                lines.append(f"| Δ {g}, seeds too | " + " | ".join(
                    f"[{d[p]['auc_seeds']['lo']:+.4f}, {d[p]['auc_seeds']['hi']:+.4f}]" for p in parts) + " | | |")
    return "\n".join(lines)


def plot_deltas(res_by_name: dict[str, dict], path: Path, title: str) -> None:
    from ..utils.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
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
        base = res_by_name[n]["baseline"]
        name = f"{g.split('/')[-1]} vs {base.split('/')[-1]}"
        ax.bar(x, mid, width, yerr=err, capsize=2, label=f"{n}: {name}" if len(res_by_name) > 1 else name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, ["all" if p == "overall" else p for p in parts])
    ax.set_xlabel("history length of the test sample (events)")
    ax.set_ylabel("difference in test AUC")
    dataset = next(iter(res_by_name.values())).get("dataset", "?")
    ax.set_title(f"{title} ({dataset}, test split)\n"
                 "bars: mean over seeds' paired difference; error bars: 95% paired-bootstrap interval",
                 fontsize=9)
    ax.legend(fontsize=7)

    save_figure(fig, path, dpi=110)


def finish(out: Path, name: str, results: dict, markdown: str, plot: dict | None = None, title: str = "") -> dict:
    d = Path(out) / name
    write_json(d / "results.json", results)
    if plot:
        plot_deltas(plot, d / "results.png", title)
        if (d / "results.png").exists():
            markdown += f"\n\n![{title}](results.png)"
    write_text(d / "results.md", markdown + "\n")
    return results


