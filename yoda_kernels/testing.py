"""The device x dtype x shape grid of the op tests, the input builders and the tolerance rule, in one place
(as torch_scatter/testing.py does).

Grid
    DEVICES      "cpu", plus "cuda" when a GPU is visible
    DTYPES       float32, float16, bfloat16
    SHAPES       (B, C, H, W): odd sizes (37x53: neither H nor W a multiple of 4 or of any tile; 5x7 smaller
                 than one tile; 33x65: one pixel past a tile edge), plus powers of two
    LAYOUTS      "contiguous", "channels_last", "strided" (every tensor a [..., ::2] view of a wider one)
    backends     yoda_kernels.available_backends(device) minus "naive"; the Triton interpreter on CPU is
                 slow (~seconds per call), so it only runs the SMALL shapes

Tolerance rule (flash-attention's tests/test_flash_attn.py): every backend computes in float32 from the
same inputs; against a float64 evaluation of the same equation,

    max|backend - ref64|  <=  K * max|naive - ref64|  +  atol

where naive is the reference in the same dtype. K = 2 leaves room for one extra float32 rounding of an
intermediate (e.g. numpy vs ATen in the Triton interpreter) and for a result that rounds to the other
neighbour in fp16/bf16 when the two backends' float32 values differ by one ulp. atol is 0: every backend
draws the same normals bit for bit (the noise stream is explicit float32 operations, DESIGN.md §9), so the
noise adds nothing to the bound.

A bound in units of the reference's own error loosens itself when the reference is wrong (a mask of A > tau
in the reference once let every Triton case pass), so the reference is held to a few ulps first, element by
element:

    |naive - ref64|  <=  REF_ULPS * (eps32 * scale + eps(dtype) * |ref64|)  +  ref_atol

scale: the float64 sum of the magnitudes of the equation's terms (what float32 roundings scale with; see
masked_step_f64_scale); eps(dtype) * |ref64|: the final rounding to fp16 / bf16. ref_atol is 0 where the
reference draws the very noise the float64 value was given (the CPU), else atol.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import torch

from . import ops, philox
from .contract import StepCoefs, needs_noise

DEVICES: tuple[str, ...] = ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
LAYOUTS = ("contiguous", "channels_last", "strided")
SHAPES = ((1, 3, 37, 53), (2, 4, 16, 16), (1, 2, 5, 7), (2, 3, 33, 65), (1, 3, 64, 96))
SMALL_SHAPES = ((1, 3, 37, 53), (2, 4, 16, 16))  # what the Triton interpreter runs
K_REF = 2.0
# naive vs float64 in ulps of the terms (module docstring): at most 0.77 over the masked_step grid, since a
# chain of ~5 roundings rarely adds up; a reference that takes the other branch at one pixel is ~1e7 ulps off
REF_ULPS = 2.0
EPS32 = 2.0**-23


@dataclasses.dataclass(frozen=True)
class Case:
    """One point of the grid: where, in what dtype, what size and which memory layout."""

    device: str
    dtype: torch.dtype
    shape: tuple[int, int, int, int]
    layout: str = "contiguous"

    @property
    def id(self) -> str:
        return f"{self.device}-{DTYPE_IDS[self.dtype]}-{'x'.join(map(str, self.shape))}-{self.layout}"


def grid(
    devices: Sequence[str] = DEVICES,
    dtypes: Sequence[torch.dtype] = DTYPES,
    shapes: Sequence[tuple[int, int, int, int]] = SHAPES,
    layouts: Sequence[str] = LAYOUTS,
) -> list[Case]:
    return [Case(d, t, s, l) for d in devices for t in dtypes for s in shapes for l in layouts]


def case_params(cases: Sequence[Case]):
    """pytest.param list with readable ids (imported lazily: pytest is a test-only dependency)."""
    import pytest

    return [pytest.param(c, id=c.id) for c in cases]


def backends_for(case: Case) -> list[str]:
    """The non-reference backends that run ``case``: the Triton interpreter only on SMALL_SHAPES."""
    out = [b for b in ops.available_backends(case.device) if b != "naive"]
    if case.device == "cpu" and case.shape not in SMALL_SHAPES:
        out = [b for b in out if b != "triton"]
    return out


# The op tests' scenario grid (tests/test_masked_step.py, tests/test_masked_combine.py): every grid point runs the
# richest scenarios; the others run on FEW_CASES; the Triton interpreter (~2 s a call on a CPU) only its own
# scenarios on TRITON_CPU_CASES.
FEW_CASES = {
    Case("cpu", torch.float32, (1, 3, 37, 53), "contiguous"),
    Case("cpu", torch.float16, (2, 3, 33, 65), "channels_last"),
    Case("cpu", torch.bfloat16, (1, 3, 37, 53), "strided"),
}
TRITON_CPU_CASES = {
    Case("cpu", torch.float32, (1, 3, 37, 53), "contiguous"),
    Case("cpu", torch.bfloat16, (2, 4, 16, 16), "channels_last"),
}


def scenario_params(scenarios, grid_names: set, triton_names: set):
    """pytest.param (case, backend, scenario) over grid() x backends_for(case) x scenarios (objects with a
    ``name``), thinned as the comment above says."""
    import pytest

    out = []
    for case in grid():
        for backend in backends_for(case):
            for sc in scenarios:
                if case.device == "cpu" and sc.name not in grid_names and case not in FEW_CASES:
                    continue
                if backend == "triton" and case.device == "cpu" and (
                    case not in TRITON_CPU_CASES or sc.name not in triton_names
                ):
                    continue
                out.append(pytest.param(case, backend, sc, id=f"{backend}-{case.id}-{sc.name}"))
    return out


# --------------------------------------------------------------------------------------------------------
# Input builders
# --------------------------------------------------------------------------------------------------------
def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in the given memory layout (a copy)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # W-stride 2: neither contiguous nor channels-last
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        wide[..., 1::2] = float("nan")  # a kernel that reads the gaps poisons its output
        return wide[..., ::2]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def randn(case: Case, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A (B, C, H, W) normal tensor in the case's dtype, device and layout."""
    t = torch.randn(case.shape, generator=gen, dtype=torch.float32) * scale
    return with_layout(t.to(device=case.device, dtype=case.dtype), case.layout)


def blob_attention(B: int, H: int, W: int, device="cpu") -> torch.Tensor:
    """(B, 1, H, W) attention in [0, 1]: a smooth radial bump per image, min-max normalised (coherent
    regions, as real attention maps are), so that a threshold gives inactive, mixed and full tiles together.
    Use :func:`tau_for_fraction` for the threshold that activates a given fraction of the pixels."""
    yy = torch.linspace(-1.0, 1.0, H, dtype=torch.float64).view(H, 1)
    xx = torch.linspace(-1.0, 1.0, W, dtype=torch.float64).view(1, W)
    maps = []
    for b in range(B):
        cy, cx = 0.3 * math.sin(1.7 * b + 0.5), 0.3 * math.cos(2.3 * b + 0.5)
        maps.append(torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.6))
    A = torch.stack(maps).unsqueeze(1)
    lo, hi = A.amin(dim=(2, 3), keepdim=True), A.amax(dim=(2, 3), keepdim=True)
    return ((A - lo) / (hi - lo).clamp_min(1e-12)).to(torch.float32).to(device)


def tau_for_fraction(A: torch.Tensor, fraction: float) -> float:
    """A threshold at which about ``fraction`` of the pixels of A are active (A >= tau): 0 -> above max(A),
    1 -> 0 (every pixel)."""
    if fraction <= 0.0:
        return float(A.max()) + 1.0
    if fraction >= 1.0:
        return 0.0
    return float(torch.quantile(A.detach().float().flatten().cpu(), 1.0 - fraction))


def random_attention(B: int, H: int, W: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """(B, 1, H, W) i.i.d. uniform attention: almost every tile is mixed at a mid threshold."""
    return torch.rand((B, 1, H, W), generator=gen).to(device)


def plant_ties(A: torch.Tensor, tau: float, tile: int) -> int:
    """In every mixed tile (some pixels below tau, some not) that has two or more pixels below tau, set the
    largest of them to tau exactly: the tile stays mixed and the per-pixel comparison meets A == tau, which
    ``>=`` activates and ``>`` would not. In place on A (B, 1, H, W) float32; returns the number of ties."""
    B, _, H, W = A.shape
    n = 0
    for b in range(B):
        for y in range(0, H, tile):
            for x in range(0, W, tile):
                t = A[b, 0, y : y + tile, x : x + tile]
                below = t < tau
                if int(below.sum()) >= 2 and bool((~below).any()):
                    i = int(torch.where(below, t, -1.0).flatten().argmax())
                    t[i // t.shape[1], i % t.shape[1]] = tau
                    n += 1
    return n


def scenario_attention(case: Case, attention: str, fraction: float, tile: int, gen: torch.Generator):
    """(A, tau) of an op-test scenario: attention "none" (A None, every pixel active), "blob", "random" (drawn
    from gen) or "blob3d_bf16" (A (B, H, W) in bfloat16); tau exact in A's dtype, with pixels at A == tau planted
    inside mixed tiles (a quantile alone meets a tie only by luck)."""
    B, _, H, W = case.shape
    if attention == "none":
        return None, 0.0
    A = blob_attention(B, H, W) if attention != "random" else random_attention(B, H, W, gen)
    tau = float(torch.tensor(tau_for_fraction(A, fraction)).to(
        torch.bfloat16 if attention == "blob3d_bf16" else torch.float32))
    if plant_ties(A, tau, tile) == 0:  # (not an assert: python -O would skip the planting with it)
        raise AssertionError(f"no tie planted at tau {tau} for a {attention} map")
    if attention == "blob3d_bf16":
        A = A[:, 0].to(torch.bfloat16)
    return A.to(case.device), tau


# --------------------------------------------------------------------------------------------------------
# Float64 oracle and the tolerance rule
# --------------------------------------------------------------------------------------------------------
def masked_step_f64(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tau: float,
    coefs: Sequence[float],
    clip: bool,
    z: torch.Tensor,
) -> torch.Tensor:
    """naive.masked_step's equation in float64 with float64 coefficients (the exact value that every
    float32 backend approximates). z: the (B, C, H, W) noise the backends drew (or 0 when none is drawn)."""
    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb = (float(v) for v in coefs)
    xd, od, cd, zd = (t.detach().to("cpu", torch.float64) for t in (x, model_out, c, z))
    x0 = k1 * xd + k2 * od
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    eps = e1 * xd + e2 * od
    sr = cx0 * x0 + cx * xd + ceps * eps + sigma * zd
    return _mask_blend(A, tau, sr, la * cd + lb * zd)


def masked_step_f64_scale(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor],
    tau: float,
    coefs: Sequence[float],
    z: torch.Tensor,
) -> torch.Tensor:
    """Per element, the float64 magnitude that float32 roundings of masked_step_f64's equation scale with: every
    term replaced by its absolute value (|cx0| (|k1 x| + |k2 out|) + |cx x| + ... on the SR branch, |la c| +
    |lb z| on the LR branch; clipping does not widen an error)."""
    k1, k2, e1, e2, cx0, cx, ceps, sigma, la, lb = (abs(float(v)) for v in coefs)
    xd, od, cd, zd = (t.detach().to("cpu", torch.float64).abs() for t in (x, model_out, c, z))
    sr = cx0 * (k1 * xd + k2 * od) + cx * xd + ceps * (e1 * xd + e2 * od) + sigma * zd
    return _mask_blend(A, tau, sr, la * cd + lb * zd)


def _mask_blend(A: Optional[torch.Tensor], tau: float, sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """sr where A >= tau (compared in float32, as the kernels do), else lr; sr everywhere when A is None."""
    if A is None:
        return sr
    Af = A.detach().to("cpu", torch.float32)
    Af = Af.unsqueeze(1) if Af.dim() == 3 else Af
    return torch.where(Af >= torch.tensor(tau, dtype=torch.float32), sr, lr)


def max_err(out: torch.Tensor, ref64: torch.Tensor) -> float:
    """max |out - ref64| over the elements (NaN counts as infinite error)."""
    d = (out.detach().to("cpu", torch.float64) - ref64).abs()
    return float("inf") if torch.isnan(d).any() else float(d.max()) if d.numel() else 0.0


def assert_reference_within_ulps(
    naive_out: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor, *, atol: float = 0.0, ulps: float = REF_ULPS
) -> None:
    """The reference itself is the float64 value up to a few float32 roundings of the terms (``scale``) and the
    final rounding to its dtype (module docstring), at every element."""
    fi = torch.finfo(naive_out.dtype)
    bound = ulps * (EPS32 * scale + fi.eps * ref64.abs() + fi.tiny * fi.eps) + atol
    d = (naive_out.detach().to("cpu", torch.float64) - ref64).abs()
    bad = ~(d <= bound)  # NaN counts as bad
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"reference: {int(bad.sum())} of {d.numel()} elements further from float64 than {ulps} ulps "
            f"(+ atol {atol:.3g}); first at flat index {i}: |naive - ref64| = {float(d.flatten()[i]):.3g} > "
            f"{float(bound.flatten()[i]):.3g} (ref64 {float(ref64.flatten()[i]):.6g}, scale "
            f"{float(scale.flatten()[i]):.3g})"
        )


def assert_within_reference_error(
    out: torch.Tensor, naive_out: torch.Tensor, ref64: torch.Tensor, *, scale: torch.Tensor, atol: float = 0.0,
    ref_atol: float = 0.0, k: float = K_REF, what: str = "backend",
) -> None:
    """The flash-attention rule of the module docstring, after the reference's own few-ulps check
    (assert_reference_within_ulps with ``scale`` and ``ref_atol``); also checks dtype, shape and finiteness."""
    # raised, not asserted: python -O drops asserts, and a public helper must not pass everything there
    if out.dtype != naive_out.dtype:
        raise AssertionError(f"{what}: dtype {out.dtype} != reference dtype {naive_out.dtype}")
    if out.shape != naive_out.shape:
        raise AssertionError(f"{what}: shape {tuple(out.shape)} != {tuple(naive_out.shape)}")
    assert_reference_within_ulps(naive_out, ref64, scale, atol=ref_atol)
    err, ref_err = max_err(out, ref64), max_err(naive_out, ref64)
    if not err <= k * ref_err + atol:
        raise AssertionError(f"{what}: max error vs float64 {err:.3g} > {k} x naive's {ref_err:.3g} + atol {atol:.3g}")


def reference_noise(shape, seed: int, step: int, coefs: Sequence[float]) -> torch.Tensor:
    """The float32 (B, C, H, W) noise the naive reference draws on the CPU (zeros when the step draws none)."""
    if not needs_noise(coefs):
        return torch.zeros(shape, dtype=torch.float32)
    return _philox_noise(seed, step, tuple(shape)).clone()


@functools.lru_cache(maxsize=64)
def _philox_noise(seed: int, step: int, shape: tuple) -> torch.Tensor:
    return philox.noise(seed, step, shape)  # the int64 reference is slow; tests reuse a few (seed, step, shape)


__all__ = [
    "Case",
    "DEVICES",
    "DTYPES",
    "DTYPE_IDS",
    "FEW_CASES",
    "K_REF",
    "LAYOUTS",
    "REF_ULPS",
    "SHAPES",
    "SMALL_SHAPES",
    "TRITON_CPU_CASES",
    "assert_reference_within_ulps",
    "assert_within_reference_error",
    "backends_for",
    "blob_attention",
    "case_params",
    "grid",
    "masked_step_f64",
    "masked_step_f64_scale",
    "max_err",
    "plant_ties",
    "random_attention",
    "randn",
    "reference_noise",
    "scenario_attention",
    "scenario_params",
    "tau_for_fraction",
    "with_layout",
]
