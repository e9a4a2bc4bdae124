"""Turn :class:`Interactions` into a :class:`SeqDataset` by the ml100k-seqctr construction.

Per user, events sorted by ``(timestamp, item)``; event ``i >= min_history`` becomes a sample
(target = event ``i``, history = events ``0..i-1``). Split per user, chronologically: the last
``max(1, round(test_frac * n))`` samples -> test, as many before them -> valid, the rest -> train.
Vocabularies come from what training can see (the events up to each user's last training target);
ids seen only later map to the out-of-vocabulary id 1. Id 0 is padding.

Also the one entry point that resolves a source string to its reader and construction
(:func:`resolve_source`, :func:`prepare`): readers live in ``sources`` / ``longctr`` / ``ebnerd``,
encoding and feature tables in ``encode``, the layout in ``dataset``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError, SeqctrError, check_keys
from ..utils.io import seqctr_home
from . import ebnerd, longctr
from .dataset import LAYOUT_VERSION, SeqDataset, dataset_meta
from .encode import encode, item_feature_table, user_feature_table
from .sources import (ML100K_MEMBERS, Interactions, ResolvedSource, _names, fetch_ml100k, read_grouplens_ml100k,
                      read_ml100k_atomic, read_ml_latest, read_side_table, read_table)

PROTOCOL_VERSION = "ml100k-seqctr-v1"


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


def _events(name: str, protocol: str, files: list, read) -> ResolvedSource:
    """A source of events, built by the one-sample-per-event construction."""
    def build(rule):
        return build_dataset(read(), rule, name, protocol)

    return ResolvedSource(name, files, build, protocol)


def _side(spec: dict | None, default_key: str, what: str):
    """``{path, key, features, multi}`` -> (files, reader of the side table)."""
    if not spec:
        return [], lambda: None
    spec = dict(spec)
    check_keys(spec, ("path", "key", "features", "multi"), f"data.{what}")
    if "path" not in spec:
        raise SeqctrError(f"data.{what}: needs a path (keys: path, key, features, multi)")
    p = Path(spec["path"]).expanduser()
    if not p.is_file():
        raise InputError(f"{what} table does not exist", path=p)
    multi = spec.get("multi") or {}
    if isinstance(multi, (list, str)):
        multi = {m: "|" for m in _names(multi)}
    return [p], lambda: read_side_table(p, spec.get("key") or default_key, _names(spec.get("features")) or None,
                                        multi, what)


def resolve_source(source: str, columns: dict | None = None, label: dict | None = None,
                   home: Path | None = None, items: dict | None = None, users: dict | None = None) -> ResolvedSource:
    """Resolve a source string: ``ml100k`` / ``ml-latest-small`` (built in), a GroupLens or recbole
    ml-100k folder, a LongCTR folder, an EB-NeRD folder, or an interactions table (with optional
    item / user side tables)."""
    if source == "ml100k":
        raw = fetch_ml100k(home)
        return _events("ml100k", "ml100k-seqctr-v1", [raw / m for m in ML100K_MEMBERS],
                       lambda: read_ml100k_atomic(raw))
    if source in ("ml-latest-small", "mlls"):
        from .builtin import ml_latest_small

        folder = ml_latest_small()
        return _events("ml-latest-small", "mlls-seqctr-v1", [folder / "ratings.csv", folder / "movies.csv"],
                       lambda: read_ml_latest(folder))
    p = Path(source).expanduser()
    if not p.exists():
        raise InputError("path does not exist (use 'ml100k', 'ml-latest-small', a GroupLens ml-100k folder, a "
                         "LongCTR or EB-NeRD folder, or a parquet/CSV interactions table)", path=p)
    if p.is_dir():
        if (p / "u.data").is_file():
            files = [p / "u.data", p / "u.item", p / "u.user"]
            for f in files:
                if not f.is_file():
                    raise InputError("GroupLens ml-100k file missing", path=f)
            return _events("ml100k", "ml100k-seqctr-v1", files, lambda: read_grouplens_ml100k(p))
        if (p / "ml-100k.inter").is_file():
            return _events("ml100k", "ml100k-seqctr-v1", [p / m for m in ML100K_MEMBERS],
                           lambda: read_ml100k_atomic(p))
        if (p / "ratings.csv").is_file() and (p / "movies.csv").is_file():
            return _events(p.name, "mlls-seqctr-v1", [p / "ratings.csv", p / "movies.csv"], lambda: read_ml_latest(p))
        if longctr.is_longctr(p):
            return longctr.resolve(p)
        if ebnerd.is_ebnerd(p):
            return ebnerd.resolve(p)
        raise InputError("folder is none of: GroupLens ml-100k (u.data), recbole ml-100k (ml-100k.inter), "
                         "MovieLens latest (ratings.csv + movies.csv), LongCTR (train.parquet + user_info.parquet), "
                         "EB-NeRD (behaviors.parquet + history.parquet)", path=p)
    if p.stat().st_size == 0:
        raise InputError("file is empty", path=p)
    item_files, read_items = _side(items, (columns or {}).get("item", "item"), "items")
    user_files, read_users = _side(users, (columns or {}).get("user", "user"), "users")

    def read():
        inter = read_table(p, columns, label)
        inter.items, inter.users = read_items(), read_users()
        return inter

    return _events(p.stem, "table-v1", [p] + item_files + user_files, read)


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
