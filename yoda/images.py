"""Image conversion and I/O (Pillow): [-1, 1] float tensors <-> uint8 HWC arrays <-> files.

    to_uint8(x)      x: (B, C, H, W) or (C, H, W) float in [-1, 1] -> uint8 (B, H, W, C) or (H, W, C);
                     u = round((x + 1) * 127.5) after clamping to [-1, 1]
    from_uint8(arr)  (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> float32 (1, 3, H, W) in [-1, 1];
                     x = u / 127.5 - 1 (grey repeated to 3 channels, alpha dropped)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float tensor (B, C, H, W) or (C, H, W), C in {1, 3} -> uint8 numpy HWC (batch kept if given).

    Out-of-range values are clamped; NaN is an error (it has no pixel value)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor in [-1, 1], got {x.dtype}")
    if x.shape[-3] not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got {x.shape[-3]}")
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")
    u = ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return u.movedim(-3, -1).contiguous().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> float32 (1, 3, H, W) in [-1, 1]."""
    if isinstance(arr, Image.Image):
        arr = np.asarray(arr)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"arr must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise TypeError(f"arr must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"arr must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).unsqueeze(0).float()  # own, writable
    return x / 127.5 - 1.0


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file (any format Pillow reads) -> float32 (1, 3, H, W) in [-1, 1] (RGB)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such image file: {p}")
    if not p.is_file():
        raise ValueError(f"path is not a file: {p}")
    try:
        with Image.open(p) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            if im.mode not in ("RGB", "L"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"path: cannot read image {p}: {e}") from e
    if arr.dtype != np.uint8:  # 16-bit greyscale etc.
        raise ValueError(f"path: unsupported image mode in {p} (dtype {arr.dtype}); convert it to 8-bit RGB")
    return from_uint8(arr)


def _umask() -> int:
    um = os.umask(0)
    os.umask(um)
    return um


def save_image(x: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a [-1, 1] image (1, C, H, W) or (C, H, W) to ``path`` (format from the suffix, e.g. .png).

    Atomic: written to a temporary file in the same folder, then os.replace'd, so a failure never leaves
    a half-written image at ``path``. Returns the path."""
    p = Path(path)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"x must hold one image to save, got a batch of {x.shape[0]}")
        x = x[0]
    arr = to_uint8(x)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not p.parent.exists():
        raise FileNotFoundError(f"path: folder does not exist: {p.parent}")
    ext = p.suffix.lower()
    if ext.lstrip(".") == "" or ext not in Image.registered_extensions():
        raise ValueError(f"path: cannot tell the image format from the suffix {p.suffix!r} of {p}")
    fmt = Image.registered_extensions()[ext]
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(arr).save(f, format=fmt)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p
