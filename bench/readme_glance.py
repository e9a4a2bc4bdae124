"""The README's "Results at a glance" table, rendered from the results files it quotes.

One command: ``.venv/bin/python bench/readme_glance.py`` rewrites the block between
``<!-- glance -->`` and ``<!-- /glance -->`` in README.md; ``tests/test_readme.py`` fails when the
README and the files disagree. Sources: ``bench/results/vs_fuxictr.json`` (speed: one thread, whole
epochs; accuracy: seqctr's seeds and FuxiCTR's run) and ``docs/results/hstu_vs_din_ml100k.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["din", "dien", "sim", "sdim", "twin", "eta"]
START, END = "<!-- glance -->", "<!-- /glance -->"


def render(root: Path = ROOT) -> str:
    models = json.loads((root / "bench/results/vs_fuxictr.json").read_text())["models"]
    hstu = json.loads((root / "docs/results/hstu_vs_din_ml100k.json").read_text())
    lines = ["| backbone | test AUC seqctr (mean of seeds) | FuxiCTR (one run) | GAUC seqctr / FuxiCTR | "
             "train speed vs FuxiCTR | inference speed vs FuxiCTR |", "|---|---:|---:|---:|---:|---:|"]
    for name in ORDER:
        m = models[name]
        ours, theirs = m["seqctr_accuracy"], m["fuxictr_accuracy"]["test"]["overall"]
        t = m["throughput"]
        train = t["seqctr"]["train_samples_per_s"] / t["fuxictr"]["train_samples_per_s"]
        infer = t["seqctr"]["infer_samples_per_s"] / t["fuxictr"]["infer_samples_per_s"]
        lines.append(f"| {name.upper()} | {ours['auc_mean']:.4f} ({len(ours['seeds'])} seeds) | {theirs['auc']:.4f} | "
                     f"{ours['gauc_mean']:.4f} / {theirs['gauc']:.4f} | {train:.2f}x | {infer:.2f}x |")
    h = models["hstu"]["seqctr_accuracy"]
    lines.append(f"| HSTU (1 epoch, seed {h['seeds'][0]}; no FuxiCTR counterpart) | {h['auc_mean']:.4f} | — | — | — | — |")
    g = hstu["groups"]
    lines.append(f"| HSTU at convergence (time bias, up to 10 epochs, {len(hstu['seeds'])} seeds; DIN the same way: "
                 f"{g['din']['metrics']['overall']['auc']['mean']:.4f}) | {g['hstu']['metrics']['overall']['auc']['mean']:.4f}"
                 f" | — | {g['hstu']['metrics']['overall']['gauc']['mean']:.4f} / — | — | — |")
    return "\n".join(lines)


def block(readme: str) -> str:
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    path = ROOT / "README.md"
    text = path.read_text()
    new = text.replace(block(text), render())
    path.write_text(new)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
