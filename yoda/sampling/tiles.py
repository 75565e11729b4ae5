"""Tiled denoising (yoda.sample(..., windows=...)): overlapping windows over the state grid, blended with Gaussian
weights (DESIGN.md §8, denoiser level), the active windows of a step sent through the model in batches of
``window_batch``. Not to be confused with the kernel tile of the fused ops (``kernel_tile=``)."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from ..adapters import Adapter, checked_denoise


# Default window batch: a denoiser call on a batch of windows is budgeted at WINDOW_BATCH_BYTES, with the model's
# activations estimated at ACTIVATION_BYTES_PER_ELEMENT bytes per element of the windows' state (a fixed factor:
# 4-byte floats times 256 channels-and-copies, generous for small UNets; pass window_batch= to override).
WINDOW_BATCH_BYTES = 1 << 30
ACTIVATION_BYTES_PER_ELEMENT = 1024
SMALL_WINDOW = 128  # automatic windows below this side (pixels) give the model little context (yoda upscale notes it)
WINDOW_ASPECT = 4  # automatic windows are at most this many times as long as they are wide


def default_overlap(window: int, unit: int) -> int:
    """The windows' overlap when none is given (yoda.sample(windows=W), `yoda upscale --tiles W`): a quarter of the
    window rounded down to ``unit`` (the model's size multiple on the state grid), and at least ``unit`` (a seam
    shows without overlap) when the window spans two units."""
    return max(window // 4 // unit * unit, unit if window >= 2 * unit else 0)


def default_window_batch(batch: int, channels: int, height: int, width: int,
                         budget: int = WINDOW_BATCH_BYTES, activation_scale: int = 1) -> int:
    """How many windows of (batch, channels, height, width) one denoiser call takes within ``budget`` bytes
    (at least 1), by the fixed estimate ACTIVATION_BYTES_PER_ELEMENT times the adapter's activation_scale."""
    per_window = max(1, batch * channels * height * width) * ACTIVATION_BYTES_PER_ELEMENT * max(1, activation_scale)
    return max(1, int(int(budget) // per_window))


def window_starts(n: int, window: int, overlap: int) -> list[int]:
    """Window origins along one axis: stride window - overlap, the last one flush with the end."""
    if n <= window:
        return [0]
    stride = window - overlap
    out = list(range(0, n - window, stride))
    out.append(n - window)
    return out


def window_sides(window) -> tuple:
    """(height, width) of a window given as a side or a (height, width) pair."""
    return tuple(window) if isinstance(window, (tuple, list)) else (window, window)


def fewest_pixel_windows(hr_h: int, hr_w: int, unit: int, least: int, area: int) -> tuple:
    """The automatic windows ((height, width), overlap) of an hr_h x hr_w image whose windows hold at most ``area``
    pixels: of the windows that need no more calls than the square plan (as few windows as the largest fitting
    square side needs, each side as small as covers the image with that many: an 800² output took 2 x 2 windows of
    720², 3.2 times its pixels, then 2 x 2 of 456²), the ones that denoise the fewest pixels, sides at most
    WINDOW_ASPECT to one (unless the shorter spans the image) and at least SMALL_WINDOW (else squares: no less
    context than they give; an image thinner than that: windows that span it), overlapping by default_overlap of
    the shorter side, also one that spans the image (windows=W without an overlap takes the shorter side that tiles
    it: prepare.check_window_size; the CLI says the overlap it plans). Squares made a wide image's windows overlap
    along its short side: an 800 x 6000 output took 2 x 11 windows of 712², 2.3 times its pixels, now 12 of
    456 x 1096 (1.25 times); photographs took 1.5-1.6 times their pixels, now 1.25-1.4."""
    top = max(least, math.isqrt(area) // unit * unit)
    fewest = _window_count(hr_h, hr_w, top, unit)
    small = min(top, max(least, -(-SMALL_WINDOW // unit) * unit))  # no square below SMALL_WINDOW where one fits
    side = next(s for s in range(small, top + 1, unit) if _window_count(hr_h, hr_w, s, unit) <= fewest)
    calls = _window_count(hr_h, hr_w, side, unit)
    best = (calls * min(side, hr_h) * min(side, hr_w), calls, (side, side))
    whole = (-(-hr_h // unit) * unit, -(-hr_w // unit) * unit)  # a side as long as the image's
    spans: dict = {}  # overlap -> the shorter sides that take it (default_overlap); none below SMALL_WINDOW
    for s in range(max(least, -(-SMALL_WINDOW // unit) * unit), top + 1, unit):
        spans.setdefault(default_overlap(s, unit), []).append(s)
    for overlap, shorter in spans.items():
        lo, hi = shorter[0], shorter[-1]
        # per axis, the smallest side (at least lo) that covers it with k windows at this overlap, for each k
        along = [_sides_by_count(n, overlap, max(lo, overlap + unit), min(m, area // lo), unit)
                 for n, m in zip((hr_h, hr_w), whole)]
        for sh in along[0].values():
            for sw in along[1].values():
                # the shorter side raised as the aspect needs, up to the image's (its count can only fall): the least
                # sides of each count
                a = -(-max(sh, sw) // (WINDOW_ASPECT * unit)) * unit
                wh, ww = (min(max(sh, a), whole[0]), sw) if sh <= sw else (sh, min(max(sw, a), whole[1]))
                n = len(window_starts(hr_h, wh, overlap)) * len(window_starts(hr_w, ww, overlap))
                if n <= calls and wh * ww <= area and lo <= min(wh, ww) <= hi:
                    best = min(best, (n * min(wh, hr_h) * min(ww, hr_w), n, (wh, ww)))
    for axis, thin in enumerate(whole):  # an image thinner than SMALL_WINDOW: windows that span it (all the
        if least <= thin < SMALL_WINDOW:  # context there is that way), as long as the area allows
            overlap, n_long = default_overlap(thin, unit), (hr_w, hr_h)[axis]
            for s in range(thin, min(whole[1 - axis], area // thin) + 1, unit):
                n = len(window_starts(n_long, s, overlap))
                if n <= calls:
                    best = min(best, (n * (hr_h, hr_w)[axis] * min(s, n_long), n, (thin, s)[::1 - 2 * axis]))
    wh, ww = best[2]
    return (wh if wh == ww else (wh, ww)), default_overlap(min(wh, ww), unit)


def _sides_by_count(n: int, overlap: int, lo: int, hi: int, unit: int) -> dict:
    """{k: the smallest side in [lo, hi] (multiples of unit) whose windows at ``overlap`` cover n in k}."""
    found: dict = {}
    for s in range(lo, max(lo, hi) + 1, unit):
        found.setdefault(len(window_starts(n, s, overlap)), s)
        if s >= n:
            break
    return found


def _window_count(hr_h: int, hr_w: int, side: int, unit: int) -> int:
    """The number of windows of ``side`` (default overlap) that yoda.sample's tiler lays over hr_h x hr_w."""
    overlap = default_overlap(side, unit)
    return len(window_starts(hr_h, side, overlap)) * len(window_starts(hr_w, side, overlap))


def _gauss_1d(n: int, device: torch.device) -> torch.Tensor:
    """Blend weights over a window side: Gaussian centred on the window, sigma = n / 4 (weights at the border
    e^-2 ~ 0.135 of the centre, so every pixel has a positive weight and overlaps blend smoothly)."""
    k = torch.arange(n, dtype=torch.float32, device=device)
    return torch.exp(-0.5 * ((k - (n - 1) / 2) / (n / 4)) ** 2)


class Tiler:
    """Overlapping windows over the state grid, blended with Gaussian weights (DESIGN.md §8, denoiser level).

    A window whose attention maximum (over the whole batch) is below tau at a step has no active pixel: its
    prediction lands only on pixels that take the LR branch, so its call is skipped. That is exact with
    respect to dense tiled sampling: at an active pixel the same windows are summed in the same order (bit for bit
    at batch 1; in batches the skipped windows change which windows share a call, so to the model's batch
    rounding)."""

    def __init__(self, shape: torch.Size, window: Any, overlap: int, skip: bool, A: Optional[torch.Tensor],
                 device, batch: Optional[int] = None, activation_scale: int = 1,
                 extent: Optional[tuple] = None, fixed_batch: bool = False, progress: bool = False) -> None:
        """extent: the image's part of the state grid (h', w'), the rest padding: a window that covers the image
        along an axis covers the whole grid there (one window, not two that overlap almost wholly).
        fixed_batch (cuda_graphs): each window size goes through the model in batches of one size, the last one
        padded with its last window (whose output is dropped), so that the count of active windows, which grows
        from step to step, makes no new input signature (a new CUDA graph each).
        progress: a bar over each step's denoiser calls, where a step makes more than one (yoda.sample's bar
        counts steps: one step of an image in hundreds of windows sat at 0/1 for minutes)."""
        self.skip, self.fixed_batch, self.progress = skip, fixed_batch, progress
        H, W = shape[-2:]
        eh, ew = (H, W) if extent is None else extent
        window = window_sides(window)
        wy, wx = (H if window[0] >= eh else window[0]), (W if window[1] >= ew else window[1])
        spans = [(slice(y, min(y + wy, H)), slice(x, min(x + wx, W)))
                 for y in window_starts(H, wy, overlap) for x in window_starts(W, wx, overlap)]
        # each window's attention maximum, read back in one transfer (one device sync, not one a window)
        wmaxes = [None] * len(spans) if A is None else torch.stack([A[..., ys, xs].amax() for ys, xs in spans]).tolist()
        self.windows = []
        weights: dict = {}  # one blending weight per window size, shared by the windows of that size
        for (ys, xs), wmax in zip(spans, wmaxes):
            size = (ys.stop - ys.start, xs.stop - xs.start)
            if size not in weights:
                weights[size] = _gauss_1d(size[0], device)[:, None] * _gauss_1d(size[1], device)[None, :]
            self.windows.append((ys, xs, wmax, weights[size]))
        self._per_size = {size: sum(1 for ys, xs, _, _ in self.windows if (ys.stop - ys.start, xs.stop - xs.start)
                                    == size) for size in weights}
        hmax, wmax_ = min(wy, H), min(wx, W)
        self.batch = int(batch) if batch is not None else default_window_batch(
            shape[0], shape[1], hmax, wmax_, activation_scale=activation_scale)
        self.last_batches = 0  # denoiser forward passes of the last denoise()

    def _groups(self, todo: list) -> list:
        """Consecutive windows of equal size, at most self.batch per group, in window order."""
        groups: list = []
        for win in todo:
            size = (win[0].stop - win[0].start, win[1].stop - win[1].start)
            g = groups[-1] if groups else None
            if g is not None and len(g[1]) < self.batch and g[0] == size:
                g[1].append(win)
            else:
                groups.append((size, [win]))
        return [g for _, g in groups]

    def denoise(self, adapter: Adapter, x: torch.Tensor, t: torch.Tensor, ab_t: float, cond: Any,
                tau: float) -> tuple[torch.Tensor, int]:
        """-> (blended prediction of x's shape and dtype, number of windows denoised). The windows go through the
        model in batches (self.last_batches forward passes); each window's output is added in window order, so
        the result is that of one call per window wherever the model treats batch elements independently."""
        tau32 = float(np.float32(tau))  # compare as the kernels do, in float32
        todo = [win for win in self.windows if not (self.skip and win[2] is not None and not win[2] >= tau32)]
        B = x.shape[0]
        self.last_batches = 0
        if len(self.windows) == 1 and todo:  # one window, the whole state: the model's output as untiled, unblended
            ys, xs = self.windows[0][:2]
            out = checked_denoise(adapter, x, t, ab_t, adapter.crop_cond(cond, ys, xs))
            self.last_batches = 1
            return out.to(x.dtype), 1
        acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        wsum = torch.zeros(x.shape[-2:], dtype=torch.float32, device=x.device)
        groups = self._groups(todo)
        if self.progress and len(groups) > 1:
            from tqdm.auto import tqdm

            groups = tqdm(groups, desc="windows", unit="call", leave=False)
        for group in groups:
            run = group
            if self.fixed_batch:  # padded to this size's one batch size (the padding's outputs are dropped below)
                size = (group[0][0].stop - group[0][0].start, group[0][1].stop - group[0][1].start)
                run = group + [group[-1]] * (min(self.batch, self._per_size[size]) - len(group))
            conds = [adapter.crop_cond(cond, ys, xs) for ys, xs, _, _ in run]
            if len(run) > 1:
                try:
                    cb = adapter.stack_conds(conds)
                except NotImplementedError:  # this adapter's cond cannot be stacked: one window per call
                    self.batch = 1
                    return self.denoise(adapter, x, t, ab_t, cond, tau)
                xb = torch.cat([x[..., ys, xs] for ys, xs, _, _ in run], dim=0)
                tb = t.repeat(len(run))
            else:
                cb, xb, tb = conds[0], x[..., run[0][0], run[0][1]], t
            what = (f" for a batch of {len(run)} window{'s' if len(run) > 1 else ''} of {xb.shape[-2]}x{xb.shape[-1]}"
                    + (f", {B} images each" if B > 1 else ""))
            try:
                out = checked_denoise(adapter, xb, tb, ab_t, cb, what)
            except (TypeError, ValueError) as e:  # the adapter's own check of its model's output: say which batch
                if type(e) in (TypeError, ValueError) and what not in str(e):
                    raise type(e)(f"{e} ({what[1:]})") from e
                raise
            self.last_batches += 1
            for j, (ys, xs, _, w) in enumerate(group):
                acc[..., ys, xs] += w * out[j * B:(j + 1) * B].float()
                wsum[ys, xs] += w
        # pixels no computed window covers are inactive at this step: their prediction is never used
        # in place: no second state-sized buffer at the peak of the step (issue 12, bounded memory)
        return acc.div_(wsum.clamp_min_(1e-30)).to(x.dtype), len(todo)
