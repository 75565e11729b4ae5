"""glibc malloc settings for `yoda upscale` (issue 12, item 2; benchmarks/RESULTS.md): tune_malloc before the
work, release_heap after each image."""

from __future__ import annotations

import os
import sys


# glibc malloc for `yoda upscale` (RESULTS.md, issue 12): blocks over the mmap threshold (32 MiB at most) were
# mapped anew at every layer (a whole 1024² LR's RRDB features: 8.5 s system, 6.8 s user; at 4096², 18% of user
# time). Nothing is mapped now (M_MMAP_MAX 0), freed blocks are reused, and the heap's free top goes back past
# TRIM_THRESHOLD (at 4096²: 2.4% system time, peak RSS 1.52 GiB; never trimming: 2.32, before the sampler held less).
M_TRIM_THRESHOLD, M_MMAP_MAX, TRIM_THRESHOLD = -1, -4, 512 * 1024 * 1024  # mallopt's parameters (malloc.h), value
MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
              "GLIBC_TUNABLES")


def tune_malloc() -> bool:
    """mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) on glibc, unless the environment sets
    malloc options itself (MALLOC_ENV) or YODA_MALLOC=0. Returns whether it changed them."""
    import ctypes
    import platform

    if (os.environ.get("YODA_MALLOC", "1") == "0" or any(k in os.environ for k in MALLOC_ENV)
            or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_heap() -> None:
    """glibc's malloc_trim(0) after an image of a tuned run: the free heap, wherever it lies, goes back to the kernel
    (a folder's peak RSS grew with the fragments earlier images left)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
