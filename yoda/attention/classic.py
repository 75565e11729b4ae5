"""Non-learnable attention extractors (edge, Gaussian prior, SIFT) and the pipeline they share.

Every extractor is a callable ``f(lr) -> A``:

    lr : (B, 3, h, w) float in [-1, 1]  (a grey (B, 1, h, w) input is repeated to 3 channels)
    A  : (B, 1, h, w) float32 in [0, 1] at the LR resolution, on lr's device

Pipeline (DESIGN.md §3), shared by all extractors through :func:`aggregate`:

    maps (B, K, h', w')  --MAX over K-->  (B, 1, h', w')  --bilinear-->  (B, 1, h, w)
        --per-image min-max-->  A = (m - min m) / (max m - min m)      (a constant map -> all ones)
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from typing import Any, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import cpu_default_device
from ..errors import lr_from_images_now
from ..masks import as_int, check_dense, extremes, positive_int

__all__ = [
    "check_lr",
    "aggregate",
    "minmax_normalize",
    "luma",
    "Edge",
    "Gaussian",
    "Sift",
    "edge",
    "gaussian",
    "sift",
]

# ITU-R BT.601 luma weights: the grey image the edge and SIFT extractors look at.
_LUMA = (0.299, 0.587, 0.114)


# How far an LR tensor may stray outside [-1, 1] and be clamped: resampling overshoot (torch's bicubic of 8-bit
# photographs reaches -1.07 and 1.18; the old 0.02 refused them). Further out is another range ([0, 255], an
# ImageNet normalisation), refused by check_lr_range. yoda.sample (sampling.spec), the extractors and the figure
# share it.
LR_MARGIN = 0.25


def check_lr_range(name: str, lo: float, hi: float) -> None:
    """ValueError naming ``name`` where an LR tensor's values [lo, hi] stray beyond [-1, 1] by more than LR_MARGIN."""
    if not (-1.0 - LR_MARGIN <= lo and hi <= 1.0 + LR_MARGIN):
        raise ValueError(f"{name} values must lie in [-1, 1] (x / 127.5 - 1 for 8-bit images, 2 * x - 1 for [0, 1] "
                         f"ones; {name}.clamp(-1, 1) for a resize's overshoot), got range [{lo:.4g}, {hi:.4g}]")


def check_values(x: torch.Tensor, name: str) -> Tuple[float, float]:
    """(least, greatest) value of an image tensor meant to be in [-1, 1], read in one reduction in its own dtype
    (float64 exactly): ValueError naming ``name`` for a NaN or an Inf, or for values beyond [-1, 1] by more than
    LR_MARGIN (check_lr_range). The one value check of yoda.sample's lr, the extractors', to_uint8 and psnr_u8."""
    lo, hi = extremes(x)  # a NaN or an Inf shows in them: one device sync
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf")
    check_lr_range(name, lo, hi)
    return lo, hi


def warn_if_zero_one(lo: float, hi: float, stacklevel: int) -> None:
    """A UserWarning where an LR tensor whose values span [lo, hi] looks like a [0, 1] image (yoda.sample's lr, and
    an extractor's when called by itself: SIFT found 42% fewer keypoints on one)."""
    # a [0, 1] photograph has its darkest pixel at about 0 and none below; a bright image in [-1, 1] (a white
    # page, fog) has its darkest pixel well above mid-gray and is not warned of. A light photograph whose darkest
    # pixel is just above mid-gray cannot be told from a [0, 1] image: callers that made lr of 8-bit images
    # themselves silence the warning (yoda.errors.lr_from_images), as yoda.sample does around the extractor it calls
    if 0.0 <= lo <= 0.02 and hi > 0.5 and not lr_from_images_now():
        # words that do not depend on the image: Python's default filter says it once for a loop over images (a
        # service got one line, and one warning-registry entry, per image)
        warnings.warn("lr has no negative value and its darkest pixel is within 0.02 of 0: yoda takes images in "
                      "[-1, 1] (yoda.from_uint8; 2 * x - 1 for a [0, 1] tensor), and a [0, 1] image comes out "
                      "washed out. A light image already in [-1, 1] (its darkest pixel just above mid-grey) is right "
                      "as it is: "
                      "warnings.filterwarnings('ignore', 'lr has no negative value') silences this",
                      UserWarning, stacklevel=stacklevel + 1)


def warn_if_stretched(src: str, map_hw: Tuple[int, int], image_hw: Tuple[int, int], stacklevel: int) -> None:
    """A UserWarning when no scale of the image gives the map's size to within a pixel a side (the rounding of a
    patch model's map): a map of another image, or one with its sides swapped, would be stretched silently."""
    (h, w), (H, W) = map_hw, image_hw
    if max((h - 1) / H, (w - 1) / W) > min((h + 1) / H, (w + 1) / W):
        # words that do not depend on the sizes: Python's default filter says it once for a loop over images (each
        # new pair of sizes was a line and a warning-registry entry, without bound in a service)
        warnings.warn(f"{src} is stretched to the image, whose aspect ratio differs (compare their shapes): a map "
                      "of another image, or one with its height and width swapped?", UserWarning,
                      stacklevel=stacklevel + 1)


def check_lr(lr: Any, name: str = "lr", float32: bool = True, stacklevel: int = 2) -> torch.Tensor:
    """An LR batch checked, as (B, 3, h, w) in [-1, 1], contiguous: float32 and detached (an attention map's input),
    or in lr's own floating dtype (``float32`` False: yoda.sample's lr, whose dtype is the state's).

    Accepts (B, 1, h, w) (repeated to 3 channels) or (B, 3, h, w) on any device. TypeError / ValueError naming
    ``name`` for: a non-tensor, a sparse or meta tensor, a non-float dtype, a rank other than 4, a channel count other
    than 1 or 3, an empty tensor, NaN / Inf, values outside [-1, 1] by more than LR_MARGIN (those within it are
    clamped); a UserWarning (warn_if_zero_one; ``stacklevel`` from the caller) where it looks like a [0, 1] image.
    """
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, 3, h, w) in [-1, 1], got {type(lr).__name__}: "
                        f"yoda.load_image(path) reads a file, yoda.from_uint8(image) takes a PIL image or uint8 array")
    check_dense(lr, name)  # (a sparse lr failed in torch: "Could not run 'aten::aminmax' ... SparseCPU")
    hint = ""  # an image's other usual layouts, said with the fix: an array's (h, w, C) / (B, h, w, C), one (C, h, w)
    if lr.dim() in (3, 4) and lr.shape[-1] in (1, 3) and lr.shape[-3] not in (1, 3):
        fix = f"{name}.permute(0, 3, 1, 2)" if lr.dim() == 4 else f"{name}.permute(2, 0, 1)[None]"
        hint = f"; channels last? {fix} puts them first"
    elif lr.dim() == 3 and lr.shape[0] in (1, 3):
        hint = f"; one image? {name}[None] makes a batch of it"
    if lr.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, h, w) with C in (1, 3), got shape {tuple(lr.shape)}{hint}")
    if lr.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 (grey) or 3 (RGB) channels, got {lr.shape[1]} (shape "
                         f"{tuple(lr.shape)}){hint}")
    if lr.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(lr.shape)})")
    if not lr.is_floating_point():
        hint = ": lr.float() / 127.5 - 1 makes 8-bit values [-1, 1]" if lr.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be a floating-point tensor with values in [-1, 1], got {lr.dtype}{hint}")
    if lr.is_meta:  # shapes without values: the value checks below cannot run on it
        raise ValueError(f"{name} is on the meta device (a shape without values): create or load it on the CPU or a "
                         f"GPU")
    lo, hi = check_values(lr, name)  # yoda.sample's margin: what it takes, its extractors take
    warn_if_zero_one(lo, hi, stacklevel=stacklevel)  # an extractor's: in its module, said once a process
    x = lr.detach().float() if float32 else lr
    # contiguous: a channels-last lr (a permuted array's view) ran the network's convolutions in that layout, which
    # round otherwise (up to 1e-4 after a few solver steps); that layout is channels_last=True's, asked for
    return x.clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def float32_maps(call):
    """An extractor's __call__ with autocast off: a caller's bf16 autocast ran its convolutions (and a network's
    matmuls) in bf16, which moved an edge map by 0.006 and the masks with it; yoda.sample turned it off, a direct
    call (README's training recipe) did not."""
    @functools.wraps(call)
    def run(self, lr):
        dev = lr.device.type if isinstance(lr, torch.Tensor) else "cpu"
        with torch.autocast(dev if dev in ("cpu", "cuda") else "cpu", enabled=False), cpu_default_device():
            return call(self, lr)  # (meta has no autocast)
    return run


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 1, h, w) grey, Y = 0.299 R + 0.587 G + 0.114 B (BT.601)."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def minmax_normalize(m: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Per-image min-max normalisation of (B, 1, h, w): A = (m - min) / (max - min).

    A map whose range is at most ``rtol * max(|min|, |max|)`` (or exactly zero) is treated as
    constant and returns all ones (DESIGN.md §3): a flat map means "no preference", and ones keep
    every pixel active, i.e. the plain sampler. The relative tolerance stops float noise of a
    constant image from being stretched into a random mask.
    """
    B = m.shape[0]
    flat = m.reshape(B, -1).float()
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    rng = hi - lo
    scale = torch.maximum(lo.abs(), hi.abs())
    const = rng <= rtol * scale
    safe = torch.where(const, torch.ones_like(rng), rng)
    # in place after the one new map: at 8192² HR two map-sized buffers at the peak, not four
    out = (flat - lo[:, None]).div_(safe[:, None]).masked_fill_(const[:, None], 1.0)
    return out.clamp_(0.0, 1.0).reshape(m.shape)


def aggregate(maps: torch.Tensor, size: Tuple[int, int], cell_centre: float = 0.5) -> torch.Tensor:
    """The shared pipeline: (B, K, h', w') maps -> A (B, 1, h, w) float32 in [0, 1].

    A = minmax( bilinear_resize( max_k maps[:, k], size ) ), a grid finer than ``size`` (along either axis)
    max-pooled to it first, whatever cell_centre (a pixel is as attended as the most attended cell it covers).
    cell_centre: where cell i of the grid sits, at i + cell_centre cells from the image's edge: 0.5, a patch's
    middle (a ViT's; bilinear with align_corners=False), or 0.5 / stride for a CNN whose cell i is centred on its
    input pixel stride * i (a ResNet's layer4, stride 32). Either way the map is held constant beyond the first and
    last cell centres.
    """
    if maps.dim() != 4 or maps.shape[1] < 1:
        raise ValueError(f"maps must be (B, K, h', w') with K >= 1, got shape {tuple(maps.shape)}")
    m = maps.float().amax(dim=1, keepdim=True)
    (n, k), (h, w) = m.shape[-2:], size
    centres = (cell_centre, cell_centre)
    if n > h or k > w:  # a grid finer than the image (a small LR enlarged for the network): each pixel takes the
        # most attended cell it covers; bilinear would read two cells a side and lose the others (a single hot
        # patch fell to 1.6% of an equal one elsewhere at 28 -> 16; a ResNet's to 14% at 7 -> 4). A pooled cell
        # covers its pixel: centred on it
        m = F.adaptive_max_pool2d(m, (min(n, h), min(k, w)))
        centres = (0.5 if n > h else cell_centre, 0.5 if k > w else cell_centre)
    if centres != (0.5, 0.5):
        m = _resample_cells(m, (h, w), centres)
    elif tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return minmax_normalize(m)


def _resample_cells(m: torch.Tensor, size: Tuple[int, int], centres: Tuple[float, float]) -> torch.Tensor:
    """m (B, 1, n, k) -> (B, 1, h, w), bilinear: output pixel y reads cell coordinate (y + 0.5) n / h - centre
    (centres: the rows' and the columns'; cells beyond the grid: its border)."""
    def coords(out: int, n: int, centre: float) -> torch.Tensor:
        idx = (torch.arange(out, dtype=torch.float64) + 0.5) * n / out - centre
        return (idx / (n - 1) * 2 - 1).clamp(-1, 1) if n > 1 else torch.zeros(out, dtype=torch.float64)

    (h, w), (n, k) = size, m.shape[-2:]
    gy, gx = torch.meshgrid(coords(h, n, centres[0]), coords(w, k, centres[1]), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).to(device=m.device, dtype=m.dtype).expand(m.shape[0], h, w, 2)
    return F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _gaussian_kernel1d(sigma: float, device, dtype=torch.float32, side: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ceil(3 sigma) (99.7 % of the mass), at most 4 ``side`` (4 times the image's
    longer side: sigma = 1e6 padded each map by 3e6 pixels; a sigma above 4/3 of the side blurs the image nearly
    flat, and its kernel is cut there)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    if side is not None:
        radius = min(radius, 4 * max(1, int(side)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, h, w), replicate padding (works for any h, w >= 1)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma, x.device, x.dtype, max(x.shape[-2:]))
    r = (k.numel() - 1) // 2
    out = []
    for one in x.split(1):  # one image per conv: oneDNN's algorithm (and its last bit) depends on the batch size
        one = F.conv2d(F.pad(one, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        out.append(F.conv2d(F.pad(one, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1)))
    return torch.cat(out)


def _not_an_image(value, name: str, maker: str) -> None:
    """An extractor's parameter given the image (yoda.attention.edge(lr)): a TypeError saying how to call it (the
    parameter's own check printed the whole tensor, 8 kB)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 2:
        raise TypeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}: {maker}(...) makes "
                        f"an extractor, which takes the image: yoda.attention.{maker}()(lr)")


def _check_positive(value, name: str, allow_zero: bool = False, maker: str = "edge") -> float:
    _not_an_image(value, name, maker)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's too
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past float64's range (10**400): math's bare error named nothing
        raise ValueError(f"{name} must be a finite number, got an int past float64's range") from None
    if not finite:  # a number, but not a usable value
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


EDGE_FLOOR = 1e-4  # Edge: an image whose gradient magnitudes are all below this, or all within it, is flat


class Edge:
    """Edge attention: smoothed gradient magnitude of the luma image (K = 1).

        g = Y (BT.601 luma of lr), G = sqrt(sobel_x(g)^2 + sobel_y(g)^2), map = gauss_sigma * G

    Sobel inside the image; the outer ring takes the magnitude of the pixel next to it inward (replicate padding
    of the image halved the gradient across the border there, and linear extrapolation doubles its noise); an
    image of 3 pixels or fewer on a side is replicate-padded (at 3 the ring would copy the one inner pixel
    everywhere: a 3 x 3 map was constant whatever the image). ``sigma`` (LR pixels) spreads the response from the edge
    line to the pixels around it, which the SR step also has to refine; 0 disables the blur.
    """

    minmax_after_resize = True  # yoda.sample normalises its map again after the resize (DESIGN §3)

    def __init__(self, sigma: float = 1.0):
        self.sigma = _check_positive(sigma, "sigma", allow_zero=True)

    def maps(self, lr: torch.Tensor) -> torch.Tensor:
        x = check_lr(lr)
        g = luma(x)
        inner = min(g.shape[-2:]) > 3  # the outer ring takes its neighbour's magnitude (class docstring)
        gp = g if inner else F.pad(g, (1, 1, 1, 1), mode="replicate")
        # Sobel by shifted differences, not conv2d: oneDNN's convolution rounds differently with the batch size
        # (1 ulp), so an image's map changed with the images batched beside it
        dx = gp[..., :, 2:] - gp[..., :, :-2]
        dy = gp[..., 2:, :] - gp[..., :-2, :]
        gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
        gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
        mag = torch.sqrt(gx * gx + gy * gy)
        if inner:
            mag = F.pad(mag, (1, 1, 1, 1), mode="replicate")
        # an image whose gradients are all float noise (far below one 8-bit level, ~0.008 here) is flat: its map
        # is zero, so that min-max makes it all ones, instead of stretching the noise of a resize into a mask. So
        # is one whose gradient is the same everywhere within float noise (a linear ramp): its range, ~1e-6 of
        # its magnitude, rounds differently in another batch, and min-max made a random mask of it
        hi, lo = mag.flatten(1).amax(dim=1), mag.flatten(1).amin(dim=1)
        mag = mag * ((hi >= EDGE_FLOOR) & (hi - lo >= EDGE_FLOOR)).view(-1, 1, 1, 1)
        return _blur(mag, self.sigma)

    @float32_maps
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        m = self.maps(lr)
        return aggregate(m, tuple(lr.shape[-2:]))

    def __repr__(self) -> str:
        return f"edge(sigma={self.sigma:g})"


class Gaussian:
    """Centred 2-D Gaussian prior (content-independent, K = 1).

        map(y, x) = exp(-((x - cx)^2 / (2 (sigma w)^2) + (y - cy)^2 / (2 (sigma h)^2)))
        cx = (w - 1) / 2, cy = (h - 1) / 2   (pixel centres; the map is symmetric under flips)

    ``sigma`` is a fraction of the image side, so the prior covers the same part of any image. The map is min-max
    normalised (aggregate), which removes the prior's height: above sigma ~ 1 every sigma gives about the same
    map (1 at the centre, 0 in the corners), and a sigma so wide that float32 cannot tell the corners from the
    centre gives a flat map (all ones: every pixel active).
    The input's content is validated but otherwise ignored.
    """

    minmax_after_resize = True  # yoda.sample normalises its map again after the resize (DESIGN §3)

    def __init__(self, sigma: float = 0.25):
        self.sigma = _check_positive(sigma, "sigma", maker="gaussian")

    def maps(self, lr: torch.Tensor) -> torch.Tensor:
        x = check_lr(lr)
        B, _, h, w = x.shape
        # float64 so that the mirror pixels (x, w-1-x) get bit-identical values
        ys = torch.arange(h, dtype=torch.float64) - (h - 1) / 2.0
        xs = torch.arange(w, dtype=torch.float64) - (w - 1) / 2.0
        # in the log domain, the peak at 1: a narrow sigma on an even side (no pixel at the centre) underflowed to
        # all zeros in float32, a flat map (all ones after min-max)
        s = max(self.sigma, 1e-30)  # (below, (ys / (s h))^2 overflowed to inf: a NaN map; 1e-30 is already a point)
        log_m = -0.5 * (ys / (s * h))[:, None] ** 2 - 0.5 * (xs / (s * w))[None, :] ** 2
        m = torch.exp(log_m - log_m.max()).to(dtype=torch.float32, device=x.device)
        return m.expand(B, 1, h, w).contiguous()

    @float32_maps
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return aggregate(self.maps(lr), tuple(lr.shape[-2:]))

    def __repr__(self) -> str:
        return f"gaussian(sigma={self.sigma:g})"


MAX_SIFT_SIDE = 2048  # Sift.keypoints never enlarges an image's long side past this
SPLAT_TILE = 128  # Sift.splat sums each tile of this side over the keypoints that reach it
SPLAT_REACH = 12.0  # ... within this many of their std (exp(-72) = 5e-32 of a unit peak beyond)


class Sift:
    """SIFT keypoint density (OpenCV SIFT, K = 1).

        map(y, x) = sum_k exp(-((x - x_k)^2 + (y - y_k)^2) / (2 s_k^2)),  s_k = size_scale * size_k / 2

    where (x_k, y_k) and size_k (the diameter of the keypoint's neighbourhood, OpenCV's KeyPoint.size)
    are in LR pixels. Each keypoint contributes a peak of 1 at its centre **(our reading** of "density
    of keypoints splatted with a Gaussian of their scale"; unit-peak rather than unit-mass so that
    large-scale structures are not drowned by fine ones).

    LR images are tiny (a 16x16 face); SIFT finds nothing on them, so the luma image is first resized
    (bicubic) so that its short side is at least ``min_size``, its long side at most MAX_SIFT_SIDE (a thin strip
    is enlarged less, or not at all), and keypoints are mapped back. An image
    with no keypoint gives a zero map, i.e. A = all ones (every pixel active). ``n_features`` is OpenCV's
    nfeatures (0: all): OpenCV counts a keypoint's extra orientations towards it, and those copies are merged
    into one location here, so N may give fewer than N locations.
    """

    minmax_after_resize = True  # yoda.sample normalises its map again after the resize (DESIGN §3)

    def __init__(
        self,
        min_size: int = 128,
        size_scale: float = 1.0,
        contrast_threshold: float = 0.04,
        edge_threshold: float = 10.0,
        n_features: int = 0,
    ):
        import cv2  # noqa: F401  (fail early with a clear ImportError)

        _not_an_image(min_size, "min_size", "sift")
        min_size = positive_int(min_size, "min_size")  # numpy ints too ("must be a positive int, got np.int64(64)")
        n_features = as_int(n_features, "n_features", "an int >= 0 (0 = all)")
        if not 0 <= n_features < 2**31:  # (2**31 failed at the first map, in OpenCV: "won't fit into a C int")
            raise ValueError(f"n_features must be an int >= 0 (0 = all) and < 2**31, got {n_features}")
        self.min_size = min_size
        self.size_scale = _check_positive(size_scale, "size_scale", maker="sift")
        self.contrast_threshold = _check_positive(contrast_threshold, "contrast_threshold", maker="sift")
        self.edge_threshold = _check_positive(edge_threshold, "edge_threshold", maker="sift")
        self.n_features = n_features

    def keypoints(self, grey: np.ndarray) -> np.ndarray:
        """Keypoints of one grey float image in [-1, 1], (h, w) -> (n, 3) array of (x, y, sigma) in
        LR pixel coordinates (pixel centres at integers, as OpenCV), one row per distinct location and
        scale (OpenCV's per-orientation copies are merged)."""
        import cv2

        h, w = grey.shape
        # small images are enlarged for the detector, to at most MAX_SIFT_SIDE on the long side: a 1 x 2000
        # image would otherwise become 128 x 256000 (7.8 GB)
        f = max(1.0, min(self.min_size / min(h, w), MAX_SIFT_SIDE / max(h, w)))
        img = np.clip(np.rint((grey + 1.0) * 127.5), 0, 255).astype(np.uint8)
        if f > 1.0:
            img = cv2.resize(img, (int(round(w * f)), int(round(h * f))), interpolation=cv2.INTER_CUBIC)
        fx = img.shape[1] / w
        fy = img.shape[0] / h
        det = cv2.SIFT_create(nfeatures=self.n_features, contrastThreshold=self.contrast_threshold,
                              edgeThreshold=self.edge_threshold)
        kps = det.detect(img, None)
        if not kps:
            return np.zeros((0, 3), dtype=np.float64)
        # OpenCV repeats a keypoint once per dominant orientation; a density counts locations once
        kps = list({(kp.pt[0], kp.pt[1], kp.size): kp for kp in kps}.values())
        out = np.empty((len(kps), 3), dtype=np.float64)
        for i, kp in enumerate(kps):
            # OpenCV doubles the image for its first octave with a pixel-centred resize (x -> 2x + 0.5) and halves
            # the coordinates back without the 0.5: a keypoint at x is reported at x + 0.25 (its precise upscale
            # maps x -> 2x but finds 10% fewer keypoints on photographs). Then resize mapped LR pixel centre x to
            # (x + 0.5) * f - 0.5; invert both
            out[i, 0] = (kp.pt[0] + 0.25) / fx - 0.5
            out[i, 1] = (kp.pt[1] + 0.25) / fy - 0.5
            out[i, 2] = self.size_scale * kp.size / 2.0 / math.sqrt(fx * fy)
        return out

    @staticmethod
    def splat(kps: np.ndarray, h: int, w: int) -> np.ndarray:
        """Sum of unit-peak Gaussians at (x_k, y_k) with std s_k on an (h, w) grid; separable: on each
        SPLAT_TILE² tile, sum_k gy_k(y) gx_k(x) as one (n, rows)^T (n, cols) product over the keypoints within
        SPLAT_REACH of their std of it (the rest add less than e^-72 each). One product over the whole grid cost
        keypoints x h x w: 15 s and 1 GB at a 2048² LR (20655 keypoints), 0.4 s now."""
        out = np.zeros((h, w), dtype=np.float64)
        if len(kps) == 0:
            return out
        x, y = kps[:, 0], kps[:, 1]
        s = np.maximum(kps[:, 2], 0.5)  # sub-pixel keypoints still cover their pixel
        reach = SPLAT_REACH * s
        with np.errstate(under="ignore"):  # far tails flush to 0 as meant, under a caller's np.seterr(all="raise")
            for y0 in range(0, h, SPLAT_TILE):
                y1 = min(y0 + SPLAT_TILE, h)
                rows = np.flatnonzero((y + reach >= y0) & (y - reach <= y1 - 1))
                gy = np.exp(-0.5 * ((np.arange(y0, y1)[None, :] - y[rows, None]) / s[rows, None]) ** 2)
                for x0 in range(0, w, SPLAT_TILE):
                    x1 = min(x0 + SPLAT_TILE, w)
                    near = (x[rows] + reach[rows] >= x0) & (x[rows] - reach[rows] <= x1 - 1)
                    if near.any():
                        k = rows[near]
                        gx = np.exp(-0.5 * ((np.arange(x0, x1)[None, :] - x[k, None]) / s[k, None]) ** 2)
                        # einsum's own loop, not BLAS: OpenBLAS's threads beside torch's made the small products
                        # 5-30x slower on a busy 2-core machine (2048²: 0.2 s idle, 1.2-3.4 s loaded; einsum 0.4 s)
                        out[y0:y1, x0:x1] = np.einsum("ki,kj->ij", gy[near], gx)
        return out

    def maps(self, lr: torch.Tensor) -> torch.Tensor:
        x = check_lr(lr)
        B, _, h, w = x.shape
        grey = luma(x)[:, 0].cpu().double().numpy()
        out = np.stack([self.splat(self.keypoints(grey[b]), h, w) for b in range(B)])
        return torch.from_numpy(out).float().unsqueeze(1).to(x.device)

    @float32_maps
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return aggregate(self.maps(lr), tuple(lr.shape[-2:]))

    def __repr__(self) -> str:
        return (
            f"sift(min_size={self.min_size}, size_scale={self.size_scale:g}, "
            f"contrast_threshold={self.contrast_threshold:g}, edge_threshold={self.edge_threshold:g}, "
            f"n_features={self.n_features})"
        )


def edge(sigma: float = 1.0) -> Edge:
    """Edge extractor (smoothed gradient magnitude), see :class:`Edge`."""
    return Edge(sigma=sigma)


def gaussian(sigma: float = 0.25) -> Gaussian:
    """Centred Gaussian prior, ``sigma`` as a fraction of the image side, see :class:`Gaussian`."""
    return Gaussian(sigma=sigma)


def sift(
    min_size: int = 128,
    size_scale: float = 1.0,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    n_features: int = 0,
) -> Sift:
    """SIFT keypoint density extractor (OpenCV), see :class:`Sift`."""
    return Sift(
        min_size=min_size,
        size_scale=size_scale,
        contrast_threshold=contrast_threshold,
        edge_threshold=edge_threshold,
        n_features=n_features,
    )
