"""Atomic writes: a file or folder appears complete under its final name, or not at all."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto ``path`` only if the block succeeds.
    The file gets the mode an ordinary ``open(path, "w")`` would (0666 less the umask), not
    ``mkstemp``'s private 0600, so shared run folders and caches stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.
    The folder and what was written into it keep the umask's modes (not ``mkdtemp``'s 0700).
    ``replace=False`` (a folder named by its content, e.g. a prepared dataset's cache key): when another
    process has written ``path`` meanwhile, its folder is kept and this one dropped, so two processes
    preparing the same data at once both succeed. With ``replace=True`` the last writer's folder stands."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for attempt in range(3):
            if path.exists():
                if not replace:
                    return
                shutil.rmtree(path, ignore_errors=True)
            try:
                os.replace(tmp, path)
                return
            except OSError as e:     # another writer's folder landed between the check and the rename
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == 2:
                    raise
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


def write_predictions(path: str | os.PathLike, index, prob) -> None:
    """A split's saved predictions (``index``: the samples, ``prob``: their probabilities) as ``.npz``,
    atomically: what ``seqctr report`` and the suites' summaries read back."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, index=index, prob=prob)


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


def provenance() -> dict:
    """Versions and the git commit (when run from a checkout) recorded beside results."""
    import platform
    import subprocess

    from .version import __version__

    out = {"seqctr": __version__, "python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    root = Path(__file__).resolve().parents[3]
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if res.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            out["git_commit"] = res.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def seqctr_home() -> Path:
    """Cache folder: ``$SEQCTR_HOME`` or ``~/.cache/seqctr``."""
    return Path(os.environ.get("SEQCTR_HOME", Path.home() / ".cache" / "seqctr")).expanduser()
