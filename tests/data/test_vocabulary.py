"""Vocabulary: the one owner of the padding / out-of-vocabulary / ids-as-given rules."""
from __future__ import annotations

import numpy as np

from seqctr.data.encode import OOV, PAD, Vocabulary, encode


def test_encoded_vocabulary_reads_back_what_encode_made_and_sends_unknowns_to_oov():
    raw = np.array(["b", "a", "c", "a", "z"], dtype=object)
    ids, values = encode(raw, np.array([True, True, True, True, False]))
    v = Vocabulary(values)
    assert v.unknown == OOV
    assert v.ids(raw[:4]).tolist() == ids[:4].tolist() and v.ids(["z", "nope"]).tolist() == [OOV, OOV]
    assert v.ids([]).shape == (0,)


def test_ids_as_given_have_no_oov_row_and_respect_the_offset():
    items = Vocabulary(None, size=5)                       # LongCTR items: id r is row r
    assert items.unknown == PAD
    assert items.ids(["1", "4", "0", "5", "-2", "x", 3]).tolist() == [1, 4, PAD, PAD, PAD, PAD, 3]
    users = Vocabulary(None, size=6, offset=2)             # LongCTR users: row r + 2
    assert users.ids(["0", "3", "4", "-1", "+1"]).tolist() == [2, 5, PAD, PAD, PAD]
