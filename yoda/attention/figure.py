"""A picture of an attention map and the YODA mask schedule it induces (the seed's Fig. 1 idea).

    top row:    LR image | A (viridis) | A over the LR
    bottom row: M(t) = 1[A >= t/T - lower_bound] for t in ts (white = refined at step t),
                each labelled with t and the fraction of active pixels

The title line gives lower_bound, T and the pixel update ratio mean(min(1, A + lower_bound)).
Masks and the ratio come from :mod:`yoda.masks` (the one definition of the schedule).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..drawing import font as _font

__all__ = ["attention_figure", "colormap"]

_MIN_PANEL = 160  # px: the short side of a panel; LR images of 16 px are blown up (nearest) to this
_MAX_PANEL = 384  # px: larger images are shown shrunk (area) so the figure stays a few hundred px
_GAP = 6
_LABEL_H = 18
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


def _panel_size(h: int, w: int) -> tuple:
    s = min(h, w)
    f = max(1, math.ceil(_MIN_PANEL / s)) if s < _MIN_PANEL else 1.0
    H, W = h * f, w * f
    if max(H, W) > _MAX_PANEL:
        g = _MAX_PANEL / max(H, W)
        H, W = max(1, int(round(H * g))), max(1, int(round(W * g)))
    return int(H), int(W)


def _show(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """(C, h, w) -> (C, H, W): nearest when enlarging (pixels stay visible), area when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "nearest" if size[0] >= x.shape[-2] and size[1] >= x.shape[-1] else "area"
    return F.interpolate(x[None], size=size, mode=mode)[0]


def attention_figure(
    lr: torch.Tensor,
    A: torch.Tensor,
    lower_bound: float = 0.6,
    T: int = 1000,
    ts: Optional[Sequence[int]] = None,
    ratio: Optional[float] = None,
):
    """Draw the LR image, its attention map and the masks M(t) at several t.

    lr: (B, C, h, w) or (C, h, w), C in {1, 3}, values in [-1, 1]; the first image is drawn.
    A:  (B, 1, H, W), (1, H, W) or (H, W) in [0, 1]; any resolution (LR or HR), first image drawn.
    ts: DESIGN's t in [1, T] (t = training index + 1); default 5 values from T down to lower_bound*T,
        the span over which the masks grow (below lower_bound*T every pixel is active; with lower_bound >= 1,
        every pixel at every t: t = T alone).
    ratio: the pixel update ratio printed in the title; default pixel_update_ratio(A, lower_bound), its limit
        with every step of T (a sampling run with few steps has its own: yoda.masks.refine_fraction).
    Returns a PIL.Image (RGB).
    """
    from PIL import Image, ImageDraw

    from yoda.masks import mask_at, pixel_update_ratio

    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if isinstance(lower_bound, bool) or not isinstance(lower_bound, (int, float)) or not math.isfinite(lower_bound) or lower_bound < 0:
        raise ValueError(f"lower_bound must be a finite number >= 0, got {lower_bound!r}")
    x = _image0(lr, "lr", (1, 3))
    if float(x.min()) < -1.0 - 1e-4 or float(x.max()) > 1.0 + 1e-4:
        raise ValueError(f"lr values must lie in [-1, 1], got min {float(x.min()):.4g}, max {float(x.max()):.4g}")
    a = _image0(A, "A", (1,))
    if float(a.min()) < 0.0 or float(a.max()) > 1.0:
        raise ValueError(f"A values must lie in [0, 1], got min {float(a.min()):.4g}, max {float(a.max()):.4g}")
    if ts is None:
        lo = min(T, max(1, int(math.floor(lower_bound * T))))
        ts = sorted({int(round(v)) for v in np.linspace(T, lo, 5)}, reverse=True)
    ts = list(ts)
    if not ts or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= T for t in ts):
        raise ValueError(f"ts must be a non-empty sequence of ints in [1, T={T}], got {ts!r}")

    size = _panel_size(*a.shape[-2:])
    img = ((_show(x, size).clamp(-1, 1) + 1.0) * 127.5).round().byte()
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    img = img.permute(1, 2, 0).numpy()
    a_show = _show(a, size)[0].clamp(0, 1).numpy()
    heat = colormap(a_show)
    overlay = np.rint(0.5 * img.astype(np.float32) + 0.5 * heat.astype(np.float32)).astype(np.uint8)

    ratio = float(pixel_update_ratio(a[None], lower_bound)[0]) if ratio is None else float(ratio)
    masks = []
    for t in ts:
        m = mask_at(a[None], int(t), T, lower_bound)[0, 0]  # at A's own resolution
        frac = float(m.float().mean())
        m_show = _show(m[None].float(), size)[0] >= 0.5
        masks.append((int(t), frac, np.where(m_show.numpy()[..., None], 255, 0).astype(np.uint8).repeat(3, -1)))

    Hp, Wp = size
    cell_w = Wp + _GAP
    n_top, n_bot = 3, len(masks)
    width = _GAP + max(n_top, n_bot) * cell_w
    title_h = _LABEL_H + 4
    row_h = _LABEL_H + Hp + _GAP
    height = title_h + 2 * row_h + _GAP
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text(
        (_GAP, 4),
        f"lower_bound={lower_bound:g}  T={T}  pixel update ratio={ratio:.3f}",
        fill=(0, 0, 0),
        font=font,
    )

    def put(col: int, row: int, arr: np.ndarray, label: str):
        x0 = _GAP + col * cell_w
        y0 = title_h + row * row_h
        draw.text((x0, y0 + 2), label, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(arr), (x0, y0 + _LABEL_H))
        # a frame, so that an all-white mask (every pixel active) still reads as a panel
        draw.rectangle((x0 - 1, y0 + _LABEL_H - 1, x0 + arr.shape[1], y0 + _LABEL_H + arr.shape[0]), outline=(150, 150, 150))

    put(0, 0, img, "LR")
    put(1, 0, heat, "attention A")
    put(2, 0, overlay, "A over LR")
    for i, (t, frac, m) in enumerate(masks):
        put(i, 1, m, f"M(t={t}) {100 * frac:.0f}%")
    return canvas
