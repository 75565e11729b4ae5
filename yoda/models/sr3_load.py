"""Loading SR3 checkpoints released by Janspiry/Image-Super-Resolution-via-Iterative-Refinement, and its JSON
configs (:func:`load_sr3_config`).

    net = load_sr3("I640000_E37_gen.pth", config="sr_sr3_16_128.json")    # or yoda.load("sr3", ...)

The ``*_gen.pth`` file holds ``GaussianDiffusion.state_dict()``: the UNet under ``denoise_fn.`` plus the 12
schedule buffers (SR3_DIFFUSION_BUFFERS). The prefix is stripped, the buffers are compared with the config's
schedules, and the UNet is loaded strictly. The net comes back with a ModelCard: the config's val schedule,
its scale, "eps", pixel space.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .._json_fields import read_config_text
from ..checkpoint import (CheckpointError, as_state_dict, betas_match, build_checked, holds_tensors,
                          read_checkpoint, refuse_latent, refuse_train_checkpoint, refuse_yoda_file)
from ..schedule import Schedule
from .card import ModelCard
from .sr3 import SR3_16_128, SR3_DIFFUSION_BUFFERS, SR3Config, SR3UNet, sr3_beta_schedule, sr3_default_schedule

__all__ = ["load_sr3", "load_sr3_config", "split_diffusion_buffers"]

# The keys of SR3's config sections that its define_G reads (model/networks.py); others are warned of
SR3_UNET_KEYS = ("in_channel", "out_channel", "inner_channel", "norm_groups", "channel_multiplier", "attn_res",
                 "res_blocks", "dropout")
SR3_DIFFUSION_KEYS = ("image_size", "channels", "conditional")


# SR3Config's fields as the JSON names them (the others are model.unet's own names)
_JSON_KEYS = {"channel_mults": "model.unet.channel_multiplier", "image_size": "model.diffusion.image_size",
              "scale": "datasets' r_resolution / l_resolution"}


def _strip_json_comments(text: str) -> str:
    """Remove // line comments and /* */ block comments that are outside JSON strings (SR3's configs
    carry ``// comments``; a plain regex on ``//`` would break strings such as URLs)."""
    pattern = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.S)
    return pattern.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "", text)


def load_sr3_config(path_or_dict: Union[str, os.PathLike, dict]) -> Tuple[SR3Config, Schedule, Schedule]:
    """Read one of SR3's JSON configs (``config/sr_sr3_16_128.json`` ...; ``//`` comments allowed).

    Returns (SR3Config, train Schedule, val Schedule) from ``model.unet``, ``model.diffusion.image_size``
    and ``model.beta_schedule.{train,val}``. ``scale`` = r_resolution / l_resolution of the first
    ``datasets`` entry that has both (None when the file has none). ``norm_groups`` defaults to 32 when
    absent, as upstream's define_G does.
    """
    if isinstance(path_or_dict, dict):
        opt = path_or_dict
        where = "config dict"
    else:
        where = os.fspath(path_or_dict)
        if not os.path.exists(where) or os.path.isdir(where):
            raise FileNotFoundError(f"SR3 config file not found: {where}")
        text = read_config_text(where, "SR3 config")
        try:
            opt = json.loads(_strip_json_comments(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"SR3 config {where} is not valid JSON (after removing // comments): {e}") from e
        except RecursionError:
            raise ValueError(f"SR3 config {where} is nested too deeply to be a config") from None
    model = opt.get("model") if isinstance(opt, dict) else None
    if not isinstance(model, dict) or "unet" not in model or "beta_schedule" not in model:
        raise ValueError(f"SR3 config {where} lacks model.unet / model.beta_schedule")

    def section(d: Any, key: str) -> dict:  # an object of the JSON ({} when absent or null), else a clear error
        v = d.get(key)
        if v is not None and not isinstance(v, dict):
            raise ValueError(f"SR3 config {where}: {key} must be a JSON object, got {type(v).__name__}")
        return v or {}

    unet, sched, diffusion = section(model, "unet"), section(model, "beta_schedule"), section(model, "diffusion")
    which = model.get("which_model_G", "sr3")
    if which != "sr3":  # the SR3 repository's other generator (model/ddpm_modules): another network, other keys
        raise ValueError(f"SR3 config {where}: model.which_model_G is {which!r}; yoda loads the 'sr3' network "
                         f"(model/sr3_modules) only, not the repository's {which!r} one")
    if diffusion.get("conditional", True) is False:  # config/sample_sr3_128.json
        raise ValueError(f"SR3 config {where}: model.diffusion.conditional is false, an unconditional generator "
                         "(no LR input); yoda super-resolves with conditional SR3 models")
    image_size = diffusion.get("image_size", 128)
    scale = None
    for ds in section(opt, "datasets").values():
        if isinstance(ds, dict) and "l_resolution" in ds and "r_resolution" in ds:
            try:
                lo, hi = int(ds["l_resolution"]), int(ds["r_resolution"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"SR3 config {where}: datasets' l_resolution / r_resolution must be ints, got "
                                 f"{ds['l_resolution']!r} / {ds['r_resolution']!r}") from e
            if lo < 1 or hi % lo:
                raise ValueError(f"SR3 config {where}: r_resolution {hi} is not a multiple of l_resolution {lo}")
            scale = hi // lo
            break
    unknown = [f"model.{name}.{k}" for name, sec, known in (("unet", unet, SR3_UNET_KEYS),
                                                              ("diffusion", diffusion, SR3_DIFFUSION_KEYS))
               for k in sec if k not in known]
    if unknown:  # a misspelt norm_groups changes no shape, so strict loading cannot catch it
        warnings.warn(f"SR3 config {where}: {', '.join(map(repr, unknown))} unknown to SR3 (a misspelling? "
                      f"model.unet takes {', '.join(SR3_UNET_KEYS)}); left unused, its default stands",
                      stacklevel=3)
    norm_groups = unet.get("norm_groups")
    try:  # SR3Config checks each value (whole ints: int() took 16.5 as 16 and "1|2" letter by letter)
        cfg = SR3Config(
            in_channel=unet.get("in_channel", 6),
            out_channel=unet.get("out_channel", 3),
            inner_channel=unet.get("inner_channel", 32),
            norm_groups=32 if norm_groups is None else norm_groups,
            channel_mults=unet.get("channel_multiplier", (1, 2, 4, 8, 8)),
            attn_res=unet.get("attn_res", (8,)),
            res_blocks=unet.get("res_blocks", 3),
            dropout=unet.get("dropout", 0.0),
            image_size=image_size,
            scale=scale,
        )
    except (TypeError, ValueError) as e:  # said of the JSON's key (it was "bad model.unet entry" of any of them)
        said = re.sub(r"SR3Config\.(\w+)", lambda m: _JSON_KEYS.get(m[1], f"model.unet.{m[1]}"), str(e))
        said = said.replace("SR3Config: ", "model.unet: ")
        raise ValueError(f"SR3 config {where}: {said}") from e
    if "train" not in sched or "val" not in sched:
        raise ValueError(f"SR3 config {where}: model.beta_schedule needs both 'train' and 'val'")
    schedules = []
    for phase in ("train", "val"):
        try:
            schedules.append(sr3_beta_schedule(sched[phase]))
        except (TypeError, ValueError) as e:  # an entry that is not an object, or a bad value in it
            raise ValueError(f"SR3 config {where}: model.beta_schedule.{phase}: {e}") from e
    return (cfg, *schedules)


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


def load_sr3(p: str, config: Any = None, scale: Optional[int] = None) -> nn.Module:
    """The SR3UNet of the checkpoint file ``p`` (eval mode, CPU) with its ModelCard. config: SR3's JSON (path or
    parsed), an SR3Config or a dict of its fields; None: the released 16->128 configuration. Its schedule: the
    JSON's val schedule; an SR3Config or dict gives none, so the checkpoint's betas buffer where it has one (else
    the 16->128 config's). scale: the scale where the config gives none (yoda.load's scale=)."""
    cfg, train_sched, val_sched = _sr3_config(config)
    if scale is not None:
        if cfg.scale is not None and cfg.scale != scale:
            raise ValueError(f"scale {scale} (yoda.load's scale=, the CLI's --scale) does not match the SR3 "
                             f"config's scale {cfg.scale}")
        cfg = dataclasses.replace(cfg, scale=scale)
    schedule_given = config is None or isinstance(config, (str, os.PathLike)) or (
        isinstance(config, Mapping) and "model" in config)  # SR3's JSON (or the released one's): its val schedule
    obj, meta = read_checkpoint(p)
    refuse_yoda_file(meta, p, "sr3")
    refuse_train_checkpoint(obj, meta, p)
    refuse_latent(obj, p)
    if isinstance(obj, Mapping) and "optimizer" in obj and not any(  # ({"model": weights, "optimizer": ...}: weights)
            isinstance(v, torch.Tensor) or holds_tensors(v) for v in obj.values()):
        raise CheckpointError(f"{p} is SR3's training state (*_opt.pth: epoch, iter, optimizer), not its weights; "
                              "load the *_gen.pth saved next to it")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
        inner = obj.get("model") if isinstance(obj.get("model"), Mapping) else {}
        if any(str(k).startswith("model.rrdb.") for k in obj) or any(str(k).startswith("rrdb.") for k in inner):
            raise CheckpointError(f"{p}: an SRDiff checkpoint (model_ckpt_steps_*.ckpt: state_dict's 'model'), not "
                                  "SR3's: load it as kind 'srdiff' (yoda.load('srdiff', ...), the CLI's --model "
                                  "srdiff:PATH)")
    sd = as_state_dict(obj, p)
    sd, bufs = split_diffusion_buffers(sd)
    if any(k.startswith("denoise_fn.") for k in sd):  # GaussianDiffusion.state_dict(): the *_gen.pth layout
        sd = {(k[len("denoise_fn."):] if k.startswith("denoise_fn.") else k): v for k, v in sd.items()}
    net = build_checked(lambda: SR3UNet.from_config(cfg), sd, p, hint="For SR3 pass the JSON the model was "
                        "trained with (yoda.load's config=, the CLI's --model-config; default: the 16->128 config).",
                        blocks=cfg.blocks)
    match = [betas_match(bufs, s) for s in (train_sched, val_sched)]
    if bufs.get("betas") is not None and not any(match):
        if schedule_given:
            warnings.warn(f"{p}: the checkpoint's betas buffer matches neither the train nor the val schedule of "
                          f"the config; sampling uses the config's val schedule (T={val_sched.T})", stacklevel=3)
        else:  # an SR3Config / dict has no schedule: the one the file was saved with, not the 16->128 config's
            try:
                train_sched = val_sched = Schedule.from_betas(bufs["betas"].double())
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{p}: its betas buffer is not a schedule ({e})") from None
    if not isinstance(cfg.scale, int):
        where = ("SR3Config(scale=...)" if isinstance(config, SR3Config) else "a 'scale' entry of the config dict"
                 if isinstance(config, Mapping) and not schedule_given else
                 "the JSON's datasets l_resolution / r_resolution")
        raise CheckpointError(f"{p}: the SR3 config gives no scale: give {where}, or yoda.load's scale= (the "
                              f"CLI's --scale)")
    net.card = ModelCard(schedule=val_sched, scale=cfg.scale, prediction="eps", space="pixel",
                         config={"kind": "sr3", "args": cfg.to_dict(), "train_schedule": train_sched.to_dict()})
    net.upsampling = "sr3"  # up(lr) as its training data made it (yoda.upsampling)
    return net.eval()
