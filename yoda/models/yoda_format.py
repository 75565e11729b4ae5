"""The project's own model file: the "yoda" format (written by :func:`save_model`, read by :func:`load_yoda`).

A safetensors file whose tensors are the model's ``state_dict()`` (upstream key names) and whose string
metadata holds:

    "format":  "yoda-model"
    "version": "1", or "2" when "upsampling" is not "torch" (an older yoda then refuses the file rather
               than sample it with the wrong up(lr))
    "config":  JSON {"kind": "sr3" | "srdiff",
                     "args": constructor arguments (SR3Config.to_dict() / SRDiffConfig.to_dict()),
                     "schedule": Schedule.to_dict() = {"T": T, "betas": [float64 ...]}  (exact in JSON),
                     "scale": SR factor,
                     "prediction": "eps" | "x0" | "v", what the network outputs (absent: "eps"),
                     "upsampling": how up(lr) is made, yoda.upsampling's method: "sr3" / "srdiff" for a
                                   released checkpoint saved again (absent: "torch", yoda's own models),
                     "sampling": {"sampler": name, "steps": n, "lower_bound": l}, yoda.sample's defaults
                                 for the model (ModelCard.sampling; any key may be absent, lower_bound for a
                                 model trained with YODA's masked input; absent: yoda.sample's own, DDPM over
                                 every step, l = 0.6),
                     "extra": free-form JSON object (training notes, data, metrics) or absent}
    "sha256":  content_digest of the tensors and "config" (files written since 2026-12-07; older ones have none):
               a byte flipped on disk loaded a different model, or a different schedule, without a word (safetensors
               keeps no checksum); a reader that knows no "sha256" ignores it

``load_yoda(path)`` (``yoda.load("yoda", path)``) checks the declared architecture against the tensors on the
meta device, gives that model the tensors (checkpoint.materialise: strictly) and returns it with its ModelCard
(schedule, scale, prediction, the space of its kind, sampling, and the whole config as ``card.config``), so
``yoda.sample(model, lr)`` needs nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from yoda_kernels.contract import PREDICTIONS

from .._io import atomic_write_bytes
from ..callables import unwrapped
from ..checkpoint import (CheckpointError, check_block_count, check_state_dict, fmt_keys, materialise,
                          nonfinite_keys, read_checkpoint, refuse_latent, refuse_train_checkpoint)
from ..masks import as_int
from ..schedule import Schedule
from ..upsampling import METHODS as UPSAMPLINGS
from .card import ModelCard
from .sr3 import SR3Config, SR3UNet
from .srdiff import SRDiff, SRDiffConfig

__all__ = ["FORMAT", "FORMAT_VERSION", "save_model", "load_yoda", "model_kind"]

FORMAT = "yoda-model"  # checkpoint.refuse_yoda_file knows it too (checkpoint imports no model)
FORMAT_VERSION = "1"
# version 2: the same, with an "upsampling" other than "torch" (a released SR3 / SRDiff model saved again), which
# a reader of version 1 would ignore and sample with torch's bicubic; files with torch's stay version 1
FORMAT_VERSIONS = ("1", "2")
SPACE_OF_KIND = {"sr3": "pixel", "srdiff": "residual"}
# the config's keys (save_model writes them; load_yoda refuses others)
CONFIG_KEYS = frozenset({"kind", "args", "schedule", "scale", "prediction", "upsampling", "sampling", "extra"})
_SHOW = 5  # how many differing keys an error message lists

PathLike = Union[str, os.PathLike]


def model_kind(model: nn.Module) -> str:
    if isinstance(model, SR3UNet):
        return "sr3"
    if isinstance(model, SRDiff):
        return "srdiff"
    raise TypeError(f"model must be an SR3UNet or an SRDiff (or DataParallel, DistributedDataParallel, an EMA's "
                    f"AveragedModel or torch.compile around one), got {type(model).__name__}")


def model_config(kind: str, args: Mapping[str, Any]):
    """The config dataclass of a model of ``kind`` with constructor ``args``, checked (nothing is built)."""
    if kind == "sr3":
        return SR3Config.from_dict(dict(args))
    if kind == "srdiff":
        return SRDiffConfig.from_dict(dict(args))
    raise CheckpointError(f"unknown model kind {kind!r} in the yoda config (expected 'sr3' or 'srdiff')")


def build_model(kind: str, args: Mapping[str, Any]) -> nn.Module:
    """An SR3UNet (kind "sr3": SR3Config fields) or an SRDiff (kind "srdiff": SRDiffConfig fields) from ``args``."""
    cfg = model_config(kind, args)
    return SR3UNet.from_config(cfg) if kind == "sr3" else SRDiff(cfg)


def _check_declared(p: str, kind: str, args: Mapping[str, Any], tensors: Mapping[str, Any], T: int) -> nn.Module:
    """Before anything is built: the architecture the metadata declares must fit the file's tensors; returns the
    model, on the meta device.

    Cheap counts first (every block holds at least one tensor; SRDiff's default schedule has ``timesteps``
    entries), so a config declaring millions of blocks is refused at once; then the model is built on the meta
    device (no memory) and its keys and shapes are compared with the tensors (check_state_dict)."""
    try:
        cfg = model_config(kind, args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{p}: the yoda config's args do not build a {kind!r} model: {e}") from e
    check_block_count(p, cfg.blocks, tensors, "the yoda config")
    # SRDiff builds its own schedule of cfg.timesteps betas (the file's schedule may differ): one far longer than
    # both the file's T and any real schedule (10,000 steps) only serves to allocate memory, so it is refused
    if kind == "srdiff" and cfg.timesteps > max(T, 10_000):
        raise CheckpointError(f"{p}: the yoda config declares timesteps={cfg.timesteps}, but the file's "
                              f"schedule has T={T}")
    try:
        with torch.device("meta"):
            probe = build_model(kind, args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # (channels of 10**12: torch's storage
        # size overflows even on meta)
        raise CheckpointError(f"{p}: the yoda config's args do not build a {kind!r} model: {e}") from e
    check_state_dict(probe, tensors, p)
    return probe


def _numpy_scalar(o: Any) -> Any:
    """json.dumps' default= for numpy scalars (np.int64(4) -> 4); anything else is not JSON."""
    if isinstance(o, np.generic) and o.dtype.kind in "biuf":
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def check_str_keys(obj: Any, name: str) -> None:
    """Every key of every mapping in ``obj`` a str: json.dumps writes {1: 2} as {"1": 2}, which loads as another
    dict (and {1: "a", "1": "b"} as one key)."""
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:  # (None is a key too)
            raise TypeError(f"{name}: keys must be strings (JSON's), got {bad[0]!r}")
        for k, v in obj.items():
            check_str_keys(v, f"{name}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_str_keys(v, f"{name}[{i}]")


def _writable_extra(extra: Any) -> Optional[dict]:
    """A loaded file's extra, if save_model can write it back (a JSON object of finite numbers; another tool's file
    may hold a string or a NaN there, which yoda reads but never writes): else None, dropped."""
    try:
        json.dumps(extra, allow_nan=False, default=_numpy_scalar)
    except (TypeError, ValueError):
        return None
    return dict(extra) if isinstance(extra, Mapping) else None


def save_model(model: nn.Module, path: PathLike, config: Any = None, schedule: Any = None, *,
               scale: Optional[int] = None, extra: Optional[dict] = None, prediction: Optional[str] = None,
               sampling: Optional[Mapping] = None) -> None:
    """Write ``model`` (an SR3UNet or SRDiff; of DataParallel, an EMA's AveragedModel or torch.compile around one,
    nested or not: the one inside) in the "yoda" format (module docstring). config: the model's config dataclass
    (default ``model.config``); schedule, scale, prediction: given here, else from the model's card
    (``model.card``), else the config's (SR3's ``scale``, SRDiff's ``sr_scale`` and schedule) and "eps";
    sampling (yoda.sample's defaults for the model, ModelCard.sampling): given here, else the card's, else none;
    extra (free-form JSON, e.g. the training config): given here, else a loaded file's (the card's config).
    Written through yoda._io.atomic_write_bytes, so a failure never leaves a half-written file at ``path``."""
    from safetensors.torch import save

    model = unwrapped(model)  # the SR3UNet / SRDiff inside DataParallel, AveragedModel, torch.compile (as sample's)
    kind = model_kind(model)
    config = model.config if config is None else config
    if hasattr(config, "to_dict"):
        args = config.to_dict()
    elif isinstance(config, Mapping):
        args = dict(config)
    else:
        raise TypeError(f"config must be the model's config dataclass or a dict, got {type(config).__name__}")
    card = model.card
    if schedule is None:
        schedule = card.schedule if card is not None else (model.schedule if kind == "srdiff" else None)
    if not isinstance(schedule, Schedule):
        raise ValueError("schedule: a yoda.Schedule is required (the one the model samples with; give it here "
                         "or as the model's card)")
    if scale is None:
        scale = card.scale if card is not None else (args.get("scale") if kind == "sr3" else args.get("sr_scale"))
    scale = as_int(scale, "scale", "the SR factor, a positive int")  # numpy ints too: stored as an int
    if scale < 1:
        raise ValueError(f"scale: the SR factor must be a positive int, got {scale}")
    if prediction is None:
        prediction = card.prediction if card is not None else "eps"
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if sampling is None and card is not None:
        sampling = card.sampling
    if sampling is not None:  # checked as the card that load_yoda makes of it checks it
        sampling = dict(ModelCard(schedule, scale, sampling=sampling).sampling)
    upsampling = getattr(model, "upsampling", "torch")  # a released SR3 / SRDiff checkpoint's ("sr3", "srdiff")
    if upsampling not in UPSAMPLINGS:
        raise ValueError(f"the model's upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
    if kind == "sr3":
        args["scale"] = scale
    elif scale != args.get("sr_scale"):
        raise ValueError(f"scale ({scale}) differs from the SRDiff config's sr_scale ({args.get('sr_scale')})")
    # the config must rebuild exactly this model: compare keys and shapes on the meta device (no memory)
    with torch.device("meta"):
        probe = build_model(kind, args)
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))
        raise ValueError(f"config does not describe this model (state-dict keys/shapes differ: {diff[:_SHOW]})")
    if extra is None and card is not None and isinstance(card.config, Mapping):  # a re-save kept no training config
        extra = _writable_extra(card.config.get("extra"))
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict (a JSON object) or None, got {type(extra).__name__}")
    meta = {"kind": kind, "args": args, "schedule": schedule.to_dict(), "scale": scale, "prediction": prediction,
            "upsampling": upsampling, **({"sampling": sampling} if sampling is not None else {}),
            **({"extra": dict(extra)} if extra is not None else {})}
    try:  # strict JSON (no NaN token), numpy scalars as numbers; a circle is a ValueError of json's
        meta_json = json.dumps(meta, allow_nan=False, default=_numpy_scalar)
    except (TypeError, ValueError) as e:
        raise ValueError(f"extra / config must be JSON-serialisable (finite numbers): {e}") from e
    for name in ("extra", "args"):
        check_str_keys(meta.get(name), name if name == "extra" else "config")
    sd = model.state_dict()
    if any(v.is_meta for v in sd.values()):
        raise ValueError("model: its weights are on the meta device (never loaded); there is nothing to save")
    nonfinite = nonfinite_keys(sd)
    if nonfinite:  # yoda.load would refuse the file as corrupt: write none
        raise ValueError(f"model: tensors with NaN/Inf: {fmt_keys(nonfinite)} (a diverged training run?); "
                         f"nothing was written")
    if str(path).lower().endswith((".pt", ".pth", ".ckpt", ".bin")):  # (torch.load failed on it: "invalid load key")
        import warnings

        warnings.warn(f"path: {os.path.basename(str(path))} is written as safetensors (the yoda format), which "
                      f"torch.load does not read; yoda.load does, and a .safetensors name says what it is",
                      UserWarning, stacklevel=2)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    metadata = {"format": FORMAT, "version": FORMAT_VERSION if upsampling == "torch" else "2", "config": meta_json,
                "sha256": content_digest(tensors, meta_json)}
    # bytes first: safetensors reports a full disk as a SafetensorError of its own, not an OSError naming path
    atomic_write_bytes(path, _sorted_header(save(tensors, metadata=metadata)))


def content_digest(tensors: Mapping[str, torch.Tensor], config_json: str) -> str:
    """sha256 (hex) of a yoda file's config JSON and of its tensors in key order (each its name, dtype, shape and
    bytes): the same whatever order or padding a safetensors writer gives them."""
    h = hashlib.sha256(config_json.encode("utf-8"))
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"\0{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with the JSON header's keys sorted (padded with spaces to 8 bytes, as the format asks):
    its writer orders the metadata by a hash map, so the same model saved twice gave files of other sha256 (5 of 8
    saves differed). The tensors' offsets count from the end of the header, so they stand."""
    n = int.from_bytes(data[:8], "little")
    text = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


UPSTREAM_HINT = ("an upstream SR3 *_gen.pth or SRDiff model_ckpt_steps_*.ckpt loads as sr3:PATH / srdiff:PATH "
                 "(yoda.load('sr3' / 'srdiff', PATH))")


def load_yoda(p: str, upstream_hint: str = UPSTREAM_HINT) -> nn.Module:
    """The model of the "yoda" file ``p`` (eval mode, CPU) with its ModelCard (module docstring). upstream_hint: what
    the error for a file without yoda's metadata (an upstream checkpoint, perhaps) says to do."""
    tensors, meta = read_checkpoint(p)
    refuse_train_checkpoint(tensors, meta, p)
    if meta is None or meta.get("format") != FORMAT:
        refuse_latent(tensors, p)  # (SD's .safetensors often carry {"format": "pt"})
        hint = f"; {upstream_hint}" if meta is None else ""
        raise CheckpointError(f"{p}: not a yoda model file (safetensors metadata 'format' must be {FORMAT!r}; "
                              f"got {None if meta is None else meta.get('format')!r}){hint}")
    if meta.get("version") not in FORMAT_VERSIONS:
        raise CheckpointError(f"{p}: yoda model format version {meta.get('version')!r} is not supported "
                              f"(this yoda reads {' and '.join(map(repr, FORMAT_VERSIONS))})")
    if "sha256" in meta and "config" in meta and meta["sha256"] != content_digest(tensors, meta["config"]):
        raise CheckpointError(f"{p}: it is corrupt: its tensors or config differ from what was saved (sha256 "
                              f"{meta['sha256'][:16]}...; a damaged copy or disk)")
    try:
        cfg = json.loads(meta["config"])
        kind, args = cfg["kind"], cfg["args"]
        schedule = Schedule.from_dict(cfg["schedule"])
        scale = cfg["scale"]
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        prediction = cfg.get("prediction", "eps")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        upsampling = cfg.get("upsampling", "torch")  # files written before 2026-12-03 lack it: yoda's own models
        if upsampling not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {upsampling!r}")
        if kind == "srdiff" and isinstance(args, Mapping) and scale != args.get("sr_scale", scale):
            raise ValueError(f"scale {scale} differs from the SRDiff args' sr_scale {args.get('sr_scale')}")
        if kind == "sr3" and isinstance(args, Mapping) and scale != args.get("scale", scale):  # (loaded as scale)
            raise ValueError(f"scale {scale} differs from the SR3 args' scale {args.get('scale')}")
        unknown = sorted(set(cfg) - CONFIG_KEYS)  # a misspelt "predicton" was ignored: an x0 model sampled as eps
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} (the keys are {sorted(CONFIG_KEYS)}; data of one's own "
                             f"goes in 'extra')")
        if not isinstance(args, Mapping):
            raise TypeError(f"args must be a JSON object, got {type(args).__name__}")
    except (KeyError, TypeError, ValueError, RecursionError) as e:  # (a thousand-deep nest: RecursionError)
        raise CheckpointError(f"{p}: the yoda config in the metadata is malformed: {type(e).__name__}: {e}") from e
    if not isinstance(kind, str) or kind not in SPACE_OF_KIND:
        raise CheckpointError(f"{p}: unknown model kind {kind!r} in the yoda config (expected 'sr3' or 'srdiff')")
    try:
        card = ModelCard(schedule=schedule, scale=int(scale), prediction=prediction, space=SPACE_OF_KIND[kind],
                         config=cfg, sampling=cfg.get("sampling"))
    except (TypeError, ValueError) as e:  # a bad "sampling"
        raise CheckpointError(f"{p}: the yoda config in the metadata is malformed: {type(e).__name__}: {e}") from e
    # checked on the meta device before anything is allocated, then given the file's tensors
    model = materialise(_check_declared(p, kind, args, tensors, schedule.T), tensors)
    model.upsampling = upsampling
    model.card = card
    return model.eval()
