"""The README's "Results at a glance" table, rendered from the results files it quotes.

One command: ``.venv/bin/python bench/readme_glance.py`` rewrites the block between
``<!-- glance -->`` and ``<!-- /glance -->`` in README.md; ``tests/test_readme.py`` fails when the
README and the files disagree. Sources: ``bench/results/vs_fuxictr_speed.json`` (speed: every backbone in one
run at one commit, one thread, other jobs paused), ``bench/results/vs_fuxictr.json`` (accuracy: each library's
seeds, the difference's interval by the bootstrap over users and seeds) and ``docs/results/hstu_vs_din_ml100k.json``.
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
    speed = json.loads((root / "bench/results/vs_fuxictr_speed.json").read_text())["models"]
    hstu = json.loads((root / "docs/results/hstu_vs_din_ml100k.json").read_text())
    lines = ["| backbone | test AUC seqctr (mean of seeds) | FuxiCTR | seqctr - FuxiCTR [95%, users x seeds] | "
             "GAUC seqctr / FuxiCTR | train speed vs FuxiCTR | inference speed vs FuxiCTR |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ORDER:
        m = models[name]
        ours, fx = m["seqctr_accuracy"], m["fuxictr_accuracy"]
        if "auc_mean" in fx:                                   # FuxiCTR over seeds, with the interval
            theirs = f"{fx['auc_mean']:.4f} ({len(fx['seeds'])} seeds)"
            fx_gauc = fx["gauc_mean"]
        else:                                                  # one FuxiCTR run (seed 2024)
            theirs, fx_gauc = f"{fx['test']['overall']['auc']:.4f} (one run)", fx["test"]["overall"]["gauc"]
        d = m.get("accuracy_delta")
        delta = f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "— (one FuxiCTR run)"
        t = speed[name]["throughput"]
        train = t["seqctr"]["train_samples_per_s"] / t["fuxictr"]["train_samples_per_s"]
        infer = t["seqctr"]["infer_samples_per_s"] / t["fuxictr"]["infer_samples_per_s"]
        lines.append(f"| {name.upper()} | {ours['auc_mean']:.4f} ({len(ours['seeds'])} seeds) | {theirs} | {delta} | "
                     f"{ours['gauc_mean']:.4f} / {fx_gauc:.4f} | {train:.2f}x | {infer:.2f}x |")
    h = models["hstu"]["seqctr_accuracy"]
    lines.append(f"| HSTU (1 epoch, seed {h['seeds'][0]}; no FuxiCTR counterpart) | {h['auc_mean']:.4f} | — | — | — | — | — |")
    g = hstu["groups"]
    lines.append(f"| HSTU at convergence (time bias, up to 10 epochs, {len(hstu['seeds'])} seeds; DIN the same way: "
                 f"{g['din']['metrics']['overall']['auc']['mean']:.4f}) | {g['hstu']['metrics']['overall']['auc']['mean']:.4f}"
                 f" | — | — | {g['hstu']['metrics']['overall']['gauc']['mean']:.4f} / — | — | — |")
    return "\n".join(lines)


def block(readme: str) -> str:
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    path = ROOT / "README.md"
    text = path.read_text()
    head, rest = text.split(START, 1)
    new = head + START + "\n" + render() + "\n" + END + rest.split(END, 1)[1]     # this block only
    path.write_text(new)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
