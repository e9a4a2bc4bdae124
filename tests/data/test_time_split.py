"""Splits by time (``data.split.train_until``): one global cut, vocabularies from what training sees,
samples outside the windows kept as history only."""
from __future__ import annotations

import numpy as np
import pytest

from seqctr.config import SplitRule
from seqctr.data import prepare
from seqctr.data.split import UNUSED, time_split
from seqctr.errors import ConfigError

COLS = {"category": "category", "user_features": ["age"]}
LABEL = {"column": "label"}


def test_time_split_windows_and_valid_tail():
    ts = np.array([5, 1, 9, 3, 7, 11, 13, 2, 8, 15])
    rule = SplitRule.from_dict({"train_from": 2, "train_until": 10, "test_until": 14, "valid_frac": 0.25})
    sp, fit_until = time_split(ts, rule)
    window = ts[(ts >= 2) & (ts < 10)]                      # 5, 9, 3, 7, 2, 8: 6 samples, the latest 2 validate
    assert fit_until == np.sort(window)[-2] == 8
    assert sp.tolist() == [0, UNUSED, 1, 0, 0, 2, 2, 0, 1, UNUSED]


@pytest.mark.parametrize("bad", [{"train_from": 5}, {"train_until": 5, "test_until": 5},
                                 {"train_from": 9, "train_until": 5}, {"train_until": 1.5}])
def test_time_split_rule_is_checked(bad):
    with pytest.raises(ConfigError, match="data.split"):
        SplitRule.from_dict(bad)


def test_prepared_by_time(synth_csv, tmp_path):
    whole, _, _ = prepare(str(synth_csv), columns=COLS, label=LABEL, home=tmp_path / "h")
    t = np.quantile(whole.sample_ts, [0.5, 0.75]).astype(int)
    split = {"train_until": int(t[0]), "test_until": int(t[1]), "valid_frac": 0.1}
    ds, folder, _ = prepare(str(synth_csv), columns=COLS, label=LABEL, split=split, home=tmp_path / "h")
    assert (ds.sample_ts[ds.split == 2] >= t[0]).all() and (ds.sample_ts[ds.split == 2] < t[1]).all()
    assert (ds.sample_ts[ds.split <= 1] < t[0]).all()
    assert (ds.sample_ts[ds.split == 0].max() <= ds.sample_ts[ds.split == 1].min())
    assert ((ds.split == UNUSED) == (ds.sample_ts >= t[1])).all()
    # histories are unchanged: the same samples with the same lengths as the per-user split
    assert np.array_equal(ds.sample_pos, whole.sample_pos)
    # vocabularies: exactly the items of events before validation starts
    import pyarrow.csv as pacsv

    fit_until = ds.sample_ts[ds.split == 1].min()
    tab = pacsv.read_csv(synth_csv).to_pydict()
    seen = {str(i) for i, t in zip(tab["item"], tab["timestamp"]) if t < fit_until}
    assert set(np.load(folder / "vocab_item_id.npy").tolist()) == seen
    known = ds.seq_items[ds.seq_ts < fit_until]
    assert (known >= 2).all(), "an event training sees is out of vocabulary"


def test_prepare_command_splits_by_time(synth_csv, seqctr_home, capsys):
    import json

    from seqctr.cli import main

    args = ["prepare", str(synth_csv), "--columns", "category=category", "--label-column", "label", "--json"]
    assert main(args) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(args + ["--train-until", "1500000", "--test-until", "1800000"]) == 0
    by_time = json.loads(capsys.readouterr().out)
    assert by_time["cache"] != whole["cache"]
    assert by_time["test"]["rows"] < whole["test"]["rows"] + whole["train"]["rows"]
    assert main(args + ["--test-until", "1800000"]) == 2          # test_until without train_until: refused
    assert "train_until" in capsys.readouterr().err
