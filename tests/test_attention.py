"""yoda.attention: the shared pipeline, the non-learnable extractors, get() and the figure."""

import warnings

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

import yoda.attention as att
from yoda.attention import classic
from yoda.attention.classic import Sift, luma, minmax_normalize
from yoda.masks import every_step_ratio, mask_at, pixel_update_ratio

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

EXTRACTORS = {
    "edge": lambda: att.edge(sigma=1.0),
    "gaussian": lambda: att.gaussian(sigma=0.25),
    "sift": lambda: att.sift(),
}


def _rand_lr(B=2, C=3, h=13, w=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, h, w, generator=g) * 2 - 1


def _minmax64(m):
    """float64 reference of the per-image min-max (constant -> ones)."""
    out = np.empty_like(m, dtype=np.float64)
    for b in range(m.shape[0]):
        lo, hi = m[b].min(), m[b].max()
        out[b] = 1.0 if hi - lo <= 1e-6 * max(abs(lo), abs(hi)) else (m[b] - lo) / (hi - lo)
    return out


# ------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("name", sorted(EXTRACTORS))
@pytest.mark.parametrize("hw", [(13, 17), (16, 16), (1, 5)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_shape_dtype_range(name, hw):
    f = EXTRACTORS[name]()
    lr = _rand_lr(h=hw[0], w=hw[1])
    A = f(lr)
    assert A.shape == (2, 1, *hw)
    assert A.dtype == torch.float32
    assert float(A.min()) >= 0.0 and float(A.max()) <= 1.0
    # min-max normalised: every non-constant image reaches both 0 and 1
    for b in range(2):
        if float(A[b].max() - A[b].min()) > 0:
            assert float(A[b].min()) == 0.0 and float(A[b].max()) == 1.0
        else:
            assert bool((A[b] == 1).all())
    assert "(" in repr(f) and name in repr(f)


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_grey_is_repeated_rgb(name):
    f = EXTRACTORS[name]()
    grey = _rand_lr(C=1, seed=3)
    A1 = f(grey)
    A3 = f(grey.repeat(1, 3, 1, 1))
    assert A1.shape == (2, 1, 13, 17)
    torch.testing.assert_close(A1, A3, rtol=0, atol=0)


def _edge64(lr, sigma=1.0):
    """The edge map in float64 with scipy: Sobel of the BT.601 luma inside the image, |gradient| with the outer
    ring copied from the ring inside it, Gaussian blur (edge-replicated borders), per-image min-max. lr: (B, C, h,
    w) of any float dtype (h, w >= 3), taken at its own values."""
    x = lr.double()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    out = []
    for b in range(x.shape[0]):
        y = (0.299 * x[b, 0] + 0.587 * x[b, 1] + 0.114 * x[b, 2]).numpy()
        gx, gy = (np.pad(ndi.sobel(y, axis=a)[1:-1, 1:-1], 1, mode="edge") for a in (1, 0))
        # truncate=3 -> radius int(3*1 + 0.5) = 3 = ceil(3 sigma), the radius the extractor uses
        out.append(ndi.gaussian_filter(np.hypot(gx, gy), sigma=sigma, mode="nearest", truncate=3.0))
    return _minmax64(np.stack(out))[:, None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_give_float32(dtype):
    """Any float input gives float32 A, computed from the input's own values (no further rounding): the float64
    edge map of the fp16 / bf16 / fp64 values, to float32 accuracy."""
    lr = _rand_lr()
    A = att.edge()(lr.to(dtype))
    assert A.dtype == torch.float32
    np.testing.assert_allclose(A.numpy(), _edge64(lr.to(dtype)), atol=2e-6, rtol=0)
    if dtype != torch.float64:  # the input's rounding is visible: a float32 map would not pass the line above
        assert np.abs(att.edge()(lr).numpy() - _edge64(lr.to(dtype))).max() > 1e-4


@pytest.mark.parametrize("name", ["edge", "gaussian", "sift"])
def test_a_float64_default_dtype_changes_nothing(name):
    """torch.set_default_dtype(torch.float64), as notebooks do, made edge fail on a float32 lr ("expected scalar
    type Float but found Double"): its Sobel kernel took the default dtype."""
    lr = _rand_lr()
    want = att.get(name)(lr)
    torch.set_default_dtype(torch.float64)
    try:
        got = att.get(name)(lr)
    finally:
        torch.set_default_dtype(torch.float32)
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("name", ["edge", "sift"])
def test_constant_image_gives_all_ones(name):
    lr = torch.full((2, 3, 13, 17), 0.3)
    A = EXTRACTORS[name]()(lr)
    assert bool((A == 1).all())


def test_edge_of_a_resized_flat_image_is_all_ones():
    """Antialiased bicubic resizing of a constant image leaves ~2e-7 of float noise; min-max stretched the noise's
    gradients into a random 0..1 map (mean 0.44). Gradients this far below one 8-bit level are flat."""
    lr = F.interpolate(torch.full((1, 3, 37, 41), 0.3), (16, 16), mode="bicubic", antialias=True)
    assert float(lr.max() - lr.min()) > 0  # the noise is there
    assert bool((att.edge()(lr) == 1).all())
    step = torch.zeros(1, 3, 16, 16)
    step[..., 8:] = 2 / 255  # one 8-bit level is an edge
    assert float(att.edge()(step).min()) == 0.0


def test_edge_of_a_linear_ramp_is_flat_in_any_batch():
    """A ramp's gradient is the same everywhere, to float noise: 9.9e-7 of its magnitude alone (flat, under min-max's
    tolerance), 1.1e-6 after a textured image in a batch (the convolution rounds otherwise), which min-max stretched
    into a random mask (0..1, mean 0.29): the image sampled differed with its batch by up to 0.012."""
    y, x = torch.linspace(-1, 1, 24)[:, None].expand(24, 32), torch.linspace(-1, 1, 32)[None, :].expand(24, 32)
    ramp = torch.stack([-0.56 * x, -0.56 * y, -0.28 * (x + y)])[None]  # in x and y, a slope of its own per channel
    texture = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert bool((att.edge()(ramp) == 1).all())
    assert bool((att.edge().maps(ramp) == 0).all())  # flat whatever its rounding: the map has no range to stretch
    for batch, k in ((torch.cat([texture, ramp]), 1), (torch.cat([ramp, texture]), 0)):
        A = att.edge()(batch)
        assert bool((A[k] == 1).all()) and float(A[1 - k].min()) == 0.0
    gentle = ramp.clone()
    gentle[..., 12:, :] *= 0.5  # two slopes: an edge between them, a map
    assert float(att.edge()(gentle).min()) == 0.0


def test_sift_enlarges_thin_images_within_bounds(monkeypatch):
    """A 1 x 2000 image was enlarged to 128 x 256000 for the detector (7.8 GB, and 1 x 8000 was killed)."""
    import cv2

    from yoda.attention.classic import MAX_SIFT_SIDE

    sizes, real = [], cv2.resize
    monkeypatch.setattr(cv2, "resize", lambda img, dsize, **k: sizes.append(dsize) or real(img, dsize, **k))
    A = att.sift()(torch.rand(1, 3, 1, 2000) * 2 - 1)
    assert A.shape == (1, 1, 1, 2000) and max(sizes[-1]) <= MAX_SIFT_SIDE
    Sift().keypoints(np.zeros((10, 12)))
    assert sizes[-1] == (154, 128)  # small images are still enlarged to the detector's min_size (128)


def test_panels_of_elongated_maps_stay_visible():
    """A 1 x 300 LR was drawn in panels 1 px tall: the 384 px cap overrode the 160 px minimum."""
    from yoda.attention.figure import _panel_size

    assert _panel_size(1, 300) == (32, 384) and _panel_size(300, 1) == (384, 32)
    assert _panel_size(16, 16) == (160, 160) and _panel_size(1000, 500) == (384, 192)
    # ... and the figure's title says so (a 3000 x 40 panorama was drawn 6x taller without a word)
    from PIL import ImageDraw

    texts = []
    real = ImageDraw.ImageDraw.text
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: texts.append(t) or
                   real(self, xy, t, *a, **k))
        for h, w in ((1, 300), (300, 1), (16, 24)):
            att.attention_figure(torch.zeros(1, 3, h, w), torch.rand(1, 1, h, w))
    titles = [t for t in texts if t.startswith("lower_bound=")]
    assert titles[0].endswith("(drawn 32.0x taller than it is)")
    assert titles[1].endswith("(drawn 32.0x wider than it is)")
    assert "drawn" not in titles[2]


def test_constant_image_gaussian_is_the_prior():
    # the prior ignores content: a constant image gets the same map as a random one
    f = att.gaussian()
    torch.testing.assert_close(f(torch.zeros(1, 3, 13, 17)), f(_rand_lr(B=1)), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ pipeline
def test_aggregate_is_max_resize_minmax():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 4, 5, 7, generator=g, dtype=torch.float64).float()
    maps[1, 2] = 10.0  # one group dominating everywhere: the max is that (constant) map -> ones
    A = att.aggregate(maps, (13, 17))
    # by hand: element-wise max with a python loop over K, bilinear (align_corners=False), min-max
    m = maps[:, 0].clone()
    for k in range(1, 4):
        m = torch.where(maps[:, k] > m, maps[:, k], m)
    r = F.interpolate(m[:, None].double(), size=(13, 17), mode="bilinear", align_corners=False)
    ref = _minmax64(r.numpy())
    np.testing.assert_allclose(A.numpy(), ref, atol=2e-6, rtol=0)
    assert bool((A[1] == 1).all())


def test_a_grid_finer_than_the_image_keeps_every_hot_cell():
    """DINO enlarges an LR whose short side is under 224 / 8 = 28 patches; its patch grid is then finer than the LR.
    Resized bilinearly (no antialiasing), a 16-pixel side read 2 of every 1.75 cells: of two equally hot patches,
    one could come out at 1.6% of the other. Max-pooled, each pixel is as hot as the hottest cell it covers, and
    every hot cell reaches 1 wherever it lies; the coarse side of a mixed grid is still resized bilinearly."""
    for i in range(28):
        for j in range(28):
            maps = torch.zeros(1, 2, 28, 28)
            maps[0, 0, i, j] = maps[0, 1, 20, 20] = 0.7
            A = att.aggregate(maps, (16, 16))
            y, x = i * 16 // 28, j * 16 // 28  # the pixel that covers cell (i, j)
            assert float(A[0, 0, y, x]) == 1.0 and float(A[0, 0, 11, 11]) == 1.0, (i, j)
    # rows finer than the image, columns coarser: pooled along the rows, bilinear along the columns
    maps = torch.rand(1, 1, 40, 5, generator=torch.Generator().manual_seed(3))
    pooled = F.adaptive_max_pool2d(maps, (10, 5))
    ref = minmax_normalize(F.interpolate(pooled, size=(10, 12), mode="bilinear", align_corners=False))
    assert torch.equal(att.aggregate(maps, (10, 12)), ref)


def test_minmax_against_float64():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(3, 1, 9, 11, generator=g) * 5 + 3
    m[2] = -4.0
    np.testing.assert_allclose(minmax_normalize(m).numpy(), _minmax64(m.double().numpy()), atol=1e-6, rtol=0)


def test_aggregate_rejects_bad_maps():
    with pytest.raises(ValueError, match="maps"):
        att.aggregate(torch.zeros(2, 5, 5), (5, 5))


# ------------------------------------------------------------------------------------------ edge
def test_edge_matches_scipy_reference():
    lr = _rand_lr(B=1, h=13, w=17, seed=5)
    np.testing.assert_allclose(att.edge(sigma=1.0)(lr).numpy(), _edge64(lr), atol=2e-6, rtol=0)


def test_edge_map_of_an_image_does_not_depend_on_its_batch():
    """Each image's map is the same bits alone and batched with others (the Sobel and blur convolutions of oneDNN
    rounded differently with the batch size, 1-3 ulp, and a pixel at the threshold could change its step)."""
    lr = _rand_lr(B=6, h=33, w=47, seed=7)
    for sigma in (0.0, 1.0, 2.5):
        e = att.edge(sigma=sigma)
        alone = torch.cat([e(lr[i:i + 1]) for i in range(lr.shape[0])])
        assert torch.equal(e(lr), alone), sigma


def test_edge_blur_wider_than_the_image_is_bounded():
    """sigma = 1e6 padded each map by 3e6 pixels (gigabytes); the kernel stops at 4 times the image's longer side,
    and a blur up to 4/3 of the side is the exact one (scipy's)."""
    lr = _rand_lr(B=1, h=9, w=13, seed=3)
    assert classic._gaussian_kernel1d(1e6, "cpu", side=13).numel() == 2 * 52 + 1
    A = att.edge(sigma=1e6)(lr)
    assert A.shape == (1, 1, 9, 13) and bool(torch.isfinite(A).all())
    np.testing.assert_allclose(att.edge(sigma=17.0)(lr).numpy(), _edge64(lr, sigma=17.0), atol=2e-5, rtol=0)


def test_edge_gradient_is_as_large_on_the_border():
    """A ramp (and a tilted plane) has one gradient everywhere: the outer ring too (replicate padding halved the
    gradient across the border there, so the ring of every image was refined late)."""
    v = torch.arange(12, dtype=torch.float64) / 16 - 0.4
    for plane in (v.view(1, 12).expand(12, 12), v.view(12, 1) + 0.5 * v.view(1, 12)):
        m = att.edge(sigma=0).maps(plane.float().expand(1, 3, 12, 12).contiguous())[0, 0]
        assert float(m.max() - m.min()) <= 1e-5 * float(m.max()), (m.min(), m.max())


def test_yoda_maps_ignore_the_callers_autocast():
    """A service that wrapped its requests in torch.autocast had the edge map's convolutions run in bf16: the map
    moved by 0.008, pixels crossed tau, and a YODA image moved by 0.058 (7 levels). yoda's own extractors run in
    float32 whatever the caller's autocast; a user's callable is left to it."""
    from yoda.sampling.prepare import resolve_attention

    lr = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name in ("edge", "gaussian"):
        want = resolve_attention(name, lr, (96, 96))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = resolve_attention(name, lr, (96, 96))
        assert torch.equal(got, want), name
    with torch.autocast("cpu", dtype=torch.bfloat16):
        user = resolve_attention(lambda x: F.conv2d(x[:, :1], torch.ones(1, 1, 3, 3) / 9, padding=1).abs(), lr, (24, 24))
    assert user.dtype == torch.float32  # the map is float32 in [0, 1], computed as the user's callable does
    # an extractor called directly (README's training recipe) too: its convolutions ran in bf16 (0.006 off)
    for name in ("edge", "gaussian", "sift"):
        ex = att.get(name)
        want = ex(lr)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(ex(lr), want), name


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.5])
def test_edge_has_no_border_bias_on_a_stationary_texture(sigma):
    """On noise, whose statistics are the same everywhere, the map's mean on the outer ring, the next ring and the
    2 x 2 corners is the interior's. Linear extrapolation at the border (commit 1a01c8f) doubled the noise of the
    ring's gradient: +86% on the ring and about twice the interior in the corners on this noise (+33% in the corners
    of a smoother one), so border pixels were refined first; replicate padding of the image (before it) gave +15%.
    The ring copied from its inward neighbour (Edge's docstring) and the blur's replicate padding keep every mean
    to ~1%."""
    n, hw = 256, 32
    lr = torch.rand(n, 1, hw, hw, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    m = att.edge(sigma=sigma).maps(lr.expand(-1, 3, -1, -1).contiguous())[:, 0].double()
    d = torch.arange(hw)
    d = torch.minimum(d, hw - 1 - d)
    dy, dx = d[:, None].expand(hw, hw), d[None, :].expand(hw, hw)
    ring = torch.minimum(dy, dx)
    inner = float(m[:, ring >= 8].mean())
    for what, sel, tol in (("ring 0", ring == 0, 0.03), ("ring 1", ring == 1, 0.03),
                           ("corners", (dy < 2) & (dx < 2), 0.06)):
        ratio = float(m[:, sel].mean()) / inner
        assert abs(ratio - 1) <= tol, (what, ratio)


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.5])
def test_edge_of_an_image_constant_along_one_axis_is_constant_to_its_border(sigma):
    """Stripes across the image (and a 8-bit ramp under them): the map is the same in every row, the first and last
    included, whatever the blur; transposed, in every column."""
    g = torch.Generator().manual_seed(2)
    cols = (torch.rand(20, generator=g) - 0.5) * 0.6 + torch.round(torch.linspace(-40, 40, 20)) / 127.5
    lr = cols.view(1, 1, 1, 20).expand(1, 3, 14, 20).contiguous()
    for img, axis in ((lr, 0), (lr.transpose(-1, -2).contiguous(), 1)):
        m = att.edge(sigma=sigma).maps(img)[0, 0]
        assert float(m.max()) > 0.1
        ref = m.select(axis, m.shape[axis] // 2).unsqueeze(axis)
        torch.testing.assert_close(m, ref.expand_as(m), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(3, 3), (3, 9), (9, 3)])
def test_edge_of_a_three_pixel_side_follows_the_image(hw):
    """At a side of 3 the outer ring copied the single inner pixel over everything: a 3 x 3 image with one bright
    corner gave all ones, and a 3 x N image a map that never varied across its 3 rows. Such an image is padded
    as thinner ones are: the bright corner's pixel is the most attended, the far one the least."""
    h, w = hw
    lr = torch.full((1, 3, h, w), -0.5)
    lr[..., 0, 0] = 0.9
    m = att.edge(sigma=0).maps(lr)[0, 0]
    assert m[0, 0] == m.max() and m[-1, -1] == m.min() and float(m.max() - m.min()) > 0.1
    if min(hw) == 3 and max(hw) > 3:
        assert not torch.equal(m[0], m[-1])  # the rows differ


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_edge_peaks_on_the_step(sigma):
    lr = torch.full((1, 3, 13, 17), -0.8)
    lr[..., 9:] = 0.8  # vertical step between columns 8 and 9
    A = att.edge(sigma=sigma)(lr)[0, 0]
    cols = A.argmax(dim=1)
    assert set(cols.tolist()) <= {8, 9}
    assert float(A[:, :4].max()) < 1e-6 and float(A[:, 14:].max()) < 1e-6  # flat ground: nothing
    assert float(A[:, 8:10].min()) > 0.99  # the whole edge line is at the top


# ------------------------------------------------------------------------------------------ gaussian
@pytest.mark.parametrize("hw", [(13, 17), (16, 10)])
def test_gaussian_centred_symmetric_and_formula(hw):
    h, w = hw
    sigma = 0.3
    A = att.gaussian(sigma=sigma)(_rand_lr(B=1, h=h, w=w))[0, 0]
    torch.testing.assert_close(A, A.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(A, A.flip(1), rtol=0, atol=0)
    y = np.arange(h) - (h - 1) / 2
    x = np.arange(w) - (w - 1) / 2
    m = np.exp(-0.5 * (y[:, None] / (sigma * h)) ** 2 - 0.5 * (x[None] / (sigma * w)) ** 2)
    np.testing.assert_allclose(A.numpy(), _minmax64(m[None])[0], atol=1e-6, rtol=0)
    # the maximum is at the centre pixel(s)
    cy, cx = [(n - 1) // 2 for n in hw]
    assert float(A[cy, cx]) == 1.0 and float(A[cy + (h + 1) % 2, cx + (w + 1) % 2]) == 1.0


# ------------------------------------------------------------------------------------------ sift
def _blob_image(h=32, w=48):
    """Dark Gaussian-blob/checker pattern on the left third, flat grey elsewhere."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full((h, w), -0.2)
    for cy, cx in [(8, 6), (22, 10), (14, 14)]:
        img += 0.9 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2))
    img[24:30, 2:8] = np.where((yy[24:30, 2:8] + xx[24:30, 2:8]) % 2 == 0, -1.0, 1.0)
    return torch.tensor(np.clip(img, -1, 1), dtype=torch.float32)[None, None]


def test_sift_map_is_larger_on_structure_than_on_flat_ground():
    lr = _blob_image()
    A = att.sift()(lr)[0, 0]
    assert float(A[:, :18].mean()) > 5 * float(A[:, 30:].mean())
    assert int(A.argmax()) % 48 < 18
    assert float(A[:, 34:].max()) < 0.05


def test_sift_keypoint_at_a_single_blob():
    h, w = 24, 24
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = -0.5 + 1.2 * np.exp(-((yy - 9) ** 2 + (xx - 15) ** 2) / (2 * 2.5**2))
    kps = Sift().keypoints(img)
    # one location, once (OpenCV reports it once per orientation; the density must not count those)
    assert len(kps) == 1
    # mapped back from the upscaled image to LR pixel coordinates, pixel centres aligned ((x + 0.5) / f - 0.5: the
    # bare x / f put it about 0.4 LR px off, which d < 0.5 let through)
    assert abs(kps[0, 0] - 15) < 0.15 and abs(kps[0, 1] - 9) < 0.15
    # the blob's scale: sigma_k = size / 2 in LR px is of the order of the blob's sigma (2.5)
    assert 1.25 < kps[0, 2] < 5.0


@pytest.mark.parametrize("side, centre", [(200, (100.0, 100.0)), (200, (80.0, 120.0)), (40, (20.0, 17.0)),
                                          (64, (30.0, 21.0))])
def test_sift_keypoint_lies_on_its_blob(side, centre):
    """OpenCV's default SIFT doubles its first octave with a half-pixel-centred resize and halves the coordinates
    back without the half-pixel term: every keypoint came out 0.25 detector pixels right of and below its feature
    (0.93 HR px at x4 on a 128-px LR; 200 px: +0.233 LR px; on a 64-px LR, enlarged x2 for the detector: +0.10).
    A blob's keypoint lies on the blob's centre, to the detector's sub-pixel fit (0.017-0.032 LR px here)."""
    x0, y0 = centre
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    img = -0.8 + 1.6 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * 4.0**2))
    kps = Sift().keypoints(img)
    near = kps[np.hypot(kps[:, 0] - x0, kps[:, 1] - y0).argmin()]
    assert abs(near[0] - x0) < 0.04 and abs(near[1] - y0) < 0.04, near


def test_sift_splat_formula():
    kps = np.array([[3.0, 4.0, 1.5], [10.2, 1.7, 0.8]])
    m = Sift.splat(kps, 7, 13)
    yy, xx = np.mgrid[0:7, 0:13]
    ref = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s**2)) for x, y, s in kps)
    np.testing.assert_allclose(m, ref, rtol=1e-12, atol=1e-14)
    assert Sift.splat(np.zeros((0, 3)), 7, 13).shape == (7, 13)
    # over several tiles (each sums the keypoints that reach it: the whole grid's product took 15 s at a 2048²
    # LR): small and wide keypoints, some off the grid, against the formula over the whole grid
    rng = np.random.default_rng(0)
    h, w, n = 300, 260, 400
    kps = np.stack([rng.uniform(-20, w + 20, n), rng.uniform(-20, h + 20, n), np.exp(rng.normal(0.3, 1.0, n))], 1)
    kps[:3, 2] = (0.2, 40.0, 90.0)
    s = np.maximum(kps[:, 2], 0.5)[:, None]
    gy = np.exp(-0.5 * ((np.arange(h)[None, :] - kps[:, 1:2]) / s) ** 2)
    gx = np.exp(-0.5 * ((np.arange(w)[None, :] - kps[:, 0:1]) / s) ** 2)
    np.testing.assert_allclose(Sift.splat(kps, h, w), gy.T @ gx, rtol=1e-12, atol=1e-14)


def test_sift_map_under_a_callers_numpy_error_mode():
    """A caller's np.seterr(all="raise") (or warnings as errors) made the splat's far Gaussian tails, which underflow
    to 0 as meant, a FloatingPointError: attention="sift" failed in yoda.sample and `yoda upscale`."""
    lr = _blob_image()
    ref = att.sift()(lr)
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(att.sift()(lr).numpy(), ref.numpy())


def test_sift_no_keypoints_defined():
    # smooth ramp: no extremum in scale space -> no keypoint -> zero map -> all ones
    ramp = torch.linspace(-0.5, 0.5, 17).expand(1, 3, 13, 17).contiguous()
    f = att.sift()
    assert len(f.keypoints(luma(ramp)[0, 0].double().numpy())) == 0
    assert bool((f(ramp) == 1).all())


# ------------------------------------------------------------------------------------------ bad input
BAD = [
    (lambda: np.zeros((1, 3, 8, 8)), TypeError, "lr must be a torch.Tensor"),
    (lambda: torch.zeros(3, 8, 8), ValueError, "lr must be 4-D"),
    (lambda: torch.zeros(1, 2, 8, 8), ValueError, "lr must have 1 .* or 3"),
    (lambda: torch.zeros(1, 4, 8, 8), ValueError, "lr must have 1 .* or 3"),
    (lambda: torch.zeros(1, 3, 0, 8), ValueError, "lr is empty"),
    (lambda: torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError,
     r"lr must be a floating-point .*got torch.uint8: lr.float\(\) / 127.5 - 1 makes 8-bit values \[-1, 1\]"),
    (lambda: torch.zeros(1, 3, 8, 8, dtype=torch.int16), TypeError, r"got torch.int16$"),
    (lambda: torch.zeros(1, 3, 8, 8).index_fill_(2, torch.tensor([3]), float("nan")), ValueError, "lr contains NaN"),
    (lambda: torch.zeros(1, 3, 8, 8).index_fill_(3, torch.tensor([1]), float("inf")), ValueError, "lr contains NaN or Inf"),
    (lambda: torch.rand(1, 3, 8, 8) * 255, ValueError, r"lr values must lie in \[-1, 1\]"),
    (lambda: torch.full((1, 3, 8, 8), -1.3), ValueError, r"lr values must lie in \[-1, 1\] .*lr.clamp\(-1, 1\)"),
    (lambda: torch.zeros(1, 3, 8, 8, device="meta"), ValueError, "lr is on the meta device"),
]


def test_a_resizes_overshoot_is_clamped_as_yoda_sample_clamps_it():
    """torch's bicubic downscale of 8-bit photographs overshoots [-1, 1] (to -1.07 and 1.18): yoda.sample
    refused beyond 0.02, the extractors beyond 1e-4 (refusing what yoda.sample took). Both now clamp up to
    LR_MARGIN, the same for each, and refuse beyond it."""
    import yoda
    from yoda.attention.classic import LR_MARGIN

    g = torch.Generator().manual_seed(0)
    lr = (torch.rand(1, 3, 8, 8, generator=g) * 2 - 1) * 1.18
    assert lr.max() > 1.1
    for name in ("edge", "gaussian", "sift"):
        assert torch.equal(att.get(name)(lr), att.get(name)(lr.clamp(-1, 1))), name
    net = yoda.load("yoda", "default")
    assert torch.equal(yoda.sample(net, lr, seed=0, progress=False),
                       yoda.sample(net, lr.clamp(-1, 1), seed=0, progress=False))
    far = torch.full((1, 3, 8, 8), 1.0 + LR_MARGIN + 0.01)
    for f in (att.edge(), lambda x: yoda.sample(net, x, progress=False)):
        with pytest.raises(ValueError, match=r"lr values must lie in \[-1, 1\]"):
            f(far)


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
@pytest.mark.parametrize("i", range(len(BAD)), ids=[b[2].split(" ")[-1] + str(i) for i, b in enumerate(BAD)])
def test_bad_inputs_raise_naming_lr(name, i):
    make, exc, msg = BAD[i]
    with pytest.raises(exc, match=msg):
        EXTRACTORS[name]()(make())


def test_bad_parameters():
    with pytest.raises(ValueError, match="sigma"):
        att.edge(sigma=-1)
    with pytest.raises(ValueError, match="sigma"):
        att.gaussian(sigma=0)
    for bad in (float("nan"), float("inf")):  # a number, not a usable value: ValueError, as 0 and -1 are
        with pytest.raises(ValueError, match="sigma must be a finite number"):
            att.gaussian(sigma=bad)
    with pytest.raises(ValueError, match="min_size"):
        att.sift(min_size=0)
    with pytest.raises(ValueError, match="n_features"):
        att.sift(n_features=-2)
    # numpy ints as everywhere else ("min_size must be a positive int, got np.int64(64)")
    assert att.sift(min_size=np.int64(64), n_features=np.int32(5)).min_size == 64
    for bad in (1.5, "3"):
        with pytest.raises(TypeError, match="^n_features must be an int >= 0"):
            att.sift(n_features=bad)
    for bad in (True, "1"):
        with pytest.raises(TypeError, match="sigma must be a finite number"):
            att.edge(sigma=bad)
    # 10**400 raised math's bare "int too large to convert to float"; n_features 2**31 was taken and failed at the
    # first map, in OpenCV ("integer won't fit into a C int")
    for make in (att.edge, att.gaussian):
        with pytest.raises(ValueError, match="^sigma must be a finite number, got an int past float64's range$"):
            make(sigma=10**400)
    with pytest.raises(ValueError, match="^contrast_threshold must be a finite number, got an int past"):
        att.sift(contrast_threshold=10**400)
    with pytest.raises(ValueError, match=r"^n_features must be an int >= 0 \(0 = all\) and < 2\*\*31, got 2147483648$"):
        att.sift(n_features=2**31)
    assert att.sift(n_features=2**31 - 1).n_features == 2**31 - 1
    # the image given to the factory (edge(lr) for edge()(lr)) printed the whole tensor in an 8 kB message
    lr = torch.zeros(1, 3, 40, 40)
    for make, param in ((att.edge, "sigma"), (att.gaussian, "sigma"), (att.sift, "min_size")):
        with pytest.raises(TypeError) as e:
            make(lr)
        assert str(e.value) == (f"{param} must be a number, got a tensor of shape (1, 3, 40, 40): {make.__name__}(...) "
                                f"makes an extractor, which takes the image: yoda.attention.{make.__name__}()(lr)")
    assert att.edge(sigma=np.float32(1.5)).sigma == 1.5 and att.gaussian(sigma=np.float64(0.25)).sigma == 0.25


# ------------------------------------------------------------------------------------------ get()
def test_get_resolves_names_and_kwargs():
    assert isinstance(att.get("edge"), att.Edge)
    assert att.get("edge", sigma=2.5).sigma == 2.5
    assert att.get("Gaussian", sigma=0.1).sigma == 0.1
    assert isinstance(att.get("sift"), att.Sift)
    # the get()'d extractor computes what the factory's does
    lr = _rand_lr()
    torch.testing.assert_close(att.get("edge", sigma=0.5)(lr), att.edge(sigma=0.5)(lr), rtol=0, atol=0)


def test_get_errors():
    with pytest.raises(ValueError, match=r"unknown attention 'canny'.*edge, gaussian, sift, dino-vits8:PATH"):
        att.get("canny")
    with pytest.raises(ValueError, match="needs a local weights file"):
        att.get("dino-vits8")
    with pytest.raises(ValueError, match="takes no ':PATH'"):
        att.get("edge:/tmp/x.pth")
    with pytest.raises(FileNotFoundError, match="/nonexistent/dino.pth"):
        att.get("dino-resnet50:/nonexistent/dino.pth")
    with pytest.raises(TypeError, match="attention name must be a str"):
        att.get(3)


# ------------------------------------------------------------------------------------------ figure
def test_attention_figure_panels_show_the_masks():
    from yoda.attention import figure as fig

    h, w = 16, 20
    A = torch.zeros(1, 1, h, w)
    A[..., :, :10] = 1.0  # left half important
    A[..., :, 10:15] = 0.25  # active once tau <= 0.25, i.e. t <= 850 at l = 0.6
    lr = _rand_lr(B=1, h=h, w=w)
    ts = (1000, 850, 600)
    img = att.attention_figure(lr, A, lower_bound=0.6, T=1000, ts=ts)
    Hp, Wp = fig._panel_size(h, w)
    assert (Hp, Wp) == (160, 200)  # 16 px blown up x10 (nearest)
    # three masks: the top row's three panels and the colour key after them set the width (the key was left out
    # unless the masks outnumbered the top row's panels)
    assert img.size == (fig._GAP + 4 * (Wp + fig._GAP), fig._LABEL_H + 4 + 2 * (fig._LABEL_H + Hp + fig._GAP) + fig._GAP)
    arr = np.asarray(img)
    key = np.asarray(fig.colour_key(Hp, Wp, [(t, t / 1000 - 0.6) for t in ts], fig._font()))
    x0 = fig._GAP + 3 * (Wp + fig._GAP)
    assert np.array_equal(arr[fig._LABEL_H + 4 + fig._LABEL_H:][:Hp, x0 : x0 + Wp], key)
    y0 = fig._LABEL_H + 4 + (fig._LABEL_H + Hp + fig._GAP) + fig._LABEL_H
    for i, t in enumerate(ts):
        x0 = fig._GAP + i * (Wp + fig._GAP)
        panel = arr[y0 : y0 + Hp, x0 : x0 + Wp]
        want = mask_at(A, t, 1000, 0.6)[0, 0].numpy().repeat(10, 0).repeat(10, 1)
        assert np.array_equal(panel.min(axis=2) == 255, want), t
        assert np.array_equal(panel.max(axis=2) == 0, ~want), t
    # top row: the LR panel shows the LR pixels (nearest, x10)
    lr_panel = arr[fig._LABEL_H + 4 + fig._LABEL_H :][:Hp, fig._GAP : fig._GAP + Wp]
    lr_u8 = ((lr[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(lr_panel[::10, ::10], lr_u8)
    # the colour map is OpenCV's viridis: 0 -> dark purple, 1 -> yellow
    cm = fig.colormap(np.array([[0.0, 1.0]]))
    assert cm[0, 0, 2] > cm[0, 0, 1] and cm[0, 1, 0] > 200 and cm[0, 1, 2] < 80
    # default ts: 5 values from T down to just above lower_bound * T (1000, 920, .., 680): the last panel is the
    # mask at t = 680 (the A = 0 columns still inactive), not the full mask of t = 600
    img2 = att.attention_figure(lr, A)
    assert img2.size[0] == fig._GAP + 5 * (Wp + fig._GAP)
    x0 = fig._GAP + 4 * (Wp + fig._GAP)
    last = np.asarray(img2)[y0 : y0 + Hp, x0 : x0 + Wp]
    assert np.array_equal(last.min(axis=2) == 255, mask_at(A, 680, 1000, 0.6)[0, 0].numpy().repeat(10, 0).repeat(10, 1))
    assert not (last == 255).all()
    assert float(pixel_update_ratio(A, 0.6)[0]) == pytest.approx((10 * 1.0 + 5 * 0.85 + 5 * 0.6) / 20)
    # lower_bound >= 1 (plain sampling): one panel, t = T, every pixel active
    img3 = att.attention_figure(lr, A, lower_bound=1.2)
    assert img3.size[0] == fig._GAP + 4 * (Wp + fig._GAP)  # the top row's three panels and the key set the width
    assert (np.asarray(img3)[y0 : y0 + Hp, fig._GAP : fig._GAP + Wp] == 255).all()
    # ratio= (a sampling run's own update ratio) changes the title alone
    a, b = (np.asarray(att.attention_figure(lr, A, ts=ts, ratio=r)) for r in (0.1, 0.9))
    title = fig._LABEL_H + 4
    assert not np.array_equal(a[:title], b[:title]) and np.array_equal(a[title:], b[title:])


def test_attention_figure_of_a_runs_steps():
    """steps=N: the masks drawn are those of the N steps a run visits (Schedule.respace, trailing: t = 1000 and 500
    at N = 2, the full mask of the last step too; later full ones are not drawn), and the title's ratio is the exact
    one over them, labelled with N; above MAX_STEP_PANELS steps five of them. ts given wins over the steps' own."""
    from yoda.attention import figure as fig

    h, w = 16, 20
    A = torch.zeros(1, 1, h, w)
    A[..., :, :10] = 1.0
    A[..., :, 10:15] = 0.25
    lr = _rand_lr(B=1, h=h, w=w)
    from PIL import ImageDraw

    drawn, orig = [], ImageDraw.ImageDraw.text

    def masks_drawn(**kw):
        drawn.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: drawn.append(t) or orig(self, xy, t, *a, **k))
            img = att.attention_figure(lr, A, **kw)
        return img, [t.split()[0] for t in drawn if t.startswith("M(") and t.endswith("%")]  # the panels' labels

    img, masks = masks_drawn(steps=2)
    assert masks == ["M(t=1000)", "M(t=500)"]
    want = (10 / 20 + 1.0) / 2  # t = 1000: tau 0.4, the A = 1 half; t = 500: tau -0.1, every pixel
    assert fig.update_ratio(A, 1000, 0.6, 2) == (want, "2 steps of T=1000")
    assert fig.update_ratio(A, 1, 0.6, 1)[1] == "1 step of T=1"  # (it said "1 steps")
    for bad in (2.0, -1.0, float("nan"), "0.5"):  # drawn as "=2.000" / "=nan" before
        with pytest.raises(ValueError, match=r"^ratio must be a pixel update ratio in \[0, 1\], got "):
            att.attention_figure(lr, A, ratio=bad)
    assert any(f"pixel update ratio (2 steps of T=1000)={want:.3f}" in t for t in drawn), drawn
    assert "M(t=1000) 50%" in drawn and "M(t=500) 100%" in drawn
    Hp, Wp = fig._panel_size(h, w)
    y0 = fig._LABEL_H + 4 + (fig._LABEL_H + Hp + fig._GAP) + fig._LABEL_H
    last = np.asarray(img)[y0 : y0 + Hp, fig._GAP + (Wp + fig._GAP) :][:, :Wp]
    assert (last == 255).all()
    # up to the first full mask (six steps drew three full ones alike: a visual review)
    assert masks_drawn(steps=fig.MAX_STEP_PANELS)[1] == [f"M(t={t})" for t in (1000, 833, 667, 500)]
    assert any(t.endswith("masks at 4 of its 6 steps") for t in drawn), drawn
    # more steps than panels: 5 of the run's own steps, those whose mask grows and the first full one, as the title
    # says (it drew the default t = 1000, 920, ... of "every step", under a title of the 8 steps' ratio)
    img, masks = masks_drawn(steps=8)
    assert masks == [f"M(t={t})" for t in (1000, 875, 750, 625, 500)]
    assert any(t.endswith("masks at 5 of its 8 steps") and "(8 steps of T=1000)" in t for t in drawn), drawn
    assert masks_drawn(steps=50)[1] == [f"M(t={t})" for t in (1000, 880, 740, 620, 600)]  # 20 grow: 4 spread
    assert fig.growing_masks([(10, 1.0), (8, 0.8), (6, 0.6)], 5) == [(10, 1.0), (8, 0.8), (6, 0.6)]  # none full
    assert masks_drawn(steps=2, ts=[850])[1] == ["M(t=850)"]  # ts decides the panels
    with pytest.raises(ValueError, match="steps must be in"):
        att.attention_figure(lr, A, steps=1001)


def test_attention_figure_hr_attention_and_grey(tmp_path):
    """A grey 16 px LR with an HR (64 px) map: panels sized from A (64 px x3 = 192), the LR blown up x12 and grey
    in all three channels, A in viridis (OpenCV's table), the overlay the rounded mean of the two, and the masks
    at A's own resolution."""
    from yoda.attention import figure as fig
    import cv2

    lr = _rand_lr(B=1, C=1, h=16, w=16)
    A = att.edge()(F.interpolate(lr, scale_factor=4, mode="nearest").clamp(-1, 1))  # HR-size A, not symmetric
    ts = [1000, 700]
    img = att.attention_figure(lr, A[0], ts=ts)
    img.save(tmp_path / "fig.png")
    arr = np.asarray(img)
    P, gap, lab = 192, fig._GAP, fig._LABEL_H
    assert img.mode == "RGB" and img.size == (gap + 4 * (P + gap), lab + 4 + 2 * (lab + P + gap) + gap)

    def panel(row, col):
        y0 = lab + 4 + row * (lab + P + gap) + lab
        x0 = gap + col * (P + gap)
        return arr[y0 : y0 + P, x0 : x0 + P].astype(np.int64)

    grey = ((lr[0, 0].double() + 1) * 127.5).round().numpy().astype(np.int64)
    want_lr = np.repeat(grey.repeat(12, 0).repeat(12, 1)[..., None], 3, axis=2)
    assert np.array_equal(panel(0, 0), want_lr)
    u8 = np.clip(np.rint(A[0, 0].double().numpy() * 255), 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(u8, cv2.COLORMAP_VIRIDIS)[:, :, ::-1].astype(np.int64).repeat(3, 0).repeat(3, 1)
    assert np.array_equal(panel(0, 1), heat)
    assert np.array_equal(panel(0, 2), np.rint(0.5 * want_lr + 0.5 * heat).astype(np.int64))
    for i, t in enumerate(ts):
        m = (A[0, 0] >= torch.tensor(t / 1000 - 0.6, dtype=torch.float32)).numpy().repeat(3, 0).repeat(3, 1)
        assert 0 < m.mean() < 1  # a real mask, neither empty nor full
        assert np.array_equal(panel(1, i), np.where(m[..., None], 255, 0).repeat(3, axis=2)), t


def test_attention_figure_enlarges_the_lr_by_a_whole_factor():
    """A 100 px LR with its 400 px HR map (``yoda attention`` draws the map at the HR size) was drawn in 384 px
    panels: the LR enlarged x3.84 (nearest), its pixels 3 or 4 px wide. The panel is now 300 px, the LR x3 and
    every LR pixel a 3 x 3 block; the map is shrunk by area x4."""
    from yoda.attention import figure as fig

    lr = _rand_lr(B=1, h=100, w=100, seed=7)
    A = att.edge()(F.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1))
    assert fig._panel_size(400, 400) == (384, 384) and fig._panel_size(400, 400, lr_hw=(100, 100)) == (300, 300)
    assert fig._panel_size(400, 600, lr_hw=(100, 150)) == (200, 300)  # 256 x 384 cut to x2
    assert fig._panel_size(64, 64, lr_hw=(64, 64)) == fig._panel_size(64, 64) == (192, 192)  # LR-size map: as before
    arr = np.asarray(att.attention_figure(lr, A, ts=[1000]))
    lab, gap, P = fig._LABEL_H, fig._GAP, 300
    lr_panel = arr[lab + 4 + lab : lab + 4 + lab + P, gap : gap + P]
    lr_u8 = ((lr[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(lr_panel, lr_u8.repeat(3, 0).repeat(3, 1))


def _text_canvas(size, texts):
    """A white RGB canvas of size (w, h) with each (string, (x, y)) drawn in black in the figure's font, each on
    its own canvas and combined by the darker pixel (so it shows what each text alone would look like)."""
    from PIL import Image, ImageDraw
    from yoda.drawing import font

    out = np.full((size[1], size[0], 3), 255, np.uint8)
    for s, xy in texts:
        im = Image.new("RGB", size, (255, 255, 255))
        ImageDraw.Draw(im).text(xy, s, fill=(0, 0, 0), font=font())
        out = np.minimum(out, np.asarray(im))
    return out


def _ink_right(s):
    """How far right of its origin s reaches in the figure's font, measured on the drawn pixels."""
    arr = _text_canvas((1000, 40), [(s, (0, 0))])
    return int(np.nonzero((arr < 255).any(axis=(0, 2)))[0].max()) + 1


@pytest.mark.parametrize(
    "active, total, want",
    [
        (0, 4096, "0%"), (4096, 4096, "100%"), (2048, 4096, "50%"), (1, 3, "33%"), (2, 3, "67%"),
        (4, 4096, "0.1%"),  # 0.098 %: four white pixels are not "0%"
        (20, 4096, "0.5%"), (21, 4096, "1%"),  # 0.49 % would round to 0, 0.51 % to 1
        (1, 100_000, "<0.1%"), (1, 2, "50%"),
        (4091, 4096, "99.9%"),  # 99.88 %: a visible black patch is not "100%"
        (4076, 4096, "99.5%"), (4075, 4096, "99%"),
        (99_999, 100_000, ">99.9%"), (383 * 36 - 1, 383 * 36, ">99.9%"),
    ],
)
def test_percent_label_is_0_or_100_only_when_exact(active, total, want):
    from yoda.attention.figure import percent_label

    assert percent_label(active, total) == want


def test_percent_label_bad_counts():
    from yoda.attention.figure import percent_label

    for args in [(-1, 10), (11, 10), (0, 0), (True, 10)]:
        message = rf"need 0 <= active <= total, total >= 1; got {args[0]!r} of {args[1]!r}$"
        with pytest.raises(ValueError, match=message):
            percent_label(*args)


def test_ratio_text_says_which_steps_it_counts():
    from yoda.attention.figure import ratio_text

    assert ratio_text(0.8125, "every step of T=1000") == "pixel update ratio (every step of T=1000)=0.812"
    assert ratio_text(0.177, "this run's steps") == "pixel update ratio (this run's steps)=0.177"
    assert ratio_text(1.0, "every step of T=3") == "pixel update ratio (every step of T=3)=1.000"
    assert ratio_text(0.99996, "this run's steps") == "pixel update ratio (this run's steps)=>0.999"
    assert ratio_text(0.0002, "this run's steps") == "pixel update ratio (this run's steps)=<0.001"
    assert ratio_text(0.0, "this run's steps") == "pixel update ratio (this run's steps)=0.000"


def _count_ratio(A, T, lb):
    """By brute force: refined (pixel, step) pairs over t = 1..T, in integers, with mask_at."""
    return sum(int(mask_at(A, t, T, lb).sum()) for t in range(1, T + 1)) / (A.numel() * T)


@pytest.mark.parametrize("T", [1, 3, 7, 1000])
@pytest.mark.parametrize("lb", [0.0, 0.3, 0.6, 1.2])
def test_every_step_ratio_is_refine_fraction(T, lb):
    """The default title ratio is the exact share of (pixel, step) pairs refined over every step t = 1..T:
    refine_fraction(A, range(T), T, l) (float32 sums) and the integer count agree, also for A values lying
    exactly on the float32 thresholds; it tends to pixel_update_ratio for large T."""
    from yoda.masks import refine_fraction, tau_at

    g = torch.Generator().manual_seed(T)
    A = torch.rand(1, 1, 17, 23, generator=g)
    on = torch.tensor([max(0.0, min(1.0, tau_at(t, T, lb))) for t in range(1, T + 1)], dtype=torch.float32)
    A.view(-1)[: min(T, 17 * 23 // 2)] = on[torch.randperm(T, generator=g)[: min(T, 17 * 23 // 2)]]
    r = float(every_step_ratio(A, T, lb)[0])
    assert r == _count_ratio(A, T, lb)
    assert r == pytest.approx(float(refine_fraction(A, range(T), T, lb)[0]), abs=2e-6)
    if T == 1000:
        assert abs(r - float(pixel_update_ratio(A, lb)[0])) <= 1.0 / T + 1e-6


def test_attention_figure_title_and_labels_are_exact():
    """The drawn title and mask labels are these strings: masks at 0.06 % and 99.88 % say "0.1%" and "99.9%"
    (not "0%" / "100%"); the default ratio is the one over every step of T (T=3: the mean of its three masks,
    not the large-T limit mean(min(1, A + l))); a given ratio is labelled as the run's own."""
    from yoda.attention import figure as fig

    A = torch.full((1, 1, 40, 40), 0.35)
    A[0, 0, 0, 0] = 1.0  # alone above tau(1000) = 0.4
    A[0, 0, 0, 1:3] = 0.0  # below tau(900) = 0.3: 1598 of 1600 active
    lr = _rand_lr(B=1, h=40, w=40)
    Hp, Wp = fig._panel_size(40, 40)
    title_h, row_h = fig._LABEL_H + 4, fig._LABEL_H + Hp + fig._GAP
    labels = ["M(t=1000) 0.1%", "M(t=900) 99.9%", "M(t=600) 100%"]

    def drawn(img, title, labels=labels, top=("LR", "attention A", "A over LR")):
        arr = np.asarray(img)
        texts = [(title, (fig._GAP, 4))]
        texts += [(s, (fig._GAP + i * (Wp + fig._GAP), title_h + fig._LABEL_Y)) for i, s in enumerate(top)]
        texts += [(s, (fig._GAP + i * (Wp + fig._GAP), title_h + row_h + fig._LABEL_Y)) for i, s in enumerate(labels)]
        ref = _text_canvas(img.size, texts)
        for y0 in (0, title_h, title_h + row_h):  # the title strip and the two label strips (above the frames)
            y1 = y0 + (title_h if y0 == 0 else fig._LABEL_H - 1)
            if not np.array_equal(arr[y0:y1], ref[y0:y1]):
                return False
        return True

    r = _count_ratio(A, 1000, 0.6)
    img = att.attention_figure(lr, A, ts=[1000, 900, 600])
    assert drawn(img, f"lower_bound=0.6  T=1000  pixel update ratio (every step of T=1000)={r:.3f}" + fig.MASKS_NOTE)
    assert not drawn(img, f"lower_bound=0.6  T=1000  pixel update ratio (every step of T=1000)={r + 0.001:.3f}"
                     + fig.MASKS_NOTE)
    img = att.attention_figure(lr, A, ts=[1000, 900, 600], ratio=0.177)
    assert drawn(img, "lower_bound=0.6  T=1000  pixel update ratio (this run's steps)=0.177" + fig.MASKS_NOTE)
    # label: what the map is, first in the title and on its panel (`yoda attention` outputs were indistinguishable)
    assert np.array_equal(np.asarray(att.attention_figure(lr, A, ts=[1000], label=" ")),  # blank: IndexError before
                          np.asarray(att.attention_figure(lr, A, ts=[1000])))
    with pytest.raises(TypeError, match="label must be a str or None, got int"):
        att.attention_figure(lr, A, label=3)
    img = att.attention_figure(lr, A, ts=[1000, 900, 600], ratio=0.177, label="sift attention of a.png, x4")
    assert drawn(img, "sift attention of a.png, x4:  lower_bound=0.6  T=1000  pixel update ratio (this run's "
                      "steps)=0.177" + fig.MASKS_NOTE, top=("LR", "attention A (sift)", "A over LR"))
    img = att.attention_figure(lr, A, ts=[1000, 900, 600], ratio=0.177, label="my map")  # it drew "attention A (my)"
    assert drawn(img, "my map:  lower_bound=0.6  T=1000  pixel update ratio (this run's steps)=0.177" + fig.MASKS_NOTE,
                 top=("LR", "attention A", "A over LR"))
    # T = 3: the default ts are 3 and 2 (t = 1 <= 0.6 T has a full mask, not drawn); the title is the mean over
    # every step, the full mask included
    A3 = att.edge()(lr)
    fracs = [float(mask_at(A3, t, 3, 0.6).double().mean()) for t in (3, 2, 1)]
    assert fracs[2] == 1.0 and fracs[1] < 1.0
    assert abs(sum(fracs) / 3 - float(pixel_update_ratio(A3, 0.6)[0])) > 0.05  # the limit would be wrong here
    assert float(every_step_ratio(A3, 3, 0.6)[0]) == pytest.approx(sum(fracs) / 3, abs=1e-12)
    labels3 = [f"M(t={t}) {fig.percent_label(int(mask_at(A3, t, 3, 0.6).sum()), 1600)}" for t in (3, 2)]
    title3 = f"lower_bound=0.6  T=3  pixel update ratio (every step of T=3)={sum(fracs) / 3:.3f}" + fig.MASKS_NOTE
    assert drawn(att.attention_figure(lr, A3, T=3), title3, labels3)


def test_colour_key_labels_do_not_overlap(monkeypatch):
    """At l = 0.95 the thresholds lie 2 px apart on the key and their M(t=...) labels printed over each other; they
    are now a line apart, each with a leader line to its threshold, and inside the key."""
    from PIL import ImageDraw

    from yoda.attention import figure as fig

    at = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, s, *a, **k: at.append((xy, s))
                        or real(self, xy, s, *a, **k))
    h = 160
    fig.colour_key(h, 120, [(t, t / 1000 - 0.95) for t in (1000, 990, 980, 970, 960)])
    ys = [y for (x, y), s in at if s.startswith("M(t=")]
    assert [s for _, s in at if s.startswith("M(t=")] == [f"M(t={t})" for t in (1000, 990, 980, 970, 960)]
    assert all(b - a >= fig._KEY_LINE for a, b in zip(ys, ys[1:])) and ys[-1] <= h - fig._KEY_LINE
    at.clear()  # near the top (l = 0): pushed down, not off the key's top
    fig.colour_key(h, 120, [(t, t / 1000) for t in (1000, 995, 990, 985)])
    ys = [y for (x, y), s in at if s.startswith("M(t=")]
    assert ys[0] == fig._LABEL_H + 6 - 7 and all(b - a == fig._KEY_LINE for a, b in zip(ys, ys[1:]))
    at.clear()  # thresholds far apart: each label at its own line, as before
    fig.colour_key(h, 120, [(1000, 0.4), (600, 0.0)])
    top, n = fig._LABEL_H + 6, h - fig._LABEL_H - 12
    assert [y for (x, y), s in at if s.startswith("M(t=")] == [top + round(0.6 * (n - 1)) - 7, top + n - 1 - 7]


def test_attention_figure_keys_colour_to_a_and_the_masks_thresholds(monkeypatch):
    """No picture said what a colour of A is worth, nor where each mask's threshold lies on that scale: a key runs
    from A = 1 (top) to 0, with a white line at each drawn mask's tau = t/T - l; the attention figure puts it in
    its top row's free column."""
    from yoda.attention import figure as fig

    h, thresholds = 160, [(1000, 0.4), (900, 0.3), (600, 0.0)]
    key = np.asarray(fig.colour_key(h, 120, thresholds))
    top, n = fig._LABEL_H + 6, h - fig._LABEL_H - 12
    col = key[top:top + n, 5]
    ramp = fig.colormap(np.linspace(1.0, 0.0, n)[:, None])[:, 0]
    white = {int(round((1 - tau) * (n - 1))) for _, tau in thresholds}
    rows = [i for i in range(n) if i not in white]
    assert np.array_equal(col[rows], ramp[rows]) and all((col[i] == 255).all() for i in white)
    calls = []
    real = fig.colour_key
    monkeypatch.setattr(fig, "colour_key", lambda *a: (calls.append(a[2]), real(*a))[1])
    lr = _rand_lr(B=1, h=40, w=40)
    A = att.edge()(lr)
    att.attention_figure(lr, A)  # default: 5 masks, so the top row has two free columns
    assert calls == [[(t, t / 1000 - 0.6) for t in (1000, 920, 840, 760, 680)]]
    calls.clear()
    att.attention_figure(lr, A, ts=[1000, 800])  # two masks: the key still has its column (it had none)
    assert calls == [[(1000, 1000 / 1000 - 0.6), (800, 800 / 1000 - 0.6)]]


@pytest.mark.parametrize("hw", [(16, 120), (120, 16), (40, 2000)], ids=["short", "narrow", "wide-short"])
def test_colour_key_is_whole_beside_short_or_narrow_panels(monkeypatch, hw):
    """The key took the panel's height and the column's width: beside a 51 px tall panel (16 x 120 LR) its five
    labels were printed over each other and over its heading, in a 40 x 2000 one its bar was 6 px tall, and in a
    column of a narrow image (120 x 16) its labels were cut at "M(t=1". It now has at least key_size: every label
    whole, inside the key, a line apart; the top row grows to hold it and the canvas holds its column."""
    from PIL import ImageDraw

    from yoda.attention import figure as fig
    from yoda.drawing import font

    keys, at = [], []
    real_key, real_text = fig.colour_key, ImageDraw.ImageDraw.text
    monkeypatch.setattr(fig, "colour_key", lambda *a: keys.append(real_key(*a)) or keys[-1])
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, s, *a, **k: at.append((xy, s))
                        or real_text(self, xy, s, *a, **k))
    lr = _rand_lr(B=1, h=hw[0], w=hw[1], seed=2)
    img = att.attention_figure(lr, torch.rand(1, 1, *hw, generator=torch.Generator().manual_seed(1)))
    (key,) = keys
    ts = (1000, 920, 840, 760, 680)
    need = fig.key_size([(t, t / 1000 - 0.6) for t in ts])
    assert key.size[1] >= need[0] and key.size[0] >= need[1]
    assert need[0] > fig._panel_size(*hw)[0] or need[1] > fig._panel_size(*hw)[1]  # the case the key outgrew
    drawn = at[at.index(((0, 0), "value of A")):]  # the key's own texts, after the figure's
    boxes = []
    for (x, y), s in drawn:
        l, t, r, b = fig._ink(s, font())
        assert 0 <= x + l and x + r <= key.size[0] and 0 <= y + t and y + b <= key.size[1], s
        boxes.append((x + l, y + t, x + r, y + b))
    for i in range(len(boxes)):  # no text over another
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (drawn[i][1], drawn[j][1])
    assert [s for _, s in drawn if s.startswith("M(t=")] == [f"M(t={t})" for t in ts]
    assert img.size[0] >= key.size[0] + fig._GAP and img.size[1] >= key.size[1] + 2 * fig._LABEL_H
    with pytest.raises(ValueError, match=r"colour key of 5 thresholds needs at least \d+x\d+ px \(w x h\), got 40x"):
        fig.colour_key(need[0], 40, [(t, t / 1000 - 0.6) for t in ts])


@pytest.mark.parametrize(
    "hw, lb",
    [((24, 2), 0.6), ((2, 24), 0.6), ((64, 6), 0.6), ((16, 20), 0.6), ((64, 6), 1.2)],
    ids=["tall", "wide", "tall6x64", "normal", "tall-one-mask"],
)
def test_attention_figure_labels_fit_and_title_is_whole(hw, lb):
    """Tall images give narrow panels: each column is as wide as its widest label (panel centred in it), labels
    do not overlap or leave their column, and the canvas holds the whole title (wider than the three columns
    of a tall image with lower_bound >= 1) -- measured on drawn pixels."""
    from yoda.attention import figure as fig
    from yoda.drawing import font

    h, w = hw
    lr = _rand_lr(B=1, h=h, w=w, seed=4)
    A = att.edge()(lr)
    img = att.attention_figure(lr, A, lower_bound=lb)
    arr = np.asarray(img)
    Hp, Wp = fig._panel_size(h, w)
    ts = [1000, 920, 840, 760, 680] if lb < 1 else [1000]
    ratio = float(every_step_ratio(A, 1000, lb)[0])
    title = f"lower_bound={lb:g}  T=1000  " + fig.ratio_text(ratio, "every step of T=1000") + fig.MASKS_NOTE
    top = ["LR", "attention A", "A over LR"]
    bottom = [f"M(t={t}) {fig.percent_label(int(mask_at(A, t, 1000, lb).sum()), h * w)}" for t in ts]
    lay = fig._layout((Hp, Wp), top, bottom, title, font(), fig.key_size([(t, t / 1000 - lb) for t in ts]))
    assert img.size == (lay["width"], lay["height"])
    # the layout: columns as wide as the widest label's drawn ink, the canvas as wide as the title's
    cell_w = max([Wp] + [_ink_right(s) for s in top + bottom])
    assert lay["cell_w"] == cell_w and lay["panel_dx"] == (cell_w - Wp) // 2
    assert img.size[0] >= max(fig._GAP + max(3, len(ts)) * (cell_w + fig._GAP), 2 * fig._GAP + _ink_right(title))
    if lb >= 1:
        assert img.size[0] > fig._GAP + 3 * (cell_w + fig._GAP)  # widened for the title
    if hw[1] < 10:
        assert cell_w > Wp  # the narrow panels (about 32 px) got wider columns
    # the drawn text is exactly the texts of the layout, each alone (nothing clipped, nothing else)
    texts = lay["texts"]
    assert [s for s, _, _ in texts] == [title] + top + bottom
    ref = _text_canvas(img.size, [(s, xy) for s, xy, _ in texts])
    title_h, row_h = lay["title_h"], lay["row_h"]
    for y0, y1 in [(0, title_h), (title_h, title_h + fig._LABEL_H - 1), (title_h + row_h, title_h + row_h + fig._LABEL_H - 1)]:
        assert np.array_equal(arr[y0:y1], ref[y0:y1])
    # each text's ink lies in its box; boxes lie inside the canvas, do not overlap, and labels stay in their column
    for s, xy, (x0, y0, x1, y1) in texts:
        ink = np.argwhere((_text_canvas(img.size, [(s, xy)]) < 255).any(axis=2))
        assert ink[:, 0].min() >= y0 and ink[:, 0].max() < y1 and ink[:, 1].min() >= x0 and ink[:, 1].max() < x1, s
        assert 0 <= x0 and x1 <= img.size[0] - fig._GAP and 0 <= y0 and y1 <= img.size[1]
    boxes = [b for _, _, b in texts]
    for i in range(len(boxes)):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (texts[i][0], texts[j][0])
    for k, (s, _, (x0, _, x1, y1)) in enumerate(texts[1:]):
        row, col = (0, k) if k < 3 else (1, k - 3)
        cx = fig._GAP + col * (cell_w + fig._GAP)
        assert cx <= x0 and x1 <= cx + cell_w and y1 <= title_h + row * row_h + fig._LABEL_H - 1, s
    # the masks are drawn centred in their columns, in a grey frame
    y0 = title_h + row_h + fig._LABEL_H
    for i, t in enumerate(ts):
        x0 = fig._GAP + i * (cell_w + fig._GAP) + (cell_w - Wp) // 2
        m = fig._show(mask_at(A, t, 1000, lb)[0].float(), (Hp, Wp))[0].numpy() >= 0.5
        assert np.array_equal(arr[y0 : y0 + Hp, x0 : x0 + Wp], np.where(m[..., None], 255, 0).repeat(3, axis=2)), t
        assert (arr[y0 - 1, x0 - 1 : x0 + Wp + 1] == 150).all() and (arr[y0 : y0 + Hp, x0 - 1] == 150).all()
        assert (arr[y0 : y0 + Hp, x0 + Wp] == 150).all()


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        (dict(A=torch.full((1, 1, 8, 8), 1.5)), ValueError, r"A values must be in \[0, 1\], got range \[1.5, 1.5\]"),
        (dict(A=torch.zeros(1, 2, 8, 8)), ValueError, "A must be"),
        (dict(lr=torch.full((1, 3, 8, 8), 3.0)), ValueError, r"lr values must lie in \[-1, 1\]"),
        (dict(lr=torch.zeros(1, 3, 8, 8).fill_(float("nan"))), ValueError, "lr contains NaN"),
        (dict(ts=[0]), ValueError, "ts must be"),
        (dict(ts=[1001]), ValueError, "ts must be"),
        (dict(T=0), ValueError, "T must be"),
        (dict(lower_bound=-0.1), ValueError, "lower_bound"),
    ],
)
def test_attention_figure_bad_inputs(kw, exc, msg):
    args = dict(lr=torch.zeros(1, 3, 8, 8), A=torch.zeros(1, 1, 8, 8))
    args.update(kw)
    with pytest.raises(exc, match=msg):
        att.attention_figure(**args)


def test_attention_figure_draws_what_sampling_takes():
    """A map within A_MARGIN of [0, 1] (bilinear resizes overshoot by float rounding) is taken by yoda.sample but
    was refused by the figure, with a message that rounded 1.0005 to "max 1"."""
    lr, A = torch.zeros(1, 3, 8, 8), torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    over = A.clone()
    over[..., 0, 0] = 1.0005
    assert np.array_equal(np.asarray(att.attention_figure(lr, over)),
                          np.asarray(att.attention_figure(lr, over.clamp(0, 1))))


def test_attention_figure_warns_of_a_stretched_map():
    """A map whose aspect ratio is not the image's (another image's, or its sides swapped) was drawn stretched
    without a word, where yoda.sample warns; a map of the image's shape at another scale is not warned of."""
    lr = torch.zeros(1, 3, 8, 12)
    with pytest.warns(UserWarning, match="^A is stretched to the image"):
        att.attention_figure(lr, torch.rand(1, 1, 12, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        att.attention_figure(lr, torch.rand(1, 1, 32, 48))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_cuda_matches_cpu(name):
    f = EXTRACTORS[name]()
    lr = _rand_lr(seed=8)
    A = f(lr.cuda())
    assert A.device.type == "cuda" and A.dtype == torch.float32
    # same float32 ops on another device: differences are summation order only (a few ulp of [0, 1])
    torch.testing.assert_close(A.cpu(), f(lr), rtol=0, atol=1e-5)


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
@pytest.mark.parametrize("s0", [1.5, 2.0, 2.5, 3.0])
def test_sift_keypoint_scale_is_the_blobs_sigma(s0):
    """Scale selection (Lindeberg 1998): the scale-normalised LoG (DoG) of a Gaussian blob of std s0 peaks at
    sigma = s0, so the keypoint's sigma (OpenCV's size / 2, in LR pixels) is s0 up to the DoG's discretisation."""
    from yoda.attention.classic import Sift
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    img = -0.5 + 1.2 * np.exp(-((yy - 15) ** 2 + (xx - 16) ** 2) / (2 * s0**2))
    kps = Sift().keypoints(img)
    assert len(kps) == 1 and 0.7 < kps[0, 2] / s0 < 1.3, kps


def test_a_narrow_gaussian_on_an_even_side_keeps_its_peak():
    """gaussian(0.003) on a 16x16 image underflowed to zeros in float32 (no pixel at the centre), which min-max made a
    flat map: plain sampling. The peak is computed at 1: the four centre pixels."""
    A = att.get("gaussian", sigma=0.003)(torch.zeros(1, 3, 16, 16))
    assert A[0, 0, 7:9, 7:9].eq(1).all() and float(A.sum()) == 4.0
    for sigma in (1e-160, 1e-300):  # (ys / (sigma h))^2 overflowed: a NaN map, blamed on attention(lr)
        assert torch.equal(att.get("gaussian", sigma=sigma)(torch.zeros(1, 3, 16, 16)), A)


def test_an_extractor_refuses_a_sparse_lr_by_name():
    """A sparse lr failed in torch ("Could not run 'aten::aminmax' ... SparseCPU"); yoda.sample said it already."""
    for name in ("edge", "gaussian", "sift"):
        with pytest.raises(TypeError, match=r"^lr must be a dense tensor, got layout torch.sparse_coo"):
            att.get(name)(torch.zeros(1, 3, 8, 8).to_sparse())


# its 2 steps leave the least attended pixels unrefined, and say so: beside the point (two calls compared)
@pytest.mark.filterwarnings("ignore:yoda.sample. at steps=2 with lower_bound 0.3:yoda.UnrefinedWarning")
def test_an_attention_callable_that_changes_its_input_changes_nothing_sampled():
    """yoda.sample handed the callable the LR tensor it then sampled: x.add_(1).div_(2) inside the callable changed
    the SR image (by up to 1.3). The callable gets a copy."""
    import yoda
    from yoda.models import SR3UNet
    from yoda.schedule import Schedule

    torch.manual_seed(0)
    net = SR3UNet(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                  res_blocks=1, image_size=16).eval()
    ad = net.yoda_adapter(scale=2, schedule=Schedule.linear(10))
    lr = torch.rand(1, 3, 8, 8) * 2 - 1

    def rude(x):
        out = att.get("edge")(x)
        x.add_(1).div_(2)
        return out

    kw = dict(steps=2, seed=0, lower_bound=0.3, progress=False)
    polite = lambda x: att.get("edge")(x)  # (a plain callable's map is not normalised again after the resize)
    assert torch.equal(yoda.sample(ad, lr, attention=rude, **kw), yoda.sample(ad, lr, attention=polite, **kw))


def test_attention_figure_says_what_is_never_refined(monkeypatch):
    """At l near 0 (or with few steps) pixels whose attention is below the last step's tau are never refined: they
    keep the LR image, which the figure's masks (the last at t = 200 at l = 0) did not show. The title says how
    many; where every pixel is refined it says nothing."""
    from PIL import ImageDraw

    from yoda.attention import figure as fig

    texts = []
    orig = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: texts.append(t) or
                        orig(self, xy, t, *a, **k))
    lr = _rand_lr(B=1, h=24, w=24, seed=4)
    A = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    A[..., :6, :] = 0.0005  # a quarter of the map, below t = 1's tau 0.001 at l = 0
    for kw, want in ((dict(lower_bound=0.0), int((A < 0.001).sum())), (dict(lower_bound=0.6, steps=1),
                     int((A < 0.4).sum())), (dict(lower_bound=0.6), 0)):
        texts.clear()
        att.attention_figure(lr, A, **kw)
        title = next(t for t in texts if t.startswith("lower_bound="))
        assert title.endswith(f"  never refined: {fig.percent_label(want, 576)}") if want else \
            "never refined" not in title, (kw, title)
