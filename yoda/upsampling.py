"""up(lr): the bicubic upsampling a model is conditioned on, the one it was trained with.

    method="torch"   torch's bicubic (Keys a = -0.75, align_corners=False, edges replicated): yoda's own models
                     (the embedded one, every model `yoda train` writes) train and sample with it
    method="sr3"     SR3's data (Janspiry/Image-Super-Resolution-via-Iterative-Refinement, prepare_data.py): the
                     8-bit LR image upsampled by Pillow's BICUBIC (a = -0.5, taps cut at the edges and renormalised,
                     horizontal pass then vertical, each rounded to 8 bits in Pillow's 22-bit fixed point), so the
                     condition is the 8-bit image SR3 trained on, bit for bit
    method="srdiff"  SRDiff's data (utils/dataset.py): MATLAB's imresize (a = -0.5, edges mirrored) of lr_u8 / 256,
                     in float64, then normalised to 2 x - 1 (SRDiff divides by 256, not 255)
    method="matlab"  MATLAB's imresize of the 8-bit LR image itself (lr_u8 / 255): the "bicubic" baseline that SR
                     papers report, which `yoda eval` shows next to the model's own up(lr)

yoda.load gives released SR3 / SRDiff checkpoints their method (the model's ``upsampling`` attribute, read by
their adapters); the three differ by about 1 8-bit level on average and up to ~26 at edges (benchmarks/RESULTS.md). An LR image that is
not on the 8-bit grid is rounded to it for "sr3", "srdiff" and "matlab" (their data were 8-bit images).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .devices import cpu_default_device

__all__ = ["METHODS", "upsample"]

METHODS = ("torch", "sr3", "srdiff", "matlab")
_PIL_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images (32 - 8 - 2)


def upsample(lr: torch.Tensor, scale: int, method: str = "torch") -> torch.Tensor:
    """up(lr) (B, C, s*h, s*w) of lr (B, C, h, w) in [-1, 1], by ``method`` (module docstring): in [-1, 1] for
    "torch" and "sr3"; "srdiff" and "matlab" are not clamped, as upstream's are not: bicubic overshoots at edges
    (a black / white step to about +-1.15, a checkerboard to +-1.52), so clamp(-1, 1) before saving one.
    lr: a non-empty floating-point (B, C, h, w) tensor; scale: an int >= 1 (TypeError / ValueError naming them,
    checked without reading lr's values: a NaN in lr is NaN in up(lr), as torch's own ops give it)."""
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"lr must be a torch.Tensor (B, C, h, w), got {type(lr).__name__}")
    if lr.dim() != 4 or lr.numel() == 0 or not lr.is_floating_point():
        raise ValueError(f"lr must be a non-empty floating-point (B, C, h, w) tensor, got {lr.dtype} "
                         f"{tuple(lr.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:  # 2.5: the methods
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")  # disagreed on the size; 0: empty / error
    if method == "torch":
        return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(-1.0, 1.0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    u8 = torch.round((lr.double().clamp(-1.0, 1.0) + 1.0) * 127.5)
    h, w = lr.shape[-2:]
    with cpu_default_device():  # the weights' tables on the CPU, whatever default device the caller set
        if method == "sr3":
            x = _pil_pass(u8.transpose(-1, -2), w, scale).transpose(-1, -2)  # Pillow: horizontal first, 8 bits between
            x = _pil_pass(x, h, scale)
            return (x / 127.5 - 1.0).to(lr.dtype)
        wy, wx = (_matlab_weights(n, scale).to(lr.device) for n in (h, w))
    div = 256.0 if method == "srdiff" else 255.0
    x = torch.einsum("yh,...hw,xw->...yx", wy, u8 / div, wx)  # rows first, as imresize; float64: order is moot
    return x.mul_(2.0).sub_(1.0).to(lr.dtype)  # (in place: float64 at HR, the call's peak)


def _keys(d: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """The cubic convolution kernel of Keys (1981) with parameter ``a`` at distances ``d`` (float64)."""
    d = d.abs()
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((d - 5.0) * d + 8.0) * d * a - 4.0 * a
    return torch.where(d <= 1.0, near, torch.where(d < 2.0, far, torch.zeros_like(d)))


def _pil_pass(x: torch.Tensor, n: int, scale: int) -> torch.Tensor:
    """Pillow's 8-bit bicubic resize of the last-but-one axis of x (integers 0..255 as float64) from n to
    n * scale samples: taps j in [int(c - 1.5), int(c + 2.5)) of centre c = (i + 0.5) / scale cut to [0, n),
    weights keys(j + 0.5 - c) normalised, in 22-bit fixed point with Pillow's rounding and clipping."""
    i = torch.arange(n * scale, dtype=torch.float64)
    c = (i + 0.5) / scale
    j = torch.arange(n, dtype=torch.float64)
    lo = torch.clamp(torch.trunc(c - 2.0 + 0.5), min=0)
    hi = torch.clamp(torch.trunc(c + 2.0 + 0.5), max=n)
    inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    k = torch.where(inside, _keys(j[None, :] + 0.5 - c[:, None]), torch.zeros(()))
    k = k / k.sum(dim=1, keepdim=True)
    one = float(1 << _PIL_BITS)
    kfix = torch.where(k < 0, torch.trunc(-0.5 + k * one), torch.trunc(0.5 + k * one)).to(x.device)
    # Integer arithmetic in float64: every product and partial sum is an integer below 2**53, so it is exact,
    # and float64 matmul runs on BLAS and on CUDA (int64 matmul is slow on the CPU and missing on CUDA).
    ss = (1 << (_PIL_BITS - 1)) + torch.einsum("oj,...jw->...ow", kfix, x)
    return torch.floor(ss / one).clamp(0.0, 255.0)  # Pillow: >> 22, clipped to 0..255


def _matlab_weights(n: int, scale: int) -> torch.Tensor:
    """(n * scale, n) float64: MATLAB imresize's bicubic contributions for upscaling: centre u = (i + 0.5) / scale
    - 0.5, taps floor(u) - 2 .. floor(u) + 3 weighted keys(u - j) and normalised, indices mirrored at the edges
    (-1 -> 0, n -> n - 1: symmetric)."""
    u = (torch.arange(n * scale, dtype=torch.float64) + 0.5) / scale - 0.5
    taps = torch.floor(u)[:, None] + torch.arange(-2, 4, dtype=torch.float64)[None, :]
    k = _keys(u[:, None] - taps)
    k = k / k.sum(dim=1, keepdim=True)
    period = torch.cat([torch.arange(n), torch.arange(n - 1, -1, -1)])
    idx = period[torch.remainder(taps.long(), 2 * n)]
    out = torch.zeros(n * scale, n, dtype=torch.float64)
    return out.scatter_add_(1, idx, k)
