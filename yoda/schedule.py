"""Noise schedules of discrete-time diffusion and their respacing (DESIGN.md §2, §5).

Convention (shared by the whole project): training timesteps are 0-based indices ``idx`` in [0, T);
DESIGN's t = idx + 1;

    alpha_bar[idx] = prod_{k <= idx} (1 - betas[k])

and the step that leaves idx = 0 (or the last visited index) goes to alpha_bar = 1 (no noise left).
Everything is float64: the kernels receive per-step scalars computed from these values
(yoda_kernels.coefs), so the schedule never limits the precision of a step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

from .masks import as_float, as_int, check_T

SPACINGS = ("trailing", "leading", "linspace", "idpm", "ldm_uniform", "sd_leading", "leading_offset", "sd_trailing")
MAX_FILE_T = 100_000  # the longest schedule read from a config or checkpoint (released models use <= 4000 steps)
# spacings whose last step lands on alpha_bar[0], not on 1 (pairs)
FINAL_AT_FIRST = ("ldm_uniform", "sd_leading", "sd_trailing")
# spacings visiting "leading"'s indices + 1 (diffusers' steps_offset 1): at most T - 1 steps (T would reach index T)
LEADING_PLUS_ONE = ("sd_leading", "leading_offset")


def _check_beta_range(beta_start: Any, beta_end: Any) -> tuple[float, float]:
    out = []
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        v = as_float(v, name)
        if not 0.0 < v < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
        out.append(v)
    if out[0] > out[1]:  # a decreasing schedule (the two swapped) removes most noise first
        raise ValueError(f"beta_start must be <= beta_end (betas grow with t), got {out[0]} > {out[1]}")
    return out[0], out[1]


def _as_betas(b: Any) -> torch.Tensor:
    """betas as a tensor: a tensor or numpy array of a real dtype, or an iterable of real numbers (Python / numpy
    scalars, 0-d tensors; not bools, strings or a mapping); errors name betas."""
    if isinstance(b, np.ndarray) and b.dtype.kind in "iuf":  # any order, stride or byte order: a native copy
        return torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))
    if isinstance(b, np.ndarray) and b.dtype.kind == "b":
        raise TypeError(f"betas must be real numbers, got a numpy array of {b.dtype}")
    if isinstance(b, torch.Tensor):
        if b.dtype == torch.bool or b.is_complex():
            raise TypeError(f"betas must be real numbers, got a {b.dtype} tensor")
        if b.device.type == "meta":
            raise ValueError("betas is on the meta device (shapes without values): give the numbers")
        return b
    if isinstance(b, (str, bytes, Mapping)) or not isinstance(b, Iterable):
        raise TypeError(f"betas must be a 1-D sequence of floats, got {type(b).__name__}")
    # each entry by the rule of every float argument (masks.as_float): [True] was beta 1, ['0.1'] an error of torch's
    return torch.tensor([as_float(v, f"betas[{i}]", finite=False) for i, v in enumerate(b)], dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete diffusion schedule: ``betas`` (T,) float64, each in (0, 1); the last may be exactly 1, a
    zero-terminal-SNR schedule (alpha_bar[T-1] = 0, :meth:`rescale_zero_terminal_snr`), which only v- and
    x0-prediction models can sample from (the step at alpha_bar = 0 has no eps form, yoda_kernels.coefs).

    Build it with :meth:`linear`, :meth:`cosine`, :meth:`scaled_linear` or :meth:`from_betas`; the tensor
    is copied and made float64 on the CPU, so no tensor of the caller's changes it. Do not edit ``betas`` in place:
    alphas_cumprod and pairs() are cached from it (make another Schedule instead).
    """

    betas: torch.Tensor = field(repr=False)

    def __post_init__(self) -> None:
        b = _as_betas(self.betas)
        if b.dim() != 1 or b.numel() < 1:
            raise ValueError(f"betas must be 1-D with at least one entry, got shape {tuple(b.shape)}")
        b = b.detach().to("cpu", torch.float64).clone()
        if not torch.isfinite(b).all():
            raise ValueError("betas must be finite")
        if ((b <= 0) | (b > 1)).any() or (b[:-1] >= 1).any():
            raise ValueError(f"betas must lie in (0, 1), the last one in (0, 1] (exactly 1: zero terminal SNR, "
                             f"alpha_bar[T-1] = 0), got min {b.min().item()}, max {b.max().item()}"
                             + (f" at index {int(b.argmax())}" if b.max() >= 1 else ""))
        if 1.0 - b[0].item() == 1.0:  # every sampler then failed at its last step, or in log(sigma = 0), unnamed
            raise ValueError(f"betas[0] = {b[0].item():g} is too small: alpha_bar[0] = 1 - betas[0] rounds to 1 in "
                             f"float64, so t = 1 would carry no noise (betas[0] must exceed about 5.6e-17)")
        object.__setattr__(self, "betas", b)

    # ------------------------------------------------------------------------------------------------------
    # Constructors
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> "Schedule":
        """DDPM's linear schedule: betas = linspace(beta_start, beta_end, T) (diffusers "linear")."""
        T = check_T(T)
        beta_start, beta_end = _check_beta_range(beta_start, beta_end)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> "Schedule":
        """Latent-diffusion schedule: betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2
        (diffusers "scaled_linear")."""
        T = check_T(T)
        beta_start, beta_end = _check_beta_range(beta_start, beta_end)
        return cls(torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17; diffusers "squaredcos_cap_v2"):

            f(u) = cos((u / T + s) / (1 + s) * pi / 2) ** 2,  beta_i = min(1 - f(i + 1) / f(i), max_beta)
        """
        T = check_T(T)
        s, max_beta = as_float(s, "s"), as_float(max_beta, "max_beta")
        if s < 0:
            raise ValueError(f"s must be a finite float >= 0, got {s}")
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1.0 + s) * (math.pi / 2)) ** 2
        betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
        if not bool((betas > 0).all()):  # a huge s flattens f: some betas round to 0
            raise ValueError(f"s = {s} is too large for T = {T}: some betas are 0 (the cosine schedule uses s = "
                             f"0.008)")
        return cls(betas)

    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor) -> "Schedule":
        """Any user schedule (e.g. the ``trained_betas`` of a checkpoint): a tensor or numpy array, or a sequence of
        floats; Schedule(betas) is the same."""
        return cls(betas)

    def rescale_zero_terminal_snr(self) -> "Schedule":
        """This schedule with zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
        Steps are Flawed", Algorithm 1; diffusers' ``rescale_betas_zero_snr``, DiffBIR v2.1's ``zero_snr``):
        sqrt(alpha_bar) is shifted so that its last value is 0 and scaled so that its first is unchanged,

            s = sqrt(ab),  s' = (s - s[T-1]) * s[0] / (s[0] - s[T-1]),  ab' = s'**2,
            betas' = 1 - ab'[idx] / ab'[idx-1]  (1 - ab'[0] at idx = 0),

        in float64. The last beta is exactly 1 (ab'[T-1] = 0): pure noise at t = T, so the model needs
        v- or x0-prediction. A schedule that already ends at alpha_bar = 0 is returned as it is."""
        if self.T < 2:
            raise ValueError(f"rescale_zero_terminal_snr needs T >= 2 (alpha_bar[0] is kept, alpha_bar[T-1] set "
                             f"to 0), got T = {self.T}")
        if self.zero_terminal_snr:
            return self
        s = self.alphas_cumprod.sqrt()
        s0, sT = s[0].item(), s[-1].item()
        s = (s - sT) * (s0 / (s0 - sT))
        s[-1] = 0.0  # exact: s[T-1] - sT is 0 already; kept explicit so the last beta is exactly 1
        ab = s * s
        alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
        return Schedule(1.0 - alphas)

    # ------------------------------------------------------------------------------------------------------
    # Derived quantities
    # ------------------------------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar (T,) float64: alpha_bar[idx] = prod_{k <= idx} (1 - betas[k])."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def _alpha_bars(self) -> list:
        """alphas_cumprod as Python floats, for pairs() (float(tensor[i]) costs about 1 us of host time a value)."""
        return self.alphas_cumprod.tolist()

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether alpha_bar[T-1] = 0 (the last beta is exactly 1): the first sampling step starts from pure noise
        and needs a v- or x0-prediction model."""
        return bool(self.betas[-1] == 1.0)

    def _check_idx(self, idx: Any) -> int:
        # a one-element integer tensor is its int; a float or bool one is refused as a float or a bool is (5.7 was
        # read as 5, True as 1)
        if isinstance(idx, torch.Tensor) and idx.numel() == 1 and not idx.is_floating_point() and not idx.is_complex() \
                and idx.dtype != torch.bool:
            idx = int(idx.item())
        if isinstance(idx, numbers.Integral) and not isinstance(idx, bool):  # numpy integers too
            idx = int(idx)
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < self.T:
            raise ValueError(f"idx must be an int in [0, {self.T}), got {idx!r}")
        return idx

    def alpha_bar(self, idx: int) -> float:
        """alpha_bar at the 0-based index idx; idx = -1 means "after the last step" and gives 1.0."""
        if isinstance(idx, numbers.Integral) and not isinstance(idx, bool) and idx == -1:  # numpy's -1 too
            return 1.0
        return float(self.alphas_cumprod[self._check_idx(idx)])

    def noise_level(self, idx: int) -> float:
        """SR3's continuous conditioning: sqrt(alpha_bar[idx]) (SR3 feeds the network gamma = sqrt(ab))."""
        return math.sqrt(self.alpha_bar(self._check_idx(idx)))

    def respace(self, steps: int, spacing: str = "trailing") -> list[int]:
        """The descending 0-based training indices a ``steps``-step sampler visits.

        spacing (the three of diffusers' ``timestep_spacing``, Lin et al. 2024, Table 2):
          "trailing" (default): idx_i = round(T - i T / steps) - 1, i = 0..steps-1. Starts at T - 1, so the
                     first step sees the pure-noise level the model was trained for; with steps = T it visits
                     every index.
          "leading": idx_i = (steps - 1 - i) * (T // steps)  (diffusers' default; ends at 0).
          "linspace": round(linspace(0, T - 1, steps)) reversed (diffusers' "linspace": first T - 1, last 0).
          "idpm":    improved-DDPM's ``space_timesteps(T, str(steps))`` for one section, as DiffBIR's SpacedSampler
                     respaces: a float64 position starting at 0 and stepped by (T - 1) / (steps - 1), each
                     visited index the round() of the running sum. The same set as "linspace" except where
                     the sum's float error decides a tie (e.g. T = 1000, steps = 21: 499 here, 500 there).
          "ldm_uniform": the "uniform" discretisation of LDM's DDIM sampler (CompVis, Stable Diffusion; DiffBIR's
                     DDIMSampler): range(0, T, T // steps) + 1. It can visit more than ``steps`` indices
                     (ceil(T / (T // steps)): 31 for T = 1000, steps = 30; 500 for 334), and its last step
                     ends at alpha_bar[0], not at 1 (:meth:`pairs`); steps that reach index T are an error.
          "sd_leading": diffusers' DDIMScheduler with timestep_spacing "leading", steps_offset 1 and
                     set_alpha_to_one False (Stable Diffusion's scheduler configs, the SD x4 upscaler's):
                     idx_i = (steps - 1 - i) * (T // steps) + 1, exactly ``steps`` of them, the last step ending
                     at alpha_bar[0]. The same as "ldm_uniform" when T % steps == 0; otherwise LDM's visits more.
          "leading_offset": the indices of "sd_leading", the last step ending at 1: diffusers' "leading" with
                     steps_offset 1 in a DDPMScheduler, or a DDIMScheduler with set_alpha_to_one True.
          "sd_trailing": the indices of "trailing", the last step ending at alpha_bar[0]: diffusers' DDIMScheduler
                     with timestep_spacing "trailing" and set_alpha_to_one False (zero-terminal-SNR recipes).
        "trailing" and "linspace" round the exact rational value half to even. diffusers rounds float64 values
        (np.arange / np.linspace), whose error settles some ties the other way: for T = 1000, 49 trailing and 92
        linspace step counts of the 1000 differ by one index somewhere (48 trailing steps: 999, 978, 957, 937 here,
        ..., 936 there; 27 linspace steps: 500 vs 499), and for 62 more diffusers' float arange gives steps + 1
        trailing timesteps (never the case here). steps > T is an error.
        """
        T = self.T
        steps = as_int(steps, "steps")  # numpy integers too
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in [1, T={T}], got {steps}")
        if spacing in ("trailing", "sd_trailing"):
            # exact rational T * (steps - i) / steps, rounded half-to-even by Python's round on ints/floats
            out = [_round_half_even(T * (steps - i), steps) - 1 for i in range(steps)]
        elif spacing == "leading":
            r = T // steps
            out = [(steps - 1 - i) * r for i in range(steps)]
        elif spacing == "linspace":
            if steps == 1:
                out = [0]
            else:
                out = [_round_half_even((T - 1) * (steps - 1 - i), steps - 1) for i in range(steps)]
        elif spacing == "idpm":
            stride = (T - 1) / (steps - 1) if steps > 1 else 1.0
            pos, taken = 0.0, []
            for _ in range(steps):
                taken.append(round(pos))  # Python's round: half to even on the float sum
                pos += stride
            out = sorted(set(taken), reverse=True)
        elif spacing in LEADING_PLUS_ONE:
            r = T // steps
            out = [(steps - 1 - i) * r + 1 for i in range(steps)]
            if out[0] >= T:
                raise ValueError(f"steps={steps} with spacing={spacing!r} visits (steps - 1) * (T // steps) + 1 = "
                                 f"{out[0]}, past the last index {T - 1} (diffusers fails there too): fewer steps")
        elif spacing == "ldm_uniform":
            out = [k + 1 for k in range(0, T, T // steps)][::-1]
            if out[0] >= T:
                raise ValueError(f"steps={steps} with spacing='ldm_uniform' visits range(0, T, T // steps) + 1, "
                                 f"which reaches index T = {T}; choose steps with (T - 1) % (T // steps) != 0 "
                                 f"(e.g. fewer steps)")
        else:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if any(a <= b for a, b in zip(out, out[1:])) or out[-1] < 0 or out[0] >= T:  # pragma: no cover
            raise AssertionError(f"respace produced a non-descending schedule {out}")
        return out

    def pairs(self, steps: int, spacing: str = "trailing") -> list[tuple[int, float, float]]:
        """[(idx, alpha_bar[idx], alpha_bar at the next visited index)] per step; after the last visited index
        1.0 (no noise left), except for the spacings of FINAL_AT_FIRST ("ldm_uniform", "sd_leading",
        "sd_trailing"), whose samplers (LDM's DDIM: alphas_prev starts with alpha_bar[0]; diffusers' with
        set_alpha_to_one False) end at alpha_bar[0]."""
        idxs = self.respace(steps, spacing)
        ab = [self._alpha_bars[i] for i in idxs]
        final = self._alpha_bars[0] if spacing in FINAL_AT_FIRST else 1.0
        return [(i, a, b) for i, a, b in zip(idxs, ab, ab[1:] + [final])]

    # ------------------------------------------------------------------------------------------------------
    # Serialisation and comparison
    # ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready {"T": T, "betas": [...]}; floats round-trip exactly through json (repr is exact)."""
        return {"T": self.T, "betas": [float(v) for v in self.betas.tolist()]}

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        if not isinstance(d, dict) or "betas" not in d:
            raise ValueError("d must be a dict with a 'betas' list (as written by Schedule.to_dict)")
        if isinstance(d["betas"], (list, tuple)) and len(d["betas"]) > MAX_FILE_T:  # (a model file's: 2e6 took 12 s)
            raise ValueError(f"betas: {len(d['betas'])} steps is over {MAX_FILE_T}, the longest schedule read from a "
                             f"file")
        s = cls.from_betas(d["betas"])
        if "T" in d and (isinstance(d["T"], bool) or not isinstance(d["T"], numbers.Integral) or d["T"] != s.T):
            raise ValueError(f"d['T'] = {d['T']!r} does not match len(d['betas']) = {s.T}")  # (2.7 passed as 2)
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and torch.equal(self.betas, other.betas)

    def __hash__(self) -> int:
        return hash((self.T, self.betas.sum().item(), self.betas[0].item(), self.betas[-1].item()))

    def __repr__(self) -> str:
        b = self.betas
        return f"Schedule(T={self.T}, betas=[{b[0].item():.6g} .. {b[-1].item():.6g}])"


def _round_half_even(num: int, den: int) -> int:
    """round(num / den) with ties to even, exact for ints (numpy's rule, without float error)."""
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q
