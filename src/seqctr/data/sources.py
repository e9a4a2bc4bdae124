"""Read raw interaction sources into one columnar form, :class:`Interactions`.

Sources: the built-in MovieLens-100K (read out of the ``recbole==1.2.1`` wheel, fetched with pip;
recbole is never imported), a GroupLens ``ml-100k`` folder, or a generic interactions table
(parquet or CSV). Every check names the file, the column and the row when input is bad.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, SeqctrError
from ..utils.io import atomic_path, seqctr_home
from .columns import feature_names, get_column, read_categorical, read_ids, read_labels, read_times, split_multi
from .encode import SideTable, as_str

ML100K_WHEEL = "recbole==1.2.1"
ML100K_WHEEL_FILE = "recbole-1.2.1-py3-none-any.whl"
ML100K_MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
GROUPLENS_GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()


@dataclass
class Interactions:
    """One row per event. ``user``/``item`` are raw ids (any dtype); ``timestamp`` int64 seconds;
    ``label`` 0/1 after the label rule (int8 from tables, float elsewhere); ``item_features`` and ``user_features`` are
    per-event columns of raw categorical values (taken once per item / per user)."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    label: np.ndarray
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    checksum: str = ""
    origin: str = ""
    items: SideTable | None = None   # item side table (by raw item id), e.g. movies.csv
    users: SideTable | None = None   # user side table (by raw user id)


def sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- ml100k (recbole wheel)
def fetch_ml100k(home: Path | None = None) -> Path:
    """Return a folder holding the three ml-100k atomic files, downloading the wheel if needed."""
    home = Path(home or seqctr_home())
    raw = home / "raw" / "ml-100k"
    if all((raw / m).is_file() for m in ML100K_MEMBERS):
        return raw
    downloads = home / "downloads"
    wheel = downloads / ML100K_WHEEL_FILE
    if not wheel.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(downloads), ML100K_WHEEL]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wheel.is_file():
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise SeqctrError(
                f"could not download {ML100K_WHEEL} with pip ({last}). Provide the data one of these "
                f"ways: put {ML100K_WHEEL_FILE} into {downloads}; or put {', '.join(ML100K_MEMBERS)} "
                f"into {raw}; or pass a GroupLens ml-100k folder (u.data, u.item, u.user), "
                f"e.g. `seqctr prepare /path/to/ml-100k`."
            )
    raw.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for m in ML100K_MEMBERS:
                with atomic_path(raw / m) as tmp:
                    tmp.write_bytes(zf.read(f"recbole/dataset_example/ml-100k/{m}"))
    except (zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"not a usable recbole wheel ({e}); delete it and retry", path=wheel) from None
    return raw


def _read_tsv(path: Path, sep: str = "\t", header: bool = True, encoding: str = "utf-8") -> list[list[str]]:
    if not path.is_file():
        raise InputError("file does not exist", path=path)
    lines = path.read_text(encoding=encoding).splitlines()
    if header:
        lines = lines[1:]
    return [ln.split(sep) for ln in lines if ln.strip()]


def _int_col(rows, j, path, column) -> np.ndarray:
    try:
        return np.array([int(float(r[j])) for r in rows], dtype=np.int64)
    except (ValueError, IndexError):
        for i, r in enumerate(rows):
            try:
                int(float(r[j]))
            except (ValueError, IndexError):
                raise InputError(f"expected a number, got {r[j] if j < len(r) else '<missing>'!r}",
                                 path=path, column=column, row=i + 1) from None
        raise


def _ml100k_from_parts(inter, items: dict[str, str], users: dict[str, tuple], checksum, origin,
                       inter_path) -> Interactions:
    user = np.array([r[0] for r in inter], dtype=object)
    item = np.array([r[1] for r in inter], dtype=object)
    rating = np.array([float(r[2]) for r in inter], dtype=np.float64)
    ts = _int_col(inter, 3, inter_path, "timestamp")
    if np.isnan(rating).any():
        raise InputError("NaN rating", path=inter_path, column="rating", row=int(np.isnan(rating).argmax()) + 1)
    genre = np.array([items.get(i, "") for i in item], dtype=object)
    ufe = [users.get(u, ("", "", "")) for u in user]
    return Interactions(
        user=user, item=item, timestamp=ts, label=(rating >= 4).astype(np.float32),
        item_features={"genre": genre},
        user_features={
            "gender": np.array([f[0] for f in ufe], dtype=object),
            "age_bucket": np.array([f[1] for f in ufe], dtype=object),
            "occupation": np.array([f[2] for f in ufe], dtype=object),
        },
        checksum=checksum, origin=origin,
    )


def _age_bucket(age: str) -> str:
    try:
        return str(int(float(age)) // 10)
    except ValueError:
        return ""


def read_ml100k_atomic(folder: Path) -> Interactions:
    """The recbole atomic files: ``ml-100k.inter`` / ``.item`` / ``.user`` (tab separated, header)."""
    paths = [folder / m for m in ML100K_MEMBERS]
    inter = _read_tsv(paths[0])
    items = {r[0]: (r[3].split(" ")[0] if len(r) > 3 and r[3] else "") for r in _read_tsv(paths[1])}
    users = {r[0]: (r[2], _age_bucket(r[1]), r[3]) for r in _read_tsv(paths[2])}
    return _ml100k_from_parts(inter, items, users, sha256_files(paths), "recbole:ml-100k", paths[0])


def read_grouplens_ml100k(folder: Path) -> Interactions:
    """The original GroupLens files: ``u.data`` (tab), ``u.item`` / ``u.user`` ('|', latin-1)."""
    paths = [folder / "u.data", folder / "u.item", folder / "u.user"]
    inter = _read_tsv(paths[0], header=False)
    items = {}
    for r in _read_tsv(paths[1], sep="|", header=False, encoding="latin-1"):
        flags = r[-19:]
        first = next((g for g, f in zip(GROUPLENS_GENRES, flags) if f == "1"), "")
        items[r[0]] = first
    users = {r[0]: (r[2], _age_bucket(r[1]), r[3]) for r in _read_tsv(paths[2], sep="|", header=False)}
    return _ml100k_from_parts(inter, items, users, sha256_files(paths), "grouplens:ml-100k", paths[0])


# --------------------------------------------------------------------------- generic tables
TABLE_ROLES = ("user", "item", "timestamp")


def read_table_file(path: Path, names: list[str] | None = None):
    """A whole table in memory as one ``pa.Table`` (side tables, tables to score): the chunks of
    :func:`scan_table`, so both paths check and report bad files alike."""
    import pyarrow as pa

    chunks = [t for _, _, t in scan_table(Path(path), names)[1]]
    return pa.concat_tables(chunks) if len(chunks) > 1 else chunks[0]


def table_files(path: Path) -> list[Path]:
    """The files of a table source: the file itself, or every ``*.parquet`` part of a folder (in
    name order, as Spark / PyArrow datasets write them)."""
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path=path)
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq") and p.is_file())
        if not parts:
            raise InputError("folder holds no .parquet parts", path=path)
        return parts
    return [path]


def scan_table(path: Path, names: list[str] | None = None, columns: list[str] | None = None,
               batch_rows: int = 1 << 18):
    """Open a table (a parquet or CSV file, or a folder of parquet parts) for streaming: returns
    ``(total rows or None for CSV, chunks)``; ``chunks`` yields ``(file, rows before this chunk in
    that file, pa.Table chunk)`` with only ``columns`` (those a parquet file has; CSV: all). Every
    file is opened (and a bad one refused) before any row is read; memory is one chunk."""
    import pyarrow as pa

    opened, total = [], 0
    for f in table_files(path):
        if f.stat().st_size == 0:
            raise InputError("file is empty", path=f)
        suffix = f.suffix.lower()
        try:
            if suffix in (".parquet", ".pq"):
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                opened.append((f, "parquet", pf))
                total = None if total is None else total + pf.metadata.num_rows
            elif suffix in (".csv", ".tsv", ".txt"):
                opened.append((f, "csv", None))
                total = None
            else:
                raise InputError("unknown file type (use .parquet, .csv or .tsv)", path=f)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"cannot read as {suffix[1:]}: {msg}", path=f) from None

    def chunks():
        n_rows = 0
        for f, kind, handle in opened:
            row0 = 0
            try:
                if kind == "parquet":
                    cols = [c for c in (columns or []) if c in handle.schema_arrow.names] or None
                    batches = handle.iter_batches(batch_size=batch_rows, columns=cols)
                else:
                    import pyarrow.csv as pacsv

                    delim = "\t" if f.suffix.lower() == ".tsv" else ","
                    read = pacsv.ReadOptions(column_names=list(names) if names else None, block_size=64 << 20)
                    batches = pacsv.open_csv(f, read_options=read, parse_options=pacsv.ParseOptions(delimiter=delim))
                for b in batches:
                    if b.num_rows:
                        yield f, row0, pa.Table.from_batches([b])
                    row0 += b.num_rows
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InputError(f"cannot read as {f.suffix[1:]} (after row {row0}): {msg}", path=f) from None
            n_rows += row0
        if n_rows == 0:
            raise InputError("table has no rows", path=path)

    return total, chunks()


class _Filled:
    """A column filled chunk by chunk: into one preallocated array when the row count is known and
    the chunks are numeric (no second copy at the end), else a list of chunks joined once."""

    def __init__(self, total: int | None):
        self.total, self.buf, self.n, self.parts = total, None, 0, []

    def add(self, a: np.ndarray) -> None:
        if self.buf is None and not self.parts and self.total and a.dtype.kind in "iufb":
            self.buf = np.empty(self.total, a.dtype)
        if self.buf is not None and a.dtype == self.buf.dtype and self.n + len(a) <= self.total:
            self.buf[self.n:self.n + len(a)] = a
            self.n += len(a)
            return
        if self.buf is not None:
            self.parts.append(self.buf[:self.n])
            self.buf = None
        self.parts.append(a)

    def result(self) -> np.ndarray:
        if self.buf is not None:
            return self.buf[:self.n]
        if len(self.parts) == 1:
            return self.parts[0]
        kinds = {p.dtype.kind for p in self.parts}
        if len(kinds) > 1 and kinds & {"O", "U"}:          # ints in one chunk, strings in another
            return np.concatenate([as_str(p).astype(object) for p in self.parts])
        return np.concatenate(self.parts)


def read_table(path: str | Path, columns: dict | None = None, label: dict | None = None,
               progress: bool | None = False, batch_rows: int = 1 << 18) -> Interactions:
    """Read a generic interactions table: a parquet or CSV file, or a folder of parquet parts,
    streamed in record batches (peak memory: the compact columns below plus one batch).

    ``columns`` maps roles to column names: ``user``, ``item``, ``timestamp`` (required; default
    the role name), ``category`` (optional item category), ``item_features`` and ``user_features``
    (optional lists of categorical columns, values taken from each item's / user's first event).
    ``names``: column names for a CSV without a header row.
    ``label``: ``{column: click}`` for a 0/1 column, ``{column: rating, threshold: 4}``, or
    ``{column: behavior, positive: [buy, cart]}`` for a categorical column.
    ``progress`` as in :class:`~seqctr.utils.progress.Progress` (events/s while reading);
    ``batch_rows``: rows per record batch (the result does not depend on it).
    """
    import time

    import pyarrow as pa

    from ..utils.progress import Progress

    path = Path(path)
    columns = dict(columns or {})
    label = dict(label or {})
    names = {r: columns.get(r, r) for r in TABLE_ROLES}
    cats = ([("category", columns["category"])] if columns.get("category") else []) + \
        [(n, n) for n in feature_names(columns.get("item_features"))]
    ucats = feature_names(columns.get("user_features"))
    # the label column, or both candidates of its default ("label", else "rating")
    wanted = [names[r] for r in TABLE_ROLES] + [c for _, c in cats] + ucats + [label.get("column", "label"), "rating"]
    total, scan = scan_table(path, columns.get("names"), wanted, batch_rows)
    acc = {k: _Filled(total) for k in ("user", "item", "ts", "label")}
    feat = {n: _Filled(total) for n, _ in cats}
    ufeat = {n: _Filled(total) for n in ucats}
    n_rows, t0 = 0, time.perf_counter()
    bar = Progress(scan, f"read {path.name}", progress)
    for f, row0, t in bar:
        if "column" not in label:            # CSV: the first chunk tells the columns
            label["column"] = "label" if "label" in t.column_names else "rating"
        if label["column"] == "rating" and "threshold" not in label and "positive" not in label:
            label["threshold"] = 4
        acc["user"].add(read_ids(get_column(t, names["user"], f), f, names["user"], row0))
        acc["item"].add(read_ids(get_column(t, names["item"], f), f, names["item"], row0))
        acc["ts"].add(read_times(get_column(t, names["timestamp"], f), f, names["timestamp"], row0))
        acc["label"].add(read_labels(t, label, f, row0).astype(np.int8))    # 0/1 after every label rule
        for n, c in cats:
            feat[n].add(read_categorical(get_column(t, c, f)))
        for n in ucats:
            ufeat[n].add(read_categorical(get_column(t, n, f)))
        n_rows += t.num_rows
        bar.note(events=f"{n_rows:,}" + (f"/{total:,}" if total else ""),
                 events_per_s=f"{n_rows / max(time.perf_counter() - t0, 1e-9):,.0f}")
    files = table_files(path)
    pa.default_memory_pool().release_unused()     # the reader's batch buffers go back before the build
    return Interactions(user=acc["user"].result(), item=acc["item"].result(), timestamp=acc["ts"].result(),
                        label=acc["label"].result(), item_features={n: a.result() for n, a in feat.items()},
                        user_features={n: a.result() for n, a in ufeat.items()}, checksum=sha256_files(files),
                        origin=f"table:{path.name}")


# --------------------------------------------------------------------------- side tables
def read_side_table(path: str | Path, key: str, features: list[str] | None = None,
                    multi: dict | None = None, what: str = "items") -> SideTable:
    """Read an item (or user) side table: one row per ``key``, the given feature columns (default:
    every other column). ``multi`` maps multi-valued columns to their separator (``{genres: "|"}``).
    Duplicate keys, a missing key column or a missing feature column are errors naming the file,
    column and row."""
    path = Path(path)
    table = read_table_file(path)
    keys = read_ids(get_column(table, key, path), path, key)
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
        col = get_column(table, name, path)
        if name in multi:
            out.multi[name] = split_multi(col, multi[name] or "|", path, name)
        else:
            out.single[name] = read_categorical(col)
    return out


@dataclass
class ResolvedSource:
    """A source resolved to its files, before parsing: the checksum is known without reading rows.

    ``build(split_rule) -> SeqDataset`` parses and constructs; ``protocol`` names the construction
    (it and the name go into the prepared cache's folder name). ``read_events() -> Interactions``
    reads the raw events, for sources made of one event table (None for LongCTR / EB-NeRD, whose
    histories are not one event per row): the serving loader of histories reads it."""

    name: str
    files: list
    build: object  # (SplitRule) -> SeqDataset
    protocol: str
    read_events: object = None  # () -> Interactions, or None

    @property
    def checksum(self) -> str:
        return sha256_files(self.files)


# --------------------------------------------------------------------------- MovieLens latest (ml-latest-small)
def read_ml_latest(folder: Path) -> Interactions:
    """A MovieLens "latest" release (``ratings.csv`` + ``movies.csv``), protocol mlls-seqctr v1:
    label = rating >= 4, item feature = genres (multi-valued, split on ``|``)."""
    folder = Path(folder)
    inter = read_table(folder / "ratings.csv", {"user": "userId", "item": "movieId", "timestamp": "timestamp"},
                       {"column": "rating", "threshold": 4})
    inter.items = read_side_table(folder / "movies.csv", "movieId", ["genres"], {"genres": "|"})
    inter.checksum = sha256_files([folder / "ratings.csv", folder / "movies.csv"])
    inter.origin = f"movielens-latest:{folder.name}"
    return inter
