"""Sigma-space solvers (k-diffusion's family) as plans of per-step float64 coefficients (DESIGN.md §5b).

A VP model's x_t = sqrt(ab) x0 + sqrt(1 - ab) eps is, divided by sqrt(ab), k-diffusion's x = x0 + sigma eps with

    sigma = sqrt((1 - ab) / ab),       ab = 1 / (1 + sigma**2)

(Karras et al. 2022, the "VP" row of Table 1). Every solver below is written in that sigma space (x_k) the way
k-diffusion's ``sampling.py`` and the papers write it, and each update is linear in x_k, the denoised estimates D
(x0 estimates) of this and up to two earlier steps, and one normal draw z:

    x_k' = a x_k + b0 D0 + b1 D1 + b2 D2 + g z

The sampler keeps its state in VP form (x = s x_k with s = 1 / sqrt(1 + sigma**2)), so each update becomes one
masked_combine with (s' = 1 / sqrt(1 + sigma'**2); s' = 1 at sigma' = 0)

    cx = a s' / s,  cd_j = b_j s',  sigma = g s',  la = s',  lb = sigma' s'     (la c + lb z: the LR at sigma')

Solvers (names as DiffBIR / k-diffusion; eta as k-diffusion's, default 1 where it applies):
    euler          Karras et al. Algorithm 2 without churn (first order ODE)
    euler_a        ancestral Euler: step to sigma_down, add sigma_up z (eta)
    heun           Karras et al. Algorithm 2: Euler predictor, trapezoidal corrector; Euler at the last step
    dpmpp_2m       DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), first order at the first and last step
    dpmpp_2m_sde   DPM-Solver++(2M) SDE, midpoint form (eta)
    dpmpp_3m_sde   DPM-Solver++(3M) SDE (eta), k-diffusion's: its second difference d2 ~ h^2 D''/2 is weighted by
                   -phi_3, half the exponential integrator's -2 phi_3 (as DPM-Solver's 3M), so with eta = 0 it
                   converges with order 2, not 3 (DESIGN.md §5b); kept so for DiffBIR's images
    dpm_2          k-diffusion's sample_dpm_2: Euler to sigma_mid = sqrt(sigma sigma'), a second model call there,
                   the step to sigma' with that slope (a midpoint method; DPM-Solver-2's form in sigma)
    dpm_2_a        ancestral dpm_2: the same to sigma_down, then sigma_up z (eta)
    dpmpp_2s_a     DPM-Solver++(2S) ancestral: a half step in log sigma, a second model call there, the exponential
                   step to sigma_down with its estimate, then sigma_up z (eta)
The last step (sigma' = 0) of every solver returns D itself (Euler with dt = -sigma does the same), as
k-diffusion's do. The two-call solvers (heun, dpm_2, dpm_2_a, dpmpp_2s_a) run a predictor (x, D0) to the second
call's sigma first; where a pixel is inactive the predictor holds the LR at that sigma, with the step's noise.

Sigma schedules (``sigmas=``), from the model's discrete sigmas sigma(idx) = sqrt((1 - ab[idx]) / ab[idx]):
    karras       Karras et al. eq. 5, rho = 7, between sigma(0) and sigma(T - 1)
    exponential  log-uniform between sigma(T - 1) and sigma(0)
    uniform      uniform in t: t_to_sigma(linspace(T - 1, 0, steps)) (k-diffusion's DiscreteSchedule.get_sigmas)
    diffbir      DiffBIR's EDMSampler.make_schedule: the discrete sigmas at the indices linspace(T - 1, 0, steps,
                 endpoint=False) truncated to int, the first (index T - 1) at ab = AB_FLOOR = 1e-8 (sigma ~ 1e4)
                 whatever the schedule's own ab[T - 1]
    a sequence   the sigmas to visit, strictly decreasing, > 0 (a trailing 0 is allowed and dropped)
then 0 is appended. A zero-terminal-SNR schedule (ab[T - 1] = 0, sigma(T - 1) = inf) has its last ab taken as
AB_FLOOR for the sigma table and the sigma -> t mapping, as DiffBIR's EDM sampler does (or, where ab[T - 2] is
not above it, the table's log-ab spacing continued one step), so every named schedule starts at that finite
sigma(T - 1) and the model is called there at t = T - 1.

Timesteps (``timesteps=``): the model is called at t = sigma_to_t(sigma), either "interpolate" (default; the
fractional index, log-sigma interpolated between the discrete sigmas, k-diffusion's DiscreteSchedule with
quantize=False) or "nearest" (the integer index of the discrete sigma nearest in log sigma, k-diffusion's
quantize=True) or "visited" (DiffBIR's EDM denoiser: the "nearest" index of the visited sigma -- one of the plan's
sigmas or its final 0, t = 0 -- nearest to sigma in absolute value; the same as "nearest" at the visited sigmas,
different at the two-call solvers' midpoints, which it maps to a neighbouring visited sigma's timestep);
ab = 1 / (1 + sigma**2) with the exact sigma whichever is used.
"""

from __future__ import annotations

import bisect
import math
import numbers
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch

from yoda_kernels.contract import CombineCoefs

from ..masks import as_float
from ..names import SIGMA_SCHEDULES, SOLVERS  # (the CLI's parser reads them without torch)
from ..schedule import Schedule

# the solvers that take eta (default 1, k-diffusion's)
ETA_SOLVERS = ("euler_a", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_2_a", "dpmpp_2s_a")
DEFAULT_SIGMAS = "karras"
TIMESTEPS = ("interpolate", "nearest", "visited")  # how sigma -> the model's t (module docstring)
DEFAULT_TIMESTEPS = "interpolate"
RHO = 7.0  # Karras et al.'s rho
AB_FLOOR = 1e-8  # DiffBIR's EDMSampler: the first visited alpha_bar; here also a zero-terminal-SNR table's last


class SolverStep(NamedTuple):
    """One step sigma -> sigma_next of a plan (float64 scalars).

    t, ab: the model's timestep index (a float, or an int with timesteps="nearest" / "visited") and alpha_bar at
    sigma; t_next, ab_next at sigma_next (ab_next = 1 at sigma_next = 0). coefs: the masked_combine of the update,
    weights of (x, D0, D1, D2); ``n``: how many estimates it takes. For the multistep solvers D1, D2 are the
    estimates of the previous steps; for the two-call solvers D1 is the second model call's. predictor: their predictor (weights of
    x, D0; the LR held at sigma2) whose result the second model call sees at (t2, ab2), sigma2 (sigma_next for
    Heun, the midpoint for the others); None, and t2 = ab2 = 0, for one-call steps."""

    sigma: float
    sigma_next: float
    t: float
    ab: float
    t_next: float
    ab_next: float
    coefs: CombineCoefs
    n: int
    predictor: Optional[CombineCoefs]
    t2: float = 0.0
    ab2: float = 0.0


# --------------------------------------------------------------------------------------------------------------
# sigma <-> t for a discrete schedule (k-diffusion's DiscreteSchedule, quantize=False)
# --------------------------------------------------------------------------------------------------------------
def table_alphas_cumprod(schedule: Schedule) -> torch.Tensor:
    """The schedule's alpha_bar (T,) float64 as the solvers' sigma table reads it: a zero-terminal-SNR schedule's
    last value (0) taken as AB_FLOOR (DiffBIR's EDM sampler), or below ab[T - 2] on the table's log-ab spacing
    (ab[T - 2]**2 / ab[T - 3]) where ab[T - 2] <= AB_FLOOR, so that the sigmas stay finite and increasing."""
    ab = schedule.alphas_cumprod
    if ab[-1] > 0:
        return ab
    ab = ab.clone()
    floor = AB_FLOOR
    if len(ab) >= 2 and ab[-2] <= floor:
        floor = float(ab[-2]) ** 2 / float(ab[-3]) if len(ab) >= 3 else float(ab[-2]) * 0.5
    ab[-1] = floor
    return ab


def log_sigmas(schedule: Schedule) -> list[float]:
    """log sigma(idx) for idx = 0 .. T - 1, float64, increasing (of table_alphas_cumprod: finite for zero
    terminal SNR too)."""
    ab = table_alphas_cumprod(schedule)
    return (0.5 * (torch.log1p(-ab) - torch.log(ab))).tolist()


def sigma_to_t(sigma: float, logs: Sequence[float]) -> float:
    """The fractional timestep index of ``sigma``: linear interpolation of log sigma between the two discrete
    sigmas around it, clamped to [0, T - 1] (k-diffusion's DiscreteSchedule.sigma_to_t, quantize=False)."""
    n = len(logs)
    if n == 1:
        return 0.0
    ls = math.log(sigma)
    low = min(max(bisect.bisect_right(logs, ls) - 1, 0), n - 2)
    lo, hi = logs[low], logs[low + 1]
    w = 0.0 if hi == lo else min(max((lo - ls) / (lo - hi), 0.0), 1.0)  # a flat run of the table: its first t
    return (1.0 - w) * low + w * (low + 1)


def sigma_to_nearest_t(sigma: float, logs: Sequence[float]) -> int:
    """The index of the discrete sigma nearest to ``sigma`` in log sigma (k-diffusion's DiscreteSchedule.sigma_to_t
    with quantize=True; a tie goes to the lower index, as argmin); sigmas outside the table go to 0 or T - 1."""
    n = len(logs)
    ls = math.log(sigma)
    low = min(max(bisect.bisect_right(logs, ls) - 1, 0), n - 1)
    if low + 1 < n and abs(logs[low + 1] - ls) < abs(ls - logs[low]):
        return low + 1
    return low


def model_t(sigma: float, logs: Sequence[float], timesteps: str):
    """The timestep the model is called at for ``sigma`` (> 0): a float ("interpolate") or an int ("nearest")."""
    return sigma_to_nearest_t(sigma, logs) if timesteps == "nearest" else sigma_to_t(sigma, logs)


def t_to_sigma(t: float, logs: Sequence[float]) -> float:
    """sigma at a fractional timestep index t in [0, T - 1]: log sigma interpolated linearly."""
    low = math.floor(t)
    high = min(low + 1, len(logs) - 1)
    w = t - low
    return math.exp((1.0 - w) * logs[low] + w * logs[high])


def ab_of(sigma: float) -> float:
    """alpha_bar of a noise level: 1 / (1 + sigma**2) (1 at sigma = 0)."""
    return 1.0 / (1.0 + sigma * sigma)


# --------------------------------------------------------------------------------------------------------------
# Sigma schedules
# --------------------------------------------------------------------------------------------------------------
def make_sigmas(kind: Any, steps: Optional[int], schedule: Schedule) -> tuple[float, ...]:
    """The steps + 1 sigmas a solver visits, the last one 0 (module docstring). ``kind``: a name of
    SIGMA_SCHEDULES or a sequence of sigmas; steps None with a sequence: its length. Errors name ``sigmas``."""
    logs = log_sigmas(schedule)
    T = len(logs)
    smin, smax = math.exp(logs[0]), math.exp(logs[-1])
    if isinstance(kind, str):
        if kind not in SIGMA_SCHEDULES:
            raise ValueError(f"sigmas must be one of {SIGMA_SCHEDULES} or a sequence of noise levels, got {kind!r}")
        n = T if steps is None else steps
        if kind == "diffbir":
            return diffbir_sigmas(n, schedule) + (0.0,)
        if kind == "karras":
            lo, hi = smin ** (1.0 / RHO), smax ** (1.0 / RHO)
            out = [(hi + (k / (n - 1) if n > 1 else 0.0) * (lo - hi)) ** RHO for k in range(n)]
        elif kind == "exponential":
            a, b = math.log(smax), math.log(smin)
            out = [math.exp(a + (k / (n - 1) if n > 1 else 0.0) * (b - a)) for k in range(n)]
        else:
            out = [t_to_sigma((T - 1) * (1.0 - (k / (n - 1) if n > 1 else 0.0)), logs) for k in range(n)]
        out[0] = smax  # the end points exactly (the formulas give them up to a rounding)
        if n > 1:
            out[-1] = smin
        if any(b >= a for a, b in zip(out, out[1:])):  # (plan said "sigmas must be strictly decreasing" of these)
            raise ValueError(f"sigmas={kind!r}: the schedule's noise levels span {smin:g} to {smax:g} (T = {T}), too "
                             f"few to give {n} distinct ones: take fewer steps or a schedule with more timesteps")
        return tuple(out) + (0.0,)
    out = _sequence(kind)
    if steps is not None and steps != len(out):
        raise ValueError(f"steps ({steps}) must be None or the number of noise levels > 0 among the sigmas given "
                         f"({len(out)}; a trailing 0 is the end, not a step)")
    top = math.exp(float(logs[-1]))
    if out[0] > top * (1 + 1e-6):
        import warnings

        warnings.warn(f"sigmas: {out[0]:g} is above the model's largest sigma {top:g}: the state starts at that "
                      f"noise level but the model is told t = T - 1 (sigma {top:g}), as k-diffusion clamps it",
                      UserWarning, stacklevel=4)
    return tuple(out) + (0.0,)


def diffbir_indices(steps: int, T: int) -> list[int]:
    """DiffBIR's EDMSampler.make_schedule indices: numpy's linspace(T - 1, 0, steps, endpoint=False) (k * step +
    start, step = -(T - 1) / steps) truncated to int."""
    step = -(T - 1) / steps
    return [int(k * step + (T - 1)) for k in range(steps)]


def diffbir_sigmas(steps: int, schedule: Schedule) -> tuple[float, ...]:
    """The ``steps`` sigmas of DiffBIR's EDMSampler.make_schedule: sqrt((1 - ab) / ab) of the schedule's alpha_bar
    at diffbir_indices, the first ab (index T - 1) set to AB_FLOOR (DiffBIR does so on every schedule)."""
    ab = schedule.alphas_cumprod
    abs_ = [float(ab[i]) for i in diffbir_indices(steps, len(ab))]
    abs_[0] = AB_FLOOR
    out = tuple(math.sqrt((1.0 - a) / a) for a in abs_)
    if any(b >= a for a, b in zip(out, out[1:])):
        raise ValueError(f"sigmas='diffbir' needs alpha_bar above {AB_FLOOR} at every visited index but T - 1 "
                         f"(DiffBIR's first step is at alpha_bar = {AB_FLOOR}); this schedule's sigmas {out} are not "
                         f"decreasing: use another sigmas=")
    return out


def _sequence(sigmas: Any) -> list[float]:
    if isinstance(sigmas, np.ndarray):  # a numpy array reads as the tensor it holds
        sigmas = torch.from_numpy(sigmas)
    if isinstance(sigmas, torch.Tensor):
        if sigmas.is_meta:  # (a copy out of it: NotImplementedError)
            raise ValueError("sigmas is a tensor on the meta device, which holds no values")
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
        sigmas = sigmas.detach().to("cpu", torch.float64).tolist()
    if not isinstance(sigmas, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, numbers.Real)
                                                    for v in sigmas):
        raise TypeError(f"sigmas must be None, one of {SIGMA_SCHEDULES} or a sequence of floats, got "
                        f"{type(sigmas).__name__}")
    given = [as_float(v, "sigmas", finite=False) for v in sigmas]  # (an int past float's range: an inf, refused)
    out = given[:-1] if given and given[-1] == 0.0 else given
    if not out:
        raise ValueError("sigmas must hold at least one noise level > 0")
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"sigmas must be finite and > 0 (a trailing 0 is allowed), got {given}")
    if any(b >= a for a, b in zip(out, out[1:])):
        raise ValueError(f"sigmas must be strictly decreasing, got {given}")
    if 1.0 / (1.0 + out[-1] * out[-1]) >= 1.0:  # its alpha_bar rounds to 1: no noise at all
        raise ValueError(f"sigmas: {out[-1]:g} is too small to tell from no noise (alpha_bar = 1 / (1 + sigma^2) "
                         f"rounds to 1 below about 1.5e-8); end the sequence with 0 instead")
    return out


# --------------------------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------------------------
def _vp(a: float, b: Sequence[float], g: float, sigma: float, sigma_next: float) -> CombineCoefs:
    """k-space weights (a of x_k, b of D0..D2, g of z) -> the VP masked_combine coefficients (module docstring)."""
    s, sn = 1.0 / math.sqrt(1.0 + sigma * sigma), 1.0 / math.sqrt(1.0 + sigma_next * sigma_next)
    b = list(b) + [0.0] * (3 - len(b))
    return CombineCoefs(cx=a * sn / s, cd0=b[0] * sn, cd1=b[1] * sn, cd2=b[2] * sn, sigma=g * sn, la=sn,
                        lb=sigma_next * sn)


def _ancestral(s: float, sn: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of k-diffusion's get_ancestral_step."""
    up = min(sn, eta * math.sqrt(max(sn * sn * (s * s - sn * sn) / (s * s), 0.0))) if eta else 0.0
    return math.sqrt(max(sn * sn - up * up, 0.0)), up


def _step_weights(solver: str, sig: Sequence[float], i: int, eta: float) -> tuple:
    """(a, [b0, b1, b2][:n], g, predictor (a, b0, its sigma) or None) of step i in k-space (module docstring)."""
    s, sn = sig[i], sig[i + 1]
    if sn == 0.0:
        # the last step: Euler (dt = -sigma) or the denoised estimate itself (DPM++): x_k' = D0
        return 0.0, [1.0], 0.0, None
    h = math.log(s / sn)
    h1 = math.log(sig[i - 1] / s) if i >= 1 else None
    h2 = math.log(sig[i - 2] / sig[i - 1]) if i >= 2 else None
    if solver == "euler":
        return sn / s, [1.0 - sn / s], 0.0, None
    if solver == "euler_a":
        down, up = _ancestral(s, sn, eta)
        return down / s, [1.0 - down / s], up, None
    if solver == "heun":
        dt = sn - s
        return sn / s, [dt / 2 * (1.0 / sn - 2.0 / s), -dt / (2.0 * sn)], 0.0, (sn / s, 1.0 - sn / s, sn)
    if solver in ("dpm_2", "dpm_2_a", "dpmpp_2s_a"):
        # to sigma_to (sn, or sigma_down) through sigma_mid = sqrt(s sigma_to): x2 = (sm / s) x + (1 - sm / s) D0,
        # the same predictor for all three (DPM++(2S)'s exp(-h / 2) = sm / s)
        to, up = (sn, 0.0) if solver == "dpm_2" else _ancestral(s, sn, eta)
        if to == 0.0:  # eta > 1 can take all of sigma_next as noise: k-diffusion's Euler step to 0, x' = D0
            return 0.0, [1.0], up, None
        sm = math.sqrt(s * to)
        pred = (sm / s, 1.0 - sm / s, sm)
        if solver == "dpmpp_2s_a":  # x' = (to / s) x + (1 - to / s) D1
            return to / s, [0.0, 1.0 - to / s], up, pred
        # x' = x + (to - s) / sm (x2 - D1)
        k = (to - s) / sm
        return to / s, [k * (1.0 - sm / s), -k], up, pred
    if solver == "dpmpp_2m":
        c = -math.expm1(-h)
        if h1 is None:
            return sn / s, [c], 0.0, None
        r = h1 / h
        return sn / s, [c * (1.0 + 1.0 / (2.0 * r)), -c / (2.0 * r)], 0.0, None
    if solver == "dpmpp_2m_sde":
        eh = eta * h
        c = -math.expm1(-h - eh)
        g = sn * math.sqrt(-math.expm1(-2.0 * eh)) if eta else 0.0
        if h1 is None:
            return sn / s * math.exp(-eh), [c], g, None
        r = h1 / h
        return sn / s * math.exp(-eh), [c + 0.5 * c / r, -0.5 * c / r], g, None
    if solver == "dpmpp_3m_sde":
        he = h * (eta + 1.0)
        g = sn * math.sqrt(-math.expm1(-2.0 * h * eta)) if eta else 0.0
        b = [-math.expm1(-he), 0.0, 0.0]
        phi2 = math.expm1(-he) / he + 1.0
        if h2 is not None:
            r0, r1 = h1 / h, h2 / h
            d10 = [1.0 / r0, -1.0 / r0, 0.0]  # (D0 - D1) / r0
            d11 = [0.0, 1.0 / r1, -1.0 / r1]  # (D1 - D2) / r1
            diff = [u - v for u, v in zip(d10, d11)]
            d1 = [u + w * r0 / (r0 + r1) for u, w in zip(d10, diff)]
            d2 = [w / (r0 + r1) for w in diff]
            phi3 = phi2 / he - 0.5
            b = [bb + phi2 * u - phi3 * v for bb, u, v in zip(b, d1, d2)]
            return math.exp(-he), b, g, None
        if h1 is not None:
            r = h1 / h
            return math.exp(-he), [b[0] + phi2 / r, -phi2 / r], g, None
        return math.exp(-he), b[:1], g, None
    raise ValueError(f"unknown solver {solver!r}")  # pragma: no cover - checked by the spec


def plan(solver: str, sigmas: Sequence[float], schedule: Schedule, eta: float = 0.0,
         timesteps: str = DEFAULT_TIMESTEPS) -> tuple[SolverStep, ...]:
    """The SolverSteps of ``solver`` over ``sigmas`` (steps + 1 values, the last 0) for a model trained with
    ``schedule``; eta: the noise of the ancestral and SDE solvers (k-diffusion's eta); timesteps: the model's t of
    a sigma, "interpolate" (a float), "nearest" or "visited" (an int; module docstring)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if timesteps not in TIMESTEPS:
        raise ValueError(f"timesteps must be one of {TIMESTEPS}, got {timesteps!r}")
    sig = [float(v) for v in sigmas]
    if len(sig) < 2 or sig[-1] != 0.0 or any(b >= a for a, b in zip(sig, sig[1:])):
        raise ValueError(f"sigmas must be strictly decreasing and end with 0, got {sig}")
    logs = log_sigmas(schedule)

    def t_of(sigma: float):
        if timesteps != "visited":
            return model_t(sigma, logs, timesteps)
        v = min(sig, key=lambda u: abs(sigma - u))  # first of equals, as argmin
        return model_t(v, logs, "nearest") if v > 0 else 0

    zero = 0.0 if timesteps == "interpolate" else 0  # t at sigma = 0
    steps = []
    for i in range(len(sig) - 1):
        s, sn = sig[i], sig[i + 1]
        a, b, g, pred = _step_weights(solver, sig, i, float(eta))
        t_next, ab_next = (t_of(sn), ab_of(sn)) if sn > 0 else (zero, 1.0)
        predictor, t2, ab2 = None, zero, 0.0
        if pred is not None:
            predictor = _vp(pred[0], [pred[1]], 0.0, s, pred[2])
            t2, ab2 = t_of(pred[2]), ab_of(pred[2])
        steps.append(SolverStep(sigma=s, sigma_next=sn, t=t_of(s), ab=ab_of(s), t_next=t_next,
                                ab_next=ab_next, coefs=_vp(a, b, g, s, sn), n=len(b), predictor=predictor, t2=t2,
                                ab2=ab2))
    return tuple(steps)
