"""Validate the arguments of yoda.sample into a frozen SamplingSpec: every check happens here, before any work.

The spec holds what the loop needs and nothing it must compute: the visited steps as (idx, alpha_bar[idx],
alpha_bar at the next visited idx or 1), tau of each step, the sampler and its options, the seed, the backend
of the fused ops (resolved once) and the kernel tile, and the denoiser windows (tiled denoising). For the
sigma-space solvers (yoda.sampling.solvers) also the sigmas and the solver's plan of float64 coefficients; idx
is then the model's timestep of each sigma (fractional, or an index with timesteps="nearest" / "visited"). sigmas=
and timesteps= of None take the adapter's solver_sigmas / solver_timesteps (None: the solvers' defaults).
"""

from __future__ import annotations

import inspect
import numbers
import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

import yoda_kernels as K
from yoda_kernels.contract import SAMPLERS, check_tile

from .. import masks
from ..console import on_terminal
from ..masks import as_float, as_int
from ..schedule import FINAL_AT_FIRST
from ..adapters import Adapter, hr_grid
from . import solvers as S

ALL_SAMPLERS = SAMPLERS + S.SOLVERS  # the kernels' two (masked_step) and the sigma-space solvers (masked_combine)

STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# yoda.sample with attention and the model's own steps (the call gives none), and the CLI with --attention: the
# steps are raised, up to this many (and the model's T), until the last one refines every pixel (covering_steps)
MOST_YODA_STEPS = 50
# a solver's steps over continuous noise levels (karras, exponential, uniform in t) are not bounded by T, as
# k-diffusion's are not (a list of sigmas takes any length): up to this many, a bound that no sampling needs
MAX_SOLVER_STEPS = 10_000


def model_spacing(adapter, sampler: str, spacing: Optional[str] = None) -> Optional[str]:
    """The spacing yoda.sample takes where the call names none: the model's own for DDPM / DDIM (a diffusers
    scheduler's timestep_spacing, on the adapter's sampling_defaults), DDPM taking DDIM's discretisation of a
    spacing whose last step lands on alpha_bar[0] in its own form, as DDPMScheduler.from_config reads that config
    (sd_leading: leading_offset; sd_trailing: trailing; ldm_uniform: none)."""
    if spacing is None and sampler in ("ddpm", "ddim"):
        spacing = adapter.sampling_defaults.get("spacing")
        if sampler == "ddpm" and spacing in FINAL_AT_FIRST:
            spacing = {"sd_leading": "leading_offset", "sd_trailing": "trailing"}.get(spacing)
    return spacing


def last_tau_at(adapter, *, sampler: str, eta: Any, lower_bound: float, seed: int, sigmas: Any,
                device: Any = None) -> Callable[[int], float]:
    """n -> the last step's mask threshold tau of yoda.sample(adapter, lr, steps=n, ...) with these options and the
    model's own spacing (model_spacing), checked as yoda.sample checks them on the smallest LR the model takes (a
    bad option raises at the first call, before any work). What covering_steps asks."""
    side = hr_grid(adapter)[1] // adapter.scale
    lr = torch.zeros(1, 3, side, side, device=device or adapter.device() or torch.device("cpu"))
    spacing = model_spacing(adapter, sampler)
    return lambda n: make_spec(adapter, lr, steps=n, sampler=sampler, eta=eta, lower_bound=lower_bound, seed=seed,
                               sigmas=sigmas, spacing=spacing, progress=False).taus[-1]


def covering_steps(last_tau: Callable[[int], float], steps: int, T: int, floor: float = 0.0) -> Optional[int]:
    """The fewest n from ``steps`` up to MOST_YODA_STEPS (and T) whose last step refines every pixel, else None.
    YODA's masks widen as sampling goes on and cover every pixel once the threshold tau = t/T - l reaches the
    least attention of the image (of the batch), ``floor`` (0 for yoda's min-max normalised maps, DESIGN.md §4;
    both compared in float32, as the masks compare them); with few steps the last step comes before that, and the
    pixels it leaves keep the LR image next to refined ones: the edge between them shows. last_tau(n): the last step's tau at n steps."""
    for n in range(steps, min(MOST_YODA_STEPS, T) + 1):
        try:
            tau = last_tau(n)
        except ValueError:  # a count the spacing cannot take ("ldm_uniform" past T): the next one may
            continue
        if refines_all(tau, floor):
            return n
    return None


def unrefined(last_tau: Callable[[int], float], steps: int, T: int,
              floor: float = 0.0) -> Optional[tuple[float, Optional[int]]]:
    """None where the last of ``steps`` steps refines every pixel (refines_all), else (its tau, the fewest count
    above ``steps`` that does, covering_steps, or None)."""
    tau = last_tau(steps)
    if refines_all(tau, floor):
        return None
    return tau, covering_steps(last_tau, steps + 1, T, floor)


def refines_all(tau: float, floor: float) -> bool:
    """Whether a step of threshold ``tau`` refines every pixel of a map whose least attention is ``floor``
    (compared in float32, as the masks compare them)."""
    return float(torch.tensor(tau, dtype=torch.float32, device="cpu")) <= floor  # (not a caller's default device)


@dataclass(frozen=True)
class Windows:
    """Tiled denoising (``windows=``): windows of ``size`` = (height, width) pixels of the state grid overlapping by
    ``overlap``; ``skip_inactive``: a window with no active pixel at a step makes no denoiser call; ``batch``:
    windows per denoiser call (``window_batch=``; None: what fits yoda.sampling.tiles.WINDOW_BATCH_BYTES)."""

    size: tuple  # (height, width); windows=W gives (W, W)
    overlap: Optional[int]  # None (windows=W): tiles.default_overlap on the model's grid, resolved by prepare
    skip_inactive: bool = True
    batch: Optional[int] = None

    def typed(self) -> str:
        """windows= as a call gives it, for messages."""
        h, w = self.size
        if h == w and self.overlap is None:
            return f"windows={h}"
        return f"windows=({h if h == w else (h, w)}, {self.overlap})"


@dataclass(frozen=True)
class SamplingSpec:
    """Everything yoda.sample decided from its arguments (module docstring). ``pairs[i]`` and ``taus[i]`` are
    step i's (idx, ab_t, ab_prev) and tau = tau_at(idx + 1, T, lower_bound); for a solver idx is a float (the
    fractional timestep of sigmas[i]), ``sigmas`` the steps + 1 noise levels and ``solver`` its plan."""

    T: int
    pairs: tuple  # ((idx, ab_t, ab_prev), ...), idx 0-based and falling (a float for the solvers)
    taus: tuple  # float64 tau of each step (DESIGN.md §4)
    sampler: str
    eta: float
    lower_bound: float
    clip: bool
    seed: int
    backend: K.Backend  # the fused ops' backend, resolved once for lr's device
    kernel_tile: int  # tile of tile_stats / masked_step (8, 16, 32): kernel work split, not the windows
    windows: Optional[Windows]  # denoiser windows (windows=), or None: one call per step on the whole state
    state_dtype: torch.dtype
    progress: bool
    callback: Optional[Callable[[dict], None]]
    sigmas: Optional[tuple] = None  # float64, steps + 1 values ending with 0 (solvers only)
    solver: Optional[tuple] = None  # yoda.sampling.solvers.SolverStep per step (solvers only)

    @property
    def steps(self) -> int:
        return len(self.pairs)

    @property
    def masked(self) -> bool:
        """Whether pixels can be inactive at all (lower_bound < 1); otherwise the plain sampler runs."""
        return self.lower_bound < 1.0


def make_spec(
    adapter: Adapter,
    lr: torch.Tensor,
    *,
    steps: Any = None,
    sampler: Any = "ddpm",
    eta: Any = None,
    lower_bound: Any = 0.6,
    seed: Any = None,
    backend: Any = "auto",
    progress: Optional[bool] = None,
    callback: Any = None,
    clip: Any = None,
    kernel_tile: Any = 16,
    spacing: Any = None,
    windows: Any = None,
    window_batch: Any = None,
    sigmas: Any = None,
    timesteps: Any = None,
) -> SamplingSpec:
    """The SamplingSpec of yoda.sample's arguments for ``adapter`` and the checked ``lr`` (check_lr); errors
    name the argument. A seed of None is drawn here from torch's default generator."""
    dev = adapter.device()
    for what, d in (("lr", lr.device), ("the model", dev)):
        if d is not None and d.type == "mps":  # it fails deep inside, at the first float64 tensor
            raise ValueError(f"{what} is on mps, which yoda does not support (its noise and the SR3 / SRDiff "
                             f"upsampling compute in float64, which MPS lacks): move lr and the model to the CPU")
    if dev is not None and dev.type == "meta":  # "move one of them": lr on meta was refused in turn
        raise ValueError("the model's weights are on the meta device (made without their values): load them "
                         "first (load_state_dict(..., assign=True), or module.to_empty(device=...) and a load)")
    if dev is not None and (dev.type != lr.device.type or (dev.index or 0) != (lr.device.index or 0)):
        raise ValueError(f"lr is on {lr.device} but the model is on {dev}: move one of them")
    adapter.check_lr(lr)
    schedule = adapter.schedule
    T = schedule.T
    if not isinstance(sampler, str) or sampler not in ALL_SAMPLERS:
        raise ValueError(f"sampler must be one of {ALL_SAMPLERS}, got {sampler!r}")
    solver = sampler in S.SOLVERS
    if solver and sigmas is None:  # None: the adapter's defaults (e.g. DiffBIRAdapter's, DiffBIR's EDM sampler)
        sigmas = getattr(adapter, "solver_sigmas", None) or S.DEFAULT_SIGMAS
    if solver and sigmas is not None and not isinstance(sigmas, str):  # explicit sigmas: steps is their number
        if steps is not None:
            steps = as_int(steps, "steps", "an int or None")
    elif solver and sigmas != "diffbir":  # continuous noise levels: any count, as k-diffusion's (and a list's)
        steps = check_steps(steps, T, MAX_SOLVER_STEPS, "noise levels of sigmas=")
    else:  # training timesteps (DiffBIR's sigmas are T's discrete indices too)
        steps = check_steps(steps, T)
    eta = check_eta(eta, sampler)
    if solver and spacing is not None:
        raise ValueError(f"spacing applies to sampler='ddpm' / 'ddim' (respaced training timesteps); sampler="
                         f"{sampler!r} visits the noise levels of sigmas= instead")
    if sampler == "ddpm" and spacing in FINAL_AT_FIRST:
        raise ValueError(f"spacing={spacing!r} is a DDIM discretisation whose last step ends at alpha_bar[0], not at "
                         f"a clean image, where DDPM's posterior would add noise; use sampler='ddim' with it, or "
                         f"spacing='idpm' (DiffBIR's DDPM respacing), 'leading', 'leading_offset' (sd_leading's "
                         f"indices) or 'trailing' with sampler='ddpm'")
    if not solver and sigmas is not None:
        raise ValueError(f"sigmas applies to the sigma-space solvers {S.SOLVERS} only; sampler={sampler!r} visits "
                         f"the training timesteps of steps= and spacing=")
    if not solver and timesteps is not None:
        raise ValueError(f"timesteps applies to the sigma-space solvers {S.SOLVERS} only; sampler={sampler!r} calls "
                         f"the model at the integer training timesteps of steps= and spacing=")
    if solver:  # None: the adapter's defaults (e.g. DiffBIRAdapter's, DiffBIR's EDM sampler), else the solvers'
        timesteps = check_timesteps(getattr(adapter, "solver_timesteps", None) if timesteps is None else timesteps)
    lower_bound = masks.check_lower_bound(lower_bound)
    if isinstance(clip, np.bool_):  # numpy's (a comparison's result), as the kernels take it
        clip = bool(clip)
    if clip is not None and not isinstance(clip, bool):
        raise TypeError(f"clip must be None or a bool, got {type(clip).__name__}")
    if progress is None:  # a bar only on a terminal
        progress = on_terminal()
    if not isinstance(progress, bool):  # progress="no" would show a bar
        raise TypeError(f"progress must be None or a bool, got {type(progress).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if callback is not None:
        check_takes_one(callback)
    windows = check_windows(windows, window_batch)
    kernel_tile = check_tile(kernel_tile, "kernel_tile")
    bound = K.bind_backend(backend, lr.device)
    seed = resolve_seed(seed)
    sig = plan = None
    if solver:
        sig = S.make_sigmas(sigmas, steps, schedule)
        plan = S.plan(sampler, sig, schedule, eta, timesteps)
        pairs = tuple((st.t, st.ab, st.ab_next) for st in plan)
    else:  # [(idx, alpha_bar[idx], alpha_bar at the next idx or 1)]
        pairs = tuple(schedule.pairs(steps, "trailing" if spacing is None else spacing))
        if adapter.prediction == "eps" and any(ab == 0.0 for _, ab, _ in pairs):
            raise ValueError(f"{type(adapter).__name__} has prediction='eps' but its schedule has zero terminal SNR "
                             f"(alpha_bar[{T - 1}] = 0, the last beta is 1) and the sampler visits index {T - 1}: "
                             f"an eps model cannot denoise pure noise; a zero-terminal-SNR schedule needs a 'v' or "
                             f"'x0' prediction model")
    return SamplingSpec(
        T=T, pairs=pairs, taus=tuple(masks.tau_at(idx + 1, T, lower_bound) for idx, _, _ in pairs),
        sampler=sampler, eta=eta, lower_bound=lower_bound, clip=adapter.clip_x0 if clip is None else clip,
        seed=seed, backend=bound, kernel_tile=kernel_tile, windows=windows,
        state_dtype=lr.dtype if lr.dtype in STATE_DTYPES else torch.float32, progress=progress,
        callback=callback, sigmas=sig, solver=plan,
    )


# --------------------------------------------------------------------------------------------------------------
# Checks of single arguments
# --------------------------------------------------------------------------------------------------------------
def check_steps(steps: Any, T: int, most: Optional[int] = None, what: str = "") -> int:
    """steps (None: T) in [1, T] (the training timesteps a sampler visits), or in [1, most] where ``most`` is given
    (a solver's continuous ``what``, which need not be training timesteps)."""
    if steps is None:
        return T
    steps = as_int(steps, "steps", "an int or None")
    if most is not None and not 1 <= steps <= most:
        raise ValueError(f"steps must be in [1, {most}] ({what}), got {steps}")
    if most is None and not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, T={T}] (the model's training steps), got {steps}")
    return steps


def check_eta(eta: Any, sampler: str) -> float:
    """eta of ``sampler`` (None: its default): DDIM's (default 0, at most 1), or k-diffusion's noise scale of the
    ancestral and SDE solvers (S.ETA_SOLVERS, default 1); the other samplers take none (None or 0)."""
    if eta is not None:
        eta = as_float(eta, "eta")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
    if sampler == "ddim" and eta is not None and eta > 1:
        # DDIM's sigma = eta * sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) exceeds sqrt(1 - ab_prev) at
        # some steps for eta > 1, where the direction term sqrt(1 - ab_prev - sigma^2) has no value
        raise ValueError(f"eta must be in [0, 1] for sampler='ddim' (1 is DDPM's variance; more asks a step for more "
                         f"noise than its level has), got {eta}")
    if sampler == "ddim" or sampler in S.ETA_SOLVERS:
        return (0.0 if sampler == "ddim" else 1.0) if eta is None else eta
    if eta not in (None, 0.0):
        raise ValueError(f"eta applies to sampler='ddim' or {', '.join(map(repr, S.ETA_SOLVERS))} only; leave eta "
                         f"None (or 0) for {sampler!r}")
    return 0.0


def check_timesteps(timesteps: Any) -> str:
    """timesteps of a solver (None: yoda.sampling.solvers.DEFAULT_TIMESTEPS); errors name ``timesteps``."""
    if timesteps is None:
        return S.DEFAULT_TIMESTEPS
    if not isinstance(timesteps, str) or timesteps not in S.TIMESTEPS:
        raise ValueError(f"timesteps must be one of {S.TIMESTEPS} or None, got {timesteps!r}")
    return timesteps


def check_takes_one(callback: Callable) -> None:
    """The callback is called with one dict: one that takes another number of arguments (diffusers' callback(step,
    timestep, latents)) failed after the first model call, with Python's own TypeError."""
    try:
        sig = inspect.signature(callback)
    except (TypeError, ValueError):  # some builtins and C callables have no signature: they may take one
        return
    try:
        sig.bind(object())
    except TypeError as e:
        habit = ", not diffusers' callback(step, timestep, latents)" if len(sig.parameters) >= 3 else ""
        raise TypeError(f"callback must take one argument, a dict of the step (d['i'], d['t'], d['x'], d['x0_hat'], "
                        f"d['active_fraction'], ...){habit}: {e}") from None


def resolve_seed(seed: Any) -> int:
    if seed is None:
        # drawn from torch's default generator, so torch.manual_seed(...) reproduces the image
        return int(torch.randint(0, 2**32, (1,), dtype=torch.int64, device="cpu").item())
    seed = as_int(seed, "seed", "an int in [0, 2**32 - 1] or None")  # numpy integers and 0-d integer tensors too
    if not 0 <= seed <= K.philox.MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**32 - 1] or None, got {seed!r}")
    return seed


def all_finite(*xs: torch.Tensor) -> bool:
    """Whether every element of the tensors ``xs`` (on one device) is finite, exactly, with one device sync for
    all: their least and greatest values (finite_token) are. ``torch.isfinite(x).all()`` writes a bool tensor
    first: 389 ms against 26 ms on a 3x4096^2 float32 state (one core of the 2-core development CPU); a sum (18 ms)
    can overflow with every term finite, and an fp16 sum in float32 took 108 ms against aminmax's 23."""
    return bool(torch.isfinite(torch.stack([v for x in xs for v in _extremes(x)])).all())


def finite_token(x: torch.Tensor) -> torch.Tensor:
    """x's least and greatest value, (2,), on x's device without a sync: finite exactly when every element of x is
    (aminmax propagates NaN; an Inf is the least or greatest value). Zeros for an empty x. A token stands in for x
    in all_finite, so that the sampler need not hold a solver's model output until the state is checked."""
    return torch.stack(_extremes(x))


def _extremes(x: torch.Tensor) -> tuple:
    """(least, greatest) value of x as 0-d tensors, zeros for an empty x (torch.stack promotes mixed dtypes)."""
    if x.numel() == 0:
        return x.new_zeros(()), x.new_zeros(())
    return torch.aminmax(x)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_windows(windows: Any, window_batch: Any = None) -> Optional[Windows]:
    """windows = None | window | (window, overlap) | (window, overlap, skip_inactive), window an int W (W x W) or a
    pair (H, W), overlap an int or None (the default), window_batch = None | int >= 1 -> Windows or None."""
    if window_batch is not None:
        window_batch = as_int(window_batch, "window_batch", "None or an int >= 1")
        if window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {window_batch}")
        if windows is None:
            raise ValueError("window_batch applies to tiled denoising only: give windows= as well")
    if windows is None:
        return None
    tiles = windows
    if _is_int(tiles):
        if operator.index(tiles) < 1:
            raise ValueError(f"windows must satisfy window >= 1, got {windows!r}")
        return Windows((operator.index(tiles),) * 2, None, True, window_batch)  # W // 4 may be off the model's grid
    if isinstance(tiles, (tuple, list)) and len(tiles) == 2:
        tiles = (*tiles, True)
    window = tiles[0] if isinstance(tiles, (tuple, list)) and tiles else None
    pair = isinstance(window, (tuple, list)) and len(window) == 2 and all(map(_is_int, window))
    if (not isinstance(tiles, (tuple, list)) or len(tiles) != 3 or not (_is_int(window) or pair)
            or not (tiles[1] is None or _is_int(tiles[1])) or not isinstance(tiles[2], bool)):
        raise TypeError(f"windows must be None, an int window, (window, overlap) or (window, overlap, "
                        f"skip_inactive), the window an int or a (height, width) pair, got {windows!r}")
    size = tuple(map(operator.index, window)) if pair else (operator.index(window),) * 2  # numpy integers too
    # overlap None: a quarter of the shorter side that tiles the image, on the model's grid, as windows=W (prepare)
    overlap, skip = None if tiles[1] is None else operator.index(tiles[1]), tiles[2]
    # the overlap against the sides that tile the image: prepare (a side that covers it spans the grid)
    if min(size) < 1 or not (overlap is None or 0 <= overlap < max(size)):
        pairs = "" if pair else "; a window of H x W pixels is windows=((H, W), overlap)"
        raise ValueError(f"windows must satisfy window >= 1 and 0 <= overlap < window, got {windows!r}{pairs}")
    return Windows(size, overlap, skip, window_batch)


def noise_entries(noise: Any, n: int) -> Optional[list]:
    """noise: None, a (n, ...) tensor or a sequence of n entries -> the list of its entries (checked: type, count),
    before the state's shape is known (check_noise checks each entry against it)."""
    if noise is None:
        return None
    if isinstance(noise, torch.Tensor):
        if noise.dim() < 1 or noise.shape[0] != n:
            raise ValueError(f"noise must have {n} entries along its first dimension (one for the start and one for "
                             f"each of the {n - 1} visited steps, each of the state's shape), got shape "
                             f"{tuple(noise.shape)}")
        return list(noise.unbind(0))
    if isinstance(noise, (list, tuple)):
        if len(noise) != n:
            raise ValueError(f"noise must have {n} entries (one for the start and one for each of the {n - 1} "
                             f"visited steps), got {len(noise)}")
        return list(noise)
    raise TypeError(f"noise must be a tensor or a sequence of tensors, got {type(noise).__name__}")


def check_noise(entries: Optional[list], like: torch.Tensor) -> Optional[list[torch.Tensor]]:
    """noise_entries' list -> each entry checked against the state ``like`` (shape, finite float); converted to the
    state's dtype and device one at a time where used (prepare.Run._noise)."""
    if entries is None:
        return None
    shape = tuple(like.shape)
    out = []
    for k, z in enumerate(entries):
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != shape:
            raise ValueError(f"noise[{k}] must be a tensor of the state's shape {shape}, got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if not z.is_floating_point() or z.is_meta or not all_finite(z):
            raise ValueError(f"noise[{k}] must be a finite float tensor{' (it is on the meta device)' * z.is_meta}")
        out.append(z)
    return out
