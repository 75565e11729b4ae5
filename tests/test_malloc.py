"""yoda upscale's glibc malloc settings (yoda.malloc.tune_malloc, issue 12 item 2): after it, an activation-
sized block (16 MB) and a whole LR's RRDB activation (64 MB, over glibc's largest mmap threshold) come from the
heap (no mmap) and are kept for reuse when freed, while a freed top of the heap past TRIM_THRESHOLD goes back to
the kernel; unless the user set malloc options or YODA_MALLOC=0. Run in a subprocess: the settings are
process-wide."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc only")

PROBE = r"""
import ctypes, sys
from yoda.malloc import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
changed = tune_malloc()
before = libc.mallinfo2().hblks
p = libc.malloc(16 << 20)  # a 16 MB activation
ctypes.memset(p, 1, 16 << 20)
mmapped = libc.mallinfo2().hblks - before
libc.free(p)
kept = libc.mallinfo2().fordblks  # free bytes kept in the heap after the free
q = libc.malloc(64 << 20)  # a 64 MB activation of the RRDB over a whole 1024^2 LR
big = libc.mallinfo2().hblks - before
libc.free(q)
kept_big = libc.mallinfo2().fordblks >= 64 << 20
r = libc.malloc(1 << 30)  # 1 GiB, freed at the heap's top: trimmed
libc.free(r)
trimmed = libc.mallinfo2().arena < 1 << 30
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
a = libc.malloc(96 << 20)  # an image's block, with a later one above it (not at the heap's top)
ctypes.memset(a, 1, 96 << 20)
b = libc.malloc(1 << 20)
libc.free(a)
held = rss()
from yoda.malloc import release_heap
release_heap()
libc.free(b)
print(int(changed), mmapped, kept >= 16 << 20, big, kept_big, trimmed, held - rss() > 80 << 20)
"""


def probe(**env) -> list:
    e = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES",
                                                                                          "YODA_MALLOC")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=e, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_tune_malloc_keeps_large_blocks_in_the_heap():
    assert probe() == ["1", "0", "True", "0", "True", "True", "True"]  # (last: release_heap returns it)


def test_tune_malloc_leaves_user_settings_and_can_be_turned_off():
    assert probe(YODA_MALLOC="0")[:6] == ["0", "1", "False", "1", "False", "True"]  # glibc's: mmap'ed, unmapped
    assert probe(MALLOC_MMAP_THRESHOLD_="1048576")[0] == "0"
    assert probe(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000000")[0] == "0"
