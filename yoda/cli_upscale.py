"""The parts of ``yoda upscale`` that need nothing else of the CLI: the memory plan (--max-memory, --tiles,
--window-batch), folder inputs, --skip-existing, and the torchrun shard loop (RANK / WORLD_SIZE, gloo)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable

from .errors import UserError

# Fixed estimate of the denoiser's working memory per HR pixel (state, model activations, window blend), for
# --max-memory. Generous for the small embedded model; a model with wider layers needs a smaller budget.
HR_BYTES_PER_PIXEL = 4096


def window_unit(adapter) -> int:
    """Window sizes and overlaps (HR pixels) must be multiples of this: the model's size multiple, and the
    scale (windows on the LR grid, for SRDiff's LR features)."""
    return math.lcm(int(adapter.scale), int(getattr(adapter, "multiple", 1)))


def plan_windows(hr_h: int, hr_w: int, batch: int, unit: int, max_memory: int, tiles=None, window_batch=None):
    """(windows, window_batch, estimated bytes) of `yoda upscale`: --tiles as given, else windows when the HR
    state's estimated need (HR_BYTES_PER_PIXEL per pixel and batch element) exceeds max_memory (0: no limit):
    the largest multiple of ``unit`` whose square fits, overlap a quarter of it (rounded down to ``unit``).
    window_batch: as given, else as many windows as fit max_memory (None without a limit: the library's)."""
    need = hr_h * hr_w * batch * HR_BYTES_PER_PIXEL
    if tiles is None and max_memory and need > max_memory:
        side = max(unit, math.isqrt(max_memory // (batch * HR_BYTES_PER_PIXEL)) // unit * unit)
        tiles = (side, side // 4 // unit * unit)
    if tiles is not None and window_batch is None and max_memory:
        per_window = min(tiles[0], hr_h) * min(tiles[0], hr_w) * batch * HR_BYTES_PER_PIXEL
        window_batch = max(1, max_memory // per_window)
    return tiles, window_batch, need


def expand_inputs(inputs: list) -> list:
    """A folder among the inputs stands for its image files (suffixes of OUTPUT_SUFFIXES), sorted by name."""
    from .images import OUTPUT_SUFFIXES

    out = []
    for p in inputs:
        if os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).iterdir() if f.is_file() and f.suffix.lower() in OUTPUT_SUFFIXES)
            if not found:
                raise UserError(f"{p}: the folder has no image files ({', '.join(OUTPUT_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    return out


def dist_env() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK / WORLD_SIZE in the environment), else (0, 1)."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None


def skip_existing(skip: bool, src: str, dst: str) -> bool:
    if skip and os.path.exists(dst):
        print(f"{src} -> {dst} exists, skipped (--skip-existing)")
        return True
    return False


def made_dirs(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; returns the folders it created, deepest first (for cleanup)."""
    made = []
    up = folder.absolute()
    while not up.exists():
        made.append(up)
        up = up.parent
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(made: list[Path]) -> None:
    """Remove the folders of made_dirs that are still empty (deepest first), e.g. after a failure."""
    for d in made:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def run_sharded(items: list, rank: int, world: int, setup: Callable[[], object],
                work: Callable[[object, object], None], one_line: Callable[[BaseException], str]) -> int:
    """Rank ``rank`` of ``world`` (gloo) runs work(state, item) for items rank, rank + world, ... after
    state = setup() (only if it has items). A UserError or OSError is reported in one line and the rank goes on
    (setup failing fails all its items); the ranks meet once at the end and all return 2 if anything failed
    anywhere, else 0."""
    import torch
    import torch.distributed as dist

    mine = items[rank::world]
    dist.init_process_group("gloo")
    failed = 0
    try:
        state = setup() if mine else None
        for item in mine:
            try:
                work(state, item)
            except (UserError, OSError) as e:
                failed += 1
                print(f"yoda: error: rank {rank}: {one_line(e)}", file=sys.stderr)
    except (UserError, OSError) as e:
        failed = max(failed, 1)
        print(f"yoda: error: rank {rank}: {one_line(e)}", file=sys.stderr)
    finally:
        total = torch.tensor([failed], dtype=torch.int64)
        dist.all_reduce(total)
        dist.destroy_process_group()
    if int(total.item()):
        if rank == 0:
            print(f"yoda: error: {int(total.item())} input(s) failed (see the lines above)", file=sys.stderr)
        return 2
    return 0
