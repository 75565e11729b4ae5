"""YODA's time-dependent masks (DESIGN.md §4), as plain PyTorch utilities.

    tau(t) = t / T - l,     M(t) = 1[A >= tau(t)]         t = idx + 1 in 1..T (DESIGN's t)

The kernels only take the scalar tau; these helpers exist for analysis, tests, callbacks and training.
Comparisons are made in float32, exactly as the kernels make them (yoda_kernels.naive._mask), so a mask
built here selects the very pixels the fused step updates.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Sequence

import numpy as np
import torch

_FLOAT = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
A_MARGIN = 1e-3  # attention may exceed [0, 1] by float rounding (a bilinear or bicubic resize)


def _not_meta(v: Any, name: str) -> None:
    if isinstance(v, torch.Tensor) and v.device.type == "meta":  # .item() of it raised, naming nothing
        raise ValueError(f"{name} is on the meta device (a shape without a value): give a number")


def _scalar_array(v: Any) -> Any:
    """A 0-d numpy array (np.array(0.3), np.load of a scalar) as its numpy scalar; anything else as it is."""
    return v[()] if isinstance(v, np.ndarray) and v.ndim == 0 else v


def as_int(v: Any, name: str, what: str = "an int") -> int:
    """v as an int: Python and numpy integers (0-d arrays too), 0-d integer tensors; TypeError naming ``name``
    otherwise."""
    v = _scalar_array(v)
    tensor = isinstance(v, torch.Tensor)
    if (isinstance(v, bool) or not isinstance(v, (numbers.Integral, torch.Tensor))
            or (tensor and (v.dim() != 0 or v.dtype == torch.bool or v.is_floating_point() or v.is_complex()))):
        raise TypeError(f"{name} must be {what}, got {v!r}" if tensor else f"{name} must be {what}, got "
                        f"{type(v).__name__}")
    _not_meta(v, name)
    return operator.index(v)


def plain_int(v: Any) -> Any:
    """A numpy integer as Python's int (the adapters' checks take Python ints: np.int64(4) was "not a positive int"
    there, where ModelCard and save_model take it); anything else as it is, for those checks to judge."""
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v


def positive_int(v: Any, name: str, what: str = "a positive int") -> int:
    """as_int, and >= 1 (ValueError naming ``name`` otherwise)."""
    v = as_int(v, name, what)
    if v < 1:
        raise ValueError(f"{name} must be {what}, got {v}")
    return v


def config_int(v: Any, name: str, what: str = "a positive int") -> int:
    """positive_int for a field of a model config (SR3Config, SRDiffConfig), raising ValueError: configs come from
    files, and their loaders report a bad value, of any type, as a ValueError naming the file. A whole float (4.0,
    as a JSON writer may write 4) is its int, as it always was for SR3Config.scale."""
    v = _scalar_array(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        v = int(v)
    try:
        return positive_int(v, name, what)
    except TypeError as e:
        raise ValueError(str(e)) from None


def as_float(v: Any, name: str, finite: bool = True) -> float:
    """v as a float (``finite``: a finite one): Python and numpy reals, 0-d real tensors (not bools, strings or
    1-element arrays; 0-d numpy arrays are taken); TypeError / ValueError naming ``name`` otherwise. The one rule of
    every float argument."""
    v = _scalar_array(v)
    if (isinstance(v, bool) or not isinstance(v, (numbers.Real, torch.Tensor))
            or (isinstance(v, torch.Tensor) and (v.dim() != 0 or v.dtype == torch.bool or v.is_complex()))):
        raise TypeError(f"{name} must be a float, got {v!r}" if isinstance(v, torch.Tensor) else
                        f"{name} must be a float, got {type(v).__name__}")
    _not_meta(v, name)
    try:
        v = float(v)
    except OverflowError:  # an int past float's range (10**400): said of name, as an inf is
        v = math.inf if v > 0 else -math.inf
    if finite and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def check_lower_bound(lower_bound: float, name: str = "lower_bound") -> float:
    """lower_bound l of DESIGN §4 as a float; the one check shared by sampling, training and evaluation."""
    lb = as_float(lower_bound, name, finite=False)  # Python and numpy scalars, 0-d tensors
    if not math.isfinite(lb) or lb < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {lb}")
    return lb


def check_dense(t: torch.Tensor, name: str) -> None:
    """TypeError naming ``name`` for a sparse (or other non-strided) tensor: a map's checks (aminmax, isnan) and the
    kernels take dense ones only (a sparse map failed with torch's NotImplementedError). yoda_kernels.checks has its
    twin: importing it would load the compiled kernels (and warn of a stale build) wherever a map is checked."""
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}: pass it .to_dense()")


def check_A(A: torch.Tensor, name: str = "A") -> torch.Tensor:
    """A as (B, 1, H, W) float; accepts (B, 1, H, W) or (B, H, W), not empty, values in [0, 1] (A_MARGIN: float
    rounding of a resize), no NaN; errors name ``name``."""
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}")
    check_dense(A, name)
    if A.dim() == 3:
        A = A.unsqueeze(1)
    if A.dim() != 4 or A.shape[1] != 1 or A.numel() == 0:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W), not empty, got shape {tuple(A.shape)}")
    if A.dtype not in _FLOAT:
        raise TypeError(f"{name} must be a float tensor, got {A.dtype}")
    if A.is_meta:
        raise ValueError(f"{name} is on the meta device: it holds no values")
    if torch.isnan(A).any():
        raise ValueError(f"{name} contains NaN")
    check_unit_range(A, name)
    return A


def extremes(t: torch.Tensor) -> tuple[float, float]:
    """(least, greatest) value of a non-empty float tensor in one reduction and one transfer (one device sync). A NaN
    anywhere makes both NaN and an Inf shows in one of them, so they also say whether every value is finite."""
    lo, hi = torch.stack(torch.aminmax(t.detach())).tolist()
    return lo, hi


def check_unit_range(A: torch.Tensor, name: str = "A") -> None:
    """ValueError naming ``name`` unless every value of A is finite and in [0, 1] (within A_MARGIN): one device
    sync (extremes)."""
    lo, hi = extremes(A)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf")
    if lo < -A_MARGIN or hi > 1.0 + A_MARGIN:
        raise ValueError(f"{name} values must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]")


def tau_at(t: int, T: int, lower_bound: float = 0.6) -> float:
    """tau(t) = t / T - lower_bound for DESIGN's t in 1..T (t = 0-based index + 1). Float64 scalar."""
    if type(t) is int and type(T) is int and type(lower_bound) is float and 1 <= t <= T and 0 <= lower_bound < math.inf:
        return t / T - lower_bound  # plain ints and a float in range (the sampler's every step): nothing to convert
    T = check_T(T)
    if (isinstance(t, torch.Tensor) and t.is_floating_point()) or (
            isinstance(t, numbers.Real) and not isinstance(t, numbers.Integral)):
        t = check_lower_bound(t, "t")  # a float t (a solver's fractional timestep): finite, checked as a float
    else:
        t = as_int(t, "t", "an int (or a float) in 1..T")
    if not 1 <= t <= T:
        raise ValueError(f"t must be in 1..T={T} (DESIGN's t = index + 1), got {t!r}")
    return t / T - check_lower_bound(lower_bound)


def check_T(T: Any) -> int:
    """T (the number of training steps) as a positive int (Python / numpy ints, 0-d integer tensors)."""
    return positive_int(T, "T")


def active(A: torch.Tensor, tau: float) -> torch.Tensor:
    """A >= tau as a bool tensor of A's shape, compared in float32 as the kernels compare (A may be float16)."""
    return A.float() >= torch.tensor(tau, dtype=torch.float32, device=A.device)


def mask_at(A: torch.Tensor, t: int, T: int, lower_bound: float = 0.6) -> torch.Tensor:
    """M(t) = A >= tau(t): bool tensor of A's shape ((B, 1, H, W) or (B, H, W)). Compared in float32."""
    tau = tau_at(t, T, lower_bound)
    check_A(A)
    return active(A, tau)


def active_fraction(A: torch.Tensor, tau: float) -> torch.Tensor:
    """(B,) float32: the fraction of each image's pixels with A >= tau (float32 comparison)."""
    A = check_A(A)
    tau = as_float(tau, "tau", finite=False)  # ("0.5" and True were taken; None named no argument)
    if math.isnan(tau):
        raise ValueError("tau must not be NaN")
    return active(A, tau).flatten(1).float().mean(dim=1)


def pixel_update_ratio(A: torch.Tensor, lower_bound: float = 0.6) -> torch.Tensor:
    """(B,) float32: mean over pixels of min(1, A + lower_bound), the paper's Fig. 3 "pixel update ratio".

    A pixel is refined at every t with t / T <= A + l, i.e. for about T * min(1, A + l) of the T steps, so
    this is the fraction of plain diffusion's per-pixel denoising work that YODA does (full schedule)."""
    A = check_A(A)
    lb = check_lower_bound(lower_bound)
    return (A.float() + lb).clamp(max=1.0).flatten(1).mean(dim=1)


def every_step_ratio(A: torch.Tensor, T: int, lower_bound: float = 0.6) -> torch.Tensor:
    """(B,) float64: the exact fraction of (pixel, step) pairs refined over every step t = 1..T, i.e.
    refine_fraction(A, range(T), T, lower_bound) (the same float32 thresholds and comparison), counted in integers
    with one binary search per pixel instead of one pass over A per step: O(N log T) for N pixels (1.7 ms for a
    64^2 map at T = 1000, against 21 ms). It tends to pixel_update_ratio as T grows (within 1/T)."""
    A = check_A(A)
    T = check_T(T)
    taus = torch.tensor([tau_at(t, T, lower_bound) for t in range(1, T + 1)], dtype=torch.float64).float()
    out = []
    for a in A.detach().float().cpu().flatten(1):
        count = 0
        for chunk in a.split(1 << 22):  # the number of t with tau(t) <= A, i.e. M(t) = 1, per pixel (taus ascend)
            count += int(torch.searchsorted(taus, chunk, right=True).sum())
        out.append(count / (a.numel() * T))
    return torch.tensor(out, dtype=torch.float64)


def refine_fraction(A: torch.Tensor, indices: Sequence[int], T: int, lower_bound: float = 0.6) -> torch.Tensor:
    """(B,) float32: the exact fraction of (pixel, visited step) pairs that are refined for the 0-based
    training ``indices`` a sampler visits (Schedule.respace); tends to pixel_update_ratio with every step."""
    A = check_A(A)
    if len(indices) == 0:
        raise ValueError("indices must not be empty")
    # each step's count of A >= tau (float32, as active compares) by a binary search in the sorted map: one sort, not
    # one pass over A per step (yoda attention --steps 30000 on a 512^2 image ran for minutes)
    taus = torch.tensor([tau_at(int(idx) + 1, T, lower_bound) for idx in indices], dtype=torch.float64).float()
    out = []
    for a in A.detach().float().cpu().flatten(1):
        below = torch.searchsorted(torch.sort(a).values, taus, right=False)  # pixels with A < tau
        out.append(float((a.numel() - below).sum()) / (a.numel() * len(indices)))
    return torch.tensor(out, dtype=torch.float32, device=A.device)
