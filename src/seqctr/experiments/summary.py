"""Summaries shared by the experiment suites (LAIN, CollectiveKV, backbones): the runs of a set of
groups x seeds, summarised on the test split with the project's one interval method — a two-level
bootstrap over users and seeds (:func:`~seqctr.metrics.stats.cluster_bootstrap`) — for each
variant's metrics and each variant's difference to a baseline, overall, per length bucket and per
length group of the LAIN paper (< 100, 100-200, >= 200 events); Benjamini-Hochberg over every Δ AUC
cell of a page (:func:`mark_significance`); the markdown table, the plot of the deltas and the
results folder (``results.json`` / ``results.md`` / PNG).

Everything is computed from the runs' saved test predictions (``predictions_test.npz``), so running a
suite again over finished runs rewrites its pages without training anything."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics.stats import benjamini_hochberg, cluster_bootstrap, mean_ci
from ..utils.io import write_json, write_text
from .runner import RunSpec, run_dir


def specs(groups: dict[str, tuple[str, list]], seeds: list[int], sets: list[str]) -> list[RunSpec]:
    return [RunSpec(f"{g}/seed{s}", cfg, list(sets) + list(ov) + [f"train.seed={s}"])
            for g, (cfg, ov) in groups.items() for s in seeds]


def split_labels(out_specs_metrics: dict):
    """The test split of the dataset the runs used: ``(labels, history lengths, sample indices,
    users, bucket edges, group edges)``."""
    from ..config import config_from_dict
    from ..data import prepare_config

    cfg = config_from_dict(next(iter(out_specs_metrics.values()))["config"])
    ds, _, _ = prepare_config(cfg.data)
    idx = ds.indices("test")
    return ds.label[idx], ds.sample_pos[idx], idx, ds.sample_user[idx], cfg.eval.buckets, cfg.eval.groups


N_BOOT = 1000
PAPER_PREFIX = "paper "


def length_parts(seq_len: np.ndarray, buckets, groups) -> dict[str, np.ndarray]:
    """``{"overall", each bucket "[a,b)", each paper group "paper [a,b)"}`` -> sample mask."""
    from ..metrics import bucket_masks

    parts = {"overall": np.ones(len(seq_len), bool), **bucket_masks(seq_len, buckets)}
    if groups:
        parts.update({PAPER_PREFIX + k: m for k, m in bucket_masks(seq_len, groups).items()})
    return parts


def predictions(folder: Path, test_idx: np.ndarray) -> np.ndarray:
    """A run's test probabilities (``folder/predictions_test.npz``) in the order of ``test_idx``, the
    split's sample indices; a ValueError naming the file if they do not cover exactly that split."""
    path = Path(folder) / "predictions_test.npz"
    z = np.load(path)
    order = np.argsort(z["index"])
    if not np.array_equal(z["index"][order], test_idx):
        raise ValueError(f"{path}: the predictions do not cover the test split")
    return z["prob"][order]


def summarise(out: Path, groups: dict, seeds: list[int], baseline: str | None, metrics: dict,
              n_boot: int = N_BOOT) -> dict:
    """Per group: each metric overall, per bucket and per paper group, with its users x seeds
    interval (AUC, logloss; GAUC: mean and t-interval over seeds); per non-baseline group: the
    difference to ``baseline`` with its users x seeds interval and p-value."""
    from ..metrics.core import gauc

    y, L, idx, users, edges, paper = split_labels(metrics)
    masks = length_parts(L, edges, paper)
    parts = list(masks)[1:]
    res: dict = {"groups": {}, "baseline": baseline, "seeds": seeds, "buckets": parts,
                 "method": {"name": "bootstrap over users and seeds", "n_boot": n_boot,
                            "users": int(len(np.unique(users))), "test_samples": int(len(y))},
                 "dataset": next(iter(metrics.values())).get("dataset", {}).get("name", "?")}
    preds = {g: [predictions(run_dir(out, RunSpec(f"{g}/seed{s}", "")), idx) for s in seeds] for g in groups}
    for g in groups:
        block = {}
        for part, m in masks.items():
            block[part] = {k: _as_ci(cluster_bootstrap(y, users, preds[g], metric=k, n_boot=n_boot, mask=m))
                           for k in ("auc", "logloss")}
            block[part]["gauc"] = mean_ci([gauc(y[m], p[m], users[m]) if m.any() else float("nan") for p in preds[g]])
        res["groups"][g] = {"metrics": block}
        if baseline and g != baseline:
            res["groups"][g]["delta_vs_" + baseline] = {
                part: {k: cluster_bootstrap(y, users, preds[baseline], preds[g], metric=k, n_boot=n_boot, mask=m)
                       for k in ("auc", "logloss")} for part, m in masks.items()}
    return res


def _as_ci(c: dict) -> dict:
    """A one-variant bootstrap as ``{mean, lo, hi, n}`` (``n``: seeds), the shape every page reads."""
    return {"mean": c["value"], "lo": c["lo"], "hi": c["hi"], "n": c["seeds"], "users": c["users"],
            "samples": c["n"]}


def _delta_cells(obj, out: list) -> list:
    """Every Δ AUC cell (a dict with ``delta`` and ``p`` under an ``auc`` key) in a results tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "auc" and isinstance(v, dict) and "delta" in v and "p" in v:
                out.append(v)
            else:
                _delta_cells(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _delta_cells(v, out)
    return out


def mark_significance(results: dict, q: float = 0.05) -> dict:
    """Benjamini-Hochberg over every Δ AUC cell of a page: each cell gets its ``q`` value and
    ``significant`` (false discovery rate ``q`` over the page); returns ``{"cells", "significant",
    "fdr"}``, also stored as ``results["multiplicity"]``."""
    cells = _delta_cells(results, [])
    qv, sig = benjamini_hochberg([c["p"] for c in cells], q)
    for c, qq, s in zip(cells, qv, sig):
        c["q"], c["significant"] = (None if np.isnan(qq) else float(qq)), bool(s)
    results["multiplicity"] = {"cells": len(cells), "significant": int(sig.sum()), "fdr": q,
                               "method": "Benjamini-Hochberg over every delta AUC cell of the page"}
    return results["multiplicity"]


def method_note(res: dict) -> str:
    """One paragraph: how the page's intervals and significance marks are made."""
    mult = res.get("multiplicity")
    m = res.get("method", {})
    text = (f"Intervals: 95% bootstrap over users and seeds ({m.get('n_boot', N_BOOT)} replicates; each replicate "
            "draws the test users with all their samples, and each variant's seeds, with replacement), so they "
            "cover both how a new set of users and how a new training run would move the figure.")
    if mult:
        text += (f" `*`: significant at a false discovery rate of {mult['fdr']:.0%} over the page's "
                 f"{mult['cells']} Δ AUC cells (Benjamini-Hochberg; {mult['significant']} marked).")
    return text


def delta_cell(c: dict) -> str:
    """A bootstrap delta as ``+0.0012 [-0.0003, +0.0025]`` (``*`` when significant over the page)."""
    return f"{c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]" + ("*" if c.get("significant") else "")


def format_summary(res: dict, title: str) -> str:
    """Markdown: AUC per length part (the value [95% interval]) and the Δ vs the baseline."""
    parts = ["overall"] + res["buckets"]
    base = res["baseline"]
    one_seed = len(res["seeds"]) < 2
    lines = [f"## {title}", "", f"Seeds {res['seeds']}; test split, "
             f"{res.get('method', {}).get('users', '?')} users. Cells: test AUC [95% interval]"
             + (f"; Δ rows: the difference to `{base}`." if base else ".") + (" One seed per variant: the intervals cover the users only, not "
                                                "run-to-run variation." if one_seed else ""), "",
             "| variant | " + " | ".join(parts) + " | GAUC | logloss |",
             "|---|" + "---:|" * (len(parts) + 2)]

    def ci(c):
        return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]" if c["lo"] == c["lo"] else f"{c['mean']:.4f}"

    for g, r in res["groups"].items():
        m = r["metrics"]
        lines.append(f"| {g} | " + " | ".join(ci(m[p]["auc"]) for p in parts)
                     + f" | {m['overall']['gauc']['mean']:.4f} | {m['overall']['logloss']['mean']:.4f} |")
        d = r.get(f"delta_vs_{base}")
        if d:
            lines.append(f"| Δ {g} | " + " | ".join(delta_cell(d[p]["auc"]) for p in parts)
                         + f" | | {d['overall']['logloss']['delta']:+.4f} |")
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
    """Write ``out/name/results.{json,md}`` (and the plot); the page ends with how its intervals and
    significance marks were made."""
    d = Path(out) / name
    markdown += "\n\n" + method_note(results)
    write_json(d / "results.json", results)
    if plot:
        plot_deltas(plot, d / "results.png", title)
        if (d / "results.png").exists():
            markdown += f"\n\n![{title}](results.png)"
    write_text(d / "results.md", markdown + "\n")
    return results


