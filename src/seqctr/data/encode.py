"""Vectorised encoding of raw values into vocabulary ids, and side tables of item / user features
(reading them from files is :mod:`seqctr.data.sources`' job).

Id 0 is padding ("no value"), id 1 the out-of-vocabulary id, known values take ids ``2..`` in
sorted order of their string form. Multi-valued features (``Adventure|Animation``) are held as
:class:`Multi` (CSR: ``offsets [R+1]`` into ``values [K]``) and encoded into a padded ``[R, M]``
block, ``M`` = the most values any row has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
import numpy as np

from ..errors import InputError

PAD, OOV = 0, 1


def as_str(raw: np.ndarray) -> np.ndarray:
    """Raw values as a NumPy unicode array (ints, floats holding ints, strings; None -> '')."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "O":
        raw = np.where(np.equal(raw, None), "", raw)
    return raw.astype(str)


def _unique_inverse(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distinct values as strings, index of each row's value)`` without turning every row into a
    string: integers through ``np.unique``, anything else through PyArrow's dictionary encoding."""
    raw = np.asarray(raw)
    if raw.dtype.kind in "iu":
        u, inv = int_unique_inverse(raw)
        return u.astype(str), inv
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(raw, from_pandas=True) if raw.dtype.kind == "O" else pa.array(raw)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    enc = pc.dictionary_encode(pc.fill_null(arr, "")).combine_chunks() if isinstance(arr, pa.ChunkedArray) \
        else pc.dictionary_encode(pc.fill_null(arr, ""))
    return (np.asarray(enc.dictionary.to_numpy(zero_copy_only=False)).astype(str),
            np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64))


def int_unique_inverse(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(raw, return_inverse=True)`` for integers, in O(n) when the ids span a range not
    much larger than their count (a lookup table over ``[min, max]``, no sort); ``inv`` is int32
    when it fits (half the memory of int64 on 10^8 events)."""
    raw = np.asarray(raw).reshape(-1)
    if not len(raw):
        return raw.astype(np.int64), np.zeros(0, np.int32)
    lo, hi = int(raw.min()), int(raw.max())
    span = hi - lo + 1
    if span <= 4 * len(raw) + (1 << 20):
        present = np.zeros(span, bool)
        present[raw - lo] = True
        values = np.flatnonzero(present) + lo
        code = np.cumsum(present, dtype=np.int64) - 1
        code = code.astype(np.int32) if len(values) < 2**31 else code
        return values.astype(np.int64), code[raw - lo]
    u, inv = np.unique(raw, return_inverse=True)
    inv = inv.reshape(-1)
    return u, inv.astype(np.int32) if len(u) < 2**31 else inv


def encode(raw: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw values to ids ``2..`` for values present where ``known`` is True, else OOV (1).

    Returns ``(ids [len(raw)] int32, vocabulary of raw values (strings) in id order from id 2)``: the
    known values sorted as strings (ints by their decimal form). Vectorised over the distinct values,
    not the rows (an id column of millions of rows is never turned into strings row by row)."""
    values, inv = _unique_inverse(raw)
    is_known = np.zeros(len(values), bool)
    is_known[inv[np.asarray(known, bool)]] = True
    kv = values[is_known]
    order = np.argsort(kv, kind="stable")
    vocab = kv[order]
    id_of = np.full(len(values), OOV, dtype=np.int32)
    id_of[np.flatnonzero(is_known)[order]] = np.arange(len(vocab), dtype=np.int32) + 2
    return id_of[inv], vocab


def sort_order(vocab: np.ndarray) -> np.ndarray | None:
    """``None`` when a vocabulary is sorted (as :func:`encode` makes it), else the order that sorts it
    (a grown vocabulary: new values after the old ones, :mod:`seqctr.data.remap`)."""
    vocab = np.asarray(vocab)
    if len(vocab) < 2 or bool((vocab[1:] > vocab[:-1]).all()):
        return None
    return np.argsort(vocab, kind="stable")


def lookup(vocab: np.ndarray, raw: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Ids of ``raw`` values in a vocabulary (unknown -> OOV): sorted as :func:`encode` makes it, or
    in any order when ``order`` (:func:`sort_order`) is given."""
    s = as_str(raw)
    if len(vocab) == 0:
        return np.full(len(s), OOV, dtype=np.int32)
    sv = vocab if order is None else vocab[order]
    pos = np.minimum(np.searchsorted(sv, s), len(vocab) - 1)
    row = pos if order is None else order[pos]
    return np.where(sv[pos] == s, row + 2, OOV).astype(np.int32)


@dataclass(frozen=True)
class Vocabulary:
    """How raw ids become rows of a feature's table, for data and serving alike. Row 0 is padding.

    - encoded (``values``: the raw values of ids 2.. in id order, made by :func:`encode`): a known
      value is its row, an unknown one the out-of-vocabulary row 1;
    - ids as given (LongCTR, already encoded: ``values`` None): an integer ``r`` is row ``r + offset``
      when that row exists and is not padding (nor, with ``offset >= 2``, below ``offset``); there is
      no out-of-vocabulary row (row 1 is a real id), so anything else is the padding row, "no information".
    """

    values: np.ndarray | None = None
    size: int = 0
    offset: int = 0

    @cached_property
    def _order(self) -> np.ndarray | None:
        return None if self.values is None else sort_order(self.values)

    @property
    def unknown(self) -> int:
        """The row of an unknown id: OOV when encoded, padding when ids are given."""
        return OOV if self.values is not None else PAD

    def ids(self, raw) -> np.ndarray:
        """Rows ``[N]`` of raw ids (strings or integers)."""
        raw = np.asarray(raw, dtype=object)
        if self.values is not None:
            return lookup(self.values, raw, self._order) if len(raw) else np.zeros(0, np.int32)
        out = np.full(len(raw), PAD, np.int64)
        lowest = max(1, self.offset)
        for i, r in enumerate(raw):
            r = str(r)
            if r.lstrip("-").isdigit() and lowest <= int(r) + self.offset < self.size:
                out[i] = int(r) + self.offset
        return out


@dataclass
class Multi:
    """A multi-valued column: row ``r`` holds ``values[offsets[r]:offsets[r+1]]``."""

    offsets: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> "Multi":
        """The rows ``rows`` (vectorised; ``-1`` = a row with no values)."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.where(rows >= 0, np.diff(self.offsets)[np.maximum(rows, 0)], 0)
        offs = np.r_[0, np.cumsum(counts)].astype(np.int64)
        src = np.repeat(self.offsets[np.maximum(rows, 0)] - offs[:-1], counts) + np.arange(offs[-1])
        return Multi(offs, self.values[src])


def encode_multi(col: Multi, known_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode a multi-valued column into ``ids [R, M] int32`` (0-padded) and its vocabulary; a value
    counts as known when it occurs in a ``known_rows`` row."""
    counts = np.diff(col.offsets)
    row_of = np.repeat(np.arange(len(col)), counts)
    ids, vocab = encode(col.values, np.asarray(known_rows, bool)[row_of])
    out = np.zeros((len(col), max(int(counts.max(initial=0)), 1)), dtype=np.int32)
    out[row_of, np.arange(len(row_of)) - col.offsets[row_of]] = ids
    return out, vocab


@dataclass
class SideTable:
    """Features of items (or users) by key, read once from their own table.

    ``key [R]`` raw keys (unique), ``single``: name -> raw values ``[R]``, ``multi``: name -> :class:`Multi`."""

    key: np.ndarray
    single: dict = field(default_factory=dict)
    multi: dict = field(default_factory=dict)
    path: str = ""

    def rows_of(self, raw_keys: np.ndarray) -> np.ndarray:
        """Row of each raw key in this table, ``-1`` where absent."""
        keys = as_str(self.key)
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        q = as_str(raw_keys)
        if len(sk) == 0:
            return np.full(len(q), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sk, q), len(sk) - 1)
        return np.where(sk[pos] == q, order[pos], -1).astype(np.int64)

    def names(self) -> list[str]:
        return list(self.single) + list(self.multi)


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
    first = np.unique(item_ids, return_index=True)[1] if per_event else None  # first event of each item id
    for fname, col in per_event.items():
        ids, voc = encode(col, known)
        block = np.zeros((item_vocab_size, 1), dtype=np.int32)
        block[item_ids[first], 0] = ids[first]
        block[OOV, 0] = OOV
        cols.append(block), names.append(fname)
        vocabs[fname], sizes[fname] = voc, len(voc) + 2
    if side is not None:
        rows = side.rows_of(item_vocab)                       # side row of item id 2.. (or -1)
        for fname, enc, voc in side_columns(side, rows, rows >= 0, set(vocabs) | {"item_id"}, "item"):
            block = np.zeros((item_vocab_size, enc.shape[1]), dtype=np.int32)
            block[2:] = enc
            block[OOV, 0] = OOV
            cols.append(block), names.extend([fname] * block.shape[1])
            vocabs[fname], sizes[fname] = voc, len(voc) + 2
    return np.concatenate(cols, axis=1), names, vocabs, sizes


def side_columns(side: SideTable, rows: np.ndarray, known: np.ndarray, taken: set, what: str):
    """Encode every feature of a side table for the entities whose side rows are ``rows`` (``-1``:
    absent, which gets no value): yields ``(name, ids [R, width], vocabulary)``, one column for a
    single-valued feature, ``M`` for a multi-valued one. Vocabularies come from ``known`` rows; a
    feature already in ``taken`` is an error (given twice)."""
    for fname in side.names():
        if fname in taken:
            raise InputError(f"{what} feature {fname!r} is given twice (interactions and side table)",
                             path=side.path, column=fname)
        if fname in side.single:
            ids, voc = encode(side.single[fname][np.maximum(rows, 0)], known)
            yield fname, np.where(rows >= 0, ids, PAD)[:, None].astype(np.int32), voc
        else:
            enc, voc = encode_multi(side.multi[fname].take(rows), known)
            yield fname, enc, voc


def user_feature_table(user_raw: np.ndarray, user_ids: np.ndarray, per_user: dict, known: np.ndarray,
                       side: SideTable | None):
    """The user feature table ``[U, Fu]`` (column 0 = the user id; one column per feature: the value
    of each user's first event for ``per_user`` columns (one value per user row), side-table values
    by raw user id; multi-valued user features take ``M`` columns like item ones). ``known`` (per
    user row): users whose values enter the vocabularies. Returns ``(table, names, vocabularies, sizes)``."""
    cols, names, vocabs, sizes = [user_ids[:, None].astype(np.int32)], ["user_id"], {}, {}
    for fname, col in per_user.items():
        ids, voc = encode(col, known)
        cols.append(ids[:, None]), names.append(fname)
        vocabs[fname], sizes[fname] = voc, len(voc) + 2
    if side is not None:
        rows = side.rows_of(user_raw)
        for fname, block, voc in side_columns(side, rows, (rows >= 0) & known, set(vocabs) | {"user_id"}, "user"):
            cols.append(block), names.extend([fname] * block.shape[1])
            vocabs[fname], sizes[fname] = voc, len(voc) + 2
    return np.concatenate(cols, axis=1), names, vocabs, sizes
