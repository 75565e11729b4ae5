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
                                   (DESIGN's t = index + 1), ab_t: alpha_bar at t (float). The sigma-space
                                   solvers pass a fractional t as float32 (log-sigma interpolation) and the
                                   exact ab_t = 1 / (1 + sigma**2): a model conditioned on ab (SR3) or on a
                                   sinusoidal embedding of t (SRDiff, diffusers UNets) takes it as is
    adapter.decode(x0, lr, cond)-> the SR image (B, 3, s*h, s*w) in [-1, 1] from the final state
    adapter.attention_to_state(A, shape)
                                -> A (B, 1, H, W) at HR resolution resized to the state grid (B, 1, H', W')

Extensions of the contract (all with defaults in Adapter, so existing adapters keep working):

    adapter.multiple            the HR size (s*h, s*w) must be a multiple of this (e.g. 2**levels of a UNet)
    adapter.min_size            and each HR side at least this (e.g. a reflection pad at the UNet's bottleneck)
    adapter.check_lr(lr)        raises ValueError naming ``lr`` when the adapter cannot take that size
    adapter.crop_cond(cond, ys, xs)
                                -> cond restricted to the state window (slice ys, slice xs), for tiled
                                   denoising (yoda.sample(..., windows=...)); the default says "unsupported"
    adapter.stack_conds(conds)  -> one cond for the windows' states concatenated along the batch dim (window 0's
                                   B elements first), from their crop_cond results; the default concatenates
                                   tensors (also inside tuples, lists, NamedTuples, dicts) and keeps equal
                                   non-tensors
    adapter.image_extent(cond, shape)
                                -> (h', w'), the top-left part of the state grid that holds the image (the rest
                                   is padding, e.g. a latent adapter's): what active_fraction counts
    adapter.state_grid(hr), adapter.state_extent(hr)
                                -> the state grid prepare makes for an HR size, and the image's part of it, told
                                   before prepare (None: unknown) so that windows= is checked before the heavy part
    adapter.sampling_defaults   {"sampler", "steps", "spacing", "lower_bound"}: yoda.sample's defaults for the
                                   model where a call leaves them out (empty: DDPM over every step, "trailing"; a
                                   ModelCard's sampling; a diffusers scheduler config's sampler and spacing)
    adapter.activation_scale    the model's activations per state element, in units of a pixel-space UNet's, for
                                   the default window batch (1; the latent adapters latent_factor ** 2, doubled
                                   under guidance)
    adapter.supports_cfg        whether the model has an unconditional branch (classifier-free guidance)
    adapter.with_cfg_scale(w)   -> a copy of the adapter that guides with scale w; yoda.sample(cfg_scale=w) calls it
                                   and the default raises ValueError naming cfg_scale. A guided adapter's denoise
                                   returns the combined output (guided_call below), so the sampler never sees
                                   cond and uncond: guidance is the adapter's business, like the space.

Classifier-free guidance helpers (DESIGN.md §6): cfg_combine(out_cond, out_uncond, scale, rescale) and
guided_call(fn, x_t, t, cond, uncond, scale, rescale=, batched=), which runs both passes (one call on the
batch-doubled input by default) and combines them.

Concrete adapters: PixelAdapter (SR3-style: x_t in pixels, model(cat(up(lr), x_t), noise_level)),
CallableAdapter (any f(x_t, t, cond) with a declared prediction and schedule), and the residual (SRDiff) and
latent (DiffBIR-style) adapters that live next to their models in yoda.models. ``as_adapter`` turns what a
user passes to yoda.sample into an Adapter; ``hr_grid`` gives the HR sizes an adapter takes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import math
import numbers
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional
import warnings

import torch
import torch.nn.functional as F

from yoda_kernels.contract import PREDICTIONS

from .callables import compiled_within, signature_problem, unwrapped
from .masks import as_float, plain_int
from .names import DEFAULT_SAMPLER, OTHER_MODEL_STEPS  # the sampler and steps where a model's card names none
from .schedule import Schedule
from .upsampling import METHODS as UPSAMPLINGS
from .upsampling import upsample  # up(lr), DESIGN.md §2: yoda.upsampling


@dataclass
class Prepared:
    c: torch.Tensor  # LR in the model's space; its shape is the state's shape
    cond: Any  # passed back to denoise / decode untouched


class Adapter:
    """Base class with the defaults most adapters share (pixel-grid attention, identity decode)."""

    prediction: str = "eps"
    schedule: Schedule
    scale: int = 4
    clip_x0: bool = True
    multiple: int = 1
    min_size: int = 1
    supports_cfg: bool = False  # classifier-free guidance: see with_cfg_scale
    # the sigma-space solvers' sigmas= / timesteps= when yoda.sample is given None (None: the solvers' own defaults,
    # "karras" / "interpolate"); DiffBIRAdapter sets DiffBIR's ("diffbir" / "visited"). yoda.sampling.solvers
    solver_sigmas: Optional[str] = None
    solver_timesteps: Optional[str] = None
    # how many times a pixel-space UNet's activations the model needs per element of the state, for the default
    # window batch (yoda.sampling.tiles.default_window_batch): the latent adapters say latent_factor ** 2 (an element
    # stands for that many pixels, in a far wider network), twice that when guidance doubles the batch
    activation_scale: int = 1
    # yoda.sample's sampler= / steps= / spacing= / lower_bound= where the call leaves them out (empty: DDPM
    # over every step); the yoda models' adapters take their ModelCard's sampling (the embedded model: DDIM, 1 step)
    sampling_defaults: Mapping[str, Any] = MappingProxyType({})
    hr_state: bool = False  # prepare's state lies on the HR grid (up(lr)'s): state_grid(hr) is hr
    window_unit: int = 1  # windows= narrower than the state: window and overlap multiples of it (SRDiff: scale)
    # every side of the state the denoiser sees, whole or in windows, must be a multiple of this (DiffBIRAdapter:
    # 2 ** the downsamplings of DiffBIR's UNet, which cannot take other sides; 1: any side)
    denoiser_multiple: int = 1

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

    def check_lr(self, lr: torch.Tensor) -> None:
        """Raise ValueError (naming ``lr``) if the HR size s*h x s*w is not a multiple of ``self.multiple`` or a
        side is below ``self.min_size``."""
        H, W = lr.shape[-2] * self.scale, lr.shape[-1] * self.scale
        m, least = int(self.multiple), int(self.min_size)
        if H % m or W % m:
            raise ValueError(
                f"lr of {lr.shape[-1]}x{lr.shape[-2]} (width x height) gives an HR image of {W}x{H} that this model "
                f"cannot take: both sides must be multiples of {m} (yoda.sample(..., pad=True) pads lr and crops the "
                f"SR back; or pad or crop lr so that {self.scale}*h and {self.scale}*w are)"
            )
        if min(H, W) < least:
            raise ValueError(
                f"lr of {lr.shape[-1]}x{lr.shape[-2]} (width x height) gives an HR image of {W}x{H} that this model "
                f"cannot take: both sides must be at least {least} (pad lr to at least {-(-least // self.scale)} "
                "pixels a side; yoda.sample(..., pad=True) does)"
            )

    def state_grid(self, hr: tuple[int, int]) -> Optional[tuple[int, int]]:
        """The state grid (h', w') that prepare makes for an HR size ``hr``, or None when it cannot be told before
        preparing. yoda.sample checks windows= against it before adapter.prepare (an RRDB, a VAE encode, DiffBIR's
        stage 1), and against the prepared state again. Default: ``hr`` for an adapter whose state is up(lr)'s
        grid (``hr_state``), else None."""
        return (int(hr[0]), int(hr[1])) if self.hr_state else None

    def state_extent(self, hr: tuple[int, int]) -> Optional[tuple[int, int]]:
        """The image's part (h', w') of state_grid(hr), the rest padding (image_extent, told before prepare), or None
        when unknown: a window that covers it along an axis spans the grid there, whatever its size. Default:
        state_grid(hr), all of it, where image_extent is the default's too (an adapter that pads tells its own)."""
        return self.state_grid(hr) if type(self).image_extent is Adapter.image_extent else None

    def image_extent(self, cond: Any, shape: torch.Size) -> tuple[int, int]:
        """(h', w'): the top-left part of the state grid of ``shape`` that holds the image, the rest being padding
        that decode crops away; the callback's active_fraction counts this part. Default: the whole grid."""
        return int(shape[-2]), int(shape[-1])

    def crop_cond(self, cond: Any, ys: slice, xs: slice) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not support tiled denoising (crop_cond)")

    def stack_conds(self, conds: list) -> Any:
        """Windows' conds (crop_cond results) -> the cond of their states concatenated along dim 0, for one
        batched denoiser call. Raises NotImplementedError for a cond it cannot stack (the sampler then denoises
        the windows one at a time)."""
        return stack_along_batch(conds)

    def with_cfg_scale(self, scale: float) -> "Adapter":
        """A copy of this adapter that samples with classifier-free guidance of scale ``scale`` (yoda.sample's
        cfg_scale=). Adapters with an unconditional branch set ``supports_cfg = True`` and override this."""
        raise ValueError(_no_cfg_message(self, scale))

    def device(self) -> Optional[torch.device]:
        """Device of the wrapped network's parameters (attributes ``net``, ``model`` or ``fn``), None if unknown."""
        for obj in (getattr(self, "net", None), getattr(self, "model", None), getattr(self, "fn", None)):
            if isinstance(obj, torch.nn.Module):
                for p in obj.parameters():
                    return p.device
        return None


def stack_along_batch(items: list) -> Any:
    """Concatenate tensors along dim 0, recursively through tuples, lists, NamedTuples and dicts (same keys) of
    the same structure; other values and 0-d tensors must be equal in every item (e.g. a size, a scale) and are
    kept. NotImplementedError otherwise."""
    first = items[0]
    if all(isinstance(v, torch.Tensor) for v in items):
        if first.dim() == 0:  # a scalar (a guidance scale, a level) has no batch dim: kept if every item's is it
            if all(v.shape == first.shape and torch.equal(v, first) for v in items):
                return first
            raise NotImplementedError("conds differ in a 0-d tensor, which has no batch dim to stack along")
        return torch.cat(items, dim=0)
    if isinstance(first, dict) and all(isinstance(v, dict) and v.keys() == first.keys() for v in items):
        return type(first)((k, stack_along_batch([v[k] for v in items])) for k in first)
    if isinstance(first, (tuple, list)) and all(type(v) is type(first) and len(v) == len(first) for v in items):
        if not any(isinstance(v, torch.Tensor) for v in _leaves(first)):
            if all(v == first for v in items):
                return first
            raise NotImplementedError("conds differ in a value that is not a tensor")
        parts = [stack_along_batch([v[k] for v in items]) for k in range(len(first))]
        if hasattr(first, "_fields"):  # NamedTuple
            return type(first)(*parts)
        return type(first)(parts)
    if first is None or isinstance(first, (int, float, str, bool)):
        if all(v == first for v in items):
            return first
    raise NotImplementedError(f"cannot stack conds of type {type(first).__name__} along the batch dim")


def _leaves(v: Any) -> list:
    if isinstance(v, (tuple, list)):
        return [leaf for x in v for leaf in _leaves(x)]
    if isinstance(v, dict):
        return [leaf for x in v.values() for leaf in _leaves(x)]
    return [v]


# --------------------------------------------------------------------------------------------------------------
# Classifier-free guidance (Ho & Salimans 2022), DESIGN.md §6
# --------------------------------------------------------------------------------------------------------------
def check_cfg_scale(scale: Any, name: str = "cfg_scale") -> float:
    """A guidance scale: a finite float >= 0 (1: no guidance, one conditional pass; 0: the unconditional one)."""
    v = as_float(scale, name, finite=False)  # numpy and 0-d tensor scalars too
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {v}")
    return v


def cfg_combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """out = out_uncond + scale * (out_cond - out_uncond); with rescale = phi > 0 then (Lin et al. 2024, §3.4;
    diffusers' guidance_rescale) out = phi * out * std(out_cond) / std(out) + (1 - phi) * out, the standard
    deviations taken per batch element over all other dims. In the outputs' dtype, on the model's output (eps or
    v, whatever the model predicts), as DiffBIR and diffusers combine."""
    out = out_uncond + scale * (out_cond - out_uncond)
    if rescale:
        dims = list(range(1, out.dim()))
        ratio = out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = rescale * (out * ratio) + (1.0 - rescale) * out
    return out


def guided_call(fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], x_t: torch.Tensor,
                t: torch.Tensor, cond: Any, uncond: Any, scale: float, *, rescale: float = 0.0,
                batched: bool = True) -> torch.Tensor:
    """fn(x_t, t, cond) guided by fn(x_t, t, uncond) with ``scale`` (cfg_combine). uncond None or scale == 1:
    one conditional call. batched: one call on cat([x_t, x_t]), cat([t, t]) and the conds stacked along the batch
    dim (stack_along_batch: tensors, tuples, dicts of tensors), cond's half first; else two calls of the batch
    size (half the activation memory). Both give the same result for a model whose batch elements are
    independent (up to the backend's rounding at different batch sizes)."""
    if uncond is None or scale == 1.0:
        return fn(x_t, t, cond)
    if batched:
        out = fn(torch.cat([x_t, x_t]), torch.cat([t, t]), stack_along_batch([cond, uncond]))
        if not isinstance(out, torch.Tensor) or out.shape[0] != 2 * x_t.shape[0]:
            raise ValueError(f"a batched guided call must return 2 * {x_t.shape[0]} batch elements, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        out_cond, out_uncond = out.chunk(2)
    else:
        out_cond, out_uncond = fn(x_t, t, cond), fn(x_t, t, uncond)
    return cfg_combine(out_cond, out_uncond, scale, rescale)


def apply_cfg_scale(adapter: "Adapter", cfg_scale: Any) -> "Adapter":
    """What yoda.sample does with cfg_scale=: None leaves the adapter as configured; a scale gives
    adapter.with_cfg_scale(scale), a ValueError naming cfg_scale for an adapter without guidance."""
    if cfg_scale is None:
        return adapter
    scale = check_cfg_scale(cfg_scale)
    if not getattr(adapter, "supports_cfg", False):
        raise ValueError(_no_cfg_message(adapter, scale))
    guided = adapter.with_cfg_scale(scale)
    if not isinstance(guided, Adapter):
        raise TypeError(f"{type(adapter).__name__}.with_cfg_scale must return an Adapter, got {type(guided).__name__}")
    return guided


def _no_cfg_message(adapter: Any, scale: Any) -> str:
    return (f"cfg_scale={scale!r}: {type(adapter).__name__} has no unconditional branch, so it cannot sample with "
            f"classifier-free guidance; leave cfg_scale=None")


SPACES = ("pixel", "residual")  # where x_t lives for the models yoda builds and trains (DESIGN.md §6)


def check_flag(v: Any, name: str) -> bool:
    """An adapter's switch: a bool ("no" and 0.5 were taken as True), or TypeError naming it."""
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def check_schedule(schedule: Any) -> Schedule:
    """An adapter's schedule: a yoda.Schedule, or TypeError."""
    if not isinstance(schedule, Schedule):
        hint = ("; of a diffusers scheduler: yoda.models.schedule_from_diffusers(scheduler.config)[0]"
                if type(schedule).__name__.endswith("Scheduler") and hasattr(schedule, "config") else "")
        raise TypeError(f"schedule must be a yoda.Schedule, got {type(schedule).__name__}{hint}")
    return schedule


DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}  # its prediction_type: yoda's


def check_prediction(prediction: Any) -> str:
    """An adapter's prediction: one of PREDICTIONS, or ValueError."""
    if prediction not in PREDICTIONS:
        said = DIFFUSERS_PREDICTIONS.get(prediction) if isinstance(prediction, str) else None
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}"
                         + (f" (diffusers' prediction_type {prediction!r} is {said!r})" if said else ""))
    return prediction


def _check_common(schedule: Any, prediction: str, scale: Any, clip_x0: Any, multiple: Any) -> None:
    check_schedule(schedule)
    check_prediction(prediction)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    check_flag(clip_x0, "clip_x0")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")


def check_output(out: Any, x_t: torch.Tensor, who: str, what: str = "") -> torch.Tensor:
    """A model's (``who``) output for the state x_t, or a batch of its windows (``what`` says so), checked: a real
    floating tensor of x_t's shape on x_t's device (an integer, bool or complex one would be cast silently; one on
    another device failed later, in the fused step or the finite check, naming no model)."""
    if not isinstance(out, torch.Tensor):
        hint = ("; return its tensor (out[0])" if isinstance(out, (tuple, list)) else
                "; return its tensor (out.sample, as of diffusers' outputs)" if hasattr(out, "sample") else
                "; return its tensor (out['sample'])" if isinstance(out, Mapping) else "")
        raise TypeError(f"{who} must return a tensor{what}, got {type(out).__name__}{hint}")
    if out.shape != x_t.shape:
        raise ValueError(f"{who} returned shape {tuple(out.shape)}{what}, expected the shape of the x_t it was given "
                         f"{tuple(x_t.shape)}")
    if not out.is_floating_point():
        raise TypeError(f"{who} must return a real floating tensor{what}, got {out.dtype}")
    if out.device != x_t.device:
        raise ValueError(f"{who} returned a tensor on {out.device}{what}, the state is on {x_t.device}")
    return out


def checked_denoise(adapter: "Adapter", x_t: torch.Tensor, t: torch.Tensor, ab_t: float, cond: Any,
                    what: str = "") -> torch.Tensor:
    """``adapter.denoise(x_t, t, ab_t, cond)``, its output checked (check_output): the sampler's one call of it."""
    return check_output(adapter.denoise(x_t, t, ab_t, cond), x_t, f"{type(adapter).__name__}.denoise", what)


def module_dtype(net: Any) -> Optional[torch.dtype]:
    """The one dtype of a module's floating parameters (a float64 or half model that a float32 state must be cast
    for), or None: no parameters() (a plain callable), no floating parameters, or parameters of mixed dtypes (the
    module decides). Asked through parameters(), so a wrapper that forwards it (yoda.sampling.speed's FastNet
    under compile / autocast / channels_last) answers for its module."""
    params = getattr(net, "parameters", None)
    if not callable(params):
        return None
    dts = {p.dtype for p in params() if isinstance(p, torch.Tensor) and p.is_floating_point()}
    return dts.pop() if len(dts) == 1 else None


class PixelAdapter(Adapter):
    """SR3-style adapter: x_t lives in pixel space, c = up(lr), and the network is called as

        eps = net(cat([up(lr), x_t], dim=1), noise_level)      noise_level: (B, 1) = sqrt(alpha_bar[t])

    (SR3's continuous noise-level conditioning, Saharia et al. 2021; sqrt is taken in float64, like
    upstream's numpy buffer, then cast). Identity decode. The net runs in ``net_dtype(x_t)`` (a module's
    parameters' dtype, else the state's) and its output is cast back to x_t's.

    net: callable (B, 6, H, W), (B, 1) -> (B, 3, H, W). prediction: what net returns ("eps" for SR3).
    multiple: the HR size must be a multiple of it (2**number of downsamplings of the UNet).
    upsampling: how up(lr) is made (yoda.upsampling: "torch", or "sr3" for SR3's released checkpoints).
    """

    hr_state = True

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: Schedule,
        *,
        scale: int = 4,
        prediction: str = "eps",
        clip_x0: bool = True,
        multiple: int = 1,
        upsampling: str = "torch",
    ) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        scale, multiple = plain_int(scale), plain_int(multiple)
        _check_common(schedule, prediction, scale, clip_x0, multiple)
        if upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
        self.net, self.schedule, self.scale = net, schedule, scale
        self.prediction, self.clip_x0, self.multiple, self.upsampling = prediction, clip_x0, multiple, upsampling

    def prepare(self, lr: torch.Tensor) -> Prepared:
        up = upsample(lr, self.scale, self.upsampling)
        return Prepared(c=up, cond=up)

    def net_dtype(self, x_t: torch.Tensor) -> torch.dtype:
        """dtype the net is called in: its parameters' (module_dtype), else the state's."""
        return module_dtype(self.net) or x_t.dtype

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: Any, cond: Any) -> torch.Tensor:
        """ab_t: a float, or a tensor of one value or of B values (one per batch element)."""
        B, dt = x_t.shape[0], self.net_dtype(x_t)
        level = torch.as_tensor(ab_t, dtype=torch.float64).sqrt().reshape(-1, 1).expand(B, 1)
        out = self.net(torch.cat([cond.to(dt), x_t.to(dt)], dim=1), level.to(device=x_t.device, dtype=dt))
        return check_output(out, x_t, "net").to(x_t.dtype)

    def crop_cond(self, cond: torch.Tensor, ys: slice, xs: slice) -> torch.Tensor:
        return cond[..., ys, xs]


class CallableAdapter(Adapter):
    """Any callable f(x_t, t, cond) -> model output, with its parameterisation declared by the user.

    x_t: (B, 3, H, W) state; t: (B,) int64 0-based training index, or float32 and fractional under the
    sigma-space solvers (sample(..., timesteps="nearest") passes the nearest int64 index instead: for a
    callable that indexes a table with t); cond = up(lr) (B, 3, H, W).
    space "pixel":    x_t is the HR image, c = up(lr), decode = identity.
    space "residual": x_t is SRDiff's residual (HR - up(lr)) * residual_scale, c = 0,
                      decode = up(lr) + x0 / residual_scale, clamped to [-1, 1].
    """

    hr_state = True

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        *,
        prediction: str,
        schedule: Schedule,
        scale: int = 4,
        clip_x0: bool = True,
        space: str = "pixel",
        multiple: int = 1,
        residual_scale: float = 2.0,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if problem := signature_problem(fn):
            raise TypeError(f"fn: {problem}")
        scale, multiple = plain_int(scale), plain_int(multiple)
        _check_common(schedule, prediction, scale, clip_x0, multiple)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if (isinstance(residual_scale, bool) or not isinstance(residual_scale, numbers.Real)
                or not (math.isfinite(float(residual_scale)) and float(residual_scale) > 0)):
            raise ValueError(f"residual_scale must be a finite float > 0, got {residual_scale}")
        self.fn, self.schedule, self.scale, self.space = fn, schedule, scale, space
        self.prediction, self.clip_x0, self.multiple = prediction, clip_x0, multiple
        self.residual_scale = float(residual_scale)

    def prepare(self, lr: torch.Tensor) -> Prepared:
        up = upsample(lr, self.scale)
        c = up if self.space == "pixel" else torch.zeros_like(up)
        return Prepared(c=c, cond=up)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: float, cond: Any) -> torch.Tensor:
        """fn runs in the dtype of its parameters when it is a module whose floating parameters share one dtype (a
        float64 or half model with a float32 state), else in the state's; its output is cast back to the state's."""
        dt = module_dtype(self.fn)
        if dt is not None and dt != x_t.dtype:
            cond = cond.to(dt) if isinstance(cond, torch.Tensor) and cond.is_floating_point() else cond
            return check_output(self.fn(x_t.to(dt), t, cond), x_t, "fn").to(x_t.dtype)
        return check_output(self.fn(x_t, t, cond), x_t, "fn").to(x_t.dtype)

    def decode(self, x0: torch.Tensor, lr: torch.Tensor, cond: Any) -> torch.Tensor:
        if self.space == "pixel":
            return x0
        return (cond.to(x0.dtype) + x0 / self.residual_scale).clamp(-1.0, 1.0)

    def crop_cond(self, cond: torch.Tensor, ys: slice, xs: slice) -> torch.Tensor:
        return cond[..., ys, xs]


def pipeline_hint(obj: Any) -> str:
    """What to say of a diffusers pipeline given where yoda takes one of its parts ("" for anything else)."""
    if not any(c.__name__ == "DiffusionPipeline" for c in type(obj).__mro__):
        return ""
    if hasattr(obj, "vqvae"):  # LDMSuperResolutionPipeline's parts
        return (" (a diffusers pipeline: yoda takes its parts, yoda.models.LDMSRAdapter(pipe.unet, pipe.vqvae, "
                "pipe.scheduler))")
    return (" (a diffusers pipeline: yoda takes its parts, e.g. yoda.models.from_diffusers(pipe.unet, pipe.vae, "
            "pipe.scheduler), or SDUpscalerAdapter(pipe.unet, pipe.vae, pipe.scheduler, pipe.low_res_scheduler, ...) "
            "for the x4 upscaler)")


def as_adapter(model: Any, **kw: Any) -> Adapter:
    """What yoda.sample accepts as ``model`` -> an Adapter.

    - an Adapter: returned as is (keyword arguments are then an error: configure the adapter instead);
    - an object with a ``yoda_adapter(**kw)`` method (yoda.models' SR3UNet, SRDiff): its adapter (of a
      torch.compile'd one: the adapter runs the compiled module; of DataParallel, DistributedDataParallel or an
      EMA's AveragedModel around one, nested in any order: its .module's, on the module's device);
    - a plain callable f(x_t, t, cond): CallableAdapter(f, **kw), which needs prediction= and schedule=;
    - anything else: TypeError.
    """
    model, given = unwrapped(model), model  # DataParallel / DDP / AveragedModel / compiled, nested: the yoda model
    if isinstance(model, Adapter):
        if kw:
            raise TypeError(f"model is already an Adapter; unexpected keyword arguments {sorted(kw)}")
        try:  # a subclass of one's own that breaks the contract: one line now, not an AttributeError at some step
            _check_common(getattr(model, "schedule", None), getattr(model, "prediction", None),
                          getattr(model, "scale", None), getattr(model, "clip_x0", None), getattr(model, "multiple", None))
        except (TypeError, ValueError) as e:
            raise type(e)(f"{type(model).__name__} breaks the adapter contract (yoda/adapters.py): {e}") from None
        return model
    make = getattr(model, "yoda_adapter", None)
    if callable(make):
        adapter = make(**kw)
        if not isinstance(adapter, Adapter):
            raise TypeError(
                f"{type(model).__name__}.yoda_adapter() must return a yoda.adapters.Adapter, "
                f"got {type(adapter).__name__}"
            )
        return _compiled_network(given, adapter)
    if hint := pipeline_hint(model):  # callable, but no f(x_t, t, cond): "say what it predicts" misled
        raise TypeError(f"model is a {type(model).__name__}{hint}")
    if callable(model):
        if problem := signature_problem(model):  # before "say what it predicts", which it could not use
            raise TypeError(f"model: {problem}")
        missing = [k for k in ("prediction", "schedule") if k not in kw]
        if missing:
            raise TypeError(
                f"model is a plain callable f(x_t, t, cond); say what it predicts and how it was trained: "
                f"as_adapter(model, prediction='eps'|'x0'|'v', schedule=Schedule...) (missing: {', '.join(missing)})"
            )
        return CallableAdapter(model, **kw)
    raise TypeError(
        f"model must be a yoda.adapters.Adapter, an object with a yoda_adapter() method, or a callable "
        f"f(x_t, t, cond); got {type(model).__name__}"
    )


def _compiled_network(model: Any, adapter: Adapter) -> Adapter:
    """A torch.compile'd module forwards yoda_adapter to its original module, whose adapter then held (and ran) the
    original: the compile did nothing, silently. The adapter's attributes that hold the original hold the compiled
    module instead (a copy of the adapter); where none does, a warning says to pass compile= instead."""
    model, orig = compiled_within(model)  # (the outermost compiled wrapper, wrapping others or not; the model in it)
    if model is None:
        return adapter
    held = [name for name, v in vars(adapter).items() if v is orig]
    if not held:
        warnings.warn(f"model is a torch.compile'd {type(orig).__name__}, whose {type(adapter).__name__} runs the "
                      f"original module: the compile changes nothing here; pass compile=True to yoda.sample "
                      f"(or a dict of torch.compile's arguments) instead", stacklevel=3)
        return adapter
    adapter = copy.copy(adapter)
    for name in held:
        setattr(adapter, name, model)
    return adapter


def model_sampler(adapter: Adapter) -> str:
    """The sampler of the CLI and yoda.evaluate where the user names none: the card's (adapter.sampling_defaults),
    else DEFAULT_SAMPLER, "ddim" (yoda.sample's own default is "ddpm", upstream's)."""
    return adapter.sampling_defaults.get("sampler", DEFAULT_SAMPLER)


def model_steps(adapter: Adapter) -> int:
    """The steps a model samples with where the user names none: its card's (adapter.sampling_defaults; 1 for the
    embedded model), else OTHER_MODEL_STEPS, at most its T."""
    return adapter.sampling_defaults.get("steps") or min(OTHER_MODEL_STEPS, adapter.schedule.T)


DEFAULT_LOWER_BOUND = 0.6  # yoda.sample's l where neither the call nor the model's card names one (DESIGN §4)


def model_lower_bound(adapter: Adapter) -> float:
    """The l of YODA's masks where the user names none: the card's (a model trained with masked input records its
    training masks' l), else DEFAULT_LOWER_BOUND."""
    return adapter.sampling_defaults.get("lower_bound", DEFAULT_LOWER_BOUND)


def hr_grid(adapter: Any) -> tuple[int, int]:
    """(unit, least) of HR sizes the adapter takes: sides multiples of ``unit`` = lcm(scale, multiple) (whole LR
    pixels and the model's multiple) and at least ``least``, the smallest such multiple >= adapter.min_size."""
    unit = math.lcm(int(adapter.scale), max(1, int(getattr(adapter, "multiple", 1))))
    least = max(1, int(getattr(adapter, "min_size", 1)))
    return unit, -(-least // unit) * unit


def padded_lr_side(n: int, scale: int, unit: int, least: int) -> int:
    """An LR side of n pixels edge-padded to what the model takes (hr_grid's unit and least, HR pixels): the
    smallest LR side >= n whose HR side is a multiple of ``unit`` and at least ``least``."""
    lr_unit = unit // scale
    return max(-(-n // lr_unit) * lr_unit, least // scale)
