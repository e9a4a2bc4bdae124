"""Does CollectiveKV's inference score what training trained? Its gate, measured, and inference with the gate.

One command: ``.venv/bin/python bench/ckv_gate.py --checkpoints RUN_A/best.pt,RUN_B/best.pt --tag hstu_mlls``

Training multiplies each event's pool entry by a gate, ``sigmoid(top-1 router logit)``; inference — the authors'
code, seqctr's model and its serving path — reads the entry ungated (the gate taken as 1). For each checkpoint and
split: the mean gate of the split's events (:class:`seqctr.nn.collective_kv.GateMeter`), AUC and logloss as
served (ungated), and with the gate applied at inference too, on the same samples. The gated form exists only
here (``gated_inference``): serving it would need each event's gate in the cache (one more number per event and
tensor). Results: ``bench/results/ckv_gate_<tag>.{json,md}`` (per checkpoint; no interval: few seeds).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


@contextlib.contextmanager
def gated_inference(model):
    """Inside: every CollectiveKV module of ``model`` multiplies its pool entries by the training gate at
    inference too (an instance attribute shadows ``CollectiveKV._part``; removed on exit)."""
    import torch

    from seqctr.nn.collective_kv import CollectiveKV

    mods = [m for m in model.modules() if isinstance(m, CollectiveKV)]

    def gated(m):
        plain = m._part

        def part(name, x, mask):
            if m.training or not m.share[name]:
                return plain(name, x, mask)
            idx = m._index(name, x)
            gate = torch.sigmoid(m._top_logit(name, x, idx))
            if m._meter is not None:
                m._meter.add(name, gate, mask)
            return m._join(gate.unsqueeze(-1) * getattr(m, f"pool_{name}")[idx], m._user(name, x)), None
        return part

    for m in mods:
        m._part = gated(m)
    try:
        yield
    finally:
        for m in mods:
            del m._part


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", required=True, help="comma list of CollectiveKV runs' best.pt")
    ap.add_argument("--splits", default="valid,test")
    ap.add_argument("--tag", required=True, help="results name: bench/results/ckv_gate_<tag>")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from seqctr.data import BatchLoader
    from seqctr.metrics import evaluate_predictions
    from seqctr.models import load_trained
    from seqctr.nn.collective_kv import GateMeter
    from seqctr.training import predict
    from seqctr.utils.malloc import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    rows = []
    for ckpt in args.checkpoints.split(","):
        model, cfg, ds, _ = load_trained(ckpt)
        for split in args.splits.split(","):
            loader = BatchLoader(ds, split, max_len=cfg.data.max_len, batch_size=cfg.data.eval_batch_size,
                                 shuffle=False)
            with GateMeter(model) as meter:
                served = predict(model, loader, torch.device("cpu"), precision=cfg.train.precision)
            with gated_inference(model):
                gated = predict(model, loader, torch.device("cpu"), precision=cfg.train.precision)
            m = {name: evaluate_predictions(p["label"], p["prob"], p["user"], p["seq_len"], cfg.eval.buckets)
                 for name, p in (("served", served), ("gated", gated))}
            row = {"checkpoint": ckpt, "model": cfg.model.name, "seed": cfg.train.seed, "split": split,
                   "samples": int(len(served["prob"])), "gate": meter.means(),
                   **{f"{k}_{name}": m[name]["overall"][k] for name in m for k in ("auc", "logloss")}}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    out = Path(__file__).resolve().parent / "results" / f"ckv_gate_{args.tag}"      # from any working folder
    cmd = "python bench/ckv_gate.py " + " ".join(sys.argv[1:])
    md = [f"# CollectiveKV's gate: training against inference ({args.tag})", "",
          f"`{cmd}` (generated; do not edit). Training multiplies each event's pool entry by `sigmoid(top-1 router "
          "logit)`; inference reads it ungated (`served`). `gated`: the same checkpoint with the gate applied at "
          "inference too (this benchmark only). Gate: the mean over the split's real events, every CollectiveKV "
          "module.", "",
          "| model | seed | split | samples | gate k | gate v | AUC served | AUC gated | Δ AUC | logloss served "
          "| logloss gated | Δ logloss |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gk, gv = (r["gate"].get(n, float("nan")) for n in ("k", "v"))
        md.append(f"| {r['model']} | {r['seed']} | {r['split']} | {r['samples']:,} | {gk:.3f} "
                  f"| {gv:.3f} | {r['auc_served']:.4f} | {r['auc_gated']:.4f} "
                  f"| {r['auc_gated'] - r['auc_served']:+.4f} | {r['logloss_served']:.4f} | {r['logloss_gated']:.4f} "
                  f"| {r['logloss_gated'] - r['logloss_served']:+.4f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
