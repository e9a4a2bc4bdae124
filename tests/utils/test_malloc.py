"""keep_freed_memory: on glibc a large tensor comes from the heap (reused after free), not from a
fresh mmap; SEQCTR_MALLOC=system leaves glibc as it is. Each case in its own process (the setting
is process-wide and set once)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

PROBE = """
import ctypes, json, torch
from seqctr.utils.malloc import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
set_ = keep_freed_memory()
again = keep_freed_memory()
before = libc.mallinfo2().hblkhd
x = torch.ones(256, 200, 128)                       # 26 MB: above glibc's default mmap threshold
mapped = libc.mallinfo2().hblkhd - before
print(json.dumps({"set": set_, "again": again, "mapped_mb": mapped / 2**20, "sum": float(x.sum())}))
"""


def probe(**env) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_large_tensors_come_from_the_heap_unless_opted_out():
    reuse, system = probe(SEQCTR_MALLOC="reuse"), probe(SEQCTR_MALLOC="system")
    assert reuse["set"] is True and reuse["again"] is True
    assert system["set"] is False and system["again"] is False
    assert system["mapped_mb"] >= 25, "glibc as shipped maps a 26 MB block on its own"
    assert reuse["mapped_mb"] < 1, "kept thresholds: the block comes from the heap"
    assert reuse["sum"] == system["sum"] == 256 * 200 * 128
