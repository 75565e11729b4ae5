"""Training with YODA masks (DESIGN.md §7) and a small trainer.

The loss, for a batch of HR crops and their LR images:

    idx ~ U{0, ..., T-1}                       (0-based; DESIGN's t = idx + 1)
    sqrt_ab ~ U[sqrt(ab[idx]), sqrt(ab[idx-1])] continuous, SR3-style (ab[-1] := 1), or sqrt(ab[idx])
    noise ~ N(0, I)
    x_t = sqrt_ab * (x0 where A >= tau else c) + sqrt(1 - sqrt_ab^2) * noise,  tau = (idx + 1) / T - l
    pred = model(x_t, noise level)             eps or x0 parameterisation
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

import copy
import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import data as _data
from ._io import atomic_write
from .images import quantize_u8
from .masks import check_lower_bound

SPACES = ("pixel", "residual")
LOSSES = ("l1", "l2")
TARGETS = ("eps", "x0")
NOISE_LEVELS = ("continuous", "discrete")


# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------
def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class LossConfig:
    """The training loss. With mask_input = mask_loss = False it is the base model's own loss."""

    space: str = "pixel"  # "pixel" (SR3: c = up(lr)) | "residual" (SRDiff: x0 = (HR - up(lr)) * k, c = 0)
    mask_input: bool = False  # YODA input mixing: inactive pixels are noised c instead of noised x0
    mask_loss: bool = False  # average the loss over the active pixels (A >= tau) only
    loss: str = "l1"  # "l1" | "l2"
    target: str = "eps"  # "eps" | "x0": what the model predicts
    noise_level: Optional[str] = None  # "continuous" (SR3) | "discrete" (sqrt(ab[idx]) exactly); None: by space
    lower_bound: float = 0.6  # l in tau = t/T - l (DESIGN.md §4)
    residual_scale: float = 2.0  # k of the residual space (SRDiff)
    same_t_in_batch: bool = False  # one t for the whole batch, as Janspiry's SR3 p_losses

    def __post_init__(self):
        _check_choice("space", self.space, SPACES)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("target", self.target, TARGETS)
        if self.noise_level is None:  # SR3 conditions on a continuous level; SRDiff on the integer step
            object.__setattr__(self, "noise_level", "continuous" if self.space == "pixel" else "discrete")
        _check_choice("noise_level", self.noise_level, NOISE_LEVELS)
        object.__setattr__(self, "lower_bound", check_lower_bound(self.lower_bound))
        if not self.residual_scale > 0:
            raise ValueError(f"residual_scale must be > 0, got {self.residual_scale}")
        if self.space == "residual" and self.noise_level == "continuous":
            # SRDiff's denoiser is told the integer step index, so x_t must be noised to exactly ab[idx]
            raise ValueError('noise_level must be "discrete" for space="residual" (SRDiff conditions on the '
                             "integer step, not on a continuous noise level)")

    @property
    def yoda(self) -> bool:
        return self.mask_input or self.mask_loss


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar
    idx: torch.Tensor  # (B,) int64 0-based steps
    sqrt_ab: torch.Tensor  # (B,) float32 noise levels fed to the model
    active_fraction: float  # fraction of pixels the loss counted (1.0 without mask_loss)


# ----------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------
def alphas_cumprod(schedule) -> torch.Tensor:
    """alpha_bar of a yoda.schedule.Schedule (or any object with .alphas_cumprod), float64 (T,) on CPU."""
    ab = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64).cpu().reshape(-1)
    if ab.numel() < 1 or not bool(((ab > 0) & (ab <= 1)).all()):
        raise ValueError("schedule.alphas_cumprod must be a non-empty sequence of values in (0, 1]")
    return ab


def draw_noise_level(
    ab: torch.Tensor, batch: int, cfg: LossConfig, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx (B,) int64, sqrt_ab (B,) float32) for one batch.

    continuous: sqrt_ab ~ U[sqrt(ab[idx]), sqrt(ab[idx - 1])], ab[-1] := 1 (SR3); discrete: sqrt(ab[idx])."""
    T = ab.numel()
    if cfg.same_t_in_batch:
        idx = torch.randint(T, (1,), generator=generator).expand(batch).clone()
    else:
        idx = torch.randint(T, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    lo = ab[idx].sqrt()
    hi = torch.cat([torch.ones(1, dtype=torch.float64), ab])[idx].sqrt()  # sqrt(ab[idx-1]), 1 at idx = 0
    sab = lo + u * (hi - lo) if cfg.noise_level == "continuous" else lo
    return idx, sab.float()


def taus(idx: torch.Tensor, T: int, lower_bound: float) -> torch.Tensor:
    """tau = t/T - l with t = idx + 1 (DESIGN.md §4, the same formula as yoda.masks.tau_at), (B,) float32."""
    return ((idx.double() + 1.0) / T - lower_bound).float()


def space_tensors(hr: torch.Tensor, lr: torch.Tensor, cfg: LossConfig, scale: int) -> tuple[torch.Tensor, ...]:
    """(x0, c, up) of DESIGN.md §6: pixel space x0 = HR, c = up(lr); residual x0 = (HR - up(lr)) k, c = 0."""
    from .adapters import upsample

    up = upsample(lr, scale)
    if cfg.space == "pixel":
        return hr, up, up
    # clamped to [-1, 1] as SRDiff's img2res (clip_input=True): the state lives in the diffusion's range
    return ((hr - up) * cfg.residual_scale).clamp(-1.0, 1.0), torch.zeros_like(hr), up


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
) -> LossOutput:
    """The loss of DESIGN.md §7 (see the module docstring).

    denoise(x_t, idx, sqrt_ab) -> model output, shape of x0; idx (B,) int64, sqrt_ab (B,) float32.
    x0, c: (B, C, H, W) in the model's space; A: (B, 1, H, W) attention in [0, 1] at that grid, or None (no
    YODA). ab: alpha_bar (T,) float64. idx / sqrt_ab / noise may be given (tests); otherwise they are drawn
    from ``generator`` (on the CPU, so a run is reproducible on any device)."""
    if x0.dim() != 4 or c.shape != x0.shape:
        raise ValueError(f"x0 and c must be (B, C, H, W) of the same shape, got {tuple(x0.shape)}, {tuple(c.shape)}")
    B, C = x0.shape[:2]
    T = ab.numel()
    if cfg.yoda and A is None:
        raise ValueError("the YODA loss (mask_input or mask_loss) needs an attention map A")
    if A is not None and (A.dim() != 4 or A.shape[1] != 1 or A.shape[0] != B or A.shape[2:] != x0.shape[2:]):
        raise ValueError(f"A must be (B, 1, H, W) = ({B}, 1, {x0.shape[2]}, {x0.shape[3]}), got {tuple(A.shape)}")
    if idx is None or sqrt_ab is None:
        idx, sqrt_ab = draw_noise_level(ab, B, cfg, generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    idx, sqrt_ab, noise = idx.to(x0.device), sqrt_ab.to(x0.device), noise.to(x0.device, x0.dtype)
    tau = taus(idx, T, cfg.lower_bound)

    if cfg.mask_input:
        from yoda_kernels import masked_q_sample

        x_t = masked_q_sample(x0, c, noise, A.to(x0.dtype), tau, sqrt_ab.double().pow(2).float(), backend=backend)
    else:
        s = sqrt_ab.view(B, 1, 1, 1)
        x_t = s * x0 + (1.0 - s * s).sqrt() * noise
    pred = denoise(x_t, idx, sqrt_ab)
    if pred.shape != x0.shape:
        raise ValueError(f"model output has shape {tuple(pred.shape)}, expected {tuple(x0.shape)}")
    target = noise if cfg.target == "eps" else x0
    err = (pred - target).abs() if cfg.loss == "l1" else (pred - target).pow(2)
    if cfg.mask_loss:
        m = (A >= tau.view(B, 1, 1, 1)).to(err.dtype)  # (B, 1, H, W): the pixels refined at this step
        count = m.sum() * C
        loss = (err * m).sum() / count.clamp_min(1.0)
        frac = float(count) / err.numel()
    else:
        loss, frac = err.mean(), 1.0
    return LossOutput(loss=loss, idx=idx, sqrt_ab=sqrt_ab, active_fraction=frac)


# ----------------------------------------------------------------------------------------------------------
# Models and denoisers
# ----------------------------------------------------------------------------------------------------------
MODEL_KINDS = ("sr3", "srdiff")


def build_model(spec: dict) -> torch.nn.Module:
    """A model from a config dict {"kind": "sr3" | "srdiff", **constructor args} (yoda.models).

    sr3: the keys of yoda.models.sr3.SR3Config (upstream SR3UNet arguments, plus "scale")."""
    if not isinstance(spec, dict) or spec.get("kind") not in MODEL_KINDS:
        raise ValueError(f"model must be a dict with 'kind' in {MODEL_KINDS}, got {spec!r}")
    args = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "sr3":
        from .models.sr3 import SR3Config, SR3UNet

        return SR3UNet.from_config(SR3Config.from_dict(args))
    from . import models

    try:
        return models.SRDiff(**args)
    except TypeError as e:
        raise ValueError(f"bad model arguments for srdiff: {e}") from None


def make_denoiser(model: torch.nn.Module, lr: torch.Tensor, up: torch.Tensor, cfg: LossConfig):
    """denoise(x_t, idx, sqrt_ab) for diffusion_loss.

    pixel (SR3): model(cat(up(lr), x_t), sqrt_ab (B, 1)), SR3's continuous noise-level conditioning.
    residual (SRDiff): model(x_t, idx, rrdb.features(lr), up(lr)) with the discrete 0-based step (SRDiff
    embeds the step index); the RRDB encoder is trained jointly (its features keep their gradient)."""
    if cfg.space == "pixel":
        return lambda x_t, idx, sab: model(torch.cat([up, x_t], dim=1), sab.view(-1, 1))
    feas = model.rrdb.features(lr)
    return lambda x_t, idx, sab: model(x_t, idx, feas, up)


def attention_for(extractor: Callable, lr: torch.Tensor, size) -> torch.Tensor:
    """A (B, 1, H, W) in [0, 1] at the state grid ``size`` from an extractor lr -> (B, 1, h', w')."""
    with torch.no_grad():
        A = extractor(lr).float()
    if A.dim() != 4 or A.shape[1] != 1 or A.shape[0] != lr.shape[0]:
        raise ValueError(f"attention extractor returned shape {tuple(A.shape)}, expected (B, 1, h, w)")
    if tuple(A.shape[-2:]) != tuple(size):
        A = F.interpolate(A, size=tuple(size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return A


def sampling_adapter(module: torch.nn.Module, cfg: "TrainConfig", schedule):
    """module.yoda_adapter(...) for a model trained with ``cfg``: its schedule, scale, residual scale and
    parameterisation (the loss target)."""
    if cfg.loss.space == "residual":
        adapter = module.yoda_adapter(schedule=schedule, res_rescale=cfg.loss.residual_scale)
    else:
        adapter = module.yoda_adapter(schedule=schedule, scale=cfg.data.scale)
    adapter.prediction = cfg.loss.target  # "eps" or "x0", whatever the net was trained to predict
    return adapter


# ----------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------
def _default_model() -> dict:
    # yoda.models.SR3UNet.tiny_x4_config(): fully convolutional, 2.76 M parameters (11 MB fp32)
    return {
        "kind": "sr3",
        "in_channel": 6,
        "out_channel": 3,
        "inner_channel": 32,
        "norm_groups": 16,
        "channel_mults": [1, 2, 2, 4],
        "attn_res": [],
        "res_blocks": 1,
        "dropout": 0.0,
        "with_noise_level_emb": True,
        "image_size": 64,
        "mid_attn": False,
        "scale": 4,
    }


def _default_schedule() -> dict:
    return {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 2e-2}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved next to the weights and round-tripped through JSON."""

    name: str = "run"
    model: dict = field(default_factory=_default_model)  # {"kind": "sr3"|"srdiff", **constructor args}
    schedule: dict = field(default_factory=_default_schedule)  # {"kind": "linear"|"cosine", "T", ...}
    data: _data.DataConfig = field(default_factory=_data.DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    attention: str = "edge"  # yoda.attention.get(name): the A of the YODA masks (used if loss.yoda)
    batch: int = 16
    steps: int = 1000
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup: int = 0  # linear learning-rate warm-up steps
    grad_clip: float = 1.0  # max global grad norm (0: off)
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # steps between validation runs (0: only at the end if val_crops > 0 ... see run)
    val_steps: int = 20  # DDIM steps of validation sampling
    ckpt_every: int = 0  # steps between checkpoints (0: only at the end)

    def __post_init__(self):
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", _from_dict(_data.DataConfig, self.data, "data"))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", _from_dict(LossConfig, self.loss, "loss"))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name in ("batch", "steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "log_every", "val_every", "val_steps", "ckpt_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.schedule.get("kind") not in ("linear", "cosine"):
            raise ValueError(f"schedule.kind must be 'linear' or 'cosine', got {self.schedule.get('kind')!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _from_dict(cls, d, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str) -> "TrainConfig":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)

    def make_schedule(self):
        from .schedule import Schedule

        s = dict(self.schedule)
        kind = s.pop("kind")
        try:
            return Schedule.linear(**s) if kind == "linear" else Schedule.cosine(**s)
        except TypeError as e:
            raise ValueError(f"bad schedule arguments {self.schedule}: {e}") from None


def _from_dict(cls, d: dict, what: str):
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in {what}: {', '.join(unknown)}")
    return cls(**d)


def psnr_u8(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of [-1, 1] images after rounding to 8 bits (yoda.images.quantize_u8, the pixels a
    saved PNG has): 10 log10(255^2 / MSE), MSE in float64 in torch, so training needs no scikit-image.
    Equal to yoda.evaluate.psnr (skimage's peak_signal_noise_ratio) on to_uint8 of the same images."""
    mse = (quantize_u8(sr).double() - quantize_u8(hr).double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA GPU is available")
    return torch.device(device)


CSV_FIELDS = ("step", "loss", "lr", "time", "val_psnr_plain", "val_psnr_yoda")


def _atomic_torch_save(obj, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class Trainer:
    """AdamW + EMA + grad clipping, checkpoints with resume, a tqdm bar and a CSV log.

    Files in ``out``: checkpoint.pt (resume state), log.csv, config.json, and at the end model.safetensors
    (the EMA weights in the "yoda" format). Randomness (crops, flips, steps, noise) comes from one CPU
    torch.Generator saved in the checkpoint, so a resumed run on the CPU equals an uninterrupted one.
    """

    def __init__(self, cfg: TrainConfig, out: str, *, device: str = "auto", progress: bool = True,
                 resume: bool = True):
        self.cfg, self.out, self.progress = cfg, out, progress
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest convolutions
        os.makedirs(out, exist_ok=True)
        self.schedule = cfg.make_schedule()
        self.ab = alphas_cumprod(self.schedule)
        torch.manual_seed(cfg.seed)  # model init
        self.model = build_model(cfg.model).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                     weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.train_images = _data.CropSampler(_data.load_source(cfg.data.source, cfg.data.crop), cfg.data.crop,
                                              cfg.data.flips)
        self.val_hr = None
        if cfg.val_every and cfg.data.val_crops:
            val = _data.load_source(cfg.data.val_source, cfg.data.val_crop)
            self.val_hr = _data.fixed_crops(val, cfg.data.val_crops, cfg.data.val_crop, seed=cfg.seed + 1)
        self.extractor = None
        if cfg.loss.yoda or self.val_hr is not None:
            from . import attention

            self.extractor = attention.get(cfg.attention)
        self.rows: list[dict] = []
        self.ckpt_path = os.path.join(out, "checkpoint.pt")
        if resume and os.path.exists(self.ckpt_path):
            self.load_checkpoint(self.ckpt_path)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "rows": list(self.rows),
        }

    def save_checkpoint(self, path: Optional[str] = None) -> None:
        _atomic_torch_save(self.state_dict(), path or self.ckpt_path)

    def load_checkpoint(self, path: str) -> None:
        try:
            st = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # corrupt / truncated file
            raise ValueError(f"cannot read checkpoint {path}: {e}") from None
        mine = {k: v for k, v in self.cfg.to_dict().items() if k != "steps"}
        theirs = {k: v for k, v in st["config"].items() if k != "steps"}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"checkpoint {path} was written with a different config (differs in: {', '.join(diff)})")
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["opt"])
        self.gen.set_state(st["gen"])
        self.step = int(st["step"])
        self.rows = [r for r in st["rows"] if r["step"] <= self.step]

    # -- one step ------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        if self.cfg.warmup and step < self.cfg.warmup:
            return self.cfg.lr * (step + 1) / self.cfg.warmup
        return self.cfg.lr

    def train_step(self) -> float:
        cfg = self.cfg
        hr = self.train_images.sample(cfg.batch, self.gen).to(self.device)
        lr = _data.make_lr(hr, cfg.data.scale)
        x0, c, up = space_tensors(hr, lr, cfg.loss, cfg.data.scale)
        A = attention_for(self.extractor, lr, x0.shape[-2:]) if cfg.loss.yoda else None
        for g in self.opt.param_groups:
            g["lr"] = self.learning_rate(self.step)
        self.model.train()
        out = diffusion_loss(make_denoiser(self.model, lr, up, cfg.loss), x0, c, A, self.ab, cfg.loss,
                             generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self._update_ema()
        self.step += 1
        return float(out.loss.detach())

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up of the decay (1 + n) / (10 + n) so that early EMA weights are not dominated by the init
        d = min(self.cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # -- validation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """Mean PSNR (dB, 8-bit) of DDIM samples from the EMA model on the fixed held-out crops, plain and,
        when an extractor is configured, with YODA masks (lower bound of the loss config)."""
        from .sampler import sample

        hr = self.val_hr.to(self.device)
        lr = _data.make_lr(hr, self.cfg.data.scale)
        model = self.sampling_model(self.ema)
        out = {}
        modes = [("val_psnr_plain", None)] + ([("val_psnr_yoda", self.cfg.attention)] if self.extractor else [])
        for key, attn in modes:
            sr = sample(model, lr, attention=attn, steps=self.cfg.val_steps, sampler="ddim",
                        lower_bound=self.cfg.loss.lower_bound, seed=self.cfg.seed, progress=False)
            out[key] = float(psnr_u8(sr, hr).mean())
        return out

    def sampling_model(self, module: torch.nn.Module):
        """The adapter yoda.sample runs for ``module`` trained with this config."""
        return sampling_adapter(module, self.cfg, self.schedule)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, steps: Optional[int] = None, max_seconds: Optional[float] = None) -> dict:
        """Train up to ``steps`` (default cfg.steps) total steps, or until max_seconds of wall time have
        passed; checkpoint, write the log and the EMA weights. Returns a summary dict."""
        from tqdm import tqdm

        cfg = self.cfg
        total = cfg.steps if steps is None else int(steps)
        t0 = time.perf_counter()
        t_base = float(self.rows[-1]["time"]) if self.rows else 0.0  # time column is cumulative over resumes
        acc, n = 0.0, 0
        bar = tqdm(total=total, initial=self.step, disable=not self.progress, desc=cfg.name, unit="step")
        try:
            while self.step < total:
                loss = self.train_step()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}")
                acc, n = acc + loss, n + 1
                bar.update(1)
                last = self.step == total
                timed_out = max_seconds is not None and time.perf_counter() - t0 > max_seconds
                if (cfg.log_every and self.step % cfg.log_every == 0) or last or timed_out:
                    row = {"step": self.step, "loss": acc / n, "lr": self.learning_rate(self.step - 1),
                           "time": t_base + time.perf_counter() - t0, "val_psnr_plain": "", "val_psnr_yoda": ""}
                    if self.val_hr is not None and (self.step % cfg.val_every == 0 or last or timed_out):
                        row.update(self.validate())
                    self.rows.append(row)
                    self.write_log()
                    bar.set_postfix(loss=f"{acc / n:.4f}")
                    acc, n = 0.0, 0
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last or timed_out:
                    self.save_checkpoint()
                if timed_out:
                    break
        finally:
            bar.close()
        self.export(os.path.join(self.out, "model.safetensors"))
        with open(os.path.join(self.out, "config.json"), "w", encoding="utf-8") as f:
            f.write(self.cfg.to_json() + "\n")
        return {"steps": self.step, "seconds": time.perf_counter() - t0}

    def export(self, path: str) -> None:
        """The EMA weights in the "yoda" format (yoda.load("yoda", path)), with the TrainConfig in "extra"."""
        from .checkpoint import save_model

        module = copy.deepcopy(self.ema).cpu()
        save_model(module, path, schedule=self.schedule,
                   scale=self.cfg.data.scale if self.cfg.loss.space == "pixel" else None,
                   prediction=self.cfg.loss.target, extra={"train_config": self.cfg.to_dict(), "steps": self.step})

    def write_log(self) -> None:
        path = os.path.join(self.out, "log.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Command-line entry (yoda train) and the training record
# ----------------------------------------------------------------------------------------------------------
def machine_description(device: torch.device) -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}"
    if device.type == "cuda":
        desc = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host: {desc}"
    return desc


def train_main(config_path: str, out: str, *, steps: Optional[int] = None, device: str = "auto",
               minutes: Optional[float] = None, progress: bool = True, command: str = "",
               weights_name: str = "model.safetensors", data_dir: Optional[str] = None) -> dict:
    """Train from a JSON config into ``out``; writes the weights, config.json, log.csv and TRAINING.md.

    data_dir: a folder written by ``python -m yoda.data export`` (train/ and heldout/ PNGs) replacing the
    "builtin" / "heldout" sources (same images, for machines without scikit-image)."""
    cfg = TrainConfig.load(config_path)
    if steps is not None:
        cfg = cfg.replace(steps=int(steps))
    if data_dir is not None:
        sub = {"builtin": "train", "heldout": "heldout"}
        d = cfg.data
        cfg = cfg.replace(data=dataclasses.replace(
            d, source=os.path.join(data_dir, sub[d.source]) if d.source in sub else d.source,
            val_source=os.path.join(data_dir, sub[d.val_source]) if d.val_source in sub else d.val_source))
    tr = Trainer(cfg, out, device=device, progress=progress)
    start_step = tr.step
    summary = tr.run(max_seconds=None if minutes is None else 60.0 * float(minutes))
    if weights_name != "model.safetensors":
        os.replace(os.path.join(out, "model.safetensors"), os.path.join(out, weights_name))
    last = tr.rows[-1] if tr.rows else {}
    n_params = sum(p.numel() for p in tr.model.parameters())
    size = os.path.getsize(os.path.join(out, weights_name))
    lines = [
        f"# Training record: {cfg.name}",
        "",
        f"- command: `{command or 'yoda train --config ' + config_path + ' --out ' + out}`",
        f"- config: `{config_path}` (copied to config.json; also stored in the weights' metadata)",
        f"- data: {cfg.data.source!r} ({', '.join(_data.BUILTIN_TRAIN) if cfg.data.source == 'builtin' else 'folder'}), "
        f"random {cfg.data.crop}x{cfg.data.crop} HR crops with flips, LR = yoda.data.make_lr (x{cfg.data.scale} "
        f"torch bicubic, antialias, 8-bit); held out: {', '.join(_data.HELD_OUT)}",
        f"- loss: {cfg.loss}",
        f"- model: {cfg.model.get('kind')} with {n_params:,} parameters; weights {weights_name} "
        f"({size / 1e6:.1f} MB, EMA decay {cfg.ema_decay})",
        f"- steps: {tr.step} (this run: {tr.step - start_step}; batch {cfg.batch}; AdamW lr {cfg.lr})",
        f"- wall time of this run: {summary['seconds']:.1f} s ({(tr.step - start_step) / max(summary['seconds'], 1e-9):.2f} steps/s)",
        f"- machine: {machine_description(tr.device)}",
        f"- last logged loss: {last.get('loss', float('nan')):.4f}" if last else "- no steps logged",
    ]
    if last.get("val_psnr_plain", "") != "":
        lines.append(f"- validation PSNR (DDIM {cfg.val_steps} steps, {cfg.data.val_crops} held-out crops): plain "
                     f"{last['val_psnr_plain']:.2f} dB" + (f", YODA {last['val_psnr_yoda']:.2f} dB"
                                                           if last.get("val_psnr_yoda", "") != "" else ""))
    with open(os.path.join(out, "TRAINING.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    summary.update(out=out, weights=os.path.join(out, weights_name))
    return summary


# ----------------------------------------------------------------------------------------------------------
# Loss-curve / validation-PSNR picture (Pillow: matplotlib is not a dependency)
# ----------------------------------------------------------------------------------------------------------
_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def read_log(path: str) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"log file not found: {path}") from None
    if not rows or "step" not in rows[0] or "loss" not in rows[0]:
        raise ValueError(f"{path} is not a training log (needs step and loss columns)")
    return rows


def _series(rows, key):
    return [(float(r["step"]), float(r[key])) for r in rows if r.get(key, "") not in ("", None)]


def _dashed(dr, a, b, col, dash: float = 6.0) -> None:
    """A dashed line from a to b (Pillow has none): dashes of ``dash`` px with equal gaps."""
    (xa, ya), (xb, yb) = a, b
    n = max(1, int(math.hypot(xb - xa, yb - ya) / dash))
    for j in range(0, n, 2):
        t0, t1 = j / n, min(1.0, (j + 1) / n)
        dr.line([(xa + t0 * (xb - xa), ya + t0 * (yb - ya)), (xa + t1 * (xb - xa), ya + t1 * (yb - ya))],
                fill=col, width=2)


def plot_logs(paths: list[str], labels: list[str], out: str, size=(900, 360)) -> None:
    """One PNG with two panels: training loss vs step (left) and validation PSNR vs step (right; solid
    plain sampling, dashed YODA sampling), one colour per log."""
    from PIL import Image, ImageDraw

    if len(paths) != len(labels):
        raise ValueError("give one label per log")
    logs = [read_log(p) for p in paths]
    W, H = size
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    panels = [("training loss", ["loss"]), ("validation PSNR (dB)", ["val_psnr_plain", "val_psnr_yoda"])]
    pw = W // 2
    for pi, (title, keys) in enumerate(panels):
        x0, y0, x1, y1 = pi * pw + 50, 30, (pi + 1) * pw - 15, H - 60
        dr.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        dr.text((x0, 8), title, fill=(0, 0, 0))
        series = [(li, k, _series(rows, k)) for li, rows in enumerate(logs) for k in keys]
        pts = [p for _, _, s in series for p in s]
        if not pts:
            dr.text((x0 + 10, y0 + 10), "no data", fill=(0, 0, 0))
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        ymin, ymax = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        fx = lambda v: x0 + (v - xmin) / (xmax - xmin) * (x1 - x0)  # noqa: E731
        fy = lambda v: y1 - (v - ymin) / (ymax - ymin) * (y1 - y0)  # noqa: E731
        for li, k, s in series:
            col = _COLOURS[li % len(_COLOURS)]
            xy = [(fx(a), fy(b)) for a, b in s]
            if k == "val_psnr_yoda":
                for a, b in zip(xy, xy[1:]):
                    _dashed(dr, a, b, col)
            elif len(xy) > 1:
                dr.line(xy, fill=col, width=2)
            for p in xy if k != "loss" else []:
                dr.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=col)
        dr.text((x0 - 45, y0), f"{ymax:.4g}", fill=(0, 0, 0))
        dr.text((x0 - 45, y1 - 10), f"{ymin:.4g}", fill=(0, 0, 0))
        dr.text((x0, y1 + 4), f"{xmin:.0f}", fill=(0, 0, 0))
        dr.text((x1 - 40, y1 + 4), f"{xmax:.0f} steps", fill=(0, 0, 0))
    for li, lab in enumerate(labels):
        col = _COLOURS[li % len(_COLOURS)]
        dr.line([(60 + li * 220, H - 22), (90 + li * 220, H - 22)], fill=col, width=3)
        dr.text((96 + li * 220, H - 28), lab, fill=(0, 0, 0))
    dr.text((W - 330, H - 28), "PSNR: solid = plain sampling, dashed = YODA", fill=(0, 0, 0))
    tmp = out + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, out)
