"""compute(): sample a set of HR images plain and with YODA and gather every number the figures show."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from .. import attention as _attention
from .. import data as _data
from .. import sampling as _sampling
from ..adapters import as_adapter, upsample
from ..errors import lr_from_images
from ..evaluate import check_distinct, fixed_seed, lower_bounds_of, lpips_paths, one_or_many
from ..images import from_uint8, is_grey, output_u8
from ..masks import as_float, check_lower_bound, positive_int
from .numbers import (RegionalError, attention_map, best_crop, bin_fit, crop_metrics, lpips_map,
                      refined_area_curve, update_ratio_table)


# ----------------------------------------------------------------------------------------------------------
# Sampling a set of images
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureSettings:
    """What `yoda figures` computes. attentions: Fig. 3's methods; the first is YODA's map in Fig. 4 and 5.
    lower_bound: YODA's l (Fig. 4, 5 and Fig. 3 right); lower_bounds: Fig. 3 left. max_size: HR images are
    centre-cropped to at most this (None: full size). crops: images shown in Fig. 4 (the first ones);
    crop_size: Fig. 4's crop side (None: half the short side of the HR image, at least 16 px).
    lpips: (VGG16 backbone, LPIPS lin heads) local weight files for Fig. 5's LPIPS panel, or None."""

    attentions: tuple = ("edge", "gaussian", "sift")
    lower_bound: float = 0.6
    lower_bounds: tuple = (0.2, 0.4, 0.6, 0.8, 1.0)
    steps: int = 20
    sampler: str = "ddim"
    eta: float = 0.0
    seed: int = 0
    max_size: Optional[int] = 128
    bins: int = 10
    degree: int = 2
    crops: int = 3
    crop_size: Optional[int] = None
    backend: str = "auto"
    progress: bool = False
    lpips: Optional[tuple] = None

    def __post_init__(self):
        object.__setattr__(self, "attentions", one_or_many(self.attentions, "attentions"))
        if not self.attentions:
            raise ValueError("attentions must name at least one attention method")
        object.__setattr__(self, "lower_bound", check_lower_bound(self.lower_bound))
        object.__setattr__(self, "lower_bounds", lower_bounds_of(self.lower_bounds))
        if not self.lower_bounds:
            raise ValueError("lower_bounds must not be empty")
        check_distinct(self.attentions, "attentions")
        check_distinct(self.lower_bounds, "lower_bounds")
        fixed_seed(self.seed)  # None: yoda.sample would draw one per run, and plain and YODA would not share it
        # whole ints (numpy's too: they were refused; max_size 32.0 and crop_size 20.5 failed only after sampling)
        for name in ("steps", "bins", "degree", "crops", "max_size", "crop_size"):
            v = getattr(self, name)
            if v is not None or name not in ("max_size", "crop_size"):
                what = "an int >= 1" + " or None" * (name[-4:] == "size")
                object.__setattr__(self, name, positive_int(v, name, what))
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be ddpm or ddim, got {self.sampler!r}")
        object.__setattr__(self, "eta", as_float(self.eta, "eta"))  # (None: "must be real number, not NoneType")
        if self.eta < 0:
            raise ValueError(f"eta must be a finite float >= 0, got {self.eta}")
        if self.sampler == "ddpm" and self.eta != 0:
            raise ValueError("eta applies to the ddim sampler only; leave it at 0 for ddpm")
        object.__setattr__(self, "lpips", lpips_paths(self.lpips))


@dataclass
class FigureData:
    """What compute() returns; the draw_* functions read only this."""

    settings: FigureSettings
    names: list  # of every image sampled
    # the images Fig. 4 shows (the first settings.crops; no other image is kept):
    hr: list  # uint8 (H, W, 3) HR images (after the centre crop)
    sr: dict  # {"bicubic" | "plain" | "YODA": [uint8 (H, W, 3) per image]}
    maps: dict  # {method: [A (1, 1, H, W) float32 at HR size per image]}
    T: int
    ratios: dict  # Fig. 3 left: {method: array over settings.lower_bounds}
    curve_ts: np.ndarray  # Fig. 3 right: t = T..1
    curves: dict  # {method: refined fraction at each t}
    regional: dict  # Fig. 5: {"plain" | "YODA": regional_error(...) dict}
    fits: dict  # {("plain" | "YODA", "mse" | "psnr" | "lpips"): coefficients or None}
    crops: list = field(default_factory=list)  # Fig. 4: [{"name", "box": (y, x, size), "images", "metrics", "hr"}]
    lpips_note: str = ""


def _method_label(name: str) -> str:
    return str(name).split(":", 1)[0]


def compute(model: Any, images: Iterable[tuple[str, np.ndarray]], settings: FigureSettings = FigureSettings(),
            on_error: Optional[Callable[[str, BaseException], None]] = None) -> FigureData:
    """Sample every HR image of ``images`` ((name, uint8 (H, W, 3)); LR = yoda.data.make_lr) with plain and
    YODA sampling (the same seed), and compute the numbers of Fig. 3, 4 and 5. images and on_error as
    yoda.evaluate.evaluate's: a list is cropped (and checked) before any sampling; any iterable is cropped as it
    comes, an image that fails given to on_error and skipped. Every number is gathered image by image: only the
    first settings.crops images (Fig. 4's) are kept.

    Attention extractors and LPIPS weights are resolved before any sampling, so a bad name or file fails fast."""
    s = settings
    extractors = {name: _attention.get(name) for name in s.attentions}
    adapter = as_adapter(model)
    scale = adapter.scale
    dev = adapter.device() or torch.device("cpu")
    lpips_fn = None
    if s.lpips is not None:
        from ..lpips import LPIPS

        lpips_fn = LPIPS(*s.lpips).to(dev)
    T = int(adapter.schedule.T)
    yoda_name = s.attentions[0]
    # every number is gathered image by image; only the images Fig. 4 shows (the first s.crops) are kept
    names, hrs, maps = [], [], {name: [] for name in s.attentions}
    srs = {"bicubic": [], "plain": [], "YODA": []}
    ratio_sums = {name: 0.0 for name in s.attentions}
    curve_sums, ts = {name: 0.0 for name in s.attentions}, None
    regional_acc = {label: RegionalError(s.bins, ("lpips",) if lpips_fn is not None else ())
                    for label in ("plain", "YODA")}
    bar, skip = _data.sampling_bar(images, 2, "yoda figures", s.progress, on_error)
    try:
        images, n_images = _data.crops_to_sample(images, adapter, s.max_size, skip)
        for name, hr_u8 in images:
            hr = from_uint8(hr_u8).to(dev)
            lr = _data.make_lr(hr, scale)
            size = tuple(hr.shape[-2:])
            kept = len(names) < s.crops
            names.append(str(name))
            amaps = {a_name: attention_map(ex, lr, size).cpu() for a_name, ex in extractors.items()}
            for a_name, A in amaps.items():
                ratio_sums[a_name] = ratio_sums[a_name] + update_ratio_table({a_name: [A]}, s.lower_bounds)[a_name]
                ts, curve = refined_area_curve([A], T, s.lower_bound)
                curve_sums[a_name] = curve_sums[a_name] + curve
            grey = is_grey(hr_u8)  # scored as `yoda upscale` writes it: grey
            sr_u8s = {"bicubic": output_u8(upsample(lr, scale), grey)}
            for label, attn in (("plain", None), ("YODA", amaps[yoda_name].to(dev))):
                bar.set_postfix_str(f"{Path(str(name)).name} {label}")
                with torch.no_grad(), lr_from_images():  # lr is make_lr's, of an 8-bit HR image
                    sr = _sampling.sample(adapter, lr, attention=attn, steps=s.steps, sampler=s.sampler, eta=s.eta,
                                          lower_bound=s.lower_bound if attn is not None else 1.0, seed=s.seed,
                                          backend=s.backend, progress=False)
                sr_u8s[label] = sr_u8 = output_u8(sr, grey)
                extra = None
                if lpips_fn is not None:  # on the rounded image, like every other metric
                    extra = {"lpips": lpips_map(lpips_fn, from_uint8(sr_u8).to(dev), hr)[0].cpu().numpy()}
                regional_acc[label].add(sr_u8, hr_u8, amaps[yoda_name], extra)
                bar.update(1)
            if kept:
                hrs.append(hr_u8)
                for k, v in sr_u8s.items():
                    srs[k].append(v)
                for a_name, A in amaps.items():
                    maps[a_name].append(A)
    finally:
        bar.close()

    if not names:
        raise ValueError("images must not be empty" if n_images == 0 else "no image could be sampled")
    n = len(names)
    ratios = {k: v / n for k, v in ratio_sums.items()}
    curves = {k: v / n for k, v in curve_sums.items()}
    regional, fits = {}, {}
    for label in ("plain", "YODA"):
        regional[label] = r = regional_acc[label].result()
        for key in ("mse", "psnr") + (("lpips",) if lpips_fn is not None else ()):
            fits[(label, key)] = bin_fit(r, key, s.degree)

    crops = []
    for i in range(len(hrs)):
        H, W = hrs[i].shape[:2]
        c = min(H, W, s.crop_size) if s.crop_size else min(H, W, max(16, min(H, W) // 2))
        # where plain and YODA differ most (the most attended window, chosen before, is where YODA refines from
        # its first step: the two crops looked alike), by the mean |YODA - plain| over RGB
        diff = np.abs(srs["YODA"][i].astype(np.float64) - srs["plain"][i].astype(np.float64)).mean(-1)
        y, x = best_crop(diff, c)
        ims = {"bicubic": srs["bicubic"][i], "plain": srs["plain"][i], "YODA": srs["YODA"][i], "HR": hrs[i]}
        cut = {k: np.ascontiguousarray(v[y : y + c, x : x + c]) for k, v in ims.items()}
        met = {k: {"crop": crop_metrics(cut[k], cut["HR"]), "image": crop_metrics(ims[k], hrs[i])}
               for k in ("bicubic", "plain", "YODA")}
        crops.append({"name": names[i], "box": (y, x, c), "images": cut, "metrics": met, "hr": hrs[i],
                      "flat": bool(diff.max() == diff.min())})  # no window differs more than another
    if lpips_fn is not None:
        note = ("LPIPS per bin: mean of the spatial LPIPS map (layer maps upsampled bilinearly and summed, as "
                "lpips' spatial=True)")
    else:
        note = "LPIPS per bin omitted: it needs local VGG16 + LPIPS head weights (--lpips BACKBONE LIN), none were given"
    return FigureData(settings=s, names=names, hr=hrs, sr=srs, maps=maps, T=T, ratios=ratios, curve_ts=ts,
                      curves=curves, regional=regional, fits=fits, crops=crops, lpips_note=note)
