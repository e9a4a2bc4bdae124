"""The prepared dataset: per-user histories stored once, samples that point into them.

Layout (``E`` events, ``U`` users, ``N`` samples, ``I`` item vocabulary rows):

- ``seq_items [E] int32``: item vocabulary id of every event, users contiguous, time order;
- ``offsets [U+1] int64``: user ``u``'s events are ``seq_items[offsets[u]:offsets[u+1]]``;
- ``item_feats [I, Fi] int32``: row ``i`` = features of item id ``i`` (column 0 is ``i`` itself),
  row 0 = padding (all 0), row 1 = out-of-vocabulary;
- ``user_feats [U, Fu] int32``: column 0 = user vocabulary id;
- per sample: ``sample_user [N]``, ``sample_pos [N]`` (history = events ``0..pos-1`` of the user,
  so ``seq_len = pos``), ``sample_target [N] int32`` (the candidate's item id: event ``pos`` itself
  in the one-sample-per-event protocols, an impression's candidate in EB-NeRD / LongCTR data),
  ``label [N] float32``, ``split [N] int8`` (0/1/2 = train/valid/test);
- ``context_feats [N, Fc] int32``: per-sample categorical features (e.g. LongCTR sample columns
  that vary within a user); ``Fc`` is usually 0. A batch's user input is ``user_feats`` then these.
- ``seq_ts [E] int64`` and ``sample_ts [N] int64`` (optional, ``meta.has_time``): every event's
  timestamp and every sample's candidate time (the target event's own time in the one-sample-per-event
  protocols, the impression time in EB-NeRD), in the source's units. HSTU's time-bucket bias reads
  them; data without event times (LongCTR) has neither, and time-aware layers then leave time out.

Multi-valued item features (genres) take several columns of ``item_feats`` under one name (0 =
no value), pooled by the embedding layer. Pre-trained item vectors (``meta.pretrained``:
name -> width) are stored as ``pretrained_<name>.npy [I, P] float32``, looked up by item id.

Nothing of size samples x max_len is stored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import SeqctrError
from ..utils.io import atomic_dir

SPLITS = {"train": 0, "valid": 1, "test": 2}
# Version of the prepared layout (arrays and meta); part of every cache key, so a cache written by an
# older layout is rebuilt rather than misread.
LAYOUT_VERSION = 4
ARRAYS = ("seq_items", "offsets", "item_feats", "user_feats", "sample_user", "sample_pos", "sample_target", "label",
          "split", "context_feats")
OPTIONAL_ARRAYS = ("seq_ts", "sample_ts")   # saved when present (meta.has_time)


@dataclass
class DatasetMeta:
    """What a prepared dataset records beside its arrays (``meta.json``); checkpoints, bundles and
    results carry it as a plain dict (:meth:`to_dict`, read back by :meth:`from_dict`).

    ``item_features`` / ``user_features`` / ``context_features``: the names of a batch's item, user
    and per-sample columns; ``vocab_sizes``: rows of each feature's table (ids 0 = padding, 1 = out of
    vocabulary); ``pretrained``: name -> ``[I, P]`` shape of frozen item vectors; ``mean_train_len`` /
    ``mean_user_len``: LAIN's L0 choices (``model.lain.l0``); ``extra``: keys of a newer layout, kept."""

    name: str
    protocol: str
    origin: str
    source_sha256: str
    split_rule: dict
    item_features: list
    user_features: list
    vocab_sizes: dict
    n_users: int
    n_events: int
    layout: int = LAYOUT_VERSION
    context_features: list = field(default_factory=list)
    pretrained: dict = field(default_factory=dict)
    ignored_columns: list = field(default_factory=list)
    has_time: bool = False
    mean_train_len: float | None = None
    mean_user_len: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: "dict | DatasetMeta") -> "DatasetMeta":
        if isinstance(d, DatasetMeta):
            return d
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known and not k.startswith("_")})

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}

    @property
    def batch_user_features(self) -> list[str]:
        """Names of a batch's user columns: the per-user features, then the per-sample context."""
        return list(self.user_features) + list(self.context_features)


def dataset_meta(name, protocol, origin, checksum, split_rule, item_names, user_names, vocab_sizes, n_users,
                 n_events, **extra) -> DatasetMeta:
    """The :class:`DatasetMeta` of a dataset a reader has just built."""
    return DatasetMeta(name=name, protocol=protocol, origin=origin, source_sha256=checksum, split_rule=split_rule,
                       item_features=list(item_names), user_features=list(user_names),
                       vocab_sizes={k: int(v) for k, v in vocab_sizes.items()}, n_users=int(n_users),
                       n_events=int(n_events), **extra)


@dataclass
class SeqDataset:
    seq_items: np.ndarray
    offsets: np.ndarray
    item_feats: np.ndarray
    user_feats: np.ndarray
    sample_user: np.ndarray
    sample_pos: np.ndarray
    sample_target: np.ndarray
    label: np.ndarray
    split: np.ndarray
    context_feats: np.ndarray | None = None
    seq_ts: np.ndarray | None = None       # [E] int64 event times (None: the data has none)
    sample_ts: np.ndarray | None = None    # [N] int64 candidate times
    meta: DatasetMeta | None = None
    pretrained: dict = field(default_factory=dict)   # name -> [I, P] float32 (see the module doc)
    vocab_arrays: dict = field(default_factory=dict)  # feature -> raw ids of its vocabulary (saved beside meta)

    def __post_init__(self):
        if self.context_feats is None:
            self.context_feats = np.zeros((len(self.sample_user), 0), dtype=np.int32)
        if (self.seq_ts is None) != (self.sample_ts is None):
            raise ValueError("seq_ts and sample_ts come together (both or neither)")
        self.meta = DatasetMeta.from_dict(self.meta) if self.meta is not None else None
        if self.meta is not None:
            self.meta.has_time = self.seq_ts is not None

    @property
    def has_time(self) -> bool:
        """Whether events and samples carry timestamps (``seq_ts``, ``sample_ts``)."""
        return self.seq_ts is not None

    # --- schema -------------------------------------------------------------------------------
    @property
    def item_feature_names(self) -> list[str]:
        return self.meta.item_features

    @property
    def user_feature_names(self) -> list[str]:
        """Names of a batch's user columns: the per-user features, then the per-sample context."""
        return self.meta.batch_user_features

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return self.meta.vocab_sizes

    @property
    def seq_len(self) -> np.ndarray:
        """True history length of every sample (before truncation)."""
        return self.sample_pos

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise SeqctrError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        return np.flatnonzero(self.split == SPLITS[split])

    @property
    def mean_train_len(self) -> float:
        """Mean history length over training samples (long users weigh more: one sample per event)."""
        idx = self.indices("train")
        return float(self.sample_pos[idx].mean()) if len(idx) else 0.0

    @property
    def mean_user_len(self) -> float:
        """Mean over users (with a training sample) of their longest training history: the
        "dataset mean sequence length" with every user counted once."""
        idx = self.indices("train")
        if not len(idx):
            return 0.0
        users, pos = self.sample_user[idx], self.sample_pos[idx]
        if len(users) < 2 or (users[1:] >= users[:-1]).all():     # samples grouped by user: no scatter
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            return float(np.maximum.reduceat(pos, starts).mean())
        longest = np.zeros(len(self.offsets) - 1)
        np.maximum.at(longest, users, pos)
        has = np.zeros(len(longest), bool)
        has[users] = True
        return float(longest[has].mean())

    def record_lengths(self) -> "SeqDataset":
        """Record in ``meta`` the length statistics LAIN's L0 can be (``model.lain.l0``); returns self."""
        self.meta.mean_train_len, self.meta.mean_user_len = self.mean_train_len, self.mean_user_len
        return self

    # --- storage ------------------------------------------------------------------------------
    def save(self, folder: Path, replace: bool = True) -> None:
        """Write all arrays and ``meta.json`` into ``folder`` atomically (all or nothing); ``replace=False``
        keeps a folder another process wrote meanwhile (a cache folder named by its content)."""
        with atomic_dir(folder, replace=replace) as tmp:
            for name in ARRAYS + OPTIONAL_ARRAYS:
                if getattr(self, name) is not None:
                    np.save(tmp / f"{name}.npy", getattr(self, name), allow_pickle=False)
            for name, arr in self.vocab_arrays.items():
                np.save(tmp / f"vocab_{name}.npy", arr, allow_pickle=False)
            for name, arr in self.pretrained.items():
                np.save(tmp / f"pretrained_{name}.npy", arr, allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(self.meta.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "SeqDataset":
        """Open a prepared dataset. ``mmap`` (default): arrays are memory-mapped read-only, so pages
        are read on demand and shared by every process on the machine that opens the same folder
        (DDP ranks, evaluation workers) — a 10^8-event dataset does not cost its size per process."""
        folder = Path(folder)
        meta = DatasetMeta.from_dict(json.loads((folder / "meta.json").read_text()))
        mode = "r" if mmap else None
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False, mmap_mode=mode) for name in ARRAYS}
        if meta.has_time:
            arrays.update({name: np.load(folder / f"{name}.npy", allow_pickle=False, mmap_mode=mode)
                           for name in OPTIONAL_ARRAYS})
        pre = {n: np.load(folder / f"pretrained_{n}.npy", allow_pickle=False, mmap_mode=mode)
               for n in meta.pretrained}
        return cls(**arrays, meta=meta, pretrained=pre)

    def raw_vocab(self, folder: Path, feature: str) -> np.ndarray:
        """Raw ids of a vocabulary (index ``i`` -> raw value of id ``i + 2``)."""
        return np.load(Path(folder) / f"vocab_{feature}.npy", allow_pickle=False)
