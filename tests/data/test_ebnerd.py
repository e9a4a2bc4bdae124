"""EB-NeRD: a fixture written in the official schema (integer and string article ids) and, where
../shared has it, the real test sample, each against an independent row-by-row count."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.data import prepare
from tests.data.test_bad_input import assert_clean_error, run_cli
from tests.helpers import shared_path


def reference(folder, valid_frac=0.1, test_frac=0.1):
    """(user, impression, article, label, seq_len, split) per sample, computed the slow way."""
    hist = {r["user_id"]: sorted(zip(r["impression_time_fixed"], r["article_id_fixed"]))
            for r in pq.read_table(folder / "history.parquet").to_pylist()}
    beh = pq.read_table(folder / "behaviors.parquet").to_pylist()
    by_time = sorted(beh, key=lambda r: (r["impression_time"], r["impression_id"]))
    n = len(by_time)
    n_test, n_valid = round(test_frac * n), round(valid_frac * n)
    split = {r["impression_id"]: (2 if i >= n - n_test else 1 if i >= n - n_test - n_valid else 0)
             for i, r in enumerate(by_time)}
    out = []
    for r in beh:
        h = hist.get(r["user_id"], [])
        seq_len = sum(1 for t, _ in h if t < r["impression_time"])
        for a in r["article_ids_inview"]:
            out.append((r["user_id"], r["impression_id"], a, float(a in r["article_ids_clicked"]), seq_len,
                        split[r["impression_id"]]))
    return out


def write_ebnerd(folder, string_ids: bool = False, seed: int = 0, n_users: int = 12, n_imp: int = 60):
    """A small EB-NeRD folder in the official schema (``behaviors.parquet``, ``history.parquet``):
    users with 3-30 past reads, impressions of 2-7 articles in view with 0-2 clicked among them.
    ``string_ids``: article ids as strings (``"a17"``), the case where in-view and clicked ids must
    share one code."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    art = (lambda i: f"a{i}") if string_ids else (lambda i: int(i) + 9000)
    t0 = dt.datetime(2023, 5, 1)
    users = list(range(100, 100 + n_users))
    hist = {"user_id": [], "impression_time_fixed": [], "article_id_fixed": []}
    for u in users:
        n = int(rng.integers(3, 31))
        hist["user_id"].append(u)
        hist["impression_time_fixed"].append([t0 + dt.timedelta(hours=int(h)) for h in np.sort(rng.integers(0, 24 * 20, n))])
        hist["article_id_fixed"].append([art(a) for a in rng.integers(0, 50, n)])
    beh = {"impression_id": [], "impression_time": [], "user_id": [], "article_ids_inview": [], "article_ids_clicked": []}
    for k in range(n_imp):
        inview = [art(a) for a in rng.choice(60, int(rng.integers(2, 8)), replace=False)]
        # clicked: listed in another order than in view, so the two lists' own codes would disagree
        clicked = list(rng.permutation(inview)[:int(rng.integers(0, 3))])
        beh["impression_id"].append(5000 + k)
        beh["impression_time"].append(t0 + dt.timedelta(hours=int(rng.integers(0, 24 * 25))))
        beh["user_id"].append(int(rng.choice(users + [999])))      # 999: a user without a history row
        beh["article_ids_inview"].append(inview)
        beh["article_ids_clicked"].append([x if string_ids else int(x) for x in clicked])
    pq.write_table(pa.table(hist), folder / "history.parquet")
    pq.write_table(pa.table(beh), folder / "behaviors.parquet")
    return folder


@pytest.fixture(params=["int ids", "string ids", "shared sample"])
def ebnerd_folder(request, tmp_path):
    if request.param == "shared sample":
        return shared_path("data", "ebnerd-test-sample")
    return write_ebnerd(tmp_path / "ebnerd", string_ids=request.param == "string ids")


def test_counts_match_an_independent_computation(tmp_path, ebnerd_folder):
    folder = ebnerd_folder
    ds, cache, _ = prepare(str(folder), home=tmp_path / "h")
    assert cache.name.startswith(f"{folder.name}-ebnerd-v1-")
    ref = [r for r in reference(folder) if r[4] >= 1]                  # min_history 1 (the default)
    assert len(ds.label) == len(ref)
    assert int(ds.label.sum()) == int(sum(r[3] for r in ref))
    assert Counter(zip(ds.sample_pos.tolist(), ds.split.tolist(), ds.label.tolist())) == \
        Counter((r[4], r[5], r[3]) for r in ref)
    # histories: the articles before the impression, in time order, by raw id
    vocab = ds.raw_vocab(cache, "item_id")
    hist = {r["user_id"]: [a for _, a in sorted(zip(r["impression_time_fixed"], r["article_id_fixed"]))]
            for r in pq.read_table(folder / "history.parquet").to_pylist()}
    users = ds.raw_vocab(cache, "user_id")
    for s in range(0, len(ds.label), 97):
        u = ds.sample_user[s]
        raw_user = int(users[ds.user_feats[u, 0] - 2]) if ds.user_feats[u, 0] >= 2 else None
        seq = ds.seq_items[ds.offsets[u]:ds.offsets[u] + ds.sample_pos[s]]
        if raw_user is not None:
            assert [vocab[i - 2] for i in seq] == [str(a) for a in hist[raw_user][:len(seq)]]
    # sample by sample (impressions in file order, articles in view in order): each label is the click
    # of that very article, and each known target is that article
    assert ds.label.tolist() == [r[3] for r in ref]
    for t, r in zip(ds.sample_target.tolist(), ref):
        if t >= 2:
            assert vocab[t - 2] == str(r[2])


def test_articles_table_gives_the_category(tmp_path):
    folder = write_ebnerd(tmp_path / "eb")
    beh = pq.read_table(folder / "behaviors.parquet")
    ids = sorted({a for r in beh.column("article_ids_inview").to_pylist() for a in r})
    cat = {a: a % 7 for a in ids}
    sub = {a: [a % 3, a % 5 + 10] for a in ids}
    pq.write_table(pa.table({"article_id": ids, "category": [cat[a] for a in ids],
                             "subcategory": [sub[a] for a in ids]}), folder / "articles.parquet")
    ds, cache, _ = prepare(str(folder), home=tmp_path / "h")
    names = ds.meta.item_features
    assert names[:2] == ["item_id", "category"] and names.count("subcategory") == 2
    vocab, cv = ds.raw_vocab(cache, "item_id"), ds.raw_vocab(cache, "category")
    for i in range(2, len(vocab) + 2, 37):
        a = int(vocab[i - 2])
        if a in cat:
            assert cv[ds.item_feats[i, 1] - 2] == str(cat[a])


def test_impression_without_articles_in_view(tmp_path, seqctr_home, capsys):
    folder = write_ebnerd(tmp_path / "eb")
    beh = pq.read_table(folder / "behaviors.parquet").to_pydict()
    beh["article_ids_inview"][4] = []
    pq.write_table(pa.table(beh), folder / "behaviors.parquet")
    code, _, err = run_cli(["prepare", str(folder)], capsys)
    assert_clean_error(code, err, seqctr_home, "behaviors.parquet", "'article_ids_inview'", "row 5",
                       "no articles in view")
