"""Loading SR3 checkpoints released by Janspiry/Image-Super-Resolution-via-Iterative-Refinement.

    net = load_sr3("I830000_E32_gen.pth", config="sr_sr3_16_128.json")    # or yoda.load("sr3", ...)

The ``*_gen.pth`` file holds ``GaussianDiffusion.state_dict()``: the UNet under ``denoise_fn.`` plus the 12
schedule buffers (SR3_DIFFUSION_BUFFERS). The prefix is stripped, the buffers are compared with the config's
schedules, and the UNet is loaded strictly. The net comes back with a ModelCard: the config's val schedule,
its scale, "eps", pixel space.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from ..checkpoint import (CheckpointError, as_state_dict, betas_match, keeps_global_rng, load_state_dict_checked,
                          read_checkpoint, refuse_yoda_file, strip_prefix)
from .card import ModelCard
from .sr3 import (SR3_16_128, SR3_DIFFUSION_BUFFERS, SR3Config, SR3UNet, load_sr3_config,
                  sr3_default_schedule)

__all__ = ["load_sr3", "split_diffusion_buffers"]


def split_diffusion_buffers(sd: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(weights, upstream GaussianDiffusion's schedule buffers): SR3_DIFFUSION_BUFFERS split off ``sd``."""
    bufs = {k: sd[k] for k in SR3_DIFFUSION_BUFFERS if k in sd}
    return {k: v for k, v in sd.items() if k not in bufs}, bufs


def _sr3_config(config: Any):
    if config is None:
        return SR3_16_128, sr3_default_schedule(), sr3_default_schedule()
    if isinstance(config, SR3Config):
        return config, sr3_default_schedule(), sr3_default_schedule()
    if isinstance(config, (str, os.PathLike)):
        return load_sr3_config(config)
    if isinstance(config, Mapping):
        if "model" in config:  # a parsed SR3 JSON
            return load_sr3_config(dict(config))
        return SR3Config.from_dict(dict(config)), sr3_default_schedule(), sr3_default_schedule()
    raise TypeError(f"config for kind 'sr3' must be None, a path to SR3's JSON, an SR3Config or a dict; "
                    f"got {type(config).__name__}")


@keeps_global_rng
def load_sr3(p: str, config: Any = None) -> nn.Module:
    """The SR3UNet of the checkpoint file ``p`` (eval mode, CPU) with its ModelCard. config: SR3's JSON (path or
    parsed), an SR3Config or a dict of its fields; None: the released 16->128 configuration."""
    cfg, train_sched, val_sched = _sr3_config(config)
    obj, meta = read_checkpoint(p)
    refuse_yoda_file(meta, p, "sr3")
    if isinstance(obj, Mapping) and "optimizer" in obj and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} is SR3's training state (*_opt.pth: epoch, iter, optimizer), not its weights; "
                              "load the *_gen.pth saved next to it")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    sd = strip_prefix(as_state_dict(obj, p), "module.")
    sd, bufs = split_diffusion_buffers(sd)
    if any(k.startswith("denoise_fn.") for k in sd):  # GaussianDiffusion.state_dict(): the *_gen.pth layout
        sd = {(k[len("denoise_fn."):] if k.startswith("denoise_fn.") else k): v for k, v in sd.items()}
    net = SR3UNet.from_config(cfg)
    load_state_dict_checked(net, sd, p, hint="For SR3 pass the JSON the model was trained with "
                            "(yoda.load's config=, the CLI's --model-config; default: the 16->128 config).")
    match = [betas_match(bufs, s) for s in (train_sched, val_sched)]
    if bufs.get("betas") is not None and not any(match):
        warnings.warn(f"{p}: the checkpoint's betas buffer matches neither the train nor the val schedule of the "
                      f"config; sampling uses the config's val schedule (T={val_sched.T})", stacklevel=3)
    if not isinstance(cfg.scale, int):
        raise CheckpointError(f"{p}: the SR3 config gives no scale (l_resolution / r_resolution); pass one "
                              "that does (yoda.load's config=, the CLI's --model-config)")
    net.card = ModelCard(schedule=val_sched, scale=cfg.scale, prediction="eps", space="pixel",
                         config={"kind": "sr3", "args": cfg.to_dict(), "train_schedule": train_sched.to_dict()})
    net.upsampling = "sr3"  # up(lr) as its training data made it (yoda.upsampling)
    return net.eval()
