"""Training and evaluation loop shared by all backbones, in one process or under torchrun (DDP).

Run folder layout: ``config.json``, ``last.pt`` (everything needed to resume after the last
finished epoch, or with ``train.checkpoint_steps`` after the last saved step of the current one),
``best.pt`` (best validation AUC weights), ``metrics.json`` (per-epoch history, final valid/test
metrics, throughput). Every file is written atomically, by rank 0 only.
How several processes share the work: :mod:`seqctr.training.distributed`.
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
from ..errors import ConfigError, SeqctrError
from ..metrics import evaluate_predictions
from ..models import CTRModel, build_model
from ..nn import dropout
from ..nn.collective_kv import GateMeter
from ..checkpoint import load_checkpoint, save_torch
from ..utils.io import provenance, write_json, write_predictions
from ..utils.compile import compiled
from ..utils.malloc import keep_freed_memory
from ..utils.progress import Progress
from .distributed import init_distributed, shard


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, PyTorch and the dropout-mask generator (:mod:`seqctr.nn.dropout`)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    dropout.seed(seed)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam, with PyTorch's fused kernel where it has one (CPU and CUDA float parameters): the
    same update rule in one pass per tensor instead of a dozen small ops per parameter."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@torch.no_grad()
def predict(model: CTRModel, loader: BatchLoader, device: torch.device, progress: bool | None = False,
            desc: str = "predict", log=None, batches: list | None = None, precision: str = "fp32",
            forward=None) -> dict[str, np.ndarray]:
    """Probabilities for every sample of ``loader``, in the order of ``loader.indices``
    (``progress`` as in :class:`~seqctr.utils.progress.Progress`; off by default). ``batches``: score
    only these batches of ``loader.batches()`` (a rank's share); the other samples' ``prob`` is NaN.
    ``forward``: what computes the model's output (default ``model``; e.g. its :func:`compiled` form)."""
    model.eval()
    forward = model if forward is None else forward
    n = len(loader.indices)
    prob = np.full(n, np.nan, dtype=np.float64)
    for pos in Progress(loader.batches() if batches is None else batches, desc, progress, log=log):
        batch = loader.batch(pos).to(device)
        with autocast(precision, device):
            logits = forward(batch).logits
        prob[pos] = torch.sigmoid(logits.double()).cpu().numpy()
    ds, idx = loader.ds, loader.indices
    return {"prob": prob, "label": ds.label[idx], "user": ds.sample_user[idx], "seq_len": ds.sample_pos[idx],
            "index": idx}


PRECISIONS = ("fp32", "bf16")


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The context of a forward pass at ``precision``: ``fp32`` (nothing changes) or ``bf16``
    (``torch.autocast``: matrix products in bfloat16, weights and gradients stay float32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device).type
    return torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model: CTRModel, opt: torch.optim.Optimizer, batch, max_grad_norm: float = 10.0,
               forward=None, scale: float = 1.0, precision: str = "fp32", clock: dict | None = None) -> float:
    """One optimiser step on ``batch`` with the model's own loss (BCE + its auxiliary losses);
    returns the loss. The Trainer and every training benchmark use this one step. Under DDP,
    ``forward`` is the DDP wrapper (its backward averages gradients over ranks) and ``scale``
    weighs this rank's share of the global batch. ``precision``: see :func:`autocast` (the loss
    itself is taken in float32). ``clock``: a dict to which the step adds the wall-clock seconds
    of its ``forward``, ``backward`` and ``clip + optimiser`` parts (bench/profile_epoch.py)."""
    tick = _Clock(clock)
    with autocast(precision, batch.label.device):
        out = (model if forward is None else forward)(batch)
    loss = model.loss(out.float() if precision != "fp32" else out, batch.label)
    tick("forward")
    opt.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    tick("backward")
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    tick("clip + optimiser")
    return float(loss.detach())


class _Clock:
    """Adds the seconds since the previous call to ``times[part]``; a no-op when ``times`` is None."""

    def __init__(self, times: dict | None):
        self.times, self.t = times, time.perf_counter() if times is not None else 0.0

    def __call__(self, part: str) -> None:
        if self.times is not None:
            now = time.perf_counter()
            self.times[part] = self.times.get(part, 0.0) + now - self.t
            self.t = now


class Trainer:
    """Fit a model on a prepared dataset by a :class:`RunConfig`, writing into ``out_dir``. Under
    torchrun every process builds one (same arguments); see :mod:`seqctr.training.distributed`."""

    def __init__(self, cfg: RunConfig, ds: SeqDataset, out_dir: str | Path, progress: bool | None = None,
                 init: dict | None = None):
        """``init``: trained weights to start from (a warm start: ``ds`` is already in their id space,
        grown; :mod:`seqctr.training.warm_start`)."""
        self.cfg, self.ds, self.out = cfg, ds, Path(out_dir)
        keep_freed_memory()          # reuse freed tensors instead of page-faulting new ones each step
        self.dist, self.device = init_distributed(cfg.train.device)
        if cfg.train.compile and self.dist.active:           # refused before any model or DDP wrapper is built
            raise ConfigError("train.compile: not supported under DDP (torchrun / --nproc) yet; "
                              "set train.compile=false or train in one process")
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        set_seed(cfg.train.seed)
        self.model = build_model(cfg.model, ds.meta)
        self.model.embedding.load_pretrained(ds.pretrained)
        self.grown = {}
        if init is not None:
            from .warm_start import grow_state

            l0 = self.model.lain.L0.clone() if getattr(self.model, "lain", None) is not None else None
            self.grown = grow_state(self.model, init, cfg.train.init_rows)
            if l0 is not None and cfg.train.init_l0 == "data":
                with torch.no_grad():
                    self.model.lain.L0.copy_(l0)
        self.model = self.model.to(self.device)
        self.forward = self.model
        if self.dist.active:   # same initial weights everywhere (same seed; DDP also broadcasts rank 0's)
            from torch.nn.parallel import DistributedDataParallel

            self.model.prepare_distributed(torch.distributed.new_group)

            # buffers (Dice running statistics) are equal on every rank already: no per-step broadcast.
            # (static_graph=True looked 1.2x faster here, but left some gradients unsynchronised: not used)
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
            if not self.dist.main:                           # other dropout masks than rank 0's
                set_seed(cfg.train.seed + 1000 * self.dist.rank)
        self.infer = self.model          # what evaluation calls (train.compile: the compiled model)
        if cfg.train.compile:
            self.infer = self.forward = compiled(self.model)
        self.opt = make_optimizer(self.model, cfg.train.lr, cfg.train.weight_decay)
        d = cfg.data
        self.train_loader = BatchLoader(ds, "train", max_len=d.max_len, batch_size=d.batch_size, shuffle=True,
                                        bucket=d.bucket_sampler, chunk=d.bucket_chunk, seed=cfg.train.seed)
        self.progress = progress if self.dist.main else False
        self.log = print if self.dist.main else _quiet
        self._tb = None   # TensorBoard writer, opened on the first epoch when train.tensorboard is on
        # step: steps done in the unfinished epoch (train.checkpoint_steps); _partial: its running totals on resume
        self.state = {"epoch": 0, "step": 0, "best_auc": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
        self._partial = None

    def eval_loader(self, split: str) -> BatchLoader:
        d = self.cfg.data
        return BatchLoader(self.ds, split, max_len=d.max_len, batch_size=d.eval_batch_size, shuffle=False,
                           bucket=True)

    # -- checkpoints --------------------------------------------------------------------------
    def _save_last(self, partial: list[float] | None = None) -> None:
        """``last.pt``; ``partial``: inside an epoch (``state['step']`` steps done), this rank's running
        ``[loss sum, samples, global samples, seconds]`` of the epoch so far, kept per rank."""
        rngs = self.dist.gather(torch.get_rng_state())       # every rank's random streams
        masks = self.dist.gather(dropout.get_state())
        partials = self.dist.gather(partial) if partial is not None else None
        if self.dist.main:
            save_torch({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "state": self.state,
                        "torch_rng": rngs[0], "torch_rng_ranks": rngs, "dropout_rng_ranks": masks,
                        "partial_ranks": partials, "config": self.cfg.to_dict()}, self.out / "last.pt")
        self.dist.barrier()

    def _save_best(self, valid: dict) -> None:
        if self.dist.main:
            save_torch({"model": self.model.state_dict(), "config": self.cfg.to_dict(), "meta": self.ds.meta.to_dict(),
                        "epoch": self.state["epoch"], "valid": valid}, self.out / "best.pt")
        self.dist.barrier()

    def resume(self) -> bool:
        """Load ``last.pt`` if present; training then continues after the last finished epoch, or after
        the saved step of an unfinished one (``train.checkpoint_steps``). Every rank loads it; each takes back
        its own random streams and running totals when the world size matches (otherwise rank 0's streams,
        and the unfinished epoch's running loss restarts at the saved step)."""
        path = self.out / "last.pt"
        if not path.is_file():
            return False
        ck = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.state = ck["state"]
        partials = ck.get("partial_ranks")
        self._partial = None
        if self.state.get("step", 0) and partials:
            self._partial = partials[self.dist.rank] if len(partials) == self.dist.world else [0.0, 0, 0, 0.0]
        rngs = ck.get("torch_rng_ranks") or [ck["torch_rng"]]
        torch.set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world else rngs[0])
        masks = ck.get("dropout_rng_ranks")
        if masks:
            dropout.set_state(masks[self.dist.rank] if len(masks) == self.dist.world else masks[0])
        return True

    # -- training -----------------------------------------------------------------------------
    def _decay_lr(self) -> None:
        """Reduce the learning rate after an epoch without improvement (FuxiCTR's plateau rule)."""
        for g in self.opt.param_groups:
            g["lr"] = max(g["lr"] * self.cfg.train.lr_decay, self.cfg.train.min_lr)

    def train_epoch(self, epoch: int) -> dict:
        """One epoch over the global batches; under DDP each rank takes its :func:`shard` of every
        one (a final global batch smaller than the world size is skipped: some rank would be empty)."""
        self.model.train()
        self.train_loader.epoch = epoch
        batches = self.train_loader.batches()
        d = self.dist
        if d.active:
            batches = [b for b in batches if len(b) >= d.world]
        if self.cfg.train.max_steps > 0:
            batches = batches[: self.cfg.train.max_steps]
        start = self.state.get("step", 0)                   # steps of this epoch done before a resume
        total, n_local, n_seen, before = self._partial if start and self._partial else (0.0, 0, 0, 0.0)
        self._partial = None
        every, t0 = self.cfg.train.checkpoint_steps, time.perf_counter() - before
        eff = self.train_loader.eff_len
        # progress=None: a bar on a terminal, a line every 30 s in a log; True/False force the bar / nothing.
        bar = Progress(batches[start:], f"epoch {epoch}", self.progress, log=self.log)
        for step, pos in enumerate(bar, start=start + 1):
            mine = shard(pos, eff[pos], d.rank, d.world)
            batch = self.train_loader.batch(mine).to(self.device)
            loss = train_step(self.model, self.opt, batch, self.cfg.train.max_grad_norm, forward=self.forward,
                              scale=len(mine) * d.world / len(pos), precision=self.cfg.train.precision)
            total += loss * len(mine)
            n_local += len(mine)
            n_seen += len(pos)
            dt = time.perf_counter() - t0
            bar.note(loss=f"{total / max(n_local, 1):.4f}", samples_per_s=f"{n_seen / max(dt, 1e-9):.0f}")
            if every and step % every == 0 and step < len(batches):       # a step-level checkpoint
                self.state["step"] = step
                self._save_last([total, n_local, n_seen, dt])
        self.state["step"] = 0
        dt = time.perf_counter() - t0
        total, n_local = d.sum([total, n_local])
        return {"loss": total / max(n_local, 1), "samples": n_seen, "seconds": dt,
                "train_samples_per_s": n_seen / max(dt, 1e-9), "processes": d.world,
                "padding_fraction": self.train_loader.padding_fraction(epoch)}

    def fit(self, resume: bool = False, log=print) -> dict:
        """Train with early stopping on validation AUC; returns the metrics written to metrics.json."""
        self.log = log if self.dist.main else _quiet
        log = self.log
        self.out.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            write_json(self.out / "config.json", {**self.cfg.to_dict(), "provenance": provenance(),
                                                  "processes": self.dist.world})
        if resume and self.resume():
            step = self.state.get("step", 0)
            log(f"resumed from {self.out / 'last.pt'} after epoch {self.state['epoch']}"
                + (f", step {step} of epoch {self.state['epoch'] + 1}" if step else ""))
        st = self.state
        while st["epoch"] < self.cfg.train.epochs and st["bad_epochs"] < self.cfg.train.patience:
            epoch = st["epoch"] + 1
            tr = self.train_epoch(epoch)
            va, gate = self._evaluate_valid()
            st["epoch"] = epoch
            improved = va["overall"]["auc"] > st["best_auc"]
            if improved:
                st["best_auc"], st["best_epoch"], st["bad_epochs"] = va["overall"]["auc"], epoch, 0
                self._save_best(va)
            else:
                st["bad_epochs"] += 1
                self._decay_lr()
            st["history"].append({"epoch": epoch, **tr, "lr": self.opt.param_groups[0]["lr"], "valid": va["overall"],
                                  **({"collective_gate": gate} if gate else {})})
            self._tensorboard(epoch, tr, va)
            self._save_last()
            log(f"epoch {epoch}: loss {tr['loss']:.4f}  valid AUC {va['overall']['auc']:.4f} "
                f"GAUC {va['overall']['gauc']:.4f}  {tr['train_samples_per_s']:.0f} samples/s"
                + "".join(f"  gate {k} {v:.3f}" for k, v in gate.items()) + ("  *best" if improved else ""))
        return self.finish()

    def _evaluate_valid(self) -> tuple[dict, dict]:
        """The validation metrics, and for a CollectiveKV model the mean training gate of the validation events
        (:class:`~seqctr.nn.collective_kv.GateMeter`, summed over ranks; ``{}`` for other models, and under
        ``train.compile``, whose graphs the meter's per-call Python would break)."""
        meter = GateMeter(self.model)
        if not meter.modules or self.infer is not self.model:
            return self.evaluate("valid"), {}
        with meter:
            va = self.evaluate("valid")
        return va, GateMeter.means_of(self.dist.sum(meter.totals()))

    def _tensorboard(self, epoch: int, tr: dict, va: dict) -> None:
        """Per epoch: training loss, samples/s, learning rate, validation AUC / GAUC / logloss overall
        and AUC per length bucket, under ``<run>/tensorboard`` (``train.tensorboard: true``)."""
        if not self.cfg.train.tensorboard or not self.dist.main:
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
        """Reload the best weights, evaluate valid and test, write metrics.json (rank 0)."""
        best = self.out / "best.pt"
        if best.is_file():
            self.model.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])
        result = {"config": self.cfg.to_dict(), "dataset": self.ds.meta.to_dict(),
                  "best_epoch": self.state["best_epoch"], "history": self.state["history"],
                  "valid": self.evaluate("valid"), "test": self.evaluate("test"), "processes": self.dist.world,
                  "n_parameters": sum(p.numel() for p in self.model.parameters()), "provenance": provenance()}
        if self.dist.main:
            if self.cfg.eval.polarization:
                from .diagnostics import attention_polarization

                write_json(self.out / "attention.json", attention_polarization(
                    self.model, self.eval_loader("test"), self.device, self.cfg.eval.buckets))
            if self._tb is not None:
                self._tb.close()
            write_json(self.out / "metrics.json", result)  # last: its presence marks a finished run
        self.dist.barrier()
        return result

    def evaluate(self, split: str) -> dict:
        """Metrics of ``split``. Under DDP each rank scores every ``world``-th batch, rank 0 gathers the
        predictions, computes the metrics once and broadcasts them: each sample is scored in the same
        batch as in one process, so the numbers equal a one-process evaluation exactly."""
        t0 = time.perf_counter()
        loader, d = self.eval_loader(split), self.dist
        batches = loader.batches()
        pred = predict(self.model, loader, self.device, progress=False if self.progress is False else None,
                       desc=f"evaluate {split}", log=self.log, batches=batches[d.rank::d.world],
                       precision=self.cfg.train.precision, forward=self.infer)
        if d.active:
            probs = d.gather(pred["prob"])
            if d.main:
                pred["prob"] = np.fmax.reduce(np.stack(probs))      # each sample scored by exactly one rank
        m = None
        if d.main:
            dt = time.perf_counter() - t0
            m = evaluate_predictions(pred["label"], pred["prob"], pred["user"], pred["seq_len"], self.cfg.eval.buckets)
            m["infer_samples_per_s"] = len(pred["prob"]) / max(dt, 1e-9)
            if split == "test" and self.cfg.eval.save_predictions:
                write_predictions(self.out / "predictions_test.npz", pred["index"], pred["prob"])
        return d.broadcast(m)


def _quiet(*_args, **_kw) -> None:
    """The log of ranks other than 0."""
