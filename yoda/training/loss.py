"""The training loss with YODA masks (DESIGN.md §7), for a batch of HR crops and their LR images:

    idx ~ U{0, ..., T-1}                       (0-based; DESIGN's t = idx + 1)
    sqrt_ab ~ U[sqrt(ab[idx]), sqrt(ab[idx-1])] continuous, SR3-style (ab[-1] := 1), or sqrt(ab[idx])
    noise ~ N(0, I)
    x_t = sqrt_ab * (x0 where A >= tau else c) + sqrt(1 - sqrt_ab^2) * noise,  tau = yoda.masks.tau_at(idx + 1)
    pred = model(x_t, noise level)             eps, x0 or v parameterisation, the target that of the image x_t
                                               was made from (x0 where A >= tau, else c: eps, x0 and v agree)
    loss = mean over the active pixels (A >= tau) of |pred - target|  (L1) or (pred - target)^2  (L2)

Spaces: SR3-style "pixel" (x0 = HR, c = up(lr), model(cat(up(lr), x_t), sqrt_ab)); SRDiff-style "residual"
(x0 = (HR - up(lr)) * k, c = 0, model(x_t, t, lr) with the discrete step). Both YODA parts are switches
(LossConfig.mask_input, LossConfig.mask_loss); with both off this is exactly the base model's loss.

SR3's continuous noise level (Saharia et al.; Janspiry's sr3_modules/diffusion.py p_losses): the model is
conditioned on sqrt(alpha_bar) drawn uniformly between the two schedule values around a sampled step,
sqrt_alphas_cumprod_prev[t-1] .. sqrt_alphas_cumprod_prev[t] with sqrt_alphas_cumprod_prev = sqrt([1, ab]).
That reference draws one t per batch and one sqrt_ab per element; LossConfig.same_t_in_batch does the same,
the default draws a t per element (lower-variance gradients, as in DDPM). Its default loss is L1 on eps.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from yoda_kernels.checks import check_state

from ..adapters import upsample
from ..masks import check_A, tau_at
from .config import LossConfig


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar
    idx: torch.Tensor  # (B,) int64 0-based steps
    sqrt_ab: torch.Tensor  # (B,) float32 noise levels fed to the model
    active_fraction: float  # fraction of pixels the loss counted (1.0 without mask_loss)


def _check_ab(ab, name: str = "ab") -> torch.Tensor:
    """ab as the (T,) float64 alpha_bar of a schedule, each in (0, 1] (DESIGN §6: training needs ab > 0); errors
    name ``name``."""
    if not isinstance(ab, torch.Tensor) or ab.dim() != 1 or ab.numel() == 0:
        raise ValueError(f"{name} must be the (T,) alpha_bar of the schedule, got "
                         f"{tuple(ab.shape) if isinstance(ab, torch.Tensor) else type(ab).__name__}")
    ab = ab.to(torch.float64)
    if not bool(((ab > 0) & (ab <= 1)).all()):  # NaN too; ab = 1.5 drew sqrt_ab 1.22, a NaN loss
        raise ValueError(f"{name} must hold values in (0, 1] (a zero-terminal-SNR schedule trains on none at ab = 0)")
    return ab


def alphas_cumprod(schedule) -> torch.Tensor:
    """alpha_bar of a yoda.schedule.Schedule (or any object with .alphas_cumprod), float64 (T,) on CPU."""
    return _check_ab(torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64).cpu().reshape(-1),
                     "schedule.alphas_cumprod")


def draw_noise_level(
    ab: torch.Tensor, batch: int, cfg: LossConfig, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx (B,) int64, sqrt_ab (B,) float64) for one batch; the model is fed its float32 value.

    continuous: sqrt_ab ~ U[sqrt(ab[idx]), sqrt(ab[idx - 1])], ab[-1] := 1 (SR3); discrete: sqrt(ab[idx]).
    float64, so that sqrt(1 - sqrt_ab^2) keeps its digits where ab is close to 1 (the first steps: 2.3% off at idx 0
    of SR3's schedule when taken from the float32 value)."""
    ab = _check_ab(ab)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    batch = int(batch)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    T = ab.numel()
    if cfg.same_t_in_batch:
        idx = torch.randint(T, (1,), generator=generator).expand(batch).clone()
    else:
        idx = torch.randint(T, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    lo = ab[idx].sqrt()
    hi = torch.cat([torch.ones(1, dtype=torch.float64), ab])[idx].sqrt()  # sqrt(ab[idx-1]), 1 at idx = 0
    sab = lo + u * (hi - lo) if cfg.noise_level == "continuous" else lo
    return idx, sab


def step_taus(idx: torch.Tensor, T: int, lower_bound: float) -> torch.Tensor:
    """(B,) float32 tau of each element's step: yoda.masks.tau_at(idx + 1, T, lower_bound) (DESIGN.md §4),
    rounded to float32 as the kernels compare."""
    return torch.tensor([tau_at(int(i) + 1, T, lower_bound) for i in idx.tolist()], dtype=torch.float32)


def space_tensors(hr: torch.Tensor, lr: torch.Tensor, cfg: LossConfig, scale: int,
                  clip_input: bool = True, upsampling: str = "torch") -> tuple[torch.Tensor, ...]:
    """(x0, c, up) of DESIGN.md §6: pixel space x0 = HR, c = up(lr); residual x0 = (HR - up(lr)) k, c = 0, clamped
    to [-1, 1] as SRDiff's img2res when ``clip_input`` (the model's; its sampler clamps the same way). up(lr) by
    ``upsampling`` (yoda.upsampling's methods: the model's own)."""
    up = upsample(lr, scale, upsampling)
    if cfg.space == "pixel":
        return hr, up, up
    x0 = (hr - up) * cfg.residual_scale
    return x0.clamp(-1.0, 1.0) if clip_input else x0, torch.zeros_like(hr), up


def diffusion_loss(
    denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    ab: torch.Tensor,
    cfg: LossConfig,
    *,
    generator: Optional[torch.Generator] = None,
    idx: Optional[torch.Tensor] = None,
    sqrt_ab: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    backend: str = "auto",
    reduce_count: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> LossOutput:
    """The loss of DESIGN.md §7 (see the module docstring).

    denoise(x_t, idx, sqrt_ab) -> model output, shape of x0; idx (B,) int64, sqrt_ab (B,) float32.
    x0, c: (B, C, H, W) in the model's space; A: (B, 1, H, W) attention in [0, 1] at that grid, or None (no
    YODA). ab: alpha_bar (T,) float64. idx / sqrt_ab / noise may be given (tests); otherwise they are drawn
    from ``generator`` (on the CPU, so a run is reproducible on any device).

    reduce_count (data-parallel training, mask_loss only): this batch's count of active values -> what the masked
    mean divides by. The trainer passes the global batch's count (all-reduced, clamped to >= 1) / number of
    ranks, so that the mean of the ranks' losses and gradients, as DistributedDataParallel averages them, is the
    global batch's masked mean and its gradient (the mean of the ranks' own masked means is not)."""
    if x0.dim() != 4 or c.shape != x0.shape:
        raise ValueError(f"x0 and c must be (B, C, H, W) of the same shape, got {tuple(x0.shape)}, {tuple(c.shape)}")
    if not isinstance(cfg, LossConfig):
        raise TypeError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
    for name, t in (("x0", x0), ("c", c)):  # (a float64 x0 was said of A, through masked_q_sample)
        check_state(name, t)
    ab = _check_ab(ab)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    B, C = x0.shape[:2]
    T = ab.numel()
    if cfg.yoda and A is None:
        raise ValueError("the YODA loss (mask_input or mask_loss) needs an attention map A")
    if A is not None and (A.dim() != 4 or A.shape[1] != 1 or A.shape[0] != B or A.shape[2:] != x0.shape[2:]):
        raise ValueError(f"A must be (B, 1, H, W) = ({B}, 1, {x0.shape[2]}, {x0.shape[3]}), got {tuple(A.shape)}")
    if A is not None:
        check_A(A)  # float, no NaN, in [0, 1]: a map outside it would mask every pixel or none without a word
    if (idx is None) != (sqrt_ab is None):  # (an idx alone was dropped for a drawn one)
        raise ValueError("give idx and sqrt_ab together (the noise level of each step), or neither")
    if idx is None:
        idx, sqrt_ab = draw_noise_level(ab, B, cfg, generator)
    for name, v in (("idx", idx), ("sqrt_ab", sqrt_ab)):
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (B,):
            raise ValueError(f"{name} must be a ({B},) tensor, got {tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}")
    if idx.is_floating_point() or idx.dtype == torch.bool or not bool(((idx >= 0) & (idx < T)).all()):
        raise ValueError(f"idx must hold integer steps in [0, {T - 1}], got {idx.tolist()}")
    if not bool(((sqrt_ab > 0) & (sqrt_ab <= 1)).all()):
        raise ValueError(f"sqrt_ab must be in (0, 1], got {sqrt_ab.tolist()}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:  # (broadcast one image's to the batch)
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got "
                         f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
    tau = step_taus(idx, T, cfg.lower_bound).to(x0.device)
    s64 = sqrt_ab.to(x0.device, torch.float64)  # the coefficients in float64 (draw_noise_level), the model float32's
    idx, sqrt_ab, noise = idx.to(x0.device), s64.float(), noise.to(x0.device, x0.dtype)
    sigma = (1.0 - s64 * s64).sqrt().view(B, 1, 1, 1).float()  # sqrt(1 - ab), from the float64 ab

    if cfg.mask_input:
        from yoda_kernels import masked_q_sample

        A = A.to(x0.dtype)
        # float32 states, as the plain path's (a half-precision x0 gave the model a half-precision x_t there only);
        # ab in float64: its sqrt(1 - ab) is the plain path's sigma
        x_t = masked_q_sample(x0.float(), c.float(), noise.float(), A, tau, s64 * s64, backend=backend)
        # the targets are those of the image x_t was made from (c where inactive), so that eps, x0 and v agree
        # (a perfect predictor of one is a perfect predictor of the others); with mask_loss those pixels don't count
        x0 = torch.where(A >= tau.view(B, 1, 1, 1), x0, c)
    else:
        x_t = sqrt_ab.view(B, 1, 1, 1) * x0 + sigma * noise  # float32 (a half-precision x0 is promoted, as before)
    pred = denoise(x_t, idx, sqrt_ab)
    if not isinstance(pred, torch.Tensor):
        raise TypeError(f"the model output must be a tensor of x0's shape, got {type(pred).__name__}")
    if pred.shape != x0.shape:
        raise ValueError(f"model output has shape {tuple(pred.shape)}, expected {tuple(x0.shape)}")
    if cfg.target == "eps":
        target = noise
    elif cfg.target == "x0":
        target = x0
    else:  # v-prediction (Salimans & Ho), the convention of yoda.sample and diffusers
        target = sqrt_ab.view(B, 1, 1, 1).to(x0.dtype) * noise - sigma.to(x0.dtype) * x0
    diff = pred - target
    if cfg.mask_loss:  # only the pixels refined at this step count; an Inf elsewhere is selected away, before the
        m = A >= tau.view(B, 1, 1, 1)  # square: 0 * Inf made the loss NaN, and pow's backward 2 * Inf * 0 NaN grads
        diff = torch.where(m, diff, 0.0)
    err = diff.abs() if cfg.loss == "l1" else diff.pow(2)
    if cfg.mask_loss:
        count = m.sum().to(err.dtype) * C
        denom = count.clamp_min(1.0) if reduce_count is None else reduce_count(count)
        loss = err.sum() / denom
        frac = float(count) / err.numel()
    else:
        loss, frac = err.mean(), 1.0
    return LossOutput(loss=loss, idx=idx, sqrt_ab=sqrt_ab, active_fraction=frac)
