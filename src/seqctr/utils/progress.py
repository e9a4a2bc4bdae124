"""Progress that reads well on a terminal and in a log file.

On a terminal: a tqdm bar. Elsewhere (nohup, a batch system, CI): one plain line every
``every_s`` seconds — ``epoch 3: 41% (144/352) 3.1 it/s, ~1m07s left, loss 0.5123`` — so a log
shows where a long job is without carriage-return noise. ``enabled=False`` shows nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Iterate ``items`` with progress; ``note(**kv)`` sets what the next line or the bar shows."""

    def __init__(self, items: Iterable, desc: str, enabled: bool | None = None, every_s: float = 30.0,
                 log: Callable[[str], None] | None = None, total: int | None = None):
        self.items, self.desc, self.every_s = items, desc, every_s
        self.total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        tty = sys.stderr.isatty()
        self.mode = "off" if enabled is False else ("bar" if (enabled or tty) else "lines")
        self.notes: dict = {}
        self._bar = None

    def note(self, **kv) -> None:
        self.notes.update(kv)
        if self._bar is not None:
            self._bar.set_postfix(**self.notes)

    def __iter__(self) -> Iterator:
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(self.items, desc=self.desc, total=self.total, leave=False, dynamic_ncols=True)
            yield from self._bar
            self._bar.close()
            return
        t0 = last = time.monotonic()
        for k, item in enumerate(self.items, start=1):
            yield item
            now = time.monotonic()
            if self.mode == "lines" and now - last >= self.every_s and (self.total is None or k < self.total):
                last = now
                rate = k / max(now - t0, 1e-9)
                where = f"{100 * k / self.total:.0f}% ({k}/{self.total})" if self.total else f"{k}"
                left = f", ~{_fmt((self.total - k) / rate)} left" if self.total else ""
                extra = "".join(f", {key} {val}" for key, val in self.notes.items())
                self.log(f"{self.desc}: {where} {rate:.1f} it/s{left}{extra}")
