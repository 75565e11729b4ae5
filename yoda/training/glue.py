"""How the trainer drives a model: build it from its config, the denoiser the loss calls, the attention
map at the state grid, and the model card (hence the adapter) it is sampled with."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..data import make_lr
from ..images import from_uint8
from ..models.card import ModelCard
from ..models.yoda_format import build_model as build
from ..sampling.prepare import resolve_attention
from .config import LossConfig, TrainConfig, model_config


def build_model(spec: dict) -> torch.nn.Module:
    """A model from a config dict {"kind": "sr3" | "srdiff", **constructor args} (yoda.models).

    sr3: the keys of yoda.models.sr3.SR3Config (upstream SR3UNet arguments, plus "scale")."""
    model_config(spec)  # a dict with a known kind and good arguments: errors said of the config's section
    return build(spec["kind"], {k: v for k, v in spec.items() if k != "kind"})


def make_denoiser(model: torch.nn.Module, lr_img: torch.Tensor, up: torch.Tensor, cfg: LossConfig):
    """denoise(x_t, idx, sqrt_ab) for diffusion_loss.

    pixel (SR3): model(cat(up(lr), x_t), sqrt_ab (B, 1)), SR3's continuous noise-level conditioning.
    residual (SRDiff): model(x_t, idx, rrdb.features(lr), up(lr)) with the discrete 0-based step (SRDiff
    embeds the step index); the RRDB encoder is trained jointly (its features keep their gradient)."""
    if cfg.space == "pixel":
        return lambda x_t, idx, sab: model(torch.cat([up, x_t], dim=1), sab.view(-1, 1))
    feas = model.rrdb.features(lr_img)
    return lambda x_t, idx, sab: model(x_t, idx, feas, up)


# The training maps are kept for the whole run, one per image at its full size: in float16 they take 2/3 of the
# uint8 images' memory (float32 took 4/3: 8 GB more per rank for a DIV2K-sized set). A pixel within half a float16
# step of a step's tau (at most 2.4e-4 near A = 1) may be masked otherwise than sampling masks it.
MAP_DTYPE = torch.float16


def whole_image_maps(extractor: Callable, images, scale: int) -> list[torch.Tensor]:
    """(1, H, W) MAP_DTYPE per (name, uint8 (H, W, 3)) training image: the map yoda.sample makes of that image's LR
    (make_lr of the image cut to multiples of ``scale``, resolve_attention at that size; the cut rows and columns
    repeat its edge). The trainer crops them with the image, so a crop's mask
    is the one sampling gives those pixels: a map made of each crop was min-max normalised per crop (a
    featureless crop still had A from 0 to 1, and trained with most of its pixels active, where sampling the
    image leaves them at the LR)."""
    out = []
    for _, arr in images:
        hr = from_uint8(arr)
        H, W = hr.shape[-2:]
        h, w = H // scale * scale, W // scale * scale  # make_lr takes multiples of the scale; the rest: its edge
        A = resolve_attention(extractor, make_lr(hr[..., :h, :w], scale), (h, w))
        out.append(F.pad(A, (0, W - w, 0, H - h), mode="replicate")[0].to(MAP_DTYPE))
    return out


def model_card(cfg: TrainConfig, schedule) -> ModelCard:
    """The card of a model trained with ``cfg``: its schedule, scale, space and parameterisation (the loss
    target), so it is sampled as what it was trained to predict, and how it samples by default (cfg.sampling;
    with the masked input of YODA training, the lower bound of its masks)."""
    sampling = dict(cfg.sampling or {})
    if cfg.loss.mask_input:  # trained on states held at the LR image by masks of this l: sampled with the same
        sampling.setdefault("lower_bound", cfg.loss.lower_bound)
    return ModelCard(schedule=schedule, scale=int(cfg.data.scale), prediction=cfg.loss.target,
                     space=cfg.loss.space, sampling=sampling or None)


def sampling_adapter(module: torch.nn.Module, cfg: TrainConfig, schedule):
    """The adapter yoda.sample runs for ``module`` trained with ``cfg`` (its card, and for the residual
    space the loss's residual scale)."""
    card = model_card(cfg, schedule)
    if cfg.loss.space == "residual":
        return module.yoda_adapter(card=card, res_rescale=cfg.loss.residual_scale)
    return module.yoda_adapter(card=card)
