"""How fast a model goes stale, and what keeps it fresh (``seqctr experiment streaming``).

The data is cut into consecutive time slices by sample time (``--slices N``: equal sample counts;
``--cuts``: given times, e.g. day boundaries). For every slice ``t + 1`` after the first, three
models score its samples:

- **frozen**: trained on slice 0 and never again; ids first seen later are out of vocabulary;
- **warm**: the previous slice's warm model (slice 0's model at first) trained on slice ``t`` only,
  its vocabularies grown by slice ``t``'s new ids (``train.init``);
- **scratch**: trained from scratch on every slice up to ``t``.

Every model's history reaches back to the user's first event (only which samples train moves).
Each slice's page: AUC overall, per bucket and per paper group with the users x seeds interval, Δ of
warm and scratch vs frozen (Benjamini-Hochberg over the page), the staleness curve, and each
strategy's training time per slice. Resumable like every suite: finished runs are not trained again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SeqctrError
from ..utils.io import write_json
from .runner import RunSpec, run_dir, run_specs
from .summary import finish, format_summary, mark_significance, summarise

STRATEGIES = ("frozen", "warm", "scratch")


def slice_edges(sample_ts: np.ndarray, slices: int) -> list[int]:
    """``slices + 1`` increasing integer times: slice ``k`` = samples in ``[edges[k], edges[k+1])``,
    each holding about the same number of samples (cut at the quantiles of the sample times)."""
    ts = np.sort(np.asarray(sample_ts, np.int64))
    if slices < 2:
        raise SeqctrError(f"--slices: needs at least 2 (one to train, one to test), got {slices}")
    cuts = [int(ts[min(len(ts) - 1, round(k * len(ts) / slices))]) for k in range(1, slices)]
    edges = [int(ts[0])] + cuts + [int(ts[-1]) + 1]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise SeqctrError(f"--slices {slices}: too many slices for the distinct sample times (edges {edges})")
    return edges


def _split(edges: list[int], t: int, incremental: bool) -> str:
    """The ``data.split`` override of the runs trained at slice ``t`` (tested on slice ``t + 1``)."""
    lo = f"train_from: {edges[t]}, " if incremental and t > 0 else ""
    return f"data.split={{{lo}train_until: {edges[t + 1]}, test_until: {edges[t + 2]}}}"


def streaming(backbone: str, seeds: list[int], out: Path, config_dir: Path, slices: int = 4,
              cuts: list[int] | None = None, sets: list[str] = (), jobs: int = 2, threads: int = 1,
              log=print) -> dict:
    """Run the three strategies over the slices and write the page (``out/streaming``)."""
    from ..config import load_config
    from ..data import prepare_config

    out = Path(out) / "streaming"
    cfg_path = str(Path(config_dir) / f"{backbone}.yaml")
    whole, _, _ = prepare_config(load_config(cfg_path, list(sets)).data)
    if whole.sample_ts is None:
        raise SeqctrError(f"{whole.meta.name}: no event times, so no time slices")
    if cuts:
        lo, hi = int(whole.sample_ts.min()), int(whole.sample_ts.max()) + 1
        edges = [lo] + sorted(int(c) for c in cuts if lo < c < hi) + [hi]
    else:
        edges = slice_edges(whole.sample_ts, slices)
    n = len(edges) - 1
    if n < 2:
        raise SeqctrError(f"streaming needs at least 2 slices, got edges {edges}")
    log(f"slices: {n}, edges {edges}")

    def spec(kind, t, s):
        ov = [*sets, _split(edges, t, kind == "warm"), f"train.seed={s}"]
        if kind == "warm":
            prev = f"scratch/t0/seed{s}" if t == 1 else f"warm/t{t - 1}/seed{s}"
            ov.append(f"train.init={(out / prev / 'best.pt').resolve()}")
        return RunSpec(f"{kind}/t{t}/seed{s}", cfg_path, ov)

    metrics = run_specs([spec("scratch", t, s) for t in range(n - 1) for s in seeds], out, jobs, threads, log)
    for t in range(1, n - 1):                      # each slice's warm start needs the previous one
        metrics.update(run_specs([spec("warm", t, s) for s in seeds], out, jobs, threads, log))
    for t in range(1, n - 1):
        for s in seeds:
            _frozen(out, t, s, metrics[f"scratch/t{t}/seed{s}"])

    pages, curve, train_time = {}, {k: [] for k in STRATEGIES}, {k: [] for k in STRATEGIES}
    for t in range(n - 1):
        kinds = ["scratch"] if t == 0 else list(STRATEGIES)
        groups = {f"t{t}/{k}": None for k in kinds}
        for k in kinds:                            # the frozen model at t is the scratch run of slice 0
            if k == "frozen":
                continue
            for s in seeds:
                _link(out, f"{k}/t{t}/seed{s}", f"t{t}/{k}/seed{s}")
        res = summarise(out, groups, seeds, f"t{t}/frozen" if t else None,
                        {f"scratch/t{t}/seed{s}": metrics[f"scratch/t{t}/seed{s}"] for s in seeds})
        pages[f"t{t}"] = res
        for k in STRATEGIES:
            run = "scratch" if t == 0 else k          # at slice 0 the three are one model
            curve[k].append(res["groups"][f"t{t}/{run}"]["metrics"]["overall"]["auc"])
            secs = [0.0] if run == "frozen" else [sum(h["seconds"] for h in metrics[f"{run}/t{t}/seed{s}"]["history"])
                                                  for s in seeds]
            train_time[k].append(float(np.median(secs)))
    page = {"backbone": backbone, "edges": edges, "seeds": seeds, "slices": pages,
            "curve": curve, "train_seconds_median": train_time}
    mark_significance(page)
    md = [f"# Staleness: {backbone}, {n} time slices", "",
          f"Slice k holds the samples with time in [edges[k], edges[k+1]); edges {edges}. Test at slice t+1 of: "
          "**frozen** (trained on slice 0 only; later ids out of vocabulary), **warm** (the previous warm model "
          "trained on slice t only, vocabularies grown), **scratch** (trained anew on slices 0..t). "
          f"Seeds {seeds}.", "",
          "| test slice | " + " | ".join(STRATEGIES) + " | training s (median over seeds): " + " / ".join(STRATEGIES) + " |",
          "|---|" + "---:|" * (len(STRATEGIES) + 1)]
    for t in range(n - 1):
        cells = [f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]" for c in (curve[k][t] for k in STRATEGIES)]
        md.append(f"| {t + 1} | " + " | ".join(cells) + " | "
                  + " / ".join(f"{train_time[k][t]:.0f}" for k in STRATEGIES) + " |")
    for t in range(n - 1):
        md += ["", format_summary(pages[f"t{t}"], f"Test slice {t + 1} (trained up to slice {t})")]
    _plot_curve(curve, out / "staleness.png", backbone)
    if (out / "staleness.png").exists():
        md += ["", "![staleness](staleness.png)"]
    write_json(out / "edges.json", {"edges": edges})
    return finish(out.parent, "streaming", page, "\n".join(md))


def _link(out: Path, src: str, dst: str) -> None:
    """Expose a run's folder under the name a slice's summary reads (``t{t}/{strategy}/seed{s}``)."""
    d = out / dst
    if d.is_symlink() or d.exists():
        return
    d.parent.mkdir(parents=True, exist_ok=True)
    d.symlink_to((out / src).resolve(), target_is_directory=True)


def _frozen(out: Path, t: int, seed: int, scratch_metrics: dict) -> None:
    """Score slice ``t + 1``'s test samples with the slice-0 model (``t{t}/frozen/seed{s}``): the data
    of the scratch run at ``t`` read in the slice-0 model's id space (new ids out of vocabulary), by
    ``seqctr evaluate --source --predictions`` in its own process, like every run of a suite."""
    import subprocess
    import sys

    from ..config import config_from_dict
    from ..data import prepare_config

    d = out / f"t{t}" / "frozen" / f"seed{seed}"
    if (d / "predictions_test.npz").is_file():
        return
    _, folder, _ = prepare_config(config_from_dict(scratch_metrics["config"]).data)
    d.mkdir(parents=True, exist_ok=True)
    best = run_dir(out, RunSpec(f"scratch/t0/seed{seed}", "")) / "best.pt"
    cmd = [sys.executable, "-m", "seqctr", "evaluate", "--checkpoint", str(best), "--source", str(folder),
           "--device", "cpu", "--json", "--predictions", str(d / "predictions_test.npz")]
    with open(d / "evaluate.log", "w") as logf:
        if subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode != 0:
            raise SeqctrError(f"scoring slice {t + 1} with the frozen model failed: see {d / 'evaluate.log'}")


def _plot_curve(curve: dict, path: Path, backbone: str) -> None:
    from ..utils.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k in STRATEGIES:
        pts = list(enumerate(curve[k], start=1))
        x = [p[0] for p in pts]
        mid = [p[1]["mean"] for p in pts]
        ax.errorbar(x, mid, yerr=[[m - p[1]["lo"] for m, p in zip(mid, pts)], [p[1]["hi"] - m for m, p in zip(mid, pts)]],
                    marker="o", capsize=3, label=k)
    ax.set_xlabel("test slice")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{backbone}: AUC on the next time slice (95% interval, users x seeds)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)
