"""Another dataset's ids in a model's id space: old ids keep their rows, new ones grow or go OOV."""
from __future__ import annotations

import numpy as np
import pytest

from seqctr.data import prepare
from seqctr.data.encode import OOV, Vocabulary
from seqctr.data.remap import IdSpace, remap
from seqctr.errors import SeqctrError
from tests.helpers import synthetic_interactions, write_csv

COLS = {"category": "category", "user_features": ["age"]}
LABEL = {"column": "label"}


def _two(tmp_path):
    """An old log (the first 60% of time) and the whole log, prepared separately."""
    rows = synthetic_interactions(n_users=30, n_items=60, string_ids=True, seed=3)
    cut = np.quantile(rows["timestamp"], 0.6)
    for i, t in enumerate(rows["timestamp"]):        # later events bring new items and a new category
        if t >= cut and i % 3 == 0:
            rows["item"][i] = "new-" + rows["item"][i]
            rows["category"][i] = "c-new"
    old = {k: [v for v, t in zip(col, rows["timestamp"]) if t < cut] for k, col in rows.items()}
    a, fa, _ = prepare(str(write_csv(tmp_path / "old.csv", old)), columns=COLS, label=LABEL, home=tmp_path / "h")
    b, fb, _ = prepare(str(write_csv(tmp_path / "new.csv", rows)), columns=COLS, label=LABEL, home=tmp_path / "h")
    return a, fa, b, fb


def _raw(ids, vocab):
    return np.where(ids >= 2, np.r_[["<pad>", "<oov>"], vocab][ids], np.where(ids == 1, "<oov>", "<pad>"))


@pytest.mark.parametrize("grow", [True, False])
def test_remap_keeps_meaning(tmp_path, grow):
    a, fa, b, fb = _two(tmp_path)
    space = IdSpace.of_dataset(a, fa)
    out, grown = remap(b, fb, space, grow)
    vb = np.load(fb / "vocab_item_id.npy")
    va_items = np.load(fa / "vocab_item_id.npy")
    # every old id keeps its row: the model's vocabulary starts with the old one, unchanged
    assert list(grown.vocabs["item_id"][:len(va_items)]) == list(va_items)
    assert out.vocab_sizes["item_id"] == len(grown.vocabs["item_id"]) + 2
    assert (len(grown.vocabs["item_id"]) > len(va_items)) == grow
    # each event's item means the same raw item (or OOV when the model cannot know it)
    before, after = _raw(np.asarray(b.seq_items), vb), _raw(out.seq_items, grown.vocabs["item_id"])
    if grow:
        assert np.array_equal(before, after)
    else:
        same = before == after
        assert same.any() and (after[~same] == "<oov>").all()
        assert not set(before[~same]) & set(va_items)          # only ids the model never saw went OOV
    # old items keep the model's feature row, bit for bit
    assert np.array_equal(out.item_feats[:len(a.item_feats)], np.asarray(a.item_feats))
    assert np.array_equal(out.sample_pos, b.sample_pos) and np.array_equal(out.split, b.split)
    # the grown vocabulary is unsorted, and lookups still find every value
    voc = Vocabulary(grown.vocabs["item_id"], size=out.vocab_sizes["item_id"])
    assert np.array_equal(voc.ids(grown.vocabs["item_id"]), np.arange(len(grown.vocabs["item_id"])) + 2)
    assert voc.ids(["never-seen"])[0] == OOV


def test_remap_refuses_other_features(tmp_path):
    a, fa, b, fb = _two(tmp_path)
    space = IdSpace.of_dataset(a, fa)
    space.item_features = ["item_id"]
    with pytest.raises(SeqctrError, match="item features differ"):
        remap(b, fb, space, True)


@pytest.mark.parametrize("grow", [True, False])
def test_a_multi_valued_feature_of_another_width(tmp_path, grow):
    """Newer items with more genres than any old one: growing takes the wider layout (old rows padded,
    values kept), a frozen model keeps its own width (extra values dropped)."""
    rows = synthetic_interactions(n_users=20, n_items=30, string_ids=True, seed=4)
    cut = np.quantile(rows["timestamp"], 0.6)
    for i, t in enumerate(rows["timestamp"]):
        if t >= cut and i % 4 == 0:
            rows["item"][i] = "new-" + rows["item"][i]
    old = {k: [v for v, t in zip(col, rows["timestamp"]) if t < cut] for k, col in rows.items()}
    items = sorted(set(rows["item"]))
    genres = ["a|b|c|d" if i.startswith("new-") else "a|b" for i in items]
    write_csv(tmp_path / "items.csv", {"item": items, "genres": genres})
    side = {"path": str(tmp_path / "items.csv"), "key": "item", "features": ["genres"], "multi": {"genres": "|"}}
    a, fa, _ = prepare(str(write_csv(tmp_path / "old.csv", old)), columns=COLS, label=LABEL, items=side,
                       home=tmp_path / "h")
    b, fb, _ = prepare(str(write_csv(tmp_path / "new.csv", rows)), columns=COLS, label=LABEL, items=side,
                       home=tmp_path / "h")
    assert a.meta.item_features.count("genres") == 2 and b.meta.item_features.count("genres") == 4
    out, space = remap(b, fb, IdSpace.of_dataset(a, fa), grow)
    width = 4 if grow else 2
    assert out.meta.item_features.count("genres") == width == space.item_features.count("genres")
    g = [j for j, n in enumerate(out.meta.item_features) if n == "genres"]
    old_g = [j for j, n in enumerate(a.meta.item_features) if n == "genres"]
    n_old = len(a.item_feats)
    assert np.array_equal(out.item_feats[:n_old, g[:2]], np.asarray(a.item_feats)[:, old_g])   # old rows kept
    assert (out.item_feats[:n_old, g[2:]] == 0).all()                                            # padded
    if grow:
        assert (out.item_feats[n_old:, g] > 0).all(), "a new item lost a genre"
