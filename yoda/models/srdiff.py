"""SRDiff (Li et al. 2022) as implemented by LeiaLi/SRDiff (models/diffsr_modules.py, models/commons.py,
models/diffusion.py): a residual-space denoiser UNet conditioned on the features of an RRDB LR encoder.

Model (DESIGN.md §6, residual space, ``res: true`` in every upstream config):

    x0      = (HR - up(lr)) * res_rescale                         res_rescale = 2 (clamped to [-1, 1])
    feas    = RRDB(lr) intermediate features (nb + 1 maps at LR size), the UNet uses feas[2::3]
    eps_hat = unet(x_t, idx, feas, up(lr))                         idx: (B,) int64 0-based timestep
    SR      = up(lr) + clamp(x0_hat, -1, 1) / res_rescale          (upstream res2img, clip_input)

Schedule: upstream ``cosine_beta_schedule(timesteps, s=beta_s)`` with T = 100, s = 0.008 (or the
``linear`` one with beta_end and betas[-1] = 0.999). Sampling: ancestral DDPM with x0_hat clamped to
[-1, 1] (``clip_denoised=True`` in p_sample: the clamp acts on the *residual* x0).

State-dict keys are upstream's: this module's ``denoise_fn.*`` (Unet) and ``rrdb.*`` (RRDBNet) match
``GaussianDiffusion.state_dict()`` inside ``model_ckpt_steps_*.ckpt['state_dict']['model']`` (the 12 schedule
buffers there are checked against the config and dropped by :func:`yoda.load`; without a config, betas that match
neither of upstream's schedules at its defaults become the model's schedule).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from .._json_fields import unknown_keys
from ..adapters import Adapter, Prepared, check_flag, check_prediction, check_schedule, stack_along_batch, upsample
from ..masks import config_int
from ..schedule import MAX_FILE_T, Schedule
from .card import ModelCard, adapter_sampling
from .srdiff_nets import RRDBNet, Unet

__all__ = ["SRDiffConfig", "SRDiff", "SRDiffAdapter", "RRDBNet", "Unet", "srdiff_beta_schedule"]


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SRDiffConfig:
    """SRDiff hyper-parameters (upstream hparams names; ``dim_mults`` is upstream's ``unet_dim_mults``
    "1|2|2|4"). Defaults: configs/diffsr_base.yaml with sr_scale 4 (df2k4x uses dim_mults 1|2|3|4,
    CelebA sr_scale 8). timesteps, beta_schedule, beta_s and beta_end describe upstream's schedule: a model with a
    ModelCard (every model yoda.load returns) samples with the card's, which ``SRDiff.schedule`` returns; a model
    trained by yoda keeps their defaults (its schedule, any betas, is in its card)."""

    hidden_size: int = 64
    dim_mults: Tuple[int, ...] = (1, 2, 2, 4)
    rrdb_num_block: int = 8
    rrdb_num_feat: int = 32
    sr_scale: int = 4
    use_attn: bool = False
    up_input: bool = False
    timesteps: int = 100
    beta_schedule: str = "cosine"
    beta_s: float = 0.008
    beta_end: float = 0.02
    res_rescale: float = 2.0
    clip_input: bool = True
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        dm = self.dim_mults
        try:
            if isinstance(dm, str):  # upstream spelling "1|2|2|4"
                dm = [int(v) for v in dm.split("|")]
            if not isinstance(dm, (list, tuple)):
                raise TypeError(type(dm).__name__)
            object.__setattr__(self, "dim_mults", tuple(int(v) for v in dm))
        except (TypeError, ValueError) as e:
            raise ValueError(f"SRDiffConfig.dim_mults must be ints (a list or upstream's '1|2|2|4'), got {dm!r}") from e
        for name in ("beta_s", "beta_end", "res_rescale"):  # YAML reads 8e-3 (no dot) as a str: numbers are taken
            v = getattr(self, name)  # as floats here, as upstream's numpy arithmetic would need them to be
            try:
                f = float(v) if not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                f = math.nan
            if not math.isfinite(f):
                raise ValueError(f"SRDiffConfig.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, f)
        for name in ("clip_input", "clip_denoised"):
            if not isinstance(getattr(self, name), bool):  # a quoted 'false' would be truthy
                raise ValueError(f"SRDiffConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("hidden_size", "rrdb_num_feat", "timesteps", "rrdb_num_block", "sr_scale"):
            object.__setattr__(self, name, config_int(getattr(self, name), f"SRDiffConfig.{name}"))  # numpy: ints
        if self.timesteps > MAX_FILE_T:  # a config of a few bytes could ask for gigabytes of schedule
            raise ValueError(f"SRDiffConfig.timesteps {self.timesteps} is over {MAX_FILE_T} (upstream SRDiff: 100)")
        if not self.dim_mults or min(self.dim_mults) < 1:
            raise ValueError(f"SRDiffConfig.dim_mults must be non-empty positive ints, got {self.dim_mults}")
        if self.rrdb_num_block < 2:
            raise ValueError(f"SRDiffConfig.rrdb_num_block must be an int >= 2 (the UNet uses features[2::3]), "
                             f"got {self.rrdb_num_block!r}")
        if self.sr_scale not in (2, 4, 8):
            raise ValueError(f"SRDiffConfig.sr_scale must be 2, 4 or 8, got {self.sr_scale!r}")
        if self.rrdb_num_feat % 2:
            raise ValueError(f"SRDiffConfig.rrdb_num_feat must be even (growth = feat // 2), got {self.rrdb_num_feat}")
        if self.beta_schedule not in ("cosine", "linear"):
            raise ValueError(f"SRDiffConfig.beta_schedule must be 'cosine' or 'linear', got {self.beta_schedule!r}")
        if not self.res_rescale > 0:
            raise ValueError(f"SRDiffConfig.res_rescale must be > 0, got {self.res_rescale}")

    @property
    def blocks(self) -> int:
        """The UNet's levels and the RRDB's blocks, each holding tensors: a file with fewer is not this model."""
        return len(self.dim_mults) + self.rrdb_num_block

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dim_mults"] = list(self.dim_mults)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, ignore_unknown: bool = False, hparams: bool = False) -> "SRDiffConfig":
        """From this class's field names or upstream hparams names (``unet_dim_mults``). Unknown keys are refused,
        except: with hparams, upstream's other hparams keys (UPSTREAM_HPARAMS: lr, batch_size ...) are skipped, so
        a dict of upstream's hparams loads while a misspelled field is still refused; with ignore_unknown every
        other key is skipped (an upstream YAML file, which a fork or ``--hparams`` may extend)."""
        d = dict(d)
        if "unet_dim_mults" in d:
            d["dim_mults"] = d.pop("unet_dim_mults")
        for key, value in UPSTREAM_SWITCHES.items():  # read from any config: they change what the weights mean
            if key in d and d[key] != value:
                raise ValueError(f"SRDiffConfig: upstream's {key}: {d[key]!r} builds or samples a model yoda does not "
                                 f"implement (yoda's SRDiff is upstream's {key}: {value!r})")
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names - (UPSTREAM_HPARAMS if hparams else set()))
        if bad and not ignore_unknown:
            raise ValueError(f"SRDiffConfig: unknown key(s) {unknown_keys(bad, names)}"
                             + (" and upstream's hparams (yoda.models.srdiff.UPSTREAM_HPARAMS)" if hparams else ""))
        return cls(**{k: v for k, v in d.items() if k in names})


# The keys of upstream's hparams that are not SRDiffConfig fields (LeiaLi/SRDiff configs/*.yaml, plus the ones
# utils/hparams.py's set_hparams adds): training, data and logging settings, and model switches yoda does not read.
UPSTREAM_HPARAMS = frozenset({
    # configs/config_base.yaml
    "binary_data_dir", "work_dir", "infer", "seed", "debug", "save_codes", "ds_workers", "endless",
    "print_nan_grads", "load_ckpt", "save_best", "num_ckpt_keep", "clip_grad_norm", "accumulate_grad_batches",
    "tb_log_interval", "num_sanity_val_steps", "check_val_every_n_epoch", "val_check_interval", "valid_monitor_key",
    "valid_monitor_mode", "max_epochs", "max_updates", "amp", "batch_size", "eval_batch_size", "num_workers",
    "test_input_dir", "resume_from_checkpoint",
    # configs/sr_base.yaml
    "base_config", "data_interp", "data_augmentation", "test_batch_size", "valid_steps", "test_save_png",
    "gen_dir_name",
    # configs/diffsr_base.yaml (unet_dim_mults is dim_mults)
    "res", "use_wn", "gn_groups", "use_rrdb", "rrdb_ckpt", "denoise_fn", "aux_l1_loss", "aux_ssim_loss",
    "aux_percep_loss", "loss_type", "pred_noise", "weight_init", "fix_rrdb", "lr", "decay_steps", "style_interp",
    "save_intermediate", "show_training_process", "print_arch",
    # configs/celeb_a.yaml, df2k4x.yaml, diffsr_*.yaml, rrdb/*_pretrain.yaml
    "raw_data_dir", "test_ids", "patch_size", "crop_size", "thresh_size", "test_crop_size", "test_thresh_size",
    "trainer_cls", "num_block",
    # utils/hparams.py set_hparams
    "validate", "exp_name",
})


# Upstream switches with another value than yoda's SRDiff has: res false diffuses the HR image instead of its
# residual, use_rrdb false drops the RRDB encoder. A config that sets one is refused rather than silently sampled
# wrong. (configs/diffsr_base.yaml's pred_noise and gn_groups are read by no upstream code: its denoiser always
# predicts eps and has no group norms, diffsr_modules.py's `groups = 0`; they are skipped as other hparams.)
UPSTREAM_SWITCHES = {"res": True, "use_rrdb": True}


def srdiff_beta_schedule(cfg: SRDiffConfig) -> Schedule:
    """SRDiff's schedule in float64.

    cosine (upstream ``cosine_beta_schedule``): x = linspace(0, T + 1, T + 1),
        ab(x) = cos(((x / (T + 1)) + s) / (1 + s) * pi / 2) ** 2 / ab(0),  betas = clip(1 - ab[1:] / ab[:-1], 0, 0.999)
        (x / (T + 1) = i / T: the improved-DDPM cosine).
    linear: linspace(1e-4, beta_end, T) with betas[-1] = 0.999 (upstream does this whenever ``res``).
    """
    T = cfg.timesteps
    if cfg.beta_schedule == "cosine":
        steps = T + 1
        x = torch.linspace(0, steps, steps, dtype=torch.float64, device="cpu")
        ab = torch.cos(((x / steps) + cfg.beta_s) / (1 + cfg.beta_s) * math.pi * 0.5) ** 2
        ab = ab / ab[0]
        return Schedule.from_betas((1 - ab[1:] / ab[:-1]).clamp(0.0, 0.999))
    betas = torch.linspace(1e-4, float(cfg.beta_end), T, dtype=torch.float64, device="cpu")
    betas[-1] = 0.999
    return Schedule.from_betas(betas)


# ----------------------------------------------------------------------------------------------------------
# The model and its adapter
# ----------------------------------------------------------------------------------------------------------
class SRDiff(nn.Module):
    """SRDiff's networks under upstream's names: ``denoise_fn`` (Unet) and ``rrdb`` (RRDBNet).

    ``SRDiff(config)`` or ``SRDiff(hidden_size=..., dim_mults=..., ...)`` (SRDiffConfig fields).
    forward(x, t, cond, img_lr_up) = denoise_fn(...): x (B, 3, H, W) residual state, t (B,) int64, cond the
    RRDB features (``rrdb.features(lr)``), img_lr_up = up(lr).
    ``card``: the ModelCard :meth:`yoda_adapter` samples with (set by yoda.load and the trainer); None: the
    config's own schedule and scale, predicting eps (upstream SRDiff).
    ``schedule``: the schedule the model samples with: the card's when a card is set, else the config's
    (srdiff_beta_schedule(config)). The config's schedule fields (timesteps, beta_schedule, beta_s, beta_end) are
    upstream's: a model trained by yoda keeps their defaults and samples with its card's schedule, which these
    fields cannot express (any betas), so read the schedule from ``schedule`` or ``card``, not from the config.
    """

    card: Optional[ModelCard] = None

    def __init__(self, config: Optional[SRDiffConfig] = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = SRDiffConfig(**kwargs)
        elif kwargs:
            raise TypeError("SRDiff: pass either a config or keyword arguments, not both")
        if not isinstance(config, SRDiffConfig):
            raise TypeError(f"config must be an SRDiffConfig, got {type(config).__name__}")
        self.config = config
        nf = config.rrdb_num_feat
        self.denoise_fn = Unet(config.hidden_size, out_dim=3, dim_mults=config.dim_mults, cond_dim=nf,
                               rrdb_num_block=config.rrdb_num_block, sr_scale=config.sr_scale,
                               use_attn=config.use_attn, up_input=config.up_input)
        self.rrdb = RRDBNet(3, 3, nf, config.rrdb_num_block, nf // 2, sr_scale=config.sr_scale)
        self._config_schedule = srdiff_beta_schedule(config)

    @property
    def schedule(self) -> Schedule:
        """The card's schedule (what sampling uses) when a card is set, else the config's (upstream's)."""
        return self.card.schedule if self.card is not None else self._config_schedule

    @property
    def scale(self) -> int:
        return self.config.sr_scale

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.config.dim_mults) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Sequence[Optional[torch.Tensor]],
                img_lr_up: Optional[torch.Tensor], proj: Optional[torch.Tensor] = None) -> torch.Tensor:
        if proj is None:  # (a denoise_fn of one's own need not take it)
            return self.denoise_fn(x, t, cond, img_lr_up)
        return self.denoise_fn(x, t, cond, img_lr_up, proj)

    def yoda_adapter(self, schedule: Optional[Schedule] = None, clip_x0: Optional[bool] = None,
                     clip_input: Optional[bool] = None, res_rescale: Optional[float] = None, *,
                     prediction: Optional[str] = None, card: Optional[ModelCard] = None) -> "SRDiffAdapter":
        """The adapter yoda.sample uses (SRDiffAdapter): schedule / prediction from ``card`` (default
        ``self.card``) unless given here. No ``scale``: SRDiff's is always ``config.sr_scale``, which its RRDB
        encoder and its residual space are built for."""
        return SRDiffAdapter(self, schedule=schedule, clip_x0=clip_x0, clip_input=clip_input, res_rescale=res_rescale,
                             prediction=prediction, card=card)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype``: itself when it is (a no-op Tensor.to costs about 1.5 us of host time; denoise makes seven a
    step, against a GPU step of a few milliseconds)."""
    return t if t.dtype == dtype else t.to(dtype)


class SRDiffCond(NamedTuple):
    # RRDB features of lr, nb + 1 maps (B, nf, h, w); None at the maps upstream's Unet does not read (all but
    # feas[2::3]): the loop holds none of them (at a 1024² LR, 64-128 MiB each, six of nine for upstream's models)
    feas: List[Optional[torch.Tensor]]
    # up(lr) (B, 3, H, W); None where the UNet does not read it and it is torch's bicubic (upstream's Unet with
    # up_input off, the embedded model): decode makes it again then, bit for bit, and the loop holds one
    # state-sized image less (192 MiB at 4096²)
    up: Optional[torch.Tensor]
    # a one-item cache of Unet.project_cond(feas), the same at every step: filled at the first untiled step (a
    # window's cond, crop_cond, has none: it projects its own crop; prepare making it held a state-sized 16-channel
    # map, 1 GiB at 4096², through runs in windows, which never read it)
    proj: Optional[list] = None


class SRDiffAdapter(Adapter):
    """Residual space (DESIGN.md §6): c = 0 (the LR image has no residual), cond = (RRDB feats, up(lr)),
    eps = unet(x_t, idx, feats, up(lr)); decode: SR = clamp(up(lr) + clip(x0) / res_rescale, -1, 1). cond's up(lr)
    is None where the UNet does not read it (upstream's Unet with up_input off): decode makes it then.

    schedule / prediction: given here, else from ``card`` (default ``model.card``), else the config's schedule
    and upstream's "eps". The scale is always the config's sr_scale (a card must agree).
    clip_x0 (default config.clip_denoised = True): clamp of the residual x0_hat inside each step.
    clip_input (default config.clip_input = True): clamp of the final residual before res2img.
    up(lr) is made as ``model.upsampling`` says ("srdiff" when yoda.load read a released checkpoint: SRDiff's
    MATLAB imresize of lr / 256; else "torch", yoda.upsampling).
    """

    hr_state = True

    @property
    def window_unit(self) -> int:  # Adapter.window_unit: a window's LR features are cropped (crop_cond)
        return self.scale

    def __init__(self, model: SRDiff, schedule: Optional[Schedule] = None, clip_x0: Optional[bool] = None,
                 clip_input: Optional[bool] = None, res_rescale: Optional[float] = None, *,
                 prediction: Optional[str] = None, card: Optional[ModelCard] = None):
        if not isinstance(model, SRDiff):
            raise TypeError(f"model must be an SRDiff, got {type(model).__name__}")
        cfg = model.config
        card = model.card if card is None else card
        if card is not None and not isinstance(card, ModelCard):
            raise TypeError(f"card must be a yoda.models.ModelCard or None, got {type(card).__name__}")
        if card is not None and (card.space != "residual" or card.scale != cfg.sr_scale):
            raise ValueError(f"card: an SRDiff model with sr_scale {cfg.sr_scale} samples in residual space at scale "
                             f"{cfg.sr_scale}; the card says {card.space!r} at scale {card.scale}")
        self.model = model
        if schedule is None:
            schedule = card.schedule if card is not None else model.schedule
        self.schedule = check_schedule(schedule)
        self.scale = cfg.sr_scale
        self.clip_x0 = cfg.clip_denoised if clip_x0 is None else check_flag(clip_x0, "clip_x0")
        self.clip_input = cfg.clip_input if clip_input is None else check_flag(clip_input, "clip_input")
        rr = cfg.res_rescale if res_rescale is None else res_rescale
        if isinstance(rr, bool) or not isinstance(rr, numbers.Real) or not (math.isfinite(rr) and rr > 0):
            raise ValueError(f"res_rescale must be a finite number > 0, got {rr!r}")  # inf gave the bicubic image
        self.res_rescale = float(rr)
        self.multiple = model.multiple
        self.min_size = 2 * model.multiple  # the bottleneck's ReflectionPad2d(1) needs 2 pixels a side
        self.upsampling = getattr(model, "upsampling", "torch")  # "srdiff" for a released checkpoint
        if prediction is None:  # upstream SRDiff predicts eps; a model trained to predict x0 or v has a card saying so
            prediction = card.prediction if card is not None else "eps"
        self.prediction = check_prediction(prediction)
        sampling = adapter_sampling(card, self.schedule.T)
        if sampling is not None:
            self.sampling_defaults = sampling

    def prepare(self, lr: torch.Tensor) -> Prepared:
        if not isinstance(lr, torch.Tensor) or lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B, 3, h, w), got "
                             f"{tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__}")
        m = self.model.multiple
        H, W = lr.shape[-2] * self.scale, lr.shape[-1] * self.scale
        if H % m or W % m:
            raise ValueError(f"lr: the HR size {H}x{W} must be divisible by {m} (2 ** UNet downsamplings)")
        feas = self.model.rrdb.features(lr.to(next(self.model.parameters()).dtype))
        net = self.model.denoise_fn
        # upstream's own forward and projection (not a subclass's, which may read more) read feas[2::3] only, and
        # up(lr) only with up_input; a float64 MATLAB-style up(lr) (released checkpoints) is kept, not made twice
        upstream = type(net).forward is Unet.forward and type(net).project_cond is Unet.project_cond
        if upstream:
            feas = [f if k % 3 == 2 else None for k, f in enumerate(feas)]
        keep_up = not upstream or net.up_input or self.upsampling != "torch"
        up = upsample(lr, self.scale, self.upsampling) if keep_up else None
        # the features' projection is the same at every step: made once a call (2-8% of each UNet call; a review)
        return Prepared(c=lr.new_zeros(lr.shape[0], 3, H, W),
                        cond=SRDiffCond(feas, up, [] if isinstance(net, Unet) else None))

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, ab_t: Any, cond: SRDiffCond) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        t = t.float() if t.is_floating_point() else t.long()  # a solver's fractional t: sinusoidal embedding
        # run in the weights' dtype, return the state's; prepare made the features in it (a lookup through
        # parameters() would cost 5 us of host time a step): a cond made before the model's dtype changed
        # (model.half()) must be made again
        dt = cond.feas[2].dtype  # (a map the UNet reads: nb >= 2)
        args = (_as(x_t, dt), t, [None if f is None else _as(f, dt) for f in cond.feas],
                None if cond.up is None else _as(cond.up, dt))
        cache = cond.proj
        if cache is None or torch.is_grad_enabled():  # (a graph kept across steps would be backpropagated twice)
            out = self.model(*args)
        else:
            if not cache or cache[0].dtype != dt:
                cache[:] = [self.model.denoise_fn.project_cond(args[2])]
            out = self.model(*args, cache[0])
        return _as(out, x_t.dtype)

    def decode(self, x0: torch.Tensor, lr: torch.Tensor, cond: SRDiffCond) -> torch.Tensor:
        # one image-sized temporary, the rest in place (the peak of a 4096² upscale; issue 12)
        r = x0.clamp(-1.0, 1.0).div_(self.res_rescale) if self.clip_input else x0 / self.res_rescale
        return r.add_(upsample(lr, self.scale) if cond.up is None else cond.up).clamp_(-1.0, 1.0)  # ("torch")

    def stack_conds(self, conds: list) -> SRDiffCond:
        """Adapter.stack_conds without the projections' caches (one list shared by the stacked cond filled it with a
        batch's projection, which a later call with one of them took as its own)."""
        return stack_along_batch([SRDiffCond(c.feas, c.up) for c in conds])

    def crop_cond(self, cond: SRDiffCond, ys: slice, xs: slice) -> SRDiffCond:
        """cond for an HR window: up(lr) cropped, the LR features cropped to the window / scale (the window
        must then lie on the LR grid: its bounds multiples of scale)."""
        s = self.scale
        bounds = (ys.start, ys.stop, xs.start, xs.stop)
        if any(b is None or b % s for b in bounds):
            raise ValueError(f"windows: SRDiff windows must start and end on multiples of the scale {s} (their LR "
                             f"features are cropped; give window and overlap multiples of {s}), got rows "
                             f"{ys.start}:{ys.stop}, cols {xs.start}:{xs.stop}")
        ly, lx = slice(ys.start // s, ys.stop // s), slice(xs.start // s, xs.stop // s)
        return SRDiffCond([None if f is None else f[..., ly, lx] for f in cond.feas],
                          None if cond.up is None else cond.up[..., ys, xs])
