"""yoda.sample: the one sampler loop of YODA (DESIGN.md §5), for every model space and both samplers.

    adapter = as_adapter(model);  c, cond = adapter.prepare(lr)
    pairs = schedule.pairs(steps)      # [(idx, ab[idx], ab at the next visited idx or 1)], idx 0-based, falling
    x = where(A >= tau_1, z_0, sqrt(ab_1) c + sqrt(1 - ab_1) z_0)  # start (init_coefficients)
    for i, (idx, ab_t, ab_prev) in enumerate(pairs):                # tau_i = (idx + 1) / T - lower_bound
        pred = adapter.denoise(x, idx, ab_t, cond)
        x = masked_step(x, pred, c, A, tau_i, ab_t=ab_t, ab_prev=ab_prev, ...)   # noise z_{i+1}
    sr = adapter.decode(x, lr, cond)

The loop is stateless: every step is a function of (x, idx, the schedule, seed, step number). Noise is
Philox(seed, step) with step 0 for the start and i + 1 for loop step i (or entry 0 / i + 1 of ``noise``).
With attention=None or lower_bound >= 1 the mask is None (every pixel active) and the very same loop is the
plain DDPM / DDIM sampler.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import yoda_kernels as K

from . import masks
from .attention.classic import minmax_normalize
from .adapters import Adapter, as_adapter

SAMPLERS = ("ddpm", "ddim")
STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LR_MARGIN = 0.02  # lr may exceed [-1, 1] by this much (bicubic/antialiased resizing overshoots slightly)
A_MARGIN = 1e-3  # attention may exceed [0, 1] by float rounding


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------
def _check_lr(lr: Any) -> torch.Tensor:
    """lr -> (B, 3, h, w) float, clamped to [-1, 1]; errors name ``lr``."""
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"lr must be a torch.Tensor, got {type(lr).__name__}")
    if lr.dim() != 4:
        raise ValueError(f"lr must be 4-D (B, C, h, w), got shape {tuple(lr.shape)}")
    if not lr.is_floating_point():
        raise TypeError(f"lr must be a float tensor with values in [-1, 1], got {lr.dtype}")
    B, C, h, w = lr.shape
    if C not in (1, 3):
        raise ValueError(f"lr must have 3 channels (or 1, repeated to 3), got {C}")
    if B == 0 or h == 0 or w == 0:
        raise ValueError(f"lr must not be empty, got shape {tuple(lr.shape)}")
    if not torch.isfinite(lr).all():
        raise ValueError("lr contains NaN or Inf")
    lo, hi = lr.min().item(), lr.max().item()
    if lo < -1.0 - LR_MARGIN or hi > 1.0 + LR_MARGIN:
        raise ValueError(
            f"lr values must be in [-1, 1] (x / 127.5 - 1 for 8-bit images), got range [{lo:.4g}, {hi:.4g}]"
        )
    if C == 1:
        lr = lr.expand(B, 3, h, w)
    return lr.clamp(-1.0, 1.0)


def _check_steps(steps: Any, T: int) -> int:
    if steps is None:
        return T
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int or None, got {type(steps).__name__}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T={T}] (the model's training steps), got {steps}")
    return steps


def _check_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _resolve_seed(seed: Any) -> int:
    if seed is None:
        # drawn from torch's default generator, so torch.manual_seed(...) reproduces the image
        return int(torch.randint(0, 2**32, (1,), dtype=torch.int64).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= K.philox.MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**32 - 1] or None, got {seed!r}")
    return seed


def _check_noise(noise: Any, n: int, like: torch.Tensor) -> Optional[list[torch.Tensor]]:
    """noise: a (n, *state) tensor or a sequence of n tensors of the state's shape -> list, state dtype."""
    if noise is None:
        return None
    shape = tuple(like.shape)
    if isinstance(noise, torch.Tensor):
        if noise.dim() != like.dim() + 1 or noise.shape[0] != n or tuple(noise.shape[1:]) != shape:
            raise ValueError(f"noise must have shape ({n}, {', '.join(map(str, shape))}) (steps + 1 entries of "
                             f"the state's shape), got {tuple(noise.shape)}")
        entries = list(noise.unbind(0))
    elif isinstance(noise, (list, tuple)):
        if len(noise) != n:
            raise ValueError(f"noise must have steps + 1 = {n} entries (entry 0 for the start), got {len(noise)}")
        entries = list(noise)
    else:
        raise TypeError(f"noise must be a tensor or a sequence of tensors, got {type(noise).__name__}")
    out = []
    for k, z in enumerate(entries):
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != shape:
            raise ValueError(f"noise[{k}] must be a tensor of the state's shape {shape}, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if not z.is_floating_point() or not torch.isfinite(z).all():
            raise ValueError(f"noise[{k}] must be a finite float tensor")
        out.append(z.to(device=like.device, dtype=like.dtype).contiguous())
    return out


def _check_tiles(tiles: Any) -> Optional[tuple[int, int, bool]]:
    """None | window | (window, overlap) | (window, overlap, skip_inactive) -> (window, overlap, skip)."""
    if tiles is None:
        return None
    if isinstance(tiles, int) and not isinstance(tiles, bool):
        tiles = (tiles, tiles // 4)
    if isinstance(tiles, (tuple, list)) and len(tiles) == 2:
        tiles = (*tiles, True)
    if (not isinstance(tiles, (tuple, list)) or len(tiles) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in tiles[:2])
            or not isinstance(tiles[2], bool)):
        raise TypeError(f"tiles must be None, an int window, (window, overlap) or (window, overlap, skip_inactive), "
                        f"got {tiles!r}")
    window, overlap, skip = tiles
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"tiles must satisfy window >= 1 and 0 <= overlap < window, got {tiles!r}")
    return int(window), int(overlap), skip


# --------------------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------------------
def _resolve_attention(attention: Any, lr: torch.Tensor, hr_size: tuple[int, int]) -> torch.Tensor:
    """attention (tensor, name or callable f(lr)) -> A (B, 1, H, W) float32 in [0, 1] on lr's device."""
    B = lr.shape[0]
    src = "attention"
    extracted = not isinstance(attention, torch.Tensor)
    if isinstance(attention, str):
        try:
            get = importlib.import_module("yoda.attention").get
        except (ImportError, AttributeError) as e:
            raise RuntimeError(f"attention={attention!r} needs yoda.attention.get, which is unavailable: {e}") from e
        attention = get(attention)
        src = f"attention {src!r}"
    if not isinstance(attention, torch.Tensor):
        if not callable(attention):
            raise TypeError(f"attention must be None, a tensor, a name or a callable f(lr) -> A; "
                            f"got {type(attention).__name__}")
        with torch.no_grad():
            attention = attention(lr)
        src = "attention(lr)"
        if not isinstance(attention, torch.Tensor):
            raise TypeError(f"{src} must return a tensor (B, 1, h, w), got {type(attention).__name__}")
    A = attention
    if A.dim() == 3:
        A = A.unsqueeze(1)
    if A.dim() != 4 or A.shape[1] != 1 or A.shape[0] not in (1, B) or A.shape[2] == 0 or A.shape[3] == 0:
        raise ValueError(f"{src} must be (B, 1, h, w) or (B, h, w) with B = {B} (or 1), got {tuple(attention.shape)}")
    if not A.is_floating_point():
        raise TypeError(f"{src} must be a float tensor in [0, 1], got {A.dtype}")
    A = A.detach().to(device=lr.device, dtype=torch.float32)
    if not torch.isfinite(A).all():
        raise ValueError(f"{src} contains NaN or Inf")
    lo, hi = A.min().item(), A.max().item()
    if lo < -A_MARGIN or hi > 1.0 + A_MARGIN:
        raise ValueError(f"{src} values must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    A = A.expand(B, 1, *A.shape[2:])
    if tuple(A.shape[2:]) != hr_size:
        A = F.interpolate(A, size=hr_size, mode="bilinear", align_corners=False)
        if extracted:  # DESIGN §3: resize, then min-max per image (upsampling pulls the peak below 1)
            A = minmax_normalize(A)
    return A.clamp(0.0, 1.0).contiguous()


# --------------------------------------------------------------------------------------------------------------
# Denoiser call, dense or tiled
# --------------------------------------------------------------------------------------------------------------
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


class _Tiler:
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


# --------------------------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------------------------
def sample(
    model: Any,
    lr: torch.Tensor,
    *,
    attention: Any = None,
    steps: Optional[int] = None,
    sampler: str = "ddpm",
    eta: float = 0.0,
    lower_bound: float = 0.6,
    seed: Optional[int] = None,
    noise: Optional[torch.Tensor | Sequence[torch.Tensor]] = None,
    backend: str = "auto",
    progress: bool = True,
    callback: Optional[Callable[[dict], None]] = None,
    clip: Optional[bool] = None,
    tile: int = 16,
    spacing: str = "trailing",
    tiles: Any = None,
) -> torch.Tensor:
    """Super-resolve ``lr`` with YODA (DESIGN.md §5): returns SR (B, 3, s*h, s*w) in [-1, 1], dtype/device of lr.

    model: an Adapter, an object with ``yoda_adapter()``, or a callable wrapped by yoda.adapters.as_adapter.
    lr: (B, 3, h, w) or (B, 1, h, w) in [-1, 1].
    attention: None (plain sampler), a tensor (B, 1, h', w') / (B, h', w') in [0, 1] at any resolution (resized
        bilinearly to HR, then to the state grid by the adapter), a name for yoda.attention.get, or f(lr) -> A.
    steps: sampling steps (default T), indices from schedule.respace(steps, spacing) (default "trailing").
    sampler: "ddpm" (ancestral, fixed-small variance) or "ddim" with ``eta`` (0: deterministic).
    lower_bound: l of tau = t / T - l; >= 1 makes every pixel active (the plain sampler, bit for bit).
    seed: Philox seed (None: drawn from torch's default generator). noise: explicit noise, steps + 1 entries
        of the state's shape (entry 0 for the start, i + 1 for loop step i), overriding the seed.
    clip: clip x0_hat to [-1, 1] (None: adapter.clip_x0). tile: kernel tile size (8, 16, 32).
    callback(d): after each step, d = {i, t (0-based index), tau, x (new state), x0_hat, active_fraction (B,),
        calls (denoiser calls made at this step)}.
    tiles: None, window, (window, overlap) or (window, overlap, skip_inactive=True): tiled denoising over the
        state grid with Gaussian blending; windows with no active pixel at a step skip their denoiser call
        (exact w.r.t. dense tiled sampling, i.e. skip_inactive=False). The adapter must implement crop_cond.
    """
    adapter = as_adapter(model)
    lr3 = _check_lr(lr)
    dev = adapter.device()
    if dev is not None and (dev.type != lr.device.type or (dev.index or 0) != (lr.device.index or 0)):
        raise ValueError(f"lr is on {lr.device} but the model is on {dev}: move one of them")
    adapter.check_lr(lr3)
    schedule = adapter.schedule
    T = schedule.T
    steps = _check_steps(steps, T)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    eta = _check_float("eta", eta)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if sampler == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to sampler='ddim' only (DDPM's variance is fixed); leave eta=0 for 'ddpm'")
    lower_bound = masks.check_lower_bound(lower_bound)
    if clip is not None and not isinstance(clip, bool):
        raise TypeError(f"clip must be None or a bool, got {type(clip).__name__}")
    clip = adapter.clip_x0 if clip is None else clip
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    tiles = _check_tiles(tiles)
    backend = K.resolve_backend(backend, lr.device)
    seed = _resolve_seed(seed)
    pairs = schedule.pairs(steps, spacing)  # [(idx, alpha_bar[idx], alpha_bar at the next visited idx or 1)]

    dtype = lr.dtype if lr.dtype in STATE_DTYPES else torch.float32
    lr_s = lr3.to(dtype)
    with torch.no_grad():
        prep = adapter.prepare(lr_s)
        c = prep.c
        if not isinstance(c, torch.Tensor) or c.dim() != 4 or not c.is_floating_point():
            raise TypeError(f"{type(adapter).__name__}.prepare must return c as a 4-D float tensor")
        c = c.to(dtype).contiguous()
        B = c.shape[0]

        A = None
        if attention is not None and lower_bound < 1.0:
            hr = (lr3.shape[-2] * adapter.scale, lr3.shape[-1] * adapter.scale)
            A = adapter.attention_to_state(_resolve_attention(attention, lr3, hr), c.shape)
            if tuple(A.shape) != (B, 1, *c.shape[-2:]):
                raise ValueError(f"{type(adapter).__name__}.attention_to_state returned {tuple(A.shape)}, "
                                 f"expected {(B, 1, *c.shape[-2:])}")
            A = A.float().contiguous()
        elif attention is not None and not (isinstance(attention, (torch.Tensor, str)) or callable(attention)):
            raise TypeError(f"attention must be None, a tensor, a name or a callable, got {type(attention).__name__}")
        stats = K.tile_stats(A, tile, backend=backend) if A is not None else None
        noise_l = _check_noise(noise, steps + 1, c)
        tiler = _Tiler(c.shape, *tiles, A, c.device) if tiles is not None else None

        def tau_of(idx: int) -> float:
            return masks.tau_at(idx + 1, T, lower_bound)  # DESIGN §4 with t = idx + 1

        # Start (DESIGN §5): x = noise where active at the first step, the LR noised to ab there elsewhere.
        x = K.masked_step(
            c, c, c, A, tau_of(pairs[0][0]), coefs=K.init_coefficients(pairs[0][1]), clip=False, seed=seed,
            step=0, noise=None if noise_l is None else noise_l[0], tile=tile, stats=stats, backend=backend,
        )
        bar = tqdm(total=steps, disable=not progress, desc="yoda.sample", leave=False)
        try:
            for i, (idx, ab_t, ab_prev) in enumerate(pairs):
                tau = tau_of(idx)
                t = torch.full((B,), idx, dtype=torch.int64, device=c.device)
                if tiler is None:
                    pred = adapter.denoise(x, t, ab_t, prep.cond)
                    if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
                        raise ValueError(f"{type(adapter).__name__}.denoise returned "
                                         f"{getattr(pred, 'shape', type(pred).__name__)}, expected {tuple(x.shape)}")
                    pred, calls = pred.to(dtype), 1
                else:
                    pred, calls = tiler.denoise(adapter, x, t, ab_t, prep.cond, tau)
                x_new = K.masked_step(
                    x, pred, c, A, tau, ab_t=ab_t, ab_prev=ab_prev, prediction=adapter.prediction,
                    sampler=sampler, eta=eta, clip=clip, seed=seed, step=i + 1,
                    noise=None if noise_l is None else noise_l[i + 1], tile=tile, stats=stats, backend=backend,
                )
                if callback is not None:
                    callback({
                        "i": i,
                        "t": idx,
                        "tau": tau,
                        "x": x_new,
                        "x0_hat": _x0_hat(x, pred, ab_t, adapter.prediction, clip),
                        "active_fraction": (masks.active_fraction(A, tau) if A is not None
                                            else torch.ones(B, device=c.device)),
                        "calls": calls,
                    })
                x = x_new
                bar.update(1)
        finally:
            bar.close()
        sr = adapter.decode(x, lr_s, prep.cond)
    return sr.clamp(-1.0, 1.0).to(lr.dtype)


def _x0_hat(x: torch.Tensor, pred: torch.Tensor, ab_t: float, prediction: str, clip: bool) -> torch.Tensor:
    """x0_hat = k1 x + k2 pred, the kernels' own x0 coefficients (introspection only)."""
    k1, k2 = K.step_coefficients(ab_t, 1.0, prediction=prediction)[:2]
    x0 = k1 * x.float() + k2 * pred.float()
    return x0.clamp(-1.0, 1.0) if clip else x0
