"""The parts of ``yoda upscale`` that need nothing else of the CLI: the memory plan (--max-memory, --tiles,
--window-batch) and glibc's malloc settings, the speed options (--compile, --autocast, --channels-last,
--cuda-graphs), folder inputs, --skip-existing, the loop over inputs and its torchrun shards (RANK / WORLD_SIZE,
meeting in torchrun's store), and the checks of -o (a file or a folder; no input overwritten) before any read."""

from __future__ import annotations

import contextlib
import errno
import os
import time
import traceback
import unicodedata
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from ._io import check_folder_writable, output_claim
from .cli_parser import one_line
from .cli_models import (check_not_an_input, check_output_option, file_ids, folder_images, last_tau, note,
                         once_each, tree_images)
from .console import error_line, say
from .errors import UserError, out_of_memory, printable, stop_in
from .torchrun import JOIN_NOTE, meeting_store, rank_prefix, wait_for_keys

# Fixed estimate of the denoiser's working memory per HR pixel (state, model activations, window blend), for
# --max-memory. Generous for the small embedded model; a model with wider layers needs a smaller budget.
HR_BYTES_PER_PIXEL = 4096
# The image's own buffers per HR pixel whatever the windows (state, c, model output, next state, blend sums, map):
# 65 bytes at 4096² with the defaults, 87 with --attention edge (2-vCPU Xeon, fp32, 2026-12-06; RESULTS.md)
IMAGE_BYTES_PER_PIXEL = 96


def plan_windows(hr_h: int, hr_w: int, unit: int, least: int, max_memory: int, tiles=None, window_batch=None):
    """(windows, window_batch, estimated bytes) of `yoda upscale`: --tiles as given (W, O), else windows when the HR
    state's estimated need (HR_BYTES_PER_PIXEL per pixel) exceeds max_memory (0: no limit):
    ((height, width), overlap), sides multiples of ``unit`` (at least ``least``, the model's smallest side) whose
    area fits, overlapping by default_overlap of the shorter side (yoda.sampling.tiles.fewest_pixel_windows).
    window_batch: as given, else as many windows as fit max_memory (None without a limit: the library's); None
    when there are no windows (--window-batch applies to the images denoised in windows)."""
    from .sampling.tiles import fewest_pixel_windows, window_sides

    need = hr_h * hr_w * HR_BYTES_PER_PIXEL
    if tiles is None and max_memory and need > max_memory:
        tiles = fewest_pixel_windows(hr_h, hr_w, unit, least, max_memory // HR_BYTES_PER_PIXEL)
    if tiles is not None and window_batch is None and max_memory:
        wh, ww = window_sides(tiles[0])
        per_window = min(wh, hr_h) * min(ww, hr_w) * HR_BYTES_PER_PIXEL
        window_batch = max(1, max_memory // per_window)
    return tiles, window_batch if tiles is not None else None, need


def check_tiles(a, unit: int, least: int) -> None:
    """--tiles W[,O] or WxH[,O] against the model's grid (``unit``) and smallest side (``least``): a UserError quoting
    it as typed; a.tiles becomes (window, overlap), the window a side or a (height, width) pair, as yoda.sample's
    windows= takes it, and an overlap not given None: yoda.sample resolves it for each image as windows=((H, W),
    None), a quarter of the shorter side that tiles it, on the same grid."""
    from .sampling.tiles import default_overlap, window_sides

    if a.tiles is None:
        return
    window, overlap = a.tiles
    text = window_text(window)
    typed = text if overlap is None else f"{text},{overlap}"
    sides = window_sides(window)
    if any(n % unit for n in (*sides, overlap or 0)):
        down = [max(least, n // unit * unit) for n in sides]  # least: hr_grid's, a multiple of unit
        # the windows it suggests, (as typed, shorter side), and the overlap typed kept, rounded, less than the window
        # (it was dropped: "e.g. --tiles 128" for 128,30)
        up = max(least, -(-sides[0] // unit) * unit)
        wins = ([(str(n), n) for n in sorted({down[0], up})] if sides[0] == sides[1] else
                [(f"{down[1]}x{down[0]}", min(down))])
        ov = max(unit, round(overlap / unit) * unit) if overlap else None
        near = " or ".join(t if ov is None else f"{t},{min(ov, n - unit)}" for t, n in wins)
        raise UserError(f"--tiles {typed}: window and overlap must be multiples of {unit} (this model's size "
                        f"multiple and scale), e.g. --tiles {near}")
    if min(sides) < least:
        raise UserError(f"--tiles {typed}: the window must be at least {least} pixels, the "
                        f"smallest side this model takes")
    if overlap == 0 or (overlap is None and default_overlap(max(sides), unit) == 0):
        blend = default_overlap(min(sides), unit)
        fix = (f"--tiles {text} blends them over {blend} pixels" if blend else
               f"windows of {2 * unit} or more overlap by default")  # --tiles W of one unit: no room to overlap
        note(f"--tiles {typed}: windows that do not overlap leave seams where they meet; {fix}")
    a.tiles = (window, overlap)


def window_text(window) -> str:
    """A window for a message: its side, or WIDTHxHEIGHT as image sizes are said."""
    from .sampling.tiles import window_sides

    h, w = window_sides(window)
    return str(h) if h == w else f"{w}x{h}"


def window_notes(src: str, hr_h: int, hr_w: int, window, max_memory: int) -> None:
    """The notes of upscale's automatic windows: the image's own buffers (IMAGE_BYTES_PER_PIXEL), which no window
    size shrinks, over --max-memory; windows so small that the model sees little around each pixel."""
    def tell(text):  # on the rank that upscales the image (cli_models.note: rank 0's, for what every rank meets)
        error_line(f"yoda: note: {rank_prefix()}{text}")

    own = hr_h * hr_w * IMAGE_BYTES_PER_PIXEL
    if own > max_memory:  # a 4096² output took 1.2 GB over the process under --max-memory 256M, and said nothing
        tell(f"{printable(src)}: its own buffers (state, condition, blend; about {mebibytes(own)} at {hr_w}x{hr_h}) "
             f"come on top of --max-memory {mebibytes(max_memory)}, whatever the windows")
    from .sampling.tiles import SMALL_WINDOW, window_sides

    wh, ww = window_sides(window)
    least = min(wh, hr_h) * min(ww, hr_w) * HR_BYTES_PER_PIXEL
    if least > max_memory:  # the smallest window the model takes: the budget cannot be met (it said nothing)
        tell(f"{printable(src)}: one window of {window_text(window)}, the smallest this model takes, needs about "
             f"{mebibytes(least)}, over --max-memory {mebibytes(max_memory)}")
    # a side spanning the image is not counted: a 6000x96 strip's 96 rows are all there is to see
    side = min((s for s, n in ((wh, hr_h), (ww, hr_w)) if s < n), default=SMALL_WINDOW)
    if side < SMALL_WINDOW:  # --max-memory 1M: 16-px windows, 250 times slower and visibly softer (38 dB)
        tell(f"{printable(src)}: windows of {side} pixels give the model little around each pixel: slower, and "
             f"softer than windows of {SMALL_WINDOW} or more (a larger --max-memory)")


def unused_window_batch_note(a, src: str, windows, hr_h: int, hr_w: int) -> None:
    """Once a run: --window-batch given, and an image not split into windows (none, or one that covers its hr_h x
    hr_w state: it was ignored without a word)."""
    from .sampling.tiles import window_sides

    whole = windows is None or all(n >= m for n, m in zip(window_sides(windows[0]), (hr_h, hr_w)))
    if whole and a.window_batch is not None and not getattr(a, "window_batch_said", False):
        a.window_batch_said = True
        why = ("it is not split into windows (--tiles, or a --max-memory it needs more than, splits an image)"
               if windows is None else f"--tiles {window_text(windows[0])} covers it whole (one window)")
        note(f"--window-batch has no effect on {printable(src)}: {why}")


def mebibytes(n: float) -> str:
    """A byte count for a message: MiB, with KiB below 1 MiB (a budget of 64K is not "0 MiB")."""
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB" if n >= 2**10 else f"{n:.0f} bytes"


def speed_options(a, dev) -> dict:
    """--compile, --autocast, --channels-last, --cuda-graphs -> yoda.sample's speed keywords, checked for ``dev``
    (--cuda-graphs on the CPU: a UserError)."""
    if a.cuda_graphs and dev.type != "cuda":
        raise UserError(f"--cuda-graphs captures the denoiser in CUDA graphs and needs a CUDA device; this run is on "
                        f"{dev} (--device cuda, or leave --cuda-graphs out)")
    if a.autocast == "fp16" and dev.type == "cpu":  # measured 4-6 times slower than float32 (2-vCPU EPYC)
        note("--autocast fp16 on the CPU is slower than float32 (few CPUs compute in float16); --autocast bf16 or none")
    from .sampling.speed import GraphCache  # one for the run: its images replay the graphs the first captured

    return dict(compile=a.compile, autocast=a.autocast, channels_last=a.channels_last,
                cuda_graphs=GraphCache() if a.cuda_graphs else False)


def checked_steps(adapter, a, device, given: bool, *, yoda: bool, what: str = "--attention") -> int:
    """The steps a run samples with: --steps (a.steps, the model's own where not ``given``) after the sampling
    options are checked on the smallest LR the model takes (a bad one raises before any work); with ``yoda``
    (--attention), YODA's steps (yoda_steps; ``what`` names them in its note: the flag, or the demo's "YODA")."""
    tau = last_tau(adapter, a, device)
    tau(a.steps)
    return yoda_steps(tau, a.steps, given, a.lower_bound, adapter.schedule.T, what) if yoda else a.steps


def yoda_steps(last_tau: Callable[[int], float], steps: int, given: bool, lower_bound: float, T: int,
               what: str = "--attention") -> int:
    """upscale's steps with --attention. YODA's masks widen as sampling goes on and cover every pixel once the
    threshold tau = t/T - l reaches 0 (DESIGN.md §4); with few steps the last step comes before that, and the pixels
    it leaves keep the bicubic image, next to sharpened ones: the edge between them shows. --steps not given
    (``given`` False): the fewest steps from ``steps`` up to MOST_YODA_STEPS (and T) whose last step refines every
    pixel, with a note (``what`` names them: the flag that asked for them). Given: kept, with a note saying so.
    last_tau(n): the last step's tau at n steps."""
    from .sampling.spec import unrefined

    left = unrefined(last_tau, steps, T)
    if left is None:
        return steps
    tau, enough = left
    left = (f"pixels whose attention is below {tau:.2f} keep the bicubic image, and the edge where the refined "
            f"ones begin can show")
    if given or enough is None:
        fix = f"; --steps {enough} refines every pixel by the end" if enough else ""
        note(f"at {steps} step(s) with --lower-bound {lower_bound:g} {left}{fix}")
        return steps
    more = (f"; each step beyond the model's own {steps} can cost detail, and a higher --lower-bound needs fewer"
            if enough > 2 * steps else "")  # (l = 0.2: 5 steps etched the embedded model's faces, 0.4 dB)
    note(f"{what}: {enough} steps, the fewest whose last step refines every pixel whatever the map (at {steps}, "
         f"{left}; --steps sets them{more})")
    return enough


def expand_inputs(inputs: list, recursive: bool = False, skip: frozenset = frozenset()) -> tuple[list, set, dict]:
    """(paths, the real paths of those that only a folder named, {path: its subfolder}): a folder among the inputs
    stands for its image files (yoda.data.list_folder), sorted by name; what it leaves out (subfolders, other files)
    is named in a note. With ``recursive`` its subfolders' images too (tree_images: not ``skip``, the output folder),
    each mapped to its folder relative to the one given, where its output goes in -o. A file met twice (named and
    in a named folder, or named twice) is one input, where it is first met."""
    out, from_folders, named, seen, twice, subfolder = [], set(), set(), {}, [], {}
    given = frozenset(os.path.realpath(p) for p in inputs)  # (a folder's note named a file or subfolder given too)
    for p in inputs:
        if os.path.isdir(p):
            tree = tree_images(p, skip) if recursive else dict.fromkeys(folder_images(p, given), "")
            found = list(tree)
            from_folders.update(map(os.path.realpath, found))
            kept = once_each(found, seen, twice)
            subfolder.update((f, tree[f]) for f in kept)
        else:
            named.add(os.path.realpath(p))
            kept = once_each([p], seen, twice)
        out += kept
    if twice:
        note(f"upscaled once, under the name met first (its output is named after it): {printable(', '.join(twice))}")
    return out, from_folders - named, subfolder


def drop_own_outputs(inputs: list, from_folders: set, out_dir: Optional[Path], scale: int,
                     subfolder: Optional[dict] = None) -> list:
    """``inputs`` without the images that an earlier run into the output folder wrote there: when -o is a folder
    that is also an input, a STEM_x<scale>.SUFFIX in it (any format yoda writes: an earlier run's --format may have
    been another; with --recursive in the same subfolder, ``subfolder``), where STEM.* is an input (of any folder)
    and the file is ``scale`` times its size, is that input's output (named in a note), not a new input. Files named
    on the command line, and a STEM_x<scale>.SUFFIX of another size (a picture of the user's, which output_targets
    then refuses to overwrite), are inputs."""
    from .images import OUTPUT_SUFFIXES

    if out_dir is None or not out_dir.is_dir():
        return inputs
    sub = subfolder or {}
    sources: dict = {}  # (subfolder, a stem this run writes there) -> the inputs it is written for
    for p in inputs:
        sources.setdefault((sub.get(p, ""), Path(p).stem + f"_x{scale}"), []).append(p)
    dropped = {p for p in inputs if (key := (sub.get(p, ""), Path(p).stem)) in sources
               and Path(p).suffix.lower() in OUTPUT_SUFFIXES and os.path.realpath(p) in from_folders
               and Path(p).parent.samefile(out_dir / key[0]) and _upscaled_from(p, sources[key], scale)}
    if dropped:
        note(f"left out {printable(', '.join(sorted(os.path.join(sub.get(p, ''), Path(p).name) for p in dropped)))}: "
             f"{'it is the output' if len(dropped) == 1 else 'they are the outputs'} of an earlier run into "
             f"{out_dir} (-o), not an input")
    return [p for p in inputs if p not in dropped]


def _upscaled_from(path: str, sources: list, scale: int) -> bool:
    """Whether the image ``path`` is ``scale`` times the size of one of ``sources`` (either way round: an EXIF
    orientation turns the output); an unreadable header is no."""
    from PIL import Image

    from .images import open_image

    def size(p):
        with open_image(p) as im:
            return im.size

    try:
        W, H = size(path)
        return any((W, H) in ((scale * w, scale * h), (scale * h, scale * w)) for w, h in map(size, sources))
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


class Busy(Exception):
    """Another process holds the claim on the output (to_make): run_items comes back to the input at the end."""


class Tally:
    """What a run over several inputs did: a bar over them (``bar``: on a terminal, without -q) and the closing count
    ("W written, S skipped, F failed of N inputs in T s"); ``quiet``: no line per input (say)."""

    def __init__(self, total: int, bar: bool, quiet: bool, where: str = "", several: Optional[bool] = None):
        """total: this process's inputs; several: whether the run has more than one (under torchrun a rank's share
        may be one or none, and its closing line was left out: 2 images on 2 ranks said nothing)."""
        self.total, self.quiet, self.where, self.t0 = total, quiet, where, time.perf_counter()
        self.several = total > 1 if several is None else several
        self.done = self.written = self.failed = 0
        self.bar, self._closed = None, False
        if bar and total > 1:
            from tqdm.auto import tqdm

            desc = f"yoda upscale ({where.rstrip(': ')}'s share)" if where else "yoda upscale"  # of a torchrun run
            self.bar = tqdm(total=total, desc=desc, unit="image", dynamic_ncols=True)

    def say(self, line: str) -> None:
        if not self.quiet:
            say(f"{self.where}{line}")

    @contextlib.contextmanager
    def one(self):
        """Around one input's work: counted once it is done (made, skipped, or failed), not when Busy (later)."""
        written = self.written
        try:
            yield
        except BaseException as e:  # failed: not a stop (a Ctrl-C / SIGTERM, or one Python wrapped in a RuntimeError)
            failed = isinstance(e, Exception) and not isinstance(e, Busy) and stop_in(e) is e
            if failed:  # (also after its output was written, as run_items says: failed, not written)
                self.written, self.failed = written, self.failed + 1
            if failed or self.written > written:  # written, then stopped (its line, the heap's release): done too
                self._done()  # (it was counted written and not done: "2 written, -1 skipped")
            raise
        self._done()

    def _done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()

    @contextlib.contextmanager
    def closed(self):
        """The closing count at the end of the run, also when it is stopped (Ctrl-C, SIGTERM, a full disk)."""
        try:
            yield
        except BaseException as e:
            self.close(stopped=True, interrupted=isinstance(stop_in(e), (KeyboardInterrupt, SystemExit)))
            raise
        self.close()

    def close(self, stopped: bool = False, interrupted: bool = False) -> None:
        if self._closed:  # once (run_sharded closes it before the ranks part)
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()
        # not for a run that failed before its first input; for one stopped (Ctrl-C, SIGTERM) in it, with the hint
        if self.several and (self.done or not stopped or interrupted):
            skipped = self.done - self.written - self.failed
            rest = "; a rerun with --skip-existing makes the rest" if stopped and self.done < self.total else ""
            say(f"{self.where}{self.written} written, {skipped} skipped, {self.failed} failed, of {self.total} "
                f"input{'s' * (self.total != 1)} in {time.perf_counter() - self.t0:.1f} s{rest}")


@contextlib.contextmanager
def to_make(skip: bool, src: str, dst: str, tell: Callable[[str], None] = print):
    """Yields whether to upscale ``src`` to ``dst``: always without --skip-existing; with it, not when dst exists,
    and raises Busy while another process is making it (yoda._io.output_claim, held while this one does), so that
    runs started together over one folder share its images instead of each doing all of them."""
    if not skip:
        yield True
        return
    with output_claim(dst) as mine:
        if not mine:
            raise Busy(f"{printable(src)} -> {printable(dst)} is being made by another process")
        exists = os.path.exists(dst)
        if exists:
            tell(f"{printable(src)} -> {printable(dst)} exists{_older(src, dst)}, skipped (--skip-existing)")
        yield not exists


def _older(src: str, dst: str) -> str:
    """What the skip line adds when the kept output is older than its input (edited since it was made: the output
    is stale, and --skip-existing keeps it as it is)."""
    try:
        stale = os.stat(dst).st_mtime < os.stat(src).st_mtime
    except OSError:  # (src gone after it was read)
        return ""
    return " but is older than its input (remove it to make it again)" if stale else ""


class UpscaleRun(NamedTuple):
    """What every input of an upscale run shares: the model, its device, the HR sizes it takes (adapters.hr_grid:
    sides multiples of unit, at least least), the attention extractor (None: plain; resolved once, so DINO weights
    are read once) and yoda.sample's speed options."""

    model: Any
    dev: Any
    unit: int
    least: int
    attention: Any
    speed: dict


# A write that fails so ends the loop over inputs (run_items): no room for any output (a full disk or quota, a
# read-only file system)
NO_ROOM = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS)

# Seconds between looks at the outputs another process is making (run_items, until_free)
BUSY_POLL_S = 1.0

# run_items' ``where`` while an input's work runs, else None: the CLI's warnings say which rank met them
_working = None


def working_where() -> Optional[str]:
    """The ``where`` of the input being worked on by run_items ("rank R: " under torchrun, else ""), or None
    outside an input's work."""
    return _working


def until_free(work: Callable[[object], None], item) -> None:
    """work(item), waiting while another process is making its output (Busy); its errors are the caller's."""
    said = False
    while True:
        try:
            return work(item)
        except Busy as e:
            if not said:
                say(f"{e}: waiting for it (--skip-existing)")
                said = True
        time.sleep(BUSY_POLL_S)


def run_items(items: list, work: Callable[[object], None], describe: Callable[[BaseException], str],
              where: str = "", debug: bool = False, quiet: bool = False) -> int:
    """work(item) for each item; a UserError, an OSError or an allocation that failed (errors.out_of_memory: one
    large image must not cost the others) is reported in one line (``yoda: error: WHERE...``; with ``debug``
    after its traceback) and the next item goes on; a write that finds no room (NO_ROOM) ends the loop. An item
    whose work raises Busy (to_make: another process is making its output) is tried again after the others,
    until that process lets it go: made there, it is skipped; left unmade (that process failed or was killed),
    it is made here. Returns the number that failed. ``quiet`` (-q): no line per input taken up later."""
    failed, busy = 0, []
    for item in items:
        failed += _run_one(item, work, describe, where, debug, busy, quiet)
    if busy:
        error_line(f"yoda: note: {where}waiting for another process to finish {len(busy)} output(s) "
                   f"(--skip-existing)")
    while busy:
        time.sleep(BUSY_POLL_S)
        again, busy = busy, []
        for item in again:
            failed += _run_one(item, work, describe, where, debug, busy, quiet=True)
    return failed


def _run_one(item, work: Callable[[object], None], describe: Callable[[BaseException], str], where: str,
             debug: bool, busy: list, quiet: bool = False) -> int:
    """run_items' work(item): 1 when it failed (reported), else 0; the item is appended to ``busy`` on Busy."""
    global _working
    oom, _working = False, where
    try:
        work(item)
        return 0
    except Busy as e:
        if not quiet:
            say(f"{where}{e}; back to it at the end (--skip-existing)")
        busy.append(item)
        return 0
    except Exception as e:
        oom = out_of_memory(e)
        if not (oom or isinstance(e, (UserError, OSError))) or getattr(e, "errno", None) in NO_ROOM:
            raise  # a full disk: every next input would fail the same way, after all its work
        if debug:
            traceback.print_exc()
        error_line(f"yoda: error: {where}{describe(e)}")
    finally:
        _working = None
    if oom:  # out of the handler: its traceback held the failed input's tensors
        free_memory()
    return 1


def free_memory() -> None:
    """After an allocation failed: what the failed input held goes back (the CUDA cache too), for the next."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


EXIT_GRACE_S = 1.0  # how long rank 0, about to exit 2, leaves the others (done) to exit first


def run_sharded(items: list, rank: int, world: int, work: Callable[[object], None],
                describe: Callable[[BaseException], str], debug: bool = False, folder: Optional[Path] = None,
                quiet: bool = False, close: Callable[[], None] = lambda: None) -> int:
    """Rank ``rank`` of ``world`` runs work(item) for items rank, rank + world, ... (run_items: a failing item is
    reported and the rank goes on), after the ranks compared their lists of items; then it says how many failed in
    the store (torchrun.meeting_store) and waits until every rank has, so that none exits with an error while
    others work (torchrun would stop them); rank 0 returns 2 if
    anything failed anywhere (and says so), the others 0. A signal ends the wait at once; torchrun stops the other
    ranks when one ends, so rank 0 exits last: every rank says its closing line (``close``) before it leaves the
    store, and rank 0 waits for all of them and EXIT_GRACE_S more (torchrun stopped a finished rank 1 as
    "terminated (SIGTERM)"). folder: the output folder; a rank that made it removes it at the end if nothing was
    written there (every input failing), as one process does (an output's write makes its folder again)."""
    import hashlib

    from ._io import made_folder

    store, host = meeting_store(rank, world, "yoda-upscale")
    # every rank shards the same list: each listed its folders itself, and none writes before all have
    # (-o inside an input folder: a rank that listed it after rank 0 had written there took other shares)
    listed = hashlib.sha256(repr(items).encode("utf-8", "surrogateescape")).hexdigest()
    store.set(f"listed/{rank}", listed)
    wait_for_keys(store, [f"listed/{r}" for r in range(world)], rank, JOIN_NOTE)
    if any(store.get(f"listed/{r}").decode() != listed for r in range(world)):  # every rank finds it so
        store.set(f"differ/{rank}", "1")  # and leaves once all have read the lists (rank 0 may host the store)
        wait_for_keys(store, [f"differ/{r}" for r in range(world)])
        store.set(f"read/{rank}", "1")  # the host leaves last: a rank still polling for differ/* met a closed store
        if host:
            wait_for_keys(store, [f"read/{r}" for r in range(world)])
        raise UserError("the ranks found different inputs (a folder changed while they started?): run again")
    with made_folder(folder):
        failed = run_items(items[rank::world], work, describe, f"rank {rank}: ", debug, quiet)
        store.set(f"failed/{rank}", str(failed))
        wait_for_keys(store, [f"failed/{r}" for r in range(world)], rank,  # rank 0's bar shows the run, not -q
                      "done; {ranks} still working" if rank == 0 and not quiet else "")
        total = sum(int(store.get(f"failed/{r}")) for r in range(world))
    close()
    store.set(f"left/{rank}", "1")
    if host or rank == 0:  # the host's store closes when it exits; rank 0 exits last (above)
        wait_for_keys(store, [f"left/{r}" for r in range(world)], rank, "" if quiet else "waiting for {ranks} to exit")
    if total and rank == 0:  # rank 0 alone exits 2: torchrun stops the ranks still running when one fails
        error_line(f"yoda: error: {total} of {len(items)} inputs failed (see the lines above)")
        time.sleep(EXIT_GRACE_S)
        return 2
    return 0


def output_suffix(a) -> str:
    """The suffix of upscale's outputs in a folder: --format's (default png)."""
    return "." + (a.format or "png")


def output_folder(a) -> Optional[Path]:
    """upscale's -o, checked before the model loads: None when it is one output file (checked in full), else the
    output folder (created later if missing), in which IN becomes STEM_x<scale>.FORMAT (output_targets).

    -o is a file when there is one input and it has a suffix (which must be an image format yoda writes) and
    is not an existing folder; otherwise a folder (an existing folder is one whatever its name, as for cp)."""
    from .images import OUTPUT_SUFFIXES, image_format

    out = Path(a.output)
    several, image_suffix = len(a.inputs) > 1, out.suffix.lower() in OUTPUT_SUFFIXES
    as_folder = (a.output.endswith(("/", os.sep)) or out.suffix == "" or out.is_dir()
                 or (several and not image_suffix))
    if not as_folder:
        if several:
            fmt = " (--format sets the format of the files written into it)" if image_suffix else ""
            raise UserError(f"-o {a.output}: several inputs need an output folder, not a file name{fmt}")
        if not image_suffix:
            raise UserError(f"-o {a.output}: cannot write images with the suffix {out.suffix!r}; use one of "
                            f"{', '.join(OUTPUT_SUFFIXES)}, or end the name with / for a folder")
        if a.format is not None and image_format(out) != image_format("x" + output_suffix(a)):
            raise UserError(f"--format {a.format} does not match -o {a.output}, a {out.suffix} file: give one of them")
        check_not_an_input(file_ids(a.inputs), a.output)
        check_output_option(a.output, a.skip_existing)
        return None
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {a.output} is a file; several inputs (or a name without a suffix) need a folder")
    check_folder_writable(a.output, "-o")  # an existing one too: before the model loads, one error for all inputs
    return out


def output_targets(a, out_dir: Optional[Path]) -> tuple[list[str], dict[str, str]]:
    """(the output file of each input, refused) before any image is read (``out_dir``: output_folder's; the names
    carry ``a.scale``). An input whose output cannot be made (its name is another input's output too, or an input
    of the user's, or a folder or read-only file stands there) is refused alone: ``refused`` maps it to why, which
    its turn reports as its error while the others go on (one clashing pair stopped a whole folder); a single
    input's is the command's error (an output folder that cannot be written at all: output_folder's)."""
    if out_dir is None:
        return [a.output], {}
    from ._io import check_name_length, check_writable

    sub = getattr(a, "subfolders", {})  # --recursive: an image of a subfolder goes to the same subfolder of -o
    targets = [str(out_dir / sub.get(p, "") / (Path(p).stem + f"_x{a.scale}{output_suffix(a)}")) for p in a.inputs]
    seen, ids, refused = {}, file_ids(a.inputs), {}
    # Img and img are one file on macOS' and Windows' file systems, and on macOS' an é composed and decomposed
    fold = case_insensitive(out_dir)  # (NFC / NFD: names typed vs copied from some tools): both folded there
    for src, dst in zip(a.inputs, targets):
        key = unicodedata.normalize("NFC", dst).casefold() if fold else dst
        if key in seen:
            aside = " (letter case, and an accent's encoding, aside)" * fold
            for one, other in ((seen[key], src), (src, seen[key])):  # each input's line leads with its own name
                refused[one] = (f"{one} and {other} have the same file name stem{aside}: both would be written to "
                                f"{dst}; rename one of them")
            continue
        seen[key] = src
        try:
            if not (a.skip_existing and os.path.exists(dst)):  # an existing output is skipped, never written
                check_not_an_input(ids, dst, src)
            check_name_length(dst, f"{src}: its output")  # (also where out_dir is yet to be made)
            if Path(dst).parent.is_dir():  # (a subfolder of -o yet to be made: save_output makes it)
                check_writable(dst, f"{src}: its output", a.skip_existing)
        except IsADirectoryError:
            refused[src] = f"{src}: its output {dst} is a folder; remove or rename it"
        except (UserError, OSError) as e:
            refused[src] = one_line(e)  # (str() of an OSError starts "[Errno 13] ")
    if refused and len(targets) == 1:
        raise UserError(refused[a.inputs[0]])
    return targets, refused


def case_insensitive(folder: Path) -> bool:
    """Whether file names in ``folder`` (or, before it is made, its nearest existing parent) ignore letter case:
    a file is made there and looked up with its name's case swapped."""
    import tempfile

    up = Path(folder).absolute()
    while not up.is_dir() and up != up.parent:
        up = up.parent
    try:
        fd, path = tempfile.mkstemp(prefix=".yoda-case-", dir=up)
    except OSError:
        return False  # not writable: check_folder_writable says so
    try:
        os.close(fd)
        return os.path.exists(os.path.join(up, os.path.basename(path).swapcase()))
    finally:
        os.unlink(path)
