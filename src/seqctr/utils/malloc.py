"""Keep freed memory in the process (glibc malloc): tensors of a training step are reused, not
re-faulted from the kernel every step.

glibc serves blocks above its mmap threshold (128 KiB, rising dynamically to at most 32 MiB) with a
fresh ``mmap`` and returns them on free, and trims the heap top back to the kernel; a [256, 200, 128]
float tensor (26 MB, one per target-attention product of a batch) then costs thousands of page
faults each time it is written. With the threshold at 1 GiB and trimming off, freed blocks stay
in the heap and the next step reuses them — the same numbers, faster where tensors are large (ml100k,
max_len 200: training 0.96-1.29x, HSTU the most; ``bench/bench_malloc.py``). The cost: the process keeps
its peak heap until it exits (normal for a training or serving process).

``SEQCTR_MALLOC=system`` leaves malloc as it is. Anything but glibc (musl, macOS, Windows): a no-op.
The CLI and :class:`~seqctr.training.Trainer` call :func:`keep_freed_memory`; a library user
serving from their own process may call it too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # glibc's mallopt parameters (malloc.h)
THRESHOLD = 1 << 30                             # 1 GiB (mallopt takes an int)
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to 1 GiB once per process; True when they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("SEQCTR_MALLOC", "reuse").strip().lower() == "system":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):           # not glibc
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    return _done

