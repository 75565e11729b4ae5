"""Image conversion and I/O (Pillow): the one implementation used by the library, the CLI and yoda.data.

    to_rgb_u8(arr)     any image array -> uint8 (H, W, 3): grey (H, W) / (H, W, 1) repeated to 3 channels,
                       RGBA composited on white (u = rgb * a + 255 * (1 - a), a = alpha / 255), bool and
                       float in [0, 1] scaled to 0..255
    quantize_u8(x)     float tensor in [-1, 1] -> its 8-bit levels as a float tensor (same shape and device):
                       u = round((clamp(x, -1, 1) + 1) * 127.5), computed in float32
    to_uint8(x)        x: (B, C, H, W) or (C, H, W) float in [-1, 1] -> uint8 (B, H, W, C) or (H, W, C) = u
    from_uint8(arr)    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> float32 (1, 3, H, W) in [-1, 1]:
                       x = to_rgb_u8(arr) / 127.5 - 1
    read_image(path)   a file Pillow reads -> uint8 (H, W, 3) via to_rgb_u8, EXIF orientation applied, at most
                       MAX_PIXELS pixels (checked from the header, before decoding)
    load_image(path)   from_uint8(read_image(path))
    save_image(x, path, exif=None, xmp=None)
                       to_uint8(x) written atomically in the suffix's format (JPEG / WebP at quality 95, TIFF
                       LZW), with an EXIF block and an XMP packet (yoda.exif / yoda.xmp) where given
    check_output(path) before any work: the suffix names a format yoda writes, the parent is a writable folder

Sample values map to 8 bits by the range of their type, never by the image's own min and max:
8-bit u -> u; 16-bit u -> round(u * 255 / 65535) (16-bit RGB PNG: Pillow keeps the high byte, u >> 8);
float (TIFF mode "F") f in [0, 1] -> round(f * 255), other float values (or NaN/Inf) are refused; 32-bit
integer samples must lie in 0..65535 (read as 16-bit) and are refused otherwise. Then x = u / 127.5 - 1.
Pillow decodes single-channel float32 TIFFs only: float16, float64 and RGB float TIFFs (tifffile, cv2) are refused
with a DataError saying so, not as "not an image".

Colour: an image with an embedded ICC profile (RGB, RGBA, CMYK: phone photos in Display P3, Adobe RGB prints; grey:
a scan in Gray Gamma 1.8) is converted to sRGB with Pillow's ImageCms (LittleCMS, perceptual intent) before anything
else (yoda.colour); yoda's models and outputs are sRGB, and outputs carry no profile. A profile LittleCMS cannot read
is ignored with a warning (the pixels are taken as sRGB). Grey images without a profile keep their values.

Pixel limit: MAX_PIXELS (default 8192 * 8192, 0 = no limit) refuses larger images with a DataError naming the
file. The environment variable YODA_MAX_PIXELS sets it, read where the limit is used (a bad value is a ValueError
there, never at import); assigning yoda.images.MAX_PIXELS overrides it. read_image(path, max_pixels=N) and the
CLI's --max-pixels N raise it for one call. Pillow's own decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS,
refused above twice it, about 179 MP; a DecompressionBombWarning above it) still applies; the CLI raises it
along with --max-pixels and silences that warning, so its error stays one line.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
from PIL import ExifTags, Image, ImageMode, ImageOps, UnidentifiedImageError

from ._io import atomic_write, check_writable
from .colour import to_srgb
from .errors import UserError, broken_link, printable
from .metadata import add_blocks, check_blocks
from .names import OUTPUT_SUFFIXES  # the formats yoda writes

if TYPE_CHECKING:  # torch is imported where it is used: yoda plot and yoda data build read images without it
    import torch

DEFAULT_MAX_PIXELS = 8192 * 8192
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}  # the widest / tallest image these formats hold (libwebp; libjpeg-turbo)
DARK_16BIT = 32 * 257  # 16-bit integer samples all below this are said to be a nearly black image (8-bit level 32)
LOSSY_QUALITY = 95  # JPEG / WebP quality of save_pil (Pillow's default, 75, loses several dB of PSNR)
MAX_CLASSIC_BYTES = 2**32 - 1  # BMP's size field; a larger TIFF is a BigTIFF (a classic one failed: struct.error)
PNG_LEVEL = 3  # zlib level of PNG outputs (save_pil)
TIFF_PREDICTOR = 317  # TIFF tag: 2, horizontal differencing before LZW (save_pil)
# The raster formats read_image decodes. Pillow picks a decoder by content, not name: without this list an EPS named
# .png would go to Ghostscript, and an ICO would decode the PNG inside it at open(), before its size is checked.
READ_FORMATS = ("PNG", "JPEG", "JPEG2000", "WEBP", "AVIF", "HEIF", "TIFF", "BMP", "DIB", "GIF", "PPM", "TGA", "QOI",
                "PCX", "SGI", "PSD")


def _env_max_pixels() -> int:
    """The limit YODA_MAX_PIXELS sets (unset or empty: DEFAULT_MAX_PIXELS). Read where the limit is used, not at
    import, so a bad value never breaks ``import yoda``: it is a UserError (a ValueError: one line from the CLI)."""
    raw = os.environ.get("YODA_MAX_PIXELS", "")
    v = raw.strip()
    if not v:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < 0:
        raise UserError(f"YODA_MAX_PIXELS must be a non-negative integer, got {raw!r}")
    return n


def pixel_limit(max_pixels: Optional[int] = None) -> int:
    """The pixel limit in force (0: no limit): ``max_pixels`` when given, else yoda.images.MAX_PIXELS once a value
    was assigned to it, else YODA_MAX_PIXELS, else DEFAULT_MAX_PIXELS (read at each call)."""
    if max_pixels is not None:
        return max_pixels
    return globals()["MAX_PIXELS"] if "MAX_PIXELS" in globals() else _env_max_pixels()


def __getattr__(name: str):
    """MAX_PIXELS: pixel_limit() until a value is assigned to yoda.images.MAX_PIXELS (which then holds)."""
    if name == "MAX_PIXELS":
        return pixel_limit()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DataError(UserError):
    """A user-facing image or data problem (unreadable file, unsupported array, image too small, empty
    folder); a yoda.errors.UserError, hence a ValueError. yoda.data re-exports it."""


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
        if (not np.issubdtype(a.dtype, np.floating) or a.size == 0 or not np.isfinite(a).all()
                or a.min() < 0 or a.max() > 1):
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
    return x.detach().float().clamp(-1.0, 1.0).add_(1.0).mul_(127.5).round_()  # one image-sized temporary


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float tensor (B, C, H, W) or (C, H, W), C in {1, 3} -> uint8 numpy HWC (batch kept if given).

    Values a little out of range (a resize's overshoot, up to LR_MARGIN) are clamped; NaN, Inf, values further out
    (a [0, 255] tensor was written all white) and an empty image are errors naming ``x``."""
    import torch

    from .attention.classic import check_values
    from .masks import check_dense

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_dense(x, "x")  # (a sparse image failed in torch: "Could not run 'aten::aminmax' ... SparseCPU")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor in [-1, 1], got {x.dtype}")
    if x.shape[-3] not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got {x.shape[-3]}")
    if x.is_meta:
        raise ValueError("x is on the meta device: it holds no values")
    if x.numel() == 0:  # (a batch of none was aminmax's "cannot compute aminmax over an empty dimension")
        raise ValueError(f"x is an empty image (shape {tuple(x.shape)})")
    check_values(x, "x")
    return quantize_u8(x.cpu()).to(torch.uint8).movedim(-3, -1).contiguous().numpy()


GREY_LEVELS = 2  # is_grey: the most a grey image's channels may differ by, in 8-bit levels


def is_grey(a: np.ndarray) -> bool:
    """Whether the uint8 (H, W, 3) image ``a`` is grey (its three channels within GREY_LEVELS of each other at
    every pixel: a black-and-white scan or photograph saved as RGB): `yoda upscale` writes a grey input's output
    as grey, and yoda eval scores that. Within a few levels, not exactly equal: a JPEG's grey photograph is a level
    off here and there, and an RGB output of it would keep the faint colour fringe (up to 18 levels) that the
    model, not colour-neutral, gives grey."""
    return bool((a.max(axis=-1) - a.min(axis=-1)).max() <= GREY_LEVELS)  # the widest channel spread of a pixel


def as_written(sr: torch.Tensor, grey: bool) -> torch.Tensor:
    """``sr`` as `yoda upscale` writes it: for a grey input the channels' mean (one channel), else ``sr``."""
    return sr.mean(dim=-3, keepdim=True) if grey else sr


def output_u8(sr: torch.Tensor, grey: bool) -> np.ndarray:
    """uint8 (H, W, 3) of the first image of ``sr`` as `yoda upscale` writes it (as_written), grey repeated: the
    file read back."""
    u = to_uint8(as_written(sr, grey))[0]
    return np.repeat(u, 3, axis=2) if grey else u


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """uint8 image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), or a PIL image of 8-bit samples -> float32
    (1, 3, H, W) in [-1, 1]; a batch (B, H, W, C) (to_uint8 of a batch) -> (B, 3, H, W), so the two round-trip.

    Grey is repeated to 3 channels and RGBA is composited on white (to_rgb_u8; a warning says how many pixels were
    not opaque, as load_image's does); x = u / 127.5 - 1. A PIL image
    of another mode is converted as read_image converts a file's (palette, 1-bit, LA, CMYK, YCbCr ...; from its
    ICC profile to sRGB; not turned by its EXIF orientation). Files of other bit depths: yoda.load_image."""
    import torch

    if isinstance(arr, Image.Image):
        if arr.mode.startswith(("I", "F")):
            raise TypeError(f"arr: a PIL image of mode {arr.mode!r} has samples wider than 8 bits; "
                            "yoda.load_image reads such files")
        arr = _samples(to_srgb(arr, Path("arr")), Path("arr"), stacklevel=3)  # (alpha: a warning at our caller)
    elif isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim in (3, 4) and arr.shape[-1] == 4:
        _warn_of_alpha(arr[..., 3], "arr", stacklevel=2)  # (H, W, 4) or a batch of them: once
    if isinstance(arr, torch.Tensor):  # torchvision.io.read_image's (C, H, W), not this function's (H, W, C)
        raise TypeError("arr must be a numpy array (H, W, C) or a PIL image, got a torch tensor: yoda's lr of a "
                        "uint8 (C, H, W) tensor x (torchvision.io.read_image's) is x[None].float() / 127.5 - 1, "
                        "of an (H, W, C) one from_uint8(x.numpy())")
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"arr must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise TypeError(f"arr must be uint8, got {arr.dtype} (yoda.load_image reads a file of any bit depth)")
    batch = arr.ndim == 4 and arr.shape[0] > 0 and arr.shape[3] in (1, 3, 4) and arr.shape[1] and arr.shape[2]
    if not batch and arr.ndim == 2:
        arr = arr[:, :, None]
    if not batch and (arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0):
        raise ValueError(f"arr must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), or a batch (B, H, W, C) of them, "
                         f"got shape {arr.shape}")
    us = [to_rgb_u8(a, "arr") for a in (arr if batch else [arr])]
    x = torch.from_numpy(np.stack(us)).permute(0, 3, 1, 2).float()  # (np.stack: its own, writable)
    return (x / 127.5 - 1.0).contiguous()  # not the permuted view's channels-last strides


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------
def _too_large(p: Path, pixels: str, limit: int) -> DataError:
    return DataError(f"path: {p} is {pixels} pixels, more than the limit of {limit} (yoda.images.MAX_PIXELS; "
                     f"raise it with YODA_MAX_PIXELS=N, --max-pixels N of upscale, attention, eval and "
                     f"figures, or read_image(..., max_pixels=N))")


def _check_pixels(p: Path, size: tuple[int, int], limit: int) -> None:
    w, h = size
    if limit and w * h > limit:
        raise _too_large(p, f"{w}x{h} = {w * h}", limit)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation read_image turns ``im`` by (1: none; also for a malformed EXIF block, whose image keeps
    its stored pixels)."""
    try:
        return im.getexif().get(ExifTags.Base.Orientation, 1) or 1
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return 1


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned by its EXIF orientation (phone photos); a malformed EXIF block keeps the stored pixels."""
    if exif_orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return im


def _png_key(im: Image.Image, p: Path) -> None:
    """PNG's tRNS colour key (im.info["transparency"]) made what Pillow's decoded pixels hold: Pillow scales the
    levels of a 2- or 4-bit grey image to 8 bits (level 1 of 2 bits is 85) but not its key; a 16-bit RGB image it
    decodes to 8 bits, where the 16-bit key no longer picks out one colour: dropped, with a warning."""
    key = im.info.get("transparency")
    if key is None or im.format != "PNG" or im.mode not in ("L", "RGB"):
        return
    with open(p, "rb") as f:
        depth = f.read(25)[24:]  # IHDR's bit depth
    if im.mode == "L" and depth in (b"\x02", b"\x04") and isinstance(key, int):
        im.info["transparency"] = key * (255 // ((1 << depth[0]) - 1))
    elif im.mode == "RGB" and depth == b"\x10":
        del im.info["transparency"]
        warnings.warn(f"{p}: its 16-bit colour key (PNG tRNS {key}) is not applied: Pillow reads 16-bit RGB as 8 bits, "
                      f"where the key would match other colours too; its pixels are taken as opaque", stacklevel=4)


def _warn_of_alpha(alpha: np.ndarray, p, stacklevel: int) -> None:
    """A warning where alpha (uint8) is not all opaque (to_rgb_u8 composites such pixels on white), ``stacklevel``
    counted from this function's caller as warnings.warn counts it."""
    if alpha.size and not alpha.any():  # (a training set took such a file as a white image, without a word)
        warnings.warn(f"{p}: every pixel is fully transparent (alpha 0): composited on white, it is a blank "
                      f"white image", UserWarning, stacklevel=stacklevel + 1)
    elif alpha.size and alpha.min() < 255:  # (a logo's transparency was lost without a word)
        warnings.warn(f"{p}: {100 * float((alpha < 255).mean()):.3g}% of its pixels are transparent or partly so: "
                      f"composited on white (the image read has no alpha)", UserWarning, stacklevel=stacklevel + 1)


def _samples(im: Image.Image, p, stacklevel: int = 4) -> np.ndarray:
    """The decoded image as an array to_rgb_u8 takes: uint8 (H, W[, 3|4]) or float in [0, 1] (module
    docstring: 16-bit and float samples map by the range of their type). An alpha channel's warning is at the
    caller ``stacklevel`` frames up."""
    key = im.info.get("transparency")  # P: a palette's alpha; 1, L, RGB, I;16: a colour key (PNG's tRNS)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "1", "L", "RGB") and key is not None):
        a = np.asarray(im.convert("RGBA"))
        _warn_of_alpha(a[..., 3], p, stacklevel)
        return a
    if im.mode in ("L", "RGB"):
        return np.asarray(im)
    if im.mode.startswith("I"):  # 16-bit grey (I;16*), or 32-bit integer (I) holding 16-bit values
        raw = np.asarray(im)
        a = raw.astype(np.float32)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"path: {p}: integer samples in [{a.min():.0f}, {a.max():.0f}]; only 8- and 16-bit "
                            "images (0..65535) are supported")
        if a.size and 0 < a.max() < DARK_16BIT:  # 8- or 12-bit values in 16/32-bit integers: a black image
            warnings.warn(f"{p}: integer samples in [{a.min():.0f}, {a.max():.0f}] read as 16-bit (0..65535): the "
                          f"image is nearly black (its brightest sample is level {round(a.max() / 257)} of 255); if "
                          f"it holds 8-bit values, save it as an 8-bit image; 10- to 12-bit ones (a camera's, a "
                          f"scanner's), scale them to 0..65535", UserWarning, stacklevel=4)
        a /= 65535.0
        if isinstance(key, int):  # the keyed grey is transparent: on white, as alpha is
            a[raw == key] = 1.0
        return a
    if im.mode == "F":  # 32-bit float (TIFF): values must already be in [0, 1]
        a = np.asarray(im).astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"path: {p}: float image contains NaN or Inf")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise DataError(f"path: {p}: float image values must be in [0, 1] (0 black, 1 white), got "
                            f"[{a.min():.4g}, {a.max():.4g}]; rescale it to [0, 1] or save it as 8/16-bit")
        return a
    return np.asarray(im.convert("RGB"))


_heif_tried = False


def _register_heif() -> None:
    """pillow-heif's HEIF decoder, once, where that package is installed and Pillow has none yet."""
    global _heif_tried
    if _heif_tried or "HEIF" in Image.OPEN:
        return
    _heif_tried = True
    try:
        import pillow_heif
    except ImportError:
        return
    pillow_heif.register_heif_opener()


def heif_readable() -> bool:
    """Whether Pillow reads HEIF / HEIC here (the pillow-heif package installed: registered)."""
    Image.init()
    _register_heif()
    return "HEIF" in Image.OPEN


@contextlib.contextmanager
def open_image(p: str | os.PathLike) -> Iterator[Image.Image]:
    """PIL.Image.open with the decoders of READ_FORMATS only (those this Pillow has), within the block. From an
    open file, not by name: Pillow memory-maps an uncompressed TIFF opened by name, and turning that upright
    (orientation tags 5-8: a quarter turn) scrambled its pixels and kept its sides (Pillow 13). HEIF / HEIC (phones'
    photographs) where the pillow-heif package is installed: its decoder is registered here."""
    Image.init()
    _register_heif()
    with open(p, "rb") as fp, Image.open(fp, formats=[f for f in READ_FORMATS if f in Image.OPEN]) as im:
        yield im


# how files of the formats yoda reads begin (TIFF and BigTIFF little- or big-endian; WebP: RIFF, a size, WEBP)
_SIGNATURES = {"TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "PNG": (b"\x89PNG\r\n\x1a\n",),
               "JPEG": (b"\xff\xd8\xff",), "GIF": (b"GIF87a", b"GIF89a")}  # (not BMP's "BM": a text file's "BMW ...")


def _signature(p: Path) -> Optional[str]:
    """The format whose signature ``p`` starts with (_SIGNATURES, WebP), else None."""
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for fmt, starts in _SIGNATURES.items() if head.startswith(starts)), None)


@contextlib.contextmanager
def _decoding(p: Path, im: Image.Image) -> Iterator[None]:
    """Pillow's decoders past the header: a damaged GIF or TIFF raises what its parser met (IndexError,
    struct.error, TypeError "Missing dimensions", KeyError, EOFError), a damaged AVIF RuntimeError, which stopped a
    folder's run as "a bug in yoda"; a DataError naming the file instead (OSError and the like: read_image's own
    messages)."""
    try:
        yield
    except (EOFError, IndexError, KeyError, RuntimeError, TypeError, ZeroDivisionError, struct.error) as e:
        raise DataError(f"path: cannot read image {p}: a truncated or corrupt {im.format or 'image'} file "
                        f"({type(e).__name__}: {e})") from None


def read_image(path: str | os.PathLike, max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image file (a raster format of READ_FORMATS: PNG, JPEG, WebP, TIFF ...) as uint8 (H, W, 3), see
    to_rgb_u8: grey repeated, alpha (RGBA, LA, transparent palette) composited on white, 16-bit and float samples
    mapped by the range of their type (module docstring), turned upright by its EXIF orientation, converted to
    sRGB from an embedded ICC profile.

    max_pixels: refuse images with more pixels (None: MAX_PIXELS; 0: no limit). The size is read from the
    header, so a decompression bomb is refused before anything is decoded.
    A file of several frames (animated, multi-page) gives its first, with a warning.
    Errors name the file: FileNotFoundError (missing), ValueError (a folder), DataError (unreadable, too
    large, unsupported sample values)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file name (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    try:
        if isinstance(max_pixels, numbers.Integral) and not isinstance(max_pixels, bool):  # numpy ints too (not torch's
            max_pixels = int(max_pixels)  # as_int: image I/O does not import torch)
        limit = pixel_limit(max_pixels)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            if max_pixels is None:  # the module's (it said "max_pixels ... got None" of a call that gave none)
                raise ValueError(f"yoda.images.MAX_PIXELS must be an int >= 0 (0: no limit), got {limit!r}; `del "
                                 f"yoda.images.MAX_PIXELS` goes back to YODA_MAX_PIXELS or the default")
            raise ValueError(f"max_pixels must be an int >= 0 (0: no limit) or None, got {max_pixels!r}")
        if not p.exists():
            raise FileNotFoundError(f"path: no such image file: {p}{broken_link(p)}")
        if not p.is_file():
            raise ValueError(f"path: {p} is a folder, not an image file" if p.is_dir() else f"path: {p} is not a file")
        try:
            with open_image(p) as im:
                _check_pixels(p, im.size, limit)
                with _decoding(p, im):
                    im.load()  # decode now, so a truncated file fails here and not later
                    # counting frames reads every frame's header: a GIF / TIFF cut off after its first frame
                    frames = getattr(im, "n_frames", 1)
                _png_key(im, p)
                # an animated GIF / WebP / PNG, a multi-page TIFF; not a camera JPEG's previews (MPO: its first
                # frame is the photograph) nor a Photoshop file's layers (PSD: its first frame is the composite)
                if frames > 1 and im.format not in ("MPO", "PSD"):
                    warnings.warn(f"{p} holds {frames} frames; only the first is read", stacklevel=2)
                arr = _samples(to_srgb(_upright(im), p), p)
        except DataError:
            raise
        except Image.DecompressionBombError as e:  # Pillow refuses above 2 * PIL.Image.MAX_IMAGE_PIXELS at open
            pillow = Image.MAX_IMAGE_PIXELS
            if limit and pillow is not None and limit <= 2 * pillow:  # ours refuses it too: say so, in our words
                n = re.search(r"\((\d+) pixels\)", str(e))
                raise _too_large(p, n.group(1) if n else f"more than {2 * pillow}", limit) from None
            raise DataError(f"path: {p} is refused by Pillow's own limit: {e} (raise PIL.Image.MAX_IMAGE_PIXELS "
                            "too, or pass --max-pixels to the CLI)") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, RuntimeError) as e:  # (a damaged AVIF's
            # open: "Failed to decode image: Missing or empty image item")
            signed = _signature(p) if isinstance(e, UnidentifiedImageError) else None
            if signed == "TIFF":  # not "no image at all", as Pillow says
                raise DataError(f"path: {p} is a TIFF that Pillow cannot decode (of float TIFFs only single-channel "
                                f"float32 is read: not float16, float64 or several float channels); convert it to "
                                "8/16-bit PNG or TIFF") from None
            if isinstance(e, UnidentifiedImageError) and p.stat().st_size == 0:  # not "an unknown format"
                raise DataError(f"path: cannot read image {p}: the file is empty (0 bytes)") from None
            if signed:  # a PNG cut off in its header, or with a width of 0: not "an unknown format"
                raise DataError(f"path: cannot read image {p}: a truncated or corrupt {signed} file") from None
            if isinstance(e, OSError) and e.filename is None and (signed := _signature(p)):  # a decoder's words
                raise DataError(f"path: cannot read image {p}: a truncated or corrupt {signed} file "  # (WebP cut
                                f"({e})") from None  # after its header: "could not create decoder object")
            if isinstance(e, UnidentifiedImageError):
                heif = (p.suffix.lower() in (".heic", ".heif") and "HEIF" not in Image.OPEN) * (
                    "; reading HEIF / HEIC needs the pillow-heif package: pip install pillow-heif")
                raise DataError(f"path: cannot read image {p}: not an image in a format yoda reads (PNG, JPEG, WebP, "
                                f"TIFF, BMP, GIF ...: yoda.images.READ_FORMATS){heif}") from None
            said = e.strerror if isinstance(e, OSError) and e.filename is not None and e.strerror else e
            raise DataError(f"path: cannot read image {p}: {said}") from None  # (not the path twice)
        return to_rgb_u8(arr, str(p))
    except (DataError, FileNotFoundError, ValueError) as e:  # a name with a newline: the CLI's line ended in it
        shown = printable(str(p))
        if shown == str(p) or str(p) not in str(e):
            raise
        raise type(e)(str(e).replace(str(p), shown)).with_traceback(e.__traceback__) from None


def load_image(path: str | os.PathLike, max_pixels: Optional[int] = None) -> torch.Tensor:
    """Read an image file (READ_FORMATS) -> float32 (1, 3, H, W) in [-1, 1] (RGB; see read_image). max_pixels:
    the largest image read (None: yoda.images.MAX_PIXELS); a larger one is a DataError."""
    return from_uint8(read_image(path, max_pixels))


def image_format(path: str | os.PathLike) -> str:
    """Pillow's format name for the suffix of ``path`` (".png" -> "PNG"); ValueError naming ``path`` for a suffix
    outside OUTPUT_SUFFIXES (GIF's 256 colours, for one, would quietly lose the picture)."""
    p = Path(path)
    if not p.suffix:  # (it said "the suffix ''")
        raise ValueError(f"path: {p}: an image file name needs a suffix ({', '.join(OUTPUT_SUFFIXES)}); e.g. {p}.png")
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"path: cannot write images with the suffix {p.suffix!r} ({p}); use one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    return Image.registered_extensions()[p.suffix.lower()]


def check_fits(path: str | os.PathLike, width: int, height: int, what: str = "path", grey: bool = False) -> None:
    """ValueError naming ``path`` (``what``: which argument) when a width x height image (RGB, or ``grey``) cannot
    be stored in its format (MAX_SIDE: WebP up to 16383 pixels a side, JPEG 65500; a BMP file up to 4 GiB):
    checked before the work, not at the write."""
    fmt = image_format(path)
    side = MAX_SIDE.get(fmt)
    if side is not None and max(width, height) > side:
        raise ValueError(f"{what} {path}: a {width}x{height} image does not fit in {fmt} (at most {side} pixels "
                         f"a side); write .png or .tif instead")
    depth, palette = (1, 1024) if grey else (3, 0)  # Pillow's BMP: 8-bit grey with a palette, or 24-bit
    if fmt == "BMP" and 54 + palette + (depth * width + 3) // 4 * 4 * height > MAX_CLASSIC_BYTES:  # rows 4-aligned
        raise ValueError(f"{what} {path}: a {width}x{height} image does not fit in BMP (at most 4 GiB a file); "
                         f"write .png or .tif instead")


def _not_a_folder(path: str | os.PathLike, what: str) -> Path:
    """Path(path), or IsADirectoryError naming it (``what``: which argument) when it is a folder."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a folder; give an image file name ({', '.join(OUTPUT_SUFFIXES)})")
    return p


def check_output(path: str | os.PathLike, what: str = "output", kept: bool = False) -> Path:
    """Check an image output path before any work: its suffix is one of OUTPUT_SUFFIXES (PNG, JPEG, WebP,
    TIFF, BMP) and it can be written (yoda._io.check_writable: not a folder, the folder exists, a file can be
    created there, an existing one is not read-only unless ``kept``). Errors name ``path`` (``what``: which
    argument). Returns ``Path(path)``."""
    p = _not_a_folder(path, what)
    folder = str(path).endswith(("/", os.sep))
    if folder or not p.suffix:  # (it said "the suffix ''" of `-o figs/`)
        hint = "a folder that does not exist is not made here" if folder else f"e.g. {p}.png"
        raise ValueError(f"{what} {path}: an image file name needs a suffix ({', '.join(OUTPUT_SUFFIXES)}); {hint}")
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{what} {p}: cannot write images with the suffix {p.suffix!r}; use one of "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    return check_writable(p, what, kept)


def save_pil(img: Image.Image, path: str | os.PathLike, exif: Optional[bytes] = None,
             xmp: Optional[bytes] = None) -> Path:
    """Write a Pillow image atomically (yoda._io.atomic_write), format from the suffix. Returns the path.

    JPEG and WebP are written at quality LOSSY_QUALITY = 95, not Pillow's default 75, which costs a super-resolved
    image several dB of PSNR against its PNG (the quality is the point of the output); JPEG without chroma
    subsampling (4:4:4). TIFF is compressed without loss (LZW, with horizontal differencing for 8-bit samples: 20-60%
    of the uncompressed size for a photograph) unless it carries EXIF or holds over 4 GiB of samples (then a
    BigTIFF). ``exif``: an EXIF block (yoda.exif.read_exif's) written into a JPEG, PNG, WebP or TIFF (a BMP holds
    none; Pillow writes EXIF's Exif and GPS blocks only into an uncompressed TIFF); ``xmp``: an XMP packet
    (yoda.xmp.read_xmp's) written into any of them but a BMP (yoda.metadata: a JPEG holds at most 64 KiB)."""
    fmt = image_format(path)
    check_blocks(exif, xmp)
    check_fits(path, *img.size, grey=img.mode == "L")
    options: dict = {"quality": LOSSY_QUALITY} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "JPEG":  # full-resolution colour: Pillow's 4:2:0 halved it and cost 2.0-3.4 dB at quality 95
        options["subsampling"] = 0
    if fmt == "PNG":  # zlib level 3, not Pillow's 6: the same pixels, 9% larger, in a third of the time (the encode
        options["compress_level"] = PNG_LEVEL  # was 7.7% of a 512² -> 2048² upscale, 1.25 s of 16)
    sample = np.dtype(ImageMode.getmode(img.mode).typestr).itemsize  # bytes: 1, or 2 / 4 for I;16, I, F
    if fmt == "TIFF":  # a 2048² photograph: 12.0 MiB uncompressed, 4.3 LZW with differencing (11.1 without), 0.14 s
        if img.size[0] * img.size[1] * len(img.getbands()) * sample > MAX_CLASSIC_BYTES - (1 << 20):
            options["big_tiff"] = True  # (Pillow's own writer: libtiff's, which compresses, writes no BigTIFF)
        elif not exif:  # (libtiff drops EXIF's Exif and GPS blocks: a TIFF with them is not compressed)
            options["compression"] = "tiff_lzw"
            options["tiffinfo"] = {TIFF_PREDICTOR: 2} if sample == 1 else {}
    add_blocks(options, fmt, path, exif, xmp)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            img.save(f, format=fmt, **options)

    return atomic_write(path, write)


def save_image(x: torch.Tensor, path: str | os.PathLike, exif: Optional[bytes] = None,
               xmp: Optional[bytes] = None) -> Path:
    """Write a [-1, 1] image (1, C, H, W) or (C, H, W) to ``path`` (format from the suffix, e.g. .png; JPEG and
    WebP at quality LOSSY_QUALITY = 95, see save_pil). ``exif``: the EXIF block it carries
    (``yoda.exif.read_exif(input_file, scale)``: an upscaled photograph keeps its camera, dates and place), or None;
    ``xmp``: the XMP packet it carries (``yoda.xmp.read_xmp(input_file, scale)``: keywords, ratings, captions), or None.

    Atomic: written to a temporary file in the same folder, then os.replace'd, so a failure never leaves
    a half-written image at ``path``. Returns the path."""
    import torch

    if not isinstance(path, (str, os.PathLike)):  # (pathlib's TypeError named no argument)
        raise TypeError(f"path must be a file name (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"x must hold one image to save, got a batch of {x.shape[0]}")
        x = x[0]
    _not_a_folder(p, "path")
    arr = to_uint8(x)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not p.parent.exists():
        raise FileNotFoundError(f"path: folder does not exist: {p.parent}")
    return save_pil(Image.fromarray(arr), p, exif, xmp)
