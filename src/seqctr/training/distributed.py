"""Training on several processes with PyTorch's own ``torch.distributed`` (torchrun + DDP).

``torchrun --nproc_per_node N -m seqctr train --config ...`` starts N processes; each calls
:func:`init_distributed`, which joins the process group torchrun describes in the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...): gloo on CPU, NCCL when CUDA is
present (one GPU per process, ``cuda:LOCAL_RANK``). Without torchrun the same code runs as one
process (:class:`Dist` with ``world == 1``) and no collective is ever called.

How the work is split (see the Trainer):

- every rank computes the same epoch order of *global* batches (``data.batch_size`` samples, length
  bucketed, seeded by ``train.seed`` and the epoch), and :func:`shard` deals each global batch to
  the ranks by length (longest first, in snake order), so every rank takes the same number of
  steps and rank sub-batches hold about the same number of events — no rank waits for another's
  long batch;
- each rank's loss is scaled by ``n_rank * world / n_global``; DDP averages gradients over ranks, so
  one step equals a one-process step on the whole global batch;
- evaluation batches are split across ranks, predictions gathered on rank 0, metrics computed
  there once and broadcast (so early stopping decides the same everywhere);
- checkpoints, logs, reports, TensorBoard and progress bars come from rank 0 only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..device import resolve_device


@dataclass
class Dist:
    """This process's place in the job (``world == 1``: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` as a list on rank 0 (``None`` elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group if there is one; returns ``(Dist, device of this process)``."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not device_name.startswith("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    else:
        pin_cpus(local, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), local), device


def pin_cpus(local_rank: int, local_world: int) -> list[int] | None:
    """On CPU, give each process of this machine its own share of the cores it may use (rank 0 the
    first ``cores // local_world``...): without it two 1-thread ranks migrate between cores and
    evict each other's caches (measured ~8% slower steps on 2 cores). ``SEQCTR_CPU_AFFINITY=0`` keeps
    the scheduler's choice. Returns the cores taken, or None when nothing was pinned."""
    if os.environ.get("SEQCTR_CPU_AFFINITY", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // max(local_world, 1)
    if share < 1:
        return None
    mine = cores[local_rank * share:(local_rank + 1) * share]
    os.sched_setaffinity(0, mine)
    return mine


def shutdown(d: Dist) -> None:
    if d.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard(positions: np.ndarray, lengths: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share of one global batch: samples sorted by length (longest first, ties by
    position) and dealt in snake order 0,1,..,W-1,W-1,..,0 — shares differ by at most one sample,
    and their total events by at most one sample's length per round. ``lengths`` are the samples'
    (truncated) history lengths, aligned with ``positions``."""
    if world == 1:
        return positions
    order = np.lexsort((positions, -lengths))
    k = np.arange(len(order))
    lap, r = np.divmod(k, world)
    owner = np.where(lap % 2 == 0, r, world - 1 - r)
    return np.sort(positions[order[owner == rank]])
