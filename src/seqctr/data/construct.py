"""Turn :class:`Interactions` into a :class:`SeqDataset` by the ml100k-seqctr construction.

Per user, events sorted by ``(timestamp, item)``; event ``i >= min_history`` becomes a sample
(target = event ``i``, history = events ``0..i-1``). Split per user, chronologically: the last
``max(1, round(test_frac * n))`` samples -> test, as many before them -> valid, the rest -> train.
Vocabularies come from what training can see (the events up to each user's last training target);
ids seen only later map to the out-of-vocabulary id 1. Id 0 is padding.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError, check_keys
from ..utils.io import seqctr_home
from .dataset import SeqDataset
from .encode import OOV, PAD, SideTable, encode, encode_multi  # noqa: F401  (PAD/OOV re-exported)
from .sources import Interactions, resolve_source

PROTOCOL_VERSION = "ml100k-seqctr-v1"
# Version of the prepared layout (arrays and meta); part of every cache key, so a cache written by an
# older layout is rebuilt rather than misread.
LAYOUT_VERSION = 3


@dataclass
class SplitRule:
    """How samples are split: per user, chronologically, for one-sample-per-event sources (EB-NeRD:
    by time over impressions; LongCTR: the splits as given)."""

    valid_frac: float = 0.1      # share of each user's samples for validation (at least one)
    test_frac: float = 0.1       # share of each user's samples for test (the latest; at least one)
    min_history: int = 1         # events before a user's first sample (1 drops the empty-history event)

    @classmethod
    def from_dict(cls, d: dict | None) -> "SplitRule":
        d = dict(d or {})
        check_keys(d, [f.name for f in dataclasses.fields(cls)], "data.split")
        rule = cls(**d)
        if not (0 <= rule.valid_frac < 1 and 0 <= rule.test_frac < 1) or rule.min_history < 0:
            raise ConfigError(f"data.split: fractions must be in [0, 1) and min_history >= 0, got {d}")
        return rule


def _sort_key(raw: np.ndarray) -> np.ndarray:
    """Integer sort key of raw ids: numeric order when all ids are integers (or integer strings),
    else string order. Vectorised (PyArrow casts, dictionary ranks), no per-row Python."""
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return np.asarray(pc.cast(pa.array(raw, from_pandas=True), pa.int64()).to_numpy(zero_copy_only=False),
                          dtype=np.int64)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError):
        from .encode import _unique_inverse

        values, inv = _unique_inverse(raw)
        rank = np.empty(len(values), np.int64)
        rank[np.argsort(values, kind="stable")] = np.arange(len(values))
        return rank[inv]


def item_feature_table(item_vocab_size: int, item_ids: np.ndarray, per_event: dict, known: np.ndarray,
                       side: SideTable | None, item_vocab: np.ndarray) -> tuple[np.ndarray, list, dict, dict]:
    """The item feature table ``[I, C]``: column 0 = the item id, then one column per single-valued
    feature and ``M`` columns per multi-valued one (named once per column).

    ``per_event``: name -> raw value per event (taken from each item's first event);
    ``side``: an item side table keyed by raw item id (rows of OOV or absent items stay 0, "no
    value"). Vocabularies come from ``known`` events / side rows of known items.
    Returns ``(table, column names, vocabularies, vocabulary sizes)``."""
    cols, names, vocabs, sizes = [np.arange(item_vocab_size, dtype=np.int32)[:, None]], ["item_id"], {}, {}
    cols[0][OOV, 0] = OOV
    first = np.unique(item_ids, return_index=True)[1]  # first event of each item id
    for fname, col in per_event.items():
        ids, voc = encode(col, known)
        block = np.zeros((item_vocab_size, 1), dtype=np.int32)
        block[item_ids[first], 0] = ids[first]
        block[OOV, 0] = OOV
        cols.append(block), names.append(fname)
        vocabs[fname], sizes[fname] = voc, len(voc) + 2
    if side is not None:
        rows = side.rows_of(item_vocab)                       # side row of item id 2.. (or -1)
        for fname in side.names():
            if fname in vocabs or fname == "item_id":
                raise InputError(f"item feature {fname!r} is given twice (interactions and side table)",
                                 path=side.path, column=fname)
            if fname in side.single:
                raw = side.single[fname]
                ids, voc = encode(raw[np.maximum(rows, 0)], rows >= 0)
                block = np.zeros((item_vocab_size, 1), dtype=np.int32)
                block[2:, 0] = np.where(rows >= 0, ids, PAD)
                block[OOV, 0] = OOV
            else:
                sub = side.multi[fname].take(rows)
                enc, voc = encode_multi(sub, rows >= 0)
                block = np.zeros((item_vocab_size, enc.shape[1]), dtype=np.int32)
                block[2:] = enc
                block[OOV, 0] = OOV
            cols.append(block), names.extend([fname] * block.shape[1])
            vocabs[fname], sizes[fname] = voc, len(voc) + 2
    return np.concatenate(cols, axis=1), names, vocabs, sizes


def user_feature_table(user_raw: np.ndarray, user_ids: np.ndarray, per_event: dict, first_event: np.ndarray,
                       known: np.ndarray, known_users: np.ndarray, side: SideTable | None):
    """The user feature table ``[U, Fu]`` (column 0 = the user id; one column per feature, first
    event's value for per-event features, side-table values by raw user id; multi-valued user
    features take ``M`` columns like item ones). ``known``: events whose values enter the
    vocabularies; ``known_users``: the same for side rows, per user row.
    Returns ``(table, names, vocabularies, sizes)``."""
    cols, names, vocabs, sizes = [user_ids[:, None].astype(np.int32)], ["user_id"], {}, {}
    for fname, col in per_event.items():
        ids, voc = encode(col, known)
        cols.append(ids[first_event][:, None]), names.append(fname)
        vocabs[fname], sizes[fname] = voc, len(voc) + 2
    if side is not None:
        rows = side.rows_of(user_raw)
        for fname in side.names():
            if fname in vocabs or fname == "user_id":
                raise InputError(f"user feature {fname!r} is given twice (interactions and side table)",
                                 path=side.path, column=fname)
            ok = (rows >= 0) & known_users
            if fname in side.single:
                ids, voc = encode(side.single[fname][np.maximum(rows, 0)], ok)
                block = np.where(rows >= 0, ids, PAD)[:, None].astype(np.int32)
            else:
                block, voc = encode_multi(side.multi[fname].take(rows), ok)
            cols.append(block), names.extend([fname] * block.shape[1])
            vocabs[fname], sizes[fname] = voc, len(voc) + 2
    return np.concatenate(cols, axis=1), names, vocabs, sizes


def build_dataset(inter: Interactions, split: SplitRule, name: str, protocol: str = PROTOCOL_VERSION) -> SeqDataset:
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
    item_ids, item_vocab = encode(item_raw, train_visible)
    user_raw = inter.user[order]
    user_has_train = (n_train > 0)[u]
    user_ids_ev, user_vocab = encode(user_raw, user_has_train)
    vocab_sizes = {"item_id": len(item_vocab) + 2, "user_id": len(user_vocab) + 2}
    ufirst = offsets[:-1]

    item_feats, item_names, ivocabs, isizes = item_feature_table(
        vocab_sizes["item_id"], item_ids, {n: c[order] for n, c in inter.item_features.items()}, train_visible,
        inter.items, item_vocab)
    user_feats, user_names, uvocabs, usizes = user_feature_table(
        user_raw[ufirst], user_ids_ev[ufirst], {n: c[order] for n, c in inter.user_features.items()}, ufirst,
        user_has_train, n_train > 0, inter.users)
    vocab_arrays = {"item_id": item_vocab, "user_id": user_vocab, **ivocabs, **uvocabs}
    vocab_sizes.update(isizes)
    vocab_sizes.update(usizes)

    sel = np.flatnonzero(is_sample)
    seq_items = item_ids.astype(np.int32)
    ds = SeqDataset(
        seq_items=seq_items,
        offsets=offsets,
        item_feats=item_feats,
        user_feats=user_feats,
        sample_user=user_of_event[sel].astype(np.int32),
        sample_pos=pos_in_user[sel].astype(np.int32),
        sample_target=seq_items[sel],
        label=inter.label[order][sel].astype(np.float32),
        split=sp[sel],
        meta=dataset_meta(name, protocol, inter.origin, inter.checksum, split.__dict__, item_names, user_names,
                          vocab_sizes, n_users, n_events, vocab_arrays),
    )
    ds.meta.update(ds.length_stats())
    return ds


def dataset_meta(name, protocol, origin, checksum, split_rule, item_names, user_names, vocab_sizes, n_users,
                 n_events, vocab_arrays, **extra) -> dict:
    """The ``meta`` every prepared dataset carries (``_vocab_arrays`` is saved beside it, not in it)."""
    return {"name": name, "protocol": protocol, "layout": LAYOUT_VERSION, "origin": origin,
            "source_sha256": checksum, "split_rule": split_rule, "item_features": item_names,
            "user_features": user_names, "vocab_sizes": {k: int(v) for k, v in vocab_sizes.items()},
            "n_users": int(n_users), "n_events": int(n_events), **extra, "_vocab_arrays": vocab_arrays}


def cache_key(name: str, protocol: str, checksum: str, rules: dict) -> str:
    """Folder name of a prepared dataset: its own name and protocol, plus a hash of the layout
    version, the source checksum and every rule that shapes the result."""
    blob = json.dumps({"layout": LAYOUT_VERSION, "p": protocol, "sha": checksum, **rules}, sort_keys=True,
                      default=str)
    return f"{name}-{protocol}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def prepare(source: str = "ml100k", *, columns: dict | None = None, label: dict | None = None,
            split: dict | None = None, items: dict | None = None, users: dict | None = None,
            home: Path | None = None, force: bool = False) -> tuple[SeqDataset, Path, bool]:
    """Prepare (or load from cache) a dataset. Returns ``(dataset, cache folder, was_cached)``.

    ``source``: ``ml100k`` | ``ml-latest-small`` (built in), a GroupLens ml-100k folder, a LongCTR
    folder, an EB-NeRD folder, or an interactions table (``columns`` / ``label`` describe it;
    ``items`` / ``users`` add side tables: ``{path, key, features, multi}``). The cache key covers
    the protocol, the layout version, the source files' checksum and the rules, so the second run
    with the same inputs does no preprocessing."""
    home = Path(home or seqctr_home())
    rule = SplitRule.from_dict(split)
    src = resolve_source(source, columns, label, home, items=items, users=users)
    rules = {"split": rule.__dict__, "label": label or {}, "columns": columns or {}, "items": items or {},
             "users": users or {}}
    key = cache_key(src.name, src.protocol, src.checksum, rules)
    folder = home / "prepared" / key
    if folder.is_dir() and (folder / "meta.json").is_file() and not force:
        return SeqDataset.load(folder), folder, True
    ds = src.build(rule)
    ds.save(folder)
    ds.meta.pop("_vocab_arrays", None)
    return ds, folder, False


def prepare_config(data, source: str | None = None) -> tuple[SeqDataset, Path, bool]:
    """:func:`prepare` for a run config's ``data`` section (``source`` overrides its source)."""
    return prepare(source or data.source, columns=data.columns, label=data.label, split=data.split,
                   items=data.items, users=data.users)
