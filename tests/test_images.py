"""yoda.images: exact uint8 round trips, Pillow I/O, atomic saves, clear errors."""

import os
import re
import struct
import warnings

import numpy as np
import pytest
import torch
import PIL.features
from PIL import Image

import yoda
from yoda import images
from yoda.images import from_uint8, load_image, save_image, to_uint8


def test_known_values_and_exact_round_trip():
    x = torch.tensor([-1.0, 0.0, 1.0, -1.2, 1.2]).view(1, 1, 1, 5)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 0, 255]  # 127.5 rounds half to even -> 128
    u = np.arange(256, dtype=np.uint8).reshape(16, 16)
    u3 = np.stack([u, u[::-1], u.T], axis=-1)
    back = to_uint8(from_uint8(u3))
    assert back.shape == (1, 16, 16, 3) and np.array_equal(back[0], u3)
    f = from_uint8(u3)
    assert f.shape == (1, 3, 16, 16) and f.dtype == torch.float32
    assert f.min().item() == -1.0 and f.max().item() == 1.0
    torch.testing.assert_close(f[0, 0, 0, 1], torch.tensor(1 / 127.5 - 1.0))
    batch = torch.cat([f, from_uint8(255 - u3), from_uint8(u3[:, ::-1])])  # to_uint8 of a batch was refused
    assert torch.equal(from_uint8(to_uint8(batch)), batch)
    with pytest.raises(ValueError, match=r"or a batch \(B, H, W, C\) of them, got shape \(0, 16, 16, 3\)"):
        from_uint8(np.zeros((0, 16, 16, 3), np.uint8))


def test_channels_grey_and_alpha():
    g = np.array([[0, 255]], dtype=np.uint8)
    for arr in (g, g[:, :, None]):
        x = from_uint8(arr)
        assert x.shape == (1, 3, 1, 2) and torch.equal(x[0, 0], x[0, 2])
        assert x[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert from_uint8(rgba).eq(-1.0).all()
    chw = torch.zeros(3, 4, 5)
    assert to_uint8(chw).shape == (4, 5, 3)
    assert to_uint8(torch.zeros(1, 4, 5)).shape == (4, 5, 1)


def test_bad_conversions():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        to_uint8(np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="x must be"):
        to_uint8(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="channels"):
        to_uint8(torch.zeros(1, 2, 4, 4))
    with pytest.raises(TypeError, match="float"):
        to_uint8(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(TypeError, match="uint8"):
        from_uint8(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="arr must be"):
        from_uint8(np.zeros((2, 2, 2), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff"])
def test_save_load_lossless_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    x = from_uint8(np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8))
    p = save_image(x, tmp_path / f"img{suffix}")
    assert p.exists() and [f.name for f in tmp_path.iterdir()] == [p.name]  # no temp file left behind
    assert torch.equal(load_image(p), x)
    um = os.umask(0)
    os.umask(um)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~um)


def test_load_grey_and_palette(tmp_path):
    Image.fromarray(np.array([[0, 255], [128, 64]], dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (1, 3, 2, 2) and torch.equal(x[:, 0], x[:, 1])
    Image.new("P", (3, 2), 5).save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (1, 3, 2, 3)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "junk.png")
    save_image(torch.zeros(3, 32, 32), tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")  # said as empty, not as a format yoda does not read
    with pytest.raises(ValueError, match=r"cannot read image .*empty\.png: the file is empty \(0 bytes\)$"):
        load_image(tmp_path / "empty.png")
    # cut off in its header (or a width of 0): it was "not an image in a format yoda reads (PNG, ...)"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.jpg")
    for name, head, fmt in (("cut.png", data[:30], "PNG"), ("cut.jpg", (tmp_path / "ok.jpg").read_bytes()[:20], "JPEG"),
                            ("w0.png", data[:16] + b"\0\0\0\0" + data[20:], "PNG")):
        (tmp_path / name).write_bytes(head)
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}: a truncated or corrupt {fmt} file$"):
            load_image(tmp_path / name)
    with pytest.raises(ValueError, match=r"junk\.png: not an image in a format yoda reads"):
        load_image(tmp_path / "junk.png")
    # cut off after the header: the decoder's words with the format (a WebP said only "could not create decoder
    # object")
    for fmt, suffix in (("WebP", ".webp"), ("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif")):
        whole, cut = tmp_path / f"whole{suffix}", tmp_path / f"half{suffix}"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(ValueError, match=rf"cannot read image .*half\{suffix}: a truncated or corrupt {fmt} file "
                                             r"\(.+\)$"):
            load_image(cut)


def test_save_errors_and_atomicity(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="folder"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "nope" / "x.png")
    with pytest.raises(ValueError, match="suffix"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "x.unknownext")
    with pytest.raises(ValueError, match="batch"):
        save_image(torch.zeros(2, 3, 4, 4), tmp_path / "x.png")
    target = tmp_path / "keep.png"
    save_image(torch.ones(3, 4, 4), target)
    before = target.read_bytes()

    def failing_save(self, fp, *a, **k):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(images.Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(-torch.ones(3, 4, 4), target)
    assert target.read_bytes() == before  # the old file is intact
    assert sorted(f.name for f in tmp_path.iterdir()) == ["keep.png"]  # and no temp file is left


def test_alpha_is_composited_on_white_like_yoda_data(tmp_path):
    """One reader: yoda.load_image, the CLI and yoda.data read RGBA / 16-bit grey files identically."""
    from yoda import data

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [0, 51]]  # opaque, transparent, transparent, alpha 0.2
    want = np.array([[[200, 0, 0], [255, 255, 255]], [[255, 255, 255], [244, 204, 204]]], dtype=np.uint8)
    # 200 * 0.2 + 255 * 0.8 = 244, 0 * 0.2 + 255 * 0.8 = 204
    assert np.array_equal(to_uint8(from_uint8(rgba))[0], want)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), from_uint8(want))
    assert np.array_equal(data.read_image(str(tmp_path / "a.png")), want)
    assert data.read_image is images.read_image and data.DataError is images.DataError
    # composites that fall between levels are rounded, not cut (the values above all land on whole numbers):
    # 200 * 1/255 + 255 * 254/255 = 254.78 -> 255, 0 -> 254.0; alpha 128: 227.39 -> 227, 127.0
    part = np.zeros((1, 2, 4), dtype=np.uint8)
    part[..., 0], part[..., 3] = 200, [1, 128]
    Image.fromarray(part, mode="RGBA").save(tmp_path / "p.png")
    assert data.read_image(str(tmp_path / "p.png")).tolist() == [[[255, 254, 254], [227, 127, 127]]]
    # a file whose every pixel is transparent is a blank white image: said (a training set took it without a word)
    rgba[..., 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    with pytest.warns(UserWarning, match=r"clear\.png: every pixel is fully transparent \(alpha 0\)"):
        assert (data.read_image(str(tmp_path / "clear.png")) == 255).all()
    # a partly transparent one says so: its alpha is gone (a logo's transparency was lost without a word)
    with pytest.warns(UserWarning, match=r"a\.png: 75% of its pixels are transparent or partly so: composited on "
                                         r"white \(the image read has no alpha\)"):
        data.read_image(str(tmp_path / "a.png"))
    rgba[..., 3] = 255  # an RGBA file that is all opaque says nothing
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "opaque.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(data.read_image(str(tmp_path / "opaque.png")), rgba[..., :3])


def test_from_uint8_says_what_alpha_it_composites_at_the_callers_line():
    """from_uint8 of a PIL RGBA image warned "arr: ..." at a line inside yoda (a stacklevel fit for load_image), and of
    the same pixels as a numpy array not at all: both now warn as load_image does, at the caller's line, a batch
    once; opaque pixels say nothing."""
    a = np.full((2, 2, 4), 200, np.uint8)
    a[0, :, 3] = 0
    for arr in (a, Image.fromarray(a, "RGBA"), np.stack([a, a, a])):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            x = from_uint8(arr)
        assert [(str(w.message), w.filename) for w in seen] == [
            ("arr: 100% of its pixels are transparent or partly so: composited on white (the image read has no alpha)",
             __file__)]
        assert x.shape[0] == (3 if isinstance(arr, np.ndarray) and arr.ndim == 4 else 1)
    a[..., 3] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(from_uint8(a), from_uint8(Image.fromarray(a, "RGBA")))


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_a_transparent_colour_key_is_white_too(tmp_path, mode):
    """PNG's tRNS colour key (what optipng and pngcrush make of an RGBA image with binary alpha) in RGB, grey and
    16-bit grey files: the keyed pixels are transparent, so white, as alpha is."""
    if mode == "RGB":
        a, key = np.zeros((2, 3, 3), np.uint8), (0, 0, 0)
        a[0, 0] = [10, 20, 30]
    else:
        a, key = np.zeros((2, 3), np.uint16 if mode == "I;16" else np.uint8), 0
        a[0, 0] = 257 * 77 if mode == "I;16" else 77
    Image.fromarray(a).save(tmp_path / "k.png", transparency=key)
    with Image.open(tmp_path / "k.png") as im:
        assert im.mode == mode and im.info["transparency"] == key  # the file really has a colour key
    got = to_uint8(load_image(tmp_path / "k.png"))[0]
    assert got[0, 0].tolist() == ([10, 20, 30] if mode == "RGB" else [77] * 3)
    assert (got.reshape(-1, 3)[1:] == 255).all()


def _keyed_png(path, levels: np.ndarray, depth: int, colour: int, trns: bytes) -> None:
    """A PNG of ``levels`` (rows of samples) with a colour key (Pillow writes no 2-/4-bit grey or 16-bit RGB)."""
    rows = b""
    for r in levels:
        if depth < 8:
            bits = "".join(format(int(v), f"0{depth}b") for v in r)
            rows += b"\0" + int(bits + "0" * (-len(bits) % 8), 2).to_bytes(-(-len(bits) // 8), "big")
        else:
            rows += b"\0" + r.astype(">u2" if depth == 16 else "u1").tobytes()
    _png(path, levels.shape[1], levels.shape[0], depth, colour, rows, trns)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_a_low_bit_grey_colour_key_is_white_too(tmp_path, depth):
    """A 1-, 2- or 4-bit grey PNG with a colour key kept its keyed pixels: Pillow scales 2-/4-bit levels to 8 bits
    (level 1 of 2 bits is 85) but not the key, and a 1-bit image (mode "1") was not looked at for one."""
    top, key = (1 << depth) - 1, 0 if depth == 1 else 1  # (1 bit: the black level, white would read white anyway)
    levels = [0, 1, top, 1, 0]
    _keyed_png(tmp_path / "k.png", np.array([levels]), depth, 0, key.to_bytes(2, "big"))
    want = [255 if v == key else v * (255 // top) for v in levels]  # the levels at 8 bits, the keyed ones white
    assert images.read_image(tmp_path / "k.png")[0, :, 0].tolist() == want


def test_a_16_bit_rgb_colour_key_is_said_not_applied(tmp_path):
    """Pillow reads 16-bit RGB as 8 bits, where the key (1000, 2000, 3000) would also match (1000, 2000, 3001): its
    pixels are taken as opaque, with a warning (they stayed near black without a word)."""
    import struct

    levels = np.array([[[1000, 2000, 3000], [1000, 2000, 3001], [65535, 0, 0]]])
    _keyed_png(tmp_path / "k16.png", levels, 16, 2, struct.pack(">HHH", 1000, 2000, 3000))
    with pytest.warns(UserWarning, match=r"k16\.png: its 16-bit colour key \(PNG tRNS \(1000, 2000, 3000\)\) is not "
                                         r"applied: .*taken as opaque"):
        got = images.read_image(tmp_path / "k16.png")
    assert got[0].tolist() == [[3, 7, 11], [3, 7, 11], [255, 0, 0]]


@pytest.mark.parametrize("suffix", [".gif", ".png", ".tif"])
def test_the_first_frame_of_an_animation_or_pages_is_read_with_a_warning(tmp_path, suffix):
    frames = [np.full((6, 5, 3), v, np.uint8) for v in (40, 200, 90)]
    frames[0][0, 0] = [250, 10, 10]
    ims = [Image.fromarray(f).convert("P") if suffix == ".gif" else Image.fromarray(f) for f in frames]
    ims[0].save(tmp_path / f"anim{suffix}", save_all=True, append_images=ims[1:])
    with pytest.warns(UserWarning, match=rf"anim\{suffix} holds 3 frames; only the first is read"):
        got = to_uint8(load_image(tmp_path / f"anim{suffix}"))[0]
    want = np.asarray(ims[0].convert("RGB"))
    assert np.array_equal(got, want)
    Image.fromarray(frames[1]).save(tmp_path / f"one{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one frame: no warning
        load_image(tmp_path / f"one{suffix}")


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".avif"])
def test_an_animation_or_pages_cut_short_is_a_data_error(tmp_path, suffix):
    """Counting frames reads each frame's header: a GIF or TIFF cut off after its first frame raised IndexError,
    struct.error or TypeError ("Missing dimensions"), which stopped a folder's run and `yoda eval` as "a bug in
    yoda"; a damaged AVIF raised RuntimeError ("Failed to decode image"). Every cut or flipped byte reads or is a
    DataError naming the file."""
    # (features.check warns of an unknown feature on Pillow 11.1, which has no AVIF module: 11.2 brought it)
    if suffix == ".avif" and not ("avif" in PIL.features.modules and PIL.features.check_module("avif")):
        pytest.skip("this Pillow has no AVIF")
    g = np.random.default_rng(0)
    ims = [Image.fromarray(g.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(3)]
    if suffix == ".gif":
        ims = [im.convert("P") for im in ims]
    whole = tmp_path / f"whole{suffix}"
    ims[0].save(whole, save_all=True, append_images=ims[1:])
    data, cut, kinds = whole.read_bytes(), tmp_path / f"cut{suffix}", set()
    damaged = [data[:n] for n in range(len(data) // 3, len(data), 7)]
    damaged += [data[:n] + bytes([data[n] ^ 0xFF]) + data[n + 1:] for n in range(16, min(len(data), 400), 16)]
    for bad in damaged:
        cut.write_bytes(bad)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images.read_image(cut)
            kinds.add("read")
        except images.DataError as e:
            assert f"cut{suffix}" in str(e), str(e)
            kinds.add("corrupt" if "truncated or corrupt" in str(e) else "other")
    assert ("corrupt" if suffix != ".avif" else "other") in kinds  # (the case itself: GIF / TIFF cuts fail in the
    # frame count, AVIF's in the open)


def test_an_unreadable_file_is_named_once(tmp_path, monkeypatch):
    """A file without read permission said "cannot read image X: [Errno 13] Permission denied: 'X'"."""
    p = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(p)
    real = open

    def denied(f, *a, **k):
        if str(f) == str(p):
            raise PermissionError(13, "Permission denied", str(f))
        return real(f, *a, **k)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(images.DataError) as e:
        images.read_image(p)
    assert str(e.value) == f"path: cannot read image {p}: Permission denied"


def test_16_bit_grey_is_scaled_to_8_bits(tmp_path):
    g16 = np.array([[0, 65535], [257 * 128, 257 * 7]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    x = load_image(tmp_path / "g16.png")
    assert to_uint8(x)[0, :, :, 0].tolist() == [[0, 255], [128, 7]]  # u16 / 65535 * 255, rounded
    assert torch.equal(x[:, 0], x[:, 2])


def test_atomic_write_permissions_and_cleanup(tmp_path):
    from yoda._io import atomic_write

    um = os.umask(0)
    os.umask(um)
    p = atomic_write(tmp_path / "t.txt", lambda tmp: open(tmp, "w").write("new"))
    assert p.read_text() == "new" and (p.stat().st_mode & 0o777) == (0o666 & ~um)

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(p, fail)
    assert p.read_text() == "new" and [f.name for f in tmp_path.iterdir()] == ["t.txt"]
    with pytest.raises(FileNotFoundError, match=r"cannot write .*missing/x\.txt: No such file or directory"):
        atomic_write(tmp_path / "missing" / "x.txt", lambda tmp: None)


def test_atomic_write_stopped_as_its_temporary_file_is_made_leaves_none(tmp_path, monkeypatch):
    """A Ctrl-C landing just after the temporary file was created (while its mode was read) left an empty
    .NAME.RANDOM.tmp beside the output (a review, by injection)."""
    import yoda._io
    from yoda._io import atomic_write_text

    real = os.fstat

    def stop(fd):
        monkeypatch.setattr(yoda._io.os, "fstat", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(yoda._io.os, "fstat", stop)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "out.txt", "text")
    assert list(tmp_path.iterdir()) == []


def test_image_paths_that_are_no_file_names_are_named(tmp_path):
    """save_image to a folder said "cannot write images with the suffix ''"; load_image(None) gave pathlib's
    "expected str, bytes or os.PathLike object"."""
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"^path .*out is a folder; give an image file name"):
        save_image(torch.zeros(1, 3, 2, 2), tmp_path / "out")
    with pytest.raises(TypeError, match=r"^path must be a file name \(str or os\.PathLike\), got NoneType"):
        load_image(None)
    with pytest.raises(ValueError, match=r"^path: .*out is a folder, not an image file$"):
        load_image(tmp_path / "out")  # `yoda attention DIR` said "path is not a file: DIR"


@pytest.mark.parametrize("suffix, side", [(".webp", 16383), (".jpg", 65500)])
def test_save_image_refuses_what_the_format_cannot_hold(tmp_path, suffix, side):
    """WebP holds at most 16383 pixels a side, JPEG (libjpeg) 65500: Pillow's "encoding error 5" / "broken data
    stream" became a ValueError naming the path, and nothing is written. The largest that fits is written."""
    from yoda.images import check_fits

    bad = tmp_path / f"x{suffix}"
    with pytest.raises(ValueError, match=rf"path {re.escape(str(bad))}: a {side + 1}x1 image does not fit"):
        save_image(torch.zeros(1, 3, 1, side + 1), bad)
    assert list(tmp_path.iterdir()) == []
    save_image(torch.zeros(1, 3, 1, side), bad)  # really written: the limit is the encoder's
    assert Image.open(bad).size == (side, 1)
    check_fits(tmp_path / "x.png", side + 1, side + 1)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads which file a descriptor is from /proc")
def test_atomic_write_keeps_an_existing_files_mode_and_syncs_before_the_rename(tmp_path, monkeypatch):
    """Overwriting a private (0600) file leaves it private, through a link too; the new data is fsynced before
    the rename and the folder after it (a power loss leaves the old file or the new one)."""
    import yoda._io as io

    p = tmp_path / "ckpt.bin"
    p.write_text("old")
    p.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(p)
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                     fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append(("replace", str(b))), replace(a, b))[1])
    io.atomic_write(link, lambda tmp: open(tmp, "w").write("new"))
    assert p.read_text() == "new" and (p.stat().st_mode & 0o777) == 0o600 and link.is_symlink()
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(".ckpt.bin.") and events[1][1] == str(p)
    assert events[2][1] == str(tmp_path)


def test_atomic_write_tries_again_where_a_held_file_refuses_its_replacement(tmp_path, monkeypatch):
    """Windows refuses to replace a file another process holds open (a viewer, a virus scan of the new file): the
    write failed with PermissionError. Where _REPLACE_TRIES > 1 (Windows) it is tried again after a wait; a file
    still held after the last try is the error, and the temporary file is gone."""
    import yoda._io as io

    p, replace, waits, refusals = tmp_path / "sr.png", os.replace, [], [2]

    def held(a, b):
        if refusals[0]:
            refusals[0] -= 1
            raise PermissionError(13, "The process cannot access the file", str(b))
        replace(a, b)

    monkeypatch.setattr(io.os, "replace", held)
    monkeypatch.setattr(io.time, "sleep", waits.append)
    monkeypatch.setattr(io, "_REPLACE_TRIES", 4)
    io.atomic_write(p, lambda tmp: open(tmp, "w").write("new"))
    assert p.read_text() == "new" and waits == [0.05, 0.1]
    refusals[0] = 9
    with pytest.raises(PermissionError):
        io.atomic_write(p, lambda tmp: open(tmp, "w").write("newer"))
    assert p.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["sr.png"]
    monkeypatch.setattr(io, "_REPLACE_TRIES", 1)  # elsewhere (POSIX replaces a held file): no wait at all
    refusals[0], waits[:] = 1, []
    with pytest.raises(PermissionError):
        io.atomic_write(p, lambda tmp: open(tmp, "w").write("newer"))
    assert waits == []


@pytest.mark.parametrize("name", ["a" * 251 + ".png", "漢" * 83 + ".png"], ids=["ascii", "utf8"])
def test_atomic_write_takes_the_longest_names(tmp_path, name):
    """A name the file system takes (255 bytes) is written: the temporary name is cut short, not refused."""
    from yoda._io import atomic_write, check_writable

    assert len(os.fsencode(name)) in (253, 255)
    assert check_writable(tmp_path / name) == tmp_path / name
    atomic_write(tmp_path / name, lambda tmp: open(tmp, "w").write("x"))
    assert [f.name for f in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == "x"


def test_atomic_write_writes_through_a_symlink(tmp_path):
    """A link is written through, as open() would: the target gets the new content and the link stays a link
    (os.replace on the link itself would swap it for a plain file and leave the target stale)."""
    from yoda._io import atomic_write, check_writable

    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "out.png"
    target.write_text("old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert check_writable(link) == link
    assert atomic_write(link, lambda tmp: open(tmp, "w").write("new")) == link
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["link.png", "real"]
    assert [f.name for f in (tmp_path / "real").iterdir()] == ["out.png"]  # the temporary file went there
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "real" / "new.png")
    atomic_write(dangling, lambda tmp: open(tmp, "w").write("made"))
    assert dangling.is_symlink() and (tmp_path / "real" / "new.png").read_text() == "made"
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    with pytest.raises(OSError, match="too many levels of symbolic links"):  # as open() says, not replaced
        atomic_write(tmp_path / "loop_a", lambda tmp: open(tmp, "w").write("x"))
    assert (tmp_path / "loop_a").is_symlink() and (tmp_path / "loop_b").is_symlink()
    chain = tmp_path / "chain.png"  # a link to a link: followed to the end, both links stay
    chain.symlink_to("link.png")
    atomic_write(chain, lambda tmp: open(tmp, "w").write("chained"))
    assert chain.is_symlink() and link.is_symlink() and target.read_text() == "chained"
    # "L/../x" where L is a link to a folder: ".." is taken after L is followed, as open() takes it (not as text)
    (tmp_path / "real" / "sub").mkdir()
    (tmp_path / "L").symlink_to(tmp_path / "real" / "sub")
    atomic_write(str(tmp_path / "L" / ".." / "out.png"), lambda tmp: open(tmp, "w").write("dotdot"))
    assert target.read_text() == "dotdot" and not (tmp_path / "out.png").exists()


def test_folder_lock_is_exclusive_and_released(tmp_path):
    """folder_lock: one holder at a time (flock on the folder: also between two opens in one process, as between
    processes), released at the end of the block, also on an error; no file is left in the folder."""
    from yoda._io import FolderInUse, folder_lock

    with folder_lock(tmp_path, "--out"):
        with pytest.raises(FolderInUse, match="--out .* is in use by another yoda process"):
            with folder_lock(tmp_path, "--out"):
                pass
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path, "--out"):
            raise RuntimeError("boom")
    with folder_lock(tmp_path, "--out"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """SIGTERM (timeout, a scheduler) ended `yoda upscale` / eval / figures at once, leaving a hidden temporary
    file of the image being written. Within sigterm_exits (every command runs in it) it is a SystemExit(143):
    the writer's cleanup runs; the handler before it is back afterwards."""
    import signal

    from yoda._io import atomic_write
    from yoda.errors import sigterm_exits

    before = signal.getsignal(signal.SIGTERM)

    def write(tmp):
        open(tmp, "w").write("half")
        signal.raise_signal(signal.SIGTERM)

    with pytest.raises(SystemExit) as e:
        with sigterm_exits():
            atomic_write(tmp_path / "out.png", write)
    assert e.value.code == 143 and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to own a link as another user")
def test_atomic_write_does_not_follow_another_users_link_in_a_shared_folder(tmp_path):
    """A link planted at an output name in a world-writable sticky folder (/tmp) by another user was followed:
    yoda resolved it itself and renamed over its target, where the kernel's fs.protected_symlinks would have
    stopped open(). Such a link is now refused, as open() refuses it; the user's own link there still works."""
    from yoda._io import atomic_write

    shared, victim = tmp_path / "shared", tmp_path / "victim"
    shared.mkdir()
    victim.mkdir()
    os.chmod(shared, 0o1777)
    secret = victim / "secret.txt"
    secret.write_text("keep")
    planted = shared / "out_x4.png"
    planted.symlink_to(secret)
    os.lchown(planted, 12345, 12345)
    with pytest.raises(PermissionError, match=r"cannot write through .*out_x4.png: a symbolic link of another user "
                                              r"\(uid 12345\) in the shared folder"):
        atomic_write(planted, lambda tmp: open(tmp, "w").write("png"))
    assert secret.read_text() == "keep" and planted.is_symlink()
    assert sorted(f.name for f in shared.iterdir()) == ["out_x4.png"]  # no temporary file left
    own = shared / "mine.png"
    own.symlink_to(victim / "mine.png")
    atomic_write(own, lambda tmp: open(tmp, "w").write("png"))
    assert (victim / "mine.png").read_text() == "png"
    os.chmod(shared, 0o777)  # not sticky: the kernel follows any link there, and so does yoda
    atomic_write(planted, lambda tmp: open(tmp, "w").write("png"))
    assert secret.read_text() == "png"


# ----------------------------------------------------------------------------------------------------------
# Hostile files: bombs, float / high-bit-depth samples, EXIF orientation, output paths
# ----------------------------------------------------------------------------------------------------------
def _png(path, width, height, bit_depth, colour, rows, trns: bytes = b""):
    """A PNG written by hand: IHDR says width x height, IDAT holds only ``rows`` (bytes, filter byte first); a tRNS
    chunk of ``trns`` (a colour key) if given."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"tRNS", trns) if trns else b"")
                     + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


def bomb_png(path, side=20000):
    """A few-hundred-byte grey PNG declaring side x side pixels (its first rows are zeros)."""
    return _png(path, side, side, 8, 0, b"\x00" * (side + 1) * 16)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    p = bomb_png(tmp_path / "bomb.png")
    assert p.stat().st_size < 2000
    with pytest.raises(images.DataError, match=r"bomb\.png is (20000x20000 = )?400000000 pixels, more than the limit "
                                               r"of 67108864") as e:
        load_image(p)
    assert "max-pixels" in str(e.value) and "YODA_MAX_PIXELS" in str(e.value)
    # below Pillow's own refusal (2 * 89 MP) our header check answers; decoding would fail as truncated instead
    with pytest.raises(images.DataError, match=r"10000x10000 = 100000000 pixels, more than the limit of 67108864"):
        with pytest.warns(Image.DecompressionBombWarning):  # Pillow's warning (the CLI silences it)
            load_image(bomb_png(tmp_path / "b10k.png", 10000))
    # the limit: a 30x40 image against limits just below / at its 1200 pixels, per call or module-wide
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(images.DataError, match="1200 pixels, more than the limit of 1199"):
        images.read_image(tmp_path / "small.png", max_pixels=1199)
    assert images.read_image(tmp_path / "small.png", max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ValueError, match="max_pixels"):
        images.read_image(tmp_path / "small.png", max_pixels=-1)


def test_only_raster_formats_are_decoded_whatever_the_name(tmp_path, monkeypatch):
    """Pillow picks a decoder by content: an EPS file named .png reached the EPS plugin (Ghostscript, where it is
    installed, runs the file's PostScript), and an ICO file decoded the PNG inside it at open, before the pixel
    limit was checked. Only READ_FORMATS' decoders are tried now; a PNG, a JPEG and a BMP still read."""
    from PIL import EpsImagePlugin, IcoImagePlugin

    opened = []
    for plugin, cls in ((EpsImagePlugin, "EpsImageFile"), (IcoImagePlugin, "IcoImageFile")):
        real = getattr(plugin, cls)._open
        monkeypatch.setattr(getattr(plugin, cls), "_open", lambda self, real=real: (opened.append(self.format),
                                                                                     real(self))[1])
    eps = tmp_path / "eps_as.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n")
    ico = tmp_path / "ico_as.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ico, format="ICO")
    for p in (eps, ico):
        with pytest.raises(images.DataError, match=rf"cannot read image .*{p.name}: not an image in a format yoda "
                                                   r"reads \(PNG, JPEG, "):
            images.read_image(p)
    assert opened == []  # neither plugin was asked to open the file
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for fmt, name in (("PNG", "a.png"), ("BMP", "a.bmp"), ("TIFF", "a.tif")):
        Image.fromarray(rgb).save(tmp_path / name, format=fmt)
        assert np.array_equal(images.read_image(tmp_path / name), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert images.read_image(tmp_path / "a.jpg").shape == (6, 5, 3)


def test_pixel_limit_module_wide_and_pillow_limit(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setitem(vars(images), "MAX_PIXELS", 1000)  # removed again after: YODA_MAX_PIXELS then applies
    with pytest.raises(images.DataError, match="limit of 1000"):
        load_image(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=0).shape == (1, 3, 30, 40)  # 0: no limit of ours
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow refuses above twice its limit: 1000
    with pytest.raises(images.DataError, match="small.png is refused by Pillow's own limit"):
        load_image(tmp_path / "small.png", max_pixels=0)


def test_env_var_sets_the_limit(monkeypatch):
    monkeypatch.setenv("YODA_MAX_PIXELS", "1234")
    assert images._env_max_pixels() == 1234
    monkeypatch.setenv("YODA_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="YODA_MAX_PIXELS"):
        images._env_max_pixels()
    monkeypatch.delenv("YODA_MAX_PIXELS")
    assert images._env_max_pixels() == images.DEFAULT_MAX_PIXELS == 8192 * 8192


@pytest.mark.parametrize("value", ["abc", "-5"])
def test_bad_env_limit_never_breaks_import_and_is_one_clear_error_where_used(tmp_path, value):
    """A bad YODA_MAX_PIXELS used to raise a raw ValueError from ``import yoda.images`` (so ``import yoda`` and
    the CLI died with a traceback); the limit is now read where it is used, with one message naming it."""
    import subprocess
    import sys

    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    code = ("import yoda.images as i, yoda.errors as e\n"
            "try:\n    i.read_image(r'%s')\nexcept e.UserError as x:\n    print('UserError', x)\n"
            "print(i.read_image(r'%s', max_pixels=0).shape)" % (tmp_path / "small.png", tmp_path / "small.png"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "YODA_MAX_PIXELS": value})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"UserError YODA_MAX_PIXELS must be a non-negative integer, got '{value}'",
                                     "(30, 40, 3)"]  # an explicit limit does not read the variable at all


def test_env_limit_is_read_where_the_limit_is_used(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setenv("YODA_MAX_PIXELS", "1199")
    assert images.MAX_PIXELS == 1199
    with pytest.raises(images.DataError, match="1200 pixels, more than the limit of 1199"):
        load_image(tmp_path / "small.png")
    monkeypatch.setenv("YODA_MAX_PIXELS", "-5")
    with pytest.raises(ValueError, match=r"^YODA_MAX_PIXELS must be a non-negative integer, got '-5'$") as e:
        images.MAX_PIXELS  # what the CLI reads for its check of the upscaled size
    assert isinstance(e.value, yoda.UserError)  # the CLI prints a UserError in one line
    with pytest.raises(ValueError, match=r"^YODA_MAX_PIXELS must be a non-negative integer, got '-5'$"):
        load_image(tmp_path / "small.png")
    monkeypatch.setitem(vars(images), "MAX_PIXELS", 0)  # an assigned limit holds, whatever the variable says
    assert load_image(tmp_path / "small.png").shape == (1, 3, 30, 40)


def test_float_tiff_maps_0_1_to_the_8_bit_range(tmp_path):
    f = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"  # really a float file
    x = load_image(tmp_path / "f.tif")
    assert to_uint8(x)[0, :, :, 0].tolist() == [[0, 128], [255, 64]]  # round(f * 255), half to even
    Image.fromarray(f * 2).save(tmp_path / "f2.tif")
    with pytest.raises(images.DataError, match=r"f2\.tif: float image values must be in \[0, 1\] .*got \[0, 2\]"):
        load_image(tmp_path / "f2.tif")
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(images.DataError, match="NaN"):
        load_image(tmp_path / "nan.tif")


def _rgb_tiff(path, a):
    """A minimal uncompressed little-endian RGB TIFF (one strip) of the (H, W, 3) array ``a``, uint8 or float32
    (SampleFormat 3, as tifffile and cv2 write an RGB float32 image), without tifffile."""
    h, w, _ = a.shape
    bits, fmt = (32, 3) if a.dtype == np.float32 else (8, 1)
    data = np.ascontiguousarray(a).astype("<" + a.dtype.str[1:]).tobytes()
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 0), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, 0),
            (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1), (339, 3, 3, 0)]
    extra = 8 + 2 + 12 * len(tags) + 4  # BitsPerSample and SampleFormat (3 shorts each), then the pixels
    offsets = {258: extra, 339: extra + 6, 273: extra + 12}
    ifd = b"".join(struct.pack("<HHII" if t in offsets or typ == 4 else "<HHIHxx", t, typ, n, offsets.get(t, v))
                   for t, typ, n, v in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<IH", 8, len(tags)) + ifd + struct.pack("<I", 0)
                     + struct.pack("<6H", bits, bits, bits, fmt, fmt, fmt) + data)
    return path


def test_rgb_float_tiff_is_refused_as_an_undecodable_tiff_not_as_no_image(tmp_path):
    """Pillow cannot decode multi-channel float TIFFs; the error said "cannot identify image file", as if the file
    were no image. The same writer's uint8 file decodes to its pixels, so the file itself is a valid TIFF."""
    u = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 14).astype(np.uint8)
    assert np.array_equal(images.read_image(_rgb_tiff(tmp_path / "u8.tif", u)), u)
    with pytest.raises(images.DataError, match=r"f32\.tif is a TIFF that Pillow cannot decode \(of float TIFFs only "
                                               r"single-channel float32 is read: not float16, float64 or several "
                                               r"float channels\); convert it to 8/16-bit PNG or TIFF") as e:
        load_image(_rgb_tiff(tmp_path / "f32.tif", u.astype(np.float32) / 255))
    assert "cannot read image" not in str(e.value)
    (tmp_path / "junk.tif").write_bytes(b"not a TIFF at all")  # a file that is no TIFF keeps the plain message
    with pytest.raises(images.DataError, match=r"cannot read image .*junk\.tif"):
        load_image(tmp_path / "junk.tif")


def _psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("suffix, fmt", [(".jpg", "JPEG"), (".webp", "WEBP")])
def test_lossy_outputs_are_written_at_quality_95(tmp_path, suffix, fmt):
    """JPEG and WebP were written at Pillow's default quality 75, several dB below quality 95 against the
    PNG-exact pixels (this smooth image: JPEG 33.3 vs 38.4 dB, WebP 32.8 vs 37.6)."""
    import io

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, size=(64, 64),
                                        mode="bicubic", align_corners=False).clamp(-1, 1)
    exact = to_uint8(x[0])

    def at(quality):  # JPEG as yoda writes it, without chroma subsampling
        buf = io.BytesIO()
        Image.fromarray(exact).save(buf, format=fmt, quality=quality, **{"subsampling": 0} if fmt == "JPEG" else {})
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB")), getattr(im, "quantization", None)

    with Image.open(save_image(x, tmp_path / f"o{suffix}")) as im:
        got, tables = np.asarray(im.convert("RGB")), getattr(im, "quantization", None)
    (q75, _), (q95, tables95) = at(75), at(95)
    assert np.array_equal(got, q95) and tables == tables95  # exactly Pillow's quality 95
    assert _psnr(got, exact) > _psnr(q75, exact) + 3.0 and _psnr(got, exact) > 37.0
    assert images.LOSSY_QUALITY == 95


def test_16_bit_rgb_and_32_bit_integer(tmp_path):
    rgb16 = np.array([[[0, 32768, 65535], [257 * 200, 100, 65535]]], dtype=">u2")
    _png(tmp_path / "rgb16.png", 2, 1, 16, 2, b"\x00" + rgb16.tobytes())
    assert images.read_image(tmp_path / "rgb16.png").tolist() == [[[0, 128, 255], [200, 0, 255]]]  # u >> 8
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(tmp_path / "i32ok.tif")
    assert images.read_image(tmp_path / "i32ok.tif")[:, :, 0].tolist() == [[0, 255]]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(images.DataError, match=r"i32\.tif: integer samples in \[0, 70000\]"):
        load_image(tmp_path / "i32.tif")
    # 8-bit values in 32-bit integers are read as 16-bit, as the type says: a nearly black image, with a warning
    Image.fromarray(np.array([[0, 255]], dtype=np.int32)).save(tmp_path / "i32_8bit.tif")
    with pytest.warns(UserWarning, match=r"i32_8bit\.tif: integer samples in \[0, 255\] read as 16-bit "
                                         r"\(0\.\.65535\): the image is nearly black \(its brightest sample is "
                                         r"level 1 of 255\)"):
        assert images.read_image(tmp_path / "i32_8bit.tif")[:, :, 0].tolist() == [[0, 1]]
    # 12-bit values in a 16-bit file (a camera's, a microscope's) too: they gave levels 0..16, without a word
    Image.fromarray(np.array([[0, 4095]], dtype=np.uint16)).save(tmp_path / "twelve.png")
    with pytest.warns(UserWarning, match=r"twelve\.png: .* level 16 of 255\); .* 10- to 12-bit ones"):
        assert images.read_image(tmp_path / "twelve.png")[:, :, 0].tolist() == [[0, 16]]
    for top in (32 * 257, 65535):  # a dark 16-bit image whose brightest sample reaches level 32 says nothing
        Image.fromarray(np.array([[0, top]], dtype=np.uint16)).save(tmp_path / "ok16.png")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert images.read_image(tmp_path / "ok16.png")[0, 1, 0] == round(top / 257)


def test_exif_orientation_is_applied(tmp_path):
    a = (np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display" (a phone held upright)
    Image.fromarray(a).save(tmp_path / "phone.png", exif=exif)
    assert np.array_equal(images.read_image(tmp_path / "phone.png"), np.rot90(a, -1))
    Image.fromarray(a).save(tmp_path / "plain.png")
    assert np.array_equal(images.read_image(tmp_path / "plain.png"), a)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "CMYK", "RGB"])
@pytest.mark.parametrize("orientation, turn", [(6, -1), (8, 1), (5, None), (3, 2)])
def test_a_tiffs_orientation_turns_its_pixels(tmp_path, mode, orientation, turn):
    """An uncompressed grey, 16-bit, RGBA or CMYK TIFF with a quarter-turn orientation (5-8) came out scrambled and
    not turned (Pillow 13 turns a TIFF it memory-mapped wrongly: it was opened by name); `yoda upscale` wrote 128x96
    for a 24x32 portrait. RGB TIFFs and half turns were right."""
    g = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80 + 5  # every pixel its own value: no symmetry hides
    a = {"L": (g // 256).astype(np.uint8), "I;16": g}.get(mode, np.stack([g % 251, g // 97, g % 13 * 19, g % 7 + 248],
                                                                         -1).astype(np.uint8))
    im = Image.fromarray(a[..., :3] if mode == "RGB" else a)  # uint8 (H, W): L; uint16: I;16; (H, W, 4): RGBA
    im = Image.frombytes("CMYK", im.size, im.tobytes()) if mode == "CMYK" else im
    assert im.mode == mode
    im.save(tmp_path / "o.tif", tiffinfo={274: orientation})
    im.save(tmp_path / "plain.tif")
    got, plain = images.read_image(tmp_path / "o.tif"), images.read_image(tmp_path / "plain.tif")
    want = np.rot90(plain, turn) if turn is not None else np.transpose(plain, (1, 0, 2))  # 5: transposed
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("suffix", images.OUTPUT_SUFFIXES)
def test_every_output_format_round_trips_its_size(tmp_path, suffix):
    x = torch.linspace(-1, 1, 3 * 8 * 6).reshape(3, 8, 6)
    p = save_image(x, images.check_output(tmp_path / f"o{suffix}"))
    with Image.open(p) as im:
        assert im.size == (6, 8) and im.format == images.image_format(p)
    if suffix in (".png", ".tif", ".tiff", ".bmp"):  # lossless
        assert torch.equal(load_image(p), from_uint8(to_uint8(x)))


def test_save_image_writes_only_yodas_formats(tmp_path):
    """The library writes what the CLI writes: a GIF (256 colours) or an unknown suffix is refused, nothing made."""
    for name in ("o.gif", "o.ico", "o", "o.xyz"):
        with pytest.raises(ValueError, match=r"cannot write images with the suffix '[^']*' \(.*" + name if "." in name
                           else r"o: an image file name needs a suffix"):
            save_image(torch.zeros(3, 4, 4), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_check_output_names_the_users_path(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"out\.gif: cannot write images with the suffix '\.gif'"):
        images.check_output(tmp_path / "out.gif")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(IsADirectoryError, match=r"dir\.png is a folder"):
        images.check_output(tmp_path / "dir.png")
    (tmp_path / "plain_dir").mkdir()  # no suffix: it said "cannot write images with the suffix ''"
    with pytest.raises(IsADirectoryError, match=r"plain_dir is a folder; give an image file name"):
        images.check_output(tmp_path / "plain_dir")
    # a name without a suffix, or a folder (with its slash) that does not exist: "the suffix ''" said neither
    with pytest.raises(ValueError, match=r"^out .*/new: an image file name needs a suffix \(\.png, .*\); "
                                         r"e\.g\. .*/new\.png$"):
        images.check_output(tmp_path / "new", "out")
    with pytest.raises(ValueError, match=r"^-o .*/figs/: an image file name needs a suffix .*; a folder that does not "
                                         r"exist is not made here$"):
        images.check_output(f"{tmp_path}/figs/", "-o")
    with pytest.raises(FileNotFoundError, match="missing"):
        images.check_output(tmp_path / "missing" / "o.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is not a folder"):
        images.check_output(tmp_path / "file" / "o.png")
    from yoda import _io

    def read_only(folder, name):
        raise PermissionError(13, "Permission denied", os.path.join(folder, f".{name}.123.tmp"))

    monkeypatch.setattr(_io, "_create_temp", read_only)
    with pytest.raises(PermissionError, match=r"o\.png: cannot write in .*Permission denied") as e:
        images.check_output(tmp_path / "o.png")
    assert ".tmp" not in str(e.value)
    with pytest.raises(PermissionError, match=r"cannot write .*o\.png: Permission denied") as e:
        save_image(torch.zeros(3, 2, 2), tmp_path / "o.png")  # the writer names it too
    assert ".tmp" not in str(e.value)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dir.png", "file", "plain_dir"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders (and Windows ignores a folder's mode)")
def test_check_output_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=r"o\.png: cannot write in"):
            images.check_output(ro / "o.png")
    finally:
        ro.chmod(0o755)


def test_full_disk_error_names_the_target_not_the_temp_file(tmp_path, monkeypatch):
    import errno

    def no_space(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images.Image.Image, "save", no_space)
    with pytest.raises(OSError, match=r"cannot write .*full\.png: No space left on device") as e:
        save_image(torch.zeros(3, 2, 2), tmp_path / "full.png")
    assert e.value.errno == errno.ENOSPC and ".tmp" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_float_arrays_with_nan_or_inf_are_refused():
    for bad in (np.nan, np.inf):
        with pytest.raises(images.DataError, match="arr: expected uint8 or float in"):
            images.to_rgb_u8(np.array([[0.0, bad]], dtype=np.float32), "arr")


def _swapped_profile() -> bytes:
    """LittleCMS's sRGB profile with the red and blue colorants swapped: an RGB space whose R is sRGB's blue."""
    import struct

    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    n = struct.unpack(">I", srgb[128:132])[0]
    entry = {srgb[132 + 12 * i:136 + 12 * i]: 132 + 12 * i for i in range(n)}
    b = bytearray(srgb)
    r, bl = entry[b"rXYZ"], entry[b"bXYZ"]
    b[r + 4:r + 12], b[bl + 4:bl + 12] = srgb[bl + 4:bl + 12], srgb[r + 4:r + 12]
    return bytes(b)


@pytest.mark.parametrize("mode, suffix", [("RGB", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("P", ".png")])
def test_icc_profile_is_converted_to_srgb(tmp_path, mode, suffix):
    """A photo with an embedded ICC profile (Display P3, Adobe RGB) was read as if it were sRGB: shifted colours,
    silently. It is converted to sRGB (a profile whose R and B are sRGB's B and R swaps the channels); an sRGB
    profile keeps the pixels; a broken profile is ignored with a warning."""
    from PIL import ImageCms

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 10, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    if mode == "RGBA":
        a[..., 3] = 255
        a[0, 0, 3] = 0  # one transparent pixel: composited on white after the conversion
    def image():  # a palette image: the colours of a quantised RGB one
        return Image.fromarray(a, "RGB").quantize(16) if mode == "P" else Image.fromarray(a, mode)

    plain = tmp_path / f"plain{suffix}"
    kw = {"quality": 100} if suffix == ".jpg" else {}
    image().save(plain, **kw)
    want = images.read_image(plain)
    for profile, expect in ((_swapped_profile(), want[..., ::-1]),
                            (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), want)):
        p = tmp_path / f"icc{suffix}"
        image().save(p, icc_profile=profile, **kw)
        got = images.read_image(p)
        if mode == "RGBA":
            assert (got[0, 0] == 255).all()
            got, expect = got.reshape(-1, 3)[1:], expect.reshape(-1, 3)[1:]
        assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1
    p = tmp_path / f"broken{suffix}"
    image().save(p, icc_profile=b"not a profile" * 20, **kw)
    with pytest.warns(UserWarning, match="ICC colour profile cannot be read"):
        assert np.array_equal(images.read_image(p), want)
    # a profile that reads but is of another colour space (an RGB one in a CMYK JPEG): not "cannot be read"
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("CMYK", (4, 4), (0, 255, 0, 0)).save(tmp_path / "cmyk_rgb_profile.jpg", icc_profile=srgb)
    with pytest.warns(UserWarning, match=r"cmyk_rgb_profile\.jpg: its ICC colour profile does not fit its CMYK pixels "
                                         r"\(.*\); the pixels are taken as sRGB"):
        images.read_image(tmp_path / "cmyk_rgb_profile.jpg")


def _grey_profile(gamma: float) -> bytes:
    """A monochrome ICC profile (v2: GRAY data, XYZ connection space, a D50 white, a pure-gamma grey curve), as a
    scanner or Photoshop's "Gray Gamma 1.8" embeds it."""
    def s15(v):
        return struct.pack(">i", round(v * 65536))

    desc = b"desc" + bytes(4) + struct.pack(">I", 10) + b"Grey test\0" + bytes(8) + bytes(3) + bytes(67)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)),
            (b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)),
            (b"cprt", b"text" + bytes(4) + b"none\0" + bytes(3))]
    table, data, at = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, d in tags:
        table += sig + struct.pack(">II", at + len(data), len(d))
        data += d + bytes(-len(d) % 4)
    body = struct.pack(">I", len(tags)) + table + data
    head = (struct.pack(">I", 128 + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrGRAYXYZ " + bytes(12)
            + b"acsp" + bytes(24) + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48))
    return head + body


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_a_grey_icc_profile_is_converted_to_srgb_grey(tmp_path, mode):
    """A grey scan with an embedded grey profile (Gray Gamma 1.8) was taken as sRGB: its upscale came out darker
    than a colour-managed viewer shows the scan (a mean level of 65 for 82), without a word. Now converted, to
    sRGB's curve of the profile's light, and still a grey image (equal channels)."""
    from yoda.images import is_grey

    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    light = (v / 255.0) ** 1.8  # what the profile says a level is
    srgb = np.where(light <= 0.0031308, 12.92 * light, 1.055 * light ** (1 / 2.4) - 0.055)
    keep = np.ones_like(v, bool)
    keep[0, 0] = mode == "L"  # LA: one transparent pixel, composited on white
    im = Image.fromarray(v, "L") if mode == "L" else Image.merge("LA", [Image.fromarray(v, "L"),
                                                                        Image.fromarray(keep.astype(np.uint8) * 255)])
    p = tmp_path / "scan.png"
    im.save(p, icc_profile=_grey_profile(1.8))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got = images.read_image(p)
    assert [str(w.message).split(":")[1] for w in said] == [" 0.391% of its pixels are transparent or partly so"] * (
        mode == "LA")
    assert is_grey(got) and (got[0, 0] == (0 if mode == "L" else 255)).all()
    err = np.abs(got[..., 0].astype(float) - np.round(srgb * 255))[keep]
    assert err.max() <= 2, err.max()  # LittleCMS's 8-bit transform, within 2 levels of the exact curve
    assert got[..., 0][keep].mean() > v[keep].mean() + 10  # lighter, as the viewer shows it (the bug: equal)
    if mode == "L":  # a 16-bit scan with the profile: read at 8 bits, then converted the same (it was left as it was)
        for suffix in (".png", ".tif"):
            Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / f"deep{suffix}", icc_profile=_grey_profile(1.8))
            assert np.array_equal(images.read_image(tmp_path / f"deep{suffix}"), got), suffix


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
def test_every_16_bit_level_maps_to_round_u_255_over_65535(tmp_path):
    from yoda.images import read_image
    u = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    p = tmp_path / "g16.png"
    Image.fromarray(u).save(p)
    got = read_image(p)[..., 0]
    want = np.round(u.astype(np.float64) * 255 / 65535).astype(np.uint8)  # no exact halves: u / 257 + k / 2 never
    assert np.array_equal(got, want), np.argwhere(got != want)[:3]


def test_from_uint8_takes_back_what_to_uint8_gives_and_sample_says_how_to_convert():
    """from_uint8(to_uint8(x)) was a ValueError (to_uint8 keeps the batch: (1, H, W, 3)); yoda.sample(net, a PIL
    image or an array) said only "lr must be a torch.Tensor", not how to make one."""
    import torch

    import yoda
    from yoda.images import from_uint8, to_uint8

    x = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    q = from_uint8(to_uint8(x))
    assert q.shape == (1, 3, 5, 7) and torch.equal(from_uint8(to_uint8(q)), q) and (q - x).abs().max() <= 1 / 127.5
    pil = Image.fromarray(to_uint8(x)[0])
    assert torch.equal(from_uint8(pil), q)
    net = yoda.load("yoda", "default")
    for bad in (pil, np.asarray(pil)):
        with pytest.raises(TypeError, match=r"lr must be a torch.Tensor \(B, 3, h, w\) in \[-1, 1\], got "
                                            r"\w+: yoda.load_image\(path\) reads a file, yoda.from_uint8\(image\)"):
            yoda.sample(net, bad)
    # torchvision.io.read_image's uint8 (C, H, W) tensor: it said only "arr must be a numpy array, got Tensor"
    with pytest.raises(TypeError, match=r"got a torch tensor: yoda's lr of a uint8 \(C, H, W\) tensor x "
                                        r"\(torchvision.io.read_image's\) is x\[None\].float\(\) / 127.5 - 1"):
        from_uint8(torch.zeros(3, 5, 7, dtype=torch.uint8))


def test_from_uint8_converts_a_pil_image_of_any_8_bit_mode_as_read_image_does(tmp_path):
    """from_uint8(PIL image) took np.asarray of any mode: a palette image's indices as grey, CMYK's K channel as
    alpha (white), YCbCr / HSV channels as RGB; LA and 1-bit were shape / dtype errors. Each mode now gives what
    read_image gives for the same image saved as TIFF (which keeps every one of these modes)."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8))
    modes = {"P": rgb.convert("P"), "PA": rgb.convert("P").convert("PA"), "CMYK": rgb.convert("CMYK"),
             "YCbCr": rgb.convert("YCbCr"), "LA": rgb.convert("LA"), "1": rgb.convert("1"), "L": rgb.convert("L"),
             "RGBA": rgb.convert("RGBA")}
    if int(PIL.__version__.split(".")[0]) < 13:  # Pillow <= 12.3 cannot read back a YCbCr TIFF it wrote
        del modes["YCbCr"]
    for mode, im in modes.items():
        alpha = np.linspace(0, 255, im.size[0] * im.size[1]).astype(np.uint8).reshape(im.size[::-1])
        if mode in ("LA", "RGBA", "PA"):  # a real alpha, composited on white
            im.putalpha(Image.fromarray(alpha))
        p = tmp_path / f"{mode}.tif"
        im.save(p)
        want = from_uint8(images.read_image(p))
        assert torch.equal(from_uint8(im), want), mode
    assert (from_uint8(modes["CMYK"]) - from_uint8(rgb)).abs().max() <= 2 / 127.5  # not white
    for mode in ("I;16", "F", "I"):
        with pytest.raises(TypeError, match=rf"arr: a PIL image of mode '{re.escape(mode)}' has samples wider than "
                                            r"8 bits; yoda.load_image reads such files"):
            from_uint8(rgb.convert("L").convert(mode))


def test_a_bad_module_limit_and_a_name_without_suffix_are_named(tmp_path, monkeypatch):
    """yoda.images.MAX_PIXELS = -5 made load_image say "max_pixels must be ... got None" of a call that gave none;
    save_image to "out" said "cannot write images with the suffix ''"."""
    import torch

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setitem(vars(images), "MAX_PIXELS", -5)
    with pytest.raises(ValueError, match=r"^yoda\.images\.MAX_PIXELS must be an int >= 0 \(0: no limit\), got -5; `del "
                                         r"yoda\.images\.MAX_PIXELS` goes back"):
        load_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"^max_pixels must be an int >= 0 \(0: no limit\) or None, got -1$"):
        load_image(tmp_path / "a.png", max_pixels=-1)
    with pytest.raises(ValueError, match=r"^path: .*out: an image file name needs a suffix \(\.png, "
                                         r".*e\.g\. .*out\.png$"):
        images.save_image(torch.zeros(1, 3, 2, 2), tmp_path / "out")


def test_to_uint8_refuses_values_no_image_has():
    """save_image of a [0, 255] tensor wrote an all-white file and Inf was written as white; a little overshoot is
    still clamped."""
    import torch

    from yoda.images import to_uint8

    for x, msg in ((torch.full((1, 3, 4, 4), 200.0), r"x values must lie in \[-1, 1\].*got range \[200, 200\]"),
                   (torch.full((1, 3, 4, 4), float("inf")), "x contains NaN or Inf"),
                   (torch.zeros(1, 3, 0, 4), r"x is an empty image \(shape \(1, 3, 0, 4\)\)"),
                   (torch.zeros(0, 3, 4, 4), r"^x is an empty image \(shape \(0, 3, 4, 4\)\)$")):  # (aminmax's error)
        with pytest.raises(ValueError, match=msg):
            to_uint8(x)
    assert (to_uint8(torch.full((1, 3, 2, 2), 1.1)) == 255).all()
    with pytest.raises(TypeError, match=r"^x must be a dense tensor, got layout torch.sparse_coo"):  # (torch's
        to_uint8(torch.zeros(1, 3, 2, 2).to_sparse())  # NotImplementedError from aten::aminmax)


def test_a_broken_link_is_named_so(tmp_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    with pytest.raises(FileNotFoundError, match=r"no such image file: .*link\.png \(a broken link to .*gone\.png\)"):
        load_image(tmp_path / "link.png")


def test_a_name_with_a_newline_is_shown_escaped(tmp_path):
    """The CLI prints an error's first line: for "bad\\nname.png" that was "cannot read image .../bad", the name of
    another file (which may exist). The name is escaped in read_image's errors; the file is still the one read."""
    bad = tmp_path / "bad\nname.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(images.DataError) as e:
        load_image(bad)
    assert "\n" not in str(e.value) and f"cannot read image {tmp_path}/bad\\nname.png: not an image" in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"no such image file: .*/gone\\nname\.png$"):
        load_image(tmp_path / "gone\nname.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "ok\nname.png", format="PNG")
    assert images.read_image(tmp_path / "ok\nname.png").shape == (2, 2, 3)


def test_camera_previews_are_no_frames_and_pillows_warnings_name_the_file(tmp_path):
    """A camera JPEG with MPF previews (MPO: the first frame is the photograph) warned "holds 2 frames; only the
    first is read", as if something were lost; Pillow's own warnings ("Corrupt EXIF data ...") named no file, so a
    folder run printed them of no image in particular."""
    import io

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8))
    mpo = tmp_path / "camera.jpg"
    rgb.save(mpo, format="MPO", save_all=True, append_images=[rgb.resize((8, 8))])
    with Image.open(mpo) as im:
        assert im.format == "MPO" and im.n_frames == 2
        first = np.asarray(im.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(images.read_image(mpo), first)
    ex = Image.Exif()
    ex[0x010F] = "Canon"
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=ex, quality=95)
    data = bytearray(buf.getvalue())
    data[data.index(b"Exif\x00\x00") + 6 + 8] = 0xFF  # the IFD's entry count: more entries than the block holds
    bad = tmp_path / "bad exif.jpg"
    bad.write_bytes(bytes(data))
    with pytest.warns(UserWarning) as said:  # the library passes Pillow's warning on as it is (no catch_warnings:
        images.read_image(bad)  # process-wide, it broke every warning of a service reading in two threads)
    assert [str(w.message) for w in said] == ["Corrupt EXIF data.  Expecting to read 12 bytes but only got 10. "]
    from yoda.cli_models import read_input

    with pytest.warns(UserWarning) as said:  # the CLI, in its one thread, names the file (once: read_exif reads
        read_input(str(bad), carry=4)  # the broken block again, for upscale's output)
    assert [str(w.message) for w in said] == [f"{bad}: Corrupt EXIF data.  Expecting to read 12 bytes but only got "
                                              "10. "], [str(w.message) for w in said]


def test_jpeg_keeps_full_colour_and_huge_outputs_fit_their_format(tmp_path, monkeypatch):
    """JPEG outputs took Pillow's 4:2:0 chroma subsampling (2.0-3.4 dB below 4:4:4 at quality 95 on super-resolved
    crops). A TIFF of more than 4 GiB failed with struct.error and a BMP with "File size is too large" after all the
    sampling: the TIFF is a BigTIFF now, and a BMP that cannot hold the image is refused before any work."""
    from PIL import JpegImagePlugin

    x = torch.rand(1, 3, 16, 24) * 2 - 1
    jpg = save_image(x, tmp_path / "a.jpg")
    with Image.open(jpg) as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
    images.check_fits(tmp_path / "a.bmp", 37000, 38000)  # 4.2e9 bytes: fits
    images.check_fits(tmp_path / "g.bmp", 60000, 60000, grey=True)  # 8-bit grey: 3.6e9 bytes, fits
    with pytest.raises(ValueError, match=r"^out .*b\.bmp: a 38000x38000 image does not fit in BMP \(at most 4 GiB a "
                                         r"file\); write \.png or \.tif instead$"):
        images.check_fits(tmp_path / "b.bmp", 38000, 38000, "out")
    for name, big in (("small.tif", False), ("big.tif", True)):  # the image's bytes at the threshold, 1 above it
        monkeypatch.setattr(images, "MAX_CLASSIC_BYTES", (1 << 20) + 16 * 24 * 3 - big)
        p = save_image(x, tmp_path / name)
        assert p.read_bytes()[:4] == (b"II+\x00" if big else b"II*\x00"), name  # BigTIFF's magic is 43
        with Image.open(p) as im:
            np.testing.assert_array_equal(np.asarray(im), to_uint8(x)[0])
    monkeypatch.setattr(images, "MAX_CLASSIC_BYTES", (1 << 20) + 16 * 24 * 2 - 1)  # 16-bit samples count twice
    p = images.save_pil(Image.fromarray(np.full((16, 24), 40000, np.uint16)), tmp_path / "deep.tif")
    assert p.read_bytes()[:4] == b"II+\x00"
    monkeypatch.setattr(images, "MAX_CLASSIC_BYTES", 54 + 16 * 24 * 3 - 1)  # the BMP's size, less 1
    with pytest.raises(ValueError, match="does not fit in BMP"):
        save_image(x, tmp_path / "c.bmp")
    assert not (tmp_path / "c.bmp").exists()


def test_a_read_only_output_is_refused_before_the_work(tmp_path, monkeypatch):
    """A read-only file as the output passed check_output, and the write after all the sampling failed only because
    atomic_write chmod'ed its temporary file to the target's 0444 before its fsync opened it for writing (as root
    the file was replaced). Refused up front now, and by atomic_write itself."""
    from pathlib import Path

    from yoda import _io

    keep = tmp_path / "keep.png"
    save_image(torch.zeros(1, 3, 4, 4), keep)
    before = keep.read_bytes()
    keep.chmod(0o444)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p) == str(keep) and m == os.W_OK
                        else real(p, m, **k))  # as a user who is not root sees it
    with pytest.raises(PermissionError, match=rf"^\[Errno 13\] -o {re.escape(str(keep))}: the file exists and is "
                                              r"read-only \(chmod u\+w it to replace it, or write another name\)"):
        images.check_output(keep, "-o")
    with pytest.raises(PermissionError, match="the file exists and is read-only"):
        save_image(torch.ones(1, 3, 4, 4), keep)
    assert keep.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["keep.png"]
    # --skip-existing keeps it: not refused for being read-only (a finished output, protected, stopped the run)
    images.check_output(keep, "-o", kept=True)
    # another user's file this one may write (an ACL on a 0444 file): replaced, and writable to its new owner (the
    # ACL's access as a user who is not root sees it too: the test ran only as root)
    monkeypatch.setattr(os, "access", lambda p, m, **k: True if os.fspath(p) == str(keep) else real(p, m, **k))
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(keep).st_uid + 1)
    _io.atomic_write(keep, lambda tmp: Path(tmp).write_bytes(b"acl"))
    assert keep.stat().st_mode & 0o777 == 0o644
    monkeypatch.undo()
    keep.chmod(0o644)
    _io.atomic_write(keep, lambda tmp: Path(tmp).write_bytes(b"x"))  # writable again: replaced, mode kept
    assert keep.read_bytes() == b"x" and keep.stat().st_mode & 0o777 == 0o644


def test_png_outputs_are_compressed_at_level_3(tmp_path):
    """PNG outputs took Pillow's zlib level 6: 7.7% of a 512² -> 2048² upscale went to the encode (1.25 s), against
    0.4 s at level 3 for a file 9% larger and the same pixels. The zlib header's FLEVEL says which was used."""
    import zlib

    x = torch.rand(1, 3, 32, 48) * 2 - 1
    data = save_image(x, tmp_path / "a.png").read_bytes()
    i = data.index(b"IDAT") + 4
    assert (data[i + 1] >> 6) == 1  # FLEVEL 1: "fast" (levels 2-5); level 6 writes 2
    assert zlib.decompress(data[i:i + int.from_bytes(data[i - 8:i - 4], "big")])  # a whole zlib stream
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(np.asarray(im), to_uint8(x)[0])


def test_save_image_names_a_path_of_the_wrong_type(tmp_path):
    """save_image(x, 5) gave pathlib's "expected str, bytes or os.PathLike object, not int" (bytes is not taken
    either), naming no argument; load_image's says path."""
    import torch

    for bad in (5, b"a.png", None):
        with pytest.raises(TypeError, match=rf"^path must be a file name \(str or os.PathLike\), got "
                                            rf"{type(bad).__name__}$"):
            yoda.save_image(torch.zeros(1, 3, 4, 4), bad)

