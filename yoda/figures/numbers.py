"""The numbers of the figures: pure functions of arrays and tensors (see yoda.figures)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluate import check_pair, colour_shift, psnr
from ..masks import check_A, check_lower_bound, check_unit_range, pixel_update_ratio, tau_at
from ..sampling.prepare import resolve_attention


def attention_map(extractor: Any, lr: torch.Tensor, hr_size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, H, W) float32 in [0, 1] at ``hr_size``: the map yoda.sample uses for ``attention=extractor``
    (a name, a callable f(lr) or a tensor): resized bilinearly and, for an extractor, min-max normalised."""
    with torch.no_grad():
        return resolve_attention(extractor, lr, tuple(int(v) for v in hr_size))


def _images_of(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each map (B, 1, H, W) / (B, H, W) / (H, W) -> a list of single-image maps (1, 1, H, W), checked."""
    if isinstance(maps, torch.Tensor):
        maps = [maps]
    out = []
    for i, A in enumerate(maps):
        if isinstance(A, torch.Tensor) and A.dim() == 2:
            A = A[None, None]
        A = check_A(A, f"maps[{i}]")
        out += [A[b : b + 1] for b in range(A.shape[0])]
    if not out:
        raise ValueError("maps must hold at least one attention map")
    return out


def update_ratio_table(maps: Mapping[str, Sequence[torch.Tensor]], lower_bounds: Sequence[float]) -> dict:
    """Fig. 3 left: {method: float64 array over lower_bounds} of the mean over images of
    yoda.masks.pixel_update_ratio(A, l) = mean over pixels of min(1, A + l).

    maps: {method: [A of each image]}, A (1, 1, H, W) (or a batch, one image per entry); sizes may differ."""
    lbs = [check_lower_bound(v, f"lower_bounds[{i}]") for i, v in enumerate(lower_bounds)]
    if not lbs:
        raise ValueError("lower_bounds must not be empty")
    out = {}
    for name, As in maps.items():
        As = _images_of(As)
        out[name] = np.array([float(torch.cat([pixel_update_ratio(A, lb) for A in As]).double().mean())
                              for lb in lbs])
    return out


def refined_area_curve(maps: Sequence[torch.Tensor], T: int, lower_bound: float = 0.6,
                       ts: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 3 right: (ts, fraction) with ts = T, T-1, ..., 1 (DESIGN's t) unless given, and fraction[k] the mean
    over images of the fraction of pixels with A >= tau(ts[k]) = ts[k]/T - lower_bound (float32 comparison,
    as yoda.masks.mask_at). Counts come from one sort per image, so all T steps cost one pass."""
    As = _images_of(maps)
    ts = np.arange(T, 0, -1, dtype=np.int64) if ts is None else np.asarray(list(ts), dtype=np.int64)
    if ts.size == 0:
        raise ValueError("ts must not be empty")
    taus = torch.tensor([tau_at(int(t), T, lower_bound) for t in ts], dtype=torch.float32)
    total = np.zeros(ts.size, dtype=np.float64)
    for A in As:
        a = A.detach().float().flatten().cpu().sort().values
        below = torch.searchsorted(a, taus, side="left")  # pixels with A < tau
        total += 1.0 - below.double().numpy() / a.numel()
    return ts, total / len(As)


def bin_edges(bins: int) -> np.ndarray:
    """bins + 1 equally spaced edges of [0, 1]."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    return np.linspace(0.0, 1.0, int(bins) + 1)


def _bin_index(a: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: edges[i] <= a < edges[i + 1], the last bin closed (A = 1 falls in it)."""
    return np.clip(np.searchsorted(edges, a, side="right") - 1, 0, len(edges) - 2)


def _map2d(A, shape: tuple, name: str) -> np.ndarray:
    a = A.detach().cpu().double().numpy() if isinstance(A, torch.Tensor) else np.asarray(A, dtype=np.float64)
    a = a.reshape(a.shape[-2:]) if a.ndim > 2 and int(np.prod(a.shape[:-2])) == 1 else a
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must be (H, W) = {tuple(shape)} (or (1, 1, H, W)), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


class RegionalError:
    """regional_error gathered one image at a time (add), so that no image needs to be kept; result() is
    regional_error's dict. extra_names: the names of the per-pixel maps each add() brings in ``extra``."""

    def __init__(self, bins: int = 10, extra_names: Sequence[str] = ()):
        self.edges = bin_edges(bins)
        nb = len(self.edges) - 1
        self.count = np.zeros(nb, dtype=np.int64)
        self.se = np.zeros(nb, dtype=np.float64)
        self.sums = {k: np.zeros(nb, dtype=np.float64) for k in extra_names}
        self.flat = self.images = 0

    def add(self, sr: np.ndarray, hr: np.ndarray, A: Any, extra: Optional[Mapping[str, Any]] = None) -> None:
        """One image: uint8 (H, W, 3) sr and hr, its map A at (H, W), and {name: per-pixel map} of every
        extra name (errors name the image by its index, maps[i])."""
        i, extra = self.images, dict(extra or {})
        if set(extra) != set(self.sums):
            raise ValueError(f"extra must hold the maps {sorted(self.sums)}, got {sorted(extra)}")
        check_pair(sr, hr)
        a = _map2d(A, sr.shape[:2], f"maps[{i}]")
        check_unit_range(torch.from_numpy(a), f"maps[{i}]")  # (every value over 1 fell in the top bin, unsaid)
        self.images += 1
        if a.min() == a.max():
            self.flat += 1
            return
        nb = len(self.se)
        idx = _bin_index(a, self.edges).ravel()
        err = ((sr.astype(np.float64) - hr.astype(np.float64)) ** 2).mean(axis=2).ravel()
        self.count += np.bincount(idx, minlength=nb)
        self.se += np.bincount(idx, weights=err, minlength=nb)
        for k, m in extra.items():
            self.sums[k] += np.bincount(idx, weights=_map2d(m, sr.shape[:2], f"{k}[{i}]").ravel(), minlength=nb)

    def result(self) -> dict:
        count, edges = self.count, self.edges
        with np.errstate(divide="ignore", invalid="ignore"):
            mse = np.where(count > 0, self.se / np.maximum(count, 1), np.nan)
            psnr = np.where(count > 0, 10.0 * np.log10(255.0 ** 2 / mse), np.nan)
        out = {"edges": edges, "centres": (edges[:-1] + edges[1:]) / 2, "count": count.copy(), "mse": mse,
               "psnr": psnr, "flat": self.flat}
        for k, v in self.sums.items():
            out[k] = np.where(count > 0, v / np.maximum(count, 1), np.nan)
        return out


def regional_error(srs: Sequence[np.ndarray], hrs: Sequence[np.ndarray], maps: Sequence[Any], bins: int = 10,
                   extra: Optional[Mapping[str, Sequence[Any]]] = None) -> dict:
    """Fig. 5: error of SR vs HR per bin of the attention value A.

    srs, hrs: uint8 (H, W, 3) images; maps: A of each image at the same (H, W) (array or tensor, values in
    [0, 1]). extra: {name: [per-pixel map (H, W) of each image]} averaged per bin too (e.g. "lpips").
    Returns {"edges", "centres", "count" (pixels per bin, all images), "mse" (8-bit units^2), "psnr" (dB),
    and each extra name}: arrays over bins, NaN for an empty bin (PSNR inf where the MSE is 0); and "flat", the
    number of images left out because their map is constant (a flat image's map is all ones, DESIGN.md §3: it
    ranks no pixel above another, and its pixels would all fill the top bin). RegionalError gathers the same
    one image at a time."""
    acc = RegionalError(bins, tuple(extra or {}))
    if not (len(srs) == len(hrs) == len(maps)) or not srs:
        raise ValueError(f"give one sr, hr and map per image (got {len(srs)}, {len(hrs)}, {len(maps)})")
    extra = dict(extra or {})
    for k, v in extra.items():
        if len(v) != len(srs):
            raise ValueError(f"extra[{k!r}] must hold one map per image, got {len(v)} for {len(srs)} images")
    for i, (sr, hr, A) in enumerate(zip(srs, hrs, maps)):
        acc.add(sr, hr, A, {k: v[i] for k, v in extra.items()})
    return acc.result()


def poly_fit(x: Sequence[float], y: Sequence[float], degree: int = 2,
             count: Optional[Sequence[float]] = None) -> Optional[np.ndarray]:
    """numpy.polyfit of the finite (x, y) points: coefficients, highest power first. The degree is lowered to
    (number of points - 1) when there are fewer points; None with fewer than 2 points.

    count: how many pixels each point (a bin's mean) averages; the fit then weighs each point by sqrt(count)
    (numpy.polyfit's w = 1 / sigma, a mean's sigma falling as 1 / sqrt(count)), so a bin of 30 pixels does not
    pull the line as hard as one of 30000. Points with count 0 are left out."""
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
        raise ValueError(f"degree must be a positive int, got {degree!r}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    w = None
    if count is not None:
        c = np.asarray(count, dtype=np.float64)
        if c.shape != x.shape or not np.isfinite(c).all() or (c < 0).any():
            raise ValueError(f"count must hold one finite count >= 0 per point, got {c!r}")
        ok &= c > 0
        w = np.sqrt(c[ok])
    n = int(ok.sum())
    if n < 2:
        return None
    return np.polyfit(x[ok], y[ok], min(int(degree), n - 1), w=w)


LOG_FITS = ("mse", "lpips")  # fitted as log(y): a quadratic of MSE itself went below 0 inside the bins' range
# (Fig. 5), and LPIPS's with it (a review, 2026-12-07): both are >= 0 and fall steeply with A


def bin_fit(r: Mapping, key: str, degree: int) -> Optional[np.ndarray]:
    """Fig. 5's fit of regional_error's ``r[key]`` over the bin centres (poly_fit, weighted by the bins' pixels); of
    log(y) for the keys of LOG_FITS (fit_values undoes it), so that a line of MSE stays > 0 (a bin with MSE 0 is
    left out of it)."""
    y = np.asarray(r[key], dtype=np.float64)
    if key in LOG_FITS:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log(y)
    return poly_fit(r["centres"], y, degree, r["count"])


def fit_values(coefs: np.ndarray, key: str, xs: np.ndarray) -> np.ndarray:
    """The values of bin_fit's line for ``key`` at ``xs``."""
    ys = np.polyval(coefs, xs)
    return np.exp(ys) if key in LOG_FITS else ys


def lpips_layer_maps(metric, sr: torch.Tensor, hr: torch.Tensor) -> list[torch.Tensor]:
    """The per-layer LPIPS maps (B, 1, H / 2^l, W / 2^l): lin_l((n_l(sr) - n_l(hr))^2) of yoda.lpips.LPIPS;
    the sum over layers of their spatial means is metric(sr, hr)."""
    from ..lpips import LPIPS_SCALE, LPIPS_SHIFT, _EPS

    metric._check("sr", sr)
    metric._check("hr", hr)
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
    w = metric._weight()
    shift = torch.tensor(LPIPS_SHIFT, dtype=w.dtype, device=w.device).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE, dtype=w.dtype, device=w.device).view(1, 3, 1, 1)
    b = sr.shape[0]
    z = (torch.cat([sr, hr]).to(w.dtype) - shift) / scale
    out = []
    with torch.no_grad():
        for f, lin in zip(metric.net(z), metric.lins.heads()):
            n = f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + _EPS)
            out.append(lin((n[:b] - n[b:]) ** 2))
    return out


def lpips_map(metric, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Spatial LPIPS (B, H, W): the layer maps upsampled bilinearly to the image size and summed, as the lpips
    package's ``spatial=True``. Its mean is close to, not exactly, metric(sr, hr) (upsampling is not
    mean-preserving at the borders)."""
    size = sr.shape[-2:]
    total = torch.zeros((sr.shape[0], 1, *size), dtype=torch.float32, device=sr.device)
    for m in lpips_layer_maps(metric, sr, hr):
        total += F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)
    return total[:, 0]


def best_crop(A, size: int) -> tuple[int, int]:
    """(y, x) of the size x size window with the highest mean attention (origins on a stride of size // 4, the
    last ones flush with the edges; the first maximum wins). A: (H, W) or (1, 1, H, W)."""
    a = A.detach().cpu().double().numpy() if isinstance(A, torch.Tensor) else np.asarray(A, dtype=np.float64)
    a = a.reshape(a.shape[-2:])
    H, W = a.shape
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= min(H, W):
        raise ValueError(f"crop size must be an int in [1, {min(H, W)}] for a {W}x{H} map, got {size!r}")
    ii = np.zeros((H + 1, W + 1))
    ii[1:, 1:] = a.cumsum(0).cumsum(1)
    stride = max(1, size // 4)

    def origins(n):
        o = list(range(0, n - size + 1, stride))
        return o if o[-1] == n - size else o + [n - size]

    best, where = -math.inf, (0, 0)
    for y in origins(H):
        for x in origins(W):
            s = ii[y + size, x + size] - ii[y, x + size] - ii[y + size, x] + ii[y, x]
            if s > best + 1e-9 * size * size:
                best, where = s, (y, x)
    return where


def crop_metrics(sr: np.ndarray, hr: np.ndarray) -> dict:
    """{"psnr", "ab_shift"} of uint8 SR vs HR (yoda.evaluate.psnr and colour_shift)."""
    return {"psnr": psnr(sr, hr), "ab_shift": colour_shift(sr, hr)["ab_shift"]}
