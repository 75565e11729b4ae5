"""Evaluation: PSNR, SSIM, colour shift, denoiser calls and wall time; plain vs YODA sampling.

Metrics are computed on 8-bit RGB images (H, W, 3) after rounding:
    PSNR, SSIM        skimage.metrics (data_range 255; SSIM with channel_axis=2, skimage's default 7x7 window);
                      EvalSettings(y_channel=True) / `yoda eval --y-channel`: on the luma Y with a border of the
                      scale cut off and a Gaussian SSIM window (luma_metrics), as SR papers report them
    colour shift      d = mean over pixels of Lab(SR) - Lab(HR)  (skimage.color.rgb2lab, D65)
                      L_shift = |d_L|, ab_shift = sqrt(d_a^2 + d_b^2): a global tint shows up here, noise
                      and texture errors average out (SR3's colour shift, seed Fig. 4)
    LPIPS             only when EvalSettings.lpips gives local files (VGG16 backbone, LPIPS v0.1 linear heads;
                      yoda.lpips): LPIPS of the rounded SR vs HR, both mapped back to [-1, 1]. Without them
                      the table says it was omitted instead of a number (nothing is downloaded).
The LR image of every HR is yoda.data.make_lr (the training degradation).
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from . import attention as _attention
from . import data as _data
from . import sampling as _sampling
from ._io import atomic_write_text
from .adapters import as_adapter, check_flag, model_sampler, model_steps, upsample
from .attention.classic import check_values
from .errors import lr_from_images
from .images import from_uint8, is_grey, output_u8, quantize_u8
from .masks import check_lower_bound
from .sampling.spec import ALL_SAMPLERS as SAMPLER_NAMES
from .sampling.spec import resolve_seed

LPIPS_NOTE = "LPIPS omitted: it needs local backbone + LPIPS head weights, none were given"


def check_pair(sr: np.ndarray, hr: np.ndarray) -> None:
    for name, a in (("sr", sr), ("hr", hr)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{name} must be a uint8 (H, W, 3) array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got {sr.shape} and {hr.shape}")
    if min(sr.shape[:2]) < 3:  # (skimage's SSIM divided by zero: a ZeroDivisionError)
        raise ValueError(f"sr and hr must be at least 3x3 pixels, got {sr.shape[1]}x{sr.shape[0]}")


def psnr(sr: np.ndarray, hr: np.ndarray) -> float:
    """PSNR in dB of uint8 (H, W, 3) images, data_range 255 (inf for identical images): the reference.

    psnr_u8 below is the batched torch form of the same formula, for validation during training (no
    scikit-image needed there); tests/test_train.py checks the two against each other."""
    check_pair(sr, hr)
    return _psnr_255(sr, hr)


def _psnr_255(sr: np.ndarray, hr: np.ndarray) -> float:
    """skimage's PSNR with data_range 255 of two arrays of one shape; inf where they are equal."""
    from skimage.metrics import peak_signal_noise_ratio

    return math.inf if np.array_equal(sr, hr) else float(peak_signal_noise_ratio(hr, sr, data_range=255))


def _odd_window(largest: int, shape) -> int:
    """SSIM's window side: ``largest``, or the largest odd side that fits an image of ``shape`` (H, W, ...)."""
    win = min(largest, shape[0], shape[1])
    return win - (1 - win % 2)


def psnr_u8(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of [-1, 1] images after rounding to 8 bits (yoda.images.quantize_u8, the pixels a
    saved PNG has): 10 log10(255^2 / MSE), MSE in float64 in torch, so training needs no scikit-image.
    Equal to :func:`psnr` (skimage's peak_signal_noise_ratio) on to_uint8 of the same images.
    sr, hr: float (B, C, H, W) tensors of one shape (a uint8 tensor, clamped to [-1, 1], gave a silent wrong
    number; a (C, H, W) one, one PSNR per channel)."""
    for name, x in (("sr", sr), ("hr", hr)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            exc = ValueError if isinstance(x, torch.Tensor) and x.is_floating_point() else TypeError  # the shape
            raise exc(f"{name} must be a float (B, C, H, W) tensor in [-1, 1] (yoda.from_uint8 of 8-bit images; "
                      f"psnr() takes uint8 (H, W, 3) arrays), got {getattr(x, 'dtype', type(x).__name__)} "
                      f"{tuple(getattr(x, 'shape', ()))}")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    for name, x in (("sr", sr), ("hr", hr)):  # (a [0, 255] float image was clamped to white: two scored inf)
        check_values(x, name)  # as to_uint8 (the file's pixels) takes them; yoda.sample's images are finite
    mse = (quantize_u8(sr).double() - quantize_u8(hr).double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)


def ssim(sr: np.ndarray, hr: np.ndarray) -> float:
    """SSIM of uint8 (H, W, 3) images (skimage, channel_axis=2, data_range 255)."""
    from skimage.metrics import structural_similarity

    check_pair(sr, hr)
    return float(structural_similarity(hr, sr, channel_axis=2, data_range=255, win_size=_odd_window(7, sr.shape)))


def colour_shift(sr: np.ndarray, hr: np.ndarray) -> dict:
    """Mean CIELAB difference of SR vs HR: {"dL", "da", "db", "L_shift" = |dL|, "ab_shift" = |(da, db)|}."""
    from skimage.color import rgb2lab

    check_pair(sr, hr)
    d = (rgb2lab(sr) - rgb2lab(hr)).reshape(-1, 3).mean(axis=0)
    return {"dL": float(d[0]), "da": float(d[1]), "db": float(d[2]), "L_shift": float(abs(d[0])),
            "ab_shift": float(math.hypot(d[1], d[2]))}


def luma_metrics(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[float, float]:
    """(PSNR, SSIM) as SR papers report them (BasicSR's test_y_channel / MATLAB): on the luma Y of ITU-R BT.601
    (16..235, unrounded; skimage.color.rgb2ycbcr), ``border`` pixels (usually the scale) cut from every side,
    SSIM with an 11x11 Gaussian window of sigma 1.5 and population covariances (Wang et al. 2004). On a Y
    under 11 px a side (after the cut) scikit-image still filters with its 11-tap Gaussian, reflecting at the
    borders, and crops only the border of the largest odd window that fits: BasicSR has no number there, and this
    one is up to ~3e-3 from a 7x7 Gaussian's (measured on 8 px sides)."""
    from skimage.color import rgb2ycbcr
    from skimage.metrics import structural_similarity

    check_pair(sr, hr)
    if border < 0 or 2 * border >= min(sr.shape[:2]):
        raise ValueError(f"border {border} leaves nothing of a {sr.shape[1]}x{sr.shape[0]} image")
    cut = (slice(border, sr.shape[0] - border), slice(border, sr.shape[1] - border))
    y_sr, y_hr = rgb2ycbcr(sr[cut])[..., 0], rgb2ycbcr(hr[cut])[..., 0]
    s = float(structural_similarity(y_hr, y_sr, data_range=255, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, win_size=_odd_window(11, y_sr.shape)))
    return _psnr_255(y_sr, y_hr), s


def metrics(sr: np.ndarray, hr: np.ndarray, y_border: Optional[int] = None) -> dict:
    """PSNR, SSIM (RGB; with ``y_border`` given: luma_metrics with that border) and the colour shift."""
    if y_border is not None and (isinstance(y_border, bool) or not isinstance(y_border, numbers.Integral)):
        raise TypeError(f"y_border must be an int (the border cut, usually the scale) or None, got {y_border!r}")
    cs = colour_shift(sr, hr)
    p, s = (psnr(sr, hr), ssim(sr, hr)) if y_border is None else luma_metrics(sr, hr, y_border)
    return {"psnr": p, "ssim": s, "L_shift": cs["L_shift"], "ab_shift": cs["ab_shift"]}


def one_or_many(values: Any, name: str) -> tuple:
    """A settings field of several values as a tuple: one name or number alone is one value (a str was taken
    letter by letter, a float was a TypeError)."""
    if isinstance(values, (str, numbers.Real)):
        return (values,)
    try:
        return tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a value or a sequence of them, got {type(values).__name__}") from None


def check_distinct(values: Sequence, name: str) -> None:
    """A value given twice would be pooled into one table row with twice the images: refused, naming ``name``."""
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{name}: {v!r} is given twice")
        seen.add(v)


def lower_bounds_of(values: Any) -> tuple:
    """A settings field of lower bounds l (one alone is one), each checked (check_lower_bound, naming its index)."""
    return tuple(check_lower_bound(v, f"lower_bounds[{i}]") for i, v in enumerate(one_or_many(values, "lower_bounds")))


def lpips_paths(value: Any) -> Optional[tuple[str, str]]:
    """A settings field ``lpips``: None, or (backbone weights path, lin weights path) as two str."""
    if value is None:
        return None
    lp = () if isinstance(value, (str, os.PathLike)) else tuple(value)  # "ab" was ("a", "b")
    if len(lp) != 2 or not all(isinstance(v, (str, os.PathLike)) for v in lp):
        raise ValueError(f"lpips must be None or (backbone weights path, lin weights path), got {value!r}")
    return tuple(os.fspath(v) for v in lp)


def fixed_seed(seed: Any) -> None:
    """A settings field ``seed``: an int yoda.sample takes, not None (which draws one per call: the rows of one
    table would not share their noise, nor two runs their numbers)."""
    if seed is None:
        raise ValueError("seed must be an int in [0, 2**32 - 1], got None")
    resolve_seed(seed)


@dataclass(frozen=True)
class EvalSettings:
    """How `yoda eval` samples (its defaults are the command's). lower_bounds x attentions are the YODA variants
    (one value alone is one variant); "plain", "bicubic" (torch's, the up(lr) of yoda's models) and
    "bicubic-matlab" (MATLAB's imresize, SR papers' bicubic row) are always included. steps: None is the model's
    own (adapters.model_steps: its card's, 1 for the embedded model; else OTHER_MODEL_STEPS) for plain, and for
    each lower bound's YODA rows the fewest from there whose last step refines every pixel (yoda_row_steps), as
    yoda.sample and `yoda upscale --attention` take them; an int is every row's; sampler: None is the card's, else
    "ddim". max_size: HR images are centre-cropped to at most this size (CPU budget; None: whole images)."""

    steps: Optional[int] = None
    sampler: Optional[str] = None  # None: the model's own (its card's), else "ddim"
    eta: Optional[float] = None  # None: the sampler's default (DDIM 0, the SDE / ancestral solvers 1)
    sigmas: Optional[str] = None  # the sigma-space solvers' noise levels (None: their default, karras)
    lower_bounds: tuple = (0.4, 0.6, 0.8)
    attentions: tuple = ("edge", "gaussian")
    seed: int = 0
    max_size: Optional[int] = 128
    backend: str = "auto"
    progress: bool = False
    lpips: Optional[tuple[str, str]] = None  # (VGG16 backbone weights path, LPIPS linear-head weights path)
    y_channel: bool = False  # PSNR / SSIM on Y with a border of the scale cut off, as SR papers (luma_metrics)

    def __post_init__(self):
        object.__setattr__(self, "lpips", lpips_paths(self.lpips))
        object.__setattr__(self, "lower_bounds", lower_bounds_of(self.lower_bounds))
        object.__setattr__(self, "attentions", one_or_many(self.attentions, "attentions"))
        check_distinct(self.attentions, "attentions")
        check_distinct(self.lower_bounds, "lower_bounds")
        for name, none in (("steps", "the model's own"), ("max_size", "whole images")):
            v = getattr(self, name)
            if not (v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1)):
                raise ValueError(f"{name} must be an int >= 1 or None ({none}), got {v!r}")
        fixed_seed(self.seed)  # None: yoda.sample would draw one per run, and two evaluations would differ
        for name in ("progress", "y_channel"):  # y_channel="no" scored on Y
            check_flag(getattr(self, name), name)
        for name in self.attentions:  # a misspelt one failed only after the first image's rows
            _attention.check_name(name)
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {self.sampler!r}")


def yoda_row_steps(adapter, settings: EvalSettings) -> dict:
    """{lower bound: the steps of its YODA rows}: settings.steps where given; else the model's own, raised as
    yoda.sample and `yoda upscale --attention` raise them to the fewest (up to MOST_YODA_STEPS) whose last step
    refines every pixel (the masks cover every pixel once tau = t/T - l reaches 0): at the embedded model's 1 step
    and l = 0.6 the pixels of attention below 0.4 kept the bicubic image, and the rows read as a loss of the method
    (-0.52 dB, against -0.02 at the 2 steps upscale takes). The model's own where no count up to that covers."""
    from .sampling.spec import covering_steps, last_tau_at

    if settings.steps is not None:
        return {lb: settings.steps for lb in settings.lower_bounds}
    steps, out = model_steps(adapter), {}
    for lb in settings.lower_bounds:
        tau = last_tau_at(adapter, sampler=settings.sampler or model_sampler(adapter), eta=settings.eta,
                          lower_bound=lb, seed=settings.seed, sigmas=settings.sigmas)
        out[lb] = covering_steps(tau, steps, adapter.schedule.T) or steps
    return out


def run_sample(model, lr: torch.Tensor, attention, lower_bound: float, s: EvalSettings, steps: int,
               sampler: str) -> tuple[torch.Tensor, int, float]:
    """(SR, denoiser calls, seconds) of one yoda.sample run (no progress bar of its own: evaluate has one)."""
    calls = [0]

    def count(d):
        calls[0] += int(d.get("calls", 1))

    t0 = time.perf_counter()
    with lr_from_images():  # lr is make_lr's, of an 8-bit HR image
        sr = _sampling.sample(model, lr, attention=attention, steps=steps, sampler=sampler, eta=s.eta,
                              sigmas=s.sigmas, lower_bound=lower_bound, seed=s.seed, backend=s.backend,
                              progress=False, callback=count)
    return sr, calls[0], time.perf_counter() - t0


def evaluate(model: Any, images: Iterable[tuple[str, np.ndarray]], settings: EvalSettings = EvalSettings(),
             on_error: Optional[Callable[[str, BaseException], None]] = None,
             rows: Optional[list] = None) -> list[dict]:
    """Per-image rows {image, method, attention, lower_bound, sampler, steps, seed, psnr, ssim, L_shift, ab_shift,
    metrics, calls, seconds}, plus "lpips" when settings.lpips names the weight files.

    model: anything yoda.sample takes (an adapter or a model with yoda_adapter()).
    images: (name, uint8 (H, W, 3)) HR images; LR = make_lr(HR). A list (yoda.data.load_source), or any iterable
    (yoda.data.ImageStream: one image read at a time). Each is centre-cropped to a size the model takes
    (yoda.data.model_crop); an image too small for it is an error naming it, raised before any sampling for a
    list, or given to ``on_error(name, error)`` and skipped when on_error is given.
    Before any sampling, each attention extractor is made once (DINO weights read once; its loading is not in
    YODA's time) and the LPIPS weights are loaded.
    rows: a list the rows are appended to, each image's once all its methods are done, and returned: what was done
    when the run is stopped (Ctrl-C) or fails part way."""
    if not isinstance(settings, EvalSettings):
        raise TypeError(f"settings must be a yoda.evaluate.EvalSettings, got {type(settings).__name__}")
    adapter = as_adapter(model)
    scale = adapter.scale
    steps = model_steps(adapter) if settings.steps is None else settings.steps
    by_lb = yoda_row_steps(adapter, settings) if settings.attentions else {}
    sampler = settings.sampler or model_sampler(adapter)
    upsamplings = {"bicubic": "torch", "bicubic-matlab": "matlab"}  # rows without sampling (yoda.upsampling)
    variants = [(name, None, None) for name in upsamplings] + [("plain", None, None)]
    variants += [("yoda", a, lb) for a in settings.attentions for lb in settings.lower_bounds]
    extractors = {name: _attention.get(name) for name in settings.attentions}
    dev = adapter.device() or torch.device("cpu")
    lpips_fn = None
    if settings.lpips is not None:
        from .lpips import LPIPS

        lpips_fn = LPIPS(*settings.lpips).to(dev)
    rows, warmed = [] if rows is None else rows, set()
    bar, skip = _data.sampling_bar(images, len(variants) - len(upsamplings), "yoda eval", settings.progress, on_error)
    try:
        images, _ = _data.crops_to_sample(images, adapter, settings.max_size, skip)
        for name, hr_u8 in images:
            hr = from_uint8(hr_u8).to(dev)
            lr = _data.make_lr(hr, scale)
            grey = is_grey(hr_u8)  # scored as `yoda upscale` writes it: grey
            if tuple(hr.shape) not in warmed:  # one untimed call at each size: the first call pays for allocations
                warmed.add(tuple(hr.shape))  # and oneDNN's choices, which charged the first timed row (plain 0.39 s
                run_sample(adapter, lr, None, 1.0, settings, 1, sampler)  # against yoda's 0.04)
            done = []
            for method, attn, lb in variants:
                n = "" if method in upsamplings else steps if lb is None else by_lb[lb]
                if method in upsamplings:
                    t0 = time.perf_counter()
                    # clamped as imresize of a uint8 image saturates (its overshoot, up to 1.5, was an error)
                    sr, calls = upsample(lr, scale, upsamplings[method]).clamp_(-1.0, 1.0), 0
                    secs = time.perf_counter() - t0
                else:
                    bar.set_postfix_str(f"{os.path.basename(name)} {method}{f' {attn} l={lb:g}' if attn else ''}")
                    sr, calls, secs = run_sample(adapter, lr, extractors.get(attn), 1.0 if lb is None else lb,
                                                 settings, n, sampler)
                    bar.update()
                row = {"image": name, "method": method, "attention": attn or "",
                       "lower_bound": "" if lb is None else lb}
                sr_u8 = output_u8(sr, grey)
                row.update(metrics(sr_u8, hr_u8, scale if settings.y_channel else None))
                if lpips_fn is not None:
                    with torch.no_grad():  # on the rounded image, like the other metrics
                        row["lpips"] = float(lpips_fn(from_uint8(sr_u8).to(dev), hr)[0])
                row.update(calls=calls, seconds=secs, sampler="" if method in upsamplings else sampler,
                           steps=n, seed=settings.seed,
                           metrics="Y" if settings.y_channel else "RGB")  # what was measured, in the CSV too
                done.append(row)
            rows.extend(done)
    finally:
        bar.close()
    return rows


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean over images of every metric, one row per (method, attention, lower_bound), in first-seen order; every
    row but plain's also has "vs_plain" and "vs_plain_ci" (paired_mean_ci of its PSNR minus plain's per image),
    when there is a plain row.

    An image that some method reproduces exactly has PSNR inf there, which would make that mean inf and hide
    every other image; leaving it out of that method's mean alone would compare the methods over different
    images. So every method's PSNR is the mean over the images that no method reproduces exactly, and "exact"
    counts the images left out (the same in every row). With none left, the PSNR is inf if the method reproduced
    all its images exactly, else NaN. Images are told apart by name and, for a name given twice (baby.png of two
    data sets), by its turn among that name's rows of each method: the plain row each row is compared with was the
    last of its name, and one exact reproduction left out every image of that name. Each row keeps its images'
    "metrics" ("Y" or "RGB": markdown_table heads its columns by it); rows of both are a ValueError (their PSNRs
    were averaged together)."""
    kinds = sorted({r.get("metrics", "RGB") for r in rows})
    if len(kinds) > 1:
        raise ValueError(f"rows: PSNR and SSIM measured on {' and '.join(kinds)} cannot be averaged together "
                         f"(EvalSettings.y_channel differed between the runs)")
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["attention"], r["lower_bound"]), []).append(r)
    keys = {}  # id(row) -> (image, its turn among the rows of that image in its group)
    for rs in groups.values():
        seen: dict = {}
        for r in rs:
            seen[r["image"]] = seen.get(r["image"], -1) + 1
            keys[id(r)] = (r["image"], seen[r["image"]])
    exact = {keys[id(r)] for r in rows if not math.isfinite(r["psnr"])}
    out = []
    for (method, attn, lb), rs in groups.items():
        row = {"method": method, "attention": attn, "lower_bound": lb, "images": len(rs),
               "steps": rs[0].get("steps", ""), "metrics": rs[0].get("metrics", "RGB")}
        for k in ("ssim", "L_shift", "ab_shift", "calls", "seconds"):
            row[k] = float(np.mean([r[k] for r in rs]))
        kept = [r["psnr"] for r in rs if keys[id(r)] not in exact]
        row["psnr"] = (float(np.mean(kept)) if kept else
                       math.inf if all(math.isinf(r["psnr"]) for r in rs) else math.nan)
        row["exact"] = len(rs) - len(kept)
        if all("lpips" in r for r in rs):
            row["lpips"] = float(np.mean([r["lpips"] for r in rs]))
        out.append(row)
    plain = {keys[id(r)]: r["psnr"] for r in groups.get(("plain", "", ""), [])}
    for row, rs in zip(out, groups.values()):
        diffs = [r["psnr"] - plain[keys[id(r)]] for r in rs if keys[id(r)] in plain and keys[id(r)] not in exact]
        if row["method"] != "plain" and diffs:
            row["vs_plain"], row["vs_plain_ci"] = paired_mean_ci(diffs)
    return out


def paired_mean_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float, Optional[float]]:
    """The mean of per-image differences and the half-width of its ``level`` Student-t confidence interval (None
    for one image): whether a method beats another on these images by more than the images' spread."""
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:  # (2.0: a nan interval)
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    n, mean = len(diffs), float(np.mean(diffs))
    if n < 2:
        return mean, None
    from scipy.stats import t

    return mean, float(t.ppf(0.5 + level / 2, n - 1) * np.std(diffs, ddof=1) / math.sqrt(n))


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """The per-image rows of evaluate() as CSV (one line per image and method), written atomically."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def markdown_table(rows: Sequence[dict], note: Optional[str] = LPIPS_NOTE, y_channel: Optional[bool] = None) -> str:
    """The summary as a markdown table (PSNR dB, PSNR vs plain with its 95% interval, SSIM, [LPIPS,] colour shift in
    Lab units, calls, seconds).

    The LPIPS column appears when every row has "lpips"; then the LPIPS_NOTE is not printed. y_channel: the
    PSNR and SSIM columns are luma_metrics' (headed PSNR-Y, SSIM-Y); None: as the rows' "metrics" say (summarize
    keeps it; a Y run's table was headed PSNR / SSIM unless the caller said y_channel=True)."""
    has_lpips = bool(rows) and all("lpips" in r for r in rows)
    lp_head = " LPIPS |" if has_lpips else ""
    if y_channel is None:
        y_channel = any(r.get("metrics") == "Y" for r in rows)
    y = "-Y" if y_channel else ""
    head = (f"| method | attention | l | images | PSNR{y} (dB) | vs plain (dB) | SSIM{y} |{lp_head} L shift | "
            "ab shift | denoiser calls | time (s) |")
    lines = [head, "|" + "---|" * (12 if has_lpips else 11)]
    plain_steps = next((r.get("steps") for r in rows if r["method"] == "plain"), None)
    for r in rows:
        lb = "" if r["lower_bound"] == "" else f"{r['lower_bound']:g}"
        k = r.get("steps", "")  # the steps of a row that samples with other steps than plain: in its method cell
        method = r["method"] + (f", {k} step{'s' * (k != 1)}" if k not in ("", plain_steps) else "")
        lp = f" {r['lpips']:.4f} |" if has_lpips else ""
        vs = "-" if "vs_plain" not in r else f"{r['vs_plain']:+.2f}" + (
            "" if r["vs_plain_ci"] is None else f" ± {r['vs_plain_ci']:.2f}")
        psnr = f"{r['psnr']:.2f}" if math.isfinite(r["psnr"]) else "inf" if r["psnr"] > 0 else "-"
        lines.append(f"| {method} | {r['attention'] or '-'} | {lb or '-'} | {r['images']} | {psnr} | "
                     f"{vs} | {r['ssim']:.4f} |{lp} {r['L_shift']:.3f} | {r['ab_shift']:.3f} | {r['calls']:.0f} | "
                     f"{r['seconds']:.2f} |")
    if has_lpips and note == LPIPS_NOTE:
        note = None
    n_exact = max((r.get("exact", 0) for r in rows), default=0)
    if n_exact:
        lines += ["", f"PSNR{y}: mean over the images that no method reproduces exactly; {n_exact} image(s) that some "
                      "method reproduces exactly (PSNR inf) are left out of every row's PSNR" +
                      ("" if any(math.isfinite(r["psnr"]) for r in rows) else
                       "; none is left: a row that reproduces every image exactly shows inf, the others -") + "."]
    if any(r.get("vs_plain_ci") is not None for r in rows):
        lines += ["", f"vs plain: the mean of each image's PSNR{y} minus plain's on it, ± the half-width of its 95% "
                      "Student-t confidence interval over the images; an interval that contains 0 shows no "
                      "significant difference."]
    if note:
        lines += ["", note + "."]
    return "\n".join(lines)
