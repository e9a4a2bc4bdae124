"""The per-user state frontier (``seqctr experiment compression``): bytes per user against AUC for every
cache codec, on the full K/V cache and on CollectiveKV's.

Per backbone and seed it trains the model as configured (``full``) and with CollectiveKV (``ckv``), then
scores the whole test split **through the serving path**: for every test sample, the user's history up to
it is prefilled into a cache (``seqctr.serving.runtime.prefill``), the cache goes through each codec's
encode and decode (:mod:`seqctr.serving.codecs`), and the target is scored from the decoded cache — what
the service answers with ``--cache-codec``. The page gives, per variant x codec, AUC overall / per bucket
/ per paper group with the project's interval (users and seeds) and Δ vs the full fp32 cache, the mean
bytes a store keeps per test user's cache, and the largest difference between the fp32 serving path and
the training forward pass (a check: equal within float rounding). Predictions are kept per codec
(``<backbone>/<variant>_<codec>/seed*/predictions_test.npz``), so a rerun only adds what is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..utils.io import write_predictions
from .runner import RunSpec, run_dir, run_specs
from .summary import finish, format_summary, mark_significance, predictions, specs, split_labels, summarise

DEFAULT_COLLECTIVE = {"user_dim": 1, "pool_size": 10000, "branches": ["short", "long"]}


def parse_codec(spec: str, max_len: int) -> tuple[str, int]:
    """``"int8"`` -> ``("int8", max_len)``; ``"int8@50"`` -> ``("int8", 50)``: a codec on a cache of the
    most recent 50 events only (recent-window truncation; ``seqctr serve --window 50``)."""
    from ..errors import SeqctrError
    from ..serving.codecs import check_codec

    name, _, window = spec.partition("@")
    try:
        check_codec(name)
    except ValueError as e:
        raise SeqctrError(f"--codecs: {spec!r}: {e}") from None
    if window and (not window.isdigit() or int(window) < 1):
        raise SeqctrError(f"--codecs: {spec!r} is not CODEC or CODEC@EVENTS (EVENTS >= 1)")
    return name, min(int(window), max_len) if window else max_len


def serving_path_predictions(model, ds, max_len: int, codecs: list[str], log=print) -> tuple[dict, dict]:
    """Test predictions ``{codec: probs [n_test]}`` (in ``ds.indices("test")`` order) and mean stored bytes
    per cache ``{codec: bytes}``, each sample scored from its own prefilled, encoded and decoded cache;
    a codec ``name@k`` reads a cache of the last ``k`` events (the true length still conditions)."""
    import torch

    from ..serving.codecs import Codec
    from ..serving.runtime import prefill, score

    idx = ds.indices("test")
    items = torch.from_numpy(np.array(ds.item_feats, dtype=np.int64))
    spec = {c: parse_codec(c, max_len) for c in codecs}
    coders = {c: Codec(name) for c, (name, _) in spec.items()}
    windows = sorted({w for _, w in spec.values()})
    out = {c: np.empty(len(idx)) for c in codecs}
    nbytes = {c: 0 for c in codecs}
    for n, i in enumerate(idx):
        u, pos = int(ds.sample_user[i]), int(ds.sample_pos[i])
        start = int(ds.offsets[u])
        user = torch.from_numpy(np.concatenate([ds.user_feats[u], ds.context_feats[i]]).astype(np.int64))
        target = items[int(ds.sample_target[i])].unsqueeze(0)
        for w in windows:
            lo = start + max(pos - w, 0)
            hist = items[torch.from_numpy(np.asarray(ds.seq_items[lo:start + pos], np.int64))]
            times = None
            if model.backbone.uses_time and ds.has_time:
                times = torch.tensor(ds.seq_ts[lo:start + pos], dtype=torch.long)    # a copy: the data is read-only
            cache = prefill(model, user, hist, seq_len=pos, max_len=w, hist_time=times)
            t = int(ds.sample_ts[i]) if times is not None else None
            for c, coder in coders.items():
                if spec[c][1] != w:
                    continue
                stored = coder.encode(cache)
                nbytes[c] += stored.nbytes()
                out[c][n] = float(score(model, Codec.decode(stored), target, t)[0])
        if log and (n + 1) % 2000 == 0:
            log(f"  serving path: {n + 1:,} of {len(idx):,} test samples")
    return out, {c: v / max(len(idx), 1) for c, v in nbytes.items()}


def compression(names: list[str], seeds: list[int], out: Path, config_dir: Path, sets: list[str] = (),
                codecs: list[str] = ("fp32", "bf16", "int8"), collective: dict | None = None, jobs: int = 2,
                threads: int = 1, log=print) -> dict:
    """``names`` x {full, ckv} x seeds trained (resumable), then every codec through the serving path."""
    import torch

    from ..models import load_trained
    for c in codecs:
        parse_codec(c, 1)                 # every spec checked before any training
    collective = collective or DEFAULT_COLLECTIVE
    out = Path(out) / "compression"
    ckv = f"model.options.collective_kv={json.dumps(collective)}"
    all_specs = []
    for n in names:
        cfg = str(Path(config_dir) / f"{n}.yaml")
        all_specs += specs({f"{n}/full": (cfg, []), f"{n}/ckv": (cfg, [ckv])}, seeds, sets)
    metrics = run_specs(all_specs, out, jobs, threads, log)
    _, _, test_idx, _, _, _ = split_labels(metrics)
    torch.set_num_threads(max(threads, 1))
    per, bytes_per_user, fp32_vs_forward = {}, {}, {}
    for n in names:
        for variant in ("full", "ckv"):
            for s in seeds:
                run = run_dir(out, RunSpec(f"{n}/{variant}/seed{s}", ""))
                folders = {c: run_dir(out, RunSpec(f"{n}/{variant}_{c}/seed{s}", "")) for c in codecs}
                byte_file = run / "codec_bytes.json"
                if not all((f / "predictions_test.npz").is_file() for f in folders.values()) or not byte_file.is_file():
                    log(f"{n}/{variant}/seed{s}: scoring the test split through the serving path, codecs {list(codecs)}")
                    model, cfg, ds, _ = load_trained(run / "best.pt")
                    probs, nbytes = serving_path_predictions(model, ds, cfg.data.max_len, list(codecs), log)
                    for c, f in folders.items():
                        f.mkdir(parents=True, exist_ok=True)
                        write_predictions(f / "predictions_test.npz", ds.indices("test"), probs[c])
                        (f / "metrics.json").write_text(json.dumps(metrics[f"{n}/{variant}/seed{s}"]))
                    byte_file.write_text(json.dumps(nbytes))
                nb = json.loads(byte_file.read_text())
                for c in codecs:
                    bytes_per_user.setdefault(f"{n}/{variant}_{c}", []).append(nb[c])
                if "fp32" in codecs:
                    forward = predictions(run, test_idx)
                    served = predictions(folders["fp32"], test_idx)
                    fp32_vs_forward.setdefault(n, []).append(float(np.abs(forward - served).max()))
        groups = {f"{n}/{v}_{c}": None for v in ("full", "ckv") for c in codecs}
        per[n] = summarise(out, groups, seeds, f"{n}/full_{codecs[0]}", metrics)
        base = np.mean(bytes_per_user[f"{n}/full_{codecs[0]}"])
        per[n]["bytes_per_user"] = {g: float(np.mean(bytes_per_user[g])) for g in groups}
        per[n]["bytes_vs_full"] = {g: float(np.mean(bytes_per_user[g]) / base) for g in groups}
        per[n]["fp32_serving_vs_forward_max_abs"] = fp32_vs_forward.get(n)
    page = {"codecs": list(codecs), "collective": collective, "backbones": per}
    mark_significance(page)
    md = ["# Per-user state frontier: cache codecs x full / CollectiveKV caches", ""]
    for n in names:
        r = per[n]
        md += [format_summary(r, n), "",
               "| variant | mean bytes per cache | x full fp32 | users per GB |", "|---|---:|---:|---:|"]
        md += [f"| {g} | {r['bytes_per_user'][g]:,.0f} | {100 * r['bytes_vs_full'][g]:.2f}% | "
               f"{1e9 / r['bytes_per_user'][g]:,.0f} |" for g in r["bytes_per_user"]]
        if r["fp32_serving_vs_forward_max_abs"] is not None:
            md += ["", f"fp32 through the serving path vs the training forward pass, largest |Δ prob| per seed: "
                       f"{', '.join(f'{x:.1e}' for x in r['fp32_serving_vs_forward_max_abs'])}."]
        md.append("")
    _frontier_plot(per, out / "frontier.png")
    md.append("![bytes per user against AUC](frontier.png)")
    return finish(out.parent, "compression", page, "\n".join(md), None)


def _frontier_plot(per: dict, path: Path) -> None:
    """Mean bytes per cache (log scale) against overall test AUC with its interval, one series per backbone."""
    from ..utils.plot import pyplot, save_figure

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, r in per.items():
        xs, ys, lo, hi, labels = [], [], [], [], []
        for g, b in r["bytes_per_user"].items():
            m = r["groups"][g]["metrics"]["overall"]["auc"]
            xs.append(b), ys.append(m["mean"]), lo.append(m["mean"] - m["lo"]), hi.append(m["hi"] - m["mean"])
            labels.append(g.split("/")[-1])
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=n)
        for x, y, lab in zip(xs, ys, labels):
            ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per user's cache (mean over test samples, log scale)")
    ax.set_ylabel("test AUC (95% interval: users x seeds)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
