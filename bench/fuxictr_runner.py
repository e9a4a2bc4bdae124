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
    ap.add_argument("--mode", choices=["throughput", "accuracy"], required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", default="{}", help="extra model params (JSON)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in-process, like seqctr)")
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
        item_info=str(data / "item_info.parquet"), batch_size=256 if shuffle else 1024, shuffle=shuffle,
        num_workers=args.workers, max_len=200)

    def predict(gen):
        model.eval()
        out = []
        with torch.no_grad():
            for batch in gen:
                out.append(model.forward(batch)["y_pred"].view(-1).numpy())
        return np.concatenate(out)

    result = {"model": args.model, "fuxictr": fuxictr.__version__, "torch": torch.__version__}
    if args.mode == "throughput":
        model._max_gradient_norm, model._batch_index = 10.0, 0
        model.train()
        n, t0 = 0, None
        for i, batch in enumerate(loader("train", True)):
            if i == 3:
                n, t0 = 0, time.perf_counter()
            if i >= args.batches + 3:
                break
            model.train_step(batch)
            n += batch[2].shape[0]
        result["train_samples_per_s"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        p = predict(loader("test", False))
        result["infer_samples_per_s"] = len(p) / (time.perf_counter() - t0)
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


if __name__ == "__main__":
    sys.exit(main())
