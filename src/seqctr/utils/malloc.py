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




_trimmer = None
TRIM_SLACK = 32 << 20         # resident bytes a serving worker may hold above its base and cache budget


def trim_slack() -> int:
    """Bytes of :data:`TRIM_SLACK`, or ``SEQCTR_MALLOC_TRIM_SLACK_MB`` when set."""
    mb = os.environ.get("SEQCTR_MALLOC_TRIM_SLACK_MB")
    return int(float(mb) * (1 << 20)) if mb else TRIM_SLACK


def resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def start_trimmer(above_bytes: int | None = None, period_s: float | None = None) -> bool:
    """A daemon thread that, every ``period_s`` seconds (``SEQCTR_MALLOC_TRIM_S``, default 1; 0: no
    thread), hands the heap's free pages back to the kernel (glibc ``malloc_trim(0)``) whenever the
    process's resident memory is above ``above_bytes`` (None: every time).

    For a long-lived serving process under :func:`keep_freed_memory`: cache entries of every size
    are made and dropped between the requests' short-lived buffers, and the free space left between
    them stays resident while nothing trims it, so resident memory creeps past what the caches
    hold. A trim returns whole free pages only (nothing in use moves); requests that need them again
    fault them back in. Trimming only above a limit (a worker's base, its cache budget and
    :data:`TRIM_SLACK`, or ``SEQCTR_MALLOC_TRIM_SLACK_MB``) holds memory to the budget and costs
    nothing while memory is below it (``bench/soak_service.py``). True when the thread runs."""
    global _trimmer
    if _trimmer is not None:
        return True
    if period_s is None:
        period_s = float(os.environ.get("SEQCTR_MALLOC_TRIM_S", 1.0) or 0)
    if period_s <= 0:
        return False
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):           # not glibc
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    import threading
    import time

    def run():
        while True:
            time.sleep(period_s)
            if above_bytes is None or resident_bytes() > above_bytes:
                trim(0)

    _trimmer = threading.Thread(target=run, name="seqctr-malloc-trim", daemon=True)
    _trimmer.start()
    return True
