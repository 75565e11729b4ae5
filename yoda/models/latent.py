"""Latent-space (DiffBIR / ControlLDM-style) models behind the YODA sampler (DESIGN.md §6).

DiffBIR restores with a stage-1 network, encodes the restored image with the Stable-Diffusion VAE and lets
a ControlLDM denoise a latent conditioned on that encoding. YODA holds the not-yet-active latent pixels at
the noised encoding of the stage-1 image:

    img = stage1(up(lr))  (or up(lr) without a stage 1), padded (replicate) to multiples of latent_factor *
                                           latent_multiple
    c   = encode(img)                      (B, C', H/f, W/f)     f = latent_factor (8 for SD's VAE)
    eps = denoise(z_t, idx, c)             the ControlLDM call (eps, x0 or v: ``prediction``)
    SR  = crop(decode(z_0)) to (H, W), clamped to [-1, 1]
    A   -> latent grid: max pooling (default) or area (mean) pooling over f x f cells, so a latent pixel is
           active as soon as any (max) / the average (area) of its HR pixels is.

:class:`LatentAdapter` takes the three callables; :func:`from_diffusers` builds them from a diffusers
``UNet2DModel`` with in_channels = 2 * latent_channels whose input is cat(z_t, c), c the ``AutoencoderKL``
encoding of the upsampled (or stage-1) image, and a scheduler config. Diffusers' released SR models are not
of this form and have adapters of their own: LDM-SR (LDMSuperResolutionPipeline) has a VQModel and concatenates
the LR pixels (yoda.models.ldm_sr), the SD x4 upscaler is a text-conditioned UNet2DConditionModel on cat(z_t,
noised LR pixels) (4 + 3 channels; yoda.models.sd_upscaler).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import warnings
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..adapters import (DIFFUSERS_PREDICTIONS, Adapter, Prepared, check_prediction, check_schedule, pipeline_hint,
                        upsample)
from .._json_fields import read_config_text
from ..masks import as_int, plain_int
from .card import FrozenMapping
from ..schedule import FINAL_AT_FIRST, LEADING_PLUS_ONE, SPACINGS, Schedule

__all__ = ["LatentAdapter", "LatentCond", "from_diffusers", "schedule_from_diffusers"]

POOLS = ("max", "area")


class LatentCond(NamedTuple):
    c: torch.Tensor  # encode(stage-1 image), (B, C', H'/f, W'/f)
    size: Tuple[int, int]  # (H, W) of the HR image before padding


class LatentAdapter(Adapter):
    """Adapter from callables.

    encode(img (B, 3, H', W') in [-1, 1]) -> latent (B, C', H'/f, W'/f)
    decode(latent) -> img (B, 3, H', W')
    denoise(z_t (B, C', h', w'), t (B,) int64 0-based index (float32 and fractional under the sigma-space
        solvers of yoda.sampling.solvers), c (B, C', h', w')) -> model output
    stage1(up(lr)) -> restored image at HR size (optional), in [-1, 1] as up(lr) is (DiffBIRAdapter's stage1 takes
        and gives [0, 1], DiffBIR's convention)
    pool: "max" (default) or "area" -- how A is brought to the latent grid.
    clip_x0: latents are not bounded, so False by default.
    latent_multiple: the latent grid is padded to multiples of it (2 ** downsamplings of the denoiser);
        the image is padded (replicate) to multiples of latent_factor * latent_multiple and cropped back.
    modules: the networks behind the callables (from_diffusers: the UNet and the VAE): the adapter's device is
        theirs, so that an lr on another device is refused before any work; where a callable fails on an lr of
        another dtype than theirs (a float16 lr, float32 modules, a callable that does not cast), the error says so.
    sampling: yoda.sample's defaults for the model where a call leaves them out (adapter.sampling_defaults):
        {"sampler", "steps", "spacing"}, any of them (from_diffusers: what the scheduler config names).
    """

    def __init__(
        self,
        encode: Callable[[torch.Tensor], torch.Tensor],
        decode: Callable[[torch.Tensor], torch.Tensor],
        denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: Schedule,
        prediction: str = "eps",
        scale: int = 4,
        stage1: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        latent_factor: int = 8,
        pool: str = "max",
        clip_x0: bool = False,
        latent_multiple: int = 1,
        modules: Tuple[torch.nn.Module, ...] = (),
        sampling: Optional[dict] = None,
    ):
        for name, fn in (("encode", encode), ("decode", decode), ("denoise", denoise)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if stage1 is not None and not callable(stage1):
            raise TypeError(f"stage1 must be callable or None, got {type(stage1).__name__}")
        check_schedule(schedule)
        check_prediction(prediction)
        scale, latent_factor, latent_multiple = map(plain_int, (scale, latent_factor, latent_multiple))
        for name, v in (("scale", scale), ("latent_factor", latent_factor), ("latent_multiple", latent_multiple)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self._encode, self._decode, self._denoise, self.stage1 = encode, decode, denoise, stage1
        self.schedule = schedule
        self.prediction = prediction
        self.scale = scale
        self.latent_factor = latent_factor
        self.latent_multiple = latent_multiple
        self.pool = pool
        self.clip_x0 = bool(clip_x0)
        self.modules = tuple(modules)
        if sampling:
            self.sampling_defaults = FrozenMapping(check_sampling_defaults(sampling, schedule.T))

    @property
    def activation_scale(self) -> int:  # Adapter.activation_scale (SDUpscalerAdapter's guided: one doubled batch)
        return self.latent_factor ** 2 * (2 if getattr(self, "guided", False) else 1)

    def device(self) -> Optional[torch.device]:
        """The modules' device (their first parameters'); modules on different devices are a ValueError."""
        found = [(type(m).__name__, p.device) for m in self.modules for p in itertools.islice(m.parameters(), 1)]
        if len({d for _, d in found}) > 1:  # a UNet moved to the GPU without its VAE failed deep in torch
            where = ", ".join(f"{name} on {d}" for name, d in found)
            raise ValueError(f"the model's modules are on different devices ({where}): move them to one")
        return found[0][1] if found else super().device()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        f = self.latent_factor * self.latent_multiple
        ph, pw = (-x.shape[-2]) % f, (-x.shape[-1]) % f
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x

    def prepare(self, lr: torch.Tensor) -> Prepared:
        if not isinstance(lr, torch.Tensor) or lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B, 3, h, w), got "
                             f"{tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__}")
        up = upsample(lr, self.scale)
        H, W = up.shape[-2:]
        img = self.stage1(up) if self.stage1 is not None else up
        if tuple(img.shape) != tuple(up.shape):
            raise ValueError(f"stage1 must return the HR shape {tuple(up.shape)}, got {tuple(img.shape)}")
        if self.stage1 is not None and not bool(torch.isfinite(img).all()):  # (said of the denoiser at step 0)
            raise ValueError("stage1 returned NaN or Inf values")
        with self._dtype_said("encode", img):
            c = self._encode(self._pad(img))
        f = self.latent_factor
        want = (lr.shape[0], *self.state_grid((H, W)))
        if not isinstance(c, torch.Tensor) or c.dim() != 4 or (c.shape[0], c.shape[2], c.shape[3]) != want:
            raise ValueError(f"encode must return (B, C', {want[1]}, {want[2]}) for HR {H}x{W} and latent_factor "
                             f"{f}, got {tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__}")
        return Prepared(c=c, cond=LatentCond(c, (int(H), int(W))))

    def state_grid(self, hr: tuple[int, int]) -> tuple[int, int]:
        """The latent grid of prepare: the HR size padded to multiples of latent_factor * latent_multiple, / f."""
        f, m = self.latent_factor, self.latent_multiple
        return -(-int(hr[0]) // (f * m)) * m, -(-int(hr[1]) // (f * m)) * m

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: Any, cond: LatentCond) -> torch.Tensor:
        with self._dtype_said("denoise", x_t):
            return self._denoise(x_t, t, cond.c)

    @contextlib.contextmanager
    def _dtype_said(self, fn: str, x: torch.Tensor):
        """A RuntimeError of the callable ``fn`` on an input whose dtype is not its modules' (torch's "Input type
        (c10::Half) and bias type (float) should be the same") said as a TypeError naming lr's dtype."""
        try:
            yield
        except RuntimeError as e:
            dts = {p.dtype for m in self.modules for p in m.parameters() if p.is_floating_point()}
            if not dts or x.dtype in dts or "type" not in str(e) or isinstance(e, torch.OutOfMemoryError):
                raise  # (an out-of-memory error or any other stays what it is)
            have = ", ".join(sorted(str(d).replace("torch.", "") for d in dts))
            raise TypeError(f"lr is {str(x.dtype).replace('torch.', '')} (the state's dtype) but the model's modules "
                            f"are {have}, and its {fn} failed on it without casting ({str(e).splitlines()[0]}): give "
                            f"lr in the modules' dtype, or cast in {fn} (x.to(their dtype))") from e

    def decode(self, x0: torch.Tensor, lr: torch.Tensor, cond: LatentCond) -> torch.Tensor:
        """decode(x0) must be the padded image (B, 3, f h', f w') of the latent (B, C', h', w'), cropped here to the
        HR size: a wrong decoder would otherwise give an image of another size without any error."""
        H, W = cond.size
        with self._dtype_said("decode", x0):
            img = self._decode(x0)
        f = self.latent_factor
        want = (x0.shape[0], 3, x0.shape[-2] * f, x0.shape[-1] * f)
        if not isinstance(img, torch.Tensor) or not img.is_floating_point() or tuple(img.shape) != want:
            got = f"{tuple(img.shape)} {img.dtype}" if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"decode must return a floating tensor of shape {want} for the latent "
                             f"{tuple(x0.shape)} and latent_factor {f}, got {got}")
        return img[..., :H, :W].clamp(-1.0, 1.0)

    def state_extent(self, hr: tuple[int, int]) -> tuple[int, int]:
        """The latents that cover the HR image (the rest cover the padding to latent_factor * latent_multiple)."""
        f = self.latent_factor
        return -(-int(hr[0]) // f), -(-int(hr[1]) // f)

    def image_extent(self, cond: LatentCond, shape: torch.Size) -> tuple[int, int]:
        return self.state_extent(cond.size)

    def crop_cond(self, cond: LatentCond, ys: slice, xs: slice) -> LatentCond:
        return LatentCond(cond.c[..., ys, xs], cond.size)

    def attention_to_state(self, A: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A (B, 1, H, W) -> (B, 1, H', W') by max or area pooling of each f x f cell (A padded like the
        image); a latent pixel's value is the max (or mean) of the HR attention it covers."""
        Hs, Ws = int(shape[-2]), int(shape[-1])
        if tuple(A.shape[-2:]) == (Hs, Ws):
            return A
        Ap = self._pad(A)
        if self.pool == "max":
            return F.adaptive_max_pool2d(Ap, (Hs, Ws))
        return F.adaptive_avg_pool2d(Ap, (Hs, Ws))


# diffusers schedulers that are not a discrete VP (DDPM-family) schedule of betas: refused, not misread as one
_NOT_DDPM = ("EDM", "FlowMatch", "ScoreSdeVe", "KarrasVe", "CMStochastic", "LCMScheduler", "TCDScheduler")
_NOT_DDPM_KEYS = ("sigma_data", "shift", "snr")  # EDM, flow matching, score-SDE VE (present only in those configs)
_NOT_DDPM_FLAGS = ("use_dynamic_shifting", "use_flow_sigmas")  # in every DPM-Solver / UniPC config: refused if true
SPACINGS_DIFFUSERS = ("leading", "trailing", "linspace")
_MODEL_KEYS = ("block_out_channels", "in_channels", "latent_channels", "down_block_types")
# the diffusers schedulers (0.42) whose clip_sample defaults to True; the others clip only when told
_CLIPS_BY_DEFAULT = frozenset({"DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "DDPMParallelScheduler",
                               "DDIMParallelScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler",
                               "RePaintScheduler", "UnCLIPScheduler"})


def scheduler_config_dict(config: Any, name: str = "scheduler_config") -> dict:
    """The config of a diffusers scheduler (``scheduler.config``), a scheduler itself, the path of a saved
    scheduler_config.json, or a plain dict, as a dict; anything else is a TypeError naming ``name`` (the argument).
    The config of a scheduler built in code names no _class_name (a saved scheduler_config.json, and a loaded
    scheduler's config, do): for a scheduler object its class is added, as the JSON has it; a bare dict without
    one names no class."""
    what = f"{name} must be a diffusers scheduler's config (scheduler.config), the scheduler, its JSON file or a dict"
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "scheduler_config.json")):
            path = os.path.join(path, "scheduler_config.json")  # (a pipeline's scheduler/ folder)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: scheduler config file not found: {path}")
        try:
            config = json.loads(read_config_text(path, f"{name}:"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: {path} is not valid JSON: {e}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{name}: {path} holds a JSON {type(config).__name__}, not a scheduler config (an object)")
    if hasattr(config, "config") and not isinstance(config, dict):  # an object: a scheduler (diffusers' are all
        # named *Scheduler, a subclass of one too), not a model (a VAE was read as a linear T = 1000 schedule)
        if not any(c.__name__.endswith("Scheduler") for c in type(config).__mro__):
            raise TypeError(f"{what}, got {type(config).__name__}")
        config = {"_class_name": type(config).__name__, **config.config}
    try:
        config = dict(config)
    except (TypeError, ValueError):
        raise TypeError(f"{what}, got {type(config).__name__}") from None
    model_key = next((k for k in _MODEL_KEYS if k in config), None)  # no scheduler has a model's keys
    if model_key is not None:
        raise TypeError(f"{what}, got the config of {config.get('_class_name') or 'a model'} (it has {model_key})")
    return config


def clip_sample_of(config: dict) -> bool:
    """The scheduler config's clip_sample, with diffusers' default where the key is missing: True for the DDPM /
    DDIM family (_CLIPS_BY_DEFAULT; and for a dict that names no class: the keys yoda reads are theirs), False for
    any other named scheduler (Euler, DPM-Solver, DDPMWuerstchen, ...: no clip_sample, or False)."""
    if "clip_sample" in config:
        return bool(config["clip_sample"])
    name = str(config.get("_class_name", ""))
    return not name or name in _CLIPS_BY_DEFAULT


def check_sampling_defaults(s: Any, T: int) -> dict:
    """An adapter's sampling defaults: a dict of "sampler" / "steps" (check_sampling) and "spacing" (SPACINGS, for
    ddpm / ddim; not a DDIM discretisation under ddpm), else a ValueError naming what is wrong."""
    from .card import check_sampling

    if not isinstance(s, dict):
        raise TypeError(f"sampling must be a dict with any of 'sampler', 'steps', 'spacing', got {type(s).__name__}")
    out = check_sampling({k: v for k, v in s.items() if k != "spacing"}, "sampling", T)
    if "spacing" in s:
        spacing, sampler = s["spacing"], out.get("sampler", "ddpm")
        if spacing not in SPACINGS or sampler not in ("ddpm", "ddim") or (sampler == "ddpm" and
                                                                         spacing in FINAL_AT_FIRST):
            raise ValueError(f"sampling: 'spacing' must be one of {SPACINGS} with the sampler ddpm or ddim, and not "
                             f"{FINAL_AT_FIRST} with ddpm; got {dict(s)!r}")
        out["spacing"] = spacing
    return out


# (timestep_spacing, steps_offset (diffusers adds it under "leading" only), whether the last step ends at 1) -> the
# spacing of yoda's that visits what a DDIMScheduler / DDPMScheduler of that config visits (Schedule.respace)
_DIFFUSERS_SPACINGS = {("leading", 0, True): "leading", ("leading", 1, True): "leading_offset",
                       ("leading", 1, False): "sd_leading", ("trailing", 0, True): "trailing",
                       ("trailing", 0, False): "sd_trailing", ("linspace", 0, True): "linspace"}
PIPELINE_STEPS = 50  # diffusers' Stable Diffusion / DDIM pipelines' num_inference_steps


# diffusers' scheduler classes and yoda's solver of the same update (default arguments), named in a warning
_DIFFUSERS_COUNTERPARTS = {"DPMSolverMultistepScheduler": "dpmpp_2m", "EulerDiscreteScheduler": "euler",
                           "EulerAncestralDiscreteScheduler": "euler_a", "HeunDiscreteScheduler": "heun",
                           "KDPM2DiscreteScheduler": "dpm_2", "KDPM2AncestralDiscreteScheduler": "dpm_2_a"}


def sampling_from_diffusers(config: Any, steps: Optional[int] = None) -> dict:
    """yoda.sample's defaults that a diffusers scheduler config names, so that a call naming none samples as the
    pipeline does (README, "diffusers"): the sampler of its class (DDIMScheduler "ddim", DDPMScheduler "ddpm"; other
    classes name none), the spacing whose timesteps that scheduler visits (_DIFFUSERS_SPACINGS: its
    timestep_spacing, steps_offset and, for DDIM, set_alpha_to_one; diffusers' DDPM always ends at a clean image),
    and the steps: ``steps`` (a pipeline's num_inference_steps; for any class), else PIPELINE_STEPS for DDIM (none
    for DDPM: DDPMPipeline's are T), at most what the spacing takes. A config of those two classes reads as
    diffusers reads it (a missing timestep_spacing is "leading", steps_offset 0, set_alpha_to_one True: an older
    saved config has none of them); a combination no spacing of yoda's follows (leading or linspace without
    alpha-to-one, a steps_offset other than 0 or 1 under leading) warns and takes its timestep_spacing's own. A
    config of another class that states no timestep_spacing names no spacing (yoda's default, "trailing")."""
    config = scheduler_config_dict(config)
    name = str(config.get("_class_name", ""))
    sampler = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm"}.get(name)
    if sampler is None and name:  # a call naming no sampler= then samples with DDPM: said, not silent
        like = _DIFFUSERS_COUNTERPARTS.get(name)
        warnings.warn(f"scheduler_config: a {name} names no default sampler of yoda's: a call naming no sampler= "
                      f"samples with DDPM" + (f"; its counterpart is sampler={like!r} (give sigmas= and steps= as "
                                              f"the pipeline's)" if like else ""), stacklevel=3)
    elif not name:  # (DDIMScheduler(...).config: 1000 DDPM steps, without a word)
        warnings.warn("scheduler_config names no scheduler class (the .config of a scheduler built in code has no "
                      "_class_name; the scheduler itself and a saved or loaded config do): a call naming no sampler= "
                      "samples with DDPM" + ("" if steps else " over every step of T") + "; pass the scheduler, or "
                      "name sampler= and steps=", stacklevel=3)
    out = {"sampler": sampler} if sampler else {}
    spacing = config.get("timestep_spacing", "leading" if sampler else None)
    if sampler is not None and spacing in SPACINGS_DIFFUSERS:
        offset = as_int(config.get("steps_offset") or 0, "scheduler_config: steps_offset") if spacing == "leading" \
            else 0
        to_one = sampler == "ddpm" or config.get("set_alpha_to_one", True) is not False
        found = _DIFFUSERS_SPACINGS.get((spacing, offset, to_one))
        if found is None:
            warnings.warn(f"scheduler_config: no spacing of yoda's follows a {name} with timestep_spacing "
                          f"{spacing!r}, steps_offset {offset} and set_alpha_to_one {to_one} (its timesteps and its "
                          f"last step's alpha_bar): a call naming no spacing= takes {spacing!r} (the last step ending "
                          f"at 1)", stacklevel=3)
        spacing = found or spacing
    n = steps if steps is not None else PIPELINE_STEPS if sampler == "ddim" else None
    if n is not None:  # (DDPM: T, as DDPMPipeline; with steps_offset 1 an error, as there)
        T = as_int(config.get("num_train_timesteps", 1000), "scheduler_config: num_train_timesteps")
        top = T - 1 if spacing in LEADING_PLUS_ONE else T
        out["steps"] = max(1, min(n, top))
    if spacing is not None:
        out["spacing"] = spacing
    return out


def schedule_from_diffusers(config: Any) -> Tuple[Schedule, str]:
    """(Schedule, prediction) from a diffusers scheduler config (DDPMScheduler / DDIMScheduler keys:
    num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
    rescale_betas_zero_snr: Schedule.rescale_zero_terminal_snr of the betas, as diffusers applies it).

    Keys that change the model's sampling and that yoda cannot honour are refused: an EDM, flow-matching or
    score-SDE scheduler (not a schedule of betas), thresholding (dynamic thresholding), a clip_sample_range other
    than 1, a timestep_spacing that diffusers does not have. A variance_type other than DDPM's fixed_small warns
    (yoda's DDPM uses fixed_small). Keys that choose among yoda.sample's own options are the caller's:
    timestep_spacing / steps_offset / set_alpha_to_one are ``spacing=`` (README, "diffusers"; sampling_from_diffusers
    reads them for DDIM / DDPM), the sigma discretisations (use_karras_sigmas, use_exponential_sigmas,
    use_beta_sigmas, use_lu_lambdas) ``sigmas=``; clip_sample is read by from_diffusers (clip_sample_of).
    Consistency-distilled schedulers (LCM, TCD) are refused: their sampling is not a DDPM-family one."""
    config = scheduler_config_dict(config)
    name = str(config.get("_class_name", ""))
    if (any(k in name for k in _NOT_DDPM) or any(k in config for k in _NOT_DDPM_KEYS)
            or any(config.get(k) for k in _NOT_DDPM_FLAGS)):
        raise ValueError(f"scheduler_config: {name or 'this scheduler'} is not a discrete DDPM-family schedule of "
                         f"betas (an EDM or flow-matching scheduler); yoda samples VP models (DDPM, DDIM, and the "
                         f"k-diffusion solvers over their sigmas)")
    if config.get("thresholding", False):
        raise ValueError("scheduler_config: thresholding=True (dynamic thresholding) is not supported; yoda.sample "
                         "clips x0 to [-1, 1] with clip=True")
    if clip_sample_of(config) and float(config.get("clip_sample_range", 1.0)) != 1.0:
        raise ValueError(f"scheduler_config: clip_sample_range {config['clip_sample_range']} is not supported "
                         f"(yoda clips x0 to [-1, 1])")
    variance = config.get("variance_type")
    if variance not in (None, "fixed_small", "fixed_small_log"):
        warnings.warn(f"scheduler_config: variance_type {variance!r} is not yoda's: its DDPM samples with the "
                      f"posterior variance (fixed_small); DDIM and the solvers are unaffected", stacklevel=3)
    spacing = config.get("timestep_spacing")
    if spacing is not None and spacing not in SPACINGS_DIFFUSERS:
        raise ValueError(f"scheduler_config: timestep_spacing {spacing!r} is not one of diffusers' "
                         f"{SPACINGS_DIFFUSERS}")
    T = as_int(config.get("num_train_timesteps", 1000), "scheduler_config: num_train_timesteps")
    b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 2e-2))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        if len(config["trained_betas"]) != T:
            raise ValueError(f"scheduler_config: trained_betas has {len(config['trained_betas'])} values but "
                             f"num_train_timesteps is {T}")
        sched = Schedule.from_betas(config["trained_betas"])
    elif kind == "linear":
        sched = Schedule.linear(T, b0, b1)
    elif kind == "scaled_linear":
        sched = Schedule.scaled_linear(T, b0, b1)
    elif kind == "squaredcos_cap_v2":
        sched = Schedule.cosine(T)
    else:
        raise ValueError(f"scheduler_config: beta_schedule {kind!r} is not supported "
                         "(linear, scaled_linear, squaredcos_cap_v2, or trained_betas)")
    if config.get("rescale_betas_zero_snr", False):
        sched = sched.rescale_zero_terminal_snr()
    pred = DIFFUSERS_PREDICTIONS.get(config.get("prediction_type", "epsilon"))
    if pred is None:
        raise ValueError(f"scheduler_config: prediction_type {config.get('prediction_type')!r} is not supported")
    return sched, pred


_upcasts_lock = threading.Lock()
_upcasts: dict = {}  # id(vae) -> [callers inside vae_upcast, whether the first one cast it up]


@contextlib.contextmanager
def vae_upcast(vae: Any):
    """diffusers' force_upcast: an fp16 VAE whose config says it overflows in fp16 (SD's, SDXL's, the x4
    upscaler's) runs in float32 for the call, as the pipelines upcast it, and goes back to fp16 after. Threads
    that share the VAE share the upcast: the first one in casts it up, the last one out casts it back."""
    with _upcasts_lock:
        entry = _upcasts.get(id(vae))
        if entry is None:
            up = (vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
                  and not getattr(vae, "is_quantized", False))  # (diffusers refuses to cast a quantized one)
            if up:  # outside yoda.sample's inference mode: its weights would stay inference tensors for good
                with torch.inference_mode(False), torch.no_grad():
                    _cast(vae, torch.float32)
            entry = _upcasts[id(vae)] = [0, up]
        entry[0] += 1
    try:
        yield
    finally:
        with _upcasts_lock:
            entry[0] -= 1
            if entry[0] == 0:
                del _upcasts[id(vae)]
                if entry[1]:
                    with torch.inference_mode(False), torch.no_grad():
                        _cast(vae, torch.float16)


def _cast(vae: Any, dtype: torch.dtype) -> None:
    """vae's floating weights cast to ``dtype`` by torch's Module.to: diffusers' own (ModelMixin.to) logs "There
    are modules in AutoencoderKL that should be kept in float32" at every cast, four times a sampling call."""
    (torch.nn.Module.to if isinstance(vae, torch.nn.Module) else type(vae).to)(vae, dtype)


class VAECodec:
    """encode / decode of a diffusers AutoencoderKL as diffusers' pipelines use it: encode(x) = the latent
    distribution's mean (or, ``sample_latent``, a draw from a CPU generator seeded with ``latent_seed`` at every
    call: the same image gives the same latent, and torch's global RNG is left alone), then (z - shift_factor) *
    scaling_factor, or with the config's latents_mean / latents_std (z - mean) * scaling_factor / std; decode
    inverts that and decodes. The VAE runs in its parameters' dtype (vae_upcast for fp16 with force_upcast), the
    results in the caller's. An object, not closures: an adapter holding its methods pickles (a spawned worker)."""

    def __init__(self, vae: Any, sample_latent: bool = False, latent_seed: int = 0):
        C = int(vae.config.latent_channels)
        self.vae, self.sample_latent, self.latent_seed = vae, sample_latent, latent_seed
        self.sf = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)  # SD3 / Flux VAEs: (z - shift) * sf
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if (mean is None) != (std is None):
            raise ValueError("vae: latents_mean and latents_std come together (or neither)")
        self.stats = None if mean is None else [torch.tensor(v, dtype=torch.float32).view(1, C, 1, 1)
                                                for v in (mean, std)]

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        if self.stats is not None:
            return (z - self.stats[0].to(z)) * self.sf / self.stats[1].to(z)
        return (z - self.shift) * self.sf

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        if self.stats is not None:
            return z * self.stats[1].to(z) / self.sf + self.stats[0].to(z)
        return z / self.sf + self.shift

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with vae_upcast(vae):
            dist = vae.encode(x.to(vae.dtype)).latent_dist
            z = (dist.sample(generator=torch.Generator().manual_seed(self.latent_seed)) if self.sample_latent
                 else dist.mode())
            return self.to_latent(z.to(x.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        with vae_upcast(vae):
            return vae.decode(self.from_latent(z).to(vae.dtype)).sample.to(z.dtype)


def lr_on_grid(lr: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """The LR pixels on a latent grid at the LR's own size (SD x4 upscaler, LDM-SR): padded (replicate) at the
    bottom and right to ``grid``, as the image is padded before it is encoded."""
    h, w = grid
    return F.pad(lr, (0, w - lr.shape[-1], 0, h - lr.shape[-2]), mode="replicate")


def overridden_denoise(*args):  # pragma: no cover - LatentAdapter's denoise callable of a subclass that overrides
    raise AssertionError       # denoise (SDUpscalerAdapter, LDMSRAdapter)


class CatUNet:
    """denoise(z, t, c) = unet(cat(z, c), t).sample in the UNet's parameters' dtype (fp16 / bf16 weights take the
    float32 state), its output in the state's; an object, so that the adapter pickles."""

    def __init__(self, unet: Any):
        self.unet = unet

    def __call__(self, z: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        return unet(torch.cat([z, c.to(z.dtype)], dim=1).to(unet.dtype), t).sample.to(z.dtype)


def from_diffusers(unet: Any, vae: Any, scheduler_config: Any, *, scale: int = 4,
                   stage1: Optional[Callable] = None, pool: str = "max", sample_latent: bool = False,
                   latent_seed: int = 0) -> LatentAdapter:
    """LatentAdapter for a diffusers ``UNet2DModel`` (in_channels = 2 * latent channels: the input is
    cat(z_t, c), c the VAE encoding of the upsampled or stage-1 image) and ``AutoencoderKL``: encode(x) =
    vae.encode(x).latent_dist.mode() * scaling_factor (the mean, so that c is deterministic; ``sample_latent``
    draws instead, from a CPU generator seeded with ``latent_seed``), decode(z) = vae.decode(z /
    scaling_factor).sample. latent_factor = 2 ** (len(vae block_out_channels) - 1). Only such a model loads here:
    LDM-SR (a VQModel, conditioned on the LR pixels) is LDMSRAdapter, the SD x4 upscaler (a UNet2DConditionModel
    with text and noise-level conditioning on cat(z_t, LR pixels)) SDUpscalerAdapter.

    The VAE's shift_factor (SD3 / Flux) or latents_mean / latents_std are applied as diffusers' pipelines apply
    them; the scheduler config's clip_sample becomes the adapter's clip_x0 (x0 clipped to [-1, 1]), its class and
    timestep_spacing yoda.sample's default sampler and spacing (sampling_from_diffusers); weights in
    fp16 / bf16 take the float32 state (inputs cast to their dtype, results cast back)."""
    from diffusers import AutoencoderKL, UNet2DModel  # optional dependency, imported on use

    if not isinstance(unet, UNet2DModel):
        hint = (" (the SD x4 upscaler's UNet2DConditionModel, text- and noise-level-conditioned on the LR pixels, is "
                "not this form: yoda.models.SDUpscalerAdapter takes it)"
                if type(unet).__name__ == "UNet2DConditionModel" else pipeline_hint(unet))
        raise TypeError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}{hint}")
    if not isinstance(vae, AutoencoderKL):
        hint = " (LDM-SR's UNet and VQ model: yoda.models.LDMSRAdapter)" if type(vae).__name__ == "VQModel" else ""
        raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}{hint}")
    if int(vae.config.in_channels) != 3 or int(vae.config.out_channels) != 3:
        raise ValueError(f"vae: in_channels and out_channels must be 3 (an RGB image), got {vae.config.in_channels} "
                         f"/ {vae.config.out_channels}")
    C = int(vae.config.latent_channels)
    if int(unet.config.in_channels) != 2 * C or int(unet.config.out_channels) != C:
        raise ValueError(f"unet: in_channels must be 2 * latent_channels = {2 * C} (cat(z_t, c)) and out_channels "
                         f"{C}, got {unet.config.in_channels} / {unet.config.out_channels}")
    config = scheduler_config_dict(scheduler_config)
    sched, pred = schedule_from_diffusers(config)
    latent_seed = as_int(latent_seed, "latent_seed")  # Python / numpy ints, as yoda.sample's seed
    if not 0 <= latent_seed < 2**64:
        raise ValueError(f"latent_seed must be in [0, 2**64 - 1] (a torch.Generator seed), got {latent_seed}")
    codec = VAECodec(vae, sample_latent, latent_seed)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    m = 2 ** (len(unet.config.down_block_types) - 1)

    return LatentAdapter(codec.encode, codec.decode, CatUNet(unet), sched, prediction=pred, scale=scale, stage1=stage1,
                         latent_factor=f, pool=pool, latent_multiple=m, clip_x0=clip_sample_of(config),
                         modules=(unet, vae), sampling=sampling_from_diffusers(config))
