"""Run one FuxiCTR 2.3.10 LongCTR model on data exported by ``bench_vs_fuxictr.py``.

Executed with the benchmark's own FuxiCTR virtualenv (never imported by seqctr). The model
classes are imported straight from the wheel's ``model_zoo/LongCTR`` (its ``fuxictr_version.py``
asserts 2.3.2, so ``run_expid.py`` is not used). Throughput covers FuxiCTR's own data loader and
``train_step``, as its ``fit`` does. Predictions are saved so the caller scores both libraries
with the same metric code.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)        # DIN | DIEN | SIM | SDIM | TWIN | ETA
    ap.add_argument("--mode", choices=["throughput", "accuracy", "serving", "profile"], required=True)
    ap.add_argument("--lengths", default="50,200,1000", help="serving: history lengths")
    ap.add_argument("--candidates", default="1,200,512", help="serving: candidates per request")
    ap.add_argument("--repeats", type=int, default=9, help="serving: timed forward passes per cell")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batches", type=int, default=0, help="training batches to time (0 = the whole epoch)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="extra model params (JSON)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in-process, like seqctr)")
    ap.add_argument("--eval-batch", type=int, default=1024, help="samples per inference batch")
    ap.add_argument("--infer-seconds", type=float, default=0.0,
                    help="throughput: repeat whole test passes for at least this long (0: one pass)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.torch_utils import seed_everything

    zoo = Path(fuxictr.__file__).resolve().parent.parent / "model_zoo" / "LongCTR"
    sys.path.insert(0, str(zoo))
    from longctr_dataloader import LongCTRDataLoader

    model_cls = getattr(importlib.import_module(args.model), args.model)
    data = Path(args.data)
    seed_everything(args.seed)
    params = {"model_id": f"{args.model}_bench", "gpu": -1, "embedding_dim": 64,
              "dnn_hidden_units": [512, 128, 64], "dnn_activations": "ReLU", "net_dropout": 0.2,
              "batch_norm": False, "learning_rate": 1e-3, "optimizer": "adam", "loss": "binary_crossentropy",
              "metrics": ["AUC", "logloss"], "monitor": "AUC", "early_stop_patience": 2, "verbose": 0,
              "model_root": str(Path(args.out).parent / "fuxictr_models"), "group_id": "user_index",
              "short_seq_len": 50, "topk": 50, "attention_dim": 64, "num_heads": 1, "max_len": 200}
    params.update(json.loads(args.params))
    (Path(params["model_root"]) / "ml100k").mkdir(parents=True, exist_ok=True)  # FuxiCTR does not create it
    fmap = FeatureMap("ml100k", str(data))
    fmap.load(str(data / "feature_map.json"), params)
    model = model_cls(fmap, **params)
    loader = lambda split, shuffle: LongCTRDataLoader(  # noqa: E731
        fmap, str(data / f"{split}.parquet"), user_info=str(data / "user_info.parquet"),
        item_info=str(data / "item_info.parquet"), batch_size=256 if shuffle else args.eval_batch, shuffle=shuffle,
        num_workers=args.workers, max_len=200)

    def predict(gen):
        model.eval()
        out = []
        with torch.no_grad():
            for batch in gen:
                out.append(model.forward(batch)["y_pred"].view(-1).numpy())
        return np.concatenate(out)

    result = {"model": args.model, "fuxictr": fuxictr.__version__, "torch": torch.__version__}
    if args.mode == "serving":
        result["cells"] = serving(args, model_cls, params, fmap, data, LongCTRDataLoader)
    elif args.mode == "profile":       # bench/profile_epoch.py: inference time per top-level module
        result["infer"] = profile_inference(model, loader("test", False))
    elif args.mode == "throughput":
        model._max_gradient_norm, model._batch_index = 10.0, 0
        model.train()
        n, t0 = 0, None
        for i, batch in enumerate(loader("train", True)):
            if i == 3:
                n, t0 = 0, time.perf_counter()
            if args.batches and i >= args.batches + 3:   # 0 = the whole epoch
                break
            model.train_step(batch)
            n += batch[2].shape[0]
        result["train_samples_per_s"] = n / (time.perf_counter() - t0)
        t0, n = time.perf_counter(), 0
        while not n or time.perf_counter() - t0 < args.infer_seconds:    # whole test passes
            n += len(predict(loader("test", False)))
        result["infer_samples_per_s"] = n / (time.perf_counter() - t0)
    else:
        t0 = time.perf_counter()
        model.fit(loader("train", True), epochs=args.epochs, validation_data=loader("valid", False),
                  max_gradient_norm=10.0)
        result["fit_seconds"] = time.perf_counter() - t0
        np.save(Path(args.out).with_suffix(".npy"), predict(loader("test", False)))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


def profile_inference(model, gen) -> dict:
    """Inference over ``gen`` with wall-clock forward hooks on the model's top-level modules
    (profile_epoch.ModuleTimer), the loader's batch time apart; after 2 warm-up batches."""
    from profile_epoch import ModuleTimer   # bench/ (this script's folder)

    model.eval()
    with torch.no_grad():
        batches = iter(gen)
        for _ in range(2):
            model.forward(next(batches))
        timer = ModuleTimer(model, depth=1)
        n, gather, t0 = 0, 0.0, time.perf_counter()
        while True:
            g0 = time.perf_counter()
            batch = next(batches, None)
            gather += time.perf_counter() - g0
            if batch is None:
                break
            n += len(model.forward(batch)["y_pred"])
        wall = time.perf_counter() - t0
        timer.remove()
    own = timer.own()
    return {"samples": n, "wall_seconds": wall, "samples_per_s": n / wall,
            "parts_seconds": {"batch gather": gather, **own, "model glue": wall - gather - sum(own.values())}}


def serving(args, model_cls, params, fmap, data: Path, loader_cls) -> list[dict]:
    """Latency of FuxiCTR's forward pass for one user's request: ``N`` rows, each the candidate
    plus the same ``L``-event history (FuxiCTR has no serving split; the batch is built by its own
    collator once, outside the timing). Random history and candidates from the exported items."""
    import statistics

    import pyarrow as pa
    import pyarrow.parquet as pq

    import serving_models        # bench/ (this script's folder): the timing loop bench_serving.py uses

    n_items = pq.read_table(data / "item_info.parquet").num_rows
    first = pq.read_table(data / "test.parquet").slice(0, 1).to_pydict()     # any row: its user features
    g = np.random.default_rng(0)
    cells = []
    for L in [int(x) for x in args.lengths.split(",")]:
        model = model_cls(fmap, **{**params, "max_len": L})
        model.eval()
        folder = Path(args.out).parent / f"fx_serving_{args.model}_{L}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"full_item_seq": [g.integers(1, n_items, L).tolist()]}), folder / "user_info.parquet")
        for N in [int(x) for x in args.candidates.split(",")]:
            cols = {k: [v[0]] * N for k, v in first.items()}
            cols.update(user_index=[0] * N, seq_len=[L] * N, item_index=g.integers(1, n_items, N).tolist())
            pq.write_table(pa.table(cols), folder / f"req_{N}.parquet")
            batch = next(iter(loader_cls(fmap, str(folder / f"req_{N}.parquet"), user_info=str(folder / "user_info.parquet"),
                                         item_info=str(data / "item_info.parquet"), batch_size=N, shuffle=False,
                                         num_workers=0, max_len=L)))
            with torch.no_grad():
                times = serving_models.timed(lambda: model.forward(batch),
                                             max(2, args.repeats // (4 if L >= 1000 else 1)))
            cells.append({"events": L, "candidates": N, "median_ms": 1000 * statistics.median(times),
                          "repeats": len(times)})
            print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    return cells


if __name__ == "__main__":
    sys.exit(main())
