"""Render a run's metrics as a text/markdown table and a report (markdown + optional PNG)."""
from __future__ import annotations

from pathlib import Path

from ..utils.io import write_text


def format_metrics_table(metrics: dict, title: str = "") -> str:
    """Markdown table: one row for overall and one per length bucket (n, label rate, AUC, GAUC, logloss)."""
    rows = [("overall", metrics["overall"])] + list(metrics["buckets"].items())
    lines = [f"**{title}**", ""] if title else []
    lines += ["| bucket (seq_len) | n | label rate | AUC | GAUC | logloss |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['n']:,} | {m['label_rate']:.3f} | {m['auc']:.4f} | {m['gauc']:.4f} | "
                     f"{m['logloss']:.4f} |")
    return "\n".join(lines)


def _plot_buckets(metrics: dict, path: Path, title: str = "") -> bool:
    from ..utils.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return False
    names = list(metrics["buckets"])
    ticks = [f"{b}\nn={metrics['buckets'][b]['n']:,}" for b in names]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, label in zip(axes, ("auc", "gauc", "logloss"), ("AUC", "GAUC", "log loss")):
        vals = [metrics["buckets"][b][key] for b in names]
        ax.bar(ticks, vals, color="#4c72b0", label="per history-length bucket")
        ax.axhline(metrics["overall"][key], color="#c44e52", ls="--", label="all test samples")
        ax.set_title(label)
        ax.set_xlabel("history length (events before the target)")
        ax.set_ylabel(f"test {label} (axis zoomed, not from 0)", fontsize=8)
        finite = [v for v in vals if v == v]
        if finite:
            lo, hi = min(finite), max(finite + [metrics["overall"][key]])
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
        ax.tick_params(axis="x", labelsize=7)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=110, rect=(0, 0.07, 1, 1))
    return True


def write_run_report(run_dir: str | Path, result: dict) -> Path:
    """Write ``report.md`` (and ``buckets.png`` when matplotlib is installed) into ``run_dir``."""
    run_dir = Path(run_dir)
    cfg = result["config"]
    hist = result.get("history", [])
    sps = [h["train_samples_per_s"] for h in hist]
    pad = [h["padding_fraction"] for h in hist]
    lines = [
        f"# seqctr run: {cfg['model']['name']} on {result['dataset'].get('name', '?')}", "",
        f"- dataset: `{result['dataset'].get('name')}` (protocol `{result['dataset'].get('protocol')}`, "
        f"source sha256 `{result['dataset'].get('source_sha256', '')[:12]}`)",
        f"- max_len {cfg['data']['max_len']}, batch {cfg['data']['batch_size']}, embedding "
        f"{cfg['model']['embedding_dim']}, MLP {cfg['model']['mlp_hidden']}, dropout {cfg['model']['dropout']}, "
        f"lr {cfg['train']['lr']}, seed {cfg['train']['seed']}",
        f"- parameters: {result.get('n_parameters', 0):,}; best epoch {result.get('best_epoch')} of {len(hist)}",
    ]
    if sps:
        lines.append(f"- train throughput (median over epochs): {sorted(sps)[len(sps) // 2]:,.0f} samples/s; "
                     f"padded slots {100 * sorted(pad)[len(pad) // 2]:.1f}% (length-bucketed batches)")
    lines.append(f"- test inference: {result['test']['infer_samples_per_s']:,.0f} samples/s")
    lines += ["", format_metrics_table(result["test"], "test"), "", format_metrics_table(result["valid"], "valid")]
    title = f"{cfg['model']['name']} on {result['dataset'].get('name', '?')}: test split"
    if _plot_buckets(result["test"], run_dir / "buckets.png", title):
        lines += ["", "![test metrics per length bucket](buckets.png)"]
    if hist:
        lines += ["", "| epoch | train loss | valid AUC | valid GAUC | samples/s |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['valid']['auc']:.4f} | {h['valid']['gauc']:.4f} | "
                  f"{h['train_samples_per_s']:,.0f} |" for h in hist]
    path = run_dir / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def write_experiments_report(root: Path) -> Path:
    """Assemble ``root/report.md`` from the experiment folders present (images linked relative)."""
    root = Path(root)
    lines = ["# seqctr length-analysis report", ""]
    found = []
    from .suites import report_pages

    for folder, name, title in report_pages():
        p = root / folder / name
        if not p.is_file():
            continue
        found.append(title)
        body = p.read_text().replace("](", f"]({folder}/").replace(f"]({folder}/http", "](http")
        body = "\n".join(("#" + ln) if ln.startswith("#") else ln for ln in body.splitlines())
        lines += [body, ""]
    if not found:
        lines.append("No experiment results found yet: run `seqctr analyze data` or `seqctr experiment ...`.")
    path = root / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: first column left-aligned, the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_bench_markdown(path: str | Path, title: str, intro: str, header: list[str], rows: list[list]) -> str:
    """``# title``, an intro paragraph (the command and conditions) and a table; written atomically, returned."""
    text = f"# {title}\n\n{intro}\n\n{markdown_table(header, rows)}\n"
    write_text(path, text)
    return text
