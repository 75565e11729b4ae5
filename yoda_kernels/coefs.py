"""Scalar coefficients of one reverse step, computed once per step in float64 (DESIGN.md §5).

Every sampler update of §5 is linear in (x_t, model output, c, z) once x0 is clipped, so a step is fully
described by ten numbers (yoda_kernels.contract.StepCoefs, by name); kernels receive them and never see the
schedule, the prediction type or the sampler kind. Formulas follow DDPM (Ho et al. 2020, posterior
q(x_{t-1} | x_t, x0) with the "fixed small" variance) and DDIM (Song et al. 2021, eq. 12), written for a respaced pair (t, t_prev) through
alpha_bar alone, as diffusers' DDPMScheduler / DDIMScheduler do.
"""

from __future__ import annotations

import math
import numbers

import torch

from .checks import traced
from .contract import PREDICTIONS, SAMPLERS, StepCoefs, needs_noise

__all__ = ["step_coefficients", "init_coefficients", "needs_noise"]


def _check_ab(name: str, v: float, zero_ok: bool = False) -> float:
    if traced():  # torch.compile's (a dynamic float does not trace the checks: checks.traced)
        return v
    dtype = getattr(v, "dtype", None)  # a tensor's or a numpy value's: a bool or complex one converts silently
    if (isinstance(v, (bool, str, bytes, bytearray, memoryview)) or dtype in (torch.bool, bool)
            or getattr(dtype, "kind", None) in ("b", "c") or isinstance(v, torch.Tensor) and v.is_complex()):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")  # ("0.5" and True were taken)
    try:
        v = float(v)
    except OverflowError:  # an int past float64's range
        raise ValueError(f"{name} must be in {'[0' if zero_ok else '(0'}, 1], got a number past float64's range") \
            from None
    except (TypeError, ValueError):  # (float()'s own words name no argument)
        raise TypeError(f"{name} must be a float, got {type(v).__name__}") from None
    if not ((0.0 <= v if zero_ok else 0.0 < v) and v <= 1.0) or math.isnan(v):
        raise ValueError(f"{name} must be in {'[0' if zero_ok else '(0'}, 1], got {v}")
    return v


def step_coefficients(
    ab_t: float,
    ab_prev: float,
    *,
    prediction: str = "eps",
    sampler: str = "ddpm",
    eta: float = 0.0,
) -> StepCoefs:
    """The StepCoefs (k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb) of the step t -> t_prev (contract.py).

    ab_t, ab_prev: alpha_bar at t and at t_prev (ab_prev = 1 for the last step, which then adds no noise).
    prediction: what the model outputs, "eps", "x0" or "v". sampler: "ddpm" (ancestral) or "ddim" (eta in [0, 1];
    DDPM takes none: eta 0).

    ab_t = 0 (zero terminal SNR, the first step of a rescaled schedule: x_t is pure noise) is allowed for "v" and
    "x0": every formula below is finite there and is the limit ab_t -> 0 (v: x0 = -v, eps = x_t; x0: eps = x_t;
    DDPM: alpha = 0, so the mean is sqrt(ab_prev) x0 and the variance 1 - ab_prev; DDIM: sigma = eta
    sqrt(1 - ab_prev)). "eps" is an error there: x0 = (x_t - eps) / 0 carries no information about x0.
    """
    a = _check_ab("ab_t", ab_t, zero_ok=True)
    ap = _check_ab("ab_prev", ab_prev)
    if a >= 1.0:
        raise ValueError("ab_t must be < 1 (t >= 1 has noise)")
    if ap < a:
        raise ValueError(f"ab_prev ({ap}) must be >= ab_t ({a}): t_prev comes after t in sampling")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a float in [0, 1], got {type(eta).__name__}")
    if not 0.0 <= float(eta) <= 1.0:
        # eta > 1 asks some steps for more noise than their level has (sqrt(1 - ab_prev - sigma^2) has no value)
        raise ValueError(f"eta must be a float in [0, 1] (1 is DDPM's variance), got {eta!r}")
    if sampler == "ddpm" and eta != 0:
        raise ValueError(f"eta applies to sampler='ddim' only (DDPM's variance is fixed); got eta={eta} with "
                         f"sampler='ddpm'")
    if a == 0.0 and prediction == "eps":
        raise ValueError("prediction='eps' cannot take a step from ab_t = 0 (zero terminal SNR: x_t is pure noise "
                         "and x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) is 0 / 0); a zero-terminal-SNR schedule "
                         "needs a 'v' or 'x0' prediction model")

    sa, s1a = math.sqrt(a), math.sqrt(1.0 - a)
    if prediction == "eps":  # x0 = (x - sqrt(1-a) eps) / sqrt(a)
        k1, k2, e1, e2 = 1.0 / sa, -s1a / sa, 0.0, 1.0
    elif prediction == "x0":  # eps = (x - sqrt(a) x0) / sqrt(1-a)
        k1, k2, e1, e2 = 0.0, 1.0, 1.0 / s1a, -sa / s1a
    else:  # v = sqrt(a) eps - sqrt(1-a) x0
        k1, k2, e1, e2 = sa, -s1a, s1a, sa

    last = ap >= 1.0
    if sampler == "ddpm":
        alpha = a / ap
        beta = 1.0 - alpha
        cx0 = math.sqrt(ap) * beta / (1.0 - a)
        cx = math.sqrt(alpha) * (1.0 - ap) / (1.0 - a)
        ceps = 0.0
        sigma = 0.0 if last else math.sqrt(max((1.0 - ap) / (1.0 - a) * beta, 1e-20))
    else:
        var = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap)
        sigma = float(eta) * math.sqrt(max(var, 0.0))
        cx0, cx = math.sqrt(ap), 0.0
        ceps = math.sqrt(max(1.0 - ap - sigma * sigma, 0.0))
    out = StepCoefs(k1=k1, k2=k2, e1=e1, e2=e2, cx0=cx0, cx=cx, ceps=ceps, sigma=sigma,
                    la=math.sqrt(ap), lb=math.sqrt(1.0 - ap))
    if any(abs(v) > _F32_MAX for v in out):  # the kernels compute in float32: said of ab_t, not of coefs
        raise ValueError(f"ab_t = {a!r} gives step coefficients beyond float32's range (up to "
                         f"{max(map(abs, out)):.3g}): alpha_bar that small has no usable signal")
    return out


_F32_MAX = 3.4028234663852886e38


def init_coefficients(ab_T: float) -> StepCoefs:
    """Coefficients that turn masked_step into the start of §5:
    x_T = noise where active, sqrt(ab_T) c + sqrt(1 - ab_T) noise elsewhere (x and model_out unused).
    ab_T = 0 (zero terminal SNR) is pure noise everywhere: the LR branch is 0 * c + 1 * noise."""
    a = _check_ab("ab_T", ab_T, zero_ok=True)
    return StepCoefs(k1=0.0, k2=0.0, e1=0.0, e2=0.0, cx0=0.0, cx=0.0, ceps=0.0, sigma=1.0,
                     la=math.sqrt(a), lb=math.sqrt(1.0 - a))
