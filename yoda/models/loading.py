"""``yoda.load(kind, path)``: one entry point for every weight file yoda reads.

    net = yoda.load("sr3", "I640000_E37_gen.pth", config="sr_sr3_16_128.json")   # yoda.models.sr3_load
    net = yoda.load("srdiff", "model_ckpt_steps_400000.ckpt")                     # yoda.models.srdiff_load
    net = yoda.load("yoda", "yoda/weights/default_x4.safetensors")                # yoda.models.yoda_format
    net = yoda.load("yoda", "default")                                            # the embedded x4 model
    A   = yoda.load("dino-vits8", "dino_deitsmall8_pretrain.pth")                 # yoda.attention.dino
    sr  = yoda.sample(net, lr)

A weight file that cannot be used is a yoda.checkpoint.CheckpointError naming the file; a missing file (weights or
config) is a FileNotFoundError; a wrong ``kind``, or a config that does not fit it (bad SR3 JSON, an unknown SRDiff
key, a config for kind "yoda"), is a ValueError, and a config of the wrong type a TypeError.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from torch import nn

from ..checkpoint import CheckpointError, check_path
from ..devices import torch_defaults
from ..names import DEFAULT_SAMPLER, DEFAULT_STEPS
from .sr3_load import load_sr3
from .srdiff_load import load_srdiff
from .yoda_format import load_yoda

__all__ = ["KINDS", "DEFAULT_WEIGHTS", "DEFAULT_SAMPLING", "load", "is_default_weights"]

KINDS = ("sr3", "srdiff", "dino-vits8", "dino-resnet50", "yoda")
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "default_x4.safetensors"  # "default"
# How the embedded model samples where a call does not say (its ModelCard's sampling; the CLI's defaults too; why:
# yoda.names). DDPM over its T = 1000 steps: 2.7 dB lower on an astronaut crop, below bicubic on some (RESULTS.md).
DEFAULT_SAMPLING = {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS}

PathLike = Union[str, os.PathLike]


def _model_file(path: PathLike) -> str:
    """``path``, or for a training run's folder or a file in it that is no model (checkpoint.pt, log.csv) the run's
    one .safetensors file: what the hint of yoda.load(PATH) names."""
    path = os.fspath(path)
    run_file = os.path.basename(path) in ("checkpoint.pt", "config.json", "log.csv", "TRAINING.md")
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "." if run_file else None
    found = sorted(Path(folder).glob("*.safetensors")) if folder is not None else []
    return str(found[0]) if len(found) == 1 else path


def load(kind: str = "yoda", path: PathLike = "default", config: Any = None, *, scale: Optional[int] = None) -> nn.Module:
    """Load a model of ``kind`` from ``path`` (an nn.Module in eval mode, on the CPU; for the DINO kinds an attention
    extractor, a callable A = extractor(lr), which holds its network).

    kind: "sr3" (``*_gen.pth``; config: SR3 JSON path / SR3Config / dict, default the 16->128 config),
    "srdiff" (``model_ckpt_steps_*.ckpt``; config: SRDiffConfig / dict / YAML path, default: read from the
    weights), "dino-vits8" / "dino-resnet50" (official DINO files -> the attention extractor of
    yoda.attention.dino, usable as ``attention=``; config: None or a dict of its keyword arguments),
    "yoda" (a file written by :func:`yoda.save_model`; config must be None).
    scale: for "sr3" only, the scale where its config gives none (a JSON without ``datasets``, an SR3Config or
    dict without ``scale``); one that gives another is an error. ``yoda.load()``, i.e.
    ``yoda.load("yoda", "default")``, is the embedded default x4 model (DEFAULT_WEIGHTS, the CLI's ``--model
    default``): the name "default" always means it, never a file of that name.
    Models come back with their ModelCard (``model.card``), so ``yoda.sample(model, lr)`` needs nothing else; the
    embedded model's card (and that of any byte-identical copy) also says how it samples (DEFAULT_SAMPLING).
    Loading draws no random numbers (checkpoint.materialise): torch's generator is left as it was.
    """
    if kind not in KINDS:
        hint = (f": that is a path; yoda.load('yoda', {_model_file(kind)!r}) loads a model file of yoda's (KIND "
                f"first, then the path)" if isinstance(kind, (str, os.PathLike)) and os.path.exists(kind) else "")
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}{hint}")
    if scale is not None and kind != "sr3":
        raise ValueError(f"scale= is for kind 'sr3' (whose config may not give one); kind {kind!r} has its own")
    if kind == "yoda" and isinstance(path, str) and path == "default":
        path = DEFAULT_WEIGHTS
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):  # a training run's folder: its weights are in it
        found = sorted(Path(path).glob("*.safetensors"))
        raise CheckpointError(f"checkpoint path {os.fspath(path)} is a folder, not a file" + (
            f": its model is {found[0]}" if len(found) == 1 else ""))
    p = check_path(path)
    if config is not None and kind == "yoda":
        raise ValueError("config must be None for kind 'yoda' (the file carries its own config)")
    with torch_defaults():  # the file's float32 weights, on the CPU, whatever default the caller set (no frame of
        if kind == "sr3":  # its own: the loaders' warnings point at the caller's line)
            return load_sr3(p, config, scale)
        if kind == "srdiff":
            return load_srdiff(p, config)
        if kind == "yoda":
            net = load_yoda(p)
            net.card = embedded_card(net.card, p)
            return net
        try:
            from ..attention import dino
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


def embedded_card(card, path: PathLike):
    """``card`` with the embedded model's sampling defaults (DDIM, 1 step) where ``path`` is its file or a copy:
    they are yoda's, not the file's (a fine-tune from --init default sampled 1000 DDPM steps, 28.0 dB for 30.1)."""
    return dataclasses.replace(card, sampling=DEFAULT_SAMPLING) if is_default_weights(path) else card


def is_default_weights(path: PathLike) -> bool:
    """Whether ``path`` is the embedded model's file or a copy of it (the same bytes), so that the same weights get
    the same defaults however they are named."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size != DEFAULT_WEIGHTS.stat().st_size:
            return False
        return p.samefile(DEFAULT_WEIGHTS) or p.read_bytes() == DEFAULT_WEIGHTS.read_bytes()
    except OSError:
        return False
