"""How the trainer drives a model: build it from its config, the denoiser the loss calls, the attention
map at the state grid, and the model card (hence the adapter) it is sampled with."""

from __future__ import annotations

from typing import Callable

import torch

from ..models.card import ModelCard
from .config import LossConfig, TrainConfig

MODEL_KINDS = ("sr3", "srdiff")


def build_model(spec: dict) -> torch.nn.Module:
    """A model from a config dict {"kind": "sr3" | "srdiff", **constructor args} (yoda.models).

    sr3: the keys of yoda.models.sr3.SR3Config (upstream SR3UNet arguments, plus "scale")."""
    if not isinstance(spec, dict) or spec.get("kind") not in MODEL_KINDS:
        raise ValueError(f"model must be a dict with 'kind' in {MODEL_KINDS}, got {spec!r}")
    args = {k: v for k, v in spec.items() if k != "kind"}
    from ..models.yoda_format import build_model as build

    if spec["kind"] == "sr3":
        return build("sr3", args)
    try:
        return build("srdiff", args)
    except TypeError as e:
        raise ValueError(f"bad model arguments for srdiff: {e}") from None


def make_denoiser(model: torch.nn.Module, lr_img: torch.Tensor, up: torch.Tensor, cfg: LossConfig):
    """denoise(x_t, idx, sqrt_ab) for diffusion_loss.

    pixel (SR3): model(cat(up(lr), x_t), sqrt_ab (B, 1)), SR3's continuous noise-level conditioning.
    residual (SRDiff): model(x_t, idx, rrdb.features(lr), up(lr)) with the discrete 0-based step (SRDiff
    embeds the step index); the RRDB encoder is trained jointly (its features keep their gradient)."""
    if cfg.space == "pixel":
        return lambda x_t, idx, sab: model(torch.cat([up, x_t], dim=1), sab.view(-1, 1))
    feas = model.rrdb.features(lr_img)
    return lambda x_t, idx, sab: model(x_t, idx, feas, up)


def attention_for(extractor: Callable, lr_img: torch.Tensor, size) -> torch.Tensor:
    """A (B, 1, H, W) in [0, 1] at the state grid ``size`` from an extractor lr -> (B, 1, h', w'): the map
    yoda.sample makes of the same extractor (resolve_attention), so training masks are the sampling masks."""
    from ..sampling.prepare import resolve_attention

    return resolve_attention(extractor, lr_img, tuple(size))


def model_card(cfg: TrainConfig, schedule) -> ModelCard:
    """The card of a model trained with ``cfg``: its schedule, scale, space and parameterisation (the loss
    target), so it is sampled as what it was trained to predict."""
    return ModelCard(schedule=schedule, scale=int(cfg.data.scale), prediction=cfg.loss.target,
                     space=cfg.loss.space)


def sampling_adapter(module: torch.nn.Module, cfg: TrainConfig, schedule):
    """The adapter yoda.sample runs for ``module`` trained with ``cfg`` (its card, and for the residual
    space the loss's residual scale)."""
    card = model_card(cfg, schedule)
    if cfg.loss.space == "residual":
        return module.yoda_adapter(card=card, res_rescale=cfg.loss.residual_scale)
    return module.yoda_adapter(card=card)
