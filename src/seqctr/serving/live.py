"""A model swapped while traffic flows (``POST /v1/admin/reload``): no restart, no mixed answers.

Each worker process serves :attr:`Live.scorer`. A request reads that reference once, at its start,
and uses that scorer to the end, so a request in flight finishes on the model it started with and
its answer names that model's fingerprint; a reload builds the new scorer completely (bundle loaded
and checked, its store for the new fingerprint: same histories, caches keyed to the new weights)
before one assignment swaps it in. A broken bundle is refused and the old model keeps serving.

Several workers: the worker that takes the reload writes the control file (``SEQCTR_SERVE_CONTROL``,
JSON ``{"generation": n, "model": path}``, replaced atomically under a file lock); every worker
polls it and loads generation ``n`` when it sees it, so all workers follow within the poll interval.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger("seqctr.serve")


def read_control(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {"generation": 0, "model": None}


def write_control(path: Path, model: str, generation: int = 0) -> None:
    """Write the control file atomically (a reader sees the old or the new content, never half)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"generation": int(generation), "model": str(model)}))
    os.replace(tmp, path)


class Live:
    """The scorer this worker serves now. ``make(model_path, old_scorer) -> Scorer`` builds a new one;
    ``generation``: the control file's generation ``scorer`` was loaded at (0 without one)."""

    def __init__(self, scorer, model: str, make: Callable, control: str | Path | None = None, generation: int = 0):
        self.scorer, self.model, self._make = scorer, str(model), make
        self.control = Path(control) if control else None
        self.generation = generation
        self._lock = threading.Lock()

    def _swap(self, model: str, generation: int):
        new = self._make(model, self.scorer)          # everything that can fail happens before the swap
        old, self.scorer = self.scorer, new
        self.model, self.generation = str(model), generation
        log.warning("reloaded %s: model %s -> %s (generation %d)", model, old.fingerprint, new.fingerprint,
                    generation)
        return old, new

    def reload(self, model: str | None = None) -> dict:
        """Load ``model`` (default: the current bundle path, read again), swap it in here and tell
        the other workers. Returns ``{"model", "previous", "generation"}``."""
        model = str(model or self.model)
        with self._lock:
            if self.control is None:
                old, new = self._swap(model, self.generation + 1)
            else:
                with open(self.control.with_name(self.control.name + ".lock"), "a") as lk:
                    fcntl.flock(lk, fcntl.LOCK_EX)
                    gen = max(read_control(self.control)["generation"], self.generation) + 1
                    old, new = self._swap(model, gen)
                    write_control(self.control, model, gen)
        return {"model": new.fingerprint, "previous": old.fingerprint, "generation": self.generation}

    def follow(self) -> None:
        """Load what the control file names when its generation is newer than ours (other workers' reloads)."""
        if self.control is None:
            return
        ctl = read_control(self.control)
        if ctl["generation"] <= self.generation or not ctl.get("model"):
            return
        with self._lock:
            if ctl["generation"] > self.generation:
                try:
                    self._swap(ctl["model"], ctl["generation"])
                except Exception as e:  # a bundle that another worker could load and this one cannot
                    log.error("reload of %s (generation %d) failed in this worker; still serving %s: %s",
                              ctl["model"], ctl["generation"], self.scorer.fingerprint, e)
                    self.generation = ctl["generation"]

    def watch(self, interval_s: float = 0.2) -> threading.Thread | None:
        """Poll the control file in a daemon thread (several workers)."""
        if self.control is None:
            return None

        def loop():
            while True:
                time.sleep(interval_s)
                with contextlib.suppress(Exception):
                    self.follow()

        t = threading.Thread(target=loop, name="seqctr-reload-watch", daemon=True)
        t.start()
        return t

