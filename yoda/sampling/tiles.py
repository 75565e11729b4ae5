"""Tiled denoising (yoda.sample(..., tiles=...)): overlapping windows over the state grid, blended with Gaussian
weights (DESIGN.md §8, denoiser level). Not to be confused with the kernel tile of the fused ops."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..adapters import Adapter


def _starts(n: int, window: int, overlap: int) -> list[int]:
    """Window origins along one axis: stride window - overlap, the last one flush with the end."""
    if n <= window:
        return [0]
    stride = window - overlap
    out = list(range(0, n - window, stride))
    out.append(n - window)
    return out


def _gauss_1d(n: int, device: torch.device) -> torch.Tensor:
    """Blend weights over a window side: Gaussian centred on the window, sigma = n / 4 (weights at the border
    ~0.13 of the centre, so every pixel has a positive weight and overlaps blend smoothly)."""
    k = torch.arange(n, dtype=torch.float32, device=device)
    return torch.exp(-0.5 * ((k - (n - 1) / 2) / (n / 4)) ** 2)


class Tiler:
    """Overlapping windows over the state grid, blended with Gaussian weights (DESIGN.md §8, denoiser level).

    A window whose attention maximum (over the whole batch) is below tau at a step has no active pixel: its
    prediction lands only on pixels that take the LR branch, so its call is skipped. That is exact with
    respect to dense tiled sampling: at an active pixel the same windows are summed in the same order."""

    def __init__(self, shape: torch.Size, window: int, overlap: int, skip: bool, A: Optional[torch.Tensor],
                 device) -> None:
        self.skip = skip
        H, W = shape[-2:]
        self.windows = []
        for y in _starts(H, window, overlap):
            for x in _starts(W, window, overlap):
                ys, xs = slice(y, min(y + window, H)), slice(x, min(x + window, W))
                wmax = None if A is None else float(A[..., ys, xs].amax())
                wy = _gauss_1d(ys.stop - ys.start, device)
                wx = _gauss_1d(xs.stop - xs.start, device)
                self.windows.append((ys, xs, wmax, wy[:, None] * wx[None, :]))

    def denoise(self, adapter: Adapter, x: torch.Tensor, t: torch.Tensor, ab_t: float, cond: Any,
                tau: float) -> tuple[torch.Tensor, int]:
        """-> (blended prediction of x's shape and dtype, number of denoiser calls made)."""
        acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        wsum = torch.zeros(x.shape[-2:], dtype=torch.float32, device=x.device)
        tau32 = torch.tensor(tau, dtype=torch.float32).item()  # compare as the kernels do, in float32
        calls = 0
        for ys, xs, wmax, w in self.windows:
            if self.skip and wmax is not None and not wmax >= tau32:
                continue
            out = adapter.denoise(x[..., ys, xs], t, ab_t, adapter.crop_cond(cond, ys, xs))
            if not isinstance(out, torch.Tensor) or out.shape != x[..., ys, xs].shape:
                raise ValueError(f"{type(adapter).__name__}.denoise returned {getattr(out, 'shape', type(out))} "
                                 f"for a window of shape {tuple(x[..., ys, xs].shape)}")
            calls += 1
            acc[..., ys, xs] += w * out.float()
            wsum[ys, xs] += w
        # pixels no computed window covers are inactive at this step: their prediction is never used
        return (acc / wsum.clamp_min(1e-30)).to(x.dtype), calls
