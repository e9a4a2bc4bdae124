"""The LAIN paper's experiments on a user's own copy of its data (``seqctr experiment paper``).

The paper's three datasets (reczoo's LongCTR releases KuaiVideo_x2, MicroVideo1.7M_x2,
EBNeRD_small_x1) cannot be fetched here; whoever has one runs the paper's comparison (Table 3),
the TWIN length-group table (Table 4), the attention-polarization table over max_len (Table 5) and
the TWIN ablation (Table 6) with the packaged configs ``paper-<dataset>`` (the paper's settings),
and gets one page that prints the paper's numbers beside ours, with our intervals (bootstrap over
users and seeds) and Benjamini-Hochberg marks from the suites' own pages.
"""
from __future__ import annotations

from pathlib import Path

from ..config import resolve_config_dir
from ..utils.io import write_json, write_text
from . import lain_suite

DATASETS = {"microvideo": "MicroVideo1.7M", "kuaivideo": "KuaiVideo", "ebnerd": "EBNeRD-small"}

# Table 3 (GAUC, AUC, logloss) per dataset, backbone, variant; quoted as the paper prints them
TABLE3 = {
    "ebnerd": {"din": {"bare": (0.7053, 0.7080, 0.2695), "lain": (0.7096, 0.7156, 0.2678)},
               "dien": {"bare": (0.7090, 0.7099, 0.2737), "lain": (0.7078, 0.7118, 0.2676)},
               "sim": {"bare": (0.6960, 0.6992, 0.2720), "lain": (0.6990, 0.7037, 0.2706)},
               "sdim": {"bare": (0.7039, 0.7099, 0.2719), "lain": (0.7099, 0.7123, 0.2704)},
               "twin": {"bare": (0.6930, 0.6993, 0.2718), "lain": (0.7012, 0.7074, 0.2698)}},
    "kuaivideo": {"din": {"bare": (0.6716, 0.6979, 0.4498), "lain": (0.6742, 0.7043, 0.4457)},
                  "dien": {"bare": (0.6678, 0.6977, 0.4509), "lain": (0.6688, 0.6991, 0.4476)},
                  "sim": {"bare": (0.6672, 0.6875, 0.4574), "lain": (0.6678, 0.6896, 0.4566)},
                  "sdim": {"bare": (0.6729, 0.6924, 0.4536), "lain": (0.6732, 0.6949, 0.4525)},
                  "twin": {"bare": (0.6729, 0.6918, 0.4530), "lain": (0.6748, 0.6976, 0.4508)}},
    "microvideo": {"din": {"bare": (0.7023, 0.7093, 0.4196), "lain": (0.7019, 0.7101, 0.4179)},
                   "dien": {"bare": (0.7143, 0.7185, 0.4171), "lain": (0.7146, 0.7219, 0.4161)},
                   "sim": {"bare": (0.7017, 0.7095, 0.4168), "lain": (0.7070, 0.7131, 0.4151)},
                   "sdim": {"bare": (0.6984, 0.7161, 0.4129), "lain": (0.6993, 0.7163, 0.4121)},
                   "twin": {"bare": (0.7060, 0.7158, 0.4164), "lain": (0.7093, 0.7233, 0.4097)}},
}
# Table 4: TWIN on MicroVideo1.7M per length group (GAUC, AUC, logloss)
TABLE4 = {"[0,100)": {"bare": (0.6951, 0.7108, 0.4120), "lain": (0.6986, 0.7184, 0.4031)},
          "[100,200)": {"bare": (0.7068, 0.7212, 0.4037), "lain": (0.7100, 0.7248, 0.3986)},
          "[200,inf)": {"bare": (0.7133, 0.7125, 0.4395), "lain": (0.7166, 0.7238, 0.4319)},
          "overall": {"bare": (0.7060, 0.7158, 0.4164), "lain": (0.7093, 0.7233, 0.4097)}}
# Table 5: attention Gini per length group (short < 100, medium 100-200, long >= 200)
TABLE5 = {"bare/len200": (0.338, 0.343, 0.343), "bare/len500": (0.347, 0.353, 0.353),
          "bare/len1000": (0.346, 0.351, 0.352), "lain": (0.318, 0.322, 0.321)}
# Table 6: TWIN on MicroVideo1.7M (GAUC, AUC, logloss)
TABLE6 = {"full": (0.7093, 0.7233, 0.4097), "no_lcp": (0.7083, 0.7228, 0.4107),
          "no_qk_condition": (0.7071, 0.7195, 0.4148), "no_temperature": (0.7082, 0.7212, 0.4111),
          "no_lma": (0.7076, 0.7189, 0.4157), "no_short_branch": (0.7077, 0.7226, 0.4137)}
GROUPS = ["[0,100)", "[100,200)", "[200,inf)"]
BACKBONES = ["din", "dien", "sim", "sdim", "twin"]


def _ours(block: dict) -> str:
    c = block["auc"]
    return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]" if c["lo"] == c["lo"] else f"{c['mean']:.4f}"


def _rel(a: float, b: float) -> str:
    return f"{100 * (b - a) / a:+.2f}%"


def reproduce(dataset: str, source: str, seeds: list[int], out: Path, backbones=BACKBONES, lengths=(200, 500, 1000),
              sets: list[str] = (), jobs: int = 2, threads: int = 1, log=print) -> dict:
    """Run the paper's four experiments on ``source`` (a LongCTR folder of ``dataset``) and write
    ``out/paper/results.{json,md}``: the paper's numbers beside ours."""
    if dataset not in DATASETS:
        from ..errors import SeqctrError

        raise SeqctrError(f"--dataset: one of {sorted(DATASETS)}, got {dataset!r}")
    cdir = resolve_config_dir(f"paper-{dataset}")
    sets = [f"data.source={source}", *sets]
    out = Path(out)
    kw = dict(out=out, config_dir=cdir, sets=sets, jobs=jobs, threads=threads, log=log)
    comp = lain_suite.compare(list(backbones), seeds, **kw)["backbones"]
    maxlen = lain_suite.maxlen(["twin"], list(lengths), seeds, **kw)["backbones"]["twin"] if "twin" in backbones else None
    abl = lain_suite.ablation("twin", seeds, **kw) if "twin" in backbones else None
    md = [f"# The LAIN paper's experiments on {DATASETS[dataset]}: the paper's numbers beside ours", "",
          f"Seeds {seeds}. Ours: test-split mean over seeds [95% interval over users and seeds]; the suites' own "
          "pages (compare/, maxlen/, ablation/) give every Δ with its interval and Benjamini-Hochberg mark. "
          "The paper's: one number each, as printed (no interval given).", "",
          "## Table 3: overall, bare vs +LAIN", "",
          "| backbone | paper AUC bare | paper AUC +LAIN | paper gain | ours AUC bare | ours AUC +LAIN | our Δ AUC | "
          "paper GAUC bare / +LAIN | ours GAUC bare / +LAIN | paper logloss bare / +LAIN | ours logloss bare / +LAIN |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    page: dict = {"dataset": dataset, "seeds": seeds, "table3": {}, "table4": {}, "table5": {}, "table6": {}}
    for b in backbones:
        g = comp[b]["groups"]
        mb, ml = g[f"{b}/bare"]["metrics"]["overall"], g[f"{b}/lain"]["metrics"]["overall"]
        d = g[f"{b}/lain"][f"delta_vs_{b}/bare"]["overall"]["auc"]
        pb, pl = TABLE3[dataset][b]["bare"], TABLE3[dataset][b]["lain"]
        page["table3"][b] = {"paper": TABLE3[dataset][b], "ours": {"bare": mb, "lain": ml, "delta_auc": d}}
        md.append(f"| {b} | {pb[1]:.4f} | {pl[1]:.4f} | {_rel(pb[1], pl[1])} | {_ours(mb)} | {_ours(ml)} | "
                  f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{'*' if d.get('significant') else ''} | "
                  f"{pb[0]:.4f} / {pl[0]:.4f} | {mb['gauc']['mean']:.4f} / {ml['gauc']['mean']:.4f} | "
                  f"{pb[2]:.4f} / {pl[2]:.4f} | {mb['logloss']['mean']:.4f} / {ml['logloss']['mean']:.4f} |")
    if "twin" in backbones:
        g = comp["twin"]["groups"]
        md += ["", "## Table 4: TWIN per length group, bare vs +LAIN (the paper's on MicroVideo1.7M)", "",
               "| group | paper AUC bare | paper AUC +LAIN | paper Δ | ours AUC bare | ours AUC +LAIN | our Δ AUC |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for part in GROUPS + ["overall"]:
            mb, ml = g["twin/bare"]["metrics"][part], g["twin/lain"]["metrics"][part]
            d = g["twin/lain"]["delta_vs_twin/bare"][part]["auc"]
            pb, pl = TABLE4[part]["bare"], TABLE4[part]["lain"]
            page["table4"][part] = {"paper": TABLE4[part], "ours": {"bare": mb, "lain": ml, "delta_auc": d}}
            md.append(f"| {part} | {pb[1]:.4f} | {pl[1]:.4f} | {pl[1] - pb[1]:+.4f} | {_ours(mb)} | {_ours(ml)} | "
                      f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{'*' if d.get('significant') else ''} |")
        md += ["", "## Table 5: attention Gini per length group (TWIN, long-term branch)", "",
               "The paper: polarization *increases* with max_len and LAIN *lowers* it (lower Gini = less polarized).", "",
               "| model | paper short / medium / long | ours short / medium / long |", "|---|---|---|"]
        pol = maxlen["polarization"]
        for n in lengths:
            for variant in ("bare", "lain"):
                runs = pol.get(f"twin/{variant}/len{n}")
                if runs is None:
                    continue
                branch = runs.get("long", next(iter(runs.values())))
                ours = [branch.get(p, float("nan")) for p in GROUPS]
                key = f"bare/len{n}" if variant == "bare" else ("lain" if n == max(lengths) else None)
                paper = TABLE5.get(key) if key else None
                page["table5"][f"{variant}/len{n}"] = {"paper": paper, "ours": ours}
                md.append(f"| {variant} max_len {n} | " + (" / ".join(f"{x:.3f}" for x in paper) if paper else "—")
                          + " | " + " / ".join(f"{x:.3f}" for x in ours) + " |")
        md += ["", "## Table 6: TWIN ablation", "", "| variant | paper AUC | ours AUC | ours Δ vs bare |",
               "|---|---:|---:|---:|"]
        groups = abl["groups"]
        for row, paper in TABLE6.items():
            r = groups.get(f"twin/{row}")
            if r is None:
                continue
            d = r.get("delta_vs_twin/bare", {}).get("overall", {}).get("auc")
            page["table6"][row] = {"paper": paper, "ours": r["metrics"]["overall"], "delta_auc_vs_bare": d}
            md.append(f"| {row} | {paper[1]:.4f} | {_ours(r['metrics']['overall'])} | "
                      + (f"{d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]" if d else "—") + " |")
    folder = out / "paper"
    write_json(folder / "results.json", page)
    write_text(folder / "results.md", "\n".join(md) + "\n")
    return page
