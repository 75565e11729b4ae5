"""`yoda train`: run a config into a folder and write the training record (TRAINING.md) next to the weights."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import numbers
import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import data as _data
from .._io import (FolderInUse, atomic_write_text, check_folder_writable, folder_lock, made_dirs, remove_empty,
                   remove_stale_temps)
from ..errors import sigterm_exits
from ..names import MAX_MINUTES  # --minutes at most
from ..photos import HELD_OUT_PHOTOS
from .config import TrainConfig
from .distributed import all_reduce_sum, env_ranks, local_batch, process_group
from .trainer import RUN_FILES, Trainer, check_weights_name


def machine_description(device: torch.device) -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}"
    if device.type == "cuda":
        desc = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host: {desc}"
    return desc


def with_data_dir(cfg: TrainConfig, data_dir: str) -> TrainConfig:
    """``cfg`` with the "builtin" / "heldout" / "photos" / "photos-heldout" sources replaced by the train/ and
    heldout/ folders of ``data_dir`` (written by ``yoda data export`` or ``yoda data build``)."""
    sub = {"builtin": "train", "heldout": "heldout", "photos": "train", "photos-heldout": "heldout"}
    data_dir = os.path.abspath(data_dir)  # config.json and the checkpoint resume from any working folder
    d = cfg.data
    read = {d.source} | ({d.val_source} if cfg.validates else set())  # val_source only where the run validates
    if not read & set(sub):  # it was ignored without a word
        raise ValueError(f"--data-dir replaces the config's data sources {', '.join(map(repr, sub))}; this config "
                         f"trains on the folder {d.source!r}"
                         + ("" if cfg.validates or d.val_source not in sub else " and does not validate")
                         + ": leave --data-dir out, or set data.source in the config")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir}: {'not a folder' if os.path.exists(data_dir) else 'not found'}"
                                f" (a folder with train/ and heldout/, as `yoda data build --out DIR` writes)")
    for src in ({d.source} | ({d.val_source} if cfg.validates else set())) & set(sub):
        if not os.path.isdir(os.path.join(data_dir, sub[src])):
            raise ValueError(f"--data-dir {data_dir}: no folder {sub[src]}/ in it (the {src!r} source of the config); "
                             f"--data-dir takes a folder with train/ (training images) and heldout/ (validation) "
                             f"folders, as `yoda data build --out DIR` writes; a folder of your own images can "
                             f"instead be data.source in your config")
    held = os.path.join(data_dir, "heldout")
    # images put there for validation, silently unused; not the held-out sets `yoda data build` / `export` write
    # (README's own training command warned of them at every run)
    names = {n for n in os.listdir(held) if not n.startswith(".")} if os.path.isdir(held) else set()
    ours = os.path.isfile(os.path.join(data_dir, "manifest.json")) or names <= {f"{n}.png" for n in _data.HELD_OUT}
    if not cfg.validates and d.val_source in sub and names and not ours:
        how = ("--val-every N validates on them every N steps" if not cfg.val_every else
               "give data.val_crops > 0 in a copy of the config to validate on them")
        warnings.warn(f"--data-dir {data_dir}: its heldout/ images are not used: this config does not validate "
                      f"(val_every {cfg.val_every}, data.val_crops {d.val_crops}); {how}", UserWarning, stacklevel=3)
    return cfg.replace(data=dataclasses.replace(
        d, source=os.path.join(data_dir, sub[d.source]) if d.source in sub else d.source,
        val_source=os.path.join(data_dir, sub[d.val_source]) if d.val_source in sub else d.val_source))


def _describe_source(source: str) -> str:
    if source == "builtin":
        return f"'builtin' ({', '.join(_data.BUILTIN_TRAIN)})"
    manifest = os.path.join(os.path.dirname(os.path.abspath(source)), "manifest.json")
    if os.path.isfile(manifest):  # the train/ folder of `yoda data build`
        return f"the photographs of `yoda data build` in {source} (sources and sha256 in {manifest})"
    return f"the images in {source}"


def _record_text(out: str) -> str:
    """TRAINING.md of ``out`` (FileNotFoundError where there is none)."""
    return Path(out, "TRAINING.md").read_text(encoding="utf-8", errors="surrogateescape")


def _logged_rows(out: str) -> bool:
    """Whether ``out``'s log.csv holds a row besides its header."""
    try:
        with open(os.path.join(out, "log.csv"), encoding="utf-8", errors="replace") as f:
            return sum(1 for line in itertools.islice(f, 2) if line.strip()) > 1
    except OSError:
        return False


def recorded_step(out: str) -> Optional[int]:
    """The step TRAINING.md in ``out`` records, None where there is none (or it is no record)."""
    try:
        text = _record_text(out)
    except (OSError, UnicodeDecodeError):
        return None
    steps = re.search(r"^- steps: (\d+) \(this run: ", text, re.M)
    return int(steps[1]) if steps else None


def earlier_sessions(out: str, start_step: int) -> str:
    """The commands of a resumed run's earlier sessions, oldest first ("`CMD` (steps A-B); ..."), as its
    TRAINING.md names them: each rewrite of it carries the last one's command over; steps of a session that wrote
    no record (stopped twice, a full disk) are said to have none. "" for a fresh run."""
    unrecorded = "no record (a session that wrote no TRAINING.md; log.csv has its rows)"
    if start_step <= 0:
        return ""
    try:
        text = _record_text(out)
    except FileNotFoundError:
        return f"steps 0-{start_step}: {unrecorded}"
    except (OSError, UnicodeDecodeError):
        return ""
    before = re.search(r"^- earlier sessions: (.*)$", text, re.M)
    cmd = re.search(r"^- command: `(.*)`$", text, re.M)
    steps = re.search(r"^- steps: (\d+) \(this run: (\d+)", text, re.M)
    if not (cmd and steps) or int(steps[1]) > start_step:  # not a record, or one past the checkpoint: not this run's
        return ""
    last = f"`{cmd[1]}` (steps {int(steps[1]) - int(steps[2])}-{steps[1]})"
    if int(steps[1]) < start_step:
        last += f"; steps {steps[1]}-{start_step}: {unrecorded}"
    return f"{before[1]}; {last}" if before else last


def _last_loss(rows: list) -> str:
    """TRAINING.md's loss line: the last row with a loss (a row whose steps had no active pixel, with mask_loss, logs
    nan: the line names the step of the loss it gives instead of printing nan)."""
    if not rows:
        return "- no steps logged"
    losses = [r for r in rows if not math.isnan(float(r.get("loss", math.nan)))]
    if not losses:
        return "- last logged loss: none (no logged step had an active pixel)"
    line = f"- last logged loss: {losses[-1]['loss']:.4f}"
    if losses[-1] is rows[-1]:
        return line
    return line + f" (step {losses[-1]['step']}; the steps logged after it had no active pixel)"


def training_record(cfg: TrainConfig, tr: Trainer, *, config_path: str, out: str, command: str, weights_name: str,
                    start_step: int, seconds: float, stopped_by: Optional[str] = None, earlier: str = "") -> str:
    """The Markdown of TRAINING.md for a finished (or stopped: ``stopped_by`` says what stopped it) run;
    ``earlier``: the commands of its earlier sessions (earlier_sessions)."""
    last = tr.rows[-1] if tr.rows else {}
    n_params = sum(p.numel() for p in tr.model.parameters())
    size = os.path.getsize(os.path.join(out, weights_name))
    lines = [
        f"# Training record: {cfg.name}",
        "",
        f"- command: `{command or shlex.join(['yoda', 'train', '--config', config_path, '--out', out])}`",
        *([f"- earlier sessions: {earlier}"] if earlier else []),
        f"- config: `{config_path}` (copied to config.json; also stored in the weights' metadata)",
        f"- data: {_describe_source(cfg.data.source)} ({len(tr.train_images.names)} images), random "
        f"{cfg.data.crop}x{cfg.data.crop} HR crops "
        f"{'with' if cfg.data.flips else 'without'} flips, "
        f"LR = yoda.data.make_lr (x{cfg.data.scale} torch bicubic, antialias, 8-bit); refused as held out (by "
        f"content, whole images, not crops): {', '.join(_data.HELD_OUT)} (scikit-image) and "
        f"{', '.join(HELD_OUT_PHOTOS)} (yoda.photos)",
        f"- loss: {cfg.loss}",
        f"- model: {cfg.model.get('kind')} with {n_params:,} parameters; weights {weights_name} "
        f"({size / 1e6:.1f} MB, EMA decay {cfg.ema_decay})",
        *([f"- started from: `{tr.cfg.init}` (sha256 {tr.init_sha256 or 'not recorded'})"
           + (f"; up(lr) {tr.upsampling!r}, the file's own (yoda.upsampling)" if tr.upsampling != "torch" else "")]
          if tr.cfg.init else []),
        f"- steps: {tr.step} (this run: {tr.step - start_step}; batch {cfg.batch}; AdamW lr {cfg.lr}"
        + (f", warm-up {cfg.warmup} step{'s' * (cfg.warmup != 1)}" if cfg.warmup else "")
        + (f", linear decay from step {cfg.decay_from} to 0 at step {cfg.steps}" if cfg.decay_from else "") + ")"
        + (f"; stopped by {stopped_by} before step {cfg.steps}: the same command resumes" if stopped_by else ""),
        f"- wall time of this run: {seconds:.1f} s ({(tr.step - start_step) / max(seconds, 1e-9):.2f} steps/s)",
        f"- machine: {machine_description(tr.device)}"
        + (f"; {tr.ranks.world} processes (torchrun, DistributedDataParallel, {cfg.batch // tr.ranks.world} "
           f"samples each)" if tr.ranks.world > 1 else ""),
        _last_loss(tr.rows),
    ]
    if last.get("val_psnr_plain", "") != "":
        lines.append(f"- validation PSNR (DDIM {cfg.val_steps} step{'s' * (cfg.val_steps != 1)}, {cfg.data.val_crops} "
                     f"held-out crops): plain "
                     f"{last['val_psnr_plain']:.2f} dB" + (f", YODA {last['val_psnr_yoda']:.2f} dB"
                                                           if last.get("val_psnr_yoda", "") != "" else "")
                     + _bicubic_text(tr))
    return "\n".join(lines) + "\n"


def check_out(out: str, weights_name: str) -> None:
    """Before anything is read or trained: files can be written in the folder ``out`` (made if missing), and none
    of the files the run writes there is a folder. Errors name --out (or --weights-name)."""
    check_weights_name(weights_name)
    check_folder_writable(out, "--out")
    for name in RUN_FILES + (weights_name,):
        if os.path.isdir(os.path.join(out, name)):
            what = "--weights-name" if name == weights_name else "--out"
            raise IsADirectoryError(f"{what}: {os.path.join(out, name)} is a folder, where the run writes its {name}")


def hold_out(stack: contextlib.ExitStack, out: str, ranks, dev: torch.device) -> None:
    """Rank 0 holds --out for the run (folder_lock, released by ``stack``): a second `yoda train` into it (a job
    launched twice) is refused instead of interleaving both runs' files. Every rank learns it from one vote, so
    under torchrun all of them stop with the error (the others waited for rank 0 until torchrun killed them)."""
    busy = None
    if ranks.main:
        try:
            stack.enter_context(folder_lock(out, "--out"))
        except FolderInUse as e:
            busy = e
    if all_reduce_sum(torch.tensor([float(busy is not None)], device=dev), ranks).item() > 0:
        raise busy or FolderInUse(f"--out {out} is in use by another yoda process (rank 0 found it held)")


def _bicubic_text(tr: Trainer) -> str:
    """"; bicubic X dB ..." of the validation crops (torch bicubic of their make_lr, 8-bit), the bar a model must
    clear: a run whose validation PSNR fell below it said nothing of it (34.59 -> 33.12 dB against 35.00)."""
    from ..adapters import upsample
    from ..evaluate import psnr_u8

    if tr.val_hr is None:  # (validation off in this session: the row is an earlier one's)
        return ""
    scale = tr.cfg.data.scale
    bicubic = float(psnr_u8(upsample(_data.make_lr(tr.val_hr, scale), scale), tr.val_hr).mean())
    return f"; bicubic {bicubic:.2f} dB on the same crops (a model below it makes them worse)"


def train_main(config_path: str, out: Optional[str], *, steps: Optional[int] = None, device: str = "auto",
               minutes: Optional[float] = None, progress: Optional[bool] = None, command: str = "",
               weights_name: str = "model.safetensors", data_dir: Optional[str] = None,
               warmup: Optional[int] = None, decay_from: Optional[int] = None, val_every: Optional[int] = None,
               init: Optional[str] = None, on_row: Optional[Callable[[dict, int, bool], None]] = None) -> dict:
    """Train from a JSON config into ``out`` (None: runs/<config name>); writes the weights, config.json, log.csv
    and TRAINING.md.

    Under torchrun (WORLD_SIZE > 1) it trains data-parallel (yoda.training.distributed): the config's batch is
    the global batch, split over the ranks; rank 0 writes the files. The summary has the rank ("rank").

    data_dir: a folder with train/ and heldout/ image folders, written by ``yoda data build`` (photographs: it
    replaces the "photos" / "photos-heldout" sources) or ``yoda data export`` (it replaces "builtin" /
    "heldout" with the same images, for machines without scikit-image). init: a yoda model file to start from
    (TrainConfig.init; the path is made absolute). config_path may also be a TrainConfig; paths may be
    pathlib.Path (one for out ended a finished run in a TypeError, before its record). on_row: Trainer's."""
    if isinstance(config_path, TrainConfig):
        cfg, config_path = config_path, "(a TrainConfig given in Python)"
    elif isinstance(config_path, (str, os.PathLike)):
        config_path = os.fspath(config_path)
        cfg = TrainConfig.load(config_path)
    else:
        raise TypeError(f"config_path must be a JSON file's path, an installed config's name or a TrainConfig, got "
                        f"{type(config_path).__name__}")
    out = os.path.join("runs", cfg.name) if out is None else os.fspath(out)
    init = None if init is None else os.fspath(init)
    # NaN never ran out; 1e308 minutes overflowed to inf seconds
    if minutes is not None and not (isinstance(minutes, numbers.Real) and not isinstance(minutes, bool)
                                    and 0 < minutes <= MAX_MINUTES):
        raise ValueError(f"minutes (--minutes) must be a number > 0 and <= {MAX_MINUTES:g}, got {minutes!r}")
    given = [(option, key, value) for option, key, value in (
        ("--steps", "steps", steps), ("--warmup", "warmup", warmup), ("--decay-from", "decay_from", decay_from),
        ("--val-every", "val_every", val_every)) if value is not None]
    try:  # all at once, with the config's checks (2.7 was taken as 2): one at a time, --steps 8 --decay-from 4 was
        cfg = cfg.replace(**{key: value for _, key, value in given})  # checked against the config's decay_from 10
    except ValueError as e:  # the config's check names its keys: the options too
        named = [f"{o} {v}" for o, k, v in given if re.search(rf"\b{k}\b", str(e))] or [f"{o} {v}" for o, _, v in given]
        raise ValueError(f"{' '.join(named)}: {e}") from None
    if val_every and not cfg.data.val_crops:  # (it was ignored without a word)
        raise ValueError(f"--val-every {val_every}: this config validates on no held-out crops (data.val_crops 0); "
                         f"give data.val_crops > 0 in a copy of the config")
    if cfg.warmup > cfg.steps:
        warnings.warn(f"the run ends inside its warm-up (warmup {cfg.warmup}, steps {cfg.steps}): the learning rate "
                      f"reaches {cfg.learning_rate(cfg.steps - 1):.3g}, not lr ({cfg.lr:g}); give --warmup below "
                      f"--steps", UserWarning, stacklevel=2)
    if init is not None:
        if not init.strip():
            raise ValueError(f"--init must be the path of a yoda model file (.safetensors), got {init!r}")
        if init == "default":  # as --model default: the embedded model
            from ..models.loading import DEFAULT_WEIGHTS

            init = str(DEFAULT_WEIGHTS)
        cfg = cfg.replace(init=os.path.abspath(init))
    export = os.path.join(out, weights_name)  # a fresh run would write its weights over the file it starts from
    if cfg.init and os.path.isfile(cfg.init) and os.path.isfile(export) and os.path.samefile(cfg.init, export) \
            and not os.path.exists(os.path.join(out, "checkpoint.pt")):
        raise ValueError(f"init (--init) {cfg.init} is the file this run exports its weights to ({weights_name} in "
                         f"--out {out}): training would write over it; copy it elsewhere first, or give another "
                         f"--weights-name")
    if data_dir is not None:
        cfg = with_data_dir(cfg, data_dir)
    ranks = env_ranks()
    local_batch(cfg.batch, ranks.world)  # before the process group: a clear error on every rank
    from ..devices import rank_device, resolve_device

    if ranks.main:  # rank 0 writes; the other ranks making the folder at the same time must not race its check
        check_out(out, weights_name)
    dev = rank_device(resolve_device(device), ranks.world, ranks.local_rank)  # before the folder: none left on error
    made = made_dirs(Path(out))
    try:
        with sigterm_exits(), process_group(ranks, dev), contextlib.ExitStack() as stack:
            hold_out(stack, out, ranks, dev)
            # held: a second run into a busy folder (its log.csv rows, no checkpoint yet) is refused without this
            if ranks.main and not os.path.exists(os.path.join(out, "checkpoint.pt")) and _logged_rows(out):
                warnings.warn(f"--out {out} holds log.csv rows but no checkpoint.pt (a run stopped before its first "
                              f"checkpoint): this run starts at step 0 and writes its log afresh", UserWarning,
                              stacklevel=2)  # (it started over unsaid)
            if ranks.main:  # the temporary files of a run killed while writing (SIGKILL, a power loss): --out is
                remove_stale_temps([os.path.join(out, name) for name in (*RUN_FILES, weights_name)], 0)  # held
            stack.callback(remove_empty, made)  # while --out is held: a run that wrote nothing leaves no folder
            tr = Trainer(cfg, out, device=device, progress=progress, weights_name=weights_name, ranks=ranks,
                         on_row=on_row)
            stack.callback(tr.close)  # before the process group goes (the with's exit)
            start_step = tr.step
            if start_step > cfg.steps:  # run() would train nothing and export the checkpoint's weights again
                told = f"--steps {steps}" if steps is not None else f"the config's steps ({cfg.steps})"
                raise ValueError(f"the checkpoint in {out} is at step {start_step}, past {told}: nothing to train "
                                 f"(give more steps, or another --out)")
            init = os.path.realpath(tr.cfg.init) if tr.cfg.init else ""  # the file it started from is no old weights
            if ranks.main and start_step > 0 and (older := sorted(
                    f for f in os.listdir(out) if f.endswith(".safetensors") and f != weights_name
                    and os.path.realpath(os.path.join(out, f)) != init)):
                warnings.warn(f"--out {out} also holds {', '.join(older)}: weights of an earlier session under "
                              f"another --weights-name, left as they are; this run writes {weights_name}")
            summary = tr.run(max_seconds=None if minutes is None else 60.0 * float(minutes))
            # a run that trained nothing keeps the record of the one that did, if that one got to write it (a second
            # Ctrl-C while it saved left the checkpoint past the record: the record is written again, at its step)
            if ranks.main and (tr.step > start_step or recorded_step(out) != tr.step):
                record = training_record(tr.cfg, tr, config_path=config_path, out=out, command=command,
                                         weights_name=weights_name, start_step=start_step,
                                         seconds=summary["seconds"], stopped_by=summary["stopped_by"],
                                         earlier=earlier_sessions(out, start_step))
                atomic_write_text(os.path.join(out, "TRAINING.md"), record)
    except FolderInUse:
        raise  # another process holds --out: it may be using the folder this one made, so it stays
    except BaseException:
        remove_empty(made)  # a run that failed before writing anything leaves no empty folder
        raise
    summary.update(out=out, weights=os.path.join(out, weights_name), rank=ranks.rank, start_step=start_step)
    return summary
