"""Model adapters: how a diffusion SR model plugs into the one sampler loop (DESIGN.md §6).

The sampler only ever sees this contract (k-diffusion's external.py is the model for it):

    adapter.prediction          "eps" | "x0" | "v": what adapter.denoise returns
    adapter.schedule            yoda.schedule.Schedule the model was trained with (T, alpha_bar)
    adapter.scale               SR factor s (HR = s * LR)
    adapter.clip_x0             whether x0_hat is clipped to [-1, 1] in the step (pixel/residual spaces)
    adapter.prepare(lr)         -> Prepared(c, cond): c is the LR image in the model's space and fixes the
                                   state's shape (B, C', H', W'); cond is whatever denoise needs
    adapter.denoise(x_t, t, ab_t, cond)
                                -> model output, shape of x_t. t: (B,) int64 0-based training timestep index
                                   (DESIGN's t = index + 1), ab_t: alpha_bar at t (float)
    adapter.decode(x0, lr, cond)-> the SR image (B, 3, s*h, s*w) in [-1, 1] from the final state
    adapter.attention_to_state(A, shape)
                                -> A (B, 1, H, W) at HR resolution resized to the state grid (B, 1, H', W')

Concrete adapters: PixelAdapter (SR3-style: x_t in pixels, model(cat(up(lr), x_t), noise_level)), and the
residual (SRDiff) and latent (DiffBIR-style) adapters that live next to their models in yoda.models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .schedule import Schedule


@dataclass
class Prepared:
    c: torch.Tensor  # LR in the model's space; its shape is the state's shape
    cond: Any  # passed back to denoise / decode untouched


def upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """up(lr): bicubic upsampling by ``scale``, clamped to [-1, 1] (DESIGN.md §2)."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


class Adapter:
    """Base class with the defaults most adapters share (pixel-grid attention, identity decode)."""

    prediction: str = "eps"
    schedule: Schedule
    scale: int = 4
    clip_x0: bool = True

    def prepare(self, lr: torch.Tensor) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: float, cond: Any) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def decode(self, x0: torch.Tensor, lr: torch.Tensor, cond: Any) -> torch.Tensor:
        return x0

    def attention_to_state(self, A: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        H, W = shape[-2:]
        if tuple(A.shape[-2:]) == (H, W):
            return A
        return F.interpolate(A, size=(H, W), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
