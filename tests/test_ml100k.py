"""The real built-in dataset: protocol counts (checked by independent code) and a short DIN run.

Downloads the ``recbole==1.2.1`` wheel with pip into the user cache on first use."""
from __future__ import annotations

import json
import zipfile
from collections import defaultdict

import pytest

from seqctr.cli import main
from seqctr.utils.io import seqctr_home

pytestmark = pytest.mark.integration


def independent_counts(inter_lines):
    """Split and bucket counts straight from the protocol text, with plain Python."""
    by_user = defaultdict(list)
    for line in inter_lines[1:]:
        u, i, r, t = line.split("\t")
        by_user[u].append((float(t), int(i)))
    rows = {"train": 0, "valid": 0, "test": 0}
    buckets = [0, 0, 0, 0]
    for events in by_user.values():
        n = len(events) - 1                       # samples: interactions 1..len-1
        k = max(1, round(0.1 * n))
        rows["test"] += k
        rows["valid"] += k
        rows["train"] += n - 2 * k
        for seq_len in range(n - k + 1, n + 1):   # the test samples' history lengths
            buckets[0 if seq_len < 50 else 1 if seq_len < 100 else 2 if seq_len < 200 else 3]+= 1
    return rows, buckets


def test_protocol_counts(capsys, ml100k_ds):
    assert main(["prepare", "ml100k", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # independent reading: straight out of the wheel pip downloaded
    wheel = seqctr_home() / "downloads" / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read("recbole/dataset_example/ml-100k/ml-100k.inter").decode().splitlines()
    rows, buckets = independent_counts(lines)
    assert rows == {"train": 79279, "valid": 9889, "test": 9889}  # the protocol's numbers
    assert buckets == [1209, 1484, 3087, 4109]
    assert {s: out[s]["rows"] for s in rows} == rows
    assert list(out["test"]["buckets"].values()) == buckets
    assert list(out["test"]["buckets"]) == ["[1,50)", "[50,100)", "[100,200)", "[200,inf)"]


def test_grouplens_folder_gives_the_same_samples(tmp_path, ml100k_ds):
    """A GroupLens-format folder (u.data / u.item / u.user) yields the identical dataset."""
    import numpy as np

    from seqctr.data import prepare
    from seqctr.data.sources import GROUPLENS_GENRES, fetch_ml100k

    raw = fetch_ml100k()
    gl = tmp_path / "ml-100k"
    gl.mkdir()
    inter = (raw / "ml-100k.inter").read_text().splitlines()[1:]
    (gl / "u.data").write_text("\n".join(inter) + "\n")
    items = []
    for ln in (raw / "ml-100k.item").read_text().splitlines()[1:]:
        iid, title, year, genres = (ln.split("\t") + [""] * 4)[:4]
        flags = ["1" if g in genres.split(" ") else "0" for g in GROUPLENS_GENRES]
        items.append("|".join([iid, title, year, "", ""] + flags))
    (gl / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    users = ["|".join(ln.split("\t")) for ln in (raw / "ml-100k.user").read_text().splitlines()[1:]]
    (gl / "u.user").write_text("\n".join(users) + "\n")
    ds, _, _ = prepare(str(gl), home=tmp_path / "h")
    for name in ("seq_items", "offsets", "sample_pos", "label", "split", "user_feats", "item_feats"):
        np.testing.assert_array_equal(getattr(ds, name), getattr(ml100k_ds, name), err_msg=name)


def test_short_din_run_learns(tmp_path, ml100k_ds):
    """A few hundred steps of DIN on ml100k clearly beat chance on the test split."""
    from seqctr.config import load_config
    from seqctr.training import Trainer

    cfg = load_config(None, ["train.epochs=1", "train.max_steps=250", "data.max_len=50"])
    res = Trainer(cfg, ml100k_ds, tmp_path / "run", progress=False).fit(log=lambda *_: None)
    assert res["test"]["overall"]["auc"] > 0.72
    assert res["test"]["overall"]["n"] == 9889


def test_longctr_round_trip_of_ml100k(tmp_path, ml100k_ds):
    """ml100k exported to LongCTR's layout (`seqctr export-data --format longctr`) and read back:
    identical samples, histories, labels, feature tables and vocabularies."""
    from seqctr.data import prepare
    from seqctr.data.longctr import export_longctr
    from tests.data.test_longctr import assert_same_dataset

    export_longctr(ml100k_ds, tmp_path / "lc")
    back, _, _ = prepare(str(tmp_path / "lc"), home=tmp_path / "h")
    assert_same_dataset(ml100k_ds, back)
