"""The one place a device name from the user ("auto", "cpu", "cuda") becomes a torch.device; torch_defaults."""

from __future__ import annotations

import contextlib
import threading

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(device) -> torch.device:
    """"auto": CUDA if torch sees a GPU, else the CPU; "cpu" / "cuda" / "cuda:N" (or a torch.device of them) as
    asked (ValueError if there is no such GPU)."""
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():  # a notebook's GPU 1
        if not torch.cuda.is_available() or int(device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"device {device} requested but there is no such CUDA GPU")
        return torch.device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICE_NAMES:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA GPU is available")
    return torch.device(device)


def rank_device(device: torch.device, world: int, local_rank: int) -> torch.device:
    """The device of a torchrun rank: cuda:LOCAL_RANK (modulo the visible GPUs) for a CUDA run of several
    processes, else ``device``."""
    if device.type == "cuda" and world > 1:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def cpu_default_device():
    """torch's default device (the CPU) for yoda's own tables, in this thread, where the caller set another with
    torch.set_default_device: a 'cuda' default put an edge map's blur kernel, a drawn seed or a loaded model's
    buffers there, or failed. A no-op otherwise (no torch-function mode in the common case)."""
    return torch.device("cpu") if torch.get_default_device().type != "cpu" else contextlib.nullcontext()


_DEFAULTS = threading.Lock()
_held = {"count": 0, "dtype": None}  # torch_defaults' callers now, and the caller's default dtype to put back


@contextlib.contextmanager
def torch_defaults():
    """torch's own defaults, float32 tensors on the CPU, while yoda builds or loads a model, whatever the caller set:
    under torch.set_default_dtype(torch.float64) a Trainer built a float64 model (its first float32 batch failed in
    a Linear) and yoda.load cast a file's float32 weights (bf16: an image 0.9 of a level off). The default dtype is
    process-wide: where the caller's is not float32, other threads' new tensors are float32 meanwhile (a model's
    construction or loading), and the caller's comes back when the last of the threads inside leaves (each put back
    what it found: two loads at once restored float64 while the other was building, a model part float64); where
    it is float32, nothing changes. Not around a user's own model or callback, which run under the caller's
    defaults."""
    entered = False
    try:
        with _DEFAULTS:
            dtype = torch.get_default_dtype()
            if _held["count"] == 0 or dtype != torch.float32:  # (not float32 while a load runs: the caller's own
                _held["dtype"] = dtype  # change meanwhile, which the last one out puts back)
            _held["count"] += 1
            entered = True
            if dtype != torch.float32:
                torch.set_default_dtype(torch.float32)
        with cpu_default_device():
            yield
    finally:
        if entered:
            with _DEFAULTS:
                _held["count"] -= 1
                if _held["count"] == 0 and _held["dtype"] != torch.float32:
                    torch.set_default_dtype(_held["dtype"])
