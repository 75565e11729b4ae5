"""yoda.images: exact uint8 round trips, Pillow I/O, atomic saves, clear errors."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from yoda import images
from yoda.images import from_uint8, load_image, save_image, to_uint8


def test_known_values_and_exact_round_trip():
    x = torch.tensor([-1.0, 0.0, 1.0, -2.0, 3.0]).view(1, 1, 1, 5)
    assert to_uint8(x).reshape(-1).tolist() == [0, 128, 255, 0, 255]  # 127.5 rounds half to even -> 128
    u = np.arange(256, dtype=np.uint8).reshape(16, 16)
    u3 = np.stack([u, u[::-1], u.T], axis=-1)
    back = to_uint8(from_uint8(u3))
    assert back.shape == (1, 16, 16, 3) and np.array_equal(back[0], u3)
    f = from_uint8(u3)
    assert f.shape == (1, 3, 16, 16) and f.dtype == torch.float32
    assert f.min().item() == -1.0 and f.max().item() == 1.0
    torch.testing.assert_close(f[0, 0, 0, 1], torch.tensor(1 / 127.5 - 1.0))


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
    with pytest.raises(ValueError, match="not a file"):
        load_image(tmp_path)


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
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "x.txt", lambda tmp: None)
