"""Data sources, crops, the LR degradation and their errors."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from yoda import data
from yoda.images import from_uint8, to_uint8


def test_builtin_set_excludes_held_out():
    assert not set(data.BUILTIN_TRAIN) & set(data.HELD_OUT)
    assert "cat" not in data.BUILTIN_TRAIN  # skimage's cat() is chelsea
    for name in ("camera", "motorcycle_left", "logo"):
        a = data.builtin_image(name)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    cam = data.builtin_image("camera")  # grey -> 3 equal channels
    assert np.array_equal(cam[:, :, 0], cam[:, :, 2])
    assert np.array_equal(data.builtin_image("cat"), data.builtin_image("chelsea"))
    with pytest.raises(data.DataError, match="unknown built-in image 'nope'"):
        data.builtin_image("nope")


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(data.DataError, match=r"no images \(.png, .jpg, .jpeg, .webp, .tif, .tiff, .bmp, .jfif, .jpe, "
                                             r".avif, .jp2, .j2k, .qoi\) in folder"):
        data.load_source(str(tmp_path))
    with pytest.raises(data.DataError, match="not found"):
        data.load_source(str(tmp_path / "missing"))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(data.DataError, match="broken.jpg"):
        data.load_source(str(tmp_path))
    (tmp_path / "broken.jpg").unlink()
    with pytest.raises(data.DataError, match=r"ok.png is 30x20, smaller than the crop size 24"):
        data.load_source(str(tmp_path), min_size=24)
    items = data.load_source(str(tmp_path), min_size=16)
    assert [n.endswith("ok.png") for n, _ in items] == [True]
    # every unusable image in one error (a corrupt one, then a small one took a run each)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(data.DataError, match=r"2 image\(s\) of .* cannot be used \(move them out, or fix them\): "
                                             r"cannot read image .*broken.jpg.*; image .*ok.png is 30x20, smaller "
                                             r"than the val crop 24$"):
        data.load_source(str(tmp_path), min_size=24, what="the val crop")


def test_read_image_modes(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    a = data.read_image(str(tmp_path / "g.png"))
    assert a.shape == (3, 4, 3) and np.array_equal(a[:, :, 1], grey)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [0, 255]]  # transparent pixels become white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    b = data.read_image(str(tmp_path / "a.png"))
    assert b[0, 0].tolist() == [200, 0, 0] and b[0, 1].tolist() == [255, 255, 255]


def test_make_lr_is_antialiased_bicubic_close_to_pillow():
    a = data.builtin_image("astronaut")[:256, :256]
    lr = data.make_lr(from_uint8(a), 4)
    assert lr.shape == (1, 3, 64, 64)
    u = to_uint8(lr)[0]
    # quantised: x = u / 127.5 - 1 exactly
    assert torch.equal(lr, from_uint8(u))
    pil = np.asarray(Image.fromarray(a).resize((64, 64), Image.Resampling.BICUBIC)).astype(int)
    d = u.astype(int) - pil  # same Keys a = -0.5 filter; measured mean -0.004, mean |d| 0.106, max 2 (the earlier
    # bounds, mean |d| < 0.5 and max 6, took a floor for the rounding: mean 0.49)
    assert abs(d.mean()) < 0.05 and np.abs(d).mean() < 0.2 and np.abs(d).max() <= 2, (d.mean(), np.abs(d).mean())
    # a constant image stays constant (the filter sums to one)
    flat = torch.full((1, 3, 16, 16), 0.2)
    assert torch.allclose(data.make_lr(flat, 4), torch.full((1, 3, 4, 4), round(1.2 * 127.5) / 127.5 - 1))
    with pytest.raises(ValueError, match="not a multiple of scale 4"):
        data.make_lr(torch.zeros(1, 3, 10, 12), 4)
    # a uint8 image came back all ones, scale 2.5 made x2 and True x1, all without a word
    with pytest.raises(TypeError, match=r"hr must be a float tensor in \[-1, 1\], got torch.uint8"):
        data.make_lr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 4)
    for bad in (2.5, True, "2"):
        with pytest.raises(TypeError, match=f"scale must be an int, got {bad!r}"):
            data.make_lr(torch.zeros(1, 3, 8, 8), bad)
    assert data.make_lr(torch.zeros(1, 3, 8, 8), np.int64(2)).shape == (1, 3, 4, 4)


def test_a_folder_lists_in_one_order_whatever_the_unicode_form_of_its_names(tmp_path):
    """Composed names (Linux) and decomposed ones (a folder copied from macOS) sorted apart: "café" before "caff"
    in one form, after it in the other (NFC: after), so the same seed drew other crops; the digests' names differed too."""
    import unicodedata

    orders, digests = [], []
    for form in ("NFC", "NFD"):
        d = tmp_path / form
        d.mkdir()
        for i, name in enumerate(("café", "caff")):
            Image.fromarray(np.full((4, 4, 3), 50 * i, np.uint8)).save(d / (unicodedata.normalize(form, name) + ".png"))
        paths = data.list_folder(str(d))
        orders.append([unicodedata.normalize("NFC", os.path.basename(p)) for p in paths])
        digests.append(data.image_digests([(p, data.read_image(p)) for p in paths], str(d)))
    assert orders[0] == orders[1] == ["caff.png", "café.png"] and digests[0] == digests[1]
    both = tmp_path / "NFD" / (unicodedata.normalize("NFC", "café") + ".png")  # one name written both ways (Linux
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(both)  # keeps them apart): two images, two digests
    paths = data.list_folder(str(tmp_path / "NFD"))
    assert len(paths) == 3 and len(data.image_digests([(p, data.read_image(p)) for p in paths], str(tmp_path))) == 3
    # a checkpoint's NFD names (before names were NFC) are the same names: not "added 'café.png'; removed 'café.png'"
    assert data.digest_change({unicodedata.normalize("NFD", k): v for k, v in digests[0].items()}, digests[0]) is None


def test_crop_sampler_reproducible_and_in_range():
    imgs = [("x", np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3).astype(np.uint8))]
    s = data.CropSampler(imgs, 16)
    a = s.sample(5, torch.Generator().manual_seed(0))
    b = s.sample(5, torch.Generator().manual_seed(0))
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    # every crop is a (possibly flipped) window of the source image
    src = from_uint8(imgs[0][1])[0]
    for c in a:
        found = False
        for fl in ([], [2], [1], [1, 2]):
            cc = c.flip(fl) if fl else c
            for y in range(40 - 16 + 1):
                for x in range(50 - 16 + 1):
                    if torch.equal(src[:, y : y + 16, x : x + 16], cc):
                        found = True
                        break
                if found:
                    break
            if found:
                break
        assert found
    with pytest.raises(data.DataError, match="smaller than the crop size 64"):
        data.CropSampler(imgs, 64)


def test_data_config_checks():
    with pytest.raises(ValueError, match="crop"):
        data.DataConfig(crop=30, scale=4)


def test_a_folder_reads_every_format_yoda_writes(tmp_path):
    """eval / figures / train --data-dir read only PNG and JPEG and passed over TIFF, WebP and BMP without a word,
    while yoda upscale read them."""
    a = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    for suffix in (".png", ".TIF", ".tiff", ".webp", ".bmp"):
        Image.fromarray(a).save(tmp_path / f"x{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(a).save(tmp_path / "y.gif")
    (tmp_path / "more").mkdir()
    Image.fromarray(a).save(tmp_path / "more" / "z.png")
    # what is left out is said (training on a folder whose images sat in subfolders took one image without a word)
    with pytest.warns(UserWarning, match=r": left out more/, notes.txt, y.gif \(a folder stands for its own files"):
        items = data.load_folder(str(tmp_path))
    assert [os.path.basename(n) for n, _ in items] == ["x.TIF", "x.bmp", "x.png", "x.tiff", "x.webp"]
    assert all(np.array_equal(arr, a) for _, arr in items)


def test_crop_for_model_names_the_small_image_and_knows_the_models_smallest_side(tmp_path):
    """The embedded model's size multiple is 8, but its bottleneck's reflection pad needs 16 HR pixels a side:
    8..15 px crops crashed inside the network with a traceback."""
    import yoda

    ad = yoda.load("yoda", "default").yoda_adapter()
    assert yoda.adapters.hr_grid(ad) == (8, 16)
    big, small = np.zeros((40, 52, 3), np.uint8), np.zeros((12, 40, 3), np.uint8)
    out = data.crop_for_model([("big.png", big), ("a/thin.png", small)][:1], ad)
    assert out[0][1].shape == (40, 48, 3)
    with pytest.raises(data.DataError, match=r"^a/thin.png: image of size 40x12: its height is below 16, the smallest HR"):
        data.crop_for_model([("big.png", big), ("a/thin.png", small)], ad)
    with pytest.raises(data.DataError, match=r"^max_size 8 is below 16, the smallest HR side this model takes"):
        data.crop_for_model([("big.png", big)], ad, max_size=8)
    assert data.crop_for_model([("big.png", big)], ad, max_size=23)[0][1].shape == (16, 16, 3)


def _windows_of(src, c, crop):
    """Where crop ``c`` sits in ``src`` (C, H, W): [(y, x, flipped dims)] over every window and flip."""
    H, W = src.shape[1:]
    return [(y, x, fl) for fl in ((), (2,), (1,), (1, 2)) for y in range(H - crop + 1) for x in range(W - crop + 1)
            if torch.equal(src[:, y:y + crop, x:x + crop].flip(fl) if fl else src[:, y:y + crop, x:x + crop], c)]


def test_crop_sampler_draws_every_flip_and_every_window_edge():
    """A crop matched any of the four flips, so a sampler that never flipped (or flipped both axes together, or
    never drew the last offset) passed: on a random image every window and flip is unique, and 64 draws see all."""
    img = np.random.default_rng(0).integers(0, 256, (20, 22, 3), dtype=np.uint8)
    src, crop = from_uint8(img)[0], 16
    seen = [_windows_of(src, c, crop) for c in data.CropSampler([("x", img)], crop).sample(
        64, torch.Generator().manual_seed(0))]
    assert all(len(s) == 1 for s in seen)
    assert {s[0][2] for s in seen} == {(), (2,), (1,), (1, 2)}  # both flips, independently
    assert {s[0][0] for s in seen} == set(range(5)) and {s[0][1] for s in seen} == set(range(7))  # the last too
    plain = data.CropSampler([("x", img)], crop, flips=False).sample(16, torch.Generator().manual_seed(0))
    assert all(_windows_of(src, c, crop)[0][2] == () for c in plain)
