"""Reading the attention networks' weights: a local .pth / .pt / .bin (torch.load, weights_only=True) or
.safetensors file, told apart by content; DINO's training checkpoints unwrapped (teacher, module., backbone.);
loaded strictly with one error that names the file and the format expected."""
from __future__ import annotations

import argparse
import contextlib
import os
import threading
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn

from ..checkpoint import (CheckpointError, build_checked, check_zip, is_safetensors, load_failure, read_safetensors,
                          refuse_lfs_pointer, weights_only_refusal)
from ..errors import broken_link

_WRAPPER_KEYS = ("teacher", "state_dict", "model", "student", "model_ema", "state_dict_ema")
_PREFIXES = ("module.", "_orig_mod.", "backbone.")  # DDP, torch.compile, DINO's MultiCropWrapper
_ALLOW_LIST_LOCK = threading.Lock()  # around torch.load of a DINO pickle (read_weights)


def _read_file(path: str, fmt: str) -> Mapping:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"weights must be a path to {fmt}, got {type(path).__name__}")
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"weights {path!r} is a folder, not a file (expected {fmt})")
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/null, a FIFO: not "not found"
        raise CheckpointError(f"weights {path!r} is not a regular file (a device or a pipe; expected {fmt})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}{broken_link(path)} (expected {fmt})")
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise CheckpointError(f"weights file {path!r} is empty (expected {fmt})")
    # by content (safetensors = 8-byte header length + "{"; torch.save = a zip ("PK") or, before torch 1.6, a
    # pickle (protocol byte 0x80)); by name only for a .safetensors file too damaged to tell, as yoda.load
    refuse_lfs_pointer(path, CheckpointError)
    if is_safetensors(path):
        try:
            return read_safetensors(path)[0]
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"cannot read weights {path!r} as safetensors (corrupt or truncated?; expected "
                                  f"{fmt}): {e}") from e
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(f"weights file {path!r} is neither a PyTorch checkpoint nor a safetensors file "
                              f"(expected {fmt})")
    check_zip(path)
    try:
        # DINO's training checkpoints also pickle the run's argparse.Namespace ("args"): a plain
        # attribute bag, safe to allow; every other non-tensor object is still refused
        # torch's allow-list is process-wide and its context removes the entry on exit, whoever added it: one
        # load at a time edits it, and an entry the user added is left alone
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with _ALLOW_LIST_LOCK:
            if allow is None or argparse.Namespace in torch.serialization.get_safe_globals():
                allow = lambda _: contextlib.nullcontext()  # noqa: E731
            with allow([argparse.Namespace]), open(path, "rb") as fh:  # (a file object: torch.load reads a path
                return torch.load(fh, map_location="cpu", weights_only=True)  # named .safetensors as safetensors)
    except Exception as e:  # torch's advice to retry with weights_only=False would run the file's code
        refused = weights_only_refusal(path, e)
        if refused:
            raise CheckpointError(f"{refused} (expected {fmt})") from None
        raise CheckpointError(f"cannot read weights {path!r} with torch.load(weights_only=True) (expected "
                              f"{fmt}): {load_failure(e)}") from None


def load_state_dict(path: str, fmt: str = "a state dict", checkpoint_key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a state dict from a local .pth/.pt/.bin (torch.load, weights_only=True) or .safetensors file.

    Unwraps DINO training checkpoints: if the top level is not a tensor dict, the entry
    ``checkpoint_key`` (default: the first of teacher, state_dict, model, student, model_ema, state_dict_ema
    present) is taken; then the prefixes "module.", "_orig_mod." and "backbone." are stripped (DINO's
    load_pretrained_weights; torch.compile's), and when "backbone." was present the DINO projection head's
    "head.*" keys are dropped. Two keys that become one are refused (a student's and a teacher's in one dict).
    """
    sd = _read_file(path, fmt)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"weights {path!r} hold a {type(sd).__name__}, expected {fmt}")
    top = sorted(map(str, sd))[:8]
    if checkpoint_key is not None:
        if checkpoint_key not in sd:
            raise CheckpointError(
                f"weights {path!r} have no entry {checkpoint_key!r} (top-level keys: {top})"
            )
        sd = sd[checkpoint_key]
    elif not all(isinstance(v, torch.Tensor) for v in sd.values()):
        for k in _WRAPPER_KEYS:
            if k in sd and isinstance(sd[k], Mapping):
                sd = sd[k]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"weights {path!r} are not a dict of tensors (expected {fmt}; top-level keys: {top}): "
                              f"checkpoint_key= names the entry that holds the weights")
    odd = [k for k in sd if not isinstance(k, str)]
    if odd:  # (it was an AttributeError of str.startswith, naming no file)
        raise CheckpointError(f"weights {path!r} are not a state dict: its keys are parameter names, not "
                              f"{', '.join(sorted({type(k).__name__ for k in odd}))} ({odd[0]!r}; expected {fmt})")
    out: Dict[str, torch.Tensor] = {}
    source: Dict[str, str] = {}
    wrapped = False
    for k0, v in sd.items():
        k = k0
        while prefix := next((p for p in _PREFIXES if k.startswith(p)), None):  # in any order: compile(DDP(m))
            wrapped = wrapped or prefix == "backbone."
            k = k[len(prefix):]
        if k in out:
            raise CheckpointError(f"weights {path!r}: the keys {source[k]!r} and {k0!r} are both {k!r} without the "
                                  f"prefixes {', '.join(_PREFIXES)} (two models' weights in one dict?); keep one")
        out[k], source[k] = v, k0
    if wrapped:
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    return out


def load_strict(build: Callable[[], nn.Module], sd: Mapping[str, torch.Tensor], path: str, fmt: str) -> nn.Module:
    """build() loaded strictly with sd, checked on the meta device first (a file's shapes set the size, so a tiny
    file could declare a huge net), with one error that names the file and the expected format and lists a few
    missing / unexpected / mis-shaped keys (yoda.checkpoint's check, shared with the SR models)."""
    return build_checked(build, sd, where=f"weights {path!r}", hint=f"Expected {fmt}.")
