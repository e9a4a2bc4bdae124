"""Files keep the umask's modes; progress reads well in a log; provenance is recorded."""
from __future__ import annotations

import os
import stat

import pytest

from seqctr.utils.io import atomic_dir, provenance, write_json
from seqctr.utils.progress import Progress


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_written_files_respect_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "cache") as d:
            (d / "x.npy").write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == dir_mode


def test_progress_in_a_log_is_plain_lines_with_counts_and_eta():
    lines = []
    p = Progress(range(5), "epoch 1", enabled=None, every_s=0.0, log=lines.append)
    p.mode = "lines"                                   # as under nohup (pytest's stderr may be a TTY)
    for i in p:
        p.note(loss=f"{0.5 - i / 10:.2f}")
    assert lines and all(ln.startswith("epoch 1: ") and "left" in ln for ln in lines)
    assert "(1/5)" in lines[0] and "loss 0.50" in lines[0]
    assert not any("\r" in ln for ln in lines)
    quiet = []
    assert list(Progress(range(3), "x", enabled=False, every_s=0.0, log=quiet.append)) == [0, 1, 2] and not quiet


def test_provenance_names_versions_and_commit():
    import torch

    from seqctr import __version__

    p = provenance()
    assert p["seqctr"] == __version__ and p["torch"] == torch.__version__
    assert "git_commit" not in p or len(p["git_commit"].split("-")[0]) == 40


@pytest.mark.parametrize("replace", [True, False])
def test_a_folder_another_writer_finished_meanwhile(tmp_path, replace):
    """Two processes writing the same folder at once (two seeds warm-starting from one model, two runs
    preparing the same data): neither fails; ``replace=False`` keeps the first folder, ``True`` the last."""
    dest = tmp_path / "prepared" / "key"
    with atomic_dir(dest, replace=replace) as tmp:
        (tmp / "meta.json").write_text("mine")
        with atomic_dir(dest) as other:                    # the other writer lands first
            (other / "meta.json").write_text("theirs")
    assert (dest / "meta.json").read_text() == ("mine" if replace else "theirs")
    assert [p.name for p in dest.parent.iterdir()] == ["key"]          # no temporary folder left
