"""A picture of an attention map and the YODA mask schedule it induces (the paper's Fig. 1 idea).

    top row:    LR image | A (viridis) | A over the LR
    bottom row: M(t) = 1[A >= t/T - lower_bound] for t in ts (white = refined at step t),
                each labelled with t and the percentage of active pixels (0 % / 100 % only when exact)

The title line gives lower_bound, T and a pixel update ratio, labelled with what it counts: by default the
exact fraction of (pixel, step) pairs refined over every step t = 1..T (its large-T limit is
mean(min(1, A + lower_bound))), the exact fraction over the steps of a ``steps``-step run, or the ratio the
caller passes (e.g. a sampling run's own, from its callback).
Masks and thresholds come from :mod:`yoda.masks` (the one definition of the schedule).

Layout: every column is as wide as its panel or its widest label, whichever is wider (a narrow panel is centred
in its column), and the canvas is at least as wide as the title; text is measured with the font it is drawn in.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..drawing import face_for as _face_for
from ..drawing import font as _font
from ..drawing import text as _text
from .classic import check_lr_range, warn_if_stretched

__all__ = ["attention_figure", "colormap", "colour_key", "key_size"]

_MIN_PANEL = 160  # px: the short side of a panel; LR images of 16 px are blown up (nearest) to this
_MAX_PANEL = 384  # px: larger images are shown shrunk (area) so the figure stays a few hundred px
_MIN_SHORT = 32  # the least panel side, whatever the aspect ratio
MAX_STEP_PANELS = 6  # attention_figure(steps=N): the masks of each step drawn up to this many steps
_GAP = 6
_LABEL_H = 18  # px: the strip above each panel (and the title's) that holds one line of text
_LABEL_Y = 2  # px: where a label's origin sits in its strip
_BG = (255, 255, 255)


def colormap(a: np.ndarray) -> np.ndarray:
    """(h, w) float in [0, 1] -> (h, w, 3) uint8 RGB with OpenCV's viridis table."""
    import cv2

    u8 = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_VIRIDIS)[:, :, ::-1].copy()  # BGR -> RGB


def _image0(x: torch.Tensor, name: str, channels: Sequence[int]) -> torch.Tensor:
    """First image of (B, C, h, w) or (C, h, w) (or (h, w) for one channel) as float32 (C, h, w)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 2 and 1 in channels:
        x = x[None]
    if x.dim() == 4:
        if x.shape[0] < 1:
            raise ValueError(f"{name} has an empty batch (shape {tuple(x.shape)})")
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in channels or x.numel() == 0:
        raise ValueError(
            f"{name} must be (B, C, h, w) or (C, h, w) with C in {tuple(channels)}, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    x = x.detach().float().cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _panel_size(h: int, w: int, lr_hw: Optional[tuple] = None) -> tuple:
    """(H, W) of a panel for a map of h x w; with lr_hw, the LR image's (h, w) when the map is larger (an HR map),
    a panel that enlarges the LR is cut down to a whole multiple of it, so every LR pixel is drawn as an equal
    block (an HR map of 400 px for a 100 px LR: 300 px, not 384)."""
    s = min(h, w)
    f = max(1, math.ceil(_MIN_PANEL / s)) if s < _MIN_PANEL else 1.0
    H, W = h * f, w * f
    if max(H, W) > _MAX_PANEL:
        g = _MAX_PANEL / max(H, W)
        H, W = int(round(H * g)), int(round(W * g))
    if lr_hw is not None and H >= lr_hw[0] and W >= lr_hw[1]:
        k = min(H // lr_hw[0], W // lr_hw[1])
        H, W = k * lr_hw[0], k * lr_hw[1]
    # a very elongated map (1 x 300) keeps a short side one can see, out of proportion
    return max(int(H), _MIN_SHORT), max(int(W), _MIN_SHORT)


def _show(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """(C, h, w) -> (C, H, W): nearest when enlarging (pixels stay visible), area when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "nearest" if size[0] >= x.shape[-2] and size[1] >= x.shape[-1] else "area"
    return F.interpolate(x[None], size=size, mode=mode)[0]


def percent_label(active: int, total: int) -> str:
    """The share active / total of a mask's pixels as a label: whole percent, one decimal where whole percent
    would round to 0 or 100, and "<0.1%" / ">99.9%" beyond that; "0%" and "100%" only when exact."""
    if isinstance(active, bool) or isinstance(total, bool) or total < 1 or not 0 <= active <= total:
        raise ValueError(f"need 0 <= active <= total, total >= 1; got {active!r} of {total!r}")
    if active == 0:
        return "0%"
    if active == total:
        return "100%"
    p = 100.0 * active / total
    for digits in (0, 1):
        s = f"{p:.{digits}f}"
        if 0 < float(s) < 100:
            return s + "%"
    return "<0.1%" if p < 50 else ">99.9%"


def visited_steps(T: int, steps: int) -> list:
    """The 0-based indices a ``steps``-step run visits: Schedule.respace's trailing spacing, yoda.sample's for the
    DDIM / DDPM of SR3 and SRDiff models (only T matters, not the betas)."""
    from yoda.schedule import Schedule

    return Schedule.linear(T).respace(steps)


def update_ratio(A: torch.Tensor, T: int, lower_bound: float, steps: Optional[int] = None) -> tuple[float, str]:
    """(the pixel update ratio of A's first image, what it counts): the exact fraction of (pixel, step) pairs
    refined over every step t = 1..T (masks.every_step_ratio), or over the visited steps of a ``steps``-step run
    (masks.refine_fraction)."""
    from yoda.masks import every_step_ratio, refine_fraction

    a = A.reshape(-1, 1, *A.shape[-2:])[:1]
    if steps is None:
        return float(every_step_ratio(a, T, lower_bound)[0]), f"every step of T={T}"
    return (float(refine_fraction(a, visited_steps(T, steps), T, lower_bound)[0]),
            f"{steps} step{'s' * (steps != 1)} of T={T}")


MASKS_NOTE = "  masks: white = refined"  # in the title: the bottom row's panels said nothing of their colours


def ratio_text(ratio: float, what: str) -> str:
    """The title's update ratio: what it counts, then its value to 3 decimals (0 / 1 only when exact)."""
    v = f"{ratio:.3f}"
    if ratio > 0 and float(v) == 0:
        v = "<0.001"
    elif ratio < 1 and float(v) == 1:
        v = ">0.999"
    return f"pixel update ratio ({what})={v}"


def _ink(s: str, font) -> tuple:
    """(left, top, right, bottom) of the pixels text s may cover when drawn at the origin with font."""
    l, t, r, b = _face_for(s, font).getbbox(s)
    return math.floor(l), math.floor(t), math.ceil(r), math.ceil(b)


def _layout(size: tuple, top: Sequence[str], bottom: Sequence[str], title: str, font, key: tuple = (0, 0)) -> dict:
    """Where everything goes. Columns of one width cell_w = max(panel width, widest label's ink) apart by _GAP;
    each panel centred in its column; a label that fits over its panel starts at the panel's left edge, a wider
    one is centred over the panel (so it stays inside its column); after the top row's panels, the colour key, at
    least ``key`` = (h, w) (key_size: the top row grows to hold it, and its column widens); the canvas is as
    wide as the columns or the title, whichever is wider.

    Returns cell_w, panel_dx (the panel's x offset in its column), title_h, row_h (the top row's height: where
    the bottom row starts), key_h and key_w (the key's size), width, height, and texts: (string, origin (x, y),
    ink box (x0, y0, x1, y1) on the canvas) for the title, then the top row's labels, then the bottom row's (the
    text drawn at origin covers only pixels of its box)."""
    Hp, Wp = size
    labels = [(0, c, s) for c, s in enumerate(top)] + [(1, c, s) for c, s in enumerate(bottom)]
    cell_w = max([Wp] + [_ink(s, font)[2] for _, _, s in labels])
    panel_dx = (cell_w - Wp) // 2
    title_h = _LABEL_H + 4
    key_h, key_w = max(Hp, key[0]), max(cell_w, key[1])
    row_h = _LABEL_H + key_h + _GAP
    width = max(_GAP + len(top) * (cell_w + _GAP) + key_w + _GAP, _GAP + len(bottom) * (cell_w + _GAP),
                2 * _GAP + _ink(title, font)[2])
    height = title_h + row_h + _LABEL_H + Hp + 2 * _GAP

    def text(s, x, y):
        l, t, r, b = _ink(s, font)
        return s, (x, y), (x + l, y + t, x + r, y + b)

    texts = [text(title, _GAP, 4)]
    for row, col, s in labels:
        x0, y0 = _GAP + col * (cell_w + _GAP), title_h + row * row_h
        w = _ink(s, font)[2]
        x = x0 + panel_dx if w <= Wp else x0 + (cell_w - w) // 2
        texts.append(text(s, x, y0 + _LABEL_Y))
    return dict(cell_w=cell_w, panel_dx=panel_dx, title_h=title_h, row_h=row_h, key_h=key_h, key_w=key_w,
                width=width, height=height, texts=texts)


def growing_masks(visited: list, n: int) -> list:
    """n of a run's steps ``visited`` ((t, tau) pairs, the first step first) to draw: those whose mask still grows
    (tau > 0), spread from the first, then the first full one (every later mask is full too, nothing more to see).
    `yoda attention` and `yoda demo` draw these."""
    growing = [v for v in visited if v[1] > 0]
    full = [v for v in visited if v[1] <= 0][:1]
    k = n - len(full)
    if len(growing) > k:
        growing = [growing[i] for i in sorted({round(v) for v in np.linspace(0, len(growing) - 1, k)})]
    return growing + full


def attention_figure(
    lr: torch.Tensor,
    A: torch.Tensor,
    lower_bound: float = 0.6,
    T: int = 1000,
    ts: Optional[Sequence[int]] = None,
    ratio: Optional[float] = None,
    label: Optional[str] = None,
    steps: Optional[int] = None,
):
    """Draw the LR image, its attention map and the masks M(t) at several t.

    lr: (B, C, h, w) or (C, h, w), C in {1, 3}, values in [-1, 1]; the first image is drawn.
    A:  (B, 1, H, W), (1, H, W) or (H, W) in [0, 1]; any resolution (LR or HR), first image drawn.
    ts: DESIGN's t in [1, T] (t = training index + 1); default 5 values, equally spaced from T down to just
        above lower_bound*T, the span over which the masks grow (at and below lower_bound*T every pixel is
        active, a full mask not drawn; with lower_bound >= 1, every pixel at every t: t = T alone).
    ratio: the pixel update ratio printed in the title, labelled "this run's steps" (e.g. the mean active
        fraction of the steps a sampling run took, its callback's active_fraction); default: the exact ratio over
        every step t = 1..T, refine_fraction(A, range(T), T, lower_bound), labelled "every step of T=..." (for
        large T it tends to pixel_update_ratio(A, lower_bound) = mean(min(1, A + lower_bound))).
    label: what the map is (e.g. "edge attention of in.png, x4"), put first in the title; a label of the form
        "METHOD attention ..." also names METHOD on the map's panel.
    steps: a sampling run's number of steps (its visited indices: Schedule.respace(steps), the trailing spacing
        that yoda.sample's DDIM / DDPM take for SR3 and SRDiff models): the title's ratio is the exact one over
        those steps, refine_fraction(A, indices, T, lower_bound), labelled "N steps of T=...", and, where ts is
        not given, the masks drawn are those of its steps whose mask still grows and the first full one (of more
        than MAX_STEP_PANELS steps, MAX_STEP_PANELS - 1 of them: the growing ones spread), as the title says.
    Returns a PIL.Image (RGB).
    """
    from PIL import Image, ImageDraw

    from yoda.masks import as_int, check_lower_bound, check_T, check_unit_range, mask_at

    T, lower_bound = check_T(T), check_lower_bound(lower_bound)
    x = _image0(lr, "lr", (1, 3))
    check_lr_range("lr", float(x.min()), float(x.max()))
    a = _image0(A, "A", (1,))
    check_unit_range(a, "A")  # yoda.sample's own check and clamp (A_MARGIN): a map sampling takes is drawn
    a = a.clamp(0.0, 1.0)
    warn_if_stretched("A", tuple(a.shape[-2:]), tuple(x.shape[-2:]), stacklevel=2)
    steps = None if steps is None else as_int(steps, "steps")
    if ratio is not None and not (isinstance(ratio, numbers.Real) and 0.0 <= float(ratio) <= 1.0):
        raise ValueError(f"ratio must be a pixel update ratio in [0, 1], got {ratio!r}")  # it drew "=2.000", "=nan"
    picked = ""
    if steps is not None and ts is None:  # a run's own steps, up to the first full mask (later ones are full
        ts = [i + 1 for i in visited_steps(T, steps)]  # too: --steps 5 drew three alike); more than fit: spread
        n = len(ts)
        ts = [t for t, _ in growing_masks([(t, t / T - lower_bound) for t in ts],
                                          MAX_STEP_PANELS - 1 if n > MAX_STEP_PANELS else n)]
        picked = f"  masks at {len(ts)} of its {steps} steps" if len(ts) < n else ""
    if ts is None:  # 5 steps over (lower_bound * T, T]: at t <= lower_bound * T every mask is full, nothing to see
        span = np.linspace(T, min(T, max(0.0, lower_bound * T)), 6)[:-1]
        ts = sorted({t for t in (int(round(v)) for v in span) if t == T or t / T - lower_bound > 0}, reverse=True)
    ts = list(ts)
    if not ts or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= T for t in ts):
        raise ValueError(f"ts must be a non-empty sequence of ints in [1, T={T}], got {ts!r}")

    size = _panel_size(*a.shape[-2:], lr_hw=tuple(x.shape[-2:]))
    # a very elongated image keeps a visible short side (_MIN_SHORT), out of proportion: the title says so
    stretch = (a.shape[-1] / a.shape[-2]) / (size[1] / size[0])  # > 1: drawn taller than it is, < 1: wider
    picked += (f"  (drawn {stretch:.1f}x taller than it is)" if stretch > 1.1 else
               f"  (drawn {1 / stretch:.1f}x wider than it is)" if stretch < 1 / 1.1 else "")
    img = ((_show(x, size).clamp(-1, 1) + 1.0) * 127.5).round().byte()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    img = img.permute(1, 2, 0).numpy()
    a_show = _show(a, size)[0].clamp(0, 1).numpy()
    heat = colormap(a_show)
    overlay = np.rint(0.5 * img.astype(np.float32) + 0.5 * heat.astype(np.float32)).astype(np.uint8)

    ratio, what = (float(ratio), "this run's steps") if ratio is not None else update_ratio(a, T, lower_bound, steps)
    last = (min(visited_steps(T, steps)) + 1 if steps is not None else 1) / T - lower_bound  # the last step's tau
    never = int((a < last).sum()) if last > 0 else 0  # (l near 0, or few steps: these keep the LR image)
    picked += f"  never refined: {percent_label(never, a.numel())}" if never else ""
    masks = []
    for t in ts:
        m = mask_at(a[None], int(t), T, lower_bound)[0, 0]  # at A's own resolution
        active = int(m.sum())
        m_show = _show(m[None].float(), size)[0] >= 0.5
        masks.append((int(t), active, m.numel(), np.where(m_show.numpy()[..., None], 255, 0).astype(np.uint8).repeat(3, -1)))

    font = _font()
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    label = (label or "").strip()  # a blank label (" ") is no label
    title = ((f"{label}:  " if label else "") + f"lower_bound={lower_bound:g}  T={T}  "
             + ratio_text(float(ratio), what) + MASKS_NOTE + picked)
    words = label.split()  # "edge attention of in.png, x4" (yoda attention's) names its method first
    method = words[0].split(":")[0] if words[1:2] == ["attention"] else ""
    top = ["LR", f"attention A ({method})" if method else "attention A", "A over LR"]
    bottom = [f"M(t={t}) {percent_label(k, n)}" for t, k, n, _ in masks]
    thresholds = [(t, t / T - lower_bound) for t, *_ in masks]
    lay = _layout(size, top, bottom, title, font, key_size(thresholds, font))
    canvas = Image.new("RGB", (lay["width"], lay["height"]), _BG)
    draw = ImageDraw.Draw(canvas)
    for s, xy, _ in lay["texts"]:
        _text(draw, xy, s, font, (0, 0, 0))
    panels = [(0, c, arr) for c, arr in enumerate((img, heat, overlay))] + [(1, c, m[3]) for c, m in enumerate(masks)]
    for row, col, arr in panels:
        x0 = _GAP + col * (lay["cell_w"] + _GAP) + lay["panel_dx"]
        y0 = lay["title_h"] + row * lay["row_h"] + _LABEL_H
        canvas.paste(Image.fromarray(arr), (x0, y0))
        # a frame, so that an all-white mask (every pixel active) still reads as a panel
        draw.rectangle((x0 - 1, y0 - 1, x0 + arr.shape[1], y0 + arr.shape[0]), outline=(150, 150, 150))
    # the top row's last column: the key from colour to A, and the masks' thresholds
    key = colour_key(lay["key_h"], lay["key_w"], thresholds, font)
    canvas.paste(key, (_GAP + len(top) * (lay["cell_w"] + _GAP), lay["title_h"] + _LABEL_H))
    return canvas


_KEY_LINE = 14  # the key's label spacing (px)
_KEY_BAR = 14  # the key's bar width (px)
_KEY_MIN_BAR = 5 * _KEY_LINE  # the key's least bar height (px): its three values and a few labels fit


def _key_labels(thresholds) -> list:
    """The (y fraction 1 - tau, t) of the thresholds a key shows (tau in [0, 1]), top first."""
    return sorted((1.0 - tau, t) for t, tau in thresholds if 0.0 <= tau <= 1.0)


def key_size(thresholds, font=None) -> tuple[int, int]:
    """The least (h, w) in px at which colour_key draws these thresholds with every label whole and a line apart
    (a key as tall as a 32 px panel printed its labels over each other; one as narrow as a 50 px column cut them)."""
    font = _font() if font is None else font
    labels = [f"M(t={t})" for _, t in _key_labels(thresholds)]
    w = max([_ink("value of A", font)[2], _KEY_BAR + 8 + _ink("0.5", font)[2]]
            + [_KEY_BAR + 38 + _ink(s, font)[2] for s in labels])
    return _LABEL_H + 12 + max(_KEY_MIN_BAR, (len(labels) + 1) * _KEY_LINE), w + 1


def colour_key(h: int, w: int, thresholds, font=None):
    """A PIL image (w x h, white) keying attention colours: a vertical viridis bar from A = 1 (top) to 0 under the
    heading "value of A", its values on the right, and a white line across it at each (t, tau) of
    ``thresholds`` (the mask M(t) is white above its line), labelled M(t=...). At least key_size(thresholds)."""
    from PIL import Image, ImageDraw

    font = _font() if font is None else font
    need = key_size(thresholds, font)
    if h < need[0] or w < need[1]:
        raise ValueError(f"a colour key of {len(_key_labels(thresholds))} thresholds needs at least {need[1]}x"
                         f"{need[0]} px (w x h), got {w}x{h}")
    img = Image.new("RGB", (w, h), _BG)
    draw = ImageDraw.Draw(img)
    _text(draw, (0, 0), "value of A", font, (0, 0, 0))
    top, bar_w = _LABEL_H + 6, _KEY_BAR
    n = max(2, h - _LABEL_H - 12)
    img.paste(Image.fromarray(colormap(np.linspace(1.0, 0.0, n)[:, None].repeat(bar_w, 1))), (1, top))
    draw.rectangle((0, top - 1, bar_w + 1, top + n), outline=(150, 150, 150))
    y_of = lambda v: top + int(round((1.0 - v) * (n - 1)))  # noqa: E731
    for v in (1.0, 0.5, 0.0):
        draw.line((bar_w + 2, y_of(v), bar_w + 5, y_of(v)), fill=(0, 0, 0))
        _text(draw, (bar_w + 8, y_of(v) - 7), f"{v:g}", font, (0, 0, 0))
    shown = [(y_of(1.0 - f), t) for f, t in _key_labels(thresholds)]
    # labels one line apart, pushed down past the one above (and up from the bottom): thresholds a few pixels apart
    # (l = 0.95: 0.05 down to 0.01) printed their labels over each other; a leader line goes to each
    ly = []
    for y, _ in shown:
        ly.append(max(y - 7, ly[-1] + _KEY_LINE) if ly else y - 7)
    for i in range(len(ly) - 1, -1, -1):
        ly[i] = min(ly[i], (ly[i + 1] if i + 1 < len(ly) else h) - _KEY_LINE)
    for (y, t), yl in zip(shown, ly):
        draw.line((1, y, bar_w, y), fill=(255, 255, 255))
        draw.line((bar_w + 26, y, bar_w + 34, yl + 7), fill=(150, 150, 150))
        _text(draw, (bar_w + 38, yl), f"M(t={t})", font, (0, 0, 0))
    return img
