"""Vectorised encoding of raw values into vocabulary ids, and side tables of item / user features.

Id 0 is padding ("no value"), id 1 the out-of-vocabulary id, known values take ids ``2..`` in
sorted order of their string form. Multi-valued features (``Adventure|Animation``) are held as
:class:`Multi` (CSR: ``offsets [R+1]`` into ``values [K]``) and encoded into a padded ``[R, M]``
block, ``M`` = the most values any row has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
        u, inv = np.unique(raw, return_inverse=True)
        return u.astype(str), inv.reshape(-1)
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(raw, from_pandas=True) if raw.dtype.kind == "O" else pa.array(raw)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    enc = pc.dictionary_encode(pc.fill_null(arr, "")).combine_chunks() if isinstance(arr, pa.ChunkedArray) \
        else pc.dictionary_encode(pc.fill_null(arr, ""))
    return (np.asarray(enc.dictionary.to_numpy(zero_copy_only=False)).astype(str),
            np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64))


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


def lookup(vocab: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Ids of ``raw`` values in a vocabulary made by :func:`encode` (unknown -> OOV)."""
    s = as_str(raw)
    if len(vocab) == 0:
        return np.full(len(s), OOV, dtype=np.int32)
    pos = np.minimum(np.searchsorted(vocab, s), len(vocab) - 1)
    return np.where(vocab[pos] == s, pos + 2, OOV).astype(np.int32)


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


def split_multi(col, sep: str, path, name) -> Multi:
    """A string column ``a|b|c`` (or an Arrow list column) -> :class:`Multi`. Empty strings and
    nulls are rows with no values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lists = col
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        filled = pc.fill_null(col, "")
        lists = pc.split_pattern(filled, sep)
        # "" splits to [""]: drop empty tokens
        flat = pc.list_flatten(lists)
        keep = pc.not_equal(flat, "")
        parent = pc.list_parent_indices(lists)
        counts = np.bincount(np.asarray(parent)[np.asarray(keep, bool)], minlength=len(col))
        return Multi(np.r_[0, np.cumsum(counts)].astype(np.int64),
                     np.asarray(pc.filter(flat, keep).to_numpy(zero_copy_only=False)))
    else:
        raise InputError(f"a multi-valued column must hold strings ('a{sep}b') or lists, got type {col.type}",
                         path=path, column=name)
    lists = pc.fill_null(lists, pa.scalar([], type=lists.type)) if lists.null_count else lists
    offsets = np.asarray(lists.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    offsets = offsets - offsets[0]
    values = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False))
    return Multi(offsets, values)


def read_side_table(path: str | Path, key: str, features: list[str] | None = None,
                    multi: dict | None = None, what: str = "items") -> SideTable:
    """Read an item (or user) side table: one row per ``key``, the given feature columns (default:
    every other column). ``multi`` maps multi-valued columns to their separator (``{genres: "|"}``).
    Duplicate keys, a missing key column or a missing feature column are errors naming the file,
    column and row."""
    from .sources import _column, _ids, _read_table

    path = Path(path)
    table = _read_table(path)
    keys = _ids(_column(table, key, path), path, key)
    s = as_str(keys)
    order = np.argsort(s, kind="stable")
    dup = np.flatnonzero(s[order][1:] == s[order][:-1])
    if len(dup):
        rows = np.sort(order[dup[0]:dup[0] + 2])
        raise InputError(f"duplicate key {str(s[rows[1]])!r} in the {what} table (first at row {rows[0] + 1})",
                         path=path, column=key, row=int(rows[1]) + 1)
    multi = dict(multi or {})
    names = list(features) if features else [c for c in table.column_names if c != key]
    for m in multi:
        if m not in names:
            names.append(m)
    out = SideTable(key=keys, path=str(path))
    for name in names:
        col = _column(table, name, path)
        if name in multi:
            out.multi[name] = split_multi(col, multi[name] or "|", path, name)
        else:
            out.single[name] = _categorical(col)
    return out


def _categorical(col) -> np.ndarray:
    """A categorical column as raw values (nulls -> ''), without a per-row Python loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_floating(col.type):
        arr = col.to_numpy(zero_copy_only=False)
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if whole.all():
            return arr.astype(np.int64)
    col = pc.cast(col, pa.string())
    return np.asarray(pc.fill_null(col, "").to_numpy(zero_copy_only=False))
