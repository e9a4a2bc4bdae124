"""The prepared GPU check: every backbone on the accelerator, in a few minutes, written to bench/results/.

``bash bench/gpu_check.sh`` (or ``python bench/gpu_check.py --device cuda``); ``--device cpu --steps 5``
runs the same checks on the CPU (what the test suite's machines can do).

Per backbone (paper widths of ``bench/serving_models.py`` where it has them, else the packaged ml100k
config), on the built-in ml100k:

1. **training**: ``--steps`` optimizer steps in fp32 and in bf16 autocast — samples/s (after 5 warm-up
   steps, synchronised) and the loss finite;
2. **cached scoring == forward**: one user's cache prefilled on the device scores 200 candidates equal to
   the ordinary batch forward within 1e-4 (fp32);
3. **the scorer on the device**: a bundle-free :class:`~seqctr.serving.scorer.Scorer` path — prefill and
   score through ``seqctr.serving.runtime`` — latency of 200 candidates at 1,000 events (median of 9).

Writes ``bench/results/gpu_check_<device>.{json,md}`` with the device name; exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="din,dien,sim,eta,sdim,twin,hstu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench/results/gpu_check"))
    args = ap.parse_args()
    import torch

    from seqctr.data import BatchLoader, SeqBatch, prepare
    from seqctr.serving.runtime import prefill, score
    from seqctr.training import make_optimizer, train_step
    import serving_models as sm

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it where one is (or --device cpu for the same checks)")
        return 2
    device = torch.device(args.device)
    name_of = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    ds, _, _ = prepare("ml100k")
    loader = BatchLoader(ds, "train", max_len=200, batch_size=256, shuffle=True, seed=0)
    positions = loader.batches(0)
    items = torch.from_numpy(ds.item_feats).long()
    rows, failed = [], []
    for name in args.models.split(","):
        row = {"model": name}
        for precision in ("fp32", "bf16"):
            model = sm.build(name, ds.meta).to(device).train()
            opt = make_optimizer(model, 1e-3, 0.0)
            losses, n, t0 = [], 0, None
            for k in range(args.steps + 5):
                if k == 5:
                    sync(device)
                    t0 = time.perf_counter()
                batch = loader.batch(positions[k % len(positions)]).to(device)
                losses.append(train_step(model, opt, batch, 10.0, precision=precision))
                n += len(batch.label) if k >= 5 else 0
            sync(device)
            row[f"train_{precision}_samples_per_s"] = n / (time.perf_counter() - t0)
            ok = all(x == x and abs(x) < 1e3 for x in losses)
            row[f"train_{precision}_loss_finite"] = ok
            if not ok:
                failed.append(f"{name} {precision} training loss not finite")
        model = sm.build(name, ds.meta).to(device).eval()
        g = torch.Generator().manual_seed(0)
        user = torch.from_numpy(ds.user_feats[0]).long().to(device)
        hist = items[torch.randint(2, len(items), (1000,), generator=g)].to(device)
        cands = items[torch.randint(2, len(items), (200,), generator=g)].to(device)
        max_len = 200
        cache = prefill(model, user, hist, max_len=max_len)
        got = score(model, cache, cands)
        batch = SeqBatch.for_candidates(user.unsqueeze(0).cpu(), hist[-max_len:].cpu(), cands.cpu(), 1000).to(device)
        with torch.no_grad():
            want = torch.sigmoid(model(batch).logits)
        err = float((got - want).abs().max())
        row["cached_vs_forward_max_abs"] = err
        if not err < 1e-4:
            failed.append(f"{name}: cached scoring differs from the forward pass by {err:.2e}")
        times = []
        for _ in range(10):
            sync(device)
            t0 = time.perf_counter()
            score(model, prefill(model, user, hist, max_len=max_len), cands)
            sync(device)
            times.append(time.perf_counter() - t0)
        row["prefill_and_score_ms"] = 1e3 * statistics.median(times[1:])
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(f"{args.out}_{device.type}")
    res = {"device": name_of, "torch": torch.__version__, "steps": args.steps, "rows": rows, "failed": failed,
           "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [f"# GPU check on {name_of}", "", f"`{res['command']}`, torch {torch.__version__}, {args.steps} steps per "
             "cell after 5 warm-up steps, batch 256, ml100k; latency: prefill 1,000 events (window 200) + 200 "
             "candidates, median of 9.", "",
             "| model | train fp32 samples/s | train bf16 samples/s | cached vs forward max abs | prefill + score ms |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['train_fp32_samples_per_s']:,.0f} | {r['train_bf16_samples_per_s']:,.0f} | "
              f"{r['cached_vs_forward_max_abs']:.1e} | {r['prefill_and_score_ms']:.2f} |" for r in rows]
    lines += ["", "Failed checks: " + ("; ".join(failed) if failed else "none") + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
