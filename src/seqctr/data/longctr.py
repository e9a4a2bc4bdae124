"""FuxiCTR / LongCTR parquet datasets (the layout reczoo publishes KuaiVideo_x2, MicroVideo1.7M_x2 and
EBNeRD_small_x1 in, and the layout FuxiCTR's LongCTR model zoo reads).

A LongCTR folder holds:

- ``train.parquet`` / ``valid.parquet`` / ``test.parquet``: one row per sample with the meta columns
  ``user_index`` (row of ``user_info``), ``item_index`` (row of ``item_info``: the candidate),
  ``seq_len`` (the history is the first ``seq_len`` items of the user's sequence), the label
  (``feature_map["labels"]``, else ``label`` or ``is_click``) and sample features;
- ``user_info.parquet``: ``full_item_seq`` (a list of item indices per user row);
- ``item_info.parquet``: ``item_index`` and item features;
- ``feature_map.json``: every feature's ``type`` (``categorical`` | ``numeric`` | ``sequence`` |
  ``embedding`` | ``meta``), ``source`` and ``vocab_size``.

The splits and the id encoding are taken as given (ids are already vocabulary indices, 0 =
padding). Sample features constant within each user become user features, the others per-sample
context features. Item ``sequence`` features are multi-valued (mean-pooled); ``numeric`` features
are cut into 16 quantile bins (edges from the training rows / all items; NaN -> the OOV id);
``embedding`` features (pre-trained vectors, e.g. ``item_emb_d128``) become frozen tables with a
trainable projection to the embedding width. Columns the feature map does not describe are
ignored and listed in ``meta.ignored_columns``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..utils.io import atomic_dir
from .encode import OOV

SPLIT_FILES = ("train", "valid", "test")
REQUIRED = ("train.parquet", "valid.parquet", "test.parquet", "user_info.parquet", "item_info.parquet",
            "feature_map.json")
META_COLUMNS = ("user_index", "item_index", "seq_len")
N_BINS = 16


def is_longctr(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("user_info.parquet", "feature_map.json", "item_info.parquet"))


def resolve(folder: Path):
    from .sources import ResolvedSource

    for f in REQUIRED:
        if not (folder / f).is_file():
            raise InputError(f"LongCTR folder is missing {f} (needs {', '.join(REQUIRED)})", path=folder / f)
    def build(rule):
        if rule.by_time:
            raise InputError("a LongCTR folder has its splits as given and no event times: a split by time "
                             "(data.split.train_until) does not apply", path=folder)
        return read_longctr(folder)

    return ResolvedSource(folder.name, [folder / f for f in REQUIRED], build, "longctr-v1")


def _read(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"cannot read as parquet: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                         path=path) from None


def _feature_map(path: Path) -> dict:
    try:
        fmap = json.loads(path.read_text())
        feats = {k: v for x in fmap["features"] for k, v in x.items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"not a FuxiCTR feature map (needs a 'features' list of {{name: spec}}): {e}",
                         path=path) from None
    return {"labels": list(fmap.get("labels") or []), "features": feats, "dataset_id": fmap.get("dataset_id")}


def _int_column(table, name: str, path: Path, vocab: int | None = None) -> np.ndarray:
    import pyarrow as pa

    col = table.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise InputError(f"expected integer ids, got type {col.type}", path=path, column=name)
    arr = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = ~np.isfinite(arr) | (arr != np.round(arr)) | (arr < 0)
    if vocab is not None:
        bad |= arr >= vocab
    if bad.any():
        r = int(bad.argmax())
        v = arr[r]
        what = (f"id {int(v)} is outside the vocabulary [0, {vocab})" if np.isfinite(v) and v == round(v) and v >= 0
                else f"{float(v)!r} is not an integer id >= 0")
        raise InputError(what, path=path, column=name, row=r + 1)
    return arr.astype(np.int64)


def _list_column(table, name: str, path: Path, floats: bool = False):
    """A list column -> (offsets [R+1], flat values as numbers; ids checked unless ``floats``)."""
    from .columns import list_column

    offsets, flat = list_column(table, name, path, "vectors" if floats else "ids")
    values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float64)
    if not floats:
        bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0)
        if bad.any():
            r = int(np.searchsorted(offsets, int(bad.argmax()), side="right")) - 1
            raise InputError(f"list holds {float(values[bad.argmax()])!r}, not an id", path=path, column=name, row=r + 1)
        values = values.astype(np.int64)
    return offsets, values


def _bins(values: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Numeric -> ids ``2..N_BINS+1`` by quantile edges of ``fit``; NaN -> OOV."""
    ok = np.isfinite(fit)
    edges = np.unique(np.quantile(fit[ok], np.linspace(0, 1, N_BINS + 1)[1:-1])) if ok.any() else np.array([])
    ids = (np.searchsorted(edges, values, side="right") + 2).astype(np.int32)
    return np.where(np.isfinite(values), ids, OOV).astype(np.int32)


def _user_sequences(folder: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """Step 1: every user's item sequence from ``user_info.parquet``: ``(offsets [U+1], items [E], path)``."""
    upath = folder / "user_info.parquet"
    uinfo = _read(upath)
    if "full_item_seq" not in uinfo.column_names:
        raise InputError(f"missing column (columns are {uinfo.column_names})", path=upath, column="full_item_seq")
    offsets, seq = _list_column(uinfo, "full_item_seq", upath)
    return offsets, seq, upath


@dataclass
class _Items:
    """What step 2 reads from ``item_info.parquet``."""

    feats: np.ndarray                 # [I, C] item feature ids by item row
    names: list                       # C column names (the id column first)
    rows: int                         # I
    vocab_sizes: dict
    pretrained: dict                  # name -> [I, P] float32
    ignored: list


def _item_block(iinfo, name: str, spec: dict, ipath: Path, item_index: np.ndarray, n_item_rows: int):
    """One ``item_info`` column as ``(kind, block [I, w] or matrix, vocabulary size)``; ``kind``: ``ids``,
    ``vectors`` (pre-trained) or None (a column of no known type: ignored)."""
    typ, vocab = spec.get("type"), spec.get("vocab_size")
    n_items = len(item_index)
    if typ == "categorical":
        vals = _int_column(iinfo, name, ipath, vocab)
        block = np.zeros((n_item_rows, 1), dtype=np.int32)
        block[item_index, 0] = vals
        return "ids", block, int(vocab or vals.max(initial=0) + 1)
    if typ == "sequence":
        offs, vals = _list_column(iinfo, name, ipath)
        if vocab is not None and len(vals) and vals.max() >= vocab:
            r = int(np.searchsorted(offs, int(vals.argmax()), side="right")) - 1
            raise InputError(f"id {int(vals.max())} is outside the vocabulary [0, {vocab})", path=ipath,
                             column=name, row=r + 1)
        counts = np.diff(offs)
        block = np.zeros((n_item_rows, max(int(counts.max(initial=0)), 1)), dtype=np.int32)
        row_of = np.repeat(np.arange(n_items), counts)
        block[item_index[row_of], np.arange(len(vals)) - offs[row_of]] = vals
        return "ids", block, int(vocab or vals.max(initial=0) + 1)
    if typ == "numeric":
        vals = np.asarray(iinfo.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        block = np.zeros((n_item_rows, 1), dtype=np.int32)
        block[item_index, 0] = _bins(vals, vals)
        return "ids", block, N_BINS + 2
    if typ == "embedding":
        offs, vals = _list_column(iinfo, name, ipath, floats=True)
        width = np.diff(offs)
        if len(width) and (width != width[0]).any():
            r = int(np.flatnonzero(width != width[0])[0])
            raise InputError(f"pre-trained vectors differ in width ({width[r]} vs {width[0]})", path=ipath,
                             column=name, row=r + 1)
        mat = np.zeros((n_item_rows, int(width[0]) if len(width) else 0), dtype=np.float32)
        mat[item_index] = vals.reshape(n_items, -1)
        return "vectors", mat, None
    return None, None, None


def _item_table(folder: Path, specs: dict, seq: np.ndarray, offsets: np.ndarray, upath: Path) -> _Items:
    """Step 2: the item feature table from ``item_info.parquet`` (rows by ``item_index``; row 0 is LongCTR's
    padding and embeds to nothing), checking that every sequence item is a row of it."""
    ipath = folder / "item_info.parquet"
    iinfo = _read(ipath)
    item_index = (_int_column(iinfo, "item_index", ipath) if "item_index" in iinfo.column_names
                  else np.arange(iinfo.num_rows))
    n_item_rows = int(item_index.max(initial=-1)) + 1
    if len(np.unique(item_index)) != len(item_index):
        s = np.sort(item_index)
        raise InputError(f"duplicate item_index {int(s[1:][s[1:] == s[:-1]][0])}", path=ipath, column="item_index")
    if len(seq) and (seq.max() >= n_item_rows):
        r = int(np.searchsorted(offsets, int(seq.argmax()), side="right")) - 1
        raise InputError(f"item {int(seq.max())} is not a row of item_info ({n_item_rows} rows)",
                         path=upath, column="full_item_seq", row=r + 1)
    cols, names, vocab_sizes, pretrained, ignored = [], [], {}, {}, []
    id_name = "item_id"
    for name in iinfo.column_names:
        spec = specs.get(name)
        if name == "item_index":
            continue
        if spec is None or spec.get("type") == "meta":
            ignored.append(f"item_info.{name}")
            continue
        kind, block, size = _item_block(iinfo, name, spec, ipath, item_index, n_item_rows)
        if kind is None:
            ignored.append(f"item_info.{name}")
            continue
        if kind == "vectors":
            pretrained[name] = block
            continue
        if name == "item_id":
            if np.array_equal(block[item_index, 0], item_index):
                continue                                  # the id column itself (as our exporter writes it)
            id_name = "item_index"
        cols.append(block)
        names.extend([name] * block.shape[1])
        vocab_sizes[name] = size
    vocab_sizes[id_name] = n_item_rows
    feats = np.concatenate([np.arange(n_item_rows, dtype=np.int32)[:, None]] + cols, axis=1)
    feats[0] = 0                       # item index 0 is LongCTR's padding: it must embed to nothing
    for mat in pretrained.values():
        mat[0] = 0
    return _Items(feats, [id_name] + names, n_item_rows, vocab_sizes, pretrained, ignored)


def _label_name(fmap: dict, t, path: Path) -> str:
    cands = fmap["labels"] or [c for c in ("label", "is_click", "click", "clk") if c in t.column_names][:1]
    if not cands or cands[0] not in t.column_names:
        raise InputError(f"no label column (feature map labels {fmap['labels']}, tried label/is_click)",
                         path=path, column=cands[0] if cands else "label")
    return cands[0]


def _split_samples(folder: Path, fmap: dict, offsets: np.ndarray, n_item_rows: int, vocab_sizes: dict,
                   ignored: list) -> list[tuple]:
    """Step 3: the samples of ``train`` / ``valid`` / ``test.parquet``, each split as ``(user rows, target
    items, seq_len, labels, {feature: column}, split number)``; categorical and numeric sample columns
    are read (vocabulary sizes into ``vocab_sizes``), others listed in ``ignored``."""
    specs, n_users = fmap["features"], len(offsets) - 1
    parts, labels_name = [], None
    for k, split in enumerate(SPLIT_FILES):
        path = folder / f"{split}.parquet"
        t = _read(path)
        for m in META_COLUMNS:
            if m not in t.column_names:
                raise InputError(f"missing meta column (columns are {t.column_names})", path=path, column=m)
        labels_name = labels_name or _label_name(fmap, t, path)
        u = _int_column(t, "user_index", path, n_users)
        it = _int_column(t, "item_index", path, n_item_rows)
        sl = _int_column(t, "seq_len", path)
        too_long = sl > np.diff(offsets)[u]
        if too_long.any():
            r = int(too_long.argmax())
            raise InputError(f"seq_len {int(sl[r])} exceeds the {int(np.diff(offsets)[u[r]])} items of user row "
                             f"{int(u[r])} in user_info.parquet", path=path, column="seq_len", row=r + 1)
        y = np.asarray(t.column(labels_name).to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            r = int(bad.argmax())
            raise InputError(f"label must be 0 or 1, got {float(y[r])!r}", path=path, column=labels_name, row=r + 1)
        feats = {}
        for name in t.column_names:
            if name in META_COLUMNS or name == labels_name or name in fmap["labels"]:
                continue
            spec = specs.get(name)
            if spec is None or spec.get("type") not in ("categorical", "numeric"):
                if k == 0:
                    ignored.append(f"{split}.{name}")
                continue
            if spec["type"] == "categorical":
                feats[name] = _int_column(t, name, path, spec.get("vocab_size"))
                vocab_sizes[name] = int(spec.get("vocab_size") or 0)
            else:
                feats[name] = np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        parts.append((u, it, sl, y, feats, k))
    return parts


def _user_and_context(parts: list[tuple], specs: dict, n_users: int, vocab_sizes: dict):
    """Step 4: each sample column present in every split is a user feature when constant within each
    user, else a per-sample context feature (numeric ones binned by the training rows' quantiles).
    Returns ``(user columns, names, context columns, names)``; with no per-user column the user row
    itself is the user id (ids 2.., 0 = padding)."""
    sample_user = np.concatenate([p[0] for p in parts])
    names = [n for n in parts[0][4] if all(n in p[4] for p in parts)]
    user_cols, user_names, ctx_cols, ctx_names = [], [], [], []
    train_rows = np.arange(len(parts[0][0]))
    order = np.argsort(sample_user, kind="stable")
    su = sample_user[order]
    same = su[1:] == su[:-1]
    for name in names:
        col = np.concatenate([p[4][name] for p in parts])
        if specs[name]["type"] == "numeric":
            col = _bins(col, col[train_rows])
            vocab_sizes[name] = N_BINS + 2
        col = col.astype(np.int64)
        if not vocab_sizes.get(name):
            vocab_sizes[name] = int(col.max(initial=0)) + 1
        sc = col[order]
        if (sc[1:][same] == sc[:-1][same]).all():                  # constant within each user: a user feature
            per_user = np.zeros(n_users, dtype=np.int32)
            per_user[su] = sc
            user_cols.append(per_user), user_names.append(name)
        else:
            ctx_cols.append(col.astype(np.int32)), ctx_names.append(name)
    if not user_names:
        user_cols, user_names = [np.arange(n_users, dtype=np.int32) + 2], ["user_id"]
        vocab_sizes["user_id"] = n_users + 2
    return user_cols, user_names, ctx_cols, ctx_names


def read_longctr(folder: Path):
    """Read a LongCTR folder into a :class:`SeqDataset` (see the module doc for the rules), in four
    steps: user sequences, the item table, the samples of each split, user vs context columns."""
    from .dataset import SeqDataset, dataset_meta
    from .sources import sha256_files

    folder = Path(folder)
    fmap = _feature_map(folder / "feature_map.json")
    offsets, seq, upath = _user_sequences(folder)
    n_users = len(offsets) - 1
    items = _item_table(folder, fmap["features"], seq, offsets, upath)
    vocab_sizes, ignored = items.vocab_sizes, items.ignored
    parts = _split_samples(folder, fmap, offsets, items.rows, vocab_sizes, ignored)
    user_cols, user_names, ctx_cols, ctx_names = _user_and_context(parts, fmap["features"], n_users, vocab_sizes)
    n_per = [len(p[0]) for p in parts]
    ds = SeqDataset(
        seq_items=seq.astype(np.int32), offsets=offsets, item_feats=items.feats,
        user_feats=np.stack(user_cols, axis=1).astype(np.int32),
        sample_user=np.concatenate([p[0] for p in parts]).astype(np.int32),
        sample_pos=np.concatenate([p[2] for p in parts]).astype(np.int32),
        sample_target=np.concatenate([p[1] for p in parts]).astype(np.int32),
        label=np.concatenate([p[3] for p in parts]).astype(np.float32),
        split=np.repeat(np.arange(3, dtype=np.int8), n_per),
        context_feats=(np.stack(ctx_cols, axis=1) if ctx_cols else np.zeros((sum(n_per), 0), np.int32)),
        pretrained=items.pretrained,
        meta=dataset_meta(folder.name, "longctr-v1", f"longctr:{folder.name}", sha256_files(
            [folder / f for f in REQUIRED]), {"given": "train/valid/test parquet"}, items.names, user_names,
            vocab_sizes, n_users, len(seq), context_features=ctx_names,
            pretrained={n: list(m.shape) for n, m in items.pretrained.items()}, ignored_columns=ignored),
    )
    return ds.record_lengths()


def export_longctr(ds, out: Path, dataset_id: str | None = None) -> Path:
    """Write a prepared dataset in LongCTR's layout (atomically: the folder appears whole or not at
    all). The same vocabularies, samples, histories and labels; reading it back with
    :func:`read_longctr` gives the same dataset. Labels are written as integers (LongCTR's loader
    column-stacks every column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    ufe = ds.meta.user_features
    ctx = ds.meta.context_features
    with atomic_dir(out) as tmp:
        for split in SPLIT_FILES:
            idx = ds.indices(split)
            cols = {"user_index": np.asarray(ds.sample_user[idx], np.int64),
                    "item_index": np.asarray(ds.sample_target[idx], np.int64),
                    "seq_len": np.asarray(ds.sample_pos[idx], np.int64),
                    "label": np.asarray(ds.label[idx], np.int64)}
            for j, name in enumerate(ufe):
                cols[name] = np.asarray(ds.user_feats[ds.sample_user[idx], j], np.int64)
            for j, name in enumerate(ctx):
                cols[name] = np.asarray(ds.context_feats[idx, j], np.int64)
            pq.write_table(pa.table(cols), tmp / f"{split}.parquet")
        seq = pa.ListArray.from_arrays(pa.array(np.asarray(ds.offsets, np.int32)),
                                       pa.array(np.asarray(ds.seq_items, np.int64)))
        pq.write_table(pa.table({"full_item_seq": seq}), tmp / "user_info.parquet")
        inames = ds.meta.item_features
        item_cols = {"item_index": np.arange(len(ds.item_feats), dtype=np.int64)}
        feats, multi_len = [], {}
        for name in dict.fromkeys(inames):
            js = [j for j, n in enumerate(inames) if n == name]
            block = np.asarray(ds.item_feats[:, js], np.int64)
            if len(js) == 1:
                item_cols[name] = block[:, 0]
            else:       # multi-valued: a list per item without its padding
                keep = block != 0
                item_cols[name] = pa.ListArray.from_arrays(
                    pa.array(np.r_[0, np.cumsum(keep.sum(1))].astype(np.int32)), pa.array(block[keep]))
                multi_len[name] = len(js)
        for name, mat in ds.pretrained.items():
            item_cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), mat.shape[1]).cast(
                pa.list_(pa.float32()))
        pq.write_table(pa.table(item_cols), tmp / "item_info.parquet")
        vs = ds.vocab_sizes
        for n in ufe + ctx:
            feats.append({n: {"source": "user" if n in ufe else "context", "type": "categorical",
                              "padding_idx": 0, "oov_idx": OOV, "vocab_size": vs[n]}})
        for n in dict.fromkeys(inames):
            spec = {"source": "item", "type": "sequence" if n in multi_len else "categorical", "padding_idx": 0,
                    "oov_idx": OOV, "vocab_size": vs[n]}
            if n in multi_len:
                spec["max_len"] = multi_len[n]
            feats.append({n: spec})
        for n, mat in ds.pretrained.items():
            feats.append({n: {"source": "item", "type": "embedding", "pretrain_dim": int(mat.shape[1])}})
        feats += [{n: {"type": "meta"}} for n in META_COLUMNS]
        names = list(dict.fromkeys(ufe + ctx + inames))
        fmap = {"dataset_id": dataset_id or ds.meta.name, "num_fields": len(names),
                "total_features": int(sum(vs[n] for n in names)), "input_length": 0, "labels": ["label"],
                "features": feats}
        (tmp / "feature_map.json").write_text(json.dumps(fmap, indent=1))
    return out
