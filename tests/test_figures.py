"""yoda.figures (the paper's Fig. 3, 4, 5) and `yoda figures`: the numbers against independent numpy
computations, the CLI on a tiny random model."""

import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import yoda
from yoda import figures as fg
from yoda.cli import main
from yoda.drawing import README_WIDTH
from yoda.images import from_uint8, to_uint8
from yoda.masks import mask_at, pixel_update_ratio

pytestmark = pytest.mark.usefixtures("one_thread")


def maps_with_ties(seed=0):
    """Two attention maps of different sizes in [0, 1], with values exactly on thresholds and bin edges."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(1, 1, 12, 10, generator=g)
    b = torch.rand(1, 1, 8, 16, generator=g)
    a.view(-1)[:6] = torch.tensor([0.0, 1.0, 0.4, 0.5, 0.2, 0.9])
    b.view(-1)[:3] = torch.tensor([1.0, 0.3, 0.7])
    return [a, b]


# ----------------------------------------------------------------------------------------------------------
# Fig. 3
# ----------------------------------------------------------------------------------------------------------
def test_update_ratio_table_is_the_mean_of_pixel_update_ratio():
    maps = {"m1": maps_with_ties(0), "m2": maps_with_ties(1)}
    lbs = [0.2, 0.6, 1.0]
    table = fg.update_ratio_table(maps, lbs)
    assert list(table) == ["m1", "m2"]
    for name, As in maps.items():
        for j, lb in enumerate(lbs):
            lib = np.mean([float(pixel_update_ratio(A, lb)[0]) for A in As])
            hand = np.mean([np.minimum(1.0, A.numpy().astype(np.float64) + lb).mean() for A in As])
            assert table[name][j] == pytest.approx(lib, abs=1e-6)
            assert table[name][j] == pytest.approx(hand, abs=1e-6)
    assert np.allclose(table["m1"][-1], 1.0)  # l = 1: every pixel at every step
    # a batch counts as one image per entry
    batch = torch.cat([maps["m1"][0], maps["m1"][0]])
    assert fg.update_ratio_table({"b": [batch]}, [0.6])["b"][0] == pytest.approx(
        float(pixel_update_ratio(maps["m1"][0], 0.6)[0]), abs=1e-6)


@pytest.mark.parametrize("T,lb", [(50, 0.6), (37, 0.25), (10, 0.0)])
def test_refined_area_curve_by_hand(T, lb):
    As = maps_with_ties()
    ts, frac = fg.refined_area_curve(As, T, lb)
    assert ts.tolist() == list(range(T, 0, -1))
    for k, t in enumerate(ts):
        tau32 = np.float32(t / T - lb)  # the kernels compare in float32
        hand = np.mean([(A.numpy() >= tau32).mean() for A in As])
        lib = np.mean([float(mask_at(A, int(t), T, lb).float().mean()) for A in As])
        assert frac[k] == pytest.approx(hand, abs=1e-12)
        assert frac[k] == pytest.approx(lib, abs=1e-6)
        if t <= lb * T:
            assert frac[k] == 1.0
    assert np.all(np.diff(frac) >= 0)  # monotone: active pixels stay active
    # a given ts
    ts2, f2 = fg.refined_area_curve(As, T, lb, ts=[T, 1])
    assert ts2.tolist() == [T, 1] and f2.tolist() == [frac[0], frac[-1]]


def test_refined_area_known_map():
    # A = 0, 0.25, 0.5, 0.75 (one quarter each); T = 4, l = 0.5: tau(t) = t/4 - 0.5 = 0.5, 0.25, 0, -0.25
    A = torch.tensor([0.0, 0.25, 0.5, 0.75]).view(1, 1, 2, 2)
    ts, frac = fg.refined_area_curve([A], 4, 0.5)
    assert ts.tolist() == [4, 3, 2, 1] and frac.tolist() == [0.5, 0.75, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------
# Fig. 5
# ----------------------------------------------------------------------------------------------------------
def synthetic(seed=0, shapes=((9, 7), (6, 11))):
    rng = np.random.default_rng(seed)
    srs, hrs, maps, extra = [], [], [], []
    for h, w in shapes:
        hrs.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        srs.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a = rng.random((h, w))
        a.flat[:4] = [0.0, 1.0, 0.5, 0.1]  # bin edges (0.1 is edges[1] of 10 bins: np.linspace's value)
        maps.append(a)
        extra.append(rng.random((h, w)))
    return srs, hrs, maps, extra


@pytest.mark.parametrize("bins", [10, 4, 1])
def test_regional_error_is_a_hand_computed_bin_average(bins):
    srs, hrs, maps, extra = synthetic()
    r = fg.regional_error(srs, hrs, [torch.from_numpy(m).float()[None, None] if i == 0 else m
                                     for i, m in enumerate(maps)], bins, extra={"lp": extra})
    edges = np.linspace(0, 1, bins + 1)
    a32 = [torch.from_numpy(maps[0]).float().double().numpy(), maps[1]]  # the first map went in as float32
    for i in range(bins):
        se, n, lp = 0.0, 0, 0.0
        for sr, hr, a, e in zip(srs, hrs, a32, extra):
            last = i == bins - 1
            m = (a >= edges[i]) & ((a <= edges[i + 1]) if last else (a < edges[i + 1]))
            d = sr.astype(np.float64) - hr.astype(np.float64)
            se += (d[m] ** 2).mean(axis=1).sum()
            n += int(m.sum())
            lp += e[m].sum()
        assert r["count"][i] == n
        if n == 0:
            assert math.isnan(r["mse"][i]) and math.isnan(r["psnr"][i])
            continue
        assert r["mse"][i] == pytest.approx(se / n, rel=1e-12)
        assert r["psnr"][i] == pytest.approx(10 * np.log10(255 ** 2 / (se / n)), rel=1e-12)
        assert r["lp"][i] == pytest.approx(lp / n, rel=1e-12)
    assert r["count"].sum() == sum(m.size for m in maps)
    assert np.allclose(r["centres"], (edges[:-1] + edges[1:]) / 2)
    if bins == 1:  # one bin: the whole-image MSE, pixels pooled
        allse = np.concatenate([((s.astype(float) - h.astype(float)) ** 2).mean(2).ravel() for s, h in zip(srs, hrs)])
        assert r["mse"][0] == pytest.approx(allse.mean())


def test_regional_error_empty_bins_and_errors():
    hr = np.zeros((4, 4, 3), np.uint8)
    sr = hr.copy()
    sr[0, 0] = 3
    A = np.full((4, 4), 0.05)
    A[0, 0] = 0.95
    r = fg.regional_error([sr], [hr], [A], 10)
    assert r["count"].tolist() == [15] + [0] * 8 + [1]
    assert r["mse"][0] == 0 and r["psnr"][0] == math.inf and r["mse"][9] == 9.0
    assert np.isnan(r["mse"][1:9]).all()
    with pytest.raises(ValueError, match="maps\\[0\\]"):
        fg.regional_error([sr], [hr], [np.zeros((3, 4))])
    with pytest.raises(ValueError, match="same shape"):
        fg.regional_error([sr], [hr[:2]], [A])
    with pytest.raises(ValueError, match="bins"):
        fg.regional_error([sr], [hr], [A], 0)
    # a map outside [0, 1] (every value over 1 fell in the top bin without a word), as every other map consumer
    with pytest.raises(ValueError, match=r"^maps\[0\] values must be in \[0, 1\], got range \[0\.15, 2\.85\]$"):
        fg.regional_error([sr], [hr], [A * 3])


def test_a_flat_map_is_left_out_of_the_bins():
    """A flat image's map is all ones (no pixel ranks above another, DESIGN.md §3); its pixels filled the top bin
    of Fig. 5. They are left out and counted."""
    srs, hrs, maps, _ = synthetic()
    flat_sr, flat_hr = np.full((8, 8, 3), 90, np.uint8), np.full((8, 8, 3), 100, np.uint8)
    ref = fg.regional_error(srs, hrs, maps, 10)
    r = fg.regional_error(srs + [flat_sr], hrs + [flat_hr], maps + [np.ones((8, 8))], 10)
    assert r["flat"] == 1 and ref["flat"] == 0
    for key in ("count", "mse", "psnr"):
        np.testing.assert_array_equal(r[key], ref[key])
    alone = fg.regional_error([flat_sr], [flat_hr], [np.ones((8, 8))], 10)
    assert alone["flat"] == 1 and alone["count"].sum() == 0 and np.isnan(alone["mse"]).all()


def test_poly_fit_passes_through_exact_quadratic_data():
    x = (np.arange(10) + 0.5) / 10
    y = 2 * x ** 2 - 3 * x + 1
    c = fg.poly_fit(x, y, 2)
    assert np.allclose(c, [2, -3, 1], atol=1e-9)
    assert np.allclose(np.polyval(c, x), y, atol=1e-12)
    # cubic fit of quadratic data: the cubic coefficient vanishes
    assert np.allclose(fg.poly_fit(x, y, 3), [0, 2, -3, 1], atol=1e-8)
    # NaN / inf points (empty bins, MSE 0) are left out
    y2 = y.copy()
    y2[[1, 4]] = [np.nan, np.inf]
    assert np.allclose(fg.poly_fit(x, y2, 2), [2, -3, 1], atol=1e-9)
    # too few points: the degree drops; one point: no fit
    assert np.allclose(fg.poly_fit([0, 1], [1, 3], 2), [2, 1])
    assert fg.poly_fit([0.5], [1.0], 2) is None
    with pytest.raises(ValueError, match="degree"):
        fg.poly_fit(x, y, 0)


def test_poly_fit_weighs_bins_by_their_pixels():
    """Fig. 5's lines fitted every bin's mean alike: a top bin of a few pixels, whose mean is noise, pulled the
    line as hard as a bin of thousands. With count, a point weighs sqrt(count) (numpy.polyfit's w = 1/sigma):
    the fit equals the closed-form weighted least squares, and a 1-pixel outlier barely moves it."""
    x = (np.arange(10) + 0.5) / 10
    y = 30.0 - 4.0 * x
    count = np.full(10, 10000.0)
    y_out, c_out = y.copy(), count.copy()
    y_out[9], c_out[9] = 10.0, 1.0  # one pixel in the top bin, far off
    w = np.sqrt(c_out)
    X = np.stack([x, np.ones_like(x)], axis=1)
    ref = np.linalg.solve(X.T @ (w[:, None] ** 2 * X), X.T @ (w ** 2 * y_out))
    got = fg.poly_fit(x, y_out, 1, c_out)
    assert np.allclose(got, ref, rtol=0, atol=1e-9)
    assert np.allclose(got, [-4.0, 30.0], atol=0.05)  # the outlier moves the line by less than 0.05
    assert not np.allclose(fg.poly_fit(x, y_out, 1), [-4.0, 30.0], atol=1.0)  # unweighted it did
    # an empty bin (count 0, mean NaN) is left out; equal counts are the unweighted fit
    y_nan, c0 = y.copy(), count.copy()
    y_nan[3], c0[3] = np.nan, 0
    assert np.allclose(fg.poly_fit(x, y_nan, 1, c0), [-4.0, 30.0], atol=1e-9)
    assert np.allclose(fg.poly_fit(x, y + x ** 2, 2, count), fg.poly_fit(x, y + x ** 2, 2), atol=1e-9)
    with pytest.raises(ValueError, match="count"):
        fg.poly_fit(x, y, 1, count[:5])


def test_lpips_layer_maps_average_to_lpips(tmp_path):
    from safetensors.torch import save_file
    from test_lpips import random_weights

    from yoda.lpips import LPIPS

    vgg, lin = random_weights()
    save_file(vgg, str(tmp_path / "vgg.safetensors"))
    save_file(lin, str(tmp_path / "lin.safetensors"))
    metric = LPIPS(str(tmp_path / "vgg.safetensors"), str(tmp_path / "lin.safetensors"))
    g = torch.Generator().manual_seed(0)
    sr = torch.rand(2, 3, 32, 24, generator=g) * 2 - 1
    hr = torch.rand(2, 3, 32, 24, generator=g) * 2 - 1
    layers = fg.lpips_layer_maps(metric, sr, hr)
    assert [tuple(m.shape) for m in layers] == [(2, 1, 32 // 2 ** k, 24 // 2 ** k) for k in range(5)]
    total = sum(m.mean(dim=(1, 2, 3)) for m in layers)
    assert torch.allclose(total, metric(sr, hr), rtol=1e-5, atol=1e-7)
    spatial = fg.lpips_map(metric, sr, hr)
    assert spatial.shape == (2, 32, 24) and (spatial >= 0).all()
    assert torch.allclose(fg.lpips_map(metric, hr, hr), torch.zeros(2, 32, 24), atol=1e-6)
    assert torch.allclose(spatial[0], fg.lpips_map(metric, sr[:1], hr[:1])[0], atol=1e-5)  # per image


# ----------------------------------------------------------------------------------------------------------
# Fig. 4
# ----------------------------------------------------------------------------------------------------------
def test_best_crop_finds_the_most_attended_window():
    A = np.zeros((40, 48))
    A[20:36, 28:44] = 1.0
    assert fg.best_crop(A, 16) == (20, 28)
    assert fg.best_crop(torch.from_numpy(A)[None, None], 16) == (20, 28)
    assert fg.best_crop(np.zeros((40, 48)), 16) == (0, 0)  # ties: the first window
    assert fg.best_crop(A, 40) == (0, 8)  # windows flush with the edges are candidates
    with pytest.raises(ValueError, match="crop size"):
        fg.best_crop(A, 41)


def test_crop_metrics_are_evaluates():
    from yoda.evaluate import colour_shift, psnr

    sr, hr, _, _ = synthetic()
    m = fg.crop_metrics(sr[0], hr[0])
    assert m == {"psnr": psnr(sr[0], hr[0]), "ab_shift": colour_shift(sr[0], hr[0])["ab_shift"]}


def test_nice_ticks():
    assert fg.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert fg.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    t = fg.nice_ticks(19.3, 36.9)
    assert t[0] >= 19.3 and t[-1] <= 36.9 and 3 <= len(t) <= 8


def test_tick_labels_one_style_for_every_axis():
    """Every axis (the figures' frames and the training plots' axis_ticks) labels its ticks with the decimals of
    their spacing: 1.0 beside 0.8, not 1."""
    from yoda.drawing import tick_labels
    from yoda.plots import axis_ticks

    assert tick_labels([0, 0.2, 0.4, 0.6, 0.8, 1.0]) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert tick_labels([0, 20, 40, 60, 80, 100]) == ["0", "20", "40", "60", "80", "100"]
    assert tick_labels([0, 2.5, 5]) == ["0.0", "2.5", "5.0"] and tick_labels([0.25]) == ["0.25"]
    assert [s for _, s in axis_ticks(0, 1)] == tick_labels(fg.nice_ticks(0, 1))


# ----------------------------------------------------------------------------------------------------------
# compute() and the CLI on a tiny random model
# ----------------------------------------------------------------------------------------------------------
def hr_images(n=2, shape=(36, 44)):
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        a = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        a[:, : shape[1] // 2] //= 4  # a flat dark half: attention varies across the image
        out.append((f"img{i}", a))
    return out


def test_compute_samples_plain_and_yoda_with_one_seed(tiny_model):
    model = yoda.load("yoda", tiny_model)
    s = fg.FigureSettings(attentions=("edge", "gaussian"), steps=2, seed=3, bins=5, crops=1)
    images = hr_images(1)
    data = fg.compute(model, images, s)
    hr_u8 = images[0][1][2:34, 2:42]  # centre crop to multiples of 8
    assert np.array_equal(data.hr[0], hr_u8)
    lr = yoda.data.make_lr(from_uint8(hr_u8), 4)
    with torch.no_grad():
        plain = yoda.sample(model, lr, attention=None, steps=2, sampler="ddim", seed=3, progress=False)
        yd = yoda.sample(model, lr, attention="edge", steps=2, sampler="ddim", lower_bound=0.6, seed=3,
                         progress=False)
    assert np.array_equal(data.sr["plain"][0], to_uint8(plain)[0])
    assert np.array_equal(data.sr["YODA"][0], to_uint8(yd)[0])
    assert not np.array_equal(data.sr["plain"][0], data.sr["YODA"][0])
    # A: the map yoda.sample uses (its callback reports the active fraction of that map)
    fracs = []
    with torch.no_grad():
        yoda.sample(model, lr, attention="edge", steps=2, sampler="ddim", seed=3, progress=False,
                    callback=lambda d: fracs.append((d["tau"], float(d["active_fraction"][0]))))
    for tau, f in fracs:
        assert float((data.maps["edge"][0] >= torch.tensor(tau, dtype=torch.float32)).float().mean()) == f
    assert data.maps["edge"][0].shape == (1, 1, 32, 40)
    # the numbers are the pure functions of these arrays
    assert data.T == 20 and data.curve_ts.tolist() == list(range(20, 0, -1))
    table = fg.update_ratio_table(data.maps, s.lower_bounds)
    assert all(np.array_equal(table[k], data.ratios[k]) for k in table)
    reg = fg.regional_error(data.sr["YODA"], data.hr, data.maps["edge"], 5)
    assert np.array_equal(reg["mse"], data.regional["YODA"]["mse"], equal_nan=True)
    c = fg.poly_fit(reg["centres"], reg["psnr"], 2, reg["count"])
    assert np.allclose(c, data.fits[("YODA", "psnr")])
    crop = data.crops[0]
    y, x, side = crop["box"]
    diff = np.abs(data.sr["YODA"][0].astype(float) - data.sr["plain"][0].astype(float)).mean(-1)
    assert side == 16 and (y, x) == fg.best_crop(diff, 16)  # where the two differ most (not the most attended)
    assert (y, x) != fg.best_crop(data.maps["edge"][0], 16)
    assert np.array_equal(crop["images"]["plain"], data.sr["plain"][0][y : y + 16, x : x + 16])
    assert crop["metrics"]["YODA"]["image"] == fg.crop_metrics(data.sr["YODA"][0], hr_u8)
    assert "LPIPS per bin omitted" in data.lpips_note


def test_compute_keeps_only_the_images_fig4_shows(tiny_model):
    """Every number is gathered image by image (the figures held every image, its three SRs and its maps, so
    a folder of full-size images filled the memory); with crops=1 only the first image is kept, and the numbers
    are those of the pure functions over all the images (computed from a run that keeps them all)."""
    model = yoda.load("yoda", tiny_model)
    images = hr_images(3)
    images[2] = ("flat", np.full_like(images[2][1], 90))  # a flat map: counted in "flat", left out of the bins
    kw = dict(attentions=("edge", "gaussian"), steps=2, seed=1, bins=5)
    every = fg.compute(model, images, fg.FigureSettings(crops=3, **kw))
    few = fg.compute(model, images, fg.FigureSettings(crops=1, **kw))
    assert len(every.hr) == 3 and len(few.hr) == len(few.sr["YODA"]) == len(few.maps["edge"]) == 1
    assert few.names == every.names == ["img0", "img1", "flat"] and len(few.crops) == 1
    for k in ("edge", "gaussian"):
        np.testing.assert_allclose(few.ratios[k], fg.update_ratio_table(every.maps, few.settings.lower_bounds)[k],
                                   rtol=1e-12, atol=0)
        assert np.array_equal(few.curves[k], fg.refined_area_curve(every.maps[k], 20, 0.6)[1])
    for label in ("plain", "YODA"):
        want = fg.regional_error(every.sr[label], every.hr, every.maps["edge"], 5)
        got = few.regional[label]
        assert got["flat"] == want["flat"] == 1 and np.array_equal(got["count"], want["count"])
        assert np.array_equal(got["mse"], want["mse"], equal_nan=True)


def write_folder(path, n=2):
    path.mkdir()
    for name, a in hr_images(n):
        Image.fromarray(a).save(path / f"{name}.png")
    return str(path)


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_the_three_figures(tmp_path, tiny_model, capsys):
    folder = write_folder(tmp_path / "hr")
    out = tmp_path / "figs" / "sub"  # created, parents too
    code, stdout, err = run(["figures", "--images", folder, "-o", str(out), "--model", tiny_model, "--steps", "2",
                             "--attention", "edge", "gaussian", "sift", "--lower-bounds", "0.3", "0.6", "1", "-q"],
                            capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(fg.FIGURE_FILES)
    sizes = {name: Image.open(out / name).size for name in fg.FIGURE_FILES}
    assert sizes["fig3_update_ratio.png"] == fg.FIG3_SIZE
    (w, h), (pw, ph) = sizes["fig5_regional_error.png"], fg.FIG5_PANEL  # MSE, PSNR / YODA - plain and the legend
    assert w == 2 * pw <= README_WIDTH and 2 * ph < h < 2 * ph + 60
    assert sizes["fig4_crops.png"] == fg.crops_figure_size(2, 16)[:2]  # 32x40 HR: 16 px crops, 2 images
    assert "| sift |" in stdout and "| 0.00-0.10 |" in stdout and "LPIPS per bin omitted" in stdout
    # the printed update ratios are those of the attention maps at HR size (l = 0.3, 0.6, 1)
    images = yoda.data.load_source(folder)
    As = []
    for _, a in images:
        hr = from_uint8(a[2:34, 2:42])
        As.append(fg.attention_map("gaussian", yoda.data.make_lr(hr, 4), (32, 40)))
    want = [np.mean([float(pixel_update_ratio(A, lb)[0]) for A in As]) for lb in (0.3, 0.6, 1.0)]
    row = next(l for l in stdout.splitlines() if l.startswith("| gaussian |"))
    assert [float(v) for v in row.strip("| ").split(" | ")[1:]] == pytest.approx(want, abs=6e-4)


def test_cli_lpips_panel(tmp_path, tiny_model, capsys):
    from safetensors.torch import save_file
    from test_lpips import random_weights

    vgg, lin = random_weights()
    save_file(vgg, str(tmp_path / "vgg.safetensors"))
    save_file(lin, str(tmp_path / "lin.safetensors"))
    folder = write_folder(tmp_path / "hr", 1)
    out = tmp_path / "figs"
    code, stdout, err = run(["figures", "--images", folder, "-o", str(out), "--model", tiny_model, "--steps", "1",
                             "--attention", "gaussian", "--lpips", str(tmp_path / "vgg.safetensors"),
                             str(tmp_path / "lin.safetensors"), "--crops", "1", "-q"], capsys)
    assert code == 0, err
    (w, h), (pw, ph) = Image.open(out / "fig5_regional_error.png").size, fg.FIG5_PANEL
    assert w == 2 * pw <= README_WIDTH and 2 * ph < h < 3 * ph  # MSE, PSNR / LPIPS, YODA - plain; the legend under
    assert Image.open(out / "fig4_crops.png").size == fg.crops_figure_size(1, 16)[:2]
    assert "LPIPS per bin omitted" not in stdout and "spatial LPIPS map" in stdout


def test_sampling_text_counts_its_steps():
    """Fig. 4 and 5 said "DDIM 1 steps"."""
    from yoda.figures.draw import _sampling_text

    assert _sampling_text(fg.FigureSettings(steps=1, sampler="ddim", seed=0)) == "DDIM 1 step, seed 0"
    assert _sampling_text(fg.FigureSettings(steps=3, sampler="ddpm", seed=2)) == "DDPM 3 steps, seed 2"


def test_cli_default_images_are_the_held_out_set(tmp_path, tiny_model, capsys):
    out = tmp_path / "figs"
    code, stdout, err = run(["figures", "-o", str(out), "--model", tiny_model, "--steps", "1", "--max-size", "32",
                             "--attention", "edge", "--crops", "2", "-q"], capsys)
    assert code == 0, err
    assert f"mean over {len(yoda.data.HELD_OUT)} images" in stdout
    assert Image.open(out / "fig4_crops.png").size == fg.crops_figure_size(2, 16)[:2]


def test_cli_sampling_options_checked_on_the_model_are_one_line(tmp_path, tiny_model, capsys):
    """figures --eta 2 or --steps past the model's T printed a traceback and "internal error" (exit 1): checked on
    the model outside the conversion of user errors; one line, exit 2, as eval and upscale say it."""
    for args, said in ((["--eta", "2"], "yoda: error: --eta must be in [0, 1] for --sampler ddim "),
                       (["--steps", "5000"], "yoda: error: --steps must be in [1, T=20] ")):
        code, _, err = run(["figures", "-o", str(tmp_path / "f"), "--model", tiny_model, "--max-size", "32", "-q",
                            "--attention", "edge", *args], capsys)
        assert code == 2 and err.startswith(said) and err.count("\n") == 1, err
        assert not (tmp_path / "f").exists()


@pytest.fixture
def no_sampling(monkeypatch):
    import yoda.sampling
    import yoda.sampling.loop

    def never(*a, **k):
        raise AssertionError("sampling started")

    monkeypatch.setattr(yoda.sampling.loop, "sample", never)
    monkeypatch.setattr(yoda.sampling, "sample", never)


def test_cli_checks_the_output_folder_before_sampling(tmp_path, tiny_model, capsys, no_sampling, monkeypatch):
    folder = write_folder(tmp_path / "hr", 1)
    (tmp_path / "afile").write_text("x")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "fig5_regional_error.png").mkdir()  # one of the three outputs is a folder
    base = ["figures", "--images", folder, "--model", tiny_model, "--steps", "1", "-q"]
    cases = [
        (["-o", str(tmp_path / "afile")], "afile is a file"),
        (["-o", str(tmp_path / "afile" / "sub")], "afile is a file"),
        (["-o", str(taken)], "fig5_regional_error.png is a folder"),
        (["-o", str(tmp_path / "new"), "--attention", "bogus"], "bogus"),
        (["-o", str(tmp_path / "new"), "--lower-bounds", "-1"], "--lower-bounds[0]"),
        (["-o", str(tmp_path / "new"), "--sampler", "ddpm", "--eta", "0.5"], "eta"),
        (["-o", str(tmp_path / "new"), "--images", str(tmp_path / "missing")], "missing"),
        # the figures in the photos' folder: the next run read them as photos (and refused its own outputs)
        (["-o", folder + os.sep + "."], f"-o {folder}{os.sep}. is the --images folder; give the figures a folder "
                                        "of their own"),
    ]
    for extra, want in cases:
        code, _, err = run(base + extra, capsys)
        assert code == 2 and want in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    from yoda import _io

    def read_only(folder, name):
        raise PermissionError(13, "Permission denied", os.path.join(folder, f".{name}.abc.tmp"))

    monkeypatch.setattr(_io, "_create_temp", read_only)
    for o in (tmp_path / "ro", taken):
        code, _, err = run(base + ["-o", str(o)], capsys)
        assert code == 2 and "Permission denied" in err and ".tmp" not in err and str(o) in err, err
    assert sorted(os.listdir(tmp_path)) == ["afile", "hr", "taken"]  # no folder was created
    assert os.listdir(taken) == ["fig5_regional_error.png"]


def test_lines_are_clipped_to_the_plot_area():
    """Fig. 5's MSE fit ran below the frame (a negative MSE) through the tick labels of the x axis."""
    from PIL import Image

    from yoda.drawing import Axes, clip_polyline

    runs = clip_polyline([(0.0, 0.5), (0.5, 1.5), (1.0, 0.5)], (0, 1), (0, 1))  # leaves through the top, comes back
    assert [[tuple(round(v, 9) for v in p) for p in r] for r in runs] == [[(0.0, 0.5), (0.25, 1.0)],
                                                                          [(0.75, 1.0), (1.0, 0.5)]]
    assert clip_polyline([(0, 2), (1, 3)], (0, 1), (0, 1)) == []  # wholly outside
    assert clip_polyline([(0, 0.2), (0.5, float("nan")), (1, 0.2)], (0, 1), (0, 1)) == []  # a NaN breaks the line
    assert clip_polyline([(0, 0.2), (0.5, 0.4), (1, 0.2)], (1, 0), (0, 1)) == [[(0, 0.2), (0.5, 0.4), (1, 0.2)]]
    canvas = Image.new("RGB", (120, 120), "white")
    ax = Axes(canvas, (10, 10, 110, 110), (0.0, 1.0), (0.0, 1.0), None)
    xs = np.linspace(0, 1, 101)
    ax.line(xs, 1.2 - 2.4 * xs, (255, 0, 0))  # from 1.2 down to -1.2: in the box for x in [0.083, 0.5]
    red = (np.asarray(canvas)[..., 0] == 255) & (np.asarray(canvas)[..., 1] == 0)
    ys, xs_px = np.nonzero(red)
    assert ys.min() >= 9 and ys.max() <= 111 and 17 <= xs_px.min() <= 20 and 59 <= xs_px.max() <= 62


def _drawn_text(monkeypatch):
    from PIL import ImageDraw

    texts, orig = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, s, *a, **k: texts.append((xy, s)) or orig(self, xy, s, *a, **k))
    return texts


def test_fig5_fits_are_drawn_over_their_bins_only(monkeypatch):
    """The fit lines ran from A = 0 to 1, past the bins they were fitted to: a degree-9 fit of bins at 18-26 dB
    reached 80 dB at A = 0, and the axis stretched to it, squashing the points into a band."""
    from yoda.figures import draw as fd

    x = (np.arange(10) + 0.5) / 10
    count = np.array([0, 5, 9, 9, 9, 9, 9, 9, 4, 0])  # the first and last bins are empty
    y = 22 + 4 * np.sin(7 * x)
    r = {"centres": x, "mse": 5 + x, "psnr": y, "count": count}
    fits = {("plain", k): fg.bin_fit(r, k, 9) for k in ("mse", "psnr")}
    lines, limits = [], []
    real_line, real_init = fd._Axes.line, fd._Axes.__init__
    monkeypatch.setattr(fd._Axes, "line", lambda self, xs, ys, *a, **k: lines.append(np.asarray(xs))
                        or real_line(self, xs, ys, *a, **k))
    monkeypatch.setattr(fd._Axes, "__init__", lambda self, canvas, box, xlim, ylim, *a: limits.append(ylim)
                        or real_init(self, canvas, box, xlim, ylim, *a))
    fd.draw_regional_error({"plain": r}, fits, 9)
    fitted = [xs for xs in lines if len(xs) == 101]
    assert len(fitted) == 2 and all(xs[0] == x[1] and xs[-1] == x[8] for xs in fitted)
    span = np.polyval(fits[("plain", "psnr")], np.linspace(x[1], x[8], 101))
    assert limits[1][1] <= max(span.max(), y.max()) + 5  # the PSNR axis: the points and the fit over them


def test_fig5_mse_line_stays_positive_and_agrees_with_the_psnr_line(monkeypatch):
    """The shipped Fig. 5's quadratic of MSE went below 0 inside the bins' range (a negative MSE) while the PSNR
    panel's stayed up: MSE is fitted as log(MSE), so its line is 255^2 10^(-PSNR line / 10) (a bin's PSNR is
    10 log10(255^2 / MSE), and a weighted least-squares fit commutes with that affine map)."""
    from yoda.figures import draw as fd

    x = (np.arange(10) + 0.5) / 10
    mse = np.array([60.0, 140, 150, 120, 90, 60, 35, 18, 8, 3])  # falls steeply: a quadratic of it dips below 0
    count = np.array([50, 400, 900, 900, 800, 700, 600, 500, 300, 40])
    r = {"centres": x, "mse": mse, "psnr": 10 * np.log10(255.0**2 / mse), "count": count}
    assert np.polyval(fg.poly_fit(x, mse, 2, count), np.linspace(x[0], x[-1], 101)).min() < 0  # the old line
    fits = {("plain", k): fg.bin_fit(r, k, 2) for k in ("mse", "psnr")}
    lines = []
    real_line = fd._Axes.line
    monkeypatch.setattr(fd._Axes, "line", lambda self, xs, ys, *a, **k: lines.append(np.asarray(ys))
                        or real_line(self, xs, ys, *a, **k))
    fd.draw_regional_error({"plain": r}, fits, 2)
    mse_line, psnr_line = [ys for ys in lines if len(ys) == 101]
    assert mse_line.min() > 0
    np.testing.assert_allclose(mse_line, 255.0**2 * 10 ** (-psnr_line / 10), rtol=1e-9)
    r0 = dict(r, mse=np.where(np.arange(10) == 9, 0.0, mse))  # a bin the model got exactly: left out of the log fit
    np.testing.assert_allclose(fg.bin_fit(r0, "mse", 2), fg.poly_fit(x[:9], np.log(mse[:9]), 2, count[:9]))
    xs, _ = fd._fit_curve(fg.bin_fit(r0, "mse", 2), r0, "mse")  # and out of the line's span (no extrapolation)
    assert (xs[0], xs[-1]) == (x[0], x[8])
    # LPIPS (a distance >= 0) too: its quadratic crossed 0 near A = 0.95 in `yoda figures --lpips`
    rl = dict(r, lpips=mse / 500)
    _, ys = fd._fit_curve(fg.bin_fit(rl, "lpips", 2), rl, "lpips")
    assert ys.min() > 0 and np.polyval(fg.poly_fit(x, rl["lpips"], 2, count), x).min() < 0


def test_fig5_legend_states_the_degree_fitted(monkeypatch):
    """--degree 20 with 10 bins fits degree 9 (poly_fit lowers it), but the legend said "degree-20"."""
    from yoda.figures.draw import draw_regional_error

    x = (np.arange(10) + 0.5) / 10
    r = {"centres": x, "mse": 5 + x, "psnr": 30 - x, "count": np.ones(10)}
    fits = {("plain", k): fg.poly_fit(x, r[k], 20) for k in ("mse", "psnr")}
    texts = _drawn_text(monkeypatch)
    draw_regional_error({"plain": r}, fits, 20)
    assert any("lines: numpy.polyfit of degree 9 (--degree 20 is lowered to the points - 1)" in s for _, s in texts)
    texts.clear()
    draw_regional_error({"plain": r}, {k: fg.poly_fit(x, r[k[1]], 2) for k in fits}, 2)
    assert any("lines: degree-2 numpy.polyfit (of the log for MSE), weighted by sqrt(pixels per bin)" in s
               for _, s in texts)
    texts.clear()  # --bins 1: no bin pair to fit, no lines drawn; the legend said "lines: degree-2 numpy.polyfit"
    one = {"centres": x[:1], "mse": r["mse"][:1], "psnr": r["psnr"][:1], "count": np.ones(1)}
    draw_regional_error({"plain": one}, {k: fg.poly_fit(x[:1], one[k[1]], 2) for k in fits}, 2)
    assert [s for _, s in texts if s.startswith("points:")] == [
        "points: per-bin means; no lines (a fit needs 2 bins with pixels)"]


def test_fig5_draws_yoda_minus_plain_per_bin(monkeypatch):
    """Plain and YODA PSNR per bin differ by tenths of a dB, which the PSNR panel's 10 dB scale hides: a last
    panel draws YODA - plain per bin (the bins' own differences, not the fits'), around a zero line."""
    from yoda import drawing
    from yoda.figures import draw as fd
    from yoda.figures.draw import draw_regional_error

    x = (np.arange(10) + 0.5) / 10
    plain = {"centres": x, "mse": 5 + x, "psnr": 30 - x, "count": np.ones(10)}
    yoda_r = dict(plain, psnr=30 - x + np.linspace(-0.05, 0.1, 10))
    drawn = []
    monkeypatch.setattr(drawing.Axes, "points", lambda self, xs, ys, *a, **k: drawn.append((self.box, list(ys))))
    img = draw_regional_error({"plain": plain, "YODA": yoda_r}, {}, 2)
    box, ys = drawn[-1]
    assert np.allclose(ys, np.linspace(-0.05, 0.1, 10), atol=1e-12)
    assert [b for b, _ in drawn] == [b for b in fd.fig5_boxes(3, 34)[:2] for _ in range(2)] + [box]  # MSE, PSNR
    assert box == fd.fig5_boxes(3, 34)[2] and img.size == (2 * fg.FIG5_PANEL[0], 34 + 2 * fg.FIG5_PANEL[1] + 10)
    drawn.clear()
    assert draw_regional_error({"plain": plain}, {}, 2).size[0] == 2 * fg.FIG5_PANEL[0]


def test_fig5_fits_readmes_width(monkeypatch):
    """README shows Fig. 5; its three panels side by side were 1410 px wide, which GitHub shrinks to about 880 px
    (its 12 px labels to 7.5 px): the panels are two a row, README_WIDTH wide, the legend and notes in the free
    cell beside the last panel (with LPIPS: four panels, the legend under them); a long title is wrapped."""
    from yoda import drawing
    from yoda.figures import draw as fd

    x = (np.arange(10) + 0.5) / 10
    plain = {"centres": x, "mse": 5 + x, "psnr": 30 - x, "count": np.ones(10), "lpips": 0.2 + x / 10}
    yoda_r = dict(plain, psnr=30.05 - x)
    boxes = []
    real_init = drawing.Axes.__init__
    monkeypatch.setattr(drawing.Axes, "__init__", lambda self, canvas, box, *a: boxes.append(box)
                        or real_init(self, canvas, box, *a))
    texts = _drawn_text(monkeypatch)
    pw, ph = fd.FIG5_PANEL
    assert fd.FIG5_COLUMNS * pw == README_WIDTH
    for regional, n in (({"plain": plain, "YODA": yoda_r}, 4), ({"plain": plain}, 3)):  # LPIPS: 4 panels, or 3
        boxes.clear()
        texts.clear()
        img = fd.draw_regional_error(regional, {}, 2, title_note="x " * 200, note="LPIPS: a note")
        heads = [(xy, s) for xy, s in texts if s.startswith("Fig. 5") or set(s) <= set("x ()")]
        top = 14 + 20 * len(heads)
        assert len(heads) > 1 and " ".join(s for _, s in heads).startswith("Fig. 5  regional error")
        assert boxes == fd.fig5_boxes(n, top)
        assert [(b[0] % pw, b[1] - top) for b in boxes] == [(80, 30 + ph * (k // 2)) for k in range(n)]
        assert [b[0] // pw for b in boxes] == [k % 2 for k in range(n)]  # two a row
        legend = [xy for xy, s in texts if s == "plain sampling"][-1]  # (the first: measured on a scratch image)
        notes = [xy for xy, s in texts if s.startswith("points:") or s == "LPIPS: a note"]
        if n == 4:  # under the panels, at the left
            assert legend[0] == 80 + 28 and legend[1] > top + 2 * ph and img.size[1] > notes[-1][1] + 12
        else:  # in the free cell, at its plot area's height
            assert legend[0] > pw and legend[1] == top + ph + 30 and img.size[1] == top + 2 * ph + 10
        d = ImageDraw.Draw(img)
        size = lambda xy, s: 14 if (xy, s) in heads else 12  # noqa: E731  (the title's font, the rest's)
        assert img.size[0] == README_WIDTH
        assert all(drawing.text_wh(d, s, drawing.font(size(xy, s)))[0] <= README_WIDTH - xy[0] for xy, s in texts)


def test_fig3_colours_follow_the_method_not_its_place(monkeypatch):
    """Fig. 3 gave the first --attention method the first colour, so edge was blue in one run and red in the
    next: each method now keeps its colour (yoda.attention.NAMES' order), whatever the order given."""
    from yoda import drawing
    from yoda.figures.draw import draw_update_ratio, method_colours

    assert method_colours(["sift", "edge"]) == {"sift": drawing.COLOURS[2], "edge": drawing.COLOURS[0]}
    assert method_colours(["edge", "sift"]) == {"edge": drawing.COLOURS[0], "sift": drawing.COLOURS[2]}
    two = method_colours(["dino-vits8:a.pth", "dino-vits8:b.pth", "gaussian"])  # the same name twice: two colours
    assert two["dino-vits8:a.pth"] == drawing.COLOURS[3] and two["gaussian"] == drawing.COLOURS[1]
    assert len(set(two.values())) == 3
    bars = []
    monkeypatch.setattr(drawing.Axes, "bar", lambda self, x0, x1, v, colour: bars.append(colour))
    for order in (["sift", "edge"], ["edge", "sift"]):
        bars.clear()
        ratios = {m: [0.5] for m in order}
        draw_update_ratio(ratios, [0.4], [2, 1], {m: [0.5, 1.0] for m in order}, 2, 0.4, 1)
        assert bars == [drawing.COLOURS[0 if m == "edge" else 2] for m in order]


def test_fig3_full_mask_note_is_on_its_side_of_the_line(monkeypatch):
    """At a small l the note "t <= l*T: every pixel active" has no room right of its dashed line and was drawn left
    of it, over the part where masks still grow: there it points right."""
    from PIL import Image, ImageDraw

    from yoda.drawing import font, text_wh
    from yoda.figures import draw as fd
    from yoda.figures.draw import draw_update_ratio

    texts, lines = _drawn_text(monkeypatch), []
    real = fd._Axes.line
    monkeypatch.setattr(fd._Axes, "line", lambda self, xs, ys, *a, **k: lines.append(self.fx(xs[0]))
                        or real(self, xs, ys, *a, **k))
    d = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    for lb, right in ((0.6, True), (0.05, False)):
        texts.clear(), lines.clear()
        draw_update_ratio({"edge": [0.5]}, [lb], [1000, 1], {"edge": [0.5, 1.0]}, 1000, lb, 1)
        (x, _), s = next((xy, s) for xy, s in texts if "every pixel active" in s)
        if right:
            assert s == "t <= l*T: every pixel active" and x > lines[0]
        else:
            assert s == "every pixel active at t <= l*T ->" and x + text_wh(d, s, font(12))[0] < lines[0]


def test_fig3_tick_labels_of_many_lower_bounds_do_not_overlap(monkeypatch):
    """Fig. 3 with 20 lower bounds printed its 20 x labels over each other in 400 px: every k-th is labelled now,
    the least k at which they keep apart (every tick is still drawn), and all of them while they fit."""
    from PIL import Image, ImageDraw

    from yoda.drawing import font, label_stride, text_wh
    from yoda.figures.draw import draw_update_ratio

    at = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, s, *a, **k: at.append((xy, s))
                        or real(self, xy, s, *a, **k))
    for n, every in ((20, 2), (5, 1)):
        at.clear()
        lbs = [round(0.05 * (i + 1), 2) for i in range(n)]
        draw_update_ratio({"edge": [0.5] * n}, lbs, [2, 1], {"edge": [0.5, 1.0]}, 2, 0.4, 1)
        labels = [(xy, s) for xy, s in at if xy[1] == 330 + 6 and xy[0] < 500]  # under the left plot's frame
        assert [s for _, s in labels] == [f"{v:.2f}" for v in lbs][::every]
        d = ImageDraw.Draw(Image.new("RGB", (8, 8)))
        boxes = sorted((x, x + text_wh(d, s, font(12))[0]) for (x, _), s in labels)
        assert all(b[0] - a[1] >= 6 for a, b in zip(boxes, boxes[1:]))
    assert label_stride([0, 10, 20, 30], [30, 30, 30, 30]) == 4 and label_stride([0, 40, 80], [30, 30, 30]) == 1
    assert label_stride([0, 20, 40, 60, 80], [30] * 5) == 2 and label_stride([], []) == 1


def test_fig4_shows_where_each_crop_lies_and_defines_ab(monkeypatch):
    """Fig. 4 showed crops with no way to see where in the image they lie, and "ab" was not defined anywhere in
    the picture: a first column shows the whole HR image with the crop's box in red, and a line under the rows
    says what ab is."""
    from yoda.figures import draw as fd
    from yoda.figures.numbers import crop_metrics

    hr = np.random.default_rng(0).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    y, x, c = 32, 16, 16
    cut = np.ascontiguousarray(hr[y:y + c, x:x + c])
    met = {k: {"crop": crop_metrics(cut, cut), "image": crop_metrics(hr, hr)} for k in ("bicubic", "plain", "YODA")}
    row = {"name": "a.png", "box": (y, x, c), "images": {k: cut for k in fd.CROP_COLUMNS}, "metrics": met, "hr": hr}
    texts = _drawn_text(monkeypatch)
    img = fd.draw_crops([row])
    W, H, panel = fd.crops_figure_size(1, c)
    assert img.size == (W, H) and panel == 160
    assert (W, H) == (fd.crops_figure_size(1, c, locator=False)[0] + panel + 8, fd.crops_figure_size(1, c, False)[1])
    assert any(s == fd.AB_NOTE for _, s in texts) and any(s == fd.LOCATOR_COLUMN for _, s in texts)
    # the locator: the 96 x 64 image shrunk x5/3 to 160 px tall, centred; the box at (32, 16) side 16 -> 26.7 px
    loc = np.asarray(fd._locator(hr, (y, x, c), panel))
    red = np.all(loc == fd._LOCATOR, axis=2)
    ys, xs = np.nonzero(red)
    g, ox = 160 / 96, (160 - round(64 * 160 / 96)) // 2
    assert (xs.min(), ys.min()) == (ox + int(x * g), int(y * g))
    assert (xs.max(), ys.max()) == (ox + int(np.ceil((x + c) * g)) - 1, int(np.ceil((y + c) * g)) - 1)
    assert (loc[:, : ox - 1] == 255).all() and not (loc[:, ox + 2 : ox + 10] == 255).all()  # white margin, image
    # the rows without the whole image draw no locator (the four columns as before)
    bare = {k: v for k, v in row.items() if k != "hr"}
    assert fd.draw_crops([bare]).size == fd.crops_figure_size(1, c, locator=False)[:2]
    # where plain and YODA are alike everywhere, the window is the top-left one, not "where they differ most"
    texts.clear()
    fd.draw_crops([row, dict(row, flat=True)])
    said = [s for _, s in texts if s.startswith("a.png: ")]
    assert said == [f"a.png: 16x16 crop at x=16, y=32 ({w}), shown x10" for w in
                    ("where plain and YODA differ most", "plain = YODA: the top-left window")]


def test_long_names_and_titles_fit_their_canvas(monkeypatch):
    """Fig. 4's row caption ran off the canvas with a long image name ("... (most attende"), and `yoda demo`'s
    title with a long --model path: the name is shortened in its middle, and demo's title is wrapped (its canvas was
    as wide as the title, at any width)."""
    from PIL import Image, ImageDraw

    from yoda import drawing
    from yoda.figures import draw as fd
    from yoda.figures.numbers import crop_metrics

    d, face = ImageDraw.Draw(Image.new("RGB", (8, 8))), drawing.font(12)
    name = "holiday photographs " * 5 + "(final v3).png"
    short = drawing.fit_width(d, name, face, 200)
    assert 170 <= drawing.text_wh(d, short, face)[0] <= 200  # as much of the name as fits
    assert short.startswith("holiday") and short.endswith("v3).png") and "..." in short
    assert drawing.fit_width(d, "a.png", face, 200) == "a.png" and drawing.fit_width(d, name, face, 1) == "..."
    hr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    met = {k: {"crop": crop_metrics(hr, hr), "image": crop_metrics(hr, hr)} for k in ("bicubic", "plain", "YODA")}
    row = {"name": name, "box": (0, 0, 32), "images": {k: hr for k in fd.CROP_COLUMNS}, "metrics": met, "hr": hr}
    texts = _drawn_text(monkeypatch)
    img = fd.draw_crops([row])
    caption = next(s for _, s in texts if "crop at x=0, y=0" in s)
    assert caption.endswith("(where plain and YODA differ most), shown x5") and "..." in caption
    assert drawing.text_wh(d, caption, face)[0] <= img.size[0] - 16
    title = "yoda demo: " + "a/long/model/path/" * 20 + "model.safetensors"
    texts.clear()
    canvas = drawing.panel_grid(title, [(None, [("x", Image.new("RGB", (16, 16)))])], 16)
    heads = [(xy, s) for xy, s in texts if s != "x"]  # as wide as text may make the canvas, the title wrapped
    assert canvas.size[0] == drawing.GRID_TEXT_WIDTH and len(heads) > 2 and heads[0][1] == "yoda demo:"
    assert "".join(s.replace(" ", "") for _, s in heads) == title.replace(" ", "")
    assert [xy for xy, _ in heads] == [(6, 2 + 18 * i) for i in range(len(heads))]
    assert all(drawing.text_wh(d, s, face)[0] <= canvas.size[0] - 12 for _, s in heads)
    assert next(xy for xy, s in texts if s == "x") == (6, 6 + 18 * len(heads))  # the panels under it
    short = drawing.panel_grid("yoda demo: a short title", [(None, [("x", Image.new("RGB", (16, 16)))])], 16)
    assert short.size[0] == drawing.text_wh(d, "yoda demo: a short title", face)[0] + 12  # widened to its title


def test_panel_grid_wraps_to_readmes_width(monkeypatch):
    """README's demo was a row of six 256-px panels under a 1066-px caption, 1578 px wide: GitHub showed it at
    880 px, its 12 px labels at 7 px. Each group's panels now wrap to as many a line as fit README_WIDTH (three of
    256 px) and the title and captions to the panels' width."""
    from yoda import drawing

    d, face = ImageDraw.Draw(Image.new("RGB", (8, 8))), drawing.font(12)
    texts = _drawn_text(monkeypatch)
    caption = "YODA: " + "word " * 300
    groups = [(None, [(f"a{i}", Image.new("RGB", (256, 256))) for i in range(3)]),
              (None, [(f"b{i}", Image.new("RGB", (256, 256))) for i in range(3)]),
              ("errors", [(f"c{i}", Image.new("RGB", (256, 256))) for i in range(3)]),
              (caption, [(f"d{i}", Image.new("RGB", (256, 256))) for i in range(4)])]
    canvas = drawing.panel_grid("a title", groups, 256)
    at = {s: xy for xy, s in texts}
    line = 18 + 256 + 6  # a label and its panel
    assert canvas.size[0] == 6 + 3 * (256 + 6) <= README_WIDTH
    assert [at[f"{g}{i}"] for g in "ab" for i in range(3)] == [(x, y) for y in (24, 24 + line) for x in (6, 268, 530)]
    assert at["errors"] == (6, 24 + 2 * line) and [at[f"c{i}"] for i in range(3)] == [(x, 42 + 2 * line)
                                                                                     for x in (6, 268, 530)]
    caps = [(xy, s) for xy, s in texts if s.startswith("YODA:") or (s and set(s) <= set("word "))]
    assert len(caps) > 1 and " ".join(s for _, s in caps) == caption
    assert [xy for xy, _ in caps] == [(6, 42 + 3 * line + 18 * i) for i in range(len(caps))]
    assert all(drawing.text_wh(d, s, face)[0] <= canvas.size[0] - 12 for _, s in caps)
    d0 = at["d0"][1]
    assert d0 == caps[-1][0][1] + 18 and [at[f"d{i}"] for i in range(4)] == [(6, d0), (268, d0), (530, d0),
                                                                             (6, d0 + line)]
    assert canvas.size[1] == d0 + 2 * line + 12
    # panels wider than README_WIDTH allows three of: fewer a line; one wider than it: one a line, its own width
    assert drawing.panel_grid("t", groups[:1], 300).size[0] == 6 + 2 * 306
    assert drawing.panel_grid("t", groups[:1], 1000).size == (6 + 1006, 2 * 18 + 3 * (18 + 1000 + 6))
    # a label wider than its panel is set smaller to fit it (the demo's ran into the next panel's at 160 px)
    sizes = []
    real_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, s, *a, font=None, **k: sizes.append(
        (s, drawing.text_wh(d, s, font)[0], font.size)) or real_text(self, xy, s, *a, font=font, **k))
    long = "bicubic  22.65 dB, SSIM 0.727"
    assert drawing.text_wh(d, long, face)[0] > 160
    drawing.panel_grid("t", [(None, [(long, Image.new("RGB", (160, 160))), ("HR", Image.new("RGB", (160, 160)))])], 160)
    assert [(s, size) for s, _, size in sizes if s == "HR"] == [("HR", 12)]
    assert [(w <= 160, size < 12) for s, w, size in sizes if s == long] == [(True, True)]
    # at_least: the demo's rows of three stay together (at --lr-size 96, 384-px panels went two and one: HR alone
    # under LR and bicubic); a longer group wraps at three
    three = drawing.panel_grid("t", [groups[0], groups[3]], 384, at_least=3)
    lines = len(drawing.wrap(d, caption, face, three.size[0] - 12))  # the caption's; panels: 3, then 3 and 1
    assert three.size == (6 + 3 * 390, 2 * 18 + lines * 18 + 3 * (18 + 384 + 6))


def test_a_long_title_is_set_smaller_to_fit(monkeypatch):
    """Fig. 5's title ran off both edges of the canvas once it named the images with flat maps: a title of Fig. 3 or
    4 wider than the canvas is drawn in the largest smaller font that fits, on one line (the layout below it stays
    free; Fig. 5's is wrapped now)."""
    from PIL import Image, ImageDraw

    from yoda.drawing import font, text_wh, title

    canvas = Image.new("RGB", (300, 60), "white")
    d = ImageDraw.Draw(canvas)
    s = "Fig. 5  regional error (2 of 3 images, 10 bins of A (edge); DDIM 2 steps)"
    calls = []
    orig = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, font=None, **k: calls.append((xy, t, font))
                        or orig(self, xy, t, *a, font=font, **k))
    title(canvas, d, s, font(14))
    ((x, y), t, f), = calls
    assert t == s and y == 6 and f.size < 14 and 0 <= x and text_wh(d, s, f)[0] <= 300 - 16
    assert text_wh(d, s, font(f.size + 1))[0] > 300 - 16  # the largest size that fits
    calls.clear()
    title(canvas, d, "short", font(14))
    assert calls[0][1] == "short" and calls[0][2].size == 14


def test_lpips_map_is_the_bilinear_sum_of_every_layer(tmp_path):
    """Fig. 5's LPIPS per bin reads lpips_map: it was checked for shape, sign and zero only (four of five layers
    dropped, or a nearest upsampling, passed). It is the sum of the five layer maps upsampled bilinearly
    (align_corners=False), as the lpips package's spatial=True makes it, and its mean is about the distance."""
    from safetensors.torch import save_file
    from test_lpips import random_weights

    from yoda.lpips import LPIPS

    vgg, lin = random_weights()
    save_file(vgg, str(tmp_path / "vgg.safetensors"))
    save_file(lin, str(tmp_path / "lin.safetensors"))
    metric = LPIPS(str(tmp_path / "vgg.safetensors"), str(tmp_path / "lin.safetensors"))
    g = torch.Generator().manual_seed(0)
    sr, hr = (torch.rand(2, 3, 32, 24, generator=g) * 2 - 1 for _ in range(2))
    spatial = fg.lpips_map(metric, sr, hr)
    layers = fg.lpips_layer_maps(metric, sr, hr)
    want = sum(torch.nn.functional.interpolate(m, size=(32, 24), mode="bilinear", align_corners=False)
               for m in layers)[:, 0]
    torch.testing.assert_close(spatial, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(spatial.mean(dim=(1, 2)), metric(sr, hr), rtol=0.05, atol=0)


def test_figure_settings_check_their_types_when_made():
    """FigureSettings let max_size=32.0 through to a numpy slice ("slice indices must be integers"), crop_size=20.5
    and True through to best_crop, after every image was sampled; refused numpy's ints, which EvalSettings takes; and
    eta=None failed in math.isfinite. Each is checked when the settings are made, naming the field."""
    assert fg.FigureSettings(steps=np.int64(2), max_size=np.int32(64)).steps == 2
    assert fg.FigureSettings(max_size=None, crop_size=None).max_size is None
    for kw, exc, said in ((dict(max_size=32.0), TypeError, "max_size must be an int >= 1 or None, got float"),
                          (dict(crop_size=20.5), TypeError, "crop_size must be an int >= 1 or None, got float"),
                          (dict(crop_size=True), TypeError, "crop_size must be an int >= 1 or None, got bool"),
                          (dict(crop_size=0), ValueError, "crop_size must be an int >= 1 or None, got 0"),
                          (dict(steps=0), ValueError, "steps must be an int >= 1, got 0"),
                          (dict(eta=None), TypeError, "eta must be a float, got NoneType"),
                          (dict(eta=-1.0), ValueError, "eta must be a finite float >= 0, got -1.0")):
        with pytest.raises(exc, match=f"^{re.escape(said)}$"):
            fg.FigureSettings(**kw)


def test_non_ascii_names_are_drawn_with_their_glyphs(monkeypatch):
    """Pillow's built-in font has ASCII and 7 more characters: "café.png" was drawn as "caf", a box and ".png", and
    every other accented, Cyrillic or CJK name alike. A string with a character it lacks is drawn in an installed
    font that has it (drawing.UNICODE_FONTS), measured in that font too; with none installed, as before."""
    from PIL import Image, ImageDraw

    from yoda import drawing

    face = drawing.font(12)
    if drawing.face_for("é", face) is face:
        pytest.skip("no font of drawing.UNICODE_FONTS with 'é' is installed")

    def panel_label(name):  # the label row of a panel grid (yoda demo, yoda attention's panels)
        canvas = drawing.panel_grid("", [(None, [(name, Image.new("RGB", (48, 16), "white"))])], 48)
        return np.asarray(canvas.convert("L"))[:18, :48]

    labels = {name: panel_label(name) for name in ("caf\u00e9", "caf\u00fc", "caf\u00f1", "cafe")}
    assert len({a.tobytes() for a in labels.values()}) == 4  # (all three were the same box)
    d = ImageDraw.Draw(Image.new("RGB", (8, 8)))  # measured in the font it is drawn in
    alt = drawing.face_for("caf\u00e9", face)
    assert alt is not face and drawing.text_wh(d, "caf\u00e9", face) == drawing.text_wh(d, "caf\u00e9", alt)
    monkeypatch.setattr(drawing, "UNICODE_FONTS", ("no-such-font-yoda.ttf",))  # none installed: the built-in font
    assert drawing.face_for("caf\u00e9", face) is face
    assert len({panel_label(n).tobytes() for n in ("caf\u00e9", "caf\u00fc")}) == 1  # drawn, as boxes
