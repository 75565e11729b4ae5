"""A photograph's XMP packet, carried to its upscaled copy (`yoda upscale`; ``save_image(..., xmp=...)``).

    read_xmp(path, scale=1)   the XMP packet of an image file as its upscaled copy should carry it (bytes), or None

XMP is where photo managers (Lightroom, darktable, digiKam) keep what a photographer adds: keywords, ratings,
labels, titles, captions, people, rights, and Camera Raw's develop settings of a JPEG. The copy keeps all of it
and drops what described the stored pixels, as yoda.exif does for EXIF: the orientation (read_image turns the
pixels upright), the pixel dimensions and resolutions (the copy's EXIF block has the scaled ones), the samples'
layout, the colour space and ICC profile name (the copy is sRGB), the thumbnails, the digests of the input's EXIF
and TIFF tags (they would mark the copy's own tags as stale), the input's xmpMM:InstanceID (the copy is another
file; its DocumentID and history stay), and what describes data stored after the input's image, which the copy does
not have (a motion photo's video, an Ultra HDR gain map, a depth map, extended XMP). The regions of people and pets
(mwg-rs) follow the pixels: the size they apply to (AppliedToDimensions) is scaled, and regions drawn on the stored
pixels of a photo that read_image gave a quarter turn (EXIF orientation 5-8) turn with them (_regions).
`yoda upscale --strip-metadata` writes none.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from .exif import carried_block, check_scale
from .images import exif_orientation, open_image
from .metadata import xmp_text

TIFF = "http://ns.adobe.com/tiff/1.0/"
EXIF = "http://ns.adobe.com/exif/1.0/"
XMP = "http://ns.adobe.com/xap/1.0/"
PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
GCAMERA = "http://ns.google.com/photos/1.0/camera/"
XMP_MM = "http://ns.adobe.com/xap/1.0/mm/"
MWG_RS = "http://www.metadataworkinggroup.com/schemas/regions/"
ST_DIM = "http://ns.adobe.com/xap/1.0/sType/Dimensions#"
ST_AREA = "http://ns.adobe.com/xmp/sType/Area#"
MP_REG = "http://ns.microsoft.com/photo/1.2/t/Region#"  # Windows' people regions (MPReg:Rectangle), beside mwg-rs
XML_NS = "http://www.w3.org/XML/1998/namespace"  # xml:lang's
DROPPED = {(TIFF, n) for n in ("Orientation", "ImageWidth", "ImageLength", "BitsPerSample", "Compression",
                               "PhotometricInterpretation", "SamplesPerPixel", "PlanarConfiguration",
                               "YCbCrSubSampling", "YCbCrPositioning", "XResolution", "YResolution",
                               "ResolutionUnit", "NativeDigest")} | {
    (EXIF, n) for n in ("PixelXDimension", "PixelYDimension", "ColorSpace", "SubjectArea", "SubjectLocation",
                        "FocalPlaneXResolution", "FocalPlaneYResolution", "FocalPlaneResolutionUnit",
                        "NativeDigest")} | {
    (GCAMERA, n) for n in ("MotionPhoto", "MotionPhotoVersion", "MotionPhotoPresentationTimestampUs", "MicroVideo",
                           "MicroVideoVersion", "MicroVideoOffset", "MicroVideoPresentationTimestampUs")} | {
    (XMP, "Thumbnails"), (PHOTOSHOP, "ICCProfile"), (PHOTOSHOP, "ColorMode"), (XMP_MM, "InstanceID"),
    ("http://ns.adobe.com/xmp/note/", "HasExtendedXMP")}
# namespaces wholly about data after the image: Google's container (motion photos, Ultra HDR), the gain map, depth
DROPPED_NAMESPACES = {"http://ns.google.com/photos/1.0/container/", "http://ns.google.com/photos/1.0/container/item/",
                      "http://ns.adobe.com/hdr-gain-map/1.0/", "http://ns.google.com/photos/1.0/depthmap/",
                      "http://ns.google.com/photos/1.0/image/", "http://ns.google.com/photos/1.0/audio/"}
READ_LIMIT = 1 << 20  # a larger packet is not parsed (a JPEG output holds metadata.XMP_JPEG_LIMIT bytes of it)
# The prefixes of the XMP specifications' namespaces, for a namespace a packet binds as its default only (an
# attribute needs a prefix; _prefixed's last resort is ns0, ns1 ...)
PREFIXES = {TIFF: "tiff", EXIF: "exif", XMP: "xmp", PHOTOSHOP: "photoshop", XMP_MM: "xmpMM", MWG_RS: "mwg-rs",
            ST_DIM: "stDim", ST_AREA: "stArea", "http://purl.org/dc/elements/1.1/": "dc",
            "http://ns.adobe.com/exif/1.0/aux/": "aux", "http://ns.adobe.com/xap/1.0/rights/": "xmpRights",
            "http://ns.adobe.com/camera-raw-settings/1.0/": "crs",
            "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/": "Iptc4xmpCore"}
HEADER = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
TRAILER = '\n<?xpacket end="w"?>'


def _split(name: str) -> tuple[str, str]:
    """("{ns}local" as ElementTree names it) -> (ns, local)."""
    ns, _, local = name[1:].rpartition("}")
    return ns, local


def _dropped(name: str) -> bool:
    ns, local = _split(name)
    return (ns, local) in DROPPED or ns in DROPPED_NAMESPACES


def _text(packet: bytes) -> str:
    """The packet's text (yoda.metadata.xmp_text: UTF-8, UTF-16 or UTF-32, less its XML declaration) less the NULs
    and spaces some writers leave after it; ValueError for a DTD (XMP has none; its entities could expand), looked
    for in the decoded text, which is what is parsed."""
    text = xmp_text(packet).rstrip("\x00 \t\r\n")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("an XMP packet with a DTD")
    return text


def _field(node: ET.Element, name: str):
    """(get, set) of the struct field ``name`` ("{ns}local") under ``node``: an attribute (of node or of an
    rdf:Description in it) or an element's text; None where it has none."""
    for e in node.iter():
        if name in e.attrib:
            return (lambda: e.get(name)), (lambda v: e.set(name, v))
        if e.tag == name and e.text is not None:
            return (lambda: e.text), (lambda v: setattr(e, "text", v))
    return None


# Where read_image's quarter turn by EXIF orientation 5-8 moves a point (x, y), as fractions of the image
_TURNED = {5: lambda x, y: (y, x), 6: lambda x, y: (1 - y, x), 7: lambda x, y: (1 - y, 1 - x),
           8: lambda x, y: (y, 1 - x)}


def _regions(root: ET.Element, scale: int, orientation: int = 1, stored: Optional[tuple] = None) -> None:
    """Sizes every mwg-rs:AppliedToDimensions under ``root`` to the copy: times ``scale`` (not where its unit is other
    than pixels). Where read_image gave the input a quarter turn (EXIF ``orientation`` 5-8) and the dimensions are its
    ``stored`` (width, height), not the turned ones, its regions were drawn on the stored pixels (as digiKam writes
    them): their areas (centre and size, fractions of the image) turn as the pixels did, and the dimensions with
    them, and so do the packet's Windows regions (MPReg:Rectangle, which name no size: the writer's). Where the two
    cannot be told apart (a square image; a mirror or a half turn, orientation 2-4, which keep the sizes) the regions
    are left as they were: writers that draw on the upright picture (Picasa) are as common."""
    parents = {c: p for p in root.iter() for c in p}
    any_turned = False
    for dims in root.iter(f"{{{MWG_RS}}}AppliedToDimensions"):
        w, h, unit = (_field(dims, f"{{{ST_DIM}}}{n}") for n in ("w", "h", "unit"))
        if w is None or h is None or unit is not None and unit[0]().strip() != "pixel":
            continue
        size = w[0](), h[0]()
        try:
            turned = (orientation in _TURNED and stored is not None and stored[0] != stored[1]
                      and tuple(map(float, size)) == tuple(stored))
        except ValueError:
            turned = False
        if turned:
            for area in parents.get(dims, dims).iter(f"{{{MWG_RS}}}Area"):
                _turn_area(area, orientation)
            size = size[::-1]  # the width is the stored height
            any_turned = True
        w[1](_times(size[0], scale))
        h[1](_times(size[1], scale))
    if any_turned:  # the same writer's Windows regions (digiKam writes both): drawn on the same pixels
        rect = f"{{{MP_REG}}}Rectangle"
        for e in root.iter():
            if rect in e.attrib:
                e.set(rect, _turned_rectangle(e.get(rect), orientation))
            if e.tag == rect and e.text:
                e.text = _turned_rectangle(e.text, orientation)


def _turn_area(area: ET.Element, orientation: int) -> None:
    """A region's stArea (centre x, y and size w, h as fractions of the stored image; a point or a circle has no w,
    h) as read_image's quarter turn by ``orientation`` turns it."""
    f = {n: _field(area, f"{{{ST_AREA}}}{n}") for n in ("x", "y", "w", "h", "unit")}
    if f["x"] is None or f["y"] is None or f["unit"] is not None and f["unit"][0]().strip() != "normalized":
        return
    try:
        new = dict(zip("xy", _TURNED[orientation](float(f["x"][0]()), float(f["y"][0]()))))
        if f["w"] is not None and f["h"] is not None:
            new |= {"w": float(f["h"][0]()), "h": float(f["w"][0]())}
    except ValueError:
        return
    for n, v in new.items():
        f[n][1](_decimal(v))


def _turned_rectangle(value: str, orientation: int) -> str:
    """An MPReg:Rectangle "x, y, w, h" (top-left corner and size, fractions of the stored image) as read_image's
    quarter turn by ``orientation`` turns it; anything else as it was."""
    try:
        x, y, w, h = (float(v) for v in value.split(","))
    except ValueError:
        return value
    cx, cy = _TURNED[orientation](x + w / 2, y + h / 2)
    return ", ".join(_decimal(v) for v in (cx - h / 2, cy - w / 2, h, w))


def _decimal(v: float) -> str:
    """A fraction of the image as MWG and Windows regions write it: six decimals, no trailing zeros."""
    return f"{v:.6f}".rstrip("0").rstrip(".") or "0"


def _times(value: str, scale: int) -> str:
    """A number written in an XMP property, times ``scale`` (an integer stays one); anything else as it was."""
    try:
        return str(int(value) * scale)
    except ValueError:
        try:
            return repr(float(value) * scale)
        except ValueError:
            return value


def carried(packet: bytes, scale: int = 1, orientation: int = 1, stored: Optional[tuple] = None) -> bytes:
    """The XMP ``packet`` (bytes) less the properties of DROPPED and DROPPED_NAMESPACES, its regions sized to the
    copy, ``scale`` times the input, which was turned upright by its EXIF ``orientation`` from its ``stored``
    (width, height) (_regions), wrapped as a packet again (module docstring). ValueError where it is not an XMP
    packet of well-formed XML without a DTD."""
    prefixes, root = {}, None
    for event, item in ET.iterparse(io.BytesIO(_text(packet).encode("utf-8")), events=("start-ns", "start")):
        if event == "start-ns":
            if item[0]:  # (a default namespace names no prefix: the copy's attributes in it need one)
                prefixes.setdefault(item[1], item[0])
        elif root is None:
            root = item
    if root is None or _split(root.tag) not in (("adobe:ns:meta/", "xmpmeta"), ("adobe:ns:meta/", "xapmeta")) \
            and _split(root.tag)[1] != "RDF":
        raise ValueError("not an XMP packet (no x:xmpmeta or rdf:RDF element)")
    for parent in root.iter():
        for name in [k for k in parent.attrib if _dropped(k)]:
            del parent.attrib[name]
        for child in [c for c in parent if _dropped(c.tag)]:
            parent.remove(child)
    _regions(root, scale, orientation, stored)
    _prefixed(root, prefixes)
    return (HEADER + ET.tostring(root, encoding="unicode") + TRAILER).encode("utf-8")


def _prefixed(root: ET.Element, prefixes: dict) -> None:
    """Names each "{uri}local" tag and attribute under ``root`` "prefix:local" and declares the prefixes on ``root``:
    the packet's own prefix of each namespace (``prefixes``: uri -> prefix), else the XMP specification's (PREFIXES),
    else ns0, ns1 ... ElementTree then writes the names as they are; its own prefixes would come from a table the
    whole process shares (register_namespace), which other threads' XML reads."""
    owner: dict = {"xml": XML_NS}  # prefix -> the one namespace it names in the copy
    chosen: dict = {XML_NS: "xml"}

    def name(n: str) -> str:
        if not n.startswith("{"):
            return n
        uri, local = _split(n)
        if uri not in chosen:
            wanted = [p for p in (prefixes.get(uri), PREFIXES.get(uri)) if p and p not in owner]
            prefix = wanted[0] if wanted else next(f"ns{k}" for k in range(len(owner) + 1) if f"ns{k}" not in owner)
            owner[prefix], chosen[uri] = uri, prefix
        return f"{chosen[uri]}:{local}"

    for e in root.iter():
        e.tag = name(e.tag)
        e.attrib = {name(k): v for k, v in e.attrib.items()}
    root.attrib = {**{f"xmlns:{p}": u for u, p in chosen.items() if u != XML_NS}, **root.attrib}


def read_xmp(path: str | os.PathLike, scale: int = 1) -> Optional[bytes]:
    """The XMP packet of the image file ``path`` (JPEG, PNG, WebP, TIFF, AVIF ...) as its upscaled sRGB copy,
    ``scale`` times its size, carries it (module docstring), for ``save_image(..., xmp=...)``; None when it has none.
    A packet that cannot be read (not well-formed, nested too deep, over READ_LIMIT) is None with a warning naming
    the file (save_image leaves one out of a JPEG where it is larger than the JPEG holds, with a warning)."""
    check_scale(scale)
    # (RecursionError: a packet nested a thousand deep overflowed ElementTree's writer; ET.ParseError is a SyntaxError)
    return carried_block(path, "XMP", lambda p: _xmp_of(p, scale), (RecursionError,), None)


def _xmp_of(p: Path, scale: int) -> Optional[bytes]:
    """read_xmp's packet, unchecked."""
    with open_image(p) as im:
        turn, stored = exif_orientation(im), im.size  # (read_image's turn of the pixels)
        packet = im.info.get("xmp")
        text = im.info.get("XML:com.adobe.xmp")  # a PNG's tEXt / zTXt chunk (Pillow's "xmp" is iTXt's only)
        if packet is None and isinstance(text, str):
            packet = text.encode("latin-1", "replace")  # (the bytes Pillow read as Latin-1, tEXt's encoding)
    if not packet:
        return None
    raw = packet.encode("utf-8") if isinstance(packet, str) else bytes(packet)
    if len(raw) > READ_LIMIT:
        raise ValueError(f"{len(raw)} bytes, more than the {READ_LIMIT} read")
    return carried(raw, scale, turn, stored)
