"""The LAIN findings page from the reruns of ``bench/lain_evidence.sh``.

One command: ``.venv/bin/python bench/lain_findings.py [OUT]`` (OUT: the evidence folder,
default ``runs/evidence``). It copies each finished suite's ``results.json`` into
``docs/results/lain_evidence/<dataset>_<suite>.json`` and renders
``docs/results/lain_findings.md`` from those files alone: each paper claim quoted with its direction,
then our data beside it; every cell of every page; significance by the pages' own method (bootstrap
over users and seeds, Benjamini-Hochberg per page). Suites not finished yet are listed as such.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "results"
STORE = DOCS / "lain_evidence"
DATASETS = {"ml100k": "ml100k", "mlls": "ml-latest-small"}
SUITES = {"compare-din-twin": "compare", "compare-sim-sdim": "compare", "compare-dien": "compare",
          "maxlen": "maxlen", "ablation-twin": "ablation"}
SHORT = "paper [0,100)"

CLAIMS = {
    "overall": "Table 3: \"integrating LAIN into each backbone model leads to consistent improvements on all datasets\".",
    "short": "Length-specific evaluation (Table 4, TWIN): \"LAIN achieves consistent gains across all buckets, "
             "especially for short sequences (<100), where AUC improves by +1.08%\".",
    "maxlen": "Introduction / Fig. 1: long-sequence models get worse for short-history users as the maximum length grows.",
    "ablation": "Ablation (Table 6, TWIN on MicroVideo1.7M): \"removing any module degrades performance, confirming "
                "that all parts contribute to overall effectiveness. Excluding the Length-Modulated Attention (LMA) [...] "
                "leads to the largest drop\".",
    "gini": "Attention polarization (Section \"Empirical Analysis\", Table 5): the Gini coefficient of attention "
            "*increases* with the maximum sequence length, and LAIN *lowers* it (0.338-0.353 for the baselines, "
            "0.318-0.322 with LAIN).",
}


def collect(out: Path) -> dict:
    """Copy every finished suite page's results.json into docs/results/lain_evidence/; return what is there."""
    STORE.mkdir(parents=True, exist_ok=True)
    for data in DATASETS:
        for folder, suite in SUITES.items():
            src = out / data / folder / suite / "results.json"
            if src.is_file():
                shutil.copyfile(src, STORE / f"{data}_{folder}.json")
    return {p.stem: json.loads(p.read_text()) for p in sorted(STORE.glob("*.json"))}


def num(x, fmt: str) -> str:
    """A number of a results file (NaN is stored as null) in ``fmt``, or — where there is none."""
    return "—" if x is None or x != x else format(x, fmt)


def cell(d: dict | None) -> str:
    if not d or num(d.get("delta"), "") == "—":
        return "—"
    return f"{num(d['delta'], '+.4f')} [{num(d['lo'], '+.4f')}, {num(d['hi'], '+.4f')}]" + ("*" if d.get("significant") else "")


def ci(c: dict) -> str:
    return f"{num(c['mean'], '.4f')} [{num(c['lo'], '.4f')}, {num(c['hi'], '.4f')}]"


def verdict(d: dict | None) -> str:
    if not d:
        return "not run yet"
    if d.get("delta") is None or d.get("lo") is None or d.get("hi") is None:
        return "no samples or no interval"
    if d.get("significant"):
        return "**yes**" if d["delta"] > 0 else "**no: it hurts**"
    return "no: not told apart from 0" if d["lo"] <= 0 <= d["hi"] else "a trend, not significant over the page"


def compares(pages: dict) -> list[tuple[str, str, dict]]:
    """``(dataset, backbone, summary)`` of every compare page found."""
    out = []
    for key, page in pages.items():
        data, folder = key.split("_", 1)
        if folder.startswith("compare"):
            for b, summ in page["backbones"].items():
                out.append((data, b, summ))
    return out


def _gini(summ: dict, g: str) -> float | None:
    """A run's attention Gini over all test samples, averaged over its branches."""
    vals = [v.get("overall") for v in summ["polarization"].get(g, {}).values()]
    vals = [v for v in vals if v is not None and v == v]
    return sum(vals) / len(vals) if vals else None


def mechanism_reading(b: str, summ: dict) -> str:
    """The max_len page read against the paper's three statements, generated from its numbers."""
    lens = sorted({int(g.rsplit("len", 1)[1]) for g in summ["groups"]})
    lo, hi = lens[0], lens[-1]
    out = [f"Read against the paper ({b}, max_len {lo} -> {hi}):"]
    d = summ["groups"].get(f"{b}/bare/len{hi}", {}).get(f"delta_vs_{summ['baseline']}", {}).get(SHORT, {}).get("auc")
    if d:
        direction = "falls" if d["delta"] < 0 else "rises"
        told = "significant" if d.get("significant") else "not told apart from 0"
        agree = "with the paper's direction" if d["delta"] < 0 else "against the paper's direction"
        out.append(f"the bare model's AUC on users with < 100 events {direction} by {cell(d)} ({told}; {agree}).")
    g_lo, g_hi = _gini(summ, f"{b}/bare/len{lo}"), _gini(summ, f"{b}/bare/len{hi}")
    if g_lo is not None and g_hi is not None:
        branches = len(summ["polarization"].get(f"{b}/bare/len{hi}", {}))
        of = f" (the mean of its {branches} branches)" if branches > 1 else ""
        out.append(f"Bare attention Gini{of} {g_lo:.3f} -> {g_hi:.3f}: it "
                   f"{'rises, with' if g_hi > g_lo else 'falls, against'} the paper.")
    pairs = [(L, _gini(summ, f"{b}/bare/len{L}"), _gini(summ, f"{b}/lain/len{L}")) for L in lens]
    pairs = [(L, x, y) for L, x, y in pairs if x is not None and y is not None]
    if pairs:
        lower = [L for L, x, y in pairs if y < x]
        verdict_ = ("lowers it at every max_len, with the paper" if len(lower) == len(pairs) else
                    "raises it at every max_len, against the paper" if not lower else
                    f"lowers it at max_len {', '.join(map(str, lower))} only")
        out.append("LAIN " + verdict_ + " (" + ", ".join(f"{L}: {x:.3f} -> {y:.3f}" for L, x, y in pairs) + ").")
    return " ".join(out)


def render(pages: dict) -> str:
    md = ["# Does LAIN help short-history users? Findings on ml100k and ml-latest-small", "",
          "Generated by `bench/lain_findings.py` from the reruns of `bench/lain_evidence.sh` (files in "
          "[lain_evidence/](lain_evidence/)). Method, on every page: the test split; each variant's and each "
          "difference's 95% interval by a bootstrap over **users and seeds** (a replicate draws the test users with "
          "all their samples, and each variant's seeds); `*` marks a difference significant at a false discovery "
          "rate of 5% over all Δ AUC cells of its page (Benjamini-Hochberg). At most 3 epochs per run (DIEN: 1, its "
          "epoch is the slowest); seeds as each table says. The paper's groups: < 100, 100-200, >= 200 events of history.", ""]
    runs = compares(pages)
    md += ["## Does LAIN help users with fewer than 100 events?", "",
           "Δ test AUC of +LAIN vs the bare backbone on test samples with fewer than 100 events of history.", "",
           "| dataset | backbone | seeds | Δ AUC, < 100 events | answer | Δ AUC overall |", "|---|---|---:|---:|---|---:|"]
    for data, b, summ in runs:
        d = summ["groups"][f"{b}/lain"][f"delta_vs_{b}/bare"]
        md.append(f"| {DATASETS[data]} | {b} | {len(summ['seeds'])} | {cell(d[SHORT]['auc'])} | "
                  f"{verdict(d[SHORT]['auc'])} | {cell(d['overall']['auc'])} |")
    missing = [f"{DATASETS[d]} {f}" for d in DATASETS for f in SUITES if f"{d}_{f}" not in pages]
    if missing:
        md += ["", "Not run yet: " + ", ".join(missing) + "."]
    md += ["", "## The paper's claims, and our data", "", f"**{CLAIMS['overall']}**", "",
           "Ours, Δ AUC overall per backbone and dataset: the last column above.", "",
           f"**{CLAIMS['short']}**", "", "Ours: the table above (every backbone, not TWIN alone).", ""]
    md += [f"**{CLAIMS['maxlen']}** **{CLAIMS['gini']}**", ""]
    if not any(k.endswith("_maxlen") for k in pages):
        md += ["Ours: the max_len sweeps have not been run with this method yet.", ""]
    for key, page in pages.items():
        data, folder = key.split("_", 1)
        if folder != "maxlen":
            continue
        for b, summ in page["backbones"].items():
            md += [f"### {DATASETS[data]}, {b}: AUC by max_len, and attention Gini", "",
                   "| run | " + " | ".join(["overall"] + summ["buckets"]) + " |",
                   "|---|" + "---:|" * (len(summ["buckets"]) + 1)]
            for g, r in summ["groups"].items():
                m = r["metrics"]
                md.append(f"| {g} | " + " | ".join(num(m[p]["auc"]["mean"], ".4f") for p in ["overall"] + summ["buckets"]) + " |")
                d = r.get(f"delta_vs_{summ['baseline']}")
                if d:
                    md.append(f"| Δ vs {summ['baseline']} | " + " | ".join(cell(d[p]["auc"]) for p in ["overall"] + summ["buckets"]) + " |")
            md += ["", "Gini of attention (mean over seeds; higher = more polarized), per branch:", "",
                   "| run | branch | " + " | ".join(["overall"] + summ["pol_buckets"]) + " |",
                   "|---|---|" + "---:|" * (len(summ["pol_buckets"]) + 1)]
            for g, brs in summ["polarization"].items():
                for br, vals in brs.items():
                    md.append(f"| {g} | {br} | " + " | ".join(num(v, ".3f") for v in vals.values()) + " |")
            md += ["", mechanism_reading(b, summ), ""]
    md += ["## Every cell", ""]
    for data, b, summ in runs:
        parts = ["overall"] + summ["buckets"]
        md += [f"### {DATASETS[data]}, {b} (seeds {summ['seeds']})", "",
               "| variant | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]
        for g, r in summ["groups"].items():
            m = r["metrics"]
            md.append(f"| {g} | " + " | ".join(ci(m[p]["auc"]) for p in parts) + " |")
            d = r.get(f"delta_vs_{summ['baseline']}")
            if d:
                md.append(f"| Δ {g} | " + " | ".join(cell(d[p]["auc"]) for p in parts) + " |")
        md.append("")
    for key, page in pages.items():
        data, folder = key.split("_", 1)
        if folder.startswith("ablation"):
            parts = ["overall"] + page["buckets"]
            md += [f"### Ablation, TWIN on {DATASETS[data]}", "", f"**{CLAIMS['ablation']}**", "",
                   "| row | " + " | ".join(parts) + " |", "|---|" + "---:|" * len(parts)]
            overall = {}
            for g, r in page["groups"].items():
                d = r.get(f"delta_vs_{page['baseline']}")
                if d:
                    md.append(f"| {g} vs bare | " + " | ".join(cell(d[p]["auc"]) for p in parts) + " |")
                    overall[g.split("/")[-1]] = d["overall"]["auc"]
            md.append("")
            full = overall.pop("full", None)
            if full and overall:
                below = [k for k, v in overall.items() if v["delta"] < full["delta"]]
                worst = min(overall, key=lambda k: overall[k]["delta"])
                rows = {"full": full, **overall}
                sig = [k for k, v in rows.items() if v.get("significant")]
                excl = [k for k, v in rows.items() if v["lo"] > 0 or v["hi"] < 0]
                if sig:
                    tail = f"significant vs bare after the page's correction: {', '.join(sig)}."
                elif excl:
                    tail = (f"the intervals of {', '.join(excl)} against the bare model exclude 0 on their own, but "
                            f"none is significant over the page's {page.get('multiplicity', {}).get('cells', '?')} "
                            "cells (Benjamini-Hochberg): no variant is told apart from the bare model, so the "
                            "ordering of the point estimates is no evidence for or against the paper's.")
                else:
                    tail = ("every variant's interval against the bare model includes 0 (the full plug-in's too): "
                            "no variant is told apart from the bare model, so the ordering of the point estimates "
                            "is no evidence for or against the paper's.")
                md += [f"Our data: overall, {len(below)} of {len(overall)} removals score below the full plug-in "
                       f"({', '.join(below) or 'none'}), the lowest is {worst} "
                       f"({num(overall[worst]['delta'], '+.4f')} vs bare, full {num(full['delta'], '+.4f')}); " + tail, ""]
    return "\n".join(md) + "\n"


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "evidence"
    pages = collect(out)
    text = render(pages)
    (DOCS / "lain_findings.md").write_text(text)
    print(text[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
