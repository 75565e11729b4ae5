"""Image conversion and I/O (Pillow): the one implementation used by the library, the CLI and yoda.data.

    to_rgb_u8(arr)     any image array -> uint8 (H, W, 3): grey (H, W) / (H, W, 1) repeated to 3 channels,
                       RGBA composited on white (u = rgb * a + 255 * (1 - a), a = alpha / 255), bool and
                       float in [0, 1] scaled to 0..255
    quantize_u8(x)     float tensor in [-1, 1] -> its 8-bit levels as a float tensor (same shape and device):
                       u = round((clamp(x, -1, 1) + 1) * 127.5), computed in float32
    to_uint8(x)        x: (B, C, H, W) or (C, H, W) float in [-1, 1] -> uint8 (B, H, W, C) or (H, W, C) = u
    from_uint8(arr)    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> float32 (1, 3, H, W) in [-1, 1]:
                       x = to_rgb_u8(arr) / 127.5 - 1
    read_image(path)   a file Pillow reads -> uint8 (H, W, 3) via to_rgb_u8 (16-bit grey scaled to 8 bits)
    load_image(path)   from_uint8(read_image(path))
    save_image(x, path)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ._io import atomic_write


class DataError(ValueError):
    """A user-facing image or data problem (unreadable file, unsupported array, image too small, empty
    folder). yoda.data re-exports it."""


# ----------------------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------------------
def to_rgb_u8(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Any skimage/Pillow array -> uint8 (H, W, 3). Grey (H, W) or (H, W, 1) is repeated to 3 channels;
    RGBA is composited on white; bool and float in [0, 1] are scaled to 0..255. Errors name ``name``."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or a.size == 0 or a.min() < 0 or a.max() > 1:
            raise DataError(f"{name}: expected uint8 or float in [0, 1], got {a.dtype}")
        a = np.round(a * 255.0).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise DataError(f"{name}: expected (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = np.round(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def quantize_u8(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit level of each value of a [-1, 1] float tensor, u = round((clamp(x, -1, 1) + 1) * 127.5), as a
    float32 tensor of integers 0..255 (same shape and device; no autograd). Half-way values round to even.

    The one quantiser of the project: to_uint8 (files, metrics), make_lr and the training PSNR use it, so an
    image scored during training has exactly the pixels it would have when saved."""
    return ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()


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
    return quantize_u8(x.cpu()).to(torch.uint8).movedim(-3, -1).contiguous().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> float32 (1, 3, H, W) in [-1, 1].

    Grey is repeated to 3 channels and RGBA is composited on white (to_rgb_u8); x = u / 127.5 - 1."""
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
    u = to_rgb_u8(arr, "arr")
    x = torch.from_numpy(np.array(u, copy=True)).permute(2, 0, 1).unsqueeze(0).float()  # own, writable
    return x / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (any format Pillow reads) as uint8 (H, W, 3), see to_rgb_u8: grey repeated,
    alpha (RGBA, LA, transparent palette) composited on white, 16-bit grey scaled to 0..255.

    Errors name the file: FileNotFoundError (missing), ValueError (a folder), DataError (unreadable)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such image file: {p}")
    if not p.is_file():
        raise ValueError(f"path is not a file: {p}")
    try:
        with Image.open(p) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                arr = np.asarray(im.convert("RGBA"))
            elif im.mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = (np.asarray(im, dtype=np.float64) / 65535.0).clip(0, 1)  # 16-bit grey PNG
            else:
                arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"path: cannot read image {p}: {e}") from None
    return to_rgb_u8(arr, str(p))


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file (any format Pillow reads) -> float32 (1, 3, H, W) in [-1, 1] (RGB; see read_image)."""
    return from_uint8(read_image(path))


def image_format(path: str | os.PathLike) -> str:
    """Pillow's format name for the suffix of ``path`` (".png" -> "PNG"); ValueError naming ``path`` if none."""
    p = Path(path)
    ext = p.suffix.lower()
    formats = Image.registered_extensions()
    if ext.lstrip(".") == "" or ext not in formats:
        raise ValueError(f"path: cannot tell the image format from the suffix {p.suffix!r} of {p}")
    return formats[ext]


def save_pil(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write a Pillow image atomically (yoda._io.atomic_write), format from the suffix. Returns the path."""
    fmt = image_format(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            img.save(f, format=fmt)

    return atomic_write(path, write)


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
    return save_pil(Image.fromarray(arr), p)
