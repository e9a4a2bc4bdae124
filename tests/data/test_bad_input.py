"""Bad input: one clear line naming file and column (and row), exit code 2, no partial cache."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqctr.cli import main
from tests.helpers import synthetic_interactions, write_csv


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_clean_error(code, err, home, *needles):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith("seqctr: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    prepared = home / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir()), "partial cache left behind"


@pytest.fixture
def rows():
    return synthetic_interactions(n_users=6, seed=0)


def test_missing_column(tmp_path, rows, seqctr_home, capsys):
    del rows["timestamp"]
    p = write_csv(tmp_path / "a.csv", rows)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "label"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'timestamp'", "missing column")


def test_timestamp_neither_number_nor_date(tmp_path, rows, seqctr_home, capsys):
    rows["timestamp"] = ["2020-01-01"] * (len(rows["user"]) - 1) + ["yesterday"]
    p = write_csv(tmp_path / "a.csv", rows)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "label"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'timestamp'", f"row {len(rows['user'])}", "yesterday")


def test_nan_label(tmp_path, rows, seqctr_home, capsys):
    rows["label"] = [float(v) for v in rows["label"]]
    rows["label"][4] = float("nan")
    p = write_csv(tmp_path / "a.csv", rows)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "label"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'label'", "row 5", "NaN")


def test_nan_rating_parquet(tmp_path, rows, seqctr_home, capsys):
    rows["rating"] = [3.0] * len(rows["user"])
    rows["rating"][2] = None
    del rows["label"]
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table(rows), p)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "rating", "--threshold", "4"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'rating'", "row 3")


def test_label_of_wrong_dtype(tmp_path, rows, seqctr_home, capsys):
    rows["label"] = ["yes" if v else "no" for v in rows["label"]]
    p = write_csv(tmp_path / "a.csv", rows)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "label"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'label'", "numeric")


def test_label_not_binary(tmp_path, rows, seqctr_home, capsys):
    rows["label"][7] = 5
    p = write_csv(tmp_path / "a.csv", rows)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "label"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'label'", "row 8")


def test_missing_user_id(tmp_path, rows, seqctr_home, capsys):
    rows["user"][3] = None
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table(rows), p)
    code, _, err = run_cli(["prepare", str(p), "--label-column", "label"], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "'user'", "row 4")


def test_empty_file(tmp_path, seqctr_home, capsys):
    p = tmp_path / "empty.csv"
    p.write_text("")
    code, _, err = run_cli(["prepare", str(p)], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "empty")


def test_header_only_file(tmp_path, seqctr_home, capsys):
    p = tmp_path / "h.csv"
    p.write_text("user,item,timestamp,label\n")
    code, _, err = run_cli(["prepare", str(p)], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "no rows")


def test_corrupt_parquet(tmp_path, seqctr_home, capsys):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1" + b"\x00garbage" * 50)
    code, _, err = run_cli(["prepare", str(p)], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "cannot read as parquet")


def test_path_does_not_exist(tmp_path, seqctr_home, capsys):
    p = tmp_path / "nope.parquet"
    code, _, err = run_cli(["prepare", str(p)], capsys)
    assert_clean_error(code, err, seqctr_home, str(p), "does not exist")


def test_debug_shows_traceback(tmp_path, seqctr_home):
    from seqctr.errors import InputError

    with pytest.raises(InputError):
        main(["--debug", "prepare", str(tmp_path / "nope.csv")])


def test_failed_rebuild_keeps_existing_cache(tmp_path, monkeypatch, rows):
    """An error while writing a dataset leaves the earlier complete cache in place."""
    from seqctr.data import prepare
    from seqctr.data.dataset import SeqDataset

    p = write_csv(tmp_path / "a.csv", rows)
    home = tmp_path / "h"
    ds, folder, _ = prepare(str(p), label={"column": "label"}, home=home)
    before = sorted(f.name for f in folder.iterdir())

    real_save = SeqDataset.save

    def broken_np_save(*a, **k):
        raise OSError("disk full")

    import numpy as np

    monkeypatch.setattr(np, "save", broken_np_save)
    with pytest.raises(OSError):
        prepare(str(p), label={"column": "label"}, home=home, force=True)
    monkeypatch.undo()
    assert sorted(f.name for f in folder.iterdir()) == before
    assert [f.name for f in folder.parent.iterdir()] == [folder.name], "temp folder left behind"
    SeqDataset.load(folder)  # still loads
    assert real_save is SeqDataset.save


def test_ml100k_offline_error_says_how_to_provide_files(tmp_path, monkeypatch, capsys):
    """No network and no cache: the error explains the three ways to provide the data."""
    monkeypatch.setenv("SEQCTR_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    code, _, err = run_cli(["prepare", "ml100k"], capsys)
    assert code == 2
    assert "recbole-1.2.1-py3-none-any.whl" in err and "u.data" in err and "downloads" in err
