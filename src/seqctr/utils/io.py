"""Atomic writes: a file or folder appears complete under its final name, or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN / infinite floats as None (so the text is valid JSON: ``null``, never ``NaN``)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.floating):
            return json_safe(float(obj))
    except ImportError:  # pragma: no cover
        pass
    return obj


def read_metrics(path: str | os.PathLike) -> Any:
    """Read a metrics-like JSON file written by :func:`write_json`: its nulls (NaN when written,
    e.g. the AUC of an empty bucket) come back as NaN so averages over seeds stay NumPy-correct."""
    def back(o):
        if o is None:
            return float("nan")
        if isinstance(o, dict):
            return {k: back(v) for k, v in o.items()}
        if isinstance(o, list):
            return [back(v) for v in o]
        return o

    return back(json.loads(Path(path).read_text()))


def dumps(obj: Any, **kw) -> str:
    """Strict JSON text of ``obj`` (NaN -> null; NumPy scalars and arrays, paths converted)."""
    return json.dumps(json_safe(obj), allow_nan=False, default=_json_default, **kw)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (NaN -> null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(obj, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seqctr_home() -> Path:
    """Cache folder: ``$SEQCTR_HOME`` or ``~/.cache/seqctr``."""
    return Path(os.environ.get("SEQCTR_HOME", Path.home() / ".cache" / "seqctr")).expanduser()
