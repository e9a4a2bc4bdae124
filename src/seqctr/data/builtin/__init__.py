"""Datasets shipped inside the package.

``ml-latest-small/``: the GroupLens MovieLens ml-latest-small release (2018-09-26), unchanged, with
its README.txt (licence and the citation it asks for: F. Maxwell Harper and Joseph A. Konstan. 2015.
The MovieLens Datasets: History and Context. ACM TiiS 5, 4: 19:1-19:19). Its licence allows
redistribution under the same conditions; research use only, no endorsement implied.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ...errors import SeqctrError


def ml_latest_small() -> Path:
    """Folder of the shipped ml-latest-small files."""
    folder = Path(str(resources.files(__name__) / "ml-latest-small"))
    if not (folder / "ratings.csv").is_file():
        raise SeqctrError(f"the shipped ml-latest-small files are missing from {folder}; reinstall seqctr")
    return folder
