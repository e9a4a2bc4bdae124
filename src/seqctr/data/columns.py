"""Column readers shared by every data reader and by table scoring: each turns one Arrow column into
NumPy, and every check names the file, the column and the row when input is bad."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError
from .encode import Multi


def get_column(table, name: str, path: Path):
    if name not in table.column_names:
        raise InputError(f"missing column (columns are {table.column_names})", path=path, column=name)
    return table.column(name)


def read_ids(col, path, name, row0: int = 0) -> np.ndarray:
    """An id column as NumPy (integers stay integers, floats holding integers become int64);
    ``row0``: rows before this chunk of the file, so errors name the row in the file."""
    arr = col.to_numpy(zero_copy_only=False)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise InputError("missing id", path=path, column=name, row=row0 + row)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise InputError(f"id is not an integer or string: {arr[bad.argmax()]!r}",
                             path=path, column=name, row=row0 + int(bad.argmax()) + 1)
        arr = arr.astype(np.int64)
    return arr


class BadTime(ValueError):
    """Entry ``index`` of a list of text times is neither a decimal integer nor a date."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def text_times(strs) -> np.ndarray:
    """Times written as text -> int64, each entry on its own: a decimal integer (``"17"``,
    ``"+5"``) as that number, else an ISO 8601 date in seconds since the epoch (UTC). The one
    reading of text times, for data columns and for served events alike; the first entry that is
    neither (``"soon"``, ``""``, ``"NaT"``) raises :class:`BadTime` with its index."""
    s = np.char.strip(np.asarray(strs, dtype=str))
    digits = np.char.isdigit(np.char.lstrip(s, "+-"))
    out = np.empty(len(s), dtype=np.int64)
    out[digits] = s[digits].astype(np.int64)
    rest = np.flatnonzero(~digits)
    with warnings.catch_warnings():          # "...Z": numpy reads it as UTC and warns that it does
        warnings.simplefilter("ignore", UserWarning)
        try:
            dates = s[rest].astype("datetime64[s]")
        except ValueError:                   # find the entry numpy could not read
            for i in rest:
                try:
                    np.datetime64(s[i], "s")
                except ValueError:
                    raise BadTime(int(i)) from None
            raise
    if np.isnat(dates).any():                # "" and "NaT" parse as not-a-time
        raise BadTime(int(rest[np.isnat(dates).argmax()]))
    out[rest] = dates.astype(np.int64)
    return out


def read_times(col, path, name, row0: int = 0) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise InputError("missing timestamp", path=path, column=name, row=row0 + row)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError("timestamp is NaN or infinite", path=path, column=name,
                             row=row0 + int((~np.isfinite(arr)).argmax()) + 1)
        return arr.astype(np.int64)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        strs = col.to_numpy(zero_copy_only=False)
        try:
            return text_times(strs)
        except BadTime as e:
            raise InputError(f"timestamp is neither a number nor a date: {strs[e.index]!r}",
                             path=path, column=name, row=row0 + e.index + 1) from None
    raise InputError(f"timestamp has type {t}; expected a number or a date", path=path, column=name)


def read_labels(table, rule: dict, path: Path, row0: int = 0) -> np.ndarray:
    name = rule.get("column", "label")
    col = get_column(table, name, path)
    import pyarrow as pa
    import pyarrow.compute as pc

    if "positive" in rule:  # categorical label: e.g. behaviour in {buy, cart}
        vals = pc.cast(col, pa.string())
        hit = pc.is_in(vals, value_set=pa.array([str(v) for v in rule["positive"]], pa.string()))
        return np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=np.float32)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise InputError(f"label/rating must be numeric (or give label.positive values), got type {col.type}",
                         path=path, column=name)
    arr = col.to_numpy(zero_copy_only=False)
    arr = np.asarray(arr, dtype=np.float64)  # nulls become NaN
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputError("NaN or missing value", path=path, column=name, row=row0 + int(bad.argmax()) + 1)
    if "threshold" in rule:
        return (arr >= float(rule["threshold"])).astype(np.float32)
    if not np.isin(arr, (0.0, 1.0)).all():
        row = int((~np.isin(arr, (0.0, 1.0))).argmax()) + 1
        raise InputError(f"label must be 0 or 1 (or set label.threshold), got {arr[row - 1]!r}",
                         path=path, column=name, row=row0 + row)
    return arr.astype(np.float32)


def feature_names(v) -> list[str]:
    """A feature list given as a list or as ``a+b`` / ``a,b`` text."""
    if not v:
        return []
    if isinstance(v, str):
        return [x.strip() for x in v.replace("+", ",").split(",") if x.strip()]
    return [str(x) for x in v]


def list_column(table, name: str, path, what: str = "ids"):
    """A list column -> ``(offsets [R+1] int64, flat values as an Arrow array)``; a missing column, a
    column that is not a list, or a null list is an error naming the file, column (and row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = get_column(table, name, path).combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise InputError(f"expected a list of {what}, got type {col.type}", path=path, column=name)
    if col.null_count:
        raise InputError("missing list", path=path, column=name,
                         row=int(np.flatnonzero(np.asarray(col.is_null()))[0]) + 1)
    offsets = np.asarray(col.offsets, dtype=np.int64)
    return offsets - offsets[0], pc.list_flatten(col)


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


def read_categorical(col) -> np.ndarray:
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
