"""Loading SRDiff checkpoints released by LeiaLi/SRDiff (``model_ckpt_steps_*.ckpt``), and its YAML configs
(:func:`load_srdiff_config`).

    model = load_srdiff("model_ckpt_steps_400000.ckpt")     # or yoda.load("srdiff", ...)

Upstream saves {'global_step', 'optimizer_states', 'state_dict': {'model': GaussianDiffusion.state_dict()}}
(``denoise_fn.*`` and ``rrdb.*`` weights plus the schedule buffers); its load_ckpt also accepts a flat state
dict with 'model.' prefixes. Without config= the architecture is read from the weights' shapes
(:func:`srdiff_config_from_state_dict`). The model comes back with a ModelCard: the config's schedule, its
sr_scale, "eps", residual space.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from .._json_fields import read_config_text, unknown_keys
from ..checkpoint import (CheckpointError, as_state_dict, betas_match, build_checked,
                          read_checkpoint, refuse_latent, refuse_train_checkpoint, refuse_yoda_file)
from ..schedule import Schedule
from .card import ModelCard
from .sr3_load import split_diffusion_buffers
from .srdiff import UPSTREAM_HPARAMS, SRDiff, SRDiffConfig, srdiff_beta_schedule

__all__ = ["load_srdiff", "load_srdiff_config", "srdiff_config_from_state_dict", "fold_weight_norm"]


def load_srdiff_config(path: Union[str, os.PathLike]) -> SRDiffConfig:
    """Read an upstream YAML config (configs/diffsr_df2k4x.yaml ..., or the checkpoints/EXP/config.yaml a run
    saved next to its checkpoints), following its ``base_config`` chain (paths relative to each file; later files
    override earlier ones). A base file that is not there is skipped with a warning, as upstream's set_hparams
    skips it: a run's saved config.yaml holds every resolved key and still names its bases (./diffsr_base.yaml
    ...), which are not next to it. Needs PyYAML."""
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_srdiff_config needs PyYAML (pip install pyyaml); or pass an SRDiffConfig") from e

    files_read: list = []

    def read(p: str, depth: int = 0) -> dict:
        if depth > 16:
            raise ValueError(f"SRDiff config {files_read[0]}: base_config chain too deep (a cycle? at "
                             f"{os.path.normpath(p)})")  # (p: ./././... for a file naming itself)
        files_read.append(p)
        if len(files_read) > 64:  # a file naming its base several times, at every level, would read 4^16 files
            raise ValueError(f"SRDiff config {files_read[0]}: its base_config chains read more than 64 files")
        if not os.path.exists(p) or os.path.isdir(p):
            raise FileNotFoundError(f"SRDiff config file not found: {p}")
        try:
            d = yaml.safe_load(read_config_text(p, "SRDiff config")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"SRDiff config {p} is not valid YAML: {e}") from e
        except RecursionError:
            raise ValueError(f"SRDiff config {p} is nested too deeply to be a config") from None
        if not isinstance(d, dict):
            raise ValueError(f"SRDiff config {p} must be a mapping")
        bases = d.pop("base_config", None) or []
        bases = [bases] if isinstance(bases, str) else bases
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ValueError(f"SRDiff config {p}: base_config must be a file name or a list of them, got {bases!r}")
        out: dict = {}
        paths = [os.path.join(os.path.dirname(p), b) for b in bases]
        there = [os.path.isfile(path) for path in paths]
        if not all(there):
            missing = ", ".join(repr(b) for b, ok in zip(bases, there) if not ok)
            warnings.warn(f"SRDiff config {p}: its base_config {missing} is not next to it; skipped, as upstream "
                          "does (a run's saved config.yaml holds the resolved keys)", stacklevel=3)
        for path, ok in zip(paths, there):
            if ok:
                out.update(read(path, depth + 1))
        out.update(d)
        return out

    d = read(os.fspath(path))
    names = {f.name for f in dataclasses.fields(SRDiffConfig)} | {"unet_dim_mults"}
    known = names | UPSTREAM_HPARAMS
    if not known & set(d):  # an SR3 JSON (or any other file) read as every default: the weights got the blame
        raise ValueError(f"SRDiff config {os.fspath(path)} sets none of SRDiff's settings ({', '.join(sorted(d)[:6])}"
                         f"{', ...' if len(d) > 6 else ''}): is it another model's config (SR3's JSON)? Without "
                         "--model-config the settings are read from the weights")
    odd = sorted(set(d) - known)
    if odd:  # upstream's YAML takes any key, but a misspelt res_rescale or beta_end changes no shape: said
        warnings.warn(f"SRDiff config {os.fspath(path)}: keys neither SRDiff's settings nor upstream's other hparams "
                      f"are left unused, their defaults stand: {unknown_keys(odd, names)}",
                      stacklevel=3)
    try:
        return SRDiffConfig.from_dict(d, ignore_unknown=True)
    except (TypeError, ValueError) as e:  # (said without the file)
        raise ValueError(f"SRDiff config {os.fspath(path)}: {e}") from e


def fold_weight_norm(sd: Dict[str, Any]) -> Dict[str, Any]:
    """Replace torch weight_norm pairs (``*.weight_g``, ``*.weight_v``; SRDiff's use_wn) by the weight
    w = g * v / ||v|| (norm over all dims but 0), as upstream's make_generation_fast_ does."""
    out = dict(sd)
    for k in [k for k in sd if k.endswith(".weight_g")]:
        base = k[: -len("_g")]
        kv = base + "_v"
        if kv in sd and isinstance(sd[k], torch.Tensor) and isinstance(sd[kv], torch.Tensor):
            g, v = sd[k].double(), sd[kv].double()
            norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
            out[base] = (g * v / norm).to(sd[kv].dtype)
            del out[k], out[kv]
    return out


def srdiff_config_from_state_dict(sd: Mapping[str, Any], bufs: Optional[Mapping[str, Any]] = None, **over: Any):
    """The SRDiffConfig a state dict (``denoise_fn.*`` + ``rrdb.*`` keys) was built with, read from its
    shapes: hidden_size and sr_scale from ``cond_proj``, dim_mults from the down blocks, rrdb_num_block /
    rrdb_num_feat from the RRDB trunk, use_attn / up_input from the presence of their keys, timesteps and
    the schedule kind from the ``betas`` buffer (cosine unless it matches the linear one). ``over``
    overrides any field."""
    def shape(k):
        v = sd.get(k)
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"SRDiff weights lack {k!r}: cannot read the architecture from them "
                                  "(pass its config: yoda.load's config=, the CLI's --model-config)")
        return tuple(v.shape)

    cp = shape("denoise_fn.cond_proj.weight")  # ConvTranspose2d: (in, out, 2s, 2s)
    hidden, s = cp[1], cp[2] // 2
    mults = []
    i = 0
    while f"denoise_fn.downs.{i}.0.block1.block.1.weight" in sd:
        out_ch = shape(f"denoise_fn.downs.{i}.0.block1.block.1.weight")[0]
        if out_ch % hidden:
            raise CheckpointError(f"SRDiff weights: down block {i} has {out_ch} channels, not a multiple of {hidden}")
        mults.append(out_ch // hidden)
        i += 1
    nb = len({k.split(".")[2] for k in sd if k.startswith("rrdb.RRDB_trunk.")})
    nf = shape("rrdb.conv_first.weight")[0]
    args = dict(hidden_size=hidden, dim_mults=tuple(mults), rrdb_num_block=nb, rrdb_num_feat=nf, sr_scale=s,
                use_attn="denoise_fn.mid_attn.fn.g" in sd, up_input="denoise_fn.up_proj.1.weight" in sd)
    b = (bufs or {}).get("betas")
    if isinstance(b, torch.Tensor) and b.dim() == 1 and "timesteps" not in over:
        args["timesteps"] = int(b.numel())
        lin = SRDiffConfig(**{**args, "beta_schedule": "linear"})
        if betas_match({"betas": b}, srdiff_beta_schedule(lin)):
            args["beta_schedule"] = "linear"
    args.update(over)
    try:
        return SRDiffConfig(**args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"SRDiff weights imply an invalid config {args}: {e}") from e


def load_srdiff(p: str, config: Any = None) -> nn.Module:
    """The SRDiff of the checkpoint file ``p`` (eval mode, CPU) with its ModelCard. config: an SRDiffConfig, a dict
    or upstream's YAML path; None: read from the weights' shapes and betas buffer (betas that match neither of
    upstream's schedules at its defaults are used as the buffer holds them). A dict holds SRDiffConfig fields
    and may hold upstream's other hparams keys (skipped); any other key is refused, so a misspelled field cannot
    silently leave its default. A YAML file skips every key that is not a field (upstream's files carry many)."""
    obj, meta = read_checkpoint(p)
    refuse_yoda_file(meta, p, "srdiff")
    refuse_train_checkpoint(obj, meta, p)
    refuse_latent(obj, p)
    # upstream: {'global_step', 'optimizer_states', 'state_dict': {'model': GaussianDiffusion.state_dict()}};
    # load_ckpt also accepts a flat state_dict with 'model.' prefixes.
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
            obj = obj["model"]
        elif isinstance(obj, Mapping) and any(isinstance(k, str) and k.startswith("model.") for k in obj):
            obj = {k[len("model."):]: v for k, v in obj.items() if isinstance(k, str) and k.startswith("model.")}
            # (without a "model." key, the state dict itself: it was emptied and refused as "not SRDiff")
    sd = as_state_dict(obj, p)
    sd, bufs = split_diffusion_buffers(fold_weight_norm(sd))
    if any(k.startswith("denoise_fn.noise_level_mlp.") for k in sd) and not any(k.startswith("rrdb.") for k in sd):
        raise CheckpointError(f"{p}: an SR3 checkpoint (*_gen.pth: 'denoise_fn.noise_level_mlp.*' weights, no RRDB "
                              "encoder), not SRDiff's: load it as kind 'sr3' (yoda.load('sr3', ...), the CLI's "
                              "--model sr3:PATH)")
    if not any(k.startswith("denoise_fn.") for k in sd):
        raise CheckpointError(f"{p}: not an SRDiff checkpoint: it has no 'denoise_fn.*' weights (upstream's "
                              "GaussianDiffusion, saved as model_ckpt_steps_*.ckpt; an RRDB pretraining checkpoint "
                              "has none; an SR3 *_gen.pth loads as sr3:PATH)")
    if config is None:
        try:
            cfg = srdiff_config_from_state_dict(sd, bufs)
        except CheckpointError as e:
            raise CheckpointError(f"{p}: {e}") from None
    elif isinstance(config, SRDiffConfig):
        cfg = config
    elif isinstance(config, (str, os.PathLike)):
        cfg = load_srdiff_config(config)
    elif isinstance(config, Mapping):
        # SRDiffConfig fields, or upstream's hparams (their other keys are skipped): any other key is a typo
        cfg = SRDiffConfig.from_dict(dict(config), hparams=True)
    else:
        raise TypeError(f"config for kind 'srdiff' must be None, an SRDiffConfig, a dict or a YAML path; "
                        f"got {type(config).__name__}")
    model = build_checked(lambda: SRDiff(cfg), sd, p, hint="SRDiff weights need 'denoise_fn.*' and 'rrdb.*' keys "
                          "(upstream GaussianDiffusion layout); check the config (yoda.load's config=, the CLI's "
                          "--model-config)", blocks=cfg.blocks)
    sched = srdiff_beta_schedule(cfg)
    b = bufs.get("betas")
    if isinstance(b, torch.Tensor):
        # upstream registers its schedule as buffers and loads them strictly: it samples with the checkpoint's
        # betas whatever a config says, and a config of another T does not load
        if b.dim() != 1 or b.numel() != cfg.timesteps:
            raise CheckpointError(f"{p}: its betas buffer has shape {tuple(b.shape)}, but the config says "
                                  f"timesteps: {cfg.timesteps} (upstream would not load it either); pass the run's "
                                  "config, or none (then it is read from the weights)")
        if betas_match(bufs, sched) is False:  # another schedule, or a beta_s / beta_end other than the defaults
            try:
                sched = Schedule.from_betas(b.double())
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{p}: its betas buffer is not a schedule ({e})") from None
            if config is not None:
                warnings.warn(f"{p}: the checkpoint's betas differ from the config's {cfg.beta_schedule} schedule "
                              f"(T={cfg.timesteps}); sampling uses the checkpoint's, as upstream does", stacklevel=3)
    elif config is None:  # upstream's GaussianDiffusion always saves its betas: this is a bare state dict
        warnings.warn(f"{p}: no betas buffer and no config, so its schedule is a guess, upstream's default "
                      f"({cfg.beta_schedule}, T={cfg.timesteps}), as is its prediction (eps) and its up(lr) "
                      "(SRDiff's MATLAB bicubic): pass the run's config, or save a yoda model with yoda.save_model "
                      "(its file carries all three)", stacklevel=3)
    model.card = ModelCard(schedule=sched, scale=cfg.sr_scale, prediction="eps", space="residual",
                           config={"kind": "srdiff", "args": cfg.to_dict()})
    model.upsampling = "srdiff"  # up(lr) as its training data made it (yoda.upsampling)
    return model.eval()
