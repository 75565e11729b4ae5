"""Loading checkpoints: upstream SR3 / SRDiff files, DINO backbones, and the project's own model files.

    net = yoda.load("sr3", "I830000_E32_gen.pth", config="sr_sr3_16_128.json")
    net = yoda.load("srdiff", "model_ckpt_steps_400000.ckpt")        # architecture read from the weights
    net = yoda.load("yoda", "yoda/weights/default_x4.safetensors")
    sr  = yoda.sample(net, lr)

Files are read with safetensors (recognised by content: an 8-byte header length followed by '{') or with
``torch.load(weights_only=True)`` (no pickled code runs). Every failure is a :class:`CheckpointError`
(a ValueError) naming the file, except a missing file (FileNotFoundError) and a wrong ``kind``
(ValueError): missing keys, unexpected keys and shape mismatches are listed (the first few of each).

The "yoda" format (written by :func:`save_model`)
-------------------------------------------------
A safetensors file whose tensors are the model's ``state_dict()`` (upstream key names) and whose string
metadata holds:

    "format":  "yoda-model"
    "version": "1"
    "config":  JSON {"kind": "sr3" | "srdiff",
                     "args": constructor arguments (SR3Config.to_dict() / SRDiffConfig.to_dict()),
                     "schedule": Schedule.to_dict() = {"T": T, "betas": [float64 ...]}  (exact in JSON),
                     "scale": SR factor,
                     "prediction": "eps" | "x0" | "v", what the network outputs (absent: "eps"),
                     "extra": free-form JSON object (training notes, data, metrics) or absent}

``load("yoda", path)`` rebuilds the model from "args", loads the tensors strictly and attaches
``model.schedule``, ``model.scale`` and ``model.prediction``, so ``yoda.sample(model, lr)`` needs nothing else.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ._io import atomic_write

__all__ = ["load", "save_model", "read_checkpoint", "load_state_dict_checked", "CheckpointError", "KINDS",
           "FORMAT", "FORMAT_VERSION", "srdiff_config_from_state_dict"]

KINDS = ("sr3", "srdiff", "dino-vits8", "dino-resnet50", "yoda")
FORMAT = "yoda-model"
FORMAT_VERSION = "1"
_SHOW = 5  # how many keys an error message lists

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, wrong layout, missing / unexpected keys, wrong shapes."""


# ----------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------
def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    if not os.path.isfile(p):
        raise CheckpointError(f"checkpoint path is not a file: {p}")
    return p


def _is_safetensors(p: str) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(9)
    if p.endswith(".safetensors"):
        return True
    return len(head) == 9 and head[8:9] == b"{"


def read_checkpoint(path: PathLike) -> Tuple[Any, Optional[Dict[str, str]]]:
    """(object, safetensors metadata or None). Safetensors -> dict of tensors; torch files -> whatever was
    saved (weights_only=True: tensors, dicts, lists, numbers; no code)."""
    p = _check_path(path)
    if _is_safetensors(p):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(p, framework="pt", device="cpu") as fh:
                meta = fh.metadata()
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file (corrupt or truncated?): {e}") from e
        return tensors, meta
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors ...
        raise CheckpointError(
            f"{p}: could not read it as a torch checkpoint with weights_only=True "
            f"(corrupt, truncated, or it contains pickled code): {type(e).__name__}: {e}"
        ) from e
    return obj, None


def _fmt_keys(keys, n=_SHOW) -> str:
    keys = list(keys)
    s = ", ".join(repr(k) for k in keys[:n])
    return s + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_state_dict_checked(module: nn.Module, sd: Mapping[str, Any], where: str, hint: str = "") -> nn.Module:
    """``module.load_state_dict(sd, strict=True)`` after a check that reports, in one error, the missing
    keys, unexpected keys, non-tensor values and shape mismatches (a few of each)."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad_type = [k for k in sd if k in own and not isinstance(sd[k], torch.Tensor)]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sd if k in own and isinstance(sd[k], torch.Tensor) and sd[k].shape != own[k].shape]
    nonfinite = [k for k in sd if k in own and isinstance(sd[k], torch.Tensor) and sd[k].is_floating_point()
                 and not torch.isfinite(sd[k]).all()]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt_keys(unexpected)}")
    if bad_type:
        problems.append(f"values that are not tensors: {_fmt_keys(bad_type)}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:_SHOW])
                        + (f"; ... ({len(shapes)} in all)" if len(shapes) > _SHOW else ""))
    if nonfinite:
        problems.append(f"tensors with NaN/Inf: {_fmt_keys(nonfinite)}")
    if problems:
        raise CheckpointError(f"{where}: the weights do not fit {type(module).__name__}: " + " | ".join(problems)
                              + (f". {hint}" if hint else ""))
    module.load_state_dict(dict(sd), strict=True)
    return module


def _as_state_dict(obj: Any, where: str) -> Dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    bad = [k for k in obj if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{where}: state-dict keys must be strings, got {_fmt_keys(bad)}")
    return dict(obj)


def _strip_prefix(sd: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _fold_weight_norm(sd: Dict[str, Any]) -> Dict[str, Any]:
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


def _split_diffusion_buffers(sd: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    from .models.sr3 import SR3_DIFFUSION_BUFFERS

    bufs = {k: sd[k] for k in SR3_DIFFUSION_BUFFERS if k in sd}
    return {k: v for k, v in sd.items() if k not in bufs}, bufs


def _betas_match(bufs: Dict[str, Any], schedule) -> Optional[bool]:
    b = bufs.get("betas")
    if not isinstance(b, torch.Tensor) or b.dim() != 1:
        return None
    if b.numel() != schedule.T:
        return False
    # the checkpoint keeps float32 copies of float64 betas: compare at float32 resolution
    return bool(torch.allclose(b.double(), schedule.betas, rtol=1e-5, atol=1e-9))


# ----------------------------------------------------------------------------------------------------------
# SR3
# ----------------------------------------------------------------------------------------------------------
def _sr3_config(config: Any):
    from .models.sr3 import SR3_16_128, SR3Config, load_sr3_config, sr3_default_schedule

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


def _load_sr3(p: str, config: Any) -> nn.Module:
    from .models.sr3 import SR3UNet

    cfg, train_sched, val_sched = _sr3_config(config)
    obj, _ = read_checkpoint(p)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    sd = _strip_prefix(_as_state_dict(obj, p), "module.")
    sd, bufs = _split_diffusion_buffers(sd)
    if any(k.startswith("denoise_fn.") for k in sd):  # GaussianDiffusion.state_dict(): the *_gen.pth layout
        sd = {(k[len("denoise_fn."):] if k.startswith("denoise_fn.") else k): v for k, v in sd.items()}
    net = SR3UNet.from_config(cfg)
    load_state_dict_checked(net, sd, p, hint="For SR3 pass config= the JSON the model was trained with "
                            "(default: the 16->128 config).")
    match = [_betas_match(bufs, s) for s in (train_sched, val_sched)]
    if bufs.get("betas") is not None and not any(m for m in match):
        warnings.warn(f"{p}: the checkpoint's betas buffer matches neither the train nor the val schedule of the "
                      f"config; sampling uses the config's val schedule (T={val_sched.T})", stacklevel=3)
    net.schedule = val_sched
    net.train_schedule = train_sched
    net.scale = cfg.scale
    return net.eval()


# ----------------------------------------------------------------------------------------------------------
# SRDiff
# ----------------------------------------------------------------------------------------------------------
def srdiff_config_from_state_dict(sd: Mapping[str, Any], bufs: Optional[Mapping[str, Any]] = None, **over: Any):
    """The SRDiffConfig a state dict (``denoise_fn.*`` + ``rrdb.*`` keys) was built with, read from its
    shapes: hidden_size and sr_scale from ``cond_proj``, dim_mults from the down blocks, rrdb_num_block /
    rrdb_num_feat from the RRDB trunk, use_attn / up_input from the presence of their keys, timesteps and
    the schedule kind from the ``betas`` buffer (cosine unless it matches the linear one). ``over``
    overrides any field."""
    from .models.srdiff import SRDiffConfig, srdiff_beta_schedule

    def shape(k):
        v = sd.get(k)
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"SRDiff weights lack {k!r}: cannot read the architecture from them "
                                  "(pass config=)")
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
        if _betas_match({"betas": b}, srdiff_beta_schedule(lin)):
            args["beta_schedule"] = "linear"
    args.update(over)
    try:
        return SRDiffConfig(**args)
    except ValueError as e:
        raise CheckpointError(f"SRDiff weights imply an invalid config {args}: {e}") from e


def _load_srdiff(p: str, config: Any) -> nn.Module:
    from .models.srdiff import SRDiff, SRDiffConfig, load_srdiff_config, srdiff_beta_schedule

    obj, _ = read_checkpoint(p)
    # upstream: {'global_step', 'optimizer_states', 'state_dict': {'model': GaussianDiffusion.state_dict()}};
    # load_ckpt also accepts a flat state_dict with 'model.' prefixes.
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
            obj = obj["model"]
        elif isinstance(obj, Mapping):
            obj = {k[len("model."):]: v for k, v in obj.items() if isinstance(k, str) and k.startswith("model.")}
    sd = _strip_prefix(_as_state_dict(obj, p), "module.")
    sd, bufs = _split_diffusion_buffers(_fold_weight_norm(sd))
    if config is None:
        cfg = srdiff_config_from_state_dict(sd, bufs)
    elif isinstance(config, SRDiffConfig):
        cfg = config
    elif isinstance(config, (str, os.PathLike)):
        cfg = load_srdiff_config(config)
    elif isinstance(config, Mapping):
        cfg = SRDiffConfig.from_dict(dict(config), ignore_unknown=True)
    else:
        raise TypeError(f"config for kind 'srdiff' must be None, an SRDiffConfig, a dict or a YAML path; "
                        f"got {type(config).__name__}")
    model = SRDiff(cfg)
    load_state_dict_checked(model, sd, p, hint="SRDiff weights need 'denoise_fn.*' and 'rrdb.*' keys "
                            "(upstream GaussianDiffusion layout); check config=")
    sched = srdiff_beta_schedule(cfg)
    if _betas_match(bufs, sched) is False:
        warnings.warn(f"{p}: the checkpoint's betas buffer differs from the config's {cfg.beta_schedule} schedule "
                      f"(T={cfg.timesteps}); sampling uses the config's", stacklevel=3)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# The project's own format
# ----------------------------------------------------------------------------------------------------------
def _model_kind(model: nn.Module) -> str:
    from .models.sr3 import SR3UNet
    from .models.srdiff import SRDiff

    if isinstance(model, SR3UNet):
        return "sr3"
    if isinstance(model, SRDiff):
        return "srdiff"
    raise TypeError(f"model must be an SR3UNet or an SRDiff, got {type(model).__name__}")


def _build(kind: str, args: Mapping[str, Any]) -> nn.Module:
    from .models.sr3 import SR3Config, SR3UNet
    from .models.srdiff import SRDiff, SRDiffConfig

    if kind == "sr3":
        return SR3UNet.from_config(SR3Config.from_dict(dict(args)))
    if kind == "srdiff":
        return SRDiff(SRDiffConfig.from_dict(dict(args)))
    raise CheckpointError(f"unknown model kind {kind!r} in the yoda config (expected 'sr3' or 'srdiff')")


def save_model(model: nn.Module, path: PathLike, config: Any = None, schedule: Any = None, *,
               scale: Optional[int] = None, extra: Optional[dict] = None, prediction: Optional[str] = None) -> None:
    """Write ``model`` in the "yoda" format (module docstring). config: the model's config dataclass
    (default ``model.config``; for SR3 its ``scale`` is used when ``scale`` is None); schedule: the
    sampling Schedule (default ``model.schedule``); prediction: what the network outputs (default
    ``model.prediction`` or "eps"). The file is written to a temporary name and renamed,
    so a failure never leaves a half-written file at ``path``."""
    from safetensors.torch import save_file

    from .schedule import Schedule

    kind = _model_kind(model)
    config = model.config if config is None else config
    if hasattr(config, "to_dict"):
        args = config.to_dict()
    elif isinstance(config, Mapping):
        args = dict(config)
    else:
        raise TypeError(f"config must be the model's config dataclass or a dict, got {type(config).__name__}")
    schedule = getattr(model, "schedule", None) if schedule is None else schedule
    if not isinstance(schedule, Schedule):
        raise ValueError("schedule: a yoda.Schedule is required (the one the model samples with)")
    if scale is None:
        scale = args.get("scale") if kind == "sr3" else args.get("sr_scale")
        scale = scale if scale is not None else getattr(model, "scale", None)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale: the SR factor must be a positive int, got {scale!r}")
    prediction = prediction or getattr(model, "prediction", None) or "eps"
    if prediction not in ("eps", "x0", "v"):
        raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    if kind == "sr3":
        args["scale"] = scale
    elif scale != args.get("sr_scale"):
        raise ValueError(f"scale ({scale}) differs from the SRDiff config's sr_scale ({args.get('sr_scale')})")
    # the config must rebuild exactly this model: compare keys and shapes on the meta device (no memory)
    with torch.device("meta"):
        probe = _build(kind, args)
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))
        raise ValueError(f"config does not describe this model (state-dict keys/shapes differ: {diff[:_SHOW]})")
    try:
        meta_json = json.dumps({"kind": kind, "args": args, "schedule": schedule.to_dict(), "scale": scale,
                                "prediction": prediction,
                                **({"extra": extra} if extra is not None else {})})
    except TypeError as e:
        raise ValueError(f"extra / config must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "config": meta_json}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _load_yoda(p: str) -> nn.Module:
    from .schedule import Schedule

    tensors, meta = read_checkpoint(p)
    if meta is None or meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a yoda model file (safetensors metadata 'format' must be {FORMAT!r}; "
                              f"got {None if meta is None else meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: yoda model format version {meta.get('version')!r} is not supported "
                              f"(this yoda reads {FORMAT_VERSION!r})")
    try:
        cfg = json.loads(meta["config"])
        kind, args = cfg["kind"], cfg["args"]
        schedule = Schedule.from_dict(cfg["schedule"])
        scale = cfg["scale"]
        prediction = cfg.get("prediction", "eps")
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction {prediction!r}")
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: the yoda config in the metadata is malformed: {type(e).__name__}: {e}") from e
    try:
        model = _build(kind, args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{p}: the yoda config's args do not build a {kind} model: {e}") from e
    load_state_dict_checked(model, tensors, p)
    model.schedule = schedule
    model.prediction = prediction
    if kind == "sr3":
        model.scale = int(scale)
    model.yoda_config = cfg
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------
def load(kind: str, path: PathLike, config: Any = None) -> nn.Module:
    """Load a model of ``kind`` from ``path`` (in eval mode, on the CPU).

    kind: "sr3" (``*_gen.pth``; config: SR3 JSON path / SR3Config / dict, default the 16->128 config),
    "srdiff" (``model_ckpt_steps_*.ckpt``; config: SRDiffConfig / dict / YAML path, default: read from the
    weights), "dino-vits8" / "dino-resnet50" (official DINO files -> the attention extractor of
    yoda.attention.dino, usable as ``attention=``; config: None or a dict of its keyword arguments),
    "yoda" (a file written by :func:`save_model`; config must be None).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    p = _check_path(path)
    if kind == "sr3":
        return _load_sr3(p, config)
    if kind == "srdiff":
        return _load_srdiff(p, config)
    if kind == "yoda":
        if config is not None:
            raise ValueError("config must be None for kind 'yoda' (the file carries its own config)")
        return _load_yoda(p)
    try:
        from .attention import dino
    except ImportError as e:
        raise ImportError(f"kind {kind!r} needs yoda.attention.dino, which could not be imported: {e}") from e
    fn = dino.dino_vits8 if kind == "dino-vits8" else dino.dino_resnet50
    if config is None:
        return fn(p)
    if not isinstance(config, Mapping):
        raise TypeError(f"config for kind {kind!r} must be None or a dict of the extractor's keyword arguments "
                        f"(min_size, max_size, checkpoint_key{', groups' if kind == 'dino-resnet50' else ''}); "
                        f"got {type(config).__name__}")
    return fn(p, **dict(config))
