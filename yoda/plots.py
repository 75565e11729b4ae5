"""Pictures of training logs (Pillow: matplotlib is not a dependency): `yoda plot LOG.csv... -o curves.png`.

read_log reads a log.csv that yoda.training.Trainer writes (columns step, loss, lr, time, val_psnr_plain,
val_psnr_yoda); plot_logs draws the loss curves and the validation PSNR of one or more logs into one PNG.
"""

from __future__ import annotations

import csv

from .drawing import COLOURS, dashed
from .images import save_pil

_COLOURS = COLOURS[:4]  # one colour per log, cycling after four


def read_log(path: str) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
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
    return rows


def _series(rows, key):
    return [(float(r["step"]), float(r[key])) for r in rows if r.get(key, "") not in ("", None)]


def plot_logs(paths: list[str], labels: list[str], out: str, size=(900, 360)) -> None:
    """One PNG with two panels: training loss vs step (left) and validation PSNR vs step (right; solid
    plain sampling, dashed YODA sampling), one colour per log."""
    from PIL import Image, ImageDraw

    if len(paths) != len(labels):
        raise ValueError("give one label per log")
    logs = [read_log(p) for p in paths]
    W, H = size
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    panels = [("training loss", ["loss"]), ("validation PSNR (dB)", ["val_psnr_plain", "val_psnr_yoda"])]
    pw = W // 2
    for pi, (title, keys) in enumerate(panels):
        x0, y0, x1, y1 = pi * pw + 50, 30, (pi + 1) * pw - 15, H - 60
        dr.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        dr.text((x0, 8), title, fill=(0, 0, 0))
        series = [(li, k, _series(rows, k)) for li, rows in enumerate(logs) for k in keys]
        pts = [p for _, _, s in series for p in s]
        if not pts:
            dr.text((x0 + 10, y0 + 10), "no data", fill=(0, 0, 0))
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        ymin, ymax = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        fx = lambda v: x0 + (v - xmin) / (xmax - xmin) * (x1 - x0)  # noqa: E731
        fy = lambda v: y1 - (v - ymin) / (ymax - ymin) * (y1 - y0)  # noqa: E731
        for li, k, s in series:
            col = _COLOURS[li % len(_COLOURS)]
            xy = [(fx(a), fy(b)) for a, b in s]
            if k == "val_psnr_yoda":
                for a, b in zip(xy, xy[1:]):
                    dashed(dr, a, b, col, 2)
            elif len(xy) > 1:
                dr.line(xy, fill=col, width=2)
            for p in xy if k != "loss" else []:
                dr.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=col)
        dr.text((x0 - 45, y0), f"{ymax:.4g}", fill=(0, 0, 0))
        dr.text((x0 - 45, y1 - 10), f"{ymin:.4g}", fill=(0, 0, 0))
        dr.text((x0, y1 + 4), f"{xmin:.0f}", fill=(0, 0, 0))
        dr.text((x1 - 40, y1 + 4), f"{xmax:.0f} steps", fill=(0, 0, 0))
    for li, lab in enumerate(labels):
        col = _COLOURS[li % len(_COLOURS)]
        dr.line([(60 + li * 220, H - 22), (90 + li * 220, H - 22)], fill=col, width=3)
        dr.text((96 + li * 220, H - 28), lab, fill=(0, 0, 0))
    dr.text((W - 330, H - 28), "PSNR: solid = plain sampling, dashed = YODA", fill=(0, 0, 0))
    save_pil(img, out)
