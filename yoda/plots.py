"""Pictures of training logs (Pillow: matplotlib is not a dependency): `yoda plot LOG.csv... -o curves.png`.

read_log reads a log.csv that yoda.training.Trainer writes (columns step, loss, lr, time, val_psnr_plain,
val_psnr_yoda); plot_logs draws the loss curves and the validation PSNR of one or more logs into one PNG.
"""

from __future__ import annotations

import csv
import math
import os
import stat
from typing import Sequence

import numpy as np

from .drawing import COLOURS, GRID, dashed, fmt, font, nice_ticks, text, text_wh, tick_labels
from .images import save_pil

PLOTTED = ("step", "loss", "val_psnr_plain", "val_psnr_yoda")  # the columns plot_logs draws


def log_path(path: str) -> str:
    """A run folder stands for its log.csv (what yoda train writes there)."""
    return os.path.join(path, "log.csv") if os.path.isdir(path) else path


def default_labels(paths: Sequence[str]) -> list[str]:
    """One legend label per log: its run folder's name (runs/NAME/log.csv), with more of the path (or the file's
    own name) where two labels would be alike."""
    parts = [os.path.abspath(p).split(os.sep)[1:] for p in paths]
    for p in parts:
        if p and p[-1] == "log.csv" and len(p) > 1:
            p.pop()  # runs/NAME/log.csv: the run is NAME
    n = 1
    while True:
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels) or all(n >= len(p) for p in parts):
            return labels
        n += 1


def read_log(path: str) -> list[dict]:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO waited forever, /dev/zero filled the memory
            raise ValueError(f"{path} is not a regular file (a device or a pipe); a training log is a CSV file")
        # utf-8-sig: a spreadsheet's byte-order mark, which made the first column "\ufeffstep", is read as none
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except FileNotFoundError:
        raise ValueError(f"log file not found: {path}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a training log (a CSV file of yoda train: {e})") from None
    if "step" not in header or "loss" not in header:
        raise ValueError(f"{path} is not a training log (needs step and loss columns)")
    if not rows:
        raise ValueError(f"{path} has no logged steps yet (only its header)")
    for line, r in enumerate(rows, 2):  # the columns plot_logs draws are numbers, or empty (not validated then)
        for key in PLOTTED:
            v = r.get(key)
            if v not in ("", None) or key == "step":
                try:
                    float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"{path} line {line}: {key} is {v!r}, not a number") from None
    return rows


def _series(rows, key) -> tuple[list[list[tuple[float, float]]], bool]:
    """The (step, value) runs of column ``key``, split where a value (or step) is not finite (nan, inf: a gap in
    the curve); rows without the value (validation is logged every val_every steps) are passed over. Also whether
    any row has the value at all, finite or not."""
    runs, run, seen = [], [], False
    for r in rows:
        if r.get(key, "") in ("", None):
            continue
        seen = True
        x, y = float(r["step"]), float(r[key])
        if math.isfinite(x) and math.isfinite(y):
            run.append((x, y))
        elif run:
            runs, run = runs + [run], []
    return runs + [run] if run else runs, seen


def _extent(values) -> tuple[float, float] | None:
    """(min, max) of the finite ``values`` (None when there is none); a single value v is widened to v +- 5 %
    (v +- 1 for 0) so that it sits in the middle of the axis."""
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return None
    lo, hi = min(v), max(v)
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.05 or 1.0
    return lo - pad, hi + pad


def axis_ticks(lo: float, hi: float, integers: bool = False) -> list[tuple[float, str]]:
    """Tick values of an axis whose data span [lo, hi], as (value, label): round values inside it
    (drawing.nice_ticks, about 5), only whole numbers when ``integers`` (steps); the value itself when lo == hi.
    Labelled by drawing.tick_labels (the decimals of the ticks' spacing, as every figure's axes)."""
    if hi <= lo:
        return [(lo, fmt(lo))]
    ticks = nice_ticks(lo, hi)
    if integers:
        ticks = [t for t in ticks if t == int(t)]
    return list(zip(ticks, tick_labels(ticks)))


def _legend_layout(widths, note_w: float, x: float, max_x: float, gap: float = 24) -> tuple[list, tuple, int]:
    """Positions of legend items of text widths ``widths`` (each drawn as a 30 px line sample, 6 px, then its
    label) and of the line-style note (``note_w`` wide) in rows from ``x`` to ``max_x``: [(x, row)] per entry,
    the note's (x, row), and the number of rows. An item that does not fit the rest of its row starts a new row;
    the note is right-aligned at max_x on the last row when it fits there."""
    pos, cx, row = [], x, 0
    for w in widths:
        w = 36 + w
        if cx > x and cx + w > max_x:
            cx, row = x, row + 1
        pos.append((cx, row))
        cx += w + gap
    if cx > x and cx + note_w > max_x:
        row += 1
    return pos, (max_x - note_w, row), row + 1


def _run_config(log: str) -> dict:
    """The config.json yoda train writes next to a run's log.csv, parsed ({} when there is none or it is not
    JSON)."""
    import json

    from ._json_fields import read_config_text

    try:
        cfg = json.loads(read_config_text(os.path.join(os.path.dirname(os.path.abspath(log)), "config.json"),
                                          "config file"))
    except (OSError, ValueError, RecursionError):  # absent, unreadable, a pipe, huge, not JSON, nested too deep
        return {}
    return cfg if isinstance(cfg, dict) else {}


def loss_description(log: str) -> str:
    """What a run's loss column is, from its config.json (_run_config): "L1 on eps", with ", active pixels only"
    for a YODA mask_loss run (its mean is over fewer pixels); "" when there is none."""
    try:
        loss = _run_config(log)["loss"]
        text = f"{str(loss.get('loss', 'l1')).upper()} on {loss.get('target', 'eps')}"
    except (KeyError, TypeError, AttributeError):
        return ""
    return text + (", active pixels only" if loss.get("mask_loss") else "")


def validation_description(log: str) -> str:
    """How a run's validation PSNR was measured, from its config.json: "4 crops of 64x64, DDIM 20 steps, YODA edge
    l = 0.6" (the attention and lower bound of the YODA curve; one crop's PSNR moves by tenths of a dB from step
    to step); "" when there is no config; "not validated" for a run that does not validate (val_every or
    data.val_crops 0, TrainConfig.validates) and logged no PSNR, whose legend entry named crops it never sampled."""
    try:
        cfg = _run_config(log)
        if not (cfg.get("val_every", 1) and cfg.get("data", {}).get("val_crops", 1)) and not any(
                r.get(k) not in ("", None) for r in read_log(log) for k in PLOTTED[2:]):
            return "not validated"
        n, size, steps = int(cfg["data"]["val_crops"]), int(cfg["data"]["val_crop"]), int(cfg["val_steps"])
        att, lb = cfg.get("attention"), cfg.get("loss", {}).get("lower_bound")  # the dashed line's (Trainer.validate)
        yoda = f", YODA {att.split(':')[0]} l = {float(lb):g}" if isinstance(att, str) and lb is not None else ""
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
    return f"{n} crop{'s' if n != 1 else ''} of {size}x{size}, DDIM {steps} step{'s' if steps != 1 else ''}{yoda}"


MAX_LOG_TICKS = 7  # a log axis over more decades labels every 2nd, 5th, ... power of ten


def log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Ticks of a log axis over [lo, hi] (0 < lo < hi): 1, 2 and 5 times the powers of ten inside it, only the
    powers of ten when that leaves at least two (at most MAX_LOG_TICKS of them: every n-th, n in 1, 2, 5, 10, ...;
    a diverged loss's 1e30 labelled 37 decades, one over the other), written 1e-6 ... 1e30 alike where any is
    past 1e±4; the ends themselves when none lies inside."""
    ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi]
    powers = [round(math.log10(t)) for t in ticks if math.isclose(math.log10(t), round(math.log10(t)))]
    if len(powers) < 2:
        ticks = ticks if len(ticks) >= 2 else [lo, hi]
        return [(t, fmt(t)) for t in ticks]
    every = next(n * 10 ** e for e in range(400) for n in (1, 2, 5) if len(powers) / (n * 10 ** e) <= MAX_LOG_TICKS)
    kept = [k for k in powers if k % every == 0]
    powers = kept if len(kept) >= 2 else powers[::every]
    wide = any(abs(k) > 4 for k in powers)
    return [(10.0 ** k, f"1e{k}" if wide else fmt(10.0 ** k)) for k in powers]


LOG_SCALE_SPAN = 30.0  # a loss whose largest value is this many times its 10th percentile is drawn on a log axis


def _font():
    return font(11)


def _draw_panel(dr, f, box: tuple, title: str, series: list, labels: list, steps: tuple, all_steps: list,
                loss: bool) -> None:
    """One panel of plot_logs in ``box`` (x0, y0, x1, y1): its frame, title, ticks and the ``series`` (log index,
    column, runs of finite (step, value) points, whether any value was seen), on the shared step axis ``steps``;
    ``loss``: the loss panel (a log scale where the loss spans decades; its empty series named top right)."""
    x0, y0, x1, y1 = box
    m = 6  # the data stay m px inside the frame, so a point at the min or max is whole
    dr.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    # a series whose values are all nan or inf is named, top right for the loss and bottom right for the
    # PSNR, where a falling loss and a rising PSNR leave room
    bad = [f"{labels[li]}: no finite {k}" for li, k, runs, seen in series if seen and not runs]
    for i, s in enumerate(bad):
        w, _ = text_wh(dr, s, f)
        text(dr, (x1 - 8 - w, y0 + 8 + 16 * i if loss else y1 - 8 - 16 * (len(bad) - i)), s, f, (0, 0, 0))
    pts = [p for _, _, runs, _ in series for run in runs for p in run]
    if not pts:
        text(dr, (x0, 8), title, f, (0, 0, 0))
        if not bad:
            text(dr, (x0 + 10, y0 + 10), "no data", f, (0, 0, 0))
        return
    ys = [p[1] for p in pts]
    # a loss over decades (its 10th percentile, so that one low logging window does not decide it)
    log_y = loss and min(ys) > 0 and max(ys) >= LOG_SCALE_SPAN * float(np.percentile(ys, 10))
    g = math.log10 if log_y else float
    (xmin, xmax), (ymin, ymax) = steps, _extent([g(v) for v in ys])
    fx = lambda v: x0 + m + (v - xmin) / (xmax - xmin) * (x1 - x0 - 2 * m)  # noqa: E731
    fy = lambda v: y1 - m - (g(v) - ymin) / (ymax - ymin) * (y1 - y0 - 2 * m)  # noqa: E731
    text(dr, (x0, 8), title + (" (log scale)" if log_y else ""), f, (0, 0, 0))
    # round tick values with grid lines, under the curves
    for v, s in (log_ticks if log_y else axis_ticks)(min(ys), max(ys)):
        w, h = text_wh(dr, s, f)
        dr.line([(x0 + 1, fy(v)), (x1 - 1, fy(v))], fill=GRID)
        dr.line([(x0 - 4, fy(v)), (x0, fy(v))], fill=(0, 0, 0))
        text(dr, (x0 - 6 - w, fy(v) - h / 2 - 2), s, f, (0, 0, 0))
    for v, s in axis_ticks(min(all_steps), max(all_steps), integers=True):
        w, _ = text_wh(dr, s, f)
        dr.line([(fx(v), y1), (fx(v), y1 + 4)], fill=(0, 0, 0))
        text(dr, (min(max(fx(v) - w / 2, x0), x1 - w), y1 + 5), s, f, (0, 0, 0))
    for li, k, runs, _ in series:
        col = COLOURS[li % len(COLOURS)]
        for run in runs:
            xy = [(fx(a), fy(b)) for a, b in run]
            if k == "val_psnr_yoda":
                for a, b in zip(xy, xy[1:]):
                    dashed(dr, a, b, col, 2)
            elif len(xy) > 1:
                dr.line(xy, fill=col, width=2)
            r = 2 if k != "loss" else 3 if len(xy) == 1 else 0  # the loss: a dot only where it has no line
            for p in xy if r else []:  # YODA's PSNR: rings, which tell it from plain's dots without a line too
                if k == "val_psnr_yoda":
                    dr.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill="white", outline=col, width=2)
                else:
                    dr.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=col)
    w, _ = text_wh(dr, "steps", f)
    text(dr, ((x0 + x1 - w) / 2, y1 + 18), "steps", f, (0, 0, 0))


def plot_logs(paths: list[str], labels: list[str], out: str, size=(900, 360)) -> None:
    """One PNG with two panels: training loss vs step (left) and validation PSNR vs step (right; solid
    plain sampling, dashed YODA sampling), one colour per log (drawing.COLOURS, cycling after ten). Non-finite
    values (a diverged run's nan loss) are left out, a gap in the curve; a point with no neighbour is a dot."""
    from PIL import Image, ImageDraw

    if len(paths) != len(labels):
        raise ValueError(f"labels: give one label per log ({len(paths)} logs, {len(labels)} labels)")
    real = [os.path.realpath(p) for p in paths]
    for i, r in enumerate(real):  # one log twice: one curve drawn over the other, under two legend entries
        if r in real[:i]:
            raise ValueError(f"logs: {paths[real.index(r)]} and {paths[i]} are the same log; give each once")
    logs = [read_log(p) for p in paths]
    W, H = size
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    f = _font()
    note = "PSNR: solid, dots = plain sampling; dashed, rings = YODA"
    kinds = [loss_description(p) for p in paths]
    loss_title = "training loss" + (f": {kinds[0]}" if len(set(kinds)) == 1 and kinds[0] else "")
    vals_each = [validation_description(p) for p in paths]
    apart = [k for k, differ in (("loss", len(set(kinds)) > 1), ("val", len(set(vals_each)) > 1)) if differ]
    if apart:  # losses of different kinds, or PSNRs measured differently, are not comparable: said in the legend
        words = {"loss": [k or "loss unknown" for k in kinds], "val": [v or "validation unknown" for v in vals_each]}
        labels = [f"{lab} ({'; '.join(words[k][i] for k in apart)})" for i, lab in enumerate(labels)]
    entries, (nx, nrow), nrows = _legend_layout([text_wh(dr, lab, f)[0] for lab in labels], text_wh(dr, note, f)[0],
                                                60, W - 15)
    ly = H - 10 - 18 * nrows  # the top of the legend's first row
    vals = set(vals_each)
    val_title = "validation PSNR (dB)" + (f": {vals.pop()}" if len(vals) == 1 and "" not in vals else "")
    panels = [(loss_title, PLOTTED[1:2]), (val_title, PLOTTED[2:])]
    # one step axis for both panels, so that a step sits at the same place in each
    all_steps = [p[0] for rows in logs for k in PLOTTED[1:] for run in _series(rows, k)[0] for p in run]
    steps = _extent(all_steps)
    pw = W // 2
    for pi, (title, keys) in enumerate(panels):
        box = (pi * pw + 50, 30, (pi + 1) * pw - 15, ly - 32)
        series = [(li, k, *_series(rows, k)) for li, rows in enumerate(logs) for k in keys]
        _draw_panel(dr, f, box, title, series, labels, steps, all_steps, loss=pi == 0)
    for li, (lab, (x, row)) in enumerate(zip(labels, entries)):
        col, y = COLOURS[li % len(COLOURS)], ly + 18 * row
        dr.line([(x, y + 6), (x + 30, y + 6)], fill=col, width=3)
        text(dr, (x + 36, y), lab, f, (0, 0, 0))
    text(dr, (nx, ly + 18 * nrow), note, f, (0, 0, 0))
    save_pil(img, out)
