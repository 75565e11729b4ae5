"""The ``yoda`` command line: upscale, attention, demo, eval, figures, train, plot, data (shared parts:
cli_models; upscale's machinery: cli_upscale; demo: cli_demo; the options: cli_parser).

    yoda upscale IN|DIR... -o OUT [--model default|PATH|sr3:PATH|srdiff:PATH] [--attention none] [--steps 1] ...
                 [--sampler ddim] [--tiles W[xH][,O]] [--window-batch N] [--max-memory 2G] [--skip-existing]
                 [--recursive] [--format png|jpg|webp|tif|bmp] [--strip-metadata]
                 (torchrun -m yoda: sharded)
    yoda attention IMAGE -o OUT.png [--attention edge] [--lower-bound 0.6]
    yoda demo [-o demo.png]
    yoda eval [--images FILE|DIR...] [--lower-bounds 0.4 0.6 0.8] [--attention edge gaussian]
              [--lpips VGG16.pth LIN.pth] [--y-channel] [-o table.md|rows.csv]
    yoda figures -o DIR [--images FILE|DIR...] [--attention edge gaussian sift] [--lower-bound 0.6]
    yoda train --config yoda/configs/default_x4.json [--out DIR] [--steps N] [--device auto|cpu|cuda]
                                                           (torchrun -m yoda: DistributedDataParallel)
    yoda plot LOG.csv... -o curves.png [--labels ...]
    yoda data build DIR [--short-side 512]  |  yoda data export DIR     (or --out DIR, in both)

Errors. A user error -- a yoda.errors.UserError, raised for bad options and by the library for files, configs
and models it cannot use (CheckpointError, DataError, a model returning NaN/Inf), plus the ValueErrors the
library raises about what a command handed it (converted where the command hands it over, ``_user_input``) --
and an OSError (a missing file, a full disk, no permission) print one line ``yoda: error: ...`` on stderr and
exit with code 2. Anything else is a bug: it prints its traceback and exits with code 1. ``--debug`` prints
the traceback of user errors too. Nothing is half-written: every file goes through yoda._io's atomic writer.
Output paths are checked (suffix, folder, writable) before any sampling; images over yoda.images.MAX_PIXELS
pixels (and, for upscale, outputs over it) are refused (--max-pixels N).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional, Sequence

from .cli_demo import cmd_demo
from .cli_parser import _Parser, build_parser, command_parser, missing_package, one_line
from ._io import check_writable, made_folder, remove_stale_temps
from .cli_models import (attention_extractor, bars, check_attentions, check_hr_size, check_out_folder, cli_model,
                         check_output_option, cli_device, eval_images, eval_results, eval_steps_note,
                         note, pillow_limit, read_input, refuse_overwriting, save_figure, save_output,
                         unrefined_note, upscale_tensor, written_or_said)
from .console import error_line, say
from .cli_upscale import (checked_steps, drop_own_outputs, expand_inputs, mebibytes, output_folder,
                          output_targets, plan_windows, run_items, run_sharded,
                          speed_options, Tally, to_make, until_free, unused_window_batch_note, UpscaleRun, check_tiles,
                          window_notes, window_text, working_where)
from .errors import (Terminated, UnrefinedWarning, UserError, lr_from_images, out_of_memory, printable, shell_quoted,
                     sigterm_exits, stop_in)
from .malloc import release_heap, tune_malloc
from .torchrun import dist_env, env_int, launched_world, lost_rank, main_rank, rank_prefix
from .errors import user_input as _user_input


# ----------------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------------
def cmd_upscale(a) -> int:
    """Every output path is checked before any image is read; then the inputs are read and upscaled one at a
    time. With several inputs (or under torchrun, which shards them over the ranks) an input that cannot be read
    or upscaled is reported in one line and the others go on; the exit status is then 2."""
    # no mmap / trim churn of large activations (yoda.malloc.tune_malloc): the `yoda` program's only; a program that
    # calls main() keeps its malloc as it was (mallopt's settings cannot be undone: the dynamic threshold is lost)
    tuned = a.program and tune_malloc()
    if a.attention is None and a.lower_bound is not None and 0 <= a.lower_bound < float("inf"):  # given (its
        # default is the model's, set later); a bad one (nan, inf, -1) is refused below, not noted first
        note("--lower-bound has no effect without --attention (plain sampling)")
    skip = frozenset({os.path.realpath(a.output)})  # --recursive: not into the outputs of an earlier run
    a.inputs, from_folders, a.subfolders = expand_inputs(a.inputs, a.recursive, skip)
    rank, world = dist_env()
    quiet, a.quiet = a.quiet, a.quiet or rank > 0  # -q hides the lines; under torchrun one rank's bars only
    out_dir = output_folder(a)  # -o before the model loads; the folder's file names carry the model's scale
    run = _upscale_model(a, world)  # sets a.scale
    a.inputs = drop_own_outputs(a.inputs, from_folders, out_dir, a.scale, a.subfolders)
    targets, refused = output_targets(a, out_dir)
    stale = remove_stale_temps(targets) if rank == 0 else 0  # of a run killed while writing (SIGKILL, power loss)
    if stale:
        note(f"removed {stale} temporary file(s) a killed run left next to the outputs")

    items = list(zip(a.inputs, targets))
    # another rank's lines on the terminal would break rank 0's bar: they go to a file or a pipe only
    tally = Tally(len(items[rank::world]), bars(a), quiet or (rank > 0 and sys.stdout.isatty()), rank_prefix(),
                  several=len(items) > 1)

    working = [("", "")]  # the input being upscaled, for an out-of-memory error (it names no file)

    def work(item):
        src, dst = working[0] = item
        with tally.one(), to_make(a.skip_existing and src not in refused, src, dst, tally.say) as mine:
            if src in refused:  # (output_targets: its output cannot be made)
                raise UserError(refused[src])
            if mine:
                keep = not a.strip_metadata and not dst.lower().endswith(".bmp")  # (a BMP holds no metadata)
                arr, grey, meta = read_input(src, a.max_pixels, carry=a.scale if keep else 0)
                check_hr_size(src, arr, a.scale, a.max_pixels, dst, grey)
                try:
                    _upscale_one(a, run, arr, grey, src, dst, tally, meta)
                finally:
                    if tuned:
                        release_heap()

    def message(e: BaseException) -> str:
        if out_of_memory(e):
            return f"{printable(working[0][0])}: {oom_text(e, 'upscale')}"
        return one_line(e)

    if world > 1:  # the outputs are the same files as one process writes (atomically)
        with tally.closed():
            return run_sharded(sorted(items), rank, world, work, message, a.debug, out_dir, quiet, tally.close)
    with made_folder(out_dir), tally.closed():
        if len(items) == 1:
            until_free(work, items[0])  # its error is the command's
            return 0
        failed = run_items(items, work, message, debug=a.debug, quiet=quiet)
    if failed:
        error_line(f"yoda: error: {failed} of {len(items)} inputs failed (see the lines above)")
        return 2
    return 0


def _upscale_model(a, world: int) -> UpscaleRun:
    """The UpscaleRun of upscale; --scale checked against the model's, or set to it. Every option is checked here,
    once, so that a bad one is one error and not one per input of a folder."""
    from .adapters import hr_grid
    from .devices import rank_device

    dev = rank_device(cli_device(a.device), world, env_int("LOCAL_RANK", 0) if world > 1 else 0)
    model, ad, given = cli_model(a, dev, a.scale, a.cfg_scale)
    scale = ad.scale
    if a.scale is None:
        a.scale = scale
    elif a.scale != scale:
        raise UserError(f"--scale {a.scale} does not match the model, which upscales x{scale} (leave --scale "
                        "out)")
    unit, least = hr_grid(ad)
    check_tiles(a, unit, least)
    if a.window_batch is not None and a.window_batch < 1:
        raise UserError(f"--window-batch must be >= 1, got {a.window_batch}")
    attention = None if a.attention is None else attention_extractor(a.attention, plain_ok=True)
    with _user_input():  # --steps, --sampler, --eta, --lower-bound, --seed, --sigmas on the smallest LR the model takes
        a.steps = checked_steps(ad, a, dev, given, yoda=attention is not None)
    return UpscaleRun(model, dev, unit, least, attention, speed_options(a, dev))


def _upscale_one(a, run: UpscaleRun, arr, grey: bool, src: str, dst: str, tally: Tally, meta=None) -> None:
    import torch

    from .adapters import padded_lr_side
    from .images import from_uint8

    lr = from_uint8(arr).to(run.dev)
    hr_h, hr_w = (padded_lr_side(n, a.scale, run.unit, run.least) * a.scale for n in arr.shape[:2])  # the state
    windows, window_batch, need = plan_windows(hr_h, hr_w, run.unit, run.least, a.max_memory, a.tiles,
                                               a.window_batch)
    if windows is not None and a.tiles is None:
        from .sampling.tiles import window_sides, window_starts

        (wh, ww), o = window_sides(windows[0]), windows[1]  # a batch larger than the windows was printed as given
        per_call = min(window_batch, len(window_starts(hr_h, wh, o)) * len(window_starts(hr_w, ww, o)))
        tally.say(f"{printable(src)}: up to about {mebibytes(need)} at {hr_w}x{hr_h} (a generous estimate) is over "
                  f"--max-memory {mebibytes(a.max_memory)}: denoising in windows of {window_text(windows[0])} (overlap "
                  f"{windows[1]}: --tiles {window_text(windows[0])},{windows[1]}), {per_call} per call")
        window_notes(src, hr_h, hr_w, windows[0], a.max_memory)
    unused_window_batch_note(a, src, windows, hr_h, hr_w)
    t0 = time.perf_counter()
    with torch.no_grad():
        sr = upscale_tensor(run.model, lr, attention=run.attention, steps=a.steps, sampler=a.sampler,
                            eta=a.eta, lower_bound=a.lower_bound, seed=a.seed, progress=bars(a),
                            windows=windows, window_batch=window_batch, sigmas=a.sigmas, speed=run.speed)
    save_output(sr, dst, grey, meta)
    tally.written += 1
    tally.say(f"{printable(src)} -> {printable(dst)} ({sr.shape[-1]}x{sr.shape[-2]}, {time.perf_counter() - t0:.1f} s)")


def cmd_attention(a) -> int:
    from .attention import attention_figure
    from .images import from_uint8
    from .attention.figure import update_ratio
    from .sampling.prepare import resolve_attention

    check_output_option(a.output)
    refuse_overwriting([a.output], [a.image])
    if a.steps is not None and a.steps > a.T:
        raise UserError(f"--steps must be at most --T ({a.T}), got {a.steps}")
    arr, _, _ = read_input(a.image, a.max_pixels)
    check_hr_size(a.image, arr, a.scale, a.max_pixels)  # the map is drawn at the HR size
    lr = from_uint8(arr)
    with _user_input():  # --lower-bound, --T; the map yoda.sample uses at the HR size (resized, renormalised)
        A = resolve_attention(attention_extractor(a.attention), lr, (lr.shape[-2] * a.scale, lr.shape[-1] * a.scale))
        ratio, what = update_ratio(A, a.T, a.lower_bound, a.steps)  # --steps: over the steps yoda.sample visits
        fig = attention_figure(lr, A, a.lower_bound, a.T, steps=a.steps,  # its title: the ratio printed below
                               label=f"{a.attention} attention of {printable(os.path.basename(a.image))}, "
                                     f"x{a.scale}")  # a newline in the name drew a second title line over the labels
    line = f"pixel update ratio ({a.attention}, lower bound {a.lower_bound:g}, {what}): {ratio:.3f}"
    written_or_said(lambda: save_figure(fig, a.output), lambda: say(line, full_ok=False))
    # (said only here: `> /dev/full` is an error, a closed pipe is not)
    say(f"{line}  -> {printable(a.output)}", full_ok=False)
    return 0


def _no_map(name) -> bool:
    """--attention none / plain (as the names, any case): plain sampling, no map."""
    return isinstance(name, str) and name.strip().lower() in ("none", "plain")


def _check_eval_options(a, outputs) -> None:
    """eval's and figures' --max-size and --lpips files, and ``outputs`` (none an input), before any work."""
    refuse_overwriting(outputs, [*(a.images or ()), a.model, a.model.partition(":")[2], a.model_config,
                                 *(a.lpips or ())])
    if any(map(_no_map, a.attention)):  # the YODA rows need a map: said as demo says it
        attention_extractor(None)
    if a.max_size < 0:
        raise UserError(f"--max-size must be >= 0 (0: full size), got {a.max_size}")
    for f in a.lpips or ():
        if not os.path.isfile(f):  # (a folder was "not found" too)
            what = "a folder" if os.path.isdir(f) else "not a regular file" if os.path.exists(f) else "not found"
            raise UserError(f"--lpips: weights file {f}: {what}")


class _Skipped(list):
    """The inputs of eval / figures that could not be used: each reported in one line as it is met, the others go
    on (the command then exits with status 2)."""

    def __call__(self, name: str, e: BaseException) -> None:
        self.append(name)
        error_line(f"yoda: error: {one_line(e)} (skipped)")

    def status(self, total: int) -> int:
        if self:
            error_line(f"yoda: error: {len(self)} of {total} images could not be used (see the lines above)")
        return 2 if self else 0


def cmd_eval(a) -> int:
    from .evaluate import EvalSettings, evaluate

    if a.output:
        from .images import OUTPUT_SUFFIXES

        if os.path.splitext(a.output)[1].lower() in OUTPUT_SUFFIXES:  # it wrote a Markdown table into R.png
            raise UserError(f"-o {a.output}: eval writes a table (Markdown, any other name) or a CSV (.csv), not "
                            f"an image")
        check_writable(a.output, "-o")
        remove_stale_temps([a.output, "{}.partial{}".format(*os.path.splitext(a.output))])  # of a killed run
    _check_eval_options(a, [a.output] if a.output else [])
    skipped = _Skipped()
    with _user_input():
        images = eval_images(a.images, a.max_pixels, a.model)
    dev = cli_device(a.device)
    model, ad, given = cli_model(a, dev)
    with _user_input():  # the options, the images, the model and the LPIPS weights are the user's
        settings = EvalSettings(steps=a.steps if given else None, sampler=a.sampler, eta=a.eta, sigmas=a.sigmas,
                                lower_bounds=tuple(a.lower_bounds), attentions=tuple(a.attention), seed=a.seed,
                                max_size=a.max_size or None, progress=bars(a),
                                lpips=tuple(a.lpips) if a.lpips else None, y_channel=a.y_channel)
        if a.attention:
            eval_steps_note(ad, a, dev, settings, given)
        rows: list = []
        try:
            evaluate(model, images, settings, on_error=skipped, rows=rows)
        except BaseException as e:  # a stop: what was done is kept, said to be partial (a wrapped one too, stop_in)
            if not isinstance(stop_in(e), (KeyboardInterrupt, Terminated)):
                raise
            try:
                eval_results(a, rows, f"stopped after {len({r['image'] for r in rows})} of {len(images)} images")
            except OSError as w:  # the stop still ends the run (130 / 143), not the partial file it could not write
                error_line(f"yoda: error: {one_line(w)}")
            raise
    eval_results(a, rows)
    return skipped.status(len(images))


def cmd_figures(a) -> int:
    """Fig. 3 (update ratio, refined area), Fig. 5 (regional error) and Fig. 4 (crops) into the folder -o."""
    from .figures import FIGURE_FILES, FigureSettings, compute, write_figures
    from .images import OUTPUT_SUFFIXES

    # the output folder first: an existing folder must take the three files; a new one must be creatable
    out = Path(a.output)
    # the images' folder: the next run read the figures as photos
    if out.exists() and any(os.path.exists(p) and os.path.samefile(out, p) for p in a.images or ()):
        raise UserError(f"-o {a.output} is the --images folder; give the figures a folder of their own")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {a.output} is a file; yoda figures writes {len(FIGURE_FILES)} PNGs into a folder")
    if not out.exists() and out.suffix.lower() in OUTPUT_SUFFIXES:
        raise UserError(f"-o {a.output}: yoda figures writes {len(FIGURE_FILES)} PNGs into a folder; give a folder "
                        f"name, not an image file's")
    check_out_folder(a.output, [out / name for name in FIGURE_FILES])
    _check_eval_options(a, [out / name for name in FIGURE_FILES])
    remove_stale_temps([out / name for name in FIGURE_FILES])
    with _user_input():
        settings = FigureSettings(attentions=tuple(a.attention), lower_bound=a.lower_bound,
                                  lower_bounds=tuple(a.lower_bounds), steps=a.steps, sampler=a.sampler, eta=a.eta,
                                  seed=a.seed, max_size=a.max_size or None, bins=a.bins, degree=a.degree,
                                  crops=a.crops, progress=bars(a), lpips=tuple(a.lpips) if a.lpips else None)
        skipped = _Skipped()
        images = eval_images(a.images, a.max_pixels, a.model)
    check_attentions(a.attention)
    dev = cli_device(a.device)
    model, ad, _ = cli_model(a, dev)
    with _user_input():  # --steps, --sampler, --eta, --seed checked on the model (a traceback before)
        unrefined_note(ad, a, dev, [a.lower_bound], "Fig. 4 and 5's YODA images", "plain refines")
    with made_folder(out):
        with _user_input():  # the images, the model and its outputs, the LPIPS weights
            data = compute(model, images, settings, on_error=skipped)
        paths = written_or_said(lambda: write_figures(data, out), lambda: say_figure_numbers(a, settings, data))
    say_figure_numbers(a, settings, data)
    for p in paths:
        say(f"wrote {printable(str(p))}")
    return skipped.status(len(images))


def say_figure_numbers(a, settings, data) -> None:
    """`yoda figures`' tables: the pixel update ratios and the regional error by attention bin."""
    lines = [f"pixel update ratio (mean over {len(data.names)} image{'s' * (len(data.names) != 1)}):",
             "| attention | " + " | ".join(f"l={lb:g}" for lb in settings.lower_bounds) + " |",
             "|---|" + "---|" * len(settings.lower_bounds)]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for name, row in data.ratios.items()]
    rp, ry = data.regional["plain"], data.regional["YODA"]
    flat = f"; {rp['flat']} image(s) with a flat map left out" if rp["flat"] else ""
    lines += [f"regional error by attention bin ({a.attention[0]}; pixels pooled over the images{flat}):",
              "| A bin | pixels | MSE plain | MSE YODA | PSNR plain (dB) | PSNR YODA (dB) |",
              "|---|---|---|---|---|---|"]
    d = max(2, math.ceil(math.log10(len(rp["count"]))))  # decimals that tell the edges apart (--bins 1000: 3)
    lines += [f"| {rp['edges'][i]:.{d}f}-{rp['edges'][i + 1]:.{d}f} | {n} | {rp['mse'][i]:.2f} | {ry['mse'][i]:.2f} | "
              f"{rp['psnr'][i]:.2f} | {ry['psnr'][i]:.2f} |" for i, n in enumerate(rp["count"])]
    if data.lpips_note:
        lines.append(data.lpips_note + ".")
    say("\n".join(lines), full_ok=False)  # the numbers are said only here: `> /dev/full` is an error


def train_lines(every_s: float = 60.0):
    """yoda train's progress where no bar is drawn (into a log file or a pipe: CI, nohup, a batch job, which saw
    nothing between the start and the end): a line for a logged row at most every ``every_s`` seconds, and for
    every validated row and the run's last (its end, or a stop's)."""
    last = [-math.inf]

    def line(row: dict, total: int, final: bool) -> None:
        now, val = time.monotonic(), row["val_psnr_plain"] != ""
        if not (val or final or now - last[0] >= every_s):
            return
        last[0] = now
        loss = f"loss {row['loss']:.4f}" if math.isfinite(row["loss"]) else "no loss (no active pixel)"
        text = f"step {row['step']} of {total}: {loss}, lr {row['lr']:.3g}, {row['time']:.0f} s"
        if val:
            text += f"; validation PSNR plain {row['val_psnr_plain']:.2f} dB" + (
                f", YODA {row['val_psnr_yoda']:.2f} dB" if row["val_psnr_yoda"] != "" else "")
        say(text)
    return line


def cmd_train(a) -> int:
    from .training import train_main

    command = "yoda " + shlex.join(a.argv)  # as it can be pasted back (a path with a space)
    world = launched_world()
    if world != "1":  # torchrun: data-parallel training (yoda.training.distributed)
        command = f"torchrun (WORLD_SIZE={world}) -m {command}"
    with _user_input():  # the config, its data, the device, a checkpoint of another config, a diverging loss
        s = train_main(a.config, a.out or None, steps=a.steps, device=a.device, minutes=a.minutes,
                       progress=bars(a), command=command, weights_name=a.weights_name, data_dir=a.data_dir,
                       warmup=a.warmup, decay_from=a.decay_from, val_every=a.val_every, init=a.init,
                       on_row=None if a.quiet or bars(a) else train_lines())
    if s["rank"] == 0:
        start = s["start_step"]
        resumed = f" (resumed at step {start})" if start else ""
        n = s["steps"] - start
        say(f"trained {n} step{'s' * (n != 1)}{resumed} in {s['seconds']:.1f} s, now at step {s['steps']} of "
            f"{s['total']} -> {printable(s['weights'])}")
        if s["stopped_by"] is not None:
            how = f"--minutes {a.minutes:g} ran out" if s["signal"] is None else f"stopped by {s['stopped_by']}"
            error_line(f"yoda: {how} at step {s['steps']} of {s['total']}; the checkpoint is saved: the same command "
                       f"resumes")
            return 0 if s["signal"] is None else 128 + int(s["signal"])
        note(f"next: yoda upscale IMAGE -o OUT --model {shell_quoted(s['weights'])}; "  # pasted back as it is
             f"yoda plot {shell_quoted(s['out'])} -o {shell_quoted(os.path.join(s['out'], 'curves.png'))}")
    return 0


def cmd_plot(a) -> int:
    from .plots import default_labels, log_path, plot_logs

    logs = [log_path(p) for p in a.logs]
    labels = a.labels or default_labels(logs)
    if Path(a.output).is_dir() or Path(a.output).suffix.lower() != ".png":  # (check_output's advice lists JPEG...)
        raise UserError(f"-o {a.output}: yoda plot writes a PNG; give a file name ending in .png")
    check_output_option(a.output)
    refuse_overwriting([a.output], logs)
    with _user_input():  # a missing file or one that is not a training log
        plot_logs(logs, labels, a.output)
    say(f"wrote {printable(a.output)}")
    return 0


def cmd_data(a) -> int:
    from .photos import PHOTOS, build

    if (a.dir is None) == (a.out is None):
        raise UserError(f"yoda data {a.data_cmd}: give the output folder once, as DIR or as --out DIR"
                        + (f" (got {a.dir!r} and --out {a.out!r})" if a.dir is not None else ""))
    out = a.dir if a.out is None else a.out
    if a.data_cmd == "export":
        from .data import export_builtin

        with _user_input():
            n = export_builtin(out)
        say(f"wrote {n['train']} training and {n['heldout']} held-out images (scikit-image's) to {printable(out)}")
        return 0
    with _user_input():
        built = build(out, short_side=a.short_side, progress=None if a.quiet else say)
    held = sum(r.split == "heldout" for r in built.rows)
    say(f"wrote {len(built.rows) - held} training and {held} held-out photographs to {printable(out)} "
        f"(manifest: {printable(os.path.join(out, 'manifest.json'))})")
    if built.not_installed:
        missing = sorted({PHOTOS[n][0] for n in built.not_installed})
        note(f"{len(built.not_installed)} of the {len(PHOTOS)} photographs are not installed, from "
             f"{', '.join(missing)} (apt-get install {' '.join(missing)})")
    for name, why in built.skipped.items():
        error_line(f"yoda: error: {name}: {why}")
    if built.skipped:
        error_line(f"yoda: error: {len(built.skipped)} photograph(s) could not be read and were left out: "
                   f"{', '.join(built.skipped)} (the manifest names them)")
        return 2
    return 0


# ----------------------------------------------------------------------------------------------------------
# Running a command
# ----------------------------------------------------------------------------------------------------------
COMMANDS = {"upscale": cmd_upscale, "attention": cmd_attention, "demo": cmd_demo, "eval": cmd_eval,
            "figures": cmd_figures, "train": cmd_train, "plot": cmd_plot, "data": cmd_data}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning of the library (an ICC profile it cannot read, a model in training mode, ...) as one line, above
    any progress bar. Under torchrun a warning met while a rank works on one of its inputs is said by that rank,
    named; one met outside (loading the model, reading the options: the same on every rank) by rank 0 alone."""
    where = working_where()
    if where is None and not main_rank():
        return
    error_line(f"yoda: warning: {where or ''}{printable(message)}")


@contextlib.contextmanager
def _usable_streams():
    """Within: a closed stdout / stderr (`>&-`) takes os.devnull (the work is done, its lines go nowhere: an
    AttributeError of None ended the run); stdout escapes what its encoding cannot write ("±" under
    PYTHONIOENCODING=ascii; under LANG=C without UTF-8 mode, whose surrogateescape failed on it too, and "ignore"
    dropped it; a UTF-8 stream keeps its policy), and has its own policy again after (main() called from a program
    keeps it)."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))
    out = sys.stdout
    try:
        was = out.errors if out.errors == "strict" or not _encodes(out.encoding, "\u00b1\u00b2\u00d7\u2014") else None
        if was:
            out.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError, OSError):  # a stream of another kind
        was = None
    try:
        yield
    finally:
        if was:
            out.reconfigure(errors=was)


def _encodes(encoding: str, text: str) -> bool:
    """Whether ``encoding`` writes ``text`` (the table's and lines' "±", "²", "×", "—")."""
    try:
        text.encode(encoding)
        return True
    except (UnicodeEncodeError, LookupError, TypeError):
        return False


_ONE_AT_A_TIME = threading.Lock()  # main() sets process-wide state: warnings' filters, Pillow's pixel limit


def _unlocked_in_child() -> None:
    """A child forked while another thread ran main() gets a lock of its own (it waited for ever on the copy)."""
    global _ONE_AT_A_TIME
    _ONE_AT_A_TIME = threading.Lock()


if hasattr(os, "register_at_fork"):  # (not on Windows, which does not fork)
    os.register_at_fork(after_in_child=_unlocked_in_child)


def main(argv: Optional[Sequence[str]] = None, program: bool = False) -> int:
    """The `yoda` command on ``argv`` (None: sys.argv[1:]); its exit status. ``program``: called as the process's
    own program (yoda.__main__.run, the console script and `python -m yoda`), which may tune the process (malloc).
    Calls from several threads run one after another: a command sets warnings' filters and Pillow's pixel limit
    for the process while it runs (two at once left the last one's settings behind for good)."""
    with _ONE_AT_A_TIME, _usable_streams():
        return _main(argv, program)


def _main(argv: Optional[Sequence[str]], program: bool) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # a file named "-x.png" is read as an option: argparse's error says why ("the following arguments are required")
    options = argv[:argv.index("--")] if "--" in argv else argv  # after "--" a name is a name
    _Parser.dashed_files = tuple(t for t in options if t.startswith("-") and t != "-" and os.path.isfile(t))
    try:
        a, extra = parser.parse_known_args(argv)
        if extra:  # after the command: named by its own parser, whose -h lists its options
            after = argv.index(extra[0]) > argv.index(a.cmd) if extra[0] in argv else True
            (command_parser(parser, a) if after else parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse already printed one usage line + error
        return int(e.code or 0)
    a.argv, a.program = argv, program
    given = getattr(a, "attention", None)
    if _no_map(given):
        a.attention = None
    try:
        if getattr(a, "steps", None) is not None and a.steps < 1:
            raise UserError(f"--steps must be >= 1, got {a.steps}")
        if getattr(a, "max_pixels", None) is not None and a.max_pixels < 0:
            raise UserError(f"--max-pixels must be >= 0 (0: no limit), got {a.max_pixels}")
        # lr_from_images: every image the commands sample is read as 8 bits and made [-1, 1] here (from_uint8)
        try:
            with pillow_limit(getattr(a, "max_pixels", None)), warnings.catch_warnings(), lr_from_images(), \
                    sigterm_exits():
                warnings.showwarning = _show_warning
                warnings.simplefilter("ignore", UnrefinedWarning)  # the commands note it, in their words
                warnings.filterwarnings("ignore", r"windows=.*: windows that do not overlap")  # so does check_tiles
                return COMMANDS[a.cmd](a)
        except Exception as e:  # a Ctrl-C or SIGTERM that Python wrapped (errors.stop_in) is one still
            raise stop_in(e)
    except KeyboardInterrupt:
        kept = ""
        if a.cmd == "train":  # (a Ctrl-C while it starts up has written none: the run's --out, where it is given)
            none = a.out and not os.path.isfile(os.path.join(a.out, "checkpoint.pt"))
            kept = ("; no checkpoint was written" if none else
                    f"; {'the last' if a.out else 'any'} checkpoint written stays, and the same command resumes "
                    f"from it")
        error_line(f"yoda: {rank_prefix()}interrupted{kept}")
        return 130
    except Terminated:
        error_line(f"yoda: {rank_prefix()}terminated (SIGTERM)")
        return 143
    except Exception as e:
        return _failure(a, e)


def _failure(a, e: Exception) -> int:
    """The exit status of a command that raised ``e``, after its one line (and its traceback: a bug's, or with
    --debug): 2 for a user error, an OSError or an allocation that failed, 1 for a lost rank or a bug."""
    oom = out_of_memory(e)
    lost = not oom and lost_rank(e)  # a rank died in a collective: the survivors said "internal error (a bug)"
    user = oom or lost or isinstance(e, (UserError, OSError)) or missing_package(e) is not None
    if a.debug or not user:
        traceback.print_exc()
    if oom:
        error_line(f"yoda: error: {rank_prefix()}{oom_text(e, a.cmd)}")
        return 2
    if lost:
        kept = "; the run resumes from its last checkpoint (the same command)" if a.cmd == "train" else ""
        error_line(f"yoda: error: {rank_prefix()}another rank or torchrun ended (killed, or out of memory?), so "
                   f"this one cannot go on ({lost}){kept}")
        return 1
    if not user:
        error_line(f"yoda: internal error: {rank_prefix()}{type(e).__name__} (a bug in yoda, or in code it ran; "
                   "the traceback is above)")
        return 1
    error_line(f"yoda: error: {rank_prefix()}{one_line(e, options=a.cmd != 'train')}")
    return 2


def oom_text(e: BaseException, cmd: str) -> str:
    """"out of memory (what failed); what helps" for ``cmd``."""
    return f"out of memory ({one_line(e, options=False)}); {MEMORY_ADVICE.get(cmd, 'smaller images need less')}"


MEMORY_ADVICE = {"upscale": "a lower --max-memory, or smaller --tiles, denoises in smaller windows",
                 "train": "a smaller batch, data.crop or data.val_crops in the config needs less",
                 "eval": "a lower --max-size needs less", "figures": "a lower --max-size needs less"}


if __name__ == "__main__":  # python -m yoda.cli ...
    sys.exit(main(program=True))
