"""Training and evaluation loop shared by all backbones.

Run folder layout: ``config.json``, ``last.pt`` (everything needed to resume after the last
finished epoch), ``best.pt`` (best validation AUC weights), ``metrics.json`` (per-epoch history,
final valid/test metrics, throughput). Every file is written atomically.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data import BatchLoader, SeqDataset
from ..errors import SeqctrError
from ..metrics import evaluate_predictions
from ..models import CTRModel, build_model
from ..utils.io import atomic_path, provenance, write_json
from ..utils.progress import Progress


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqctrError("train.device is cuda but no CUDA device is available; use device: auto or cpu")
    return torch.device(name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam, with PyTorch's fused kernel where it has one (CPU and CUDA float parameters): the
    same update rule in one pass per tensor instead of a dozen small ops per parameter."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def save_torch(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint the trainer wrote. Only tensors and plain containers are accepted
    (``weights_only=True``): a checkpoint cannot run code when it is loaded."""
    path = Path(path)
    if not path.is_file():
        raise SeqctrError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise SeqctrError(f"checkpoint {path} cannot be read: {e}") from None


def load_trained(checkpoint: str | Path, source: str | None = None, device="cpu"):
    """A trained run's model, config and prepared dataset: ``(model in eval mode, RunConfig, dataset,
    dataset folder)``. ``source`` overrides the config's data source; a dataset whose vocabularies
    differ from the checkpoint's is an error (the ids would mean other things)."""
    from ..config import config_from_dict
    from ..data import prepare_config

    ck = load_checkpoint(checkpoint)
    if "meta" not in ck:
        raise SeqctrError(f"{checkpoint}: not a best checkpoint (use a run's best.pt)")
    cfg = config_from_dict(ck["config"])
    ds, folder, _ = prepare_config(cfg.data, source)
    if ds.meta["vocab_sizes"] != ck["meta"]["vocab_sizes"]:
        raise SeqctrError(f"checkpoint {checkpoint} was trained on a dataset with other vocabularies "
                          f"({ck['meta']['name']}, sha {ck['meta'].get('source_sha256', '?')[:12]}) than {folder}")
    model = build_model(cfg.model, ck["meta"])
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg, ds, folder


@torch.no_grad()
def predict(model: CTRModel, loader: BatchLoader, device: torch.device, progress: bool | None = False,
            desc: str = "predict", log=None) -> dict[str, np.ndarray]:
    """Probabilities for every sample of ``loader``, in the order of ``loader.indices``
    (``progress`` as in :class:`~seqctr.utils.progress.Progress`; off by default)."""
    model.eval()
    n = len(loader.indices)
    prob = np.empty(n, dtype=np.float64)
    for pos in Progress(loader.batches(), desc, progress, log=log):
        batch = loader.batch(pos).to(device)
        prob[pos] = torch.sigmoid(model(batch).logits).double().cpu().numpy()
    ds, idx = loader.ds, loader.indices
    return {"prob": prob, "label": ds.label[idx], "user": ds.sample_user[idx], "seq_len": ds.sample_pos[idx],
            "index": idx}


def train_step(model: CTRModel, opt: torch.optim.Optimizer, batch, max_grad_norm: float = 10.0) -> float:
    """One optimiser step on ``batch`` with the model's own loss (BCE + its auxiliary losses);
    returns the loss. The Trainer and every training benchmark use this one step."""
    loss = model.loss(model(batch), batch.label)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return float(loss.detach())


class Trainer:
    """Fit a model on a prepared dataset by a :class:`RunConfig`, writing into ``out_dir``."""

    def __init__(self, cfg: RunConfig, ds: SeqDataset, out_dir: str | Path, progress: bool | None = None):
        self.cfg, self.ds, self.out = cfg, ds, Path(out_dir)
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        set_seed(cfg.train.seed)
        self.model = build_model(cfg.model, ds.meta)
        self.model.embedding.load_pretrained(ds.pretrained)
        self.model = self.model.to(self.device)
        self.opt = make_optimizer(self.model, cfg.train.lr, cfg.train.weight_decay)
        d = cfg.data
        self.train_loader = BatchLoader(ds, "train", max_len=d.max_len, batch_size=d.batch_size, shuffle=True,
                                        bucket=d.bucket_sampler, chunk=d.bucket_chunk, seed=cfg.train.seed)
        self.progress = progress
        self.log = print
        self._tb = None   # TensorBoard writer, opened on the first epoch when train.tensorboard is on
        self.state = {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}

    def eval_loader(self, split: str) -> BatchLoader:
        d = self.cfg.data
        return BatchLoader(self.ds, split, max_len=d.max_len, batch_size=d.eval_batch_size, shuffle=False,
                           bucket=True)

    # -- checkpoints --------------------------------------------------------------------------
    def _save_last(self) -> None:
        save_torch({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "state": self.state,
                    "torch_rng": torch.get_rng_state(), "config": self.cfg.to_dict()}, self.out / "last.pt")

    def _save_best(self, valid: dict) -> None:
        save_torch({"model": self.model.state_dict(), "config": self.cfg.to_dict(), "meta": self.ds.meta,
                    "epoch": self.state["epoch"], "valid": valid}, self.out / "best.pt")

    def resume(self) -> bool:
        """Load ``last.pt`` if present; training then continues after the last finished epoch."""
        path = self.out / "last.pt"
        if not path.is_file():
            return False
        ck = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.state = ck["state"]
        torch.set_rng_state(ck["torch_rng"])
        return True

    # -- training -----------------------------------------------------------------------------
    def _decay_lr(self) -> None:
        """Reduce the learning rate after an epoch without improvement (FuxiCTR's plateau rule)."""
        for g in self.opt.param_groups:
            g["lr"] = max(g["lr"] * self.cfg.train.lr_decay, self.cfg.train.min_lr)

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        self.train_loader.epoch = epoch
        batches = self.train_loader.batches()
        if self.cfg.train.max_steps > 0:
            batches = batches[: self.cfg.train.max_steps]
        total, n_seen, t0 = 0.0, 0, time.perf_counter()
        # progress=None: a bar on a terminal, a line every 30 s in a log; True/False force the bar / nothing.
        bar = Progress(batches, f"epoch {epoch}", self.progress, log=self.log)
        for pos in bar:
            batch = self.train_loader.batch(pos).to(self.device)
            total += train_step(self.model, self.opt, batch, self.cfg.train.max_grad_norm) * len(batch)
            n_seen += len(batch)
            dt = time.perf_counter() - t0
            bar.note(loss=f"{total / n_seen:.4f}", samples_per_s=f"{n_seen / max(dt, 1e-9):.0f}")
        dt = time.perf_counter() - t0
        return {"loss": total / max(n_seen, 1), "samples": n_seen, "seconds": dt,
                "train_samples_per_s": n_seen / max(dt, 1e-9),
                "padding_fraction": self.train_loader.padding_fraction(epoch)}

    def fit(self, resume: bool = False, log=print) -> dict:
        """Train with early stopping on validation AUC; returns the metrics written to metrics.json."""
        self.log = log
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "config.json", {**self.cfg.to_dict(), "provenance": provenance()})
        if resume and self.resume():
            log(f"resumed from {self.out / 'last.pt'} after epoch {self.state['epoch']}")
        st = self.state
        while st["epoch"] < self.cfg.train.epochs and st["bad_epochs"] < self.cfg.train.patience:
            epoch = st["epoch"] + 1
            tr = self.train_epoch(epoch)
            va = self.evaluate("valid")
            st["epoch"] = epoch
            improved = va["overall"]["auc"] > st["best_auc"]
            if improved:
                st["best_auc"], st["best_epoch"], st["bad_epochs"] = va["overall"]["auc"], epoch, 0
                self._save_best(va)
            else:
                st["bad_epochs"] += 1
                self._decay_lr()
            st["history"].append({"epoch": epoch, **tr, "lr": self.opt.param_groups[0]["lr"], "valid": va["overall"]})
            self._tensorboard(epoch, tr, va)
            self._save_last()
            log(f"epoch {epoch}: loss {tr['loss']:.4f}  valid AUC {va['overall']['auc']:.4f} "
                f"GAUC {va['overall']['gauc']:.4f}  {tr['train_samples_per_s']:.0f} samples/s"
                f"{'  *best' if improved else ''}")
        return self.finish()

    def _tensorboard(self, epoch: int, tr: dict, va: dict) -> None:
        """Per epoch: training loss, samples/s, learning rate, validation AUC / GAUC / logloss overall
        and AUC per length bucket, under ``<run>/tensorboard`` (``train.tensorboard: true``)."""
        if not self.cfg.train.tensorboard:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise SeqctrError("train.tensorboard needs the tensorboard extra: pip install 'seqctr[tensorboard]'") \
                    from None
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        tb = self._tb
        tb.add_scalar("train/loss", tr["loss"], epoch)
        tb.add_scalar("train/samples_per_s", tr["train_samples_per_s"], epoch)
        tb.add_scalar("train/lr", self.opt.param_groups[0]["lr"], epoch)
        for k in ("auc", "gauc", "logloss"):
            tb.add_scalar(f"valid/{k}", va["overall"][k], epoch)
        for bucket, m in va["buckets"].items():
            tb.add_scalar(f"valid_auc_by_length/{bucket}", m["auc"], epoch)
        tb.flush()

    def finish(self) -> dict:
        """Reload the best weights, evaluate valid and test, write metrics.json."""
        best = self.out / "best.pt"
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])
        result = {"config": self.cfg.to_dict(), "dataset": {k: v for k, v in self.ds.meta.items()},
                  "best_epoch": self.state["best_epoch"], "history": self.state["history"],
                  "valid": self.evaluate("valid"), "test": self.evaluate("test"),
                  "n_parameters": sum(p.numel() for p in self.model.parameters()), "provenance": provenance()}
        if self.cfg.eval.polarization:
            from .diagnostics import attention_polarization

            write_json(self.out / "attention.json",
                       attention_polarization(self.model, self.eval_loader("test"), self.device, self.cfg.eval.buckets))
        if self._tb is not None:
            self._tb.close()
        write_json(self.out / "metrics.json", result)  # last: its presence marks a finished run
        return result

    def evaluate(self, split: str) -> dict:
        t0 = time.perf_counter()
        pred = predict(self.model, self.eval_loader(split), self.device,
                       progress=False if self.progress is False else None, desc=f"evaluate {split}", log=self.log)
        dt = time.perf_counter() - t0
        m = evaluate_predictions(pred["label"], pred["prob"], pred["user"], pred["seq_len"], self.cfg.eval.buckets)
        m["infer_samples_per_s"] = len(pred["prob"]) / max(dt, 1e-9)
        if split == "test" and self.cfg.eval.save_predictions:
            with atomic_path(self.out / "predictions_test.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, index=pred["index"], prob=pred["prob"])
        return m
