"""Pillow plotting primitives shared by yoda.figures and yoda.plots (matplotlib is not a dependency): a font,
round tick values, axis limits, dashed lines, an Axes (frame, ticks, lines, points, bars), markers, legends, text
wrapped to a width; the panel grid of yoda demo and its error maps."""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

BLACK = (0, 0, 0)
GRID = (228, 228, 228)
# line colours, in the order series take them
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # (matplotlib's tab10: `yoda plot`
# of eight logs drew the seventh and eighth in the first two's colours)
# px: about the widest a README's picture is shown at its own size on GitHub; a wider one is shrunk to this, its
# 12 px labels with it (README's demo, 1578 px wide, had 7 px text). README's pictures are drawn at most this wide
README_WIDTH = 880
GRID_TEXT_WIDTH = 480  # px: panel_grid's text widens a figure of small panels up to this, then it is wrapped


# Fonts with wide coverage that systems ship (Pillow looks for a bare name in the system's font folders: Linux's
# XDG data dirs, macOS's and Windows' Fonts): a string with a character the built-in font lacks (it has ASCII and 7
# more, "café.png" came out as "caf" and a box) is drawn in the first of these that has them all (else the one
# with the most)
UNICODE_FONTS = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "NotoSansCJK-Regular.ttc",
                 "DroidSansFallbackFull.ttf", "Arial Unicode.ttf", "arial.ttf", "msyh.ttc")


def font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 / no FreeType: the fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=None)
def _font_file(name: str) -> Optional[str]:
    """The file of a font UNICODE_FONTS names, None where it is not installed (or unreadable)."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype(name, 12).path
    except (OSError, ValueError):
        return None


_GLYPHS: dict = {}  # (font file, or (family, style) of one in memory, size, character) -> whether the font has it


def _has_glyph(face, ch: str) -> bool:
    """Whether ``face`` draws ``ch`` as its own glyph rather than the box of a missing one (Pillow cannot ask)."""
    path = getattr(face, "path", None)  # a file's, or the family and style of one in memory (the built-in font's)
    key = (path if isinstance(path, str) else getattr(face, "getname", lambda: id(face))(), face.size, ch)
    has = _GLYPHS.get(key)
    if has is None:
        def ink(c):
            m = face.getmask(c)
            return m.size, bytes(m)

        if len(_GLYPHS) > 65536:
            _GLYPHS.clear()
        has = _GLYPHS[key] = ch.isspace() or ink(ch) != ink("\uffff")  # U+FFFF is a noncharacter: no font has it
    return has


def face_for(s: str, face):
    """``face``, or where it lacks a character of ``s``, a system font of its size that has them (UNICODE_FONTS;
    else the one with the most); ``face`` where none is installed."""
    if s.isascii() or not hasattr(face, "getmask") or not hasattr(face, "size"):
        return face
    missing = [ch for ch in set(s) if not _has_glyph(face, ch)]
    if not missing:
        return face
    from PIL import ImageFont

    best, most = face, 0
    for name in UNICODE_FONTS:
        path = _font_file(name)
        if path is None:
            continue
        alt = ImageFont.truetype(path, face.size)  # (a new one: a FreeType face is not for two threads at once)
        n = sum(_has_glyph(alt, ch) for ch in missing)
        if n == len(missing):
            return alt
        if n > most:
            best, most = alt, n
    return best


def text(draw, xy, s: str, face, fill) -> None:
    """``draw.text`` in ``face``, or in a font that has the characters of ``s`` (face_for)."""
    draw.text(xy, s, fill=fill, font=face_for(s, face))


def text_wh(draw, s: str, font) -> tuple[int, int]:
    l, t, r, b = draw.textbbox((0, 0), s, font=face_for(s, font))
    return r - l, b - t


def fit_width(draw, s: str, font, width: int) -> str:
    """``s`` as it fits ``width`` px: whole, or with its middle replaced by "..." (a long file name keeps its start
    and its extension)."""
    if text_wh(draw, s, font)[0] <= width:
        return s
    lo, hi = 0, len(s)  # the most characters kept, by bisection
    while lo < hi:
        k = (lo + hi + 1) // 2
        if text_wh(draw, s[: (k + 1) // 2] + "..." + s[len(s) - k // 2:], font)[0] <= width:
            lo = k
        else:
            hi = k - 1
    return s[: (lo + 1) // 2] + "..." + s[len(s) - lo // 2:] if lo else "..."


def wrap(draw, s: str, font, width: int) -> list[str]:
    """``s`` in lines of at most ``width`` px: broken at spaces (" ".join of the lines gives ``s`` back), and a word
    wider than a line (a long path) where it must be."""
    lines, cur = [], ""
    for word in s.split(" "):
        cand = f"{cur} {word}" if cur else word
        if not cur or text_wh(draw, cand, font)[0] <= width:
            cur = cand
        else:
            lines.append(cur)
            cur = word
        while len(cur) > 1 and text_wh(draw, cur, font)[0] > width:  # the most characters that fit, by bisection
            lo, hi = 1, len(cur) - 1
            while lo < hi:
                k = (lo + hi + 1) // 2
                lo, hi = (k, hi) if text_wh(draw, cur[:k], font)[0] <= width else (lo, k - 1)
            lines.append(cur[:lo])
            cur = cur[lo:]
    return lines + [cur]


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    return f"{float(f'{v:.4g}'):g}"


def tick_labels(ticks) -> list[str]:
    """The labels of an axis's tick values, all with the decimals of their spacing: 0.0, 0.2, ..., 1.0 (not 0 and
    1 beside 0.2), and 30.122, 30.124 for ticks 0.002 apart (not 30.12 twice). One tick: fmt's shortest form."""
    ticks = [float(t) for t in ticks]
    if len(ticks) < 2:
        return [fmt(t) for t in ticks]
    step = min(abs(b - a) for a, b in zip(ticks, ticks[1:])) or 1.0
    d = 0
    while d < 12 and abs(step * 10**d - round(step * 10**d)) > 1e-6 * max(1.0, step * 10**d):
        d += 1
    return [f"{t:.{d}f}" for t in ticks]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    start = math.ceil(lo / step - 1e-9) * step
    return [round(start + k * step, 12) for k in range(int(math.floor((hi - start) / step + 1e-9)) + 1)]


def limits(values, pad: float = 0.08, floor: Optional[float] = None) -> tuple[float, float]:
    v = np.asarray([x for x in np.ravel(values) if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        lo, hi = lo - max(abs(lo) * 0.1, 0.5), hi + max(abs(hi) * 0.1, 0.5)
    span = hi - lo
    lo, hi = lo - pad * span, hi + pad * span
    if floor is not None:
        lo = max(lo, floor)
    return lo, hi


def dashed(draw, a, b, colour, width: int = 1, dash: float = 6.0) -> None:
    (xa, ya), (xb, yb) = a, b
    n = max(1, int(math.hypot(xb - xa, yb - ya) / dash))
    for j in range(0, n, 2):
        t0, t1 = j / n, min(1.0, (j + 1) / n)
        draw.line([(xa + t0 * (xb - xa), ya + t0 * (yb - ya)), (xa + t1 * (xb - xa), ya + t1 * (yb - ya))],
                  fill=colour, width=width)


def dashed_path(draw, pts, colour, width: int = 1, dash: float = 7.0) -> None:
    """A dashed polyline: dashes and gaps of ``dash`` px measured along the whole path (so a curve made of
    many short segments is dashed too)."""
    pos, k = 0.0, 0  # arc length at the start of the current segment; index of the current dash or gap
    for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
        seg = math.hypot(xb - xa, yb - ya)
        if seg == 0:
            continue
        u = pos
        while True:
            end = min((k + 1) * dash, pos + seg)
            if k % 2 == 0 and end > u:  # a dash
                t0, t1 = (u - pos) / seg, (end - pos) / seg
                draw.line([(xa + t0 * (xb - xa), ya + t0 * (yb - ya)), (xa + t1 * (xb - xa), ya + t1 * (yb - ya))],
                          fill=colour, width=width)
            if (k + 1) * dash > pos + seg:
                break
            u, k = end, k + 1
        pos += seg


def label_stride(xs, widths, gap: float = 6.0) -> int:
    """The least k such that labels centred at every k-th of xs (widths in px) keep ``gap`` px apart: Fig. 3's
    bars of 20 lower bounds printed their labels over each other."""
    k = 1
    while any(abs(xs[i + k] - xs[i]) < (widths[i] + widths[i + k]) / 2 + gap for i in range(0, len(xs) - k, k)):
        k += 1
    return k


class Axes:
    """A plot area ``box`` = (x0, y0, x1, y1) on ``canvas`` with data limits; xlim may be decreasing."""

    def __init__(self, canvas, box, xlim, ylim, font):
        from PIL import ImageDraw

        self.canvas, self.box, self.xlim, self.ylim, self.font = canvas, box, xlim, ylim, font
        self.draw = ImageDraw.Draw(canvas)

    def fx(self, v: float) -> float:
        x0, _, x1, _ = self.box
        return x0 + (v - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (x1 - x0)

    def fy(self, v: float) -> float:
        _, y0, _, y1 = self.box
        return y1 - (v - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (y1 - y0)

    def frame(self, title: str, xlabel: str, ylabel: str, xticks=None, yticks=None, xticklabels=None) -> None:
        d, f = self.draw, self.font
        x0, y0, x1, y1 = self.box
        xticks = nice_ticks(min(self.xlim), max(self.xlim)) if xticks is None else list(xticks)
        yticks = nice_ticks(*self.ylim) if yticks is None else list(yticks)
        for v, s in zip(yticks, tick_labels(yticks)):
            y = self.fy(v)
            d.line([(x0, y), (x1, y)], fill=GRID)
            d.line([(x0 - 4, y), (x0, y)], fill=BLACK)
            w, h = text_wh(d, s, f)
            text(d, (x0 - 7 - w, y - h / 2 - 3), s, f, BLACK)
        labels = xticklabels if xticklabels is not None else tick_labels(xticks)
        xs, ws = [self.fx(v) for v in xticks], [text_wh(d, s, f)[0] for s in labels]
        every = label_stride(xs, ws)
        for i, (x, s) in enumerate(zip(xs, labels)):
            d.line([(x, y1), (x, y1 + 4)], fill=BLACK)
            if i % every == 0:
                text(d, (x - ws[i] / 2, y1 + 6), s, f, BLACK)
        d.rectangle([x0, y0, x1, y1], outline=BLACK)
        w, _ = text_wh(d, title, f)
        text(d, ((x0 + x1) / 2 - w / 2, y0 - 20), title, f, BLACK)
        w, _ = text_wh(d, xlabel, f)
        text(d, ((x0 + x1) / 2 - w / 2, y1 + 24), xlabel, f, BLACK)
        self.ylabel(ylabel)

    def ylabel(self, s: str) -> None:
        from PIL import Image, ImageDraw

        w, h = text_wh(self.draw, s, self.font)
        im = Image.new("L", (w + 4, h + 8), 0)
        text(ImageDraw.Draw(im), (2, 1), s, self.font, 255)
        im = im.rotate(90, expand=True)
        x0, y0, _, y1 = self.box
        pos = (int(x0 - 58), int((y0 + y1) / 2 - im.height / 2))
        self.canvas.paste(Image.new("RGB", im.size, BLACK), pos, im)

    def line(self, xs, ys, colour, width: int = 2, dashed: bool = False) -> None:
        """A polyline through the finite points, clipped to the plot area (a fit that leaves the y range stops at
        the frame instead of running through the tick labels); a non-finite point breaks it."""
        for run in clip_polyline(list(zip(xs, ys)), self.xlim, self.ylim):
            pts = [(self.fx(x), self.fy(y)) for x, y in run]
            if dashed:
                dashed_path(self.draw, pts, colour, width)
            else:
                self.draw.line(pts, fill=colour, width=width, joint="curve")

    def points(self, xs, ys, colour, shape: str = "o", r: float = 4.0) -> None:
        for x, y in zip(xs, ys):
            if np.isfinite(x) and np.isfinite(y):
                marker(self.draw, (self.fx(x), self.fy(y)), colour, shape, r)

    def bar(self, xa: float, xb: float, y: float, colour) -> None:
        base = min(max(0.0, self.ylim[0]), self.ylim[1])
        self.draw.rectangle([self.fx(xa), self.fy(y), self.fx(xb), self.fy(base)], fill=colour, outline=BLACK)


def clip_polyline(points, xlim, ylim) -> list[list[tuple[float, float]]]:
    """The parts of the polyline ``points`` [(x, y)] inside the box xlim x ylim (either may be decreasing), as
    runs of points (Liang-Barsky per segment: a segment that crosses the frame ends on it)."""
    (xa, xb), (ya, yb) = sorted(map(float, xlim)), sorted(map(float, ylim))
    runs, cur = [], []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        seg = None
        if all(np.isfinite(v) for v in (x0, y0, x1, y1)):
            dx, dy, t0, t1 = x1 - x0, y1 - y0, 0.0, 1.0
            for p, q in ((-dx, x0 - xa), (dx, xb - x0), (-dy, y0 - ya), (dy, yb - y0)):
                if p == 0:
                    if q < 0:
                        t0, t1 = 1.0, 0.0
                elif p < 0:
                    t0 = max(t0, q / p)
                else:
                    t1 = min(t1, q / p)
            if t0 <= t1:
                seg = ((x0 + t0 * dx, y0 + t0 * dy), (x0 + t1 * dx, y0 + t1 * dy))
        if seg is None or (cur and cur[-1] != seg[0]):
            if len(cur) > 1:
                runs.append(cur)
            cur = [] if seg is None else list(seg)
        else:
            cur = cur + [seg[1]] if cur else list(seg)
    if len(cur) > 1:
        runs.append(cur)
    return runs


def marker(draw, p, colour, shape: str, r: float = 4.0) -> None:
    x, y = p
    if shape == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour, outline=BLACK)
    elif shape == "^":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=colour, outline=BLACK)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=BLACK)


def legend(draw, x: float, y: float, entries, font, max_x: Optional[float] = None) -> float:
    """One row of legend entries (label, colour, kind) with kind "bar" | "line" | "dashed" | a marker "o" | "s" |
    "^", optionally on a line ("o-") or a dashed line ("s--"); wraps at max_x. Returns the y below the last row."""
    cx, cy = x, y
    for label, colour, kind in entries:
        w, _ = text_wh(draw, label, font)
        if max_x is not None and cx > x and cx + 34 + w > max_x:
            cx, cy = x, cy + 18
        mid = cy + 7
        if kind == "bar":
            draw.rectangle([cx, cy + 2, cx + 22, cy + 12], fill=colour, outline=BLACK)
        elif kind.endswith("--") or kind == "dashed":
            dashed(draw, (cx, mid), (cx + 24, mid), colour, 2, 4.0)
        elif kind.endswith("-") or kind == "line":
            draw.line([(cx, mid), (cx + 24, mid)], fill=colour, width=2)
        if kind[:1] in ("o", "s", "^"):
            marker(draw, (cx + 12, mid), colour, kind[0], 4)
        text(draw, (cx + 28, cy), label, font, BLACK)
        cx += 28 + w + 18
    return cy + 18


def fitted(draw, s: str, face, width: int):
    """``face``, or where ``s`` is wider than ``width`` in it, the largest smaller size of the default font (down to
    8 px) in which it fits: one line, so that the layout around it holds."""
    size = getattr(face, "size", None)
    while size is not None and size > 8 and text_wh(draw, s, face)[0] > width:
        size -= 1
        face = font(size)
    return face


def title(canvas, draw, s: str, face, y: int = 6) -> None:
    """``s`` centred at the top, in the font ``face`` or, when it is wider than the canvas, a smaller one (fitted)."""
    face = fitted(draw, s, face, canvas.width - 16)
    w, _ = text_wh(draw, s, face)
    text(draw, ((canvas.width - w) / 2, y), s, face, BLACK)


def panel_grid(title_text: str, rows, panel: int, max_width: int = README_WIDTH, at_least: int = 1):
    """A figure of square panels, at most ``max_width`` px wide (wider only where ``at_least`` panels are): the
    title, then each group (caption, [(label, PIL image of panel x panel)]) with its caption (None: none) above it
    and its panels in lines of as many as fit, at least ``at_least`` (the demo's rows of three stay together: at
    384-px panels they were split two and one), each panel's label above the panel (smaller where it is wider than
    the panel: the demo's "bicubic  22.65 dB, SSIM 0.727" ran into "HR"), framed in grey. The title and
    the captions are wrapped to the figure's width (a long caption made the demo 1578 px wide), which they widen up
    to GRID_TEXT_WIDTH."""
    from PIL import Image, ImageDraw

    face, measure = font(), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, label_h = 6, text_wh(measure, "Mg", face)[1] + 6
    cell = panel + pad
    per_line = max(at_least, (max_width - pad) // cell)
    text_w = max([text_wh(measure, s, face)[0] + 2 * pad for s in (title_text, *(c for c, _ in rows)) if s],
                 default=0)  # text widens a narrower figure up to GRID_TEXT_WIDTH, then it is wrapped
    width = max(pad + cell * min(per_line, max([len(panels) for _, panels in rows] + [1])),
                min(text_w, GRID_TEXT_WIDTH, max_width))
    lines = lambda s: wrap(measure, s, face, width - 2 * pad) if s else []  # noqa: E731
    heads = lines(title_text)
    groups = [(lines(caption), [panels[i : i + per_line] for i in range(0, len(panels), per_line)])
              for caption, panels in rows]
    height = (len(heads) + 1) * label_h + sum(len(c) * label_h + len(g) * (label_h + panel + pad) for c, g in groups)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(heads):
        text(draw, (pad, 2 + i * label_h), line, face, BLACK)
    y = len(heads) * label_h + pad
    for caption, group in groups:
        for line in caption:
            text(draw, (pad, y), line, face, BLACK)
            y += label_h
        for panels in group:
            for i, (label, im) in enumerate(panels):
                px = pad + i * cell
                text(draw, (px, y), label, fitted(draw, label, face, panel), BLACK)  # (ran into the next)
                canvas.paste(im, (px, y + label_h))
                draw.rectangle((px - 1, y + label_h - 1, px + panel, y + label_h + panel), outline=(150, 150, 150))
            y += label_h + panel + pad
    return canvas


ERROR_WHITE = 32  # 8-bit levels: an error map's white


def error_map(a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
    """|a - b| of two uint8 (H, W, 3) images, averaged over RGB: float64 (H, W), in 8-bit levels."""
    return np.abs(a_u8.astype(np.float64) - b_u8.astype(np.float64)).mean(axis=2)


def error_image(err: np.ndarray) -> np.ndarray:
    """An error map as a grey uint8 (H, W, 3) picture: black 0, white ERROR_WHITE levels and above."""
    g = np.rint(np.clip(err / ERROR_WHITE, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)
