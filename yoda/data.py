"""HR image sources for training and evaluation, random crops, and the one LR degradation used everywhere.

Sources:
    "builtin"   scikit-image's bundled images (``skimage.data``) minus the held-out ones (BUILTIN_TRAIN)
    "heldout"   the held-out images (HELD_OUT): evaluation, the demo and training-time validation only
    "photos"    colour photographs from Debian wallpaper packages (yoda.photos, `yoda data build --out DIR`):
                DIR/train; "photos-heldout" is DIR/heldout. yoda train maps both with --data-dir DIR
    a folder    every image file in it (PNG, JPEG, WebP, TIFF, BMP; sorted by name), read with Pillow

Every image becomes uint8 RGB (H, W, 3) through yoda.images (read_image / to_rgb_u8, the same code as
yoda.load_image and the CLI): grey is repeated to 3 channels, an alpha channel is composited on white.
Tensors handed to models are float32 in [-1, 1]: x = u8 / 127.5 - 1 (yoda.images.from_uint8 / to_uint8).

LR images are made by ONE function, :func:`make_lr`, shared by training, ``yoda eval`` and ``yoda demo``:
torch's bicubic with antialiasing (``F.interpolate(mode="bicubic", antialias=True)``, Keys a = -0.5, the
filter Pillow's BICUBIC resize uses for downscaling), then quantised to 8-bit levels, so that a model sees
in training what a saved-and-reloaded LR PNG gives it at inference.
"""

from __future__ import annotations

import numbers
import os
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._json_fields import check_field_types
from .images import OUTPUT_SUFFIXES, DataError, heif_readable, quantize_u8, read_image, to_rgb_u8

__all__ = [
    "BUILTIN_TRAIN", "HELD_OUT", "HELD_OUT_ALIASES", "IMAGE_EXTENSIONS", "CropSampler", "DataConfig", "DataError",
    "ImageStream", "builtin_image", "crop_for_model", "crop_to_multiple", "crops_to_sample", "export_builtin",
    "fixed_crops", "left_out_note", "list_folder", "load_folder", "load_source", "make_lr", "model_crop", "read_image",
    "to_rgb_u8",
]

# Held out of the built-in training set; used by `yoda eval`, `yoda demo` and validation during training.
# "chelsea" and skimage.data.cat() are the same picture; both names are refused for training.
HELD_OUT = ("astronaut", "coffee", "rocket", "chelsea")
HELD_OUT_ALIASES = {"cat": "chelsea"}

# Bundled with scikit-image (no download), RGB or grey, at least 172 px on the short side.
# "motorcycle_left"/"motorcycle_right" are the two views of skimage.data.stereo_motorcycle().
BUILTIN_TRAIN = (
    "brick",
    "camera",
    "cell",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "text",
    "motorcycle_left",
    "motorcycle_right",
)

# What a folder's images may be: the formats yoda writes, and photographs' other formats that it reads; not GIF's
# 256 colours. HEIF / HEIC too where the pillow-heif package is installed (yoda.images.heif_readable).
IMAGE_EXTENSIONS = OUTPUT_SUFFIXES + (".jfif", ".jpe", ".avif", ".jp2", ".j2k", ".qoi")
HEIF_EXTENSIONS = (".heic", ".heif")


# ----------------------------------------------------------------------------------------------------------
# Conversions: yoda.images holds the one implementation (read_image, to_rgb_u8, from_uint8 / to_uint8)
# ----------------------------------------------------------------------------------------------------------
def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR degradation of this project: bicubic downscale by ``scale`` (torch, antialias=True), clamped
    to [-1, 1] and quantised to the 256 levels of an 8-bit image.

    hr: (B, C, H, W) in [-1, 1], H and W multiples of ``scale``. Returns (B, C, H/scale, W/scale)."""
    if not isinstance(hr, torch.Tensor) or hr.dim() != 4:
        raise ValueError(f"hr must be a (B, C, H, W) tensor, got {getattr(hr, 'shape', type(hr))}")
    if not hr.is_floating_point():  # a uint8 image came back all ones
        raise TypeError(f"hr must be a float tensor in [-1, 1], got {hr.dtype} (yoda.from_uint8 converts 8-bit images)")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral):  # 2.5 made x2, True x1
        raise TypeError(f"scale must be an int, got {scale!r}")
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    H, W = hr.shape[-2:]
    if H % scale or W % scale:
        raise ValueError(f"hr size {H}x{W} is not a multiple of scale {scale}")
    lr = F.interpolate(hr.float(), size=(H // scale, W // scale), mode="bicubic", align_corners=False, antialias=True)
    return (quantize_u8(lr) / 127.5 - 1.0).to(hr.dtype)


def crop_to_multiple(a: np.ndarray, multiple: int, max_size: Optional[int] = None, least: int = 1) -> np.ndarray:
    """Centre crop (H, W, C) so that H and W are multiples of ``multiple`` and, if given, <= max_size; a side
    below ``least`` (the smallest a model takes) or below ``multiple`` is a DataError."""
    least = max(least, multiple)
    H, W = a.shape[:2]
    if max_size is not None and max_size < least:
        raise DataError(f"max_size {max_size} is below {least}, the smallest HR side this model takes (sides are "
                        f"multiples of {multiple}: of the scale and of the model's size multiple): no crop fits")
    h, w = H - H % multiple, W - W % multiple
    if max_size is not None:
        m = max_size - max_size % multiple
        h, w = min(h, m), min(w, m)
    if h < least or w < least:
        side = "width" if w < least else "height"
        raise DataError(f"image of size {W}x{H}: its {side} is below {least}, the smallest HR side this model takes")
    y, x = (H - h) // 2, (W - w) // 2
    return a[y : y + h, x : x + w]


def model_crop(adapter: Any, max_size: Optional[int] = None) -> Callable[[str, np.ndarray], np.ndarray]:
    """crop(name, HR uint8): the image centre-cropped (crop_to_multiple) to a size ``adapter`` takes
    (adapters.hr_grid) and at most ``max_size``, as a contiguous copy; an image too small for the model is a
    DataError naming it. A max_size below the model's smallest side is a DataError here, once."""
    from .adapters import hr_grid

    unit, least = hr_grid(adapter)
    crop_to_multiple(np.zeros((least, least, 1), np.uint8), unit, max_size, least)  # max_size itself

    def crop(name: str, a: np.ndarray) -> np.ndarray:
        try:
            return np.ascontiguousarray(crop_to_multiple(a, unit, max_size, least))
        except DataError as e:
            raise DataError(f"{name}: {e}") from None

    return crop


def _image_pair(item: Any) -> tuple[str, np.ndarray]:
    """An item of ``images``: a (name, uint8 (H, W, 3)) pair, or a DataError saying what it is instead (an array
    alone, or a grey one, failed on Python's unpacking or after the first sampling)."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
        raise DataError(f"images must hold (name, uint8 (H, W, 3) array) pairs, got a {type(item).__name__}"
                        + (f" of {len(item)}" if isinstance(item, (tuple, list)) else ""))
    name, a = item
    if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3):
        what = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise DataError(f"images: {name} must be a uint8 (H, W, 3) array (yoda.data.read_image gives one), got {what}")
    return name, a


def crop_for_model(images: Sequence[tuple[str, np.ndarray]], adapter: Any, max_size: Optional[int] = None
                   ) -> list[tuple[str, np.ndarray]]:
    """Every (name, HR uint8) cropped by model_crop, before any sampling; an image too small for the model is a
    DataError naming it."""
    crop = model_crop(adapter, max_size)
    return [(name, crop(name, a)) for name, a in map(_image_pair, images)]


def crops_to_sample(images: Iterable[tuple[str, np.ndarray]], adapter: Any, max_size: Optional[int] = None,
                    on_error: Optional[Callable[[str, BaseException], None]] = None
                    ) -> tuple[Iterable[tuple[str, np.ndarray]], Optional[int]]:
    """The images yoda.evaluate / yoda.figures sample, cropped for ``adapter`` (model_crop), and how many there
    are (None if unknown). Without on_error a list is cropped at once, so that an image too small for the model
    fails before any sampling; otherwise (and for any other iterable, such as ImageStream) each is cropped as it
    comes, and one that fails is given to ``on_error(name, error)`` and skipped."""
    n = len(images) if hasattr(images, "__len__") else None
    if on_error is None and isinstance(images, Sequence):
        return crop_for_model(images, adapter, max_size), n
    if isinstance(images, ImageStream) and images.on_error is None:  # its unreadable files are skipped too
        images = ImageStream(images.paths, images.max_pixels, on_error)
    return _cropped(images, model_crop(adapter, max_size), on_error), n


def sampling_bar(images: Iterable, runs: int, desc: str, progress: bool,
                 on_error: Optional[Callable[[str, BaseException], None]] = None) -> tuple[Any, Optional[Callable]]:
    """(a tqdm bar over the sampling runs of ``images``, ``runs`` per image (no total for an iterable without
    len()), the on_error to give crops_to_sample: it takes a skipped image's runs off the bar's total, then calls
    ``on_error(name, error)``; None without on_error)."""
    from tqdm.auto import tqdm

    n = len(images) if hasattr(images, "__len__") else None
    bar = tqdm(total=None if n is None else n * runs, disable=not progress, desc=desc, unit="run")
    if on_error is None:
        return bar, None

    def skip(name: str, error: BaseException) -> None:
        if bar.total is not None:
            bar.total -= runs
            bar.refresh()
        on_error(name, error)

    return bar, skip


def _cropped(images: Iterable[tuple[str, np.ndarray]], crop: Callable, on_error: Optional[Callable]
             ) -> Iterator[tuple[str, np.ndarray]]:
    for name, a in map(_image_pair, images):
        try:
            c = crop(name, a)
        except DataError as e:
            if on_error is None:
                raise
            on_error(name, e)
            continue
        yield name, c


class ImageStream:
    """The images of ``paths`` as (path, uint8 (H, W, 3)), each read (read_image) when the iteration reaches it,
    so that one decoded image is in memory at a time, whatever the folder's size. A file that cannot be read is
    given to ``on_error(path, error)`` and skipped (without on_error, its error is raised; crops_to_sample gives
    a stream without one its own). len() is the number of paths."""

    def __init__(self, paths: Sequence[str], max_pixels: Optional[int] = None,
                 on_error: Optional[Callable[[str, BaseException], None]] = None):
        self.paths, self.max_pixels, self.on_error = list(paths), max_pixels, on_error

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for p in self.paths:
            try:
                a = read_image(p, self.max_pixels)
            except (DataError, OSError, ValueError) as e:
                if self.on_error is None:
                    raise
                self.on_error(p, e)
                continue
            yield p, a


# ----------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------
def builtin_image(name: str) -> np.ndarray:
    """One scikit-image bundled image by name (BUILTIN_TRAIN or HELD_OUT), as uint8 (H, W, 3)."""
    import skimage.data as sd

    name = HELD_OUT_ALIASES.get(name, name)
    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = sd.stereo_motorcycle()
        arr = left if name == "motorcycle_left" else right
    elif name in BUILTIN_TRAIN or name in HELD_OUT:
        arr = getattr(sd, name)()
    else:
        raise DataError(f"unknown built-in image {name!r}; known: {', '.join(BUILTIN_TRAIN + HELD_OUT)}")
    return to_rgb_u8(arr, name)


def list_folder(folder: str, left_out: Optional[list] = None) -> list[str]:
    """Sorted image paths (IMAGE_EXTENSIONS, not hidden) in ``folder`` (not recursive). Errors if it is not a folder
    or holds none. left_out: a list that receives the sorted names of the entries not taken (subfolders, other files),
    also where it then raises."""
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "not found"
        raise DataError(f"image folder {folder} {what}")
    paths, others = [], []
    suffixes = IMAGE_EXTENSIONS + HEIF_EXTENSIONS * heif_readable()
    for f in sorted(os.listdir(folder), key=name_order):  # (the crops follow it)
        full = os.path.join(folder, f)
        # a hidden file (.name; macOS's AppleDouble ._name beside every file of a copied folder) is no input
        ok = f.lower().endswith(suffixes) and os.path.isfile(full) and not f.startswith(".")
        if ok:
            paths.append(full)
        else:
            broken = os.path.islink(full) and not os.path.exists(full)
            special = os.path.exists(full) and not os.path.isfile(full) and not os.path.isdir(full)  # a FIFO, a device
            others.append(f + ("/" if os.path.isdir(full) else " (a broken link)" if broken else
                               " (not a regular file)" if special else ""))
    # subfolders first, hidden files (.DS_Store, macOS's ._name) last: what matters is not lost in a long list
    others.sort(key=lambda n: (not n.endswith("/"), n.startswith(".")))
    if left_out is not None:  # (also where it then holds no image: --recursive's folder of subfolders and notes)
        left_out.extend(others)
    if not paths:
        held = f"; it holds {name_list(others)}, and a folder's subfolders are not read" if others else ""
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {folder}{held}")
    return paths


def left_out_note(folder: str, names: Sequence[str]) -> str:
    """One line naming what list_folder left out of ``folder`` ("" if nothing)."""
    if not names:
        return ""
    heif = any(n.lower().endswith(HEIF_EXTENSIONS) for n in names) * (
        "; HEIF / HEIC photographs need the pillow-heif package: pip install pillow-heif")
    return (f"{folder}: left out {name_list(names)} (a folder stands for its own files with the suffixes "
            f"{', '.join(IMAGE_EXTENSIONS)}, not its subfolders or hidden files{heif})")


def name_list(names: Sequence[str]) -> str:
    """Up to five names for a message, then how many there are in all."""
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def name_order(name: str) -> tuple:
    """The sort key of a folder's entries: one order for a name stored composed (Linux) or decomposed (a folder
    copied from macOS)."""
    return unicodedata.normalize("NFC", name), name


def load_folder(folder: str, max_pixels: Optional[int] = None, min_size: int = 0, what: str = "the crop size",
                vet: Optional[Callable[[list], list[str]]] = None) -> list[tuple[str, np.ndarray]]:
    """[(path, uint8 (H, W, 3))] of the images in ``folder`` (list_folder), whatever the folder's name;
    max_pixels: read_image's (None: yoda.images.MAX_PIXELS). The images that cannot be read or are smaller than
    min_size on a side (``what``), and those that ``vet`` (readable (path, image) pairs -> one line for each image
    that may not be used, e.g. yoda.heldout.held_out_lines) objects to, are all named in one DataError (they were
    found one kind at a time, a run each)."""
    items, bad, left_out = [], [], []
    paths = list_folder(folder, left_out)
    if left_out:  # a subfolder of images, or a .gif, was skipped without a word
        warnings.warn(left_out_note(folder, left_out), UserWarning, stacklevel=2)
    for p in paths:
        try:
            a = read_image(p, max_pixels)
        except DataError as e:
            bad.append(str(e).removeprefix("path: "))  # read_image's argument name: the file follows
            continue
        if a.shape[0] < min_size or a.shape[1] < min_size:
            bad.append(f"image {p} is {a.shape[1]}x{a.shape[0]}, smaller than {what} {min_size}")
            continue  # (one line an image: not vetted too)
        items.append((p, a))
    bad += vet(items) if vet is not None else []
    if bad:
        raise DataError(f"{len(bad)} image(s) of {folder} cannot be used (move them out, or fix them): "
                        + "; ".join(bad[:8]) + (f"; ... ({len(bad)} in all)" if len(bad) > 8 else ""))
    return items


NAMED_SOURCES = ("builtin", "heldout", "photos", "photos-heldout")  # DataConfig sources that are not folders


def load_source(source: str, min_size: int = 0, what: str = "the crop size", key: Optional[str] = None,
                vet: Optional[Callable[[list], list[str]]] = None) -> list[tuple[str, np.ndarray]]:
    """[(name, uint8 (H, W, 3))] for "builtin", "heldout" or a folder path.

    min_size: every image's height and width must be >= min_size (``what``: the crop size); a folder's images that
    cannot be read or are smaller are all named in one DataError (load_folder). key: the config key that gave
    ``source``, which a folder's errors name first (with the named sources, for a folder not found). vet:
    load_folder's, for a named source too."""
    if source not in NAMED_SOURCES:
        try:
            return load_folder(source, min_size=min_size, what=what, vet=vet)
        except DataError as e:
            if key is None:
                raise
            named = "" if os.path.exists(source) else f"; the named sources are {', '.join(NAMED_SOURCES)}"
            raise DataError(f"{key}: {e}{named}") from None
    if source == "builtin":
        items = [(n, builtin_image(n)) for n in BUILTIN_TRAIN]
    elif source == "heldout":
        items = [(n, builtin_image(n)) for n in HELD_OUT]
    else:
        raise DataError(f"source {source!r} is the train/ or heldout/ folder of `yoda data build --out DIR`: "
                        f"pass --data-dir DIR to yoda train, or give the folder itself")
    for name, a in items:
        if a.shape[0] < min_size or a.shape[1] < min_size:
            raise DataError(f"image {name} is {a.shape[1]}x{a.shape[0]}, smaller than {what} {min_size}")
    if vet is not None and (bad := vet(items)):
        raise DataError(f"source {source!r}: " + "; ".join(bad))
    return items


def image_digests(items: Sequence[tuple[str, np.ndarray]], source: str) -> dict[str, str]:
    """{name: sha256 of the decoded pixels and their shape} of load_source's images (a folder's by their path in
    ``source``; NFC, as list_folder orders them, unless two names are one in NFC): what a resumed training run
    compares with the images its checkpoint was trained on."""
    import hashlib

    names = [os.path.relpath(n, source) if os.path.isabs(n) else n for n, _ in items]
    nfc = [unicodedata.normalize("NFC", n) for n in names]
    keys = nfc if len(set(nfc)) == len(nfc) else names  # (café.png written both ways: two images, two keys)
    return {k: hashlib.sha256(repr(a.shape).encode() + np.ascontiguousarray(a).tobytes()).hexdigest()
            for k, (_, a) in zip(keys, items)}


def digest_change(then: dict, now: dict) -> Optional[str]:
    """How the images of image_digests ``now`` differ from ``then`` (the names added, removed and changed), or None.
    A checkpoint's names stored in another Unicode form (NFD, before names were NFC) are the same names."""
    from .checkpoint import fmt_keys

    nfc = {unicodedata.normalize("NFC", k): v for k, v in then.items()}
    then = nfc if len(nfc) == len(then) else then
    changes = (("added", now.keys() - then.keys()), ("removed", then.keys() - now.keys()),
               ("changed", [k for k in now.keys() & then.keys() if now[k] != then[k]]))
    parts = [f"{what} {fmt_keys(sorted(names))}" for what, names in changes if names]
    return "; ".join(parts) or None


# ----------------------------------------------------------------------------------------------------------
# Random crops
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Where HR crops come from and how LR is made. JSON-friendly (plain fields)."""

    source: str = "builtin"  # "builtin" | "heldout" | "photos" | "photos-heldout" | a folder of images
    crop: int = 128  # HR crop size (multiple of scale)
    scale: int = 4
    flips: bool = True  # random horizontal + vertical flips
    val_source: str = "heldout"  # validation crops (fixed, seeded)
    val_crops: int = 4
    val_crop: int = 64  # HR size of a validation crop (sampling is the expensive part)

    def __post_init__(self):
        check_field_types(self)  # the JSON types, for one built in Python too
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")
        for name in ("crop", "val_crop"):
            v = getattr(self, name)
            if v < self.scale or v % self.scale:
                raise ValueError(f"{name} ({v}) must be a positive multiple of scale ({self.scale})")
        if self.val_crops < 0:
            raise ValueError(f"val_crops must be >= 0 (0: no validation crops), got {self.val_crops}")
        for name in ("source", "val_source"):  # "" was the working folder (a run read whatever images were there)
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must name a source or a folder (\"builtin\", \"heldout\", \"photos\", "
                                 f"\"photos-heldout\" or a path; \".\" for the working folder), got "
                                 f"{getattr(self, name)!r}")


class CropSampler:
    """Random HR crops (with flips) from a list of uint8 images; all randomness from one torch.Generator,
    so a run is reproducible and resumable from the generator's state.

    sample(batch, generator) -> hr (B, 3, crop, crop) float32 in [-1, 1].
    maps: one (1, H, W) map per image (the attention map of the whole image); sample_with_maps then also returns
    the same crops (and flips) of them, (B, 1, crop, crop) float32."""

    def __init__(self, images: Sequence[tuple[str, np.ndarray]], crop: int, flips: bool = True,
                 maps: Optional[Sequence[torch.Tensor]] = None):
        if not images:
            raise DataError("no images to crop from")
        self.names = [n for n, _ in images]
        self.images = [torch.from_numpy(np.array(a, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous() for _, a in images]
        for n, t in zip(self.names, self.images):
            if t.shape[1] < crop or t.shape[2] < crop:
                raise DataError(f"image {n} is {t.shape[2]}x{t.shape[1]}, smaller than the crop size {crop}")
        if maps is not None and [tuple(m.shape) for m in maps] != [(1, *t.shape[1:]) for t in self.images]:
            raise ValueError("maps must hold one (1, H, W) map per image, of the image's size")
        self.maps = maps
        self.crop = int(crop)
        self.flips = bool(flips)

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return self._sample(batch, generator, False)[0]

    def sample_with_maps(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(hr, A): the crops of sample() (the same draws from ``generator``) and the same crops of the maps."""
        if self.maps is None:
            raise ValueError("this CropSampler has no maps")
        return self._sample(batch, generator, True)

    def _sample(self, batch: int, generator: torch.Generator, with_maps: bool):
        out = torch.empty(batch, 3, self.crop, self.crop, dtype=torch.uint8)
        maps = torch.empty(batch, 1, self.crop, self.crop) if with_maps else None
        picks = torch.randint(len(self.images), (batch,), generator=generator)
        u = torch.rand(batch, 4, generator=generator, dtype=torch.float64)  # y, x, hflip, vflip
        for b in range(batch):
            k = int(picks[b])
            img = self.images[k]
            y = int(u[b, 0] * (img.shape[1] - self.crop + 1))
            x = int(u[b, 1] * (img.shape[2] - self.crop + 1))
            pair = [img] + ([self.maps[k]] if with_maps else [])
            pair = [t[:, y : y + self.crop, x : x + self.crop] for t in pair]
            if self.flips and u[b, 2] < 0.5:
                pair = [t.flip(2) for t in pair]
            if self.flips and u[b, 3] < 0.5:
                pair = [t.flip(1) for t in pair]
            out[b] = pair[0]
            if with_maps:
                maps[b] = pair[1]
        return out.float() / 127.5 - 1.0, maps


def fixed_crops(images: Sequence[tuple[str, np.ndarray]], n: int, crop: int, seed: int = 0) -> torch.Tensor:
    """n HR crops (n, 3, crop, crop) in [-1, 1], the same for every call with the same seed (validation)."""
    g = torch.Generator().manual_seed(seed)
    return CropSampler(images, crop, flips=False).sample(n, g)


def export_builtin(folder: str) -> dict:
    """Write the built-in training set to folder/train and the held-out set to folder/heldout as PNG, so a
    machine without scikit-image trains on the same images (`yoda train --data-dir folder`).
    Returns {"train": n, "heldout": n}.

    As `yoda data build` writes: into a staging folder inside ``folder`` first, then train/ and heldout/ replace
    an earlier export's as a whole, so an interrupted export leaves no partial set (and a new folder nothing). A
    folder of `yoda data build` (manifest.json), other files in train/ or heldout/, and a second export into the
    folder at once are refused."""
    import glob
    import shutil
    import tempfile

    from PIL import Image

    from ._io import folder_lock, made_folder, renamed
    from .images import save_pil

    splits = {"train": BUILTIN_TRAIN, "heldout": HELD_OUT}
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"{folder} is a file, not a folder")
    if os.path.exists(os.path.join(folder, "manifest.json")):
        raise DataError(f"{folder} holds a `yoda data build` (manifest.json), which an export would leave "
                        f"describing other images: export into another folder")
    for sub, names in splits.items():  # before any write
        d = os.path.join(folder, sub)
        if os.path.exists(d) and not os.path.isdir(d):
            raise DataError(f"{d} is a file, not a folder")
        others = sorted(set(os.listdir(d)) - {f"{n}.png" for n in names}) if os.path.isdir(d) else []
        if others:
            raise DataError(f"{d} holds files that `yoda data export` does not write ({name_list(others)}), and an "
                            f"export replaces the whole folder: choose another folder or move them")
    with made_folder(folder):
        with folder_lock(folder, "the export folder"):
            for old in glob.glob(os.path.join(glob.escape(folder), ".export-*")):  # of a killed export
                shutil.rmtree(old, ignore_errors=True)
            stage = tempfile.mkdtemp(prefix=".export-", dir=folder)
            try:
                for sub, names in splits.items():
                    os.mkdir(os.path.join(stage, sub))
                    for n in names:
                        try:
                            save_pil(Image.fromarray(builtin_image(n)), os.path.join(stage, sub, f"{n}.png"))
                        except OSError as e:  # the staging file is gone when the error is read
                            raise renamed(e, os.path.join(folder, sub, f"{n}.png")) from None
                for sub in splits:  # an earlier export's split aside (removed with the stage), the new one in
                    if os.path.isdir(os.path.join(folder, sub)):
                        os.rename(os.path.join(folder, sub), os.path.join(stage, f"old-{sub}"))
                    os.rename(os.path.join(stage, sub), os.path.join(folder, sub))
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    return {sub: len(names) for sub, names in splits.items()}
