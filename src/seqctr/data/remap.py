"""One dataset's ids in another model's id space: vocabularies that grow, and data a model never saw.

A model's id space is, per feature, the raw value of every row (``vocab_<feature>.npy``: the raw
value of id ``i + 2`` at index ``i``) plus the item feature table by item id. A dataset prepared
from newer data has its own vocabularies; :func:`remap` rewrites its ids into a model's space:

- ``grow=False`` (scoring a frozen model on newer data): an id the model never saw becomes the
  out-of-vocabulary id 1, as it would when served;
- ``grow=True`` (warm start): every old id keeps its row, new raw values get new rows after the old
  ones, in the new dataset's vocabulary order, so the vocabulary files are no longer sorted (lookups
  handle any order: :func:`seqctr.data.encode.lookup`).

Item feature rows: an old item keeps the model's row (its embedding input is unchanged, so a known
id scores as before any new training); a new item takes the newer dataset's row, its feature values
mapped the same way. A multi-valued feature (genres) whose widest row differs takes the wider layout
when growing (its embedding pools over however many columns: the weights fit either) and the model's
when not (values beyond it are dropped). Features without vocabulary files (ids as given, LongCTR) keep their ids; only
tables may grow. Pre-trained item vectors are not remapped (an error names the feature).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import SeqctrError
from .dataset import DatasetMeta, SeqDataset
from .encode import OOV, as_str, lookup, sort_order


@dataclass
class IdSpace:
    """What ids mean to a model: ``vocabs`` (feature -> raw values of ids 2.. in id order; a feature
    with ids as given has none), ``sizes`` (feature -> table rows), ``item_feats [I, C]`` and the
    names of its columns."""

    vocabs: dict
    sizes: dict
    item_feats: np.ndarray
    item_features: list
    user_features: list | None = None

    @classmethod
    def of_dataset(cls, ds: SeqDataset, folder: str | Path) -> "IdSpace":
        folder = Path(folder)
        vocabs = {n: np.load(folder / f"vocab_{n}.npy", allow_pickle=False) for n in ds.vocab_sizes
                  if (folder / f"vocab_{n}.npy").is_file()}
        return cls(vocabs, dict(ds.vocab_sizes), np.asarray(ds.item_feats), list(ds.meta.item_features),
                   list(ds.meta.user_features))

    @classmethod
    def of_bundle(cls, folder: str | Path) -> "IdSpace":
        """The id space of a model bundle (``seqctr export``), read from its files, no model built."""
        import json

        folder = Path(folder)
        info = json.loads((folder / "bundle.json").read_text())
        meta = DatasetMeta.from_dict(info["meta"])
        vocabs = {n: np.load(folder / f"vocab_{n}.npy", allow_pickle=False) for n in info["vocabularies"]}
        return cls(vocabs, dict(meta.vocab_sizes), np.load(folder / "items.npy", allow_pickle=False),
                   list(meta.item_features), list(meta.user_features))


def _feature_map(new_vals: np.ndarray | None, new_size: int, old_vals: np.ndarray | None, old_size: int,
                 grow: bool, feature: str):
    """``(map [new_size] int64: new id -> model id, model vocabulary or None, model size)``."""
    if (new_vals is None) != (old_vals is None):
        raise SeqctrError(f"feature {feature!r}: one side has a vocabulary of raw values, the other ids as given; "
                          "the two cannot be matched")
    if new_vals is None:                  # ids as given: the same ids; a smaller table maps the rest to padding
        ids = np.arange(new_size, dtype=np.int64)
        size = max(new_size, old_size) if grow else old_size
        return np.where(ids < size, ids, 0), None, size
    old_s, new_s = as_str(old_vals), as_str(new_vals)
    at = lookup(old_s, new_s, sort_order(old_s)).astype(np.int64)        # the model's id, or OOV
    found = at != OOV
    vocab = old_s
    if grow:
        fresh = np.flatnonzero(~found)
        at[fresh] = len(old_s) + 2 + np.arange(len(fresh))
        vocab = np.concatenate([old_s, new_s[fresh]])
    m = np.empty(new_size, np.int64)
    m[:2] = (0, OOV)
    m[2:2 + len(new_s)] = at
    return m, vocab, len(vocab) + 2


def _layout(names: list) -> dict:
    """Column positions of each feature name (a multi-valued feature spans several), in name order."""
    out: dict = {}
    for j, n in enumerate(names):
        out.setdefault(n, []).append(j)
    return out


def _widths(model: list, data: list, grow: bool, what: str) -> dict:
    """Columns per feature in the model's space: a multi-valued feature keeps the model's width, or (grow)
    the wider of the two — its embedding pools over however many columns, so the weights fit either."""
    m, d = _layout(model), _layout(data)
    if set(m) != set(d):
        raise SeqctrError(f"{what} features differ: the model's {sorted(m)}, the data's {sorted(d)}")
    return {n: max(len(m[n]), len(d[n])) if grow else len(m[n]) for n in m}


def _fit(table: np.ndarray, names: list, widths: dict) -> np.ndarray:
    """``table``'s columns laid out by ``widths`` (feature order as in ``widths``): a narrower block is
    padded with 0 (no value), a wider one keeps its first values (a frozen model's width)."""
    lay, rows = _layout(names), np.asarray(table).shape[0]
    blocks = []
    for n, w in widths.items():
        b = np.zeros((rows, w), np.int64)
        cols = lay[n][:w]
        b[:, :len(cols)] = np.asarray(table)[:, cols]
        blocks.append(b)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((rows, 0), np.int64)


def _columns(names: list, maps: dict, block: np.ndarray) -> np.ndarray:
    out = np.asarray(block).astype(np.int64, copy=True)
    for j, n in enumerate(names):
        out[:, j] = maps[n][out[:, j]]
    return out.astype(np.int32)


def remap(ds: SeqDataset, folder: str | Path, space: IdSpace, grow: bool) -> tuple[SeqDataset, IdSpace]:
    """``ds`` (prepared in ``folder``) with its ids in ``space``'s (grown when ``grow``): the new
    dataset (its ``vocab_arrays`` the model's vocabularies, ``meta.vocab_sizes`` its tables' rows)
    and the resulting id space. Samples, histories and splits are unchanged."""
    meta = ds.meta
    if meta.pretrained:
        raise SeqctrError(f"pre-trained item vectors ({', '.join(meta.pretrained)}) cannot be carried into another "
                          "model's id space yet: warm start and cross-dataset scoring need data without them")
    iw = _widths(list(space.item_features), list(meta.item_features), grow, "item")
    uw = _widths(list(space.user_features or meta.user_features), list(meta.user_features), grow, "user")
    item_names = [n for n, w in iw.items() for _ in range(w)]
    user_names = [n for n, w in uw.items() for _ in range(w)]
    missing = sorted(set(meta.vocab_sizes) ^ set(space.sizes))
    if missing:
        raise SeqctrError(f"features {missing} are in one of the model and the data only")
    new = IdSpace.of_dataset(ds, folder).vocabs
    maps, vocabs, sizes = {}, {}, {}
    for n in meta.vocab_sizes:
        maps[n], v, sizes[n] = _feature_map(new.get(n), meta.vocab_sizes[n], space.vocabs.get(n),
                                            space.sizes[n], grow, n)
        if v is not None:
            vocabs[n] = v
    item = maps["item_id"]
    table = np.zeros((sizes["item_id"], len(item_names)), np.int32)
    table[:len(space.item_feats)] = _fit(space.item_feats, list(space.item_features), iw)
    src = np.arange(2, len(ds.item_feats))
    fresh = src[item[src] >= len(space.item_feats)]          # items the model has no row for: the data's row
    if len(fresh):
        table[item[fresh]] = _columns(item_names, maps, _fit(np.asarray(ds.item_feats)[fresh],
                                                             list(meta.item_features), iw))
    out = replace(
        ds, seq_items=item[np.asarray(ds.seq_items)].astype(np.int32),
        sample_target=item[np.asarray(ds.sample_target)].astype(np.int32),
        item_feats=table, user_feats=_columns(user_names, maps, _fit(ds.user_feats, list(meta.user_features), uw)),
        context_feats=_columns(list(meta.context_features), maps, ds.context_feats),
        meta=replace(meta, vocab_sizes={n: int(s) for n, s in sizes.items()}, item_features=item_names,
                     user_features=user_names,
                     extra={**meta.extra, "id_space": {"grown": bool(grow), "from_rows": dict(space.sizes)}}),
        vocab_arrays=vocabs)
    return out, IdSpace(vocabs, sizes, table, item_names, user_names)
