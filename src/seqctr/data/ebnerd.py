"""EB-NeRD (Ekstra Bladet News Recommendation Dataset) folders in the official schema.

A folder holds ``behaviors.parquet`` (one row per impression: ``impression_id``, ``impression_time``,
``user_id``, ``article_ids_inview`` and ``article_ids_clicked`` lists), ``history.parquet`` (one
row per user: ``article_id_fixed`` and ``impression_time_fixed`` lists) and optionally
``articles.parquet`` (``article_id``, ``category``, ``subcategory`` list).

Construction (protocol ``ebnerd-v1``):

- one sample per (impression, article in view); label = the article is in ``article_ids_clicked``;
- history = the user's history articles read strictly before the impression time, in time order
  (ties by article id); ``seq_len`` = their number;
- split by time over impressions (all of an impression's samples stay together): the last
  ``test_frac`` of impressions -> test, the ``valid_frac`` before them -> valid, the rest -> train;
  samples with ``seq_len < min_history`` are dropped;
- vocabularies: articles of any history or of a training impression, users with a training
  sample; others take the out-of-vocabulary id. Item features: ``category`` and the multi-valued
  ``subcategory`` when ``articles.parquet`` is present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .encode import Multi, SideTable, encode
from .columns import list_column, read_categorical, read_ids, read_times
from .sources import ResolvedSource, sha256_files
from .split import time_split

FILES = ("behaviors.parquet", "history.parquet")


def is_ebnerd(folder: Path) -> bool:
    return (folder / "behaviors.parquet").is_file() or (folder / "history.parquet").is_file()


def resolve(folder: Path):
    for f in FILES:
        if not (folder / f).is_file():
            raise InputError(f"EB-NeRD folder is missing {f} (needs behaviors.parquet and history.parquet)",
                             path=folder / f)
    files = [folder / f for f in FILES] + ([folder / "articles.parquet"] if (folder / "articles.parquet").is_file()
                                           else [])
    return ResolvedSource(folder.name, files, lambda rule: read_ebnerd(folder, rule), "ebnerd-v1")


def _histories(hist, hpath: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step 1, ``history.parquet``: ``(user per row [H], list offsets [H+1], articles [E], times [E])``;
    articles and times of equal length per row, one row per user."""
    h_user = read_ids(hist.column("user_id"), hpath, "user_id")
    h_off, h_art = list_column(hist, "article_id_fixed", hpath)
    t_off, h_time = list_column(hist, "impression_time_fixed", hpath, "timestamps")
    if not np.array_equal(h_off, t_off):
        r = int(np.flatnonzero(np.diff(h_off) != np.diff(t_off))[0])
        raise InputError("article_id_fixed and impression_time_fixed differ in length", path=hpath,
                         column="impression_time_fixed", row=r + 1)
    if len(np.unique(h_user)) != len(h_user):
        s = np.sort(h_user)
        dup = s[1:][s[1:] == s[:-1]][0]
        raise InputError(f"user {dup.item()!r} has two history rows", path=hpath, column="user_id",
                         row=int(np.flatnonzero(h_user == dup)[1]) + 1)
    return (h_user, h_off, read_ids(h_art, hpath, "article_id_fixed"),
            read_times(h_time, hpath, "impression_time_fixed"))


def _impressions(beh, bpath: Path) -> dict:
    """Step 2, ``behaviors.parquet``: per impression its id, user, time and in-view / clicked lists
    (``*_off`` offsets into the flat ``inview`` / ``clicked`` article ids); none without an article in view."""
    imp = {"user": read_ids(beh.column("user_id"), bpath, "user_id"),
           "time": read_times(beh.column("impression_time").combine_chunks(), bpath, "impression_time"),
           "id": read_ids(beh.column("impression_id"), bpath, "impression_id")}
    imp["inview_off"], inview = list_column(beh, "article_ids_inview", bpath)
    imp["clicked_off"], clicked = list_column(beh, "article_ids_clicked", bpath)
    n_inview = np.diff(imp["inview_off"])
    if (n_inview == 0).any():
        r = int(np.flatnonzero(n_inview == 0)[0])
        raise InputError(f"impression {imp['id'][r]} has no articles in view", path=bpath,
                         column="article_ids_inview", row=r + 1)
    imp["inview"] = read_ids(inview, bpath, "article_ids_inview")
    imp["clicked"] = read_ids(clicked, bpath, "article_ids_clicked")
    return imp


def _split_by_time(ids: np.ndarray, times: np.ndarray, rule) -> np.ndarray:
    """Step 4: per impression 0 / 1 / 2 (train / valid / test): the last ``test_frac`` of impressions by
    (time, id) are test, the ``valid_frac`` before them valid."""
    n = len(ids)
    order = np.lexsort((ids, times))
    n_test, n_valid = int(round(rule.test_frac * n)), int(round(rule.valid_frac * n))
    split = np.zeros(n, dtype=np.int8)
    split[order[n - n_test:]] = 2
    split[order[n - n_test - n_valid:n - n_test]] = 1
    return split


def _articles(apath: Path) -> SideTable | None:
    """Step 5, ``articles.parquet`` when present: ``category`` and the multi-valued ``subcategory``."""
    import pyarrow.parquet as pq

    if not apath.is_file():
        return None
    art = pq.read_table(apath)
    if "article_id" not in art.column_names:
        raise InputError(f"missing column (columns are {art.column_names})", path=apath, column="article_id")
    a_id = read_ids(art.column("article_id"), apath, "article_id")
    if len(np.unique(a_id)) != len(a_id):
        raise InputError("duplicate article_id", path=apath, column="article_id")
    side = SideTable(key=a_id, path=str(apath))
    if "category" in art.column_names:
        side.single["category"] = read_categorical(art.column("category"))
    if "subcategory" in art.column_names:
        so, sv = list_column(art, "subcategory", apath)
        side.multi["subcategory"] = Multi(so, np.asarray(sv.to_numpy(zero_copy_only=False)))
    return side


def read_ebnerd(folder: Path, rule):
    """Read an EB-NeRD folder into a :class:`SeqDataset` (rules in the module doc), in steps: histories,
    impressions, events and samples per user, the time split, vocabularies and article features."""
    import pyarrow.parquet as pq

    from .dataset import SeqDataset, dataset_meta
    from .encode import item_feature_table

    folder = Path(folder)
    bpath, hpath, apath = folder / "behaviors.parquet", folder / "history.parquet", folder / "articles.parquet"
    beh, hist = pq.read_table(bpath), pq.read_table(hpath)
    for t, p, cols in ((beh, bpath, ("impression_id", "impression_time", "user_id")), (hist, hpath, ("user_id",))):
        for c in cols:
            if c not in t.column_names:
                raise InputError(f"missing column (columns are {t.column_names})", path=p, column=c)
    h_user, h_off, h_art, h_time = _histories(hist, hpath)
    imp = _impressions(beh, bpath)

    # step 3: users (history users, then behaviour-only ones); events per user sorted by (time, article)
    users = np.unique(np.concatenate([h_user, imp["user"]]))
    ev_user = np.repeat(np.searchsorted(users, h_user), np.diff(h_off))
    order = np.lexsort((h_art, h_time, ev_user))
    ev_user, ev_art, ev_time = ev_user[order], h_art[order], h_time[order]
    offsets = np.r_[0, np.cumsum(np.bincount(ev_user, minlength=len(users)))].astype(np.int64)
    # samples: (impression, article in view); label: the pair is among the clicked ones
    n_imp = len(imp["id"])
    imp_of = np.repeat(np.arange(n_imp), np.diff(imp["inview_off"]))
    s_user, s_time = np.searchsorted(users, imp["user"])[imp_of], imp["time"][imp_of]
    click_imp = np.repeat(np.arange(n_imp), np.diff(imp["clicked_off"]))
    label = np.isin(*_pairs(imp_of, imp["inview"], click_imp, imp["clicked"])).astype(np.float32)
    # seq_len = events of the user strictly before the impression time (one sorted int64 key)
    t0 = min(int(ev_time.min(initial=0)), int(s_time.min(initial=0)))
    key_ev = (ev_user.astype(np.int64) << 34) + (ev_time - t0)
    pos = (np.searchsorted(key_ev, (s_user.astype(np.int64) << 34) + (s_time - t0), side="left")
           - offsets[s_user]).astype(np.int64)

    if rule.by_time:                       # one global cut (time slices): by impression time
        s_split = time_split(imp["time"], rule)[0][imp_of]
    else:
        s_split = _split_by_time(imp["id"], imp["time"], rule)[imp_of]
    keep = pos >= rule.min_history
    # vocabularies: articles of any history or training impression; users with a training sample
    train = keep & (s_split == 0)
    item_ids, item_vocab = encode(np.concatenate([ev_art, imp["inview"]]), np.r_[np.ones(len(ev_art), bool), train])
    seq_items, targets = item_ids[:len(ev_art)], item_ids[len(ev_art):]
    user_ids, user_vocab = encode(users, np.bincount(s_user[train], minlength=len(users)) > 0)
    vocab_size = len(item_vocab) + 2
    item_feats, item_names, ivocabs, isizes = item_feature_table(vocab_size, seq_items, {}, np.ones(0, bool),
                                                                 _articles(apath), item_vocab)
    sel = np.flatnonzero(keep)
    ds = SeqDataset(
        seq_items=seq_items.astype(np.int32), offsets=offsets, item_feats=item_feats,
        user_feats=user_ids[:, None].astype(np.int32),
        sample_user=s_user[sel].astype(np.int32), sample_pos=pos[sel].astype(np.int32),
        sample_target=targets[sel].astype(np.int32), label=label[sel], split=s_split[sel],
        seq_ts=ev_time.astype(np.int64), sample_ts=s_time[sel].astype(np.int64),
        meta=dataset_meta(folder.name, "ebnerd-v1", f"ebnerd:{folder.name}",
                          sha256_files([bpath, hpath] + ([apath] if apath.is_file() else [])), rule.__dict__,
                          item_names, ["user_id"], {"item_id": vocab_size, "user_id": len(user_vocab) + 2, **isizes},
                          len(users), len(ev_art)),
        vocab_arrays={"item_id": item_vocab, "user_id": user_vocab, **ivocabs},
    )
    return ds.record_lengths()


def _pairs(a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One int64 key per (impression row, article id) pair, for two lists of pairs on one code of the
    article ids (integers as they are; anything else by its string form, coded over both lists
    together, so an id has the same code in the in-view and the clicked lists)."""
    b1, b2 = np.asarray(b1), np.asarray(b2)
    if b1.dtype.kind not in "iu" or b2.dtype.kind not in "iu":
        codes = np.unique(np.concatenate([b1.astype(str), b2.astype(str)]), return_inverse=True)[1].reshape(-1)
        b1, b2 = codes[:len(b1)], codes[len(b1):]

    def key(a, b):
        return (np.asarray(a, np.int64) << 32) + (np.asarray(b).astype(np.int64) & 0xFFFFFFFF)

    return key(a1, b1), key(a2, b2)
