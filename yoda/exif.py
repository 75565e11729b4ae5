"""A photograph's EXIF metadata, carried to its upscaled copy (`yoda upscale`; ``save_image(..., exif=...)``).

    read_exif(path, scale)   the EXIF block of an image file as its copy upscaled ``scale`` times should carry it
                             (bytes), or None

What describes the photograph is kept: camera, lens, exposure, the dates, GPS, author, copyright, title, rating,
and its print size (the resolution, times the scale). What described the stored pixels is dropped, since the
copy's pixels are other ones: the Orientation (read_image turns the pixels upright), the thumbnail, the pixel
dimensions, points and areas given in pixel coordinates, the Interop block (its index "R03" marks Adobe RGB) and,
of a TIFF's own tags, every one that describes its strips and samples; ColorSpace says sRGB, what read_image
converts to. Photo managers sort and place photographs by these dates and positions; `yoda upscale
--strip-metadata` writes none.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Optional

from PIL import ExifTags, Image, TiffImagePlugin

from .errors import printable
from .images import open_image
from .metadata import EXIF_JPEG_LIMIT

T = ExifTags.Base
# IFD 0: what describes the photograph (a TIFF's IFD 0 is also its image's: only these are taken from it), and the
# Windows Explorer fields (XP*, Rating)
KEPT = (T.ImageDescription, T.Make, T.Model, T.Software, T.DateTime, T.Artist, T.HostComputer, T.Copyright,
        T.XResolution, T.YResolution, T.ResolutionUnit, T.Rating, T.RatingPercent, T.XPTitle, T.XPComment,
        T.XPAuthor, T.XPKeywords, T.XPSubject)
# The Exif IFD: what the copy's pixels are not (sizes, points and areas in the stored pixels, the Interop block)
SUBJECT_AREA = 0x9214  # (ExifTags names it SubjectLocation too, as it does 0xA214)
DROPPED = (T.ExifImageWidth, T.ExifImageHeight, SUBJECT_AREA, T.SubjectLocation, ExifTags.IFD.Interop)
SRGB = 1  # ColorSpace: sRGB
JPEG_LIMIT = EXIF_JPEG_LIMIT  # the most EXIF bytes a JPEG's APP1 segment holds


# TIFF field types stored alike (the same bytes, read another way): BYTE, ASCII, SBYTE, UNDEFINED; SHORT, SSHORT;
# LONG, SLONG; RATIONAL, SRATIONAL (not FLOAT or DOUBLE, whose bytes mean other numbers)
LAYOUTS = {1: "b", 2: "b", 6: "b", 7: "b", 3: "h", 8: "h", 4: "l", 9: "l", 5: "r", 10: "r"}
BLOCKS = (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)  # the blocks IFD 0 points to that the copy carries


def _entries(read, at: int, order: str, tag: int = 0) -> dict:
    """{(block, tag): (type, count, where its entry is)} of the IFD at ``at`` (``block``: 0 for IFD 0) and of the
    Exif and GPS blocks it points to; read(offset, n) -> the TIFF structure's bytes there."""
    n = struct.unpack(order + "H", read(at, 2))[0]
    found = {}
    for i, (t, typ, count, value) in enumerate(struct.iter_unpack(order + "HHI4s", read(at + 2, 12 * n))):
        found[(tag, t)] = (typ, count, at + 2 + 12 * i)
        if tag == 0 and t in BLOCKS and typ in (4, 13):  # LONG / IFD: the block's offset
            found.update(_entries(read, struct.unpack(order + "I", value)[0], order, t))
    return found


def _structure(read) -> dict:
    """_entries of a TIFF structure (a TIFF file, or an EXIF block less its "Exif\\0\\0")."""
    order = {b"II": "<", b"MM": ">"}[read(0, 2)]
    return _entries(read, struct.unpack(order + "I", read(4, 4))[0], order)


def _typed_as(data: bytes, src) -> bytes:
    """``data`` (Pillow's EXIF block) with each tag's field type the one ``src`` (read(offset, n) of the input's
    TIFF structure) gave it, where both hold as many values stored alike (LAYOUTS): Pillow guesses types on
    writing, and made UNDEFINED (UserComment, SceneType, MakerNote) BYTE and SRATIONAL (ExposureBiasValue)
    RATIONAL."""
    try:
        was = _structure(src)
        out = bytearray(data)
        order = {b"II": "<", b"MM": ">"}[bytes(out[6:8])]
        for key, (typ, count, where) in _structure(lambda at, n: bytes(out[6 + at:6 + at + n])).items():
            old = was.get(key)
            if old and old[0] != typ and old[1] == count and LAYOUTS.get(old[0], 0) == LAYOUTS.get(typ, 1):
                struct.pack_into(order + "H", out, 6 + where + 2, old[0])
        return bytes(out)
    except (KeyError, struct.error, ValueError, OSError):  # a structure not as the TIFF spec says: Pillow's types
        return data


def _as_written(value):
    """A tag's value as Pillow writes it back unchanged: text of other characters than ASCII as its bytes (Pillow
    reads text as Latin-1 and writes a str as ASCII, each other character a "?": the "©" of a Copyright, an accented
    name), tuples item by item."""
    if isinstance(value, str) and not value.isascii():
        return value.encode("latin-1", "replace")
    if isinstance(value, tuple):
        return tuple(_as_written(v) for v in value)
    return value


def _scaled(ifd: dict, x: int, y: int, scale: int, turned: bool) -> None:
    """The resolution tags x, y (pixels per unit) of ``ifd`` for the copy: ``scale`` times denser, and swapped where
    read_image turned the pixels a quarter."""
    values = [ifd.get(x), ifd.get(y)]
    for tag, v in zip((y, x) if turned else (x, y), values):
        ifd.pop(tag, None)
        if v is not None:
            r = TiffImagePlugin.IFDRational(v)
            ifd[tag] = TiffImagePlugin.IFDRational(r.numerator * scale, r.denominator)


def _reader(im: Image.Image, p: Path):
    """read(offset, n) of the image's TIFF structure that holds its EXIF: the block Pillow found (JPEG, PNG, WebP),
    or the TIFF file itself."""
    block = im.info.get("exif")
    if isinstance(block, bytes):
        tiff = block[6:] if block.startswith(b"Exif\x00\x00") else block
        return lambda at, n: tiff[at:at + n]

    def from_file(at: int, n: int) -> bytes:
        with open(p, "rb") as f:
            f.seek(at)
            return f.read(n)
    return from_file


def read_exif(path: str | os.PathLike, scale: int = 1) -> Optional[bytes]:
    """The EXIF block of the image file ``path`` (JPEG, PNG, WebP, TIFF ...) as an upright sRGB copy of it
    upscaled ``scale`` times carries it (module docstring), for ``save_image(..., exif=...)``; None when it has none.
    Its print resolution (XResolution, YResolution; FocalPlane ones too) is ``scale`` times the input's: the copy
    prints at the size the photograph did, with more detail. A block that cannot be read, or that does not fit a
    JPEG even without its maker notes, is None with a warning naming the file."""
    check_scale(scale)
    return carried_block(path, "EXIF", lambda p: _exif_of(p, scale), (TypeError, KeyError, struct.error))


def check_scale(scale) -> None:
    """read_exif's and read_xmp's ``scale``: an int >= 1, else ValueError naming it."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")


def carried_block(path: str | os.PathLike, what: str, read, errors: tuple = (),
                  limit: Optional[int] = JPEG_LIMIT) -> Optional[bytes]:
    """read(Path(path)): the ``what`` metadata (EXIF, XMP) its upscaled copy carries, or None; None with a warning
    naming the file where it cannot be read (OSError, SyntaxError, ValueError, ``errors``) or does not fit a JPEG
    (``limit`` bytes; None: not checked). Shared by read_exif and yoda.xmp.read_xmp. A ``path`` that is no file name
    or names a folder is a TypeError / ValueError, as for read_image."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file name (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"path: {p} is a folder, not an image file")
    try:
        data = read(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no such image file: {p}") from None
    except (OSError, SyntaxError, ValueError, *errors) as e:
        warnings.warn(f"{printable(str(p))}: its {what} metadata cannot be read ({e}); its upscaled copy carries "
                      f"none", stacklevel=3)
        return None
    if data is not None and limit is not None and len(data) > limit:
        warnings.warn(f"{printable(str(p))}: its {what} metadata ({len(data)} bytes) is larger than a JPEG holds "
                      f"({limit}); its upscaled copy carries none", stacklevel=3)
        return None
    return data


def _exif_of(p: Path, scale: int) -> Optional[bytes]:
    """read_exif's block, unchecked."""
    with open_image(p) as im:
        src = im.getexif()
        turned = src.get(T.Orientation, 1) in (5, 6, 7, 8)  # read_image's quarter turn: x and y swap
        out = Image.Exif()
        for tag in KEPT:
            if tag in src:
                out[tag] = _as_written(src[tag])
        sub = {k: _as_written(v) for k, v in src.get_ifd(ExifTags.IFD.Exif).items() if k not in DROPPED}
        if T.ColorSpace in sub:
            sub[T.ColorSpace] = SRGB
        for ifd, (x, y) in ((out, (T.XResolution, T.YResolution)),
                            (sub, (T.FocalPlaneXResolution, T.FocalPlaneYResolution))):
            _scaled(ifd, x, y, scale, turned)
        gps = {k: _as_written(v) for k, v in src.get_ifd(ExifTags.IFD.GPSInfo).items()}
        for tag, ifd in ((ExifTags.IFD.Exif, sub), (ExifTags.IFD.GPSInfo, gps)):
            if ifd:
                out[tag] = dict(ifd)
        if not len(out):
            return None
        data = out.tobytes()
        if len(data) > JPEG_LIMIT and T.MakerNote in sub:  # a camera's maker notes: the bulk, and private
            del sub[T.MakerNote]
            out[ExifTags.IFD.Exif] = dict(sub)
            data = out.tobytes()
        return _typed_as(data, _reader(im, p))
