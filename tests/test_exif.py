"""A photograph's EXIF block carried to its upscaled copy (yoda.exif.read_exif, save_image(exif=...), `yoda upscale`)
and TIFF outputs compressed without loss."""

import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, TiffImagePlugin

from yoda import images
from yoda.exif import JPEG_LIMIT, SUBJECT_AREA, read_exif
from yoda.images import from_uint8, save_image, to_uint8

T, IFD = ExifTags.Base, ExifTags.IFD
DATE = "2021:06:05 14:03:22"
COPYRIGHT = "© A. Phötographer"


def phone_exif(orientation=6, maker_note=b"", extra_ifd0=None) -> Image.Exif:
    """An EXIF block as a phone camera writes it: IFD 0 (UTF-8 text), the Exif block (with an Interop block marking
    Adobe RGB), GPS."""
    ex = Image.Exif()
    ex[T.Make], ex[T.Model], ex[T.DateTime], ex[T.Orientation] = "Phone Co", "P 9", DATE, orientation
    ex[T.Copyright], ex[T.Artist] = COPYRIGHT.encode(), "José".encode()  # UTF-8, as cameras write them
    ex[T.XResolution], ex[T.YResolution], ex[T.ResolutionUnit] = 300.0, 240.0, 2
    for tag, value in (extra_ifd0 or {}).items():
        ex[tag] = value
    sub = ex.get_ifd(IFD.Exif)
    sub[T.DateTimeOriginal], sub[T.FNumber], sub[T.ColorSpace] = DATE, 1.8, 0xFFFF
    sub[T.ExifImageWidth], sub[T.ExifImageHeight], sub[SUBJECT_AREA] = 12, 8, (6, 4, 2, 2)
    sub[T.FocalPlaneXResolution], sub[T.FocalPlaneYResolution] = 4000.0, 3000.0
    sub[IFD.Interop] = {1: "R03"}  # the DCF option for Adobe RGB
    if maker_note:
        sub[T.MakerNote] = maker_note
    gps = ex.get_ifd(IFD.GPSInfo)
    gps[1], gps[2] = "N", (48.0, 51.0, 24.0)
    return ex


def photo(path, ex: Image.Exif, fmt=None):
    """A 12x8 picture whose top-left pixel is red, saved with ``ex``: an Orientation of 6 stands it up as 8x12."""
    a = np.zeros((8, 12, 3), np.uint8)
    a[0, 0] = (255, 0, 0)
    Image.fromarray(a).save(path, format=fmt, exif=ex.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    return path


def blocks(data: bytes):
    """(IFD 0, the Exif block, GPS) of an EXIF block."""
    ex = Image.Exif()
    ex.load(data)
    return dict(ex), ex.get_ifd(IFD.Exif), ex.get_ifd(IFD.GPSInfo)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_read_exif_keeps_the_photograph_and_drops_the_stored_pixels(tmp_path, fmt, suffix):
    p = photo(tmp_path / f"p{suffix}", phone_exif(), fmt)
    with Image.open(p) as im:
        assert IFD.Interop in im.getexif().get_ifd(IFD.Exif)  # (what there is to drop)
    ifd0, sub, gps = blocks(read_exif(p, scale=4))
    assert (ifd0[T.Make], ifd0[T.Model], ifd0[T.DateTime]) == ("Phone Co", "P 9", DATE)
    # the bytes of text as they were (Pillow wrote "?? A. Ph??tographer"), read back as Pillow reads them
    assert (ifd0[T.Copyright], ifd0[T.Artist]) == (COPYRIGHT.encode().decode("latin-1"), "José".encode().decode(
        "latin-1"))
    # x4, printed at the same size; turned a quarter (Orientation 6) as the pixels are: x and y swap
    assert (float(ifd0[T.XResolution]), float(ifd0[T.YResolution]), ifd0[T.ResolutionUnit]) == (960.0, 1200.0, 2)
    assert (float(sub[T.FocalPlaneXResolution]), float(sub[T.FocalPlaneYResolution])) == (12000.0, 16000.0)
    assert float(blocks(read_exif(photo(tmp_path / f"q{suffix}", phone_exif(orientation=1), fmt)))[0][
        T.XResolution]) == 300.0  # upright, not upscaled: as it was
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=rf"scale must be an int >= 1, got {bad!r}"):
            read_exif(p, bad)
    assert T.Orientation not in ifd0  # read_image turns the pixels upright: the copy's need no turning
    assert sub[T.DateTimeOriginal] == DATE and float(sub[T.FNumber]) == 1.8
    assert sub[T.ColorSpace] == 1  # sRGB: read_image converts to it (0xFFFF, "uncalibrated", said Adobe RGB)
    for gone in (T.ExifImageWidth, T.ExifImageHeight, SUBJECT_AREA, IFD.Interop):
        assert gone not in sub, gone
    assert gps[1] == "N" and tuple(map(float, gps[2])) == (48.0, 51.0, 24.0)


def test_read_exif_of_a_tiff_takes_none_of_its_strips(tmp_path):
    """A TIFF's IFD 0 is its image's: its strips, samples and compression describe the input's pixels."""
    p = photo(tmp_path / "p.tif", phone_exif(orientation=1), "TIFF")
    with Image.open(p) as im:
        assert {T.StripOffsets, T.ImageWidth, T.BitsPerSample} <= set(im.getexif())  # what is there to leave
    ifd0, sub, _ = blocks(read_exif(p))
    assert set(ifd0) == {T.Make, T.Model, T.DateTime, T.Copyright, T.Artist, T.XResolution, T.YResolution,
                         T.ResolutionUnit, IFD.Exif, IFD.GPSInfo}
    assert sub[T.DateTimeOriginal] == DATE


def test_read_exif_none_unreadable_and_too_large(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "plain.png")
    assert read_exif(tmp_path / "plain.png") is None  # no EXIF: nothing to carry
    ex = Image.Exif()
    ex[T.Orientation] = 3  # only what the copy drops: nothing to carry either
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "turned.jpg", exif=ex.tobytes())
    assert read_exif(tmp_path / "turned.jpg") is None
    with pytest.raises(FileNotFoundError, match="path: no such image file: .*gone.jpg"):
        read_exif(tmp_path / "gone.jpg")
    bad = tmp_path / "bad.png"  # a damaged eXIf chunk: Pillow's warning, nothing carried
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bad, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    with pytest.warns(UserWarning, match=r"Corrupt EXIF data"):
        assert read_exif(bad) is None
    def unwritable(self, offset=8):
        raise struct.error("bad rational")

    turned = photo(tmp_path / "turned.jpg", phone_exif(), "JPEG")
    monkeypatch.setattr(Image.Exif, "tobytes", unwritable)  # a block Pillow cannot write back
    with pytest.warns(UserWarning, match=r"turned\.jpg: its EXIF metadata cannot be read \(bad rational\); its "
                                         r"upscaled copy carries none"):
        assert read_exif(turned) is None
    monkeypatch.undo()
    # maker notes that a JPEG cannot hold go (the rest stays); a block too large without them is dropped whole
    p = photo(tmp_path / "notes.png", phone_exif(maker_note=b"n" * JPEG_LIMIT), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = read_exif(p)
    assert len(data) < JPEG_LIMIT and blocks(data)[1][T.DateTimeOriginal] == DATE
    assert T.MakerNote not in blocks(data)[1]
    small = read_exif(photo(tmp_path / "small.png", phone_exif(maker_note=b"n" * 100), "PNG"))
    assert blocks(small)[1][T.MakerNote] == b"n" * 100  # kept where it fits
    p = photo(tmp_path / "huge.png", phone_exif(extra_ifd0={T.ImageDescription: "d" * JPEG_LIMIT}), "PNG")
    with pytest.warns(UserWarning, match=rf"huge\.png: its EXIF metadata \(\d+ bytes\) is larger than a JPEG holds "
                                         rf"\({JPEG_LIMIT}\); its upscaled copy carries none"):
        assert read_exif(p) is None


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_save_image_writes_the_exif_block(tmp_path, suffix):
    data = read_exif(photo(tmp_path / "in.jpg", phone_exif(), "JPEG"))
    x = torch.rand(1, 3, 8, 12) * 2 - 1
    p = save_image(x, tmp_path / f"out{suffix}", exif=data)
    with Image.open(p) as im:
        ex = im.getexif()
        assert ex[T.Make] == "Phone Co" and T.Orientation not in ex
        assert ex.get_ifd(IFD.Exif)[T.DateTimeOriginal] == DATE and ex.get_ifd(IFD.GPSInfo)[1] == "N"
        if suffix == ".tif":  # Pillow writes EXIF's blocks only into an uncompressed TIFF
            assert im.tag_v2[T.Compression] == 1
            np.testing.assert_array_equal(np.asarray(im), to_uint8(x)[0])
    save_image(x, tmp_path / "out.bmp", exif=data)  # a BMP holds none: written without it
    with pytest.raises(TypeError, match=r"exif must be bytes \(yoda.exif.read_exif's\) or None, got str"):
        save_image(x, tmp_path / "out.png", exif="Canon")


def test_tiff_outputs_are_lzw_compressed_and_lossless(tmp_path):
    """TIFF was written uncompressed: 12 MiB for a 2048² output. Now LZW after horizontal differencing (8-bit)."""
    yy, xx = np.mgrid[0:64, 0:96]
    smooth = np.stack([xx * 2, yy * 3, (xx + yy)], -1).astype(np.uint8)  # a photograph's smooth gradients
    x = from_uint8(smooth)
    p = save_image(x, tmp_path / "a.tif")
    with Image.open(p) as im:
        assert (im.tag_v2[T.Compression], im.tag_v2[T.Predictor]) == (5, 2)  # LZW, horizontal differencing
        np.testing.assert_array_equal(np.asarray(im), smooth)
    assert p.stat().st_size < smooth.nbytes / 4
    deep = np.random.default_rng(0).integers(0, 65536, (5, 7), dtype=np.uint16)  # 16-bit grey: LZW, no predictor
    p = images.save_pil(Image.fromarray(deep), tmp_path / "deep.tif")
    with Image.open(p) as im:
        assert im.tag_v2[T.Compression] == 5 and T.Predictor not in im.tag_v2
        np.testing.assert_array_equal(np.asarray(im), deep)


def test_upscale_carries_the_exif_of_its_input_upright(tmp_path, tiny_model, capsys):
    """`yoda upscale` dropped every input's EXIF block: a photo manager no longer knew when or where the upscaled
    photograph was taken. It carries it now (the output upright, without the Orientation that turned the input),
    and none with --strip-metadata."""
    from yoda.cli import main

    src = photo(tmp_path / "phone.png", phone_exif(orientation=6), "PNG")
    with Image.open(src) as im:  # the same pixels stood up by hand, without EXIF
        Image.fromarray(np.asarray(im).transpose(1, 0, 2)[:, ::-1]).save(tmp_path / "upright.png")
    outs = {}
    for name, extra in (("phone.png", []), ("upright.png", []), ("phone.png", ["--strip-metadata"])):
        out = tmp_path / f"{name[:-4]}{len(extra)}.jpg"
        code = main(["upscale", str(tmp_path / name), "-o", str(out), "--model", tiny_model, "--steps", "1", "-q",
                     *extra])
        assert code == 0, capsys.readouterr().err
        with Image.open(out) as im:
            outs[out.stem] = (np.asarray(im), im.getexif())
    pixels, ex = outs["phone0"]
    assert pixels.shape == (48, 32, 3)  # upright: 8x12 LR, x4
    np.testing.assert_array_equal(pixels, outs["upright0"][0])
    assert ex[T.Make] == "Phone Co" and T.Orientation not in ex and float(ex[T.YResolution]) == 1200.0
    assert ex.get_ifd(IFD.Exif)[T.DateTimeOriginal] == DATE and ex.get_ifd(IFD.GPSInfo)[1] == "N"
    assert not len(outs["upright0"][1]) and not len(outs["phone1"][1])  # none to carry; --strip-metadata
    np.testing.assert_array_equal(outs["phone1"][0], pixels)


def _types(block: bytes, fix: dict = None) -> dict:
    """{(block, tag): field type} of an EXIF block's IFD 0 and its Exif block (0x8769), read here by hand; with
    ``fix`` ({tag: type}), those entries of the Exif block set to those types (a camera's, where Pillow guessed)."""
    b, order = bytearray(block), "<" if block[6:8] == b"II" else ">"
    types, todo = {}, [(0, struct.unpack(order + "I", block[10:14])[0])]
    while todo:
        name, at = todo.pop()
        for i in range(struct.unpack(order + "H", b[6 + at:8 + at])[0]):
            e = 6 + at + 2 + 12 * i
            tag, typ = struct.unpack(order + "HH", b[e:e + 4])
            if name == IFD.Exif and tag in (fix or {}):
                struct.pack_into(order + "H", b, e + 2, fix[tag])
                typ = fix[tag]
            types[(name, tag)] = typ
            if name == 0 and tag == IFD.Exif:
                todo.append((IFD.Exif, struct.unpack(order + "I", b[e + 8:e + 12])[0]))
    return bytes(b) if fix else types


def test_read_exif_keeps_each_fields_type(tmp_path):
    """Pillow writes back the types it guesses: a camera's UNDEFINED UserComment and SceneType became BYTE, and a
    positive SRATIONAL ExposureBiasValue RATIONAL, which strict readers take for other fields. The input's types
    are kept where the values are stored alike; a value yoda rewrites keeps its own (the resolution, scaled)."""
    ex = phone_exif(orientation=1)
    sub = ex.get_ifd(IFD.Exif)
    sub[T.UserComment], sub[T.SceneType] = b"ASCII\0\0\0a comment", b"\x01"
    sub[T.ExposureBiasValue] = TiffImagePlugin.IFDRational(1, 3)
    camera = _types(ex.tobytes(), {T.UserComment: 7, T.SceneType: 7, T.ExposureBiasValue: 10})
    p = tmp_path / "camera.jpg"
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(p, exif=camera)
    was, got = _types(camera), _types(read_exif(p, scale=4))
    for tag, typ in ((T.UserComment, 7), (T.SceneType, 7), (T.ExposureBiasValue, 10)):
        assert was[(IFD.Exif, tag)] == got[(IFD.Exif, tag)] == typ, tag
    assert got[(0, T.XResolution)] == 5  # RATIONAL, rewritten x4
    assert got[(IFD.Exif, T.FocalPlaneXResolution)] == 5  # (a DOUBLE in the input: other bytes, not retyped)
    with Image.open(p) as im:  # and Pillow reads the values back as they were
        sub_in = im.getexif().get_ifd(IFD.Exif)
    out = blocks(read_exif(p))[1]
    assert out[T.UserComment] == sub_in[T.UserComment] and float(out[T.ExposureBiasValue]) == 1 / 3


def test_save_image_checks_the_exif_block_before_writing(tmp_path):
    """save_image(exif=) took any bytes: b"junk" went into a JPEG, PNG or WebP without a word, a truncated block was
    written (every later read of the file warned "Corrupt EXIF data"), and a TIFF failed with Pillow's SyntaxError
    naming no argument. Each is a ValueError naming exif now, before anything is written; a camera's own block as
    Pillow reads it (with b"Exif\\0\\0" or, as from a WebP, without) is written as it is."""
    x = torch.zeros(1, 3, 8, 12)
    raw = phone_exif().tobytes()
    for suffix in (".jpg", ".png", ".webp", ".tif"):
        for bad, what in ((b"junk", "not an EXIF block"), (raw[:20], "a truncated EXIF block"),
                          (b"Exif\x00\x00II*\x00\xff\xff\x00\x00", "a truncated EXIF block")):
            with pytest.raises(ValueError, match=f"exif: {what}"):
                save_image(x, tmp_path / f"bad{suffix}", exif=bad)
            assert not (tmp_path / f"bad{suffix}").exists()
        for good in (raw, raw[6:]):
            save_image(x, tmp_path / f"good{suffix}", exif=good)
            with Image.open(tmp_path / f"good{suffix}") as im:
                assert im.getexif()[T.Make] == "Phone Co", suffix


@pytest.mark.parametrize("reader", ["read_exif", "read_xmp"])
def test_readers_name_a_bad_path(tmp_path, reader):
    """read_exif / read_xmp of None or bytes failed in pathlib ("expected str, bytes or os.PathLike object"), and of a
    folder gave None with a warning ("[Errno 21] Is a directory"), where read_image raises: errors naming path now."""
    import yoda

    read = getattr(yoda, reader)
    for bad, kind in ((None, "NoneType"), (b"a.jpg", "bytes")):
        with pytest.raises(TypeError, match=f"path must be a file name \\(str or os.PathLike\\), got {kind}"):
            read(bad)
    with pytest.raises(ValueError, match=f"path: {tmp_path} is a folder, not an image file"):
        read(tmp_path)


def test_an_exif_block_larger_than_a_jpeg_holds_goes_into_other_formats(tmp_path):
    """save_image(exif=) of a block over a JPEG's 65533 bytes failed with Pillow's "EXIF data is too long", naming
    no argument (a PNG, WebP or TIFF holds it); a bare block that fitted failed once b"Exif\\0\\0" was put before it.
    A JPEG is written without it now, with a warning naming the file (as for XMP)."""
    from yoda.metadata import EXIF_JPEG_LIMIT

    x = torch.zeros(1, 3, 8, 12)
    big = phone_exif(extra_ifd0={T.ImageDescription: "d" * EXIF_JPEG_LIMIT}).tobytes()
    save_image(x, tmp_path / "big.png", exif=big)
    with Image.open(tmp_path / "big.png") as im:
        assert len(im.getexif()[T.ImageDescription]) == EXIF_JPEG_LIMIT
    with pytest.warns(UserWarning, match=rf"big\.jpg: its EXIF block \({len(big)} bytes\) is larger than a JPEG holds "
                                         rf"\({EXIF_JPEG_LIMIT}\); written without it") as said:
        save_image(x, tmp_path / "big.jpg", exif=big)
    assert said[0].filename == __file__  # said of the caller's line, not of yoda's
    with Image.open(tmp_path / "big.jpg") as im:
        assert "exif" not in im.info
