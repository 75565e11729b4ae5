"""A photograph's XMP packet, carried to its upscaled copy (`yoda upscale`; ``save_image(..., xmp=...)``).

    read_xmp(path)   the XMP packet of an image file as its upscaled copy should carry it (bytes), or None

XMP is where photo managers (Lightroom, darktable, digiKam) keep what a photographer adds: keywords, ratings,
labels, titles, captions, people, rights, and Camera Raw's develop settings of a JPEG. The copy keeps all of it
and drops what described the stored pixels, as yoda.exif does for EXIF: the orientation (read_image turns the
pixels upright), the pixel dimensions and resolution (the copy's EXIF block has the scaled resolution), the
samples' layout, the colour space and ICC profile name (the copy is sRGB), the thumbnails, and the digests of
the input's EXIF and TIFF tags (they would mark the copy's own tags as stale). `yoda upscale --strip-metadata`
writes none.
"""

from __future__ import annotations

import io
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from .errors import printable
from .images import open_image

TIFF = "http://ns.adobe.com/tiff/1.0/"
EXIF = "http://ns.adobe.com/exif/1.0/"
XMP = "http://ns.adobe.com/xap/1.0/"
PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
DROPPED = {(TIFF, n) for n in ("Orientation", "ImageWidth", "ImageLength", "BitsPerSample", "Compression",
                               "PhotometricInterpretation", "SamplesPerPixel", "PlanarConfiguration",
                               "YCbCrSubSampling", "YCbCrPositioning", "XResolution", "YResolution",
                               "ResolutionUnit", "NativeDigest")} | {
    (EXIF, n) for n in ("PixelXDimension", "PixelYDimension", "ColorSpace", "SubjectArea", "SubjectLocation",
                        "NativeDigest")} | {(XMP, "Thumbnails"), (PHOTOSHOP, "ICCProfile"), (PHOTOSHOP, "ColorMode")}
JPEG_LIMIT = 65502 - 29  # the most packet bytes a JPEG's APP1 segment holds after its namespace name (no extended XMP)
HEADER = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
TRAILER = '\n<?xpacket end="w"?>'


def _split(name: str) -> tuple[str, str]:
    """("{ns}local" as ElementTree names it) -> (ns, local)."""
    ns, _, local = name[1:].rpartition("}")
    return ns, local


def carried(packet: bytes) -> bytes:
    """The XMP ``packet`` (bytes) less the properties of DROPPED, wrapped as a packet again (module docstring).
    ValueError where it is not an XMP packet of well-formed XML without a DTD (XMP has none; entities could expand)."""
    if b"<!DOCTYPE" in packet or b"<!ENTITY" in packet:
        raise ValueError("an XMP packet with a DTD")
    prefixes, root = {}, None
    for event, item in ET.iterparse(io.BytesIO(packet), events=("start-ns", "start")):
        if event == "start-ns":
            prefixes.setdefault(item[1], item[0])
        elif root is None:
            root = item
    if root is None or _split(root.tag) != ("adobe:ns:meta/", "xmpmeta") and _split(root.tag)[1] != "RDF":
        raise ValueError("not an XMP packet (no x:xmpmeta or rdf:RDF element)")
    for parent in root.iter():
        for name in [k for k in parent.attrib if _split(k) in DROPPED]:
            del parent.attrib[name]
        for child in [c for c in parent if _split(c.tag) in DROPPED]:
            parent.remove(child)
    for uri, prefix in prefixes.items():  # the packet's own prefixes (ElementTree's are ns0, ns1 ...)
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:  # (ns0 and the like: ElementTree's own)
            continue
    return (HEADER + ET.tostring(root, encoding="unicode") + TRAILER).encode("utf-8")


def read_xmp(path: str | os.PathLike) -> Optional[bytes]:
    """The XMP packet of the image file ``path`` (JPEG, PNG, WebP, TIFF, AVIF ...) as its upscaled sRGB copy carries
    it (module docstring), for ``save_image(..., xmp=...)``; None when it has none. A packet that cannot be read,
    or that does not fit a JPEG, is None with a warning naming the file."""
    p = Path(path)
    try:
        with open_image(p) as im:
            packet = im.info.get("xmp")
        if not packet:
            return None
        data = carried(packet.encode("utf-8") if isinstance(packet, str) else bytes(packet))
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no such image file: {p}") from None
    except (OSError, SyntaxError, ValueError) as e:  # (ET.ParseError is a SyntaxError)
        warnings.warn(f"{printable(str(p))}: its XMP metadata cannot be read ({e}); its upscaled copy carries none",
                      stacklevel=2)
        return None
    if len(data) > JPEG_LIMIT:
        warnings.warn(f"{printable(str(p))}: its XMP metadata ({len(data)} bytes) is larger than a JPEG holds "
                      f"({JPEG_LIMIT}); its upscaled copy carries none", stacklevel=2)
        return None
    return data
