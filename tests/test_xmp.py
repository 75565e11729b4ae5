"""A photograph's XMP packet carried to its upscaled copy (yoda.xmp.read_xmp, save_image(xmp=...), `yoda upscale`)."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from yoda.images import save_image
from yoda.metadata import XMP_JPEG_LIMIT
from yoda.xmp import READ_LIMIT, carried, read_xmp

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS = {"x": "adobe:ns:meta/", "rdf": RDF, "xmp": "http://ns.adobe.com/xap/1.0/",
      "dc": "http://purl.org/dc/elements/1.1/", "tiff": "http://ns.adobe.com/tiff/1.0/",
      "exif": "http://ns.adobe.com/exif/1.0/", "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
      "photoshop": "http://ns.adobe.com/photoshop/1.0/"}


def lightroom_xmp(pad: int = 0) -> bytes:
    """An XMP packet as Lightroom writes into a JPEG: simple properties as attributes (a rating, a label, the
    orientation, sizes, a develop setting), structured ones as elements (keywords, rights, the pixel sizes again as
    elements, a thumbnail), and the packet's padding."""
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0">\n'
            f' <rdf:RDF xmlns:rdf="{RDF}">\n'
            '  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
            ' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
            ' xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"'
            ' xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"'
            ' xmp:Rating="4" xmp:Label="Red" tiff:Orientation="6" tiff:Make="Phone Co" crs:Exposure2012="+0.35"'
            ' exif:PixelXDimension="4032" photoshop:ICCProfile="Adobe RGB (1998)" photoshop:City="Zürich">\n'
            '   <dc:subject><rdf:Bag><rdf:li>Alps</rdf:li><rdf:li>Schnee</rdf:li></rdf:Bag></dc:subject>\n'
            '   <dc:rights><rdf:Alt><rdf:li xml:lang="x-default">© A. Phötographer</rdf:li></rdf:Alt></dc:rights>\n'
            '   <exif:PixelYDimension>3024</exif:PixelYDimension>\n'
            '   <tiff:ImageWidth>4032</tiff:ImageWidth>\n'
            '   <xmp:Thumbnails><rdf:Alt><rdf:li rdf:parseType="Resource"><xmpGImg:image xmlns:xmpGImg='
            '"http://ns.adobe.com/xap/1.0/g/img/">/9j/4AAQ</xmpGImg:image></rdf:li></rdf:Alt></xmp:Thumbnails>\n'
            '  </rdf:Description>\n'
            ' </rdf:RDF>\n'
            '</x:xmpmeta>\n' + " " * pad + '\n<?xpacket end="w"?>').encode("utf-8")


def properties(packet: bytes) -> dict:
    """{prefix:name: value} of the packet's rdf:Description attributes, and its element properties' text (a list of
    rdf:li texts for a Bag / Alt)."""
    root = ET.fromstring(packet.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    uris = {v: k for k, v in NS.items()}
    name = lambda tag: f"{uris.get(tag[1:].split('}')[0], '?')}:{tag.split('}')[1]}"
    found = {}
    for d in root.iter(f"{{{RDF}}}Description"):
        found.update({name(k): v for k, v in d.attrib.items()})
        for c in d:
            lis = [li.text for li in c.iter(f"{{{RDF}}}li")]
            found[name(c.tag)] = lis if lis else c.text
    return found


KEPT = {"xmp:Rating": "4", "xmp:Label": "Red", "tiff:Make": "Phone Co", "crs:Exposure2012": "+0.35",
        "photoshop:City": "Zürich", "dc:subject": ["Alps", "Schnee"], "dc:rights": ["© A. Phötographer"]}


def test_carried_keeps_what_the_photographer_added_and_drops_the_stored_pixels():
    got = properties(carried(lightroom_xmp()))
    assert {k: got.get(k) for k in KEPT} == KEPT
    dropped = ("tiff:Orientation", "exif:PixelXDimension", "exif:PixelYDimension", "tiff:ImageWidth",
               "xmp:Thumbnails", "photoshop:ICCProfile")
    assert [k for k in dropped if k in got] == [] and "rdf:about" in got
    text = carried(lightroom_xmp()).decode("utf-8")
    assert text.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta ')
    assert text.endswith('</x:xmpmeta>\n<?xpacket end="w"?>') and "ns0:" not in text  # the packet's own prefixes
    assert 'xmlns:dc="http://purl.org/dc/elements/1.1/"' in text
    for bad, why in ((b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x:xmpmeta xmlns:x="adobe:ns:meta/">'
                      b'&a;</x:xmpmeta>', "DTD"), (b"<html><body/></html>", "not an XMP packet")):
        with pytest.raises(ValueError, match=why):
            carried(bad)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("TIFF", ".tif")])
def test_read_xmp_and_save_image_carry_the_packet_in_each_format(tmp_path, fmt, suffix):
    a = np.zeros((8, 12, 3), np.uint8)
    src = tmp_path / f"in{suffix}"
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", lightroom_xmp().decode("utf-8"))
        Image.fromarray(a).save(src, pnginfo=info)
    else:
        Image.fromarray(a).save(src, format=fmt, **({"tiffinfo": {700: lightroom_xmp()}} if fmt == "TIFF"
                                                   else {"xmp": lightroom_xmp()}))
    packet = read_xmp(src)
    assert packet == carried(lightroom_xmp())
    x = torch.rand(1, 3, 8, 12) * 2 - 1
    for out_suffix in (".jpg", ".png", ".webp", ".tif"):
        out = save_image(x, tmp_path / f"out{out_suffix}", xmp=packet)
        with Image.open(out) as im:
            got = properties(im.info["xmp"] if isinstance(im.info["xmp"], bytes) else im.info["xmp"].encode())
        assert {k: got.get(k) for k in KEPT} == KEPT and "tiff:Orientation" not in got, out_suffix
        if out_suffix == ".tif":  # the packet does not cost a TIFF its compression (EXIF does)
            with Image.open(out) as im:
                assert im.tag_v2[259] == 5
    save_image(x, tmp_path / "out.bmp", xmp=packet)  # a BMP holds none: written without it
    with pytest.raises(TypeError, match=r"xmp must be bytes \(yoda.xmp.read_xmp's\) or None, got str"):
        save_image(x, tmp_path / "out.png", xmp=packet.decode())


@pytest.mark.parametrize("zip_", [False, True])
def test_read_xmp_of_a_png_text_chunk(tmp_path, zip_):
    """XMP in a PNG's tEXt or zTXt chunk (older writers) was not read: Pillow's info["xmp"] holds iTXt's only."""
    info = PngImagePlugin.PngInfo()
    info.add_text("XML:com.adobe.xmp", lightroom_xmp().decode("latin-1"), zip=zip_)  # its UTF-8 bytes, as written
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "old.png", pnginfo=info)
    assert read_xmp(tmp_path / "old.png") == carried(lightroom_xmp())  # the "ü" and "©" of UTF-8 as they were


def test_read_xmp_none_unreadable_and_too_large(tmp_path):
    a = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(a).save(tmp_path / "plain.jpg")
    assert read_xmp(tmp_path / "plain.jpg") is None
    Image.fromarray(a).save(tmp_path / "broken.jpg", xmp=lightroom_xmp()[:-60])  # cut short: not well-formed
    with pytest.warns(UserWarning, match=r"broken\.jpg: its XMP metadata cannot be read \(.*\); its upscaled copy "
                                         r"carries none"):
        assert read_xmp(tmp_path / "broken.jpg") is None
    info = PngImagePlugin.PngInfo()
    big = lightroom_xmp().replace(b'xmp:Label="Red"', b'xmp:Label="' + b"R" * READ_LIMIT + b'"')
    info.add_itxt("XML:com.adobe.xmp", big.decode("utf-8"))
    Image.fromarray(a).save(tmp_path / "huge.png", pnginfo=info)
    with pytest.warns(UserWarning, match=rf"huge\.png: its XMP metadata cannot be read \(\d+ bytes, more than the "
                                         rf"{READ_LIMIT} read\); its upscaled copy carries none"):
        assert read_xmp(tmp_path / "huge.png") is None
    with pytest.raises(FileNotFoundError, match="path: no such image file"):
        read_xmp(tmp_path / "missing.jpg")


def test_upscale_carries_the_xmp_of_its_input(tmp_path, tiny_model, capsys):
    """`yoda upscale` dropped every input's XMP packet: keywords, ratings and captions a photo manager had added
    were gone from the upscaled copy. It carries it now, and none with --strip-metadata."""
    from yoda.cli import main

    src = tmp_path / "tagged.jpg"
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(src, xmp=lightroom_xmp(pad=2000))
    for extra, want in (([], KEPT), (["--strip-metadata"], None)):
        out = tmp_path / f"out{len(extra)}.png"
        code = main(["upscale", str(src), "-o", str(out), "--model", tiny_model, "--steps", "1", "-q", *extra])
        assert code == 0, capsys.readouterr().err
        with Image.open(out) as im:
            packet = im.info.get("xmp")
        if want is None:
            assert packet is None
        else:
            got = properties(packet)
            assert {k: got.get(k) for k in KEPT} == KEPT and "exif:PixelXDimension" not in got
    rs, dim = "http://www.metadataworkinggroup.com/schemas/regions/", "http://ns.adobe.com/xap/1.0/sType/Dimensions#"
    faces = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" '
             f'xmlns:mwg-rs="{rs}" xmlns:stDim="{dim}"><mwg-rs:Regions rdf:parseType="Resource"><mwg-rs:'
             f'AppliedToDimensions stDim:w="12" stDim:h="8" stDim:unit="pixel"/></mwg-rs:Regions></rdf:Description>'
             f'</rdf:RDF></x:xmpmeta>').encode()
    Image.fromarray(np.full((8, 12, 3), 90, np.uint8)).save(tmp_path / "faces.jpg", xmp=faces)
    assert main(["upscale", str(tmp_path / "faces.jpg"), "-o", str(tmp_path / "faces.png"), "--model", tiny_model,
                 "--steps", "1", "-q"]) == 0
    with Image.open(tmp_path / "faces.png") as im:  # the regions apply to the copy's size
        assert f'stDim:w="{im.width}" stDim:h="{im.height}"'.encode() in im.info["xmp"] and im.width > 12


def test_packets_as_real_files_hold_them():
    """A review's packets: a trailing NUL (iOS, taglib-sharp) dropped the whole packet; a UTF-16 packet slipped a DTD
    past a byte search; Photoshop 7's x:xapmeta root was refused; a focal-plane resolution, a motion photo's video,
    an Ultra HDR gain map and extended XMP (which the copy does not have) were carried."""
    plain = carried(lightroom_xmp())
    assert carried(lightroom_xmp() + b"\x00\x00 ") == plain
    utf16 = lightroom_xmp().decode("utf-8").encode("utf-16")  # with its byte-order mark, as XMP allows
    assert carried(utf16) == plain
    declared = '<?xml version="1.0" encoding="UTF-16"?>' + lightroom_xmp().decode("utf-8")
    assert carried(declared.encode("utf-16")) == plain
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&a;'
            '</x:xmpmeta>')
    with pytest.raises(ValueError, match="DTD"):
        carried(bomb.encode("utf-16"))
    old = lightroom_xmp().replace(b"x:xmpmeta", b"x:xapmeta")
    assert properties(carried(old))["xmp:Rating"] == "4"
    extra = lightroom_xmp().replace(b' xmp:Rating="4"', (
        b' xmp:Rating="4" exif:FocalPlaneXResolution="1000/1" GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1"'
        b' GCamera:SpecialTypeID="p" hdrgm:Version="1.0" xmpNote:HasExtendedXMP="0123"'
        b' xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/"'
        b' xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
        b' xmlns:Container="http://ns.google.com/photos/1.0/container/"'
        b' xmlns:Item="http://ns.google.com/photos/1.0/container/item/"'))
    extra = extra.replace(b"   <tiff:ImageWidth>", b"   <Container:Directory><rdf:Seq><rdf:li rdf:parseType="
                          b'"Resource"><Container:Item Item:Mime="video/mp4" Item:Length="2345678"/></rdf:li>'
                          b"</rdf:Seq></Container:Directory>\n   <tiff:ImageWidth>")
    text = carried(extra).decode("utf-8")
    for gone in ("FocalPlane", "MotionPhoto", "hdrgm:", "HasExtendedXMP", "Container:", "Item:", "2345678"):
        assert gone not in text, gone
    assert 'GCamera:SpecialTypeID="p"' in text and properties(carried(extra))["xmp:Rating"] == "4"


def test_deep_and_huge_packets_are_left_out_with_a_warning(tmp_path):
    """A packet nested a thousand deep (11 KB: it fits a JPEG) overflowed ElementTree's writer: an internal error
    that stopped a whole folder run. A huge one was parsed whole before the size check (26 MiB: 3.8 s, 400 MB)."""
    a = np.zeros((4, 4, 3), np.uint8)
    deep = lightroom_xmp().replace(b"<dc:subject>", b"<dc:subject>" + b"<a>" * 1500 + b"</a>" * 1500)
    Image.fromarray(a).save(tmp_path / "deep.jpg", xmp=deep)
    with pytest.warns(UserWarning, match=r"deep\.jpg: its XMP metadata cannot be read \(maximum recursion"):
        assert read_xmp(tmp_path / "deep.jpg") is None
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", lightroom_xmp().decode("utf-8") + " " * (1 << 20))
    Image.fromarray(a).save(tmp_path / "huge.png", pnginfo=info)
    with pytest.warns(UserWarning, match=r"huge\.png: its XMP metadata cannot be read \(\d+ bytes, more than the "
                                         r"1048576 read\)"):
        assert read_xmp(tmp_path / "huge.png") is None


def test_a_tiff_output_carries_exif_and_xmp_together(tmp_path):
    """With both, a TIFF output lost its EXIF: Pillow's TIFF writer takes tiffinfo (the XMP) or exif, not both."""
    from PIL import ExifTags

    from yoda.exif import read_exif

    ex = Image.Exif()
    ex[ExifTags.Base.Make] = "Phone Co"
    ex.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2021:06:05 14:03:22"
    src = tmp_path / "both.jpg"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(src, exif=ex.tobytes(), xmp=lightroom_xmp())
    out = save_image(torch.zeros(1, 3, 8, 12), tmp_path / "out.tif", exif=read_exif(src, 4), xmp=read_xmp(src))
    with Image.open(out) as im:
        got = im.getexif()
        assert got[ExifTags.Base.Make] == "Phone Co" and properties(im.info["xmp"])["xmp:Rating"] == "4"
        assert got.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == "2021:06:05 14:03:22"


def test_packets_prefixes_leave_elementtrees_shared_table_alone(monkeypatch):
    """carried() wrote each packet's prefixes into ElementTree's process-wide table (register_namespace): two threads
    whose packets bind a / b the other way round wrote xmlns:b twice, and saving and restoring the table under a lock
    left it empty for a moment, in which another thread's ElementTree wrote xml:lang as ns1:lang bound to the
    reserved namespace (invalid XML; 578 of a review's threaded runs). The copy names its prefixes itself now: the
    table is never written (here it refuses any write), and each packet keeps its own prefixes."""
    import yoda.xmp as xmp

    class Frozen(dict):
        def _refuse(self, *args, **kwargs):
            raise AssertionError("ElementTree's shared prefix table was written")

        __setitem__ = __delitem__ = clear = update = pop = popitem = setdefault = _refuse

    monkeypatch.setattr(ET, "_namespace_map", Frozen(ET._namespace_map))
    monkeypatch.setattr(xmp.ET, "register_namespace", Frozen()._refuse)

    def packet(p, q):
        return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" '
                f'xmlns:{p}="urn:one" xmlns:{q}="urn:two" {p}:v="1" {q}:w="2" xml:lang="de"/></rdf:RDF>'
                f'</x:xmpmeta>').encode()

    for one, two in (("a", "b"), ("b", "a")):
        text = carried(packet(one, two)).decode()
        root = ET.fromstring(text.split("?>", 1)[1].rsplit("<?xpacket", 1)[0])  # well-formed
        d = next(root.iter(f"{{{RDF}}}Description"))
        assert d.get("{urn:one}v") == "1" and d.get("{urn:two}w") == "2", text
        assert d.get("{http://www.w3.org/XML/1998/namespace}lang") == "de" and 'xml:lang="de"' in text, text
        assert f'xmlns:{one}="urn:one"' in text and f'xmlns:{two}="urn:two"' in text and f'{one}:v="1"' in text, text
    assert properties(carried(lightroom_xmp())) == properties(carried(carried(lightroom_xmp())))
    rebound = packet("a", "b").replace(b'xmlns:b="urn:two" ', b"").replace(b' b:w="2"', b"").replace(
        b"<rdf:Description", b'<rdf:Description xmlns:a="urn:two" a:w="2"><rdf:Description', 1).replace(
        b"</rdf:RDF>", b"</rdf:Description></rdf:RDF>")  # one prefix, two namespaces in two scopes
    root = ET.fromstring(carried(rebound).split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    outer, inner = root.iter(f"{{{RDF}}}Description")
    assert outer.get("{urn:two}w") == "2" and inner.get("{urn:one}v") == "1"


def test_a_packet_larger_than_a_jpeg_holds_goes_into_other_formats(tmp_path):
    """read_xmp gave None for any packet over a JPEG's 64 KiB, whatever the output's format: a Photoshop packet with
    a long history was dropped from a PNG or TIFF copy that holds it. The JPEG's limit is applied where a JPEG is
    written (with a warning naming the file; Pillow's own error said only "XMP data is too long")."""
    big = lightroom_xmp().replace(b'xmp:Label="Red"', b'xmp:Label="' + b"R" * XMP_JPEG_LIMIT + b'"')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", big.decode("utf-8"))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "history.png", pnginfo=info)
    packet = read_xmp(tmp_path / "history.png")
    assert packet == carried(big) and len(packet) > XMP_JPEG_LIMIT
    x = torch.zeros(1, 3, 4, 4)
    for suffix in (".png", ".tif", ".webp"):
        save_image(x, tmp_path / f"out{suffix}", xmp=packet)
        with Image.open(tmp_path / f"out{suffix}") as im:
            assert im.info.get("xmp") == packet, suffix
    with pytest.warns(UserWarning, match=rf"out\.jpg: its XMP packet \({len(packet)} bytes\) is larger than a JPEG "
                                         rf"holds \({XMP_JPEG_LIMIT}\); written without it") as said:
        save_image(x, tmp_path / "out.jpg", xmp=packet)
    assert said[0].filename == __file__  # said of the caller's line, not of yoda's
    with Image.open(tmp_path / "out.jpg") as im:
        assert "xmp" not in im.info
    save_image(x, tmp_path / "fits.jpg", xmp=carried(lightroom_xmp()))  # one that fits is written
    with Image.open(tmp_path / "fits.jpg") as im:
        assert im.info["xmp"] == carried(lightroom_xmp())


def test_attributes_of_a_default_namespace_keep_it():
    """A packet binding a namespace both as its default and with a prefix came back with the default (xmlns="...")
    and its attributes unprefixed, which XML puts in no namespace: dc:format was lost to every XMP reader. The copy
    names a prefix for it (the packet's own, else the XMP specification's), and ElementTree's process-wide prefix
    table is left as it was (a default namespace registered there changed how other code writes XML)."""
    dc = NS["dc"]
    table = dict(ET._namespace_map)
    for binding in ('xmlns="{0}" xmlns:dc="{0}"', 'xmlns:dc="{0}" xmlns="{0}"', 'xmlns="{0}"'):
        packet = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" '
                  f'{binding.format(dc)} format="image/jpeg"><title>t</title></rdf:Description></rdf:RDF>'
                  f'</x:xmpmeta>').encode()
        packet = packet.replace(b' format=', b' dc:format=') if b"xmlns:dc" in packet else packet
        out = carried(packet)
        root = ET.fromstring(out.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
        d = next(root.iter(f"{{{RDF}}}Description"))
        assert d.find(f"{{{dc}}}title").text == "t", out
        if b"xmlns:dc" in packet:
            assert d.get(f"{{{dc}}}format") == "image/jpeg", out
        assert b'xmlns="' not in out and b"dc:title" in out, out
    assert ET._namespace_map == table
    own = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" '
           f'xmlns="urn:lab" xmlns:lab="urn:lab" lab:batch="7"/></rdf:RDF></x:xmpmeta>').encode()
    assert b'xmlns:lab="urn:lab"' in carried(own) and b'lab:batch="7"' in carried(own)  # its own prefix, not ns0


def test_the_copy_is_another_instance_with_its_regions_sized_to_it(tmp_path):
    """The copy carried the input's xmpMM:InstanceID (the identifier of that one file: two files claimed it) and
    its face regions' mwg-rs:AppliedToDimensions, the input's pixel size: photo managers that check it against the
    image dropped the regions of the four times larger copy. The instance ID is left out (DocumentID stays) and the
    dimensions scale with the image, written as attributes or as elements; a unit other than pixels is left alone."""
    mm, rs, dim = "http://ns.adobe.com/xap/1.0/mm/", "http://www.metadataworkinggroup.com/schemas/regions/", \
        "http://ns.adobe.com/xap/1.0/sType/Dimensions#"
    packet = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" '
              f'xmlns:xmpMM="{mm}" xmlns:mwg-rs="{rs}" xmlns:stDim="{dim}" xmpMM:InstanceID="xmp.iid:1" '
              f'xmpMM:DocumentID="xmp.did:7"><mwg-rs:Regions rdf:parseType="Resource">'
              f'<mwg-rs:AppliedToDimensions stDim:w="4032" stDim:h="3024.5" stDim:unit="pixel"/>'
              f'</mwg-rs:Regions><mwg-rs:Other rdf:parseType="Resource"><mwg-rs:AppliedToDimensions '
              f'rdf:parseType="Resource"><stDim:w>40</stDim:w><stDim:h>30</stDim:h></mwg-rs:AppliedToDimensions>'
              f'</mwg-rs:Other><mwg-rs:Inches rdf:parseType="Resource"><mwg-rs:AppliedToDimensions stDim:w="8" '
              f'stDim:h="6" stDim:unit="inch"/></mwg-rs:Inches></rdf:Description></rdf:RDF></x:xmpmeta>').encode()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "faces.jpg", xmp=packet)
    out = read_xmp(tmp_path / "faces.jpg", 4)
    root = ET.fromstring(out.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    d = next(root.iter(f"{{{RDF}}}Description"))
    assert d.get(f"{{{mm}}}InstanceID") is None and d.get(f"{{{mm}}}DocumentID") == "xmp.did:7"
    sizes = [(e.get(f"{{{dim}}}w") or e.findtext(f"{{{dim}}}w"), e.get(f"{{{dim}}}h") or e.findtext(f"{{{dim}}}h"))
             for e in root.iter(f"{{{rs}}}AppliedToDimensions")]
    assert sizes == [("16128", "12098.0"), ("160", "120"), ("8", "6")]
    assert carried(packet) == read_xmp(tmp_path / "faces.jpg")  # scale 1: the sizes as they were
    for bad in ("4", 0, True, 2.0):
        with pytest.raises(ValueError, match=f"scale must be an int >= 1, got {bad!r}"):
            read_xmp(tmp_path / "faces.jpg", bad)
    assert b'stDim:w="4032"' in carried(packet)


def test_a_utf16_packet_is_written_as_utf8():
    """save_image(xmp=) of a UTF-16 packet (XMP allows it; read_xmp reads it) failed for a PNG with a bare
    UnicodeDecodeError from the iTXt chunk, and went as UTF-16 into a JPEG, whose XMP must be UTF-8. Every format
    gets it as UTF-8 now; bytes that are no XMP text are a ValueError naming xmp, before anything is written."""
    import tempfile
    from pathlib import Path

    utf16 = lightroom_xmp().decode("utf-8").encode("utf-16")
    x = torch.zeros(1, 3, 4, 4)
    with tempfile.TemporaryDirectory() as d:
        for suffix in (".png", ".jpg", ".webp", ".tif"):
            p = Path(d) / f"out{suffix}"
            save_image(x, p, xmp=utf16)
            with Image.open(p) as im:
                assert im.info["xmp"] == lightroom_xmp(), suffix
            assert read_xmp(p) == carried(utf16) == carried(lightroom_xmp())
        with pytest.raises(ValueError, match=r"xmp: not an XMP packet: not UTF-8, UTF-16 or UTF-32 text"):
            save_image(x, Path(d) / "bad.png", xmp=b"\xff\xfe<\x00x\x00:")  # UTF-16 cut in a character
        assert not (Path(d) / "bad.png").exists()
        # a review's packets: UTF-16 with its XML declaration (encoding="UTF-16" before UTF-8 bytes: expat refused
        # the file's packet), and UTF-16 / UTF-32 with no byte-order mark before the first "<" (XMP puts its mark
        # in <?xpacket begin="..."?>), refused as "not UTF-16"
        declared = ('<?xml version="1.0" encoding="UTF-16"?>' + lightroom_xmp().decode()).encode("utf-16")
        for packet in (declared, lightroom_xmp().decode().encode("utf-16-le"),
                       lightroom_xmp().decode().encode("utf-16-be"), lightroom_xmp().decode().encode("utf-32-le")):
            save_image(x, Path(d) / "out.png", xmp=packet)
            with Image.open(Path(d) / "out.png") as im:
                assert im.info["xmp"] == lightroom_xmp()
            assert carried(packet) == carried(lightroom_xmp())


def _region_packet(w, h, x, y, size=' stArea:w="0.25" stArea:h="0.5"'):
    """An XMP packet with one MWG face region (centre x, y; size w 0.25, h 0.5 unless ``size``) on a w x h image."""
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{RDF}"><rdf:Description rdf:about="" '
            f'xmlns:mwg-rs="{MWG_RS}" xmlns:stDim="{DIM}" xmlns:stArea="{AREA}"><mwg-rs:Regions '
            f'rdf:parseType="Resource"><mwg-rs:AppliedToDimensions stDim:w="{w}" stDim:h="{h}" stDim:unit="pixel"/>'
            f'<mwg-rs:RegionList><rdf:Bag><rdf:li rdf:parseType="Resource"><mwg-rs:Area stArea:x="{x}" '
            f'stArea:y="{y}"{size} stArea:unit="normalized"/></rdf:li></rdf:Bag></mwg-rs:RegionList></mwg-rs:Regions>'
            f'</rdf:Description></rdf:RDF></x:xmpmeta>').encode()


MWG_RS, DIM, AREA = ("http://www.metadataworkinggroup.com/schemas/regions/",
                     "http://ns.adobe.com/xap/1.0/sType/Dimensions#", "http://ns.adobe.com/xmp/sType/Area#")


def _region_of(packet):
    """(AppliedToDimensions w, h; the area's x, y, w, h) of _region_packet's packet as carried."""
    root = ET.fromstring(packet.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
    d, a = next(root.iter(f"{{{MWG_RS}}}AppliedToDimensions")), next(root.iter(f"{{{MWG_RS}}}Area"))
    return (int(d.get(f"{{{DIM}}}w")), int(d.get(f"{{{DIM}}}h")),
            *(float(a.get(f"{{{AREA}}}{n}") or "nan") for n in "xywh"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_face_regions_of_a_turned_photo_follow_its_pixels(tmp_path, orientation):
    """A phone photo stored 12x8 with EXIF orientation 6 is upright in its copy (8 wide, 12 high, no orientation),
    but its face regions, drawn on the stored pixels (digiKam's mwg-rs, AppliedToDimensions 12x8), were carried as
    they were: scaled to 48x32 and pointing at the wrong place. After a quarter turn (5-8) they follow the pixels
    now: each region's centre is where read_image puts the stored pixel under it (found here from a red pixel), its
    size turns, and the dimensions are the copy's. Regions given for the upright picture (8x12), and wherever the
    two cannot be told apart (a mirror or a half turn, 2-4, keeps the sizes), only scale."""
    from yoda.images import read_image

    col, row = 2, 5  # the stored pixel at the region's centre
    x, y = (col + 0.5) / 12, (row + 0.5) / 8
    a = np.zeros((8, 12, 3), np.uint8)
    a[row, col] = (255, 0, 0)
    ex = Image.Exif()
    ex[0x0112] = orientation
    for w, h in ((12, 8), (8, 12)):
        p = tmp_path / f"phone{w}.jpg"
        Image.fromarray(a).save(p, exif=ex.tobytes(), xmp=_region_packet(w, h, x, y), quality=100)
        up = read_image(p)
        dw, dh, gx, gy, gw, gh = _region_of(read_xmp(p, 4))
        if orientation >= 5 and (w, h) == (12, 8):  # drawn on the stored pixels
            assert (dw, dh) == (4 * up.shape[1], 4 * up.shape[0]) == (32, 48)
            r, c = np.unravel_index(np.argmax(up[..., 0].astype(int) - up[..., 1]), up.shape[:2])
            assert (gx, gy) == pytest.approx(((c + 0.5) / up.shape[1], (r + 0.5) / up.shape[0]), abs=1e-6)
            assert (gw, gh) == (0.5, 0.25)
        else:  # drawn on the upright picture, or no telling: only the pixel size changes
            assert (dw, dh) == (4 * w, 4 * h)
            assert (gx, gy, gw, gh) == pytest.approx((x, y, 0.25, 0.5), abs=1e-6)


def test_regions_turn_only_where_the_sizes_tell(tmp_path):
    """A square photo turned by its orientation gives no sign which picture its regions were drawn on: they are left
    as they were (a review: turned, a box drawn on the upright picture moved). A point region (x, y, no size) moves
    with a quarter turn and keeps no size."""
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.new("RGB", (8, 8)).save(tmp_path / "square.jpg", exif=ex.tobytes(), xmp=_region_packet(8, 8, 0.25, 0.2))
    assert _region_of(read_xmp(tmp_path / "square.jpg", 2)) == pytest.approx((16, 16, 0.25, 0.2, 0.25, 0.5))
    Image.new("RGB", (12, 8)).save(tmp_path / "point.jpg", exif=ex.tobytes(),
                                   xmp=_region_packet(12, 8, 0.25, 0.2, size=""))
    got = _region_of(read_xmp(tmp_path / "point.jpg", 2))
    assert got[:4] == pytest.approx((16, 24, 0.8, 0.25)) and np.isnan(got[4]) and np.isnan(got[5])

def test_windows_regions_turn_with_the_mwg_ones(tmp_path):
    """digiKam writes each face twice, as an MWG region and as a Windows one (MPReg:Rectangle "x, y, w, h": top-left
    corner and size). Once the MWG regions turned with a quarter-turned photo, the Windows box stayed where it was
    stored: the copy's two boxes of one face disagreed. The Windows box turns with them (it names no size of its
    own); in a packet whose MWG regions do not turn, it stays as it was."""
    mp, mpri, mpreg = ("http://ns.microsoft.com/photo/1.2/", "http://ns.microsoft.com/photo/1.2/t/RegionInfo#",
                       "http://ns.microsoft.com/photo/1.2/t/Region#")
    x, y, w, h = 0.25, 0.3, 0.25, 0.5  # the MWG centre and size
    windows = (f'<MP:RegionInfo xmlns:MP="{mp}" xmlns:MPRI="{mpri}" xmlns:MPReg="{mpreg}" rdf:parseType="Resource">'
               f'<MPRI:Regions><rdf:Bag><rdf:li MPReg:Rectangle="{x - w / 2}, {y - h / 2}, {w}, {h}" '
               f'MPReg:PersonDisplayName="Ann"/></rdf:Bag></MPRI:Regions></MP:RegionInfo>').encode()
    ex = Image.Exif()
    ex[0x0112] = 6
    for dims, turned in (((12, 8), True), ((8, 12), False)):
        packet = _region_packet(*dims, x, y).replace(b"</mwg-rs:Regions>", b"</mwg-rs:Regions>" + windows)
        Image.new("RGB", (12, 8)).save(tmp_path / "both.jpg", exif=ex.tobytes(), xmp=packet)
        out = read_xmp(tmp_path / "both.jpg", 2)
        _, _, gx, gy, gw, gh = _region_of(out)
        root = ET.fromstring(out.split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0])
        rect = next(e.get(f"{{{mpreg}}}Rectangle") for e in root.iter() if f"{{{mpreg}}}Rectangle" in e.attrib)
        rx, ry, rw, rh = (float(v) for v in rect.split(","))
        assert (rx + rw / 2, ry + rh / 2, rw, rh) == pytest.approx((gx, gy, gw, gh), abs=1e-6)  # one box, twice
        assert (gx, gy) != pytest.approx((x, y)) if turned else (gx, gy) == pytest.approx((x, y))
