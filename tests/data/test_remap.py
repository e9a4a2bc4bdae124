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
    with pytest.raises(SeqctrError, match="item feature columns differ"):
        remap(b, fb, space, True)
