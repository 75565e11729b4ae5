"""The fingerprint of the C++/CUDA sources an extension build compiles (no imports beyond the standard library:
setup.py loads this file by path, before torch or yoda_kernels can be imported).

setup.py compiles it into yoda_kernels._C (csrc/yoda.cpp: the string ``yoda-source-hash:0x<16 hex>ULL``);
yoda_kernels.ops compares it, before importing _C, with the csrc/ folder beside the package (a source tree:
an editable install), so that a build left over from other sources (a ``git pull`` without a rebuild) is not
loaded. A wheel has no csrc/ beside it and is not checked.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

SUFFIXES = (".h", ".cpp", ".cu", ".cuh")
MARKER = re.compile(rb"yoda-source-hash:0x([0-9a-f]{16})ULL")


def source_hash(csrc: Path) -> str:
    """16 hex digits of sha256 over the sources under ``csrc`` (relative paths and contents, sorted)."""
    h = hashlib.sha256()
    for p in sorted(q for q in Path(csrc).rglob("*") if q.suffix in SUFFIXES and q.is_file()):
        h.update(p.relative_to(csrc).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stale_build(library: str, csrc: Path) -> Optional[str]:
    """Why the compiled ``library`` does not belong to the sources in ``csrc`` (None if it does, or if there is no
    csrc/ to compare with)."""
    import mmap

    if not Path(csrc).is_dir():
        return None
    with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        found = MARKER.search(m)
        built = found.group(1).decode() if found else None
    if built is None:
        return f"{library} carries no source fingerprint (built before builds had one)"
    now = source_hash(csrc)
    if built != now:
        return f"{library} was compiled from other sources than {csrc} holds now (fingerprint {built}, sources {now})"
    return None
