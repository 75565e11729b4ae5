"""Pure-PyTorch reference of every yoda op: the test oracle and the fallback on any device.

Each function here has the exact signature of the registered op of the same name (``torch.ops.yoda.<op>``),
so a backend is a drop-in replacement. Arithmetic is float32 whatever the input dtype; the order of the
float32 operations below is the contract that the C++, CUDA and Triton kernels follow, so that backends
give the same bits on the same noise (DESIGN.md §10).

Step coefficients (``coefs``: yoda_kernels.contract.StepCoefs, ten floats computed once in float64 by
:func:`yoda_kernels.coefs.step_coefficients`) and the one step they describe are the kernel contract, written
out in yoda_kernels/contract.py; this file is its executable form.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import philox
from .contract import CombineCoefs, StepCoefs, memory_format, needs_noise


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _mask(A: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, 1, H, W) bool: A >= tau, compared in float32."""
    A = A.float()
    if A.dim() == 3:
        A = A.unsqueeze(1)
    return A >= _f32(tau).to(A.device)


def _noise(x: torch.Tensor, seed: int, step: int, noise: Optional[torch.Tensor], coefs) -> torch.Tensor:
    """z of the step: zeros when the step draws none (sigma == lb == 0; every kernel skips the noise then, an
    explicit tensor included), else the explicit tensor, else the Philox stream."""
    if not needs_noise(coefs):
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    if noise is not None:
        return noise.float()
    return philox.noise(seed, step, x.shape, device=x.device)


def masked_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tile_max: Optional[torch.Tensor],
    tile_min: Optional[torch.Tensor],
    tau: float,
    coefs: list[float],
    clip: bool,
    seed: int,
    step: int,
    noise: Optional[torch.Tensor],
    tile: int,
) -> torch.Tensor:
    """One reverse step of DESIGN.md §5. x, model_out, c: (B, C, H, W); A: (B, 1, H, W) or (B, H, W) or None;
    tile_max/tile_min are accepted for signature parity (the reference reads A per pixel). Returns x_prev,
    dtype and memory format of x."""
    k = StepCoefs(*(_f32(v).to(x.device) for v in coefs))
    xf, of, cf = x.float(), model_out.float(), c.float()
    z = _noise(x, seed, step, noise, coefs)
    x0 = k.k1 * xf + k.k2 * of
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    eps = k.e1 * xf + k.e2 * of
    sr = k.cx0 * x0 + k.cx * xf + k.ceps * eps + k.sigma * z
    lr = k.la * cf + k.lb * z
    out = sr if A is None else torch.where(_mask(A, tau), sr, lr)
    return out.to(x.dtype).contiguous(memory_format=memory_format(x))


def masked_combine(
    x: torch.Tensor,
    d0: torch.Tensor,
    d1: Optional[torch.Tensor],
    d2: Optional[torch.Tensor],
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tile_max: Optional[torch.Tensor],
    tile_min: Optional[torch.Tensor],
    tau: float,
    coefs: list[float],
    seed: int,
    step: int,
    noise: Optional[torch.Tensor],
    tile: int,
) -> torch.Tensor:
    """One masked solver update (contract.py): sr = (((cx x + cd0 d0) + cd1 d1) + cd2 d2) + sigma z where
    A >= tau, la c + lb z elsewhere; d1 / d2 None: their terms are not added (d2 only with d1). x, d*, c:
    (B, C, H, W); tile_max/tile_min accepted for signature parity. Returns x', dtype and memory format of x."""
    k = CombineCoefs(*(_f32(v).to(x.device) for v in coefs))
    xf = x.float()
    z = _noise(x, seed, step, noise, coefs)
    sr = k.cx * xf + k.cd0 * d0.float()
    if d1 is not None:
        sr = sr + k.cd1 * d1.float()
        if d2 is not None:
            sr = sr + k.cd2 * d2.float()
    sr = sr + k.sigma * z
    lr = k.la * c.float() + k.lb * z
    out = sr if A is None else torch.where(_mask(A, tau), sr, lr)
    return out.to(x.dtype).contiguous(memory_format=memory_format(x))


def tile_stats(A: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile max and min of A over tile x tile pixels (ragged last row/column of tiles covers what is
    left). A: (B, 1, H, W) or (B, H, W). Returns two float32 tensors (B, ceil(H/tile), ceil(W/tile))."""
    A = A.float()
    if A.dim() == 4:
        A = A[:, 0]
    B, H, W = A.shape
    ph, pw = (-H) % tile, (-W) % tile
    hi = torch.nn.functional.pad(A, (0, pw, 0, ph), value=float("-inf"))
    lo = torch.nn.functional.pad(A, (0, pw, 0, ph), value=float("inf"))
    ty, tx = (H + ph) // tile, (W + pw) // tile
    tmax = hi.view(B, ty, tile, tx, tile).amax(dim=(2, 4))
    tmin = lo.view(B, ty, tile, tx, tile).amin(dim=(2, 4))
    return tmax.contiguous(), tmin.contiguous()


def masked_q_sample(
    x0: torch.Tensor,
    c: torch.Tensor,
    noise: torch.Tensor,
    A: Optional[torch.Tensor],
    sqrt_ab: torch.Tensor,
    sqrt_1m_ab: torch.Tensor,
    tau: torch.Tensor,
) -> torch.Tensor:
    """Training-time mixing of DESIGN.md §7, per batch element b:

        x_t = sqrt_ab[b] * (x0 where A >= tau[b] else c) + sqrt_1m_ab[b] * noise

    sqrt_ab, sqrt_1m_ab, tau: (B,) float tensors. A None: plain q_sample. Returns x_t, dtype of x0."""
    B = x0.shape[0]
    a = sqrt_ab.float().view(B, 1, 1, 1)
    s = sqrt_1m_ab.float().view(B, 1, 1, 1)
    base = x0.float()
    if A is not None:
        Af = A.float()
        if Af.dim() == 3:
            Af = Af.unsqueeze(1)
        base = torch.where(Af >= tau.float().view(B, 1, 1, 1), base, c.float())
    out = a * base + s * noise.float()
    return out.to(x0.dtype).contiguous(memory_format=memory_format(x0))
