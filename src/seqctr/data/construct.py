"""Turn :class:`Interactions` into a :class:`SeqDataset` by the ml100k-seqctr construction.

Per user, events sorted by ``(timestamp, item)``; event ``i >= min_history`` becomes a sample
(target = event ``i``, history = events ``0..i-1``). Split per user, chronologically: the last
``max(1, round(test_frac * n))`` samples -> test, as many before them -> valid, the rest -> train.
Vocabularies come from what training can see (the events up to each user's last training target);
ids seen only later map to the out-of-vocabulary id 1. Id 0 is padding.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..utils.io import seqctr_home
from .dataset import SeqDataset
from .sources import Interactions, resolve_source

PROTOCOL_VERSION = "ml100k-seqctr-v1"
PAD, OOV = 0, 1


@dataclass
class SplitRule:
    valid_frac: float = 0.1
    test_frac: float = 0.1
    min_history: int = 1

    @classmethod
    def from_dict(cls, d: dict | None) -> "SplitRule":
        d = dict(d or {})
        unknown = set(d) - {"valid_frac", "test_frac", "min_history"}
        if unknown:
            raise ConfigError(f"data.split: unknown key(s) {sorted(unknown)}")
        rule = cls(**d)
        if not (0 <= rule.valid_frac < 1 and 0 <= rule.test_frac < 1) or rule.min_history < 0:
            raise ConfigError(f"data.split: fractions must be in [0, 1) and min_history >= 0, got {d}")
        return rule


def _sort_key(raw: np.ndarray) -> np.ndarray:
    """Integer sort key of raw ids: numeric order when all ids are integers, else string order."""
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    try:
        return np.array([int(x) for x in raw], dtype=np.int64)
    except (ValueError, TypeError):
        return np.unique(raw.astype(str), return_inverse=True)[1].astype(np.int64)


def _encode(raw: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw values to ids ``2..`` for values present where ``known`` is True, else OOV (1).

    Returns ``(ids [len(raw)], vocabulary of raw values in id order starting at id 2)``."""
    as_str = raw.astype(str)
    vocab = np.unique(as_str[known])
    pos = np.searchsorted(vocab, as_str)
    pos_c = np.minimum(pos, max(len(vocab) - 1, 0))
    hit = (len(vocab) > 0) & (vocab[pos_c] == as_str) if len(vocab) else np.zeros(len(raw), bool)
    ids = np.where(hit, pos_c + 2, OOV).astype(np.int32)
    return ids, vocab


def build_dataset(inter: Interactions, split: SplitRule, name: str) -> SeqDataset:
    """Build samples, splits and vocabularies (vectorised; one pass of sorting)."""
    n_events = len(inter.user)
    if n_events == 0:
        raise InputError("no interactions", path=inter.origin)
    ukey = _sort_key(inter.user)
    order = np.lexsort((_sort_key(inter.item), inter.timestamp, ukey))
    ukey_s = ukey[order]
    starts = np.flatnonzero(np.r_[True, ukey_s[1:] != ukey_s[:-1]])
    offsets = np.r_[starts, n_events].astype(np.int64)
    counts = np.diff(offsets)
    n_users = len(counts)
    user_of_event = np.repeat(np.arange(n_users), counts)
    pos_in_user = np.arange(n_events) - offsets[user_of_event]

    # samples and split per user
    n_samp = np.maximum(counts - split.min_history, 0)
    n_test = np.minimum(np.where(n_samp > 0, np.maximum(1, np.round(split.test_frac * n_samp)), 0), n_samp)
    n_valid = np.minimum(np.where(n_samp > 0, np.maximum(1, np.round(split.valid_frac * n_samp)), 0),
                         n_samp - n_test)
    if split.test_frac == 0:
        n_test = np.zeros_like(n_samp)
    if split.valid_frac == 0:
        n_valid = np.zeros_like(n_samp)
    n_train = n_samp - n_test - n_valid
    is_sample = pos_in_user >= split.min_history
    k = pos_in_user - split.min_history  # sample rank within user
    u = user_of_event
    sp = np.where(k < n_train[u], 0, np.where(k < n_train[u] + n_valid[u], 1, 2)).astype(np.int8)
    train_visible = pos_in_user < (split.min_history + n_train[u])  # events training can see

    # vocabularies (from train-visible events only)
    item_raw = inter.item[order]
    item_ids, item_vocab = _encode(item_raw, train_visible)
    user_raw = inter.user[order]
    user_has_train = (n_train > 0)[u]
    user_ids_ev, user_vocab = _encode(user_raw, user_has_train)
    vocab_arrays = {"item_id": item_vocab, "user_id": user_vocab}
    vocab_sizes = {"item_id": len(item_vocab) + 2, "user_id": len(user_vocab) + 2}

    # item feature table [I, Fi]: column 0 = the item id, then categorical item features
    item_feature_names = ["item_id"] + list(inter.item_features)
    item_feats = np.zeros((vocab_sizes["item_id"], len(item_feature_names)), dtype=np.int32)
    item_feats[:, 0] = np.arange(vocab_sizes["item_id"])
    item_feats[OOV, 0] = OOV
    first = np.unique(item_ids, return_index=True)[1]  # first event of each item id
    for j, (fname, col) in enumerate(inter.item_features.items(), start=1):
        ids, voc = _encode(col[order], train_visible)
        vocab_arrays[fname], vocab_sizes[fname] = voc, len(voc) + 2
        item_feats[item_ids[first], j] = ids[first]
        item_feats[OOV, j] = OOV

    # user feature table [U, Fu]
    user_feature_names = ["user_id"] + list(inter.user_features)
    user_feats = np.zeros((n_users, len(user_feature_names)), dtype=np.int32)
    ufirst = offsets[:-1]
    user_feats[:, 0] = user_ids_ev[ufirst]
    for j, (fname, col) in enumerate(inter.user_features.items(), start=1):
        ids, voc = _encode(col[order], user_has_train)
        vocab_arrays[fname], vocab_sizes[fname] = voc, len(voc) + 2
        user_feats[:, j] = ids[ufirst]

    sel = np.flatnonzero(is_sample)
    ds = SeqDataset(
        seq_items=item_ids.astype(np.int32),
        offsets=offsets,
        item_feats=item_feats,
        user_feats=user_feats,
        sample_user=user_of_event[sel].astype(np.int32),
        sample_pos=pos_in_user[sel].astype(np.int32),
        label=inter.label[order][sel].astype(np.float32),
        split=sp[sel],
        meta={
            "name": name,
            "protocol": PROTOCOL_VERSION,
            "origin": inter.origin,
            "source_sha256": inter.checksum,
            "split_rule": split.__dict__,
            "item_features": item_feature_names,
            "user_features": user_feature_names,
            "vocab_sizes": vocab_sizes,
            "n_users": int(n_users),
            "n_events": int(n_events),
            "_vocab_arrays": vocab_arrays,
        },
    )
    ds.meta["mean_train_len"] = ds.mean_train_len
    return ds


def cache_key(name: str, checksum: str, split: SplitRule, label: dict, columns: dict) -> str:
    blob = json.dumps({"p": PROTOCOL_VERSION, "sha": checksum, "split": split.__dict__,
                       "label": label, "columns": columns}, sort_keys=True)
    return f"{name}-{PROTOCOL_VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def prepare(source: str = "ml100k", *, columns: dict | None = None, label: dict | None = None,
            split: dict | None = None, home: Path | None = None, force: bool = False) -> tuple[SeqDataset, Path, bool]:
    """Prepare (or load from cache) a dataset. Returns ``(dataset, cache folder, was_cached)``.

    The cache key covers the protocol version, the source files' checksum and the rules, so the
    second run with the same inputs does no preprocessing."""
    home = Path(home or seqctr_home())
    rule = SplitRule.from_dict(split)
    src = resolve_source(source, columns, label, home)
    key = cache_key(src.name, src.checksum, rule, label or {}, columns or {})
    folder = home / "prepared" / key
    if folder.is_dir() and (folder / "meta.json").is_file() and not force:
        return SeqDataset.load(folder), folder, True
    ds = build_dataset(src.read(), rule, src.name)
    ds.save(folder)
    ds.meta.pop("_vocab_arrays", None)
    return ds, folder, False


def prepare_config(data, source: str | None = None) -> tuple[SeqDataset, Path, bool]:
    """:func:`prepare` for a run config's ``data`` section (``source`` overrides its source)."""
    return prepare(source or data.source, columns=data.columns, label=data.label, split=data.split)
