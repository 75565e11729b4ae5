"""How an output image file carries EXIF and XMP (yoda.images.save_pil): the blocks checked, and put where each
format keeps them.

    check_blocks(exif, xmp)              TypeError / ValueError naming the argument, before any work
    add_blocks(options, fmt, path, ...)  Pillow's save options for them, in format ``fmt``
    xmp_text(packet)                     an XMP packet's text (UTF-8, UTF-16 or UTF-32), less any XML declaration

What goes into the blocks (what a photograph's copy keeps of its input's) is yoda.exif's and yoda.xmp's.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from typing import Optional

from PIL import Image, PngImagePlugin

from .errors import printable

XMP_TAG = 700  # TIFF's tag of the XMP packet
JPEG_SEGMENT = 65533  # the most bytes a JPEG's APP1 segment holds after its length (Pillow's MAX_BYTES_IN_MARKER)
EXIF_JPEG_LIMIT = JPEG_SEGMENT  # an EXIF block, b"Exif\0\0" included
XMP_JPEG_LIMIT = JPEG_SEGMENT - 29  # an XMP packet, after the 29 bytes of its namespace's name
# How an XMP packet's first bytes tell its encoding: a byte-order mark, else the zero bytes around its first "<"
# (XMP puts its mark inside <?xpacket begin="..."?>), else UTF-8
_ENCODINGS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
              (b"\xfe\xff", "utf-16"), (b"<\x00\x00\x00", "utf-32-le"), (b"\x00\x00\x00<", "utf-32-be"),
              (b"<\x00", "utf-16-le"), (b"\x00<", "utf-16-be"))


def xmp_text(packet: bytes) -> str:
    """The text of an XMP packet less any XML declaration before it (its encoding="..." names the bytes, not the
    text): UTF-8 (a leading byte-order mark dropped), or UTF-16 / UTF-32 (the encodings XMP allows) by a byte-order
    mark or the zero bytes around the first "<"; ValueError where it is none of them."""
    codec = next((codec for head, codec in _ENCODINGS if packet.startswith(head)), "utf-8-sig")
    try:
        text = packet.decode(codec)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8, UTF-16 or UTF-32 text ({e.reason})") from None
    if re.match(r"<\?xml\s", text) and "?>" in text:
        text = text[text.index("?>") + 2:].lstrip()
    return text


def check_blocks(exif: Optional[bytes], xmp: Optional[bytes]) -> None:
    """TypeError / ValueError naming ``exif`` or ``xmp`` where it is not bytes of an EXIF block (a TIFF header whose
    first directory lies inside it, after b"Exif\\0\\0" or not: yoda.read_exif's, Pillow's im.info["exif"]) or of an
    XMP packet (xmp_text), or None."""
    for name, value, reader in (("exif", exif, "exif.read_exif"), ("xmp", xmp, "xmp.read_xmp")):
        if value is not None and not isinstance(value, bytes):
            raise TypeError(f"{name} must be bytes (yoda.{reader}'s) or None, got {type(value).__name__}")
    if exif:
        tiff = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
        if order is None or len(tiff) < 8:
            raise ValueError(f"exif: not an EXIF block (it starts with a TIFF header: yoda.read_exif's, or Pillow's "
                             f"im.info['exif']); got {exif[:16]!r}")
        first = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[first:first + 2])[0] if first + 2 <= len(tiff) else -1
        if count < 0 or first + 2 + 12 * count > len(tiff):
            raise ValueError(f"exif: a truncated EXIF block ({len(exif)} bytes): its first directory ends past them")
    if xmp:
        try:
            xmp_text(xmp)
        except ValueError as e:
            raise ValueError(f"xmp: not an XMP packet: {e}") from None


def add_blocks(options: dict, fmt: str, path: str | os.PathLike, exif: Optional[bytes],
               xmp: Optional[bytes]) -> None:
    """Adds Pillow's save options for ``exif`` and ``xmp`` (check_blocks') to ``options`` for an image in format
    ``fmt`` written to ``path``: EXIF (after b"Exif\\0\\0") into a JPEG, PNG, WebP or TIFF; XMP, as UTF-8, into a
    JPEG, a WebP, a PNG (an iTXt chunk) or a TIFF (one tiffinfo with the EXIF); a BMP holds neither. A block larger
    than a JPEG holds (EXIF_JPEG_LIMIT, XMP_JPEG_LIMIT) is left out of a JPEG with a warning naming ``path``."""
    if exif and not exif.startswith(b"Exif\x00\x00"):  # (a JPEG's APP1 segment needs it; Pillow adds it nowhere)
        exif = b"Exif\x00\x00" + exif
    if xmp:
        xmp = xmp_text(xmp).encode("utf-8")
    if fmt == "JPEG":  # (Pillow's errors named no argument: "EXIF data is too long", "XMP data is too long")
        exif = _fits(exif, EXIF_JPEG_LIMIT, "EXIF block", path)
        xmp = _fits(xmp, XMP_JPEG_LIMIT, "XMP packet", path)
    if exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        options["exif"] = exif
    if xmp and fmt in ("JPEG", "WEBP"):
        options["xmp"] = xmp
    elif xmp and fmt == "PNG":  # (Pillow's PNG writer takes no xmp=: the iTXt chunk Adobe's XMP spec names)
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
    elif xmp and fmt == "TIFF":  # (Pillow's TIFF writer takes tiffinfo or exif, not both: one Exif holds the two)
        info = Image.Exif() if exif else options.get("tiffinfo", {})
        if exif:
            info.load(options.pop("exif"))
        info[XMP_TAG] = xmp
        options["tiffinfo"] = info


def _fits(block: Optional[bytes], limit: int, what: str, path: str | os.PathLike) -> Optional[bytes]:
    """``block``, or None with a warning naming ``path`` (counted from save_image's caller) where it is over
    ``limit`` bytes."""
    if block and len(block) > limit:
        warnings.warn(f"{printable(str(path))}: its {what} ({len(block)} bytes) is larger than a JPEG holds ({limit}); "
                      f"written without it", stacklevel=5)
        return None
    return block
