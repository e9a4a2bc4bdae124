"""Length-aware batching: vectorised gathering of history windows into padded :class:`SeqBatch`.

Histories are right-aligned (most recent event at position ``T-1``, padding on the left), as in
FuxiCTR/LongCTR, so "the last k events" is always ``[:, -k:]``. Each batch is padded only to its
own longest (truncated) history. For training, a shuffled length-bucketed sampler groups samples
of similar length so padded slots are a small fraction of the work.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from .dataset import SeqDataset


@dataclass
class SeqBatch:
    """One batch. ``B`` samples, ``T`` = longest truncated history in the batch.

    - ``user [B, Fu]`` user features; ``target [B, Fi]`` target item features;
    - ``hist [B, T, Fi]`` history item features (0 = padding), most recent at ``T-1``;
    - ``mask [B, T]`` bool, True on real events; ``seq_len [B]`` true length before truncation;
    - ``label [B]`` float; ``user_index [B]`` dataset user row (groups for GAUC);
    - ``hist_time [B, T]`` int64 event times (0 on padding) and ``target_time [B]`` the candidate's
      time, when the data has timestamps (else None).
    """

    user: torch.Tensor
    target: torch.Tensor
    hist: torch.Tensor
    mask: torch.Tensor
    seq_len: torch.Tensor
    label: torch.Tensor
    user_index: torch.Tensor
    hist_time: torch.Tensor | None = None
    target_time: torch.Tensor | None = None

    def to(self, device) -> "SeqBatch":
        return SeqBatch(**{f.name: None if getattr(self, f.name) is None else
                           getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def __len__(self) -> int:
        return self.label.shape[0]

    @classmethod
    def for_candidates(cls, user: torch.Tensor, hist: torch.Tensor, cands: torch.Tensor,
                       seq_len: int | None = None, hist_time: torch.Tensor | None = None,
                       target_time: int | torch.Tensor | None = None) -> "SeqBatch":
        """One user's request as an ordinary batch: one row per candidate ``cands [N, Fi]``, each
        with the user's features ``user [Fu]`` (or ``[1, Fu]``) and the whole history ``hist [T, Fi]``
        (all real events; ``seq_len`` defaults to ``T``), optionally with event times ``hist_time [T]``
        and the request time ``target_time`` (a number or ``[N]``). What a model without a serving
        cache scores, and the reference cached scoring is tested against."""
        N, T = cands.shape[0], hist.shape[0]
        times = {}
        if hist_time is not None:
            times = {"hist_time": hist_time.reshape(1, T).expand(N, T),
                     "target_time": torch.as_tensor(target_time, dtype=torch.long).reshape(-1).expand(N)}
        return cls(user=user.reshape(1, -1).expand(N, -1), target=cands, hist=hist.unsqueeze(0).expand(N, T, -1),
                   mask=torch.ones(N, T, dtype=torch.bool), seq_len=torch.full((N,), T if seq_len is None else seq_len),
                   label=torch.zeros(N), user_index=torch.zeros(N, dtype=torch.long), **times)


def gather_windows(seq_items: np.ndarray, offsets: np.ndarray, users: np.ndarray, pos: np.ndarray,
                   max_len: int, pad_to: int | None = None, seq_ts: np.ndarray | None = None):
    """Most recent ``min(pos, max_len)`` events before ``pos`` of each user, right-aligned.

    Returns ``(items [B, T] int64 with 0 padding, mask [B, T] bool)``, ``T`` = the longest window
    (or ``pad_to``, e.g. ``max_len`` for fixed-width batches as FuxiCTR makes them); with ``seq_ts``
    also the events' times ``[B, T]`` int64 (0 on padding), as a third item."""
    eff = np.minimum(pos, max_len).astype(np.int64)
    T = int(eff.max()) if len(eff) else 0
    T = max(T, pad_to or 0)
    col = np.arange(T, dtype=np.int64)[None, :]
    first = (T - eff)[:, None]                      # first real column of each row
    mask = col >= first
    idx = offsets[users].astype(np.int64)[:, None] + pos[:, None].astype(np.int64) - eff[:, None] + (col - first)
    idx = np.where(mask, idx, 0)
    items = np.where(mask, seq_items[idx], 0).astype(np.int64)
    if seq_ts is None:
        return items, mask
    return items, mask, np.where(mask, seq_ts[idx], 0).astype(np.int64)


def gather_batch(ds: SeqDataset, sample_idx: np.ndarray, max_len: int, pad_to: int | None = None) -> SeqBatch:
    """Build the :class:`SeqBatch` of the given sample indices (no per-sample Python)."""
    users = ds.sample_user[sample_idx]
    pos = ds.sample_pos[sample_idx]
    items, mask, *times = gather_windows(ds.seq_items, ds.offsets, users, pos, max_len, pad_to, ds.seq_ts)
    if times:
        times = {"hist_time": torch.from_numpy(times[0]),
                 "target_time": torch.from_numpy(ds.sample_ts[sample_idx].astype(np.int64))}
    target_items = ds.sample_target[sample_idx]
    user = ds.user_feats[users]
    if ds.context_feats.shape[1]:
        user = np.concatenate([user, ds.context_feats[sample_idx]], axis=1)
    return SeqBatch(
        user=torch.from_numpy(user.astype(np.int64)),
        target=torch.from_numpy(ds.item_feats[target_items].astype(np.int64)),
        hist=torch.from_numpy(ds.item_feats[items].astype(np.int64)),
        mask=torch.from_numpy(mask),
        seq_len=torch.from_numpy(pos.astype(np.int64)),
        label=torch.from_numpy(ds.label[sample_idx].astype(np.float32)),
        user_index=torch.from_numpy(users.astype(np.int64)),
        **(times or {}),
    )


def make_batches(lengths: np.ndarray, batch_size: int, *, shuffle: bool, bucket: bool,
                 chunk: int = 64, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Cut positions ``0..len(lengths)-1`` into batches.

    With ``bucket``: (shuffled) positions are split into chunks of ``chunk`` batches, each chunk is
    sorted by length and cut into batches, and the batch order is shuffled — batches hold samples
    of similar length but the epoch stays random. Without shuffle, bucketing sorts globally
    (best for evaluation; callers restore the order)."""
    n = len(lengths)
    rng = rng or np.random.default_rng()
    order = rng.permutation(n) if shuffle else np.arange(n)
    if bucket:
        if shuffle:
            span = batch_size * max(chunk, 1)
            parts = [order[s:s + span] for s in range(0, n, span)]
            order = np.concatenate([p[np.argsort(lengths[p], kind="stable")] for p in parts]) if parts else order
        else:
            order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    if shuffle and bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of padded slots among all ``B x T`` slots of the given batches."""
    total = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    real = sum(int(lengths[b].sum()) for b in batches)
    return 0.0 if total == 0 else 1.0 - real / total


class BatchLoader:
    """Batches of one split, as :class:`SeqBatch`: ``for batch in loader`` (the current epoch's
    order), or ``loader.batches(epoch)`` (positions into ``loader.indices``) with
    ``loader.batch(positions)`` where the caller needs to know which samples a batch holds.

    ``shuffle`` for training: a new order each epoch from ``seed + epoch`` (set ``loader.epoch``);
    ``bucket`` groups samples of similar length; ``pad_to`` pads every batch to that width (FuxiCTR's
    fixed-width layout, for comparisons) instead of the batch's own longest history."""

    def __init__(self, ds: SeqDataset, split: str, *, max_len: int, batch_size: int, shuffle: bool,
                 bucket: bool = True, chunk: int = 64, seed: int = 0, indices: np.ndarray | None = None,
                 pad_to: int | None = None):
        self.ds, self.max_len, self.batch_size = ds, max_len, batch_size
        self.shuffle, self.bucket, self.chunk, self.seed, self.pad_to = shuffle, bucket, chunk, seed, pad_to
        self.indices = ds.indices(split) if indices is None else np.asarray(indices)
        self.eff_len = np.minimum(ds.sample_pos[self.indices], max_len)
        self.epoch = 0

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Positions into ``self.indices`` for each batch of the given epoch."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        return make_batches(self.eff_len, self.batch_size, shuffle=self.shuffle, bucket=self.bucket,
                            chunk=self.chunk, rng=rng)

    def batch(self, positions: np.ndarray) -> SeqBatch:
        """The :class:`SeqBatch` of the samples at ``positions`` (into ``self.indices``)."""
        return gather_batch(self.ds, self.indices[positions], self.max_len, self.pad_to)

    def padding_fraction(self, epoch: int | None = None) -> float:
        return padding_fraction(self.eff_len, self.batches(epoch))

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for pos in self.batches():
            yield self.batch(pos)
