"""SR3 (Saharia et al. 2021) as implemented by Janspiry/Image-Super-Resolution-via-Iterative-Refinement.

The network reproduces ``model/sr3_modules/unet.py`` of that repository module for module, so its
``state_dict`` keys are the upstream ones and the released ``I*_E*_gen.pth`` checkpoints load with
``strict=True`` (through :func:`yoda.load`, which strips the ``denoise_fn.`` prefix of upstream's
``GaussianDiffusion`` wrapper and its 12 schedule buffers).

Model (DESIGN.md §6, pixel space):

    eps_hat = net(cat(up(lr), x_t), gamma),   gamma = sqrt(alpha_bar[idx])   (B,) continuous

    gamma is embedded with WaveGrad's encoding  e = [sin(gamma * w_k), cos(gamma * w_k)],
    w_k = exp(-ln(1e4) * k / (d/2)), k = 0..d/2-1, d = inner_channel   (upstream PositionalEncoding).

Module tree (keys): ``noise_level_mlp.{1,3}`` (Linear), ``downs.0`` (3x3 conv in), ``downs.i`` =
``ResnetBlocWithAttn`` (``res_block.{noise_func.noise_func.0, block1.block.{0,3}, block2.block.{0,3},
res_conv}``, optional ``attn.{norm, qkv, out}``) or ``Downsample`` (``conv``), ``mid.{0,1}``, ``ups.i``
(``ResnetBlocWithAttn`` or ``Upsample`` (``conv``)), ``final_conv.block.{0,3}``.

One extension, off by default: ``mid_attn`` (upstream always puts a global self-attention in ``mid.0``).
With ``attn_res=()`` and ``mid_attn=False`` the net is fully convolutional: it runs on any H, W divisible
by 2 ** (len(channel_mults) - 1) (the project's embedded default model uses it).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._json_fields import unknown_keys
from ..adapters import PixelAdapter, Prepared
from ..masks import as_float, config_int, plain_int
from ..schedule import MAX_FILE_T, Schedule
from .card import ModelCard, adapter_sampling

__all__ = [
    "SR3Config",
    "SR3UNet",
    "SR3Adapter",
    "sr3_beta_schedule",
    "SR3_DIFFUSION_BUFFERS",
    "SR3_16_128",
    "SR3_64_512",
    "sr3_default_schedule",
]

# Buffers that upstream's GaussianDiffusion.set_new_noise_schedule registers; they sit next to the
# ``denoise_fn.*`` weights in every ``*_gen.pth`` (and in SRDiff's checkpoints, same names).
SR3_DIFFUSION_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------
def _int_list(v, name: str) -> tuple:
    """A list of positive whole ints (a JSON list; not a string, whose characters were taken one by one)."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ValueError(f"{name} must be a list of positive ints, got {v!r}")
    return tuple(config_int(x, name, "a list of positive ints") for x in v)


@dataclass(frozen=True)
class SR3Config:
    """Constructor arguments of :class:`SR3UNet` (upstream names; ``channel_mults`` is the JSON's
    ``channel_multiplier``) plus ``scale`` (HR / LR size, used by the adapter; None = unknown)."""

    in_channel: int = 6
    out_channel: int = 3
    inner_channel: int = 32
    norm_groups: int = 32
    channel_mults: Tuple[int, ...] = (1, 2, 4, 8, 8)
    attn_res: Tuple[int, ...] = (8,)
    res_blocks: int = 3
    dropout: float = 0.0
    with_noise_level_emb: bool = True
    image_size: int = 128
    mid_attn: bool = True
    scale: Optional[int] = None

    def __post_init__(self) -> None:
        # lists from JSON -> tuples (frozen, hashable) of whole ints; attn_res may be a bare int upstream ("(8)")
        # (int() of each took "16" as (1, 6) and 16.5 as 16, where upstream's `now_res in attn_res` places none)
        ar = self.attn_res
        object.__setattr__(self, "attn_res", (config_int(ar, "SR3Config.attn_res"),) if isinstance(
            ar, numbers.Integral) else _int_list(ar, "SR3Config.attn_res"))
        object.__setattr__(self, "channel_mults", _int_list(self.channel_mults, "SR3Config.channel_mults"))
        for name in ("in_channel", "out_channel", "inner_channel", "norm_groups", "res_blocks", "image_size"):
            object.__setattr__(self, name, config_int(getattr(self, name), f"SR3Config.{name}"))  # numpy: ints
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"SR3Config.channel_mults must be non-empty positive ints, got {self.channel_mults}")
        if not 0.0 <= as_float(self.dropout, "SR3Config.dropout") < 1.0:
            raise ValueError(f"SR3Config.dropout must be in [0, 1), got {self.dropout}")
        for m in self.channel_mults:
            if (self.inner_channel * m) % self.norm_groups:
                raise ValueError(
                    f"SR3Config: inner_channel * channel_mult = {self.inner_channel * m} is not divisible by "
                    f"norm_groups = {self.norm_groups} (GroupNorm needs it)"
                )
        if self.scale is not None:  # 4.0 was taken and stored as a float
            object.__setattr__(self, "scale", config_int(self.scale, "SR3Config.scale", "a positive int or None"))

    @property
    def blocks(self) -> int:
        """Residual blocks of the encoder, each holding tensors: a file with fewer tensors is not this model."""
        return len(self.channel_mults) * self.res_blocks

    def unet_kwargs(self) -> dict:
        """The keyword arguments of SR3UNet (everything but ``scale``)."""
        d = asdict(self)
        d.pop("scale")
        return d

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attn_res"] = list(self.attn_res)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SR3Config":
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"SR3Config: unknown key(s) {unknown_keys(bad, names)}")
        return cls(**d)


# The two released configurations (config/sr_sr3_16_128.json, config/sr_sr3_64_512.json); both sample with
# the linear schedule T = 2000, betas 1e-6 .. 1e-2 (``sr3_default_schedule``).
SR3_16_128 = SR3Config(in_channel=6, out_channel=3, inner_channel=64, norm_groups=32, channel_mults=(1, 2, 4, 8, 8),
                       attn_res=(16,), res_blocks=2, dropout=0.2, image_size=128, scale=8)
SR3_64_512 = SR3Config(in_channel=6, out_channel=3, inner_channel=64, norm_groups=16, channel_mults=(1, 2, 4, 8, 16),
                       attn_res=(), res_blocks=1, dropout=0.0, image_size=512, scale=8)


def sr3_default_schedule() -> Schedule:
    """linear, n_timestep 2000, linear_start 1e-6, linear_end 1e-2 (both released configs, train and val)."""
    return Schedule.linear(2000, 1e-6, 1e-2)


def sr3_beta_schedule(opt: dict) -> Schedule:
    """SR3's ``make_beta_schedule`` (model/sr3_modules/diffusion.py) for one ``beta_schedule.{train,val}``
    entry: {"schedule", "n_timestep", "linear_start", "linear_end"}; float64 as upstream.

    linear:  betas = linspace(linear_start, linear_end, T)
    quad:    betas = linspace(sqrt(linear_start), sqrt(linear_end), T) ** 2
    warmup10/warmup50: linear_end everywhere, linspace(start, end) over the first 10 % / 50 %
    const:   linear_end everywhere
    cosine:  improved-DDPM cosine with s = 8e-3, betas clamped to 0.999
    ("jsd" ends with beta = 1, which no sampler can use; it is rejected.)
    """
    if not isinstance(opt, dict):
        raise TypeError(f"beta_schedule entry must be a dict, got {type(opt).__name__}")
    kind = opt.get("schedule")
    try:
        T = int(opt["n_timestep"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"beta_schedule entry needs an int 'n_timestep', got {opt.get('n_timestep')!r}") from e
    if T > MAX_FILE_T:  # a few bytes of JSON could ask for gigabytes of schedule
        raise ValueError(f"beta_schedule entry's n_timestep {T} is over {MAX_FILE_T} (released SR3 models: 2000)")
    try:
        start = float(opt.get("linear_start", 1e-4))
        end = float(opt.get("linear_end", 2e-2))
    except (TypeError, ValueError) as e:
        raise ValueError(f"beta_schedule entry's linear_start / linear_end must be numbers, got "
                         f"{opt.get('linear_start')!r} / {opt.get('linear_end')!r}") from e
    f64 = torch.float64
    if kind == "linear":
        return Schedule.linear(T, start, end)
    if kind == "quad":
        return Schedule.from_betas(torch.linspace(start ** 0.5, end ** 0.5, T, dtype=f64) ** 2)
    if kind in ("warmup10", "warmup50"):
        frac = 0.1 if kind == "warmup10" else 0.5
        betas = torch.full((T,), end, dtype=f64)
        n = int(T * frac)
        betas[:n] = torch.linspace(start, end, n, dtype=f64)
        return Schedule.from_betas(betas)
    if kind == "const":
        return Schedule.from_betas(torch.full((T,), end, dtype=f64))
    if kind == "cosine":
        return Schedule.cosine(T, s=8e-3, max_beta=0.999)
    raise ValueError(
        f"beta_schedule 'schedule' must be one of linear, quad, warmup10, warmup50, const, cosine; got {kind!r}"
    )


# ----------------------------------------------------------------------------------------------------------
# Network (module names are the upstream ones: they are the state-dict keys)
# ----------------------------------------------------------------------------------------------------------
class PositionalEncoding(nn.Module):
    """gamma (B,) -> (B, dim): [sin(gamma w), cos(gamma w)], w_k = 1e4 ** (-k / (dim // 2))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        k = torch.arange(half, dtype=noise_level.dtype, device=noise_level.device) / half
        arg = noise_level[:, None] * torch.exp(-math.log(1e4) * k)[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)  # x * sigmoid(x)


class FeatureWiseAffine(nn.Module):
    """Adds Linear(noise embedding) per channel (upstream's use_affine_level, (1 + gamma) x + beta, is never on in
    its UNet, so it is not built here)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(in_channels, out_channels))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.noise_func(emb).view(x.shape[0], -1, 1, 1)


class Upsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Block(nn.Module):
    """GroupNorm -> Swish -> Dropout (Identity when 0) -> 3x3 conv: keys block.0 and block.3."""

    def __init__(self, dim: int, dim_out: int, groups: int = 32, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            Swish(),
            nn.Dropout(dropout) if dropout != 0 else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim, dim_out, noise_level_emb_dim=None, dropout=0.0, norm_groups=32):
        super().__init__()
        # upstream builds noise_func unconditionally (its Linear(None, ...) fails without the embedding);
        # we only build it when there is an embedding, which keeps the keys identical in the working case.
        self.noise_func = (
            FeatureWiseAffine(noise_level_emb_dim, dim_out) if noise_level_emb_dim else None
        )
        self.block1 = Block(dim, dim_out, groups=norm_groups)
        self.block2 = Block(dim_out, dim_out, groups=norm_groups, dropout=dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.block1(x)
        if self.noise_func is not None:
            h = self.noise_func(h, emb)
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """Global single-head self-attention over the H*W positions, scaled by 1/sqrt(C) (upstream), residual."""

    def __init__(self, in_channel: int, n_head: int = 1, norm_groups: int = 32):
        super().__init__()
        self.n_head = n_head
        self.norm = nn.GroupNorm(norm_groups, in_channel)
        self.qkv = nn.Conv2d(in_channel, in_channel * 3, 1, bias=False)
        self.out = nn.Conv2d(in_channel, in_channel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        n = self.n_head
        d = C // n
        # upstream: view(B, n, 3d, H, W).chunk(3, dim=2): per head the channels are [q | k | v]
        qkv = self.qkv(self.norm(x)).view(B, n, 3 * d, H * W)
        q, k, v = (t.transpose(-1, -2) for t in qkv.chunk(3, dim=2))  # (B, n, HW, d)
        # SDPA instead of the explicit (HW x HW) einsum: same math, no materialised attention matrix
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(C))
        o = o.transpose(-1, -2).reshape(B, C, H, W)
        return self.out(o) + x


class ResnetBlocWithAttn(nn.Module):
    def __init__(self, dim, dim_out, *, noise_level_emb_dim=None, norm_groups=32, dropout=0.0, with_attn=False):
        super().__init__()
        self.with_attn = with_attn
        self.res_block = ResnetBlock(dim, dim_out, noise_level_emb_dim, norm_groups=norm_groups, dropout=dropout)
        if with_attn:
            self.attn = SelfAttention(dim_out, norm_groups=norm_groups)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.res_block(x, emb)
        return self.attn(x) if self.with_attn else x


class SR3UNet(nn.Module):
    """SR3's UNet: ``forward(x, noise_level) -> eps_hat``.

    x: (B, in_channel, H, W) = cat(up(lr), x_t) along channels, H and W divisible by
       2 ** (len(channel_mults) - 1); noise_level: (B,) or (B, 1) = sqrt(alpha_bar) (float, continuous).
    Returns (B, out_channel, H, W).

    ``card``: the ModelCard (schedule, scale, prediction) :meth:`yoda_adapter` samples with; set by
    :func:`yoda.load`, the trainer, or the user (``net.card = ModelCard(schedule, scale)``); None until then.
    ``scale`` is the config's (SR3Config.scale, set by :meth:`from_config`; None for a net built from
    keyword arguments).
    """

    card: Optional[ModelCard] = None

    def __init__(
        self,
        in_channel: int = 6,
        out_channel: int = 3,
        inner_channel: int = 32,
        norm_groups: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4, 8, 8),
        attn_res: Union[int, Sequence[int]] = (8,),
        res_blocks: int = 3,
        dropout: float = 0.0,
        with_noise_level_emb: bool = True,
        image_size: int = 128,
        mid_attn: bool = True,
    ):
        super().__init__()
        if isinstance(in_channel, SR3Config):  # it failed as "SR3Config.in_channel must be a positive int"
            raise TypeError("SR3UNet takes the config's fields as arguments; build one of an SR3Config with "
                            "SR3UNet.from_config(cfg) (which keeps its scale too)")
        cfg = SR3Config(in_channel, out_channel, inner_channel, norm_groups, tuple(channel_mults),
                        attn_res, res_blocks, dropout, with_noise_level_emb, image_size, mid_attn)
        self.config = cfg
        attn_res = cfg.attn_res
        kw = dict(norm_groups=norm_groups, dropout=dropout)

        if with_noise_level_emb:
            emb_dim = inner_channel
            self.noise_level_mlp = nn.Sequential(
                PositionalEncoding(inner_channel),
                nn.Linear(inner_channel, inner_channel * 4),
                Swish(),
                nn.Linear(inner_channel * 4, inner_channel),
            )
        else:
            emb_dim = None
            self.noise_level_mlp = None

        n = len(cfg.channel_mults)
        pre = inner_channel
        feat_channels = [pre]
        res = image_size
        downs: list = [nn.Conv2d(in_channel, inner_channel, kernel_size=3, padding=1)]
        for i, mult in enumerate(cfg.channel_mults):
            ch = inner_channel * mult
            for _ in range(res_blocks):
                downs.append(ResnetBlocWithAttn(pre, ch, noise_level_emb_dim=emb_dim, with_attn=res in attn_res, **kw))
                feat_channels.append(ch)
                pre = ch
            if i != n - 1:
                downs.append(Downsample(pre))
                feat_channels.append(pre)
                res //= 2
        self.downs = nn.ModuleList(downs)

        self.mid = nn.ModuleList([
            ResnetBlocWithAttn(pre, pre, noise_level_emb_dim=emb_dim, with_attn=mid_attn, **kw),
            ResnetBlocWithAttn(pre, pre, noise_level_emb_dim=emb_dim, with_attn=False, **kw),
        ])

        ups: list = []
        for i in reversed(range(n)):
            ch = inner_channel * cfg.channel_mults[i]
            for _ in range(res_blocks + 1):
                ups.append(ResnetBlocWithAttn(pre + feat_channels.pop(), ch, noise_level_emb_dim=emb_dim,
                                              with_attn=res in attn_res, **kw))
                pre = ch
            if i > 0:
                ups.append(Upsample(pre))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(pre, out_channel, groups=norm_groups)

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: SR3Config) -> "SR3UNet":
        """A randomly initialised SR3UNet of ``cfg``'s architecture, which keeps ``cfg`` (its scale too) as
        ``net.config``."""
        net = cls(**cfg.unet_kwargs())
        net.config = cfg  # with its scale
        return net

    @staticmethod
    def tiny_x4_config() -> SR3Config:
        """The small fully convolutional x4 default: no attention, 4 levels (H, W multiples of 8),
        2,763,299 parameters (its speed: benchmarks/RESULTS.md)."""
        return SR3Config(
            in_channel=6, out_channel=3, inner_channel=32, norm_groups=16, channel_mults=(1, 2, 2, 4),
            attn_res=(), res_blocks=1, dropout=0.0, image_size=64, mid_attn=False, scale=4,
        )

    @property
    def scale(self) -> Optional[int]:
        """The SR factor of the config (None if unknown)."""
        return self.config.scale

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this: 2 ** (number of Downsample layers)."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def forward(self, x: torch.Tensor, noise_level: Optional[torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != cfg.in_channel:
            raise ValueError(f"x must be (B, {cfg.in_channel}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        m = self.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"x: H and W must be divisible by {m} (2 ** downsamplings), got {tuple(x.shape[-2:])}")
        emb = None
        if self.noise_level_mlp is not None:
            if not isinstance(noise_level, torch.Tensor):
                raise TypeError("noise_level must be a tensor of shape (B,) or (B, 1)")
            B = x.shape[0]
            if noise_level.shape not in ((B,), (B, 1)):
                raise ValueError(f"noise_level must have shape ({B},) or ({B}, 1), got {tuple(noise_level.shape)}")
            emb = self.noise_level_mlp(noise_level.reshape(B).to(x.dtype))

        feats = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            if isinstance(layer, ResnetBlocWithAttn):
                x = layer(torch.cat((x, feats.pop()), dim=1), emb)
            else:
                x = layer(x)
        return self.final_conv(x)

    def yoda_adapter(self, schedule: Optional[Schedule] = None, scale: Optional[int] = None,
                     clip_x0: bool = True, *, prediction: Optional[str] = None,
                     card: Optional[ModelCard] = None) -> "SR3Adapter":
        """The adapter yoda.sample uses: schedule / scale / prediction from ``card`` (default ``self.card``)
        unless given here."""
        return SR3Adapter(self, schedule=schedule, scale=scale, clip_x0=clip_x0, prediction=prediction, card=card)


# ----------------------------------------------------------------------------------------------------------
# Adapter
# ----------------------------------------------------------------------------------------------------------
class SR3Adapter(PixelAdapter):
    """Pixel space (DESIGN.md §6): yoda.adapters.PixelAdapter for an SR3UNet, c = up(lr), cond = up(lr),
    eps = net(cat(up(lr), x_t), sqrt(ab_t)). What differs from PixelAdapter:

    schedule / scale / prediction: given here, else from ``card`` (default ``net.card``, the ModelCard yoda.load
    returns the net with); scale then falls back to ``net.scale`` (its config's) and prediction to SR3's "eps".
    A schedule and a scale must be known.
    multiple: the UNet's (2 ** number of downsamplings). up(lr) is made as ``net.upsampling`` says ("sr3" when
    yoda.load read a released checkpoint: SR3's Pillow bicubic; else "torch", yoda.upsampling).
    The net runs in its parameters' dtype (a half-precision state must not meet float32 weights), and
    prepare checks that lr has the net's out_channel channels.
    clip_x0: SR3 clamps x0_hat to [-1, 1] (``clip_denoised=True`` in p_sample).
    """

    def __init__(self, net: SR3UNet, schedule: Optional[Schedule] = None, scale: Optional[int] = None,
                 clip_x0: bool = True, *, prediction: Optional[str] = None, card: Optional[ModelCard] = None):
        if not isinstance(net, SR3UNet):
            raise TypeError(f"net must be an SR3UNet, got {type(net).__name__}")
        card = net.card if card is None else card
        if card is not None and not isinstance(card, ModelCard):
            raise TypeError(f"card must be a yoda.models.ModelCard or None, got {type(card).__name__}")
        if card is not None and card.space != "pixel":
            raise ValueError(f"card: an SR3 model samples in pixel space, the card says {card.space!r}")
        if schedule is None and card is not None:
            schedule = card.schedule
        if scale is None:
            scale = card.scale if card is not None else net.scale
        scale = plain_int(scale)
        if prediction is None:
            prediction = card.prediction if card is not None else "eps"
        if schedule is None:
            raise ValueError("schedule: this SR3 net has no ModelCard (yoda.load gives one, holding the config's val "
                             "schedule); pass the schedule it samples with: yoda.sample(net.yoda_adapter("
                             "schedule=yoda.Schedule.linear(...), scale=4), lr), or set net.card = "
                             "yoda.models.ModelCard(...)")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale: the SR factor must be a positive int (from the config's l/r_resolution "
                             f"or passed explicitly), got {scale!r}")
        if net.config.in_channel != 2 * net.config.out_channel:
            raise ValueError("net: SR3 conditioning needs in_channel == 2 * out_channel "
                             f"(got {net.config.in_channel}, {net.config.out_channel})")
        if net.config.out_channel != 3:  # yoda.sample makes every lr RGB (a grey one repeated): none would fit
            raise ValueError(f"net: yoda samples RGB SR3 models (out_channel 3, in_channel 6); this one has "
                             f"out_channel {net.config.out_channel}")
        super().__init__(net, schedule, scale=scale, prediction=prediction, clip_x0=clip_x0,
                         multiple=net.multiple, upsampling=getattr(net, "upsampling", "torch"))
        sampling = adapter_sampling(card, self.schedule.T)
        if sampling is not None:
            self.sampling_defaults = sampling

    def prepare(self, lr: torch.Tensor) -> Prepared:
        C = self.net.config.out_channel
        if not isinstance(lr, torch.Tensor) or lr.dim() != 4 or lr.shape[1] != C:
            raise ValueError(f"lr must be (B, {C}, h, w), got "
                             f"{tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__}")
        return super().prepare(lr)
