"""Drawing the figures with Pillow (yoda.drawing's primitives) and writing them (write_figures)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..drawing import COLOURS as _COLOURS
from ..drawing import README_WIDTH
from ..drawing import Axes as _Axes
from ..drawing import fit_width as _fit_width
from ..drawing import fmt as _fmt
from ..drawing import font as _font
from ..drawing import legend as _legend
from ..drawing import limits as _limits
from ..drawing import text_wh as _text_wh
from ..drawing import text as _text
from ..drawing import tick_labels
from ..drawing import title as _title
from ..drawing import wrap as _wrap
from .compute import FigureData, FigureSettings, _method_label
from .numbers import LOG_FITS, fit_values

FIGURE_FILES = ("fig3_update_ratio.png", "fig5_regional_error.png", "fig4_crops.png")

FIG3_SIZE = (1000, 430)
FIG5_COLUMNS = 2  # Fig. 5's panels a row: README_WIDTH (three side by side were 1410 px, shown with 7.5 px text)
FIG5_PANEL = (README_WIDTH // FIG5_COLUMNS, 350)  # one panel of Fig. 5 (MSE, PSNR[, LPIPS][, YODA - plain])
_FIG5_AXES = (80, 30, FIG5_PANEL[0] - 20, 300)  # a Fig. 5 panel's plot area in the panel
CROP_COLUMNS = ("bicubic", "plain", "YODA", "HR")
_MIN_CROP_PANEL = 160  # px: crops are enlarged (nearest) to at least this
_MAX_CROP_PANEL = 256
_PAD = 8
_BG = (255, 255, 255)
_BLACK = (0, 0, 0)
_GREY = (150, 150, 150)
_PLAIN, _YODA = _COLOURS[0], _COLOURS[1]
_LOCATOR = (230, 20, 20)
LOCATOR_COLUMN = "where (whole HR)"
AB_NOTE = ("ab: the distance between the mean CIELAB (a*, b*) of the SR image and of the HR image, a colour cast "
           "(about 2.3 is just noticeable)")


def _sampling_text(s: FigureSettings) -> str:
    eta = f" eta={s.eta:g}" if s.sampler == "ddim" and s.eta else ""
    return f"{s.sampler.upper()}{eta} {s.steps} step{'s' * (s.steps != 1)}, seed {s.seed}"


def method_colours(methods: Sequence[str]) -> dict:
    """A colour per attention method that does not depend on the order of ``--attention``: yoda.attention.NAMES'
    position of its name (edge blue, gaussian red, sift green, dino-vits8 purple, dino-resnet50 orange); a name
    seen twice (two DINO checkpoints) or an unknown one takes a colour no known name has, then any unused one."""
    from ..attention import NAMES

    own = {_method_label(n): _COLOURS[i] for i, n in enumerate(NAMES)}  # each known name's colour
    cols: dict = {}
    for m in methods:  # known names first, each its own colour once
        if own.get(_method_label(m)) is not None and own[_method_label(m)] not in cols.values():
            cols[m] = own[_method_label(m)]
    spare = [c for c in _COLOURS[len(own):] + _COLOURS[:len(own)] if c not in cols.values()]
    for i, m in enumerate([m for m in methods if m not in cols]):
        cols[m] = spare[i] if i < len(spare) else _COLOURS[i % len(_COLOURS)]
    return {m: cols[m] for m in methods}


# ----------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------
def draw_update_ratio(ratios: Mapping[str, Sequence[float]], lower_bounds: Sequence[float], ts: Sequence[int],
                      curves: Mapping[str, Sequence[float]], T: int, lower_bound: float, n_images: int):
    """Fig. 3: grouped bars of the pixel update ratio (method x lower bound, left) and the refined area in %
    against t = T..1 (one line per method at ``lower_bound``, right). Returns a PIL.Image of FIG3_SIZE."""
    from PIL import Image, ImageDraw

    W, H = FIG3_SIZE
    canvas = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(canvas)
    font, big = _font(12), _font(14)
    _title(canvas, draw, f"Fig. 3  YODA's work: pixel update ratio and refined area "
                         f"(mean over {n_images} image{'s' if n_images != 1 else ''}, T = {T})", big)
    methods = list(ratios)
    cols = method_colours(methods)

    # left: groups = lower bounds, one bar per method
    n_g, n_m = len(lower_bounds), max(1, len(methods))
    ax = _Axes(canvas, (80, 60, 480, 330), (-0.5, n_g - 0.5), (0.0, 1.05), font)
    ax.frame("pixel update ratio over all T steps = mean(min(1, A + l))", "lower bound l",
             "fraction of plain diffusion's updates", xticks=list(range(n_g)), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0],
             xticklabels=tick_labels(lower_bounds))
    bw = 0.8 / n_m
    for g in range(n_g):
        for j, m in enumerate(methods):
            xa = g - 0.4 + j * bw
            ax.bar(xa, xa + bw, float(ratios[m][g]), cols[m])
    _legend(draw, 80, 372, [(_method_label(m), cols[m], "bar") for m in methods], font, max_x=480)

    # right: refined area against t, sampling order left to right (t = T .. 1)
    ts = np.asarray(ts)
    ax = _Axes(canvas, (590, 60, 980, 330), (float(T), 0.0), (0.0, 105.0), font)
    ax.frame(f"refined area at l = {_fmt(lower_bound)}: pixels with A >= t/T - l",
             "timestep t (sampling runs left to right, T -> 1)", "refined area (% of pixels)",
             yticks=[0, 20, 40, 60, 80, 100])
    tl = lower_bound * T
    if 0 < tl < T:
        ax.line([tl, tl], [0, 105], _GREY, width=1, dashed=True)
        s = "t <= l*T: every pixel active"
        if ax.fx(tl) + 4 + _text_wh(draw, s, font)[0] >= 975:  # no room right of the line (small l): left of it,
            s = "every pixel active at t <= l*T ->"  # pointing right (it read as labelling the part still growing)
            _text(draw, (ax.fx(tl) - 4 - _text_wh(draw, s, font)[0], ax.fy(12)), s, font, _GREY)
        else:
            _text(draw, (ax.fx(tl) + 4, ax.fy(12)), s, font, _GREY)
    for m in methods:
        ax.line(ts, 100.0 * np.asarray(curves[m]), cols[m], width=2)
    _legend(draw, 590, 372, [(_method_label(m), cols[m], "line") for m in methods], font, max_x=980)
    return canvas


def _fit_curve(coefs, r: Mapping, key: str) -> tuple:
    """(xs, ys) of a Fig. 5 fit over the bins it was fitted to (poly_fit's points: count > 0, finite values):
    extrapolated to A = 0 and 1, a degree-9 fit of bins at 18-26 dB reached 80 dB at A = 0 and set the axis."""
    c, y = np.asarray(r["centres"], dtype=np.float64), np.asarray(r[key], dtype=np.float64)
    fitted = np.isfinite(y) & ((y > 0) if key in LOG_FITS else True)  # (a bin of MSE 0 is no point of log MSE)
    c = c[(np.asarray(r["count"]) > 0) & fitted & np.isfinite(c)]
    xs = np.linspace(c.min(), c.max(), 101)
    return xs, fit_values(coefs, key, xs)


def fig5_boxes(n_panels: int, top: int) -> list[tuple[int, int, int, int]]:
    """The plot areas (x0, y0, x1, y1) of Fig. 5's panels in reading order, FIG5_COLUMNS a row under ``top``."""
    pw, ph = FIG5_PANEL
    ax0, ay0, ax1, ay1 = _FIG5_AXES
    cells = [((k % FIG5_COLUMNS) * pw, top + (k // FIG5_COLUMNS) * ph) for k in range(n_panels)]
    return [(x + ax0, y + ay0, x + ax1, y + ay1) for x, y in cells]


def draw_regional_error(regional: Mapping[str, dict], fits: Mapping[tuple, Any], degree: int, *, title_note: str = "",
                        note: str = ""):
    """Fig. 5: per-bin MSE and PSNR (and LPIPS when the regional dicts have "lpips") against the attention value,
    plain vs YODA: points at the bin centres, lines the polynomial fits; with both plain and YODA a last panel of
    YODA - plain PSNR per bin around a zero line (the differences are tenths of a dB, invisible on the PSNR
    panel's scale). Returns a PIL.Image FIG5_COLUMNS panels (FIG5_PANEL) wide, at most README_WIDTH, the panels
    in rows (fig5_boxes) under the title (wrapped); the legend and notes in the last row's free cell, if any,
    else under the panels."""
    from PIL import Image, ImageDraw

    keys = [("mse", "MSE per bin (8-bit units^2)", "MSE"), ("psnr", "PSNR per bin (dB)", "PSNR (dB)")]
    if all("lpips" in r for r in regional.values()) and regional:
        keys.append(("lpips", "LPIPS per bin (spatial map)", "LPIPS"))
    both = "plain" in regional and "YODA" in regional
    n, (pw, ph) = len(keys) + both, FIG5_PANEL
    W = FIG5_COLUMNS * pw
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font, big = _font(12), _font(14)
    heads = _wrap(measure, "Fig. 5  regional error against attention" + (f" ({title_note})" if title_note else ""),
                  big, W - 16)
    top = 14 + 20 * len(heads)
    boxes = fig5_boxes(n, top)
    # plain: big circles, solid fit; YODA: small squares on top, dashed fit (both stay visible when they agree)
    style = {"plain": (_PLAIN, "o", 6.0, False), "YODA": (_YODA, "s", 3.5, True)}
    other = (_COLOURS[2], "^", 4.0, False)
    entries = [(f"{lab} sampling", style.get(lab, other)[0],
                style.get(lab, other)[1] + ("--" if style.get(lab, other)[3] else "-")) for lab in regional]
    used = sorted({len(c) - 1 for c in fits.values() if c is not None})  # poly_fit lowers it to points - 1
    fit = (f"degree-{degree} numpy.polyfit" if used == [degree] else
           f"numpy.polyfit of degree {'/'.join(map(str, used))} (--degree {degree} is lowered to the points - 1)")
    logs = " and ".join(key.upper() for key, _, _ in keys if key in LOG_FITS)
    lines = (f"lines: {fit} (of the log for {logs}), weighted by sqrt(pixels per bin)" if used else
             "no lines (a fit needs 2 bins with pixels)")
    rows = -(-n // FIG5_COLUMNS)
    if n % FIG5_COLUMNS:  # the legend and the notes in the free cell beside the last panel
        tx, ty, tw = (n % FIG5_COLUMNS) * pw + 30, top + (rows - 1) * ph + _FIG5_AXES[1], pw - 50
    else:  # under the panels
        tx, ty, tw = _FIG5_AXES[0], top + rows * ph + 4, W - _FIG5_AXES[0] - 20
    notes = [li for s in (f"points: per-bin means; {lines}", note) if s for li in _wrap(measure, s, font, tw)]
    legend_h = _legend(measure, tx, 0, entries, font, max_x=tx + tw)
    H = max(top + rows * ph, ty + legend_h + 17 * len(notes)) + 10
    canvas = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(heads):
        _title(canvas, draw, line, big, 6 + 20 * i)
    for (key, title, ylabel), box in zip(keys, boxes):
        curves = {label: _fit_curve(fits[label, key], r, key) for label, r in regional.items()
                  if fits.get((label, key)) is not None}
        vals = [r[key] for r in regional.values()] + [ys for _, ys in curves.values()]
        lo, hi = _limits(np.concatenate([np.ravel(v) for v in vals]) if vals else [0, 1],
                         floor=0.0 if key != "psnr" else None)
        ax = _Axes(canvas, box, (0.0, 1.0), (lo, hi), font)
        ax.frame(title, "attention value A (bin centre)", ylabel, xticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
        for label, (xs, ys) in curves.items():
            colour, shape, size, dashed = style.get(label, other)
            ax.line(xs, ys, colour, width=2, dashed=dashed)
        for label, r in regional.items():
            colour, shape, size, _ = style.get(label, other)
            ax.points(r["centres"], r[key], colour, shape, size)
    if both:
        diff = np.asarray(regional["YODA"]["psnr"], dtype=np.float64) - np.asarray(regional["plain"]["psnr"])
        ax = _Axes(canvas, boxes[-1], (0.0, 1.0), _limits(np.append(diff, 0.0)), font)
        ax.frame("YODA - plain PSNR per bin (dB)", "attention value A (bin centre)", "difference (dB)",
                 xticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.line([0.0, 1.0], [0.0, 0.0], _GREY, width=1)
        ax.points(regional["plain"]["centres"], diff, _YODA, "s", 3.5)
    y = _legend(draw, tx, ty, entries, font, max_x=tx + tw)
    for i, line in enumerate(notes):
        _text(draw, (tx, y + 17 * i), line, font, _BLACK)
    return canvas


def crops_figure_size(n_rows: int, crop: int, locator: bool = True) -> tuple[int, int, int]:
    """(width, height, panel px) of Fig. 4 with n_rows images and crops of side ``crop``: each crop is shown
    enlarged (nearest) by an integer factor to at least _MIN_CROP_PANEL px (at most _MAX_CROP_PANEL); locator: a
    first column with the whole HR image and the crop's box (LOCATOR_COLUMN)."""
    k = max(1, math.ceil(_MIN_CROP_PANEL / crop))
    while k > 1 and crop * k > _MAX_CROP_PANEL:
        k -= 1
    panel = crop * k
    width = _PAD + (len(CROP_COLUMNS) + bool(locator)) * (panel + _PAD)
    height = 30 + 18 + n_rows * (20 + panel + 36 + _PAD) + 18
    return width, height, panel


def _locator(hr, box, panel: int):
    """The whole HR image (uint8 (H, W, 3)) shrunk (or enlarged, nearest) to fit panel x panel, centred on white,
    with the crop's box (y, x, side) drawn in red around the pixels it holds."""
    from PIL import Image, ImageDraw

    H, W = hr.shape[:2]
    g = panel / max(H, W)
    w, h = max(1, round(W * g)), max(1, round(H * g))
    im = Image.fromarray(hr).resize((w, h), Image.Resampling.BOX if g < 1 else Image.Resampling.NEAREST)
    out = Image.new("RGB", (panel, panel), _BG)
    ox, oy = (panel - w) // 2, (panel - h) // 2
    out.paste(im, (ox, oy))
    y, x, c = box
    x0, y0 = ox + math.floor(x * g), oy + math.floor(y * g)
    x1, y1 = ox + math.ceil((x + c) * g) - 1, oy + math.ceil((y + c) * g) - 1
    ImageDraw.Draw(out).rectangle([x0, y0, x1, y1], outline=_LOCATOR, width=2)
    return out


def draw_crops(crops: Sequence[dict], caption: str = ""):
    """Fig. 4: one row per crop dict (compute()'s FigureData.crops): where the crop lies in the whole HR image
    (when the rows carry it as "hr", all of them), bicubic / plain / YODA / HR, and under each SR crop its PSNR
    and CIELAB ab shift vs HR, for the crop and for the whole image (AB_NOTE below). The panels have the first
    crop's size; a crop of another side (images of other sizes) is resized to it, and its row says by how much.
    Returns a PIL.Image of crops_figure_size(len(crops), side, locator)."""
    from PIL import Image, ImageDraw

    if not crops:
        raise ValueError("crops must not be empty")
    side = crops[0]["box"][2]  # rows with another crop side are resized to the same panel
    locator = all("hr" in c for c in crops)
    W, H, panel = crops_figure_size(len(crops), side, locator)
    canvas = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(canvas)
    font, small, big = _font(12), _font(11), _font(14)
    _title(canvas, draw, "Fig. 4  crops: PSNR and CIELAB colour shift (ab) vs HR" + (f"  ({caption})" if caption else ""),
           big)
    columns = ((LOCATOR_COLUMN,) if locator else ()) + CROP_COLUMNS
    for j, name in enumerate(columns):
        w, _ = _text_wh(draw, name, font)
        _text(draw, (_PAD + j * (panel + _PAD) + (panel - w) / 2, 30), name, font, _BLACK)
    y = 30 + 18
    for c in crops:
        cy, cx, cs = c["box"]
        where = (f": {cs}x{cs} crop at x={cx}, y={cy} ("
                 f"{'plain = YODA: the top-left window' if c.get('flat') else 'where plain and YODA differ most'}"
                 f"), shown "
                 f"x{panel / cs:.3g}")
        name = _fit_width(draw, Path(str(c["name"])).name, font, W - 2 * _PAD - _text_wh(draw, where, font)[0])
        _text(draw, (_PAD, y + 3), name + where, font, _BLACK)
        y += 20
        for j, name in enumerate(columns):
            x0 = _PAD + j * (panel + _PAD)
            if name == LOCATOR_COLUMN:
                im = _locator(c["hr"], c["box"], panel)
            else:
                im = Image.fromarray(c["images"][name]).resize((panel, panel), Image.Resampling.NEAREST)
            canvas.paste(im, (x0, y))
            draw.rectangle([x0 - 1, y - 1, x0 + panel, y + panel], outline=_GREY)
            if name == LOCATOR_COLUMN:
                hh, ww = c["hr"].shape[:2]
                lines = [f"{ww}x{hh}", ""]
            elif name == "HR":
                lines = ["reference", ""]
            else:
                mc, mi = c["metrics"][name]["crop"], c["metrics"][name]["image"]
                lines = [f"crop: {_db(mc['psnr'])}, ab {mc['ab_shift']:.2f}",
                         f"image: {_db(mi['psnr'])}, ab {mi['ab_shift']:.2f}"]
            for li, s in enumerate(lines):
                _text(draw, (x0, y + panel + 3 + 16 * li), s, small, _BLACK)
        y += panel + 36 + _PAD
    _text(draw, (_PAD, y), AB_NOTE, small, _BLACK)
    return canvas


def _db(v: float) -> str:
    return "inf dB" if not math.isfinite(v) else f"{v:.2f} dB"


def write_figures(data: FigureData, folder) -> list[Path]:
    """Draw the three figures of ``data`` and write them atomically (yoda.images.save_pil) into ``folder``
    (which must exist) as FIGURE_FILES. Returns the paths."""
    from ..images import save_pil

    s = data.settings
    folder = Path(folder)
    n = len(data.names)
    flat = data.regional["plain"].get("flat", 0)
    pooled = f"{n - flat} of {n} images ({flat} flat map{'s' if flat != 1 else ''} left out)" if flat else \
        f"{n} image{'s' if n != 1 else ''}"
    fig3 = draw_update_ratio(data.ratios, s.lower_bounds, data.curve_ts, data.curves, data.T, s.lower_bound, n)
    yname = _method_label(s.attentions[0])
    fig5 = draw_regional_error(
        data.regional, data.fits, s.degree,
        title_note=f"{pooled}, {s.bins} bin{'s' if s.bins != 1 else ''} of A ({yname}), pixels pooled per bin; "
                   f"{_sampling_text(s)}; YODA l = {_fmt(s.lower_bound)}",
        note=data.lpips_note)
    fig4 = draw_crops(data.crops, caption=f"YODA: {yname}, l = {_fmt(s.lower_bound)}; {_sampling_text(s)}")
    paths = []
    for fig, name in zip((fig3, fig5, fig4), FIGURE_FILES):
        paths.append(save_pil(fig, folder / name))
    return paths
