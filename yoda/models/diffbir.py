"""DiffBIR (Lin et al. 2024) behind the YODA sampler, over DiffBIR's own objects (DESIGN.md §6).

yoda does not vendor DiffBIR and never imports it: :class:`DiffBIRAdapter` is duck-typed over the ``ControlLDM``
and ``Diffusion`` a user builds from a DiffBIR checkout (``diffbir/model/cldm.py``, ``gaussian_diffusion.py``).
What it uses of them:

    cldm.prepare_condition(img01, prompts, tiled, tile_size) -> {"c_img": latent, "c_txt": ..., ...}
    cldm(x_t, t, cond)                  the ControlNet + UNet forward (eps or v: ``diffusion.parameterization``)
    cldm.vae_decode(z, tiled, tile_size) -> image in [-1, 1]
    cldm.control_scales                 (only with strength=) the ControlNet strength, set for each call
    diffusion.betas                     the training betas (T,); diffusion.parameterization "eps" | "x0" | "v"

What it does with them, as DiffBIR's ``Pipeline.apply_cldm`` does:

    img = stage-1 cleaned image (B, 3, s*h, s*w) in [0, 1]    (stage1= tensor or callable; default bicubic up(lr))
    img -> enlarged (bicubic) to a shorter side of enlarge_to (512) when it is below, as resize_short_edge_to
    img -> zero-padded to multiples of pad_multiple (64; 8 with a tiled VAE encoder)
    cond   = cldm.prepare_condition(img, [pos_prompt] * B)     c = cond["c_img"]: the LR in the latent space
    uncond = cldm.prepare_condition(img, [neg_prompt] * B)     only when guiding (cfg_scale != 1)
    c_img  -> zero-padded to multiples of latent_multiple (8)
    denoise: cldm(x_t, t, cond), guided with uncond: out = u + w (c - u) (yoda.adapters.guided_call); w is
             cfg_scale, or with rescale_cfg=True DiffBIR's ramp w(t) = 1 + cfg_scale (1 - cos(pi ((1000 - t) /
             1000) ** 5)) / 2 (for cfg_scale > 1); guidance_rescale (phi, Lin et al. 2024 §3.4) optional
    decode: cldm.vae_decode(z cropped to the unpadded latent) cropped to img's size; color_fix= optional; resized
            back to (s*h, s*w) when img was enlarged
    A -> latent grid: max pooling over latent_factor x latent_factor cells (A replicate-padded to the padded image's size)

The samplers: ``spacing="idpm"`` with sampler="ddpm" is DiffBIR's SpacedSampler; ``spacing="ldm_uniform"`` with
sampler="ddim" its DDIMSampler (eta 0 in DiffBIR's pipeline). With lower_bound >= 1 and the same noise yoda.sample
gives their latents (tests/test_diffbir.py checks this against a re-implementation of both loops).

DiffBIR v2.1 (its default version) has a zero-terminal-SNR schedule (``zero_snr: True``, v-prediction: the last beta
is exactly 1, alpha_bar[T-1] = 0): yoda's Schedule and step coefficients take it for v / x0 models, and both
samplers above equal DiffBIR's for it (its SpacedSampler's first step at alpha_bar = 0 is finite for v; its
DDIMSampler visits index T-1 only for 334 <= steps <= 500 on T = 1000, where DiffBIR divides 0 by 0 and yoda takes
the finite v step). An eps model cannot take the step at alpha_bar = 0: yoda.sample refuses it naming prediction.

DiffBIR's EDM samplers (``--sampler edm_*``; its default is ``edm_dpm++_3m_sde``, 10 steps, cfg_scale 6, eta and
s_noise 1) are yoda's sigma-space solvers (yoda.sampling.solvers) with this adapter's solver defaults
``sigmas="diffbir"`` (EDMSampler.make_schedule: the discrete sigmas at linspace(T - 1, 0, steps, endpoint=False)
truncated to int, the first at alpha_bar = 1e-8, sigma ~ 1e4, on every version) and ``timesteps="visited"``
(DiffBIR calls the ControlLDM at the int64 timestep of the visited sigma nearest in absolute value, also for the
midpoint calls of dpm_2 / dpm_2_a / dpm++_2s_a): so
``yoda.sample(adapter, lr, sampler="dpmpp_3m_sde", steps=10, cfg_scale=6.0)`` is DiffBIR's default sampler, given
DiffBIR's prompts as pos_prompt / neg_prompt (its inference.py's defaults; with the adapter's default of two empty
prompts the guidance has nothing to tell apart, and prepare warns). DiffBIR
applies the guidance to the denoised x0 estimates, yoda to the model outputs: the same, since x0 is affine in the
output with the same weights for both branches. The start is x_T everywhere (DiffBIR's x_T * sqrt(1 + sigma_0**2)
in k-diffusion's space); DiffBIR's SDE noise comes from a torchsde Brownian tree, whose increments have the law
of yoda's independent normals (not the same draws).

Not covered: ``noise_aug``, ``start_point_type="cond"`` and the guidance (``cond_fn``) of DiffBIR's pipeline, and
its EDM solvers yoda has no counterpart of (lms, dpm++_sde) or s_churn > 0. Its dpm++_2s_a is yoda's dpmpp_2s_a.
"""

from __future__ import annotations

import copy
import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union
from types import MappingProxyType

import torch
import torch.nn.functional as F

from yoda_kernels.contract import PREDICTIONS

from ..adapters import Adapter, Prepared, check_cfg_scale, guided_call, upsample
from ..sampling import solvers as S
from ..schedule import Schedule

__all__ = ["DiffBIRAdapter", "DiffBIRCond", "diffbir_cfg_scale"]

RAMP_T = 1000  # DiffBIR's rescale_cfg ramp divides by this literal, not by the schedule's T


class DiffBIRCond(NamedTuple):
    cond: dict  # cldm.prepare_condition(img, [pos_prompt] * B), c_img padded to latent_multiple
    uncond: Optional[dict]  # the same with neg_prompt; None without guidance
    size: Tuple[int, int]  # (H, W) = (s*h, s*w), the SR size
    latent_size: Tuple[int, int]  # c_img's size before the latent padding (DiffBIR's h1, w1)
    image: Optional[torch.Tensor]  # the stage-1 image at work_size in [0, 1] for color_fix; None in windows
    work_size: Tuple[int, int]  # the size it is sampled at: (H, W), or enlarged to enlarge_to (_work_size)


def diffbir_cfg_scale(cfg_scale: float, t: float, rescale_cfg: bool) -> float:
    """DiffBIR's guidance scale at training index t (Sampler.get_cfg_scale): cfg_scale, or with rescale_cfg and
    cfg_scale > 1 the ramp 1 + cfg_scale * (1 - cos(pi * ((1000 - t) / 1000) ** 5)) / 2 (from ~1 at t = 999 to
    1 + cfg_scale at t = 0)."""
    if rescale_cfg and cfg_scale > 1:
        return 1 + cfg_scale * ((1 - math.cos(math.pi * ((RAMP_T - t) / RAMP_T) ** 5.0)) / 2)
    return cfg_scale


def _need_method(obj: Any, name: str, arg: str, what: str) -> None:
    if not callable(getattr(obj, name, None)):
        raise TypeError(f"{arg} must have a {name}() method ({what}); {type(obj).__name__} has none")


def _work_size(H: int, W: int, enlarge_to: Optional[int]) -> Tuple[int, int]:
    """The size DiffBIR's pipeline samples an (H, W) stage-1 image at: its shorter side enlarged to enlarge_to
    when below it, the longer side in proportion, truncated (its resize_short_edge_to: a square one is made
    enlarge_to square, not truncated); else (H, W)."""
    if not enlarge_to or min(H, W) >= enlarge_to:
        return H, W
    if H == W:
        return enlarge_to, enlarge_to
    if H <= W:
        return enlarge_to, int(W * (enlarge_to / H))
    return int(H * (enlarge_to / W)), enlarge_to


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """DiffBIR's resize of images (F.interpolate, bicubic, antialias=True), in float32 whatever x's dtype."""
    return F.interpolate(x.float(), size=size, mode="bicubic", antialias=True).to(x.dtype)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero padding at the bottom and right to multiples of ``multiple`` (DiffBIR's pad_to_multiples_of)."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="constant", value=0.0) if (ph or pw) else x


def _weights_dtype(module: Any) -> Optional[torch.dtype]:
    """The dtype of a module's first parameter; None for a parameterless module or another callable."""
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.dtype
    return None


class DiffBIRAdapter(Adapter):
    """Adapter over DiffBIR's ``ControlLDM`` (``cldm``) and ``Diffusion`` (``diffusion``); see the module docstring.

    stage1: the stage-1 cleaned image that conditions the ControlNet, in DiffBIR's [0, 1] range at the SR size
        (B, 3, s*h, s*w): a tensor (batch 1 is broadcast), or a callable stage1(lq) -> that tensor called with the
        LR image in [0, 1] (B, 3, h, w), e.g. DiffBIR's cleaner followed by a resize to the SR size, in float32
        (DiffBIR keeps its stage-1 network there) or, for a torch module, in its weights' dtype, whatever lr's.
        None: the bicubic up(lr) (no stage 1).
    scale: SR factor s. cfg_scale: guidance scale w (1: none, one pass). rescale_cfg: DiffBIR's ramp of w over t.
    guidance_rescale: phi of Lin et al. 2024 §3.4 (diffusers' guidance_rescale; not in DiffBIR), 0 = off.
    pos_prompt, neg_prompt: the prompts of cond and uncond. cfg_batch: cond and uncond in one call of batch 2B
        (DiffBIR's DDIMSampler) or two calls of batch B (its SpacedSampler; half the activation memory).
    strength: the ControlNet strength (cldm.control_scales = [strength] * n during each call); None: as set.
    pad_multiple, latent_multiple: the image and its latent are zero-padded to these multiples (DiffBIR: 64 and
        8; pad_multiple None is DiffBIR's rule for its VAE encoder: 64, or latent_factor when the encoder is
        tiled; when its denoiser is tiled, DiffBIR pads the image to 8 and leaves the latent unpadded, which
        yoda's windows= cannot tell the adapter: pass pad_multiple=8, latent_multiple=1 to match that); the state
        is the padded latent, the SR image is cropped back.
    latent_factor: the VAE's downsampling (8); c's size must be the padded image's over it.
    enlarge_to: as DiffBIR's pipeline, a stage-1 image whose shorter side is below enlarge_to (512, what Stable
        Diffusion was trained at) is enlarged to it (bicubic with antialias, the longer side in proportion), sampled
        at that size, and the result resized back to the SR size; the attention map is resized with it. None: sample
        at the SR size whatever it is. (DiffBIR v2.1 enlarges the bicubic image before SwinIR, v2 BSRNet's output:
        here it is stage 1's output.)
    encoder_tile, decoder_tile: tiled VAE encoding / decoding with tiles of this many pixels (DiffBIR's
        --vae_encoder_tile_size / --vae_decoder_tile_size); None: whole image. As DiffBIR's pipeline, an image
        (padded) or latent (unpadded) smaller than the tile in either side is encoded / decoded whole.
    color_fix: optional f(sr01, stage1_image01) -> sr01 applied after decoding, e.g. DiffBIR's
        ``diffbir.utils.common.wavelet_reconstruction`` (its pipeline always applies it).
    prediction: overrides diffusion.parameterization (DiffBIR's own samplers treat any non-"eps" as "v").
    sigmas, timesteps: yoda.sample's defaults for the sigma-space solvers with this adapter (its sigmas= /
        timesteps= of None): "diffbir" and "visited" are DiffBIR's EDM sampler (module docstring); e.g. "karras" /
        "interpolate" for k-diffusion's.

    yoda.sample(adapter, lr) without sampler= / steps= samples as DiffBIR's inference.py does by default
    (``--sampler edm_dpm++_3m_sde --steps 10``): sampler "dpmpp_3m_sde", 10 steps (``sampling_defaults``).
    """

    supports_cfg = True
    # DiffBIR's inference.py defaults (v2.1); its cfg_scale 6 needs its prompts, which are the user's (cfg_scale=)
    sampling_defaults = MappingProxyType({"sampler": "dpmpp_3m_sde", "steps": 10})

    def __init__(
        self,
        cldm: Any,
        diffusion: Any,
        *,
        stage1: Union[None, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] = None,
        scale: int = 4,
        cfg_scale: float = 1.0,
        rescale_cfg: bool = False,
        guidance_rescale: float = 0.0,
        pos_prompt: str = "",
        neg_prompt: str = "",
        cfg_batch: bool = True,
        strength: Optional[float] = None,
        pad_multiple: Optional[int] = None,
        latent_multiple: int = 8,
        latent_factor: int = 8,
        enlarge_to: Optional[int] = 512,
        encoder_tile: Optional[int] = None,
        decoder_tile: Optional[int] = None,
        color_fix: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        prediction: Optional[str] = None,
        sigmas: str = "diffbir",
        timesteps: str = "visited",
    ) -> None:
        if not callable(cldm):
            raise TypeError(f"cldm must be callable as cldm(x_t, t, cond) (DiffBIR's ControlLDM.forward); "
                            f"{type(cldm).__name__} is not")
        _need_method(cldm, "prepare_condition", "cldm", "DiffBIR's ControlLDM: the condition image and prompts")
        _need_method(cldm, "vae_decode", "cldm", "DiffBIR's ControlLDM: latent -> image")
        if strength is not None:
            if not isinstance(getattr(cldm, "control_scales", None), list):
                raise TypeError(f"strength= needs cldm.control_scales (a list, as DiffBIR's ControlLDM has); "
                                f"{type(cldm).__name__} has none")
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
                raise ValueError(f"strength must be a finite float or None, got {strength!r}")
        self.schedule, self.prediction = self._read_diffusion(diffusion, prediction)
        if pad_multiple is None:  # DiffBIR's Pipeline.apply_cldm: 64, or 8 (the VAE's factor) when tiling
            pad_multiple = 64 if encoder_tile is None else latent_factor
        for name, v in (("scale", scale), ("pad_multiple", pad_multiple), ("latent_multiple", latent_multiple),
                        ("latent_factor", latent_factor)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pad_multiple % latent_factor:
            raise ValueError(f"pad_multiple ({pad_multiple}) must be a multiple of latent_factor ({latent_factor})")
        for name, v in (("encoder_tile", encoder_tile), ("decoder_tile", decoder_tile)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % latent_factor):
                raise ValueError(f"{name} must be None or a positive multiple of {latent_factor}, got {v!r}")
        if enlarge_to is not None and (isinstance(enlarge_to, bool) or not isinstance(enlarge_to, int)
                                       or enlarge_to < 1):
            raise ValueError(f"enlarge_to must be None or a positive int, got {enlarge_to!r}")
        if stage1 is not None and not (isinstance(stage1, torch.Tensor) or callable(stage1)):
            raise TypeError(f"stage1 must be None, a tensor or a callable, got {type(stage1).__name__}")
        if color_fix is not None and not callable(color_fix):
            raise TypeError(f"color_fix must be None or a callable, got {type(color_fix).__name__}")
        for name, v in (("pos_prompt", pos_prompt), ("neg_prompt", neg_prompt)):
            if not isinstance(v, str):
                raise TypeError(f"{name} must be a str, got {type(v).__name__}")
        for name, v in (("rescale_cfg", rescale_cfg), ("cfg_batch", cfg_batch)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
        if not isinstance(sigmas, str) or sigmas not in S.SIGMA_SCHEDULES:
            raise ValueError(f"sigmas must be one of {S.SIGMA_SCHEDULES} (the solvers' default with this adapter; "
                             f"yoda.sample(sigmas=...) takes explicit noise levels), got {sigmas!r}")
        if not isinstance(timesteps, str) or timesteps not in S.TIMESTEPS:
            raise ValueError(f"timesteps must be one of {S.TIMESTEPS}, got {timesteps!r}")
        phi = check_cfg_scale(guidance_rescale, "guidance_rescale")
        if phi > 1:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
        self.cldm = cldm  # prepare_condition, vae_decode, control_scales
        self.net = cldm  # the denoiser call cldm(x_t, t, cond); yoda.sampling.speed may wrap this one
        self.cfg_scale = check_cfg_scale(cfg_scale)
        self.rescale_cfg, self.guidance_rescale, self.cfg_batch = rescale_cfg, phi, cfg_batch
        self.pos_prompt, self.neg_prompt, self.strength = pos_prompt, neg_prompt, strength
        self.stage1, self.color_fix, self.scale = stage1, color_fix, scale
        self.pad_multiple, self.latent_multiple, self.latent_factor = pad_multiple, latent_multiple, latent_factor
        self.encoder_tile, self.decoder_tile, self.enlarge_to = encoder_tile, decoder_tile, enlarge_to
        self.solver_sigmas, self.solver_timesteps = sigmas, timesteps  # read by yoda.sample for the solvers
        self.clip_x0 = False  # latents are not bounded; DiffBIR's samplers do not clip
        self.multiple = 1  # any size: the image is padded
        mult = getattr(getattr(cldm, "unet", None), "channel_mult", None)  # ldm's UNetModel halves len - 1 times
        self.denoiser_multiple = 2 ** (len(mult) - 1) if isinstance(mult, (list, tuple)) and mult else 1

    @staticmethod
    def _read_diffusion(diffusion: Any, prediction: Optional[str]) -> Tuple[Schedule, str]:
        betas = getattr(diffusion, "betas", None)
        if betas is None:
            raise TypeError(f"diffusion must have betas (DiffBIR's Diffusion: the training betas, shape (T,)); "
                            f"{type(diffusion).__name__} has none")
        pred = prediction if prediction is not None else getattr(diffusion, "parameterization", None)
        if pred is None:
            raise TypeError(f"diffusion must have parameterization ('eps', 'x0' or 'v', as DiffBIR's Diffusion), "
                            f"or pass prediction=; {type(diffusion).__name__} has none")
        if pred not in PREDICTIONS:
            raise ValueError(f"diffusion.parameterization / prediction must be one of {PREDICTIONS}, got {pred!r}")
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        try:  # v2.1's zero_snr=True ends the betas at exactly 1 (alpha_bar[T-1] = 0): a valid Schedule
            return Schedule.from_betas(b), pred
        except (TypeError, ValueError) as e:
            raise ValueError(f"diffusion.betas: {e}") from e

    # -- guidance ----------------------------------------------------------------------------------------------
    def with_cfg_scale(self, scale: float) -> "DiffBIRAdapter":
        new = copy.copy(self)
        new.cfg_scale = check_cfg_scale(scale)
        return new

    @property
    def guided(self) -> bool:
        """Whether prepare makes the unconditional branch (the scale can differ from 1 at some step)."""
        return self.cfg_scale != 1.0

    @property
    def activation_scale(self) -> int:  # Adapter.activation_scale
        return self.latent_factor ** 2 * (2 if self.guided and self.cfg_batch else 1)

    def scale_at(self, t: float) -> float:
        """The guidance scale at timestep t (an int for ddpm / ddim and timesteps="nearest" / "visited", else
        fractional)."""
        return diffbir_cfg_scale(self.cfg_scale, t, self.rescale_cfg)

    # -- the contract ------------------------------------------------------------------------------------------
    def device(self) -> Optional[torch.device]:
        if isinstance(self.cldm, torch.nn.Module):
            for p in self.cldm.parameters():
                return p.device
        return None

    def _stage1_image(self, lr: torch.Tensor) -> torch.Tensor:
        B, _, h, w = lr.shape
        want = (B, 3, h * self.scale, w * self.scale)
        if self.stage1 is None:
            img = (upsample(lr, self.scale) + 1) / 2
        else:
            if isinstance(self.stage1, torch.Tensor):
                img, src = self.stage1, "stage1"
                if img.dim() == 4 and img.shape[0] == 1 and B > 1:
                    img = img.expand(B, *img.shape[1:])
            else:  # in float32 (DiffBIR keeps SwinIR there) or a stage-1 module's own dtype, whatever the state's
                img, src = self.stage1(((lr + 1) / 2).to(_weights_dtype(self.stage1) or torch.float32)), "stage1(lq)"
            if not isinstance(img, torch.Tensor) or tuple(img.shape) != want:
                got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"{src} must be the stage-1 image at the SR size {want} in [0, 1], got {got}")
            # one device sync for both checks: a NaN or an Inf shows in the extremes
            lo, hi = (float(v) for v in torch.aminmax(img.detach())) if img.is_floating_point() else (math.nan,) * 2
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{src} must be a finite float tensor in [0, 1]")
            # a [-1, 1] image is refused (it ran on without a word, 0.25 off); a restorer's or a bicubic resize's
            if lo < -0.5 or hi > 1.5:  # overshoot (up to ~0.19) is not
                raise ValueError(f"{src} must be in [0, 1] (DiffBIR's convention), got values in [{lo:.3g}, {hi:.3g}]"
                                 f": a [-1, 1] image becomes (x + 1) / 2")
        return img.to(device=lr.device, dtype=self._vae_dtype(lr.dtype))

    def _vae_dtype(self, default: torch.dtype) -> torch.dtype:
        """The dtype the VAE takes: its weights' (DiffBIR keeps the VAE in float32 when it casts the UNet and the
        ControlNet to fp16 / bf16, ControlLDM.cast_dtype), else the cldm's, else ``default``."""
        return _weights_dtype(getattr(self.cldm, "vae", None)) or _weights_dtype(self.cldm) or default

    def _condition(self, img: torch.Tensor, prompt: str) -> dict:
        B = img.shape[0]
        tiled = self.encoder_tile is not None and min(img.shape[-2:]) >= self.encoder_tile
        cond = self.cldm.prepare_condition(img, [prompt] * B, tiled, self.encoder_tile if tiled else -1)
        c = cond.get("c_img") if isinstance(cond, dict) else None
        f = self.latent_factor
        want = (B, img.shape[-2] // f, img.shape[-1] // f)
        if not isinstance(c, torch.Tensor) or c.dim() != 4 or (c.shape[0], c.shape[2], c.shape[3]) != want:
            got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(cond).__name__
            raise ValueError(f"cldm.prepare_condition must return a dict with 'c_img' of shape (B, C, {want[1]}, "
                             f"{want[2]}) for a {img.shape[-2]}x{img.shape[-1]} image (latent_factor {f}), got {got}")
        cond = dict(cond)
        cond["c_img"] = _pad_to(c, self.latent_multiple)
        return cond

    def prepare(self, lr: torch.Tensor) -> Prepared:
        if self.guided and self.pos_prompt == self.neg_prompt:
            warnings.warn(f"cfg_scale {self.cfg_scale:g} has no effect: pos_prompt and neg_prompt are the same "
                          f"({self.pos_prompt!r}), so the two branches agree and each step runs the model twice for "
                          "nothing; give DiffBIR's prompts (its inference.py's defaults) or cfg_scale 1",
                          UserWarning, stacklevel=4)
        img = self._stage1_image(lr)
        size = (int(img.shape[-2]), int(img.shape[-1]))
        work = _work_size(*size, self.enlarge_to)
        if work != size:
            img = _resize(img, work)
        padded = _pad_to(img, self.pad_multiple)
        cond = self._condition(padded, self.pos_prompt)
        uncond = self._condition(padded, self.neg_prompt) if self.guided else None
        f = self.latent_factor
        latent_size = (padded.shape[-2] // f, padded.shape[-1] // f)
        return Prepared(c=cond["c_img"], cond=DiffBIRCond(cond, uncond, size, latent_size,
                                                          img if self.color_fix is not None else None, work))

    def state_grid(self, hr: tuple[int, int]) -> tuple[int, int]:
        """The latent grid of prepare for a stage-1 image of the HR size: enlarged (enlarge_to), zero-padded to
        multiples of pad_multiple, over latent_factor, padded to multiples of latent_multiple."""
        work = _work_size(int(hr[0]), int(hr[1]), self.enlarge_to)
        return tuple(_round_up(_round_up(n, self.pad_multiple) // self.latent_factor, self.latent_multiple)
                     for n in work)

    @contextmanager
    def _control_strength(self):
        if self.strength is None:
            yield
            return
        saved = self.cldm.control_scales
        self.cldm.control_scales = [float(self.strength)] * len(saved)
        try:
            yield
        finally:
            self.cldm.control_scales = saved

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: Any, cond: DiffBIRCond) -> torch.Tensor:
        w = self.scale_at(t[0].item())  # DiffBIR: all samples of a batch share the timestep
        with self._control_strength():
            out = guided_call(self.net, x_t, t, cond.cond, cond.uncond, w, rescale=self.guidance_rescale,
                              batched=self.cfg_batch)
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            raise ValueError(f"cldm(x_t, t, cond) returned {getattr(out, 'shape', type(out).__name__)}, expected the "
                             f"state's shape {tuple(x_t.shape)}")
        return out.to(x_t.dtype)

    def decode(self, x0: torch.Tensor, lr: torch.Tensor, cond: DiffBIRCond) -> torch.Tensor:
        h1, w1 = cond.latent_size
        H, W = cond.work_size
        tiled = self.decoder_tile is not None and min(h1, w1) >= self.decoder_tile // self.latent_factor
        img = self.cldm.vae_decode(x0[..., :h1, :w1].to(self._vae_dtype(x0.dtype)), tiled,
                                   self.decoder_tile // self.latent_factor if tiled else -1)
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[-2] < H or img.shape[-1] < W:
            raise ValueError(f"cldm.vae_decode returned {getattr(img, 'shape', type(img).__name__)}, expected an "
                             f"image of at least {H}x{W}")
        img = img[..., :H, :W].to(x0.dtype)
        if self.color_fix is not None:
            img = self.color_fix((img + 1) / 2, cond.image.to(img.dtype)) * 2 - 1
        if cond.work_size != cond.size:
            img = _resize(img, cond.size)
        return img.clamp(-1.0, 1.0)

    def attention_to_state(self, A: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """A (B, 1, H, W) -> (B, 1, H', W'): replicate-padded to the padded image and max-pooled over each
        latent_factor x latent_factor cell, so a latent pixel is active as soon as any HR pixel it covers is; first
        resized bilinearly to the size the image is sampled at when enlarge_to enlarges it."""
        work = _work_size(int(A.shape[-2]), int(A.shape[-1]), self.enlarge_to)
        if work != tuple(A.shape[-2:]):
            A = F.interpolate(A, size=work, mode="bilinear", align_corners=False)
        Hs, Ws = int(shape[-2]), int(shape[-1])
        f = self.latent_factor
        ph, pw = Hs * f - A.shape[-2], Ws * f - A.shape[-1]
        if ph < 0 or pw < 0:
            raise ValueError(f"attention of size {tuple(A.shape[-2:])} is larger than the latent grid {Hs}x{Ws} "
                             f"times latent_factor {f}")
        Ap = F.pad(A, (0, pw, 0, ph), mode="replicate") if (ph or pw) else A
        return F.max_pool2d(Ap, kernel_size=f, stride=f)

    def state_extent(self, hr: tuple[int, int]) -> tuple[int, int]:
        """The latents that cover the image at its work size (the rest cover the padding to pad_multiple)."""
        f = self.latent_factor
        return tuple(-(-n // f) for n in _work_size(int(hr[0]), int(hr[1]), self.enlarge_to))

    def image_extent(self, cond: DiffBIRCond, shape: torch.Size) -> tuple[int, int]:
        return self.state_extent(cond.size)

    def crop_cond(self, cond: DiffBIRCond, ys: slice, xs: slice) -> DiffBIRCond:
        """c_img cropped to the window, the other entries (c_txt) kept, as DiffBIR's tiled sampling does."""
        def crop(d: Optional[dict]) -> Optional[dict]:
            return None if d is None else {**d, "c_img": d["c_img"][..., ys, xs]}

        return cond._replace(cond=crop(cond.cond), uncond=crop(cond.uncond), image=None)
