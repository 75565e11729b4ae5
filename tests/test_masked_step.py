"""masked_step: every backend against the naive reference over the device x dtype x shape x layout grid
(yoda_kernels.testing), the plain DDPM / DDIM steps in float64 from the papers, the LR branch, the reads a
tile class must not do, bad inputs, opcheck, torch.compile and the extension-missing fallback."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import naive, ops, philox
from yoda_kernels import testing as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What a step looks like: attention kind, threshold, schedule point and parameterisation, noise."""

    name: str
    attention: str = "blob"  # "none" | "blob" | "random" | "blob3d_bf16" (A (B, H, W) in bfloat16)
    fraction: float = 0.5  # of active pixels (tau from the attention's quantile)
    ab_t: float = 0.3
    ab_prev: float = 0.45
    prediction: str = "eps"
    sampler: str = "ddpm"
    eta: float = 0.0
    clip: bool = False
    explicit_noise: bool = False
    init: bool = False  # init_coefficients: x_T
    tile: int = 16

    def coefs(self):
        if self.init:
            return yk.init_coefficients(self.ab_t)
        return yk.step_coefficients(
            self.ab_t, self.ab_prev, prediction=self.prediction, sampler=self.sampler, eta=self.eta
        )


SCENARIOS = [
    Scenario("plain-ddpm-eps", attention="none"),
    Scenario("blob-ddim-v-clip-t8", prediction="v", sampler="ddim", eta=0.7, clip=True, tile=8),
    Scenario("random-ddpm-x0-noise-t32", attention="random", prediction="x0", explicit_noise=True, tile=32),
    Scenario("blob3d-bf16A-ddim0", attention="blob3d_bf16", sampler="ddim", fraction=0.3),
    Scenario("blob-last-step", ab_t=0.98, ab_prev=1.0, fraction=0.8),  # sigma = lb = 0: no noise drawn
    Scenario("blob-init", init=True, fraction=0.2),
]
# Every grid point runs the two richest scenarios; the others run on three representative points.
GRID_SCENARIOS = {"blob-ddim-v-clip-t8", "random-ddpm-x0-noise-t32"}
TRITON_SCENARIOS = {"plain-ddpm-eps", "blob-ddim-v-clip-t8", "random-ddpm-x0-noise-t32"}


def _params():
    return T.scenario_params(SCENARIOS, GRID_SCENARIOS, TRITON_SCENARIOS)


def _inputs(case: T.Case, sc: Scenario, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, out, c = T.randn(case, g), T.randn(case, g), T.randn(case, g, scale=0.5)
    A, tau = T.scenario_attention(case, sc.attention, sc.fraction, sc.tile, g)
    noise = T.randn(case, g) if sc.explicit_noise else None
    return x, out, c, A, tau, noise


@pytest.mark.parametrize("case, backend, sc", _params())
def test_matches_reference(case, backend, sc):
    x, out, c, A, tau, noise = _inputs(case, sc)
    coefs = sc.coefs()
    kw = dict(coefs=coefs, clip=sc.clip, seed=123, step=45, noise=noise, tile=sc.tile)
    got = yk.masked_step(x, out, c, A, tau, backend=backend, **kw)
    ref = yk.masked_step(x, out, c, A, tau, backend="naive", **kw)
    z = noise.float() if noise is not None else T.reference_noise(case.shape, 123, 45, coefs)
    ref64 = T.masked_step_f64(x, out, c, A, tau, coefs, sc.clip, z)
    scale = T.masked_step_f64_scale(x, out, c, A, tau, coefs, z)
    # every backend draws the normals of z bit for bit (DESIGN.md §9): the noise adds nothing to the bound
    T.assert_within_reference_error(got, ref, ref64, scale=scale, what=backend)
    assert got.device == x.device
    # memory format of x (naive's rule): channels-last in, channels-last out; otherwise contiguous
    assert got.stride() == ref.stride()
    if backend == "cpp" and (noise is not None or not yk.needs_noise(coefs)):
        # same float32 operation order and same noise: the C++ kernel is the reference bit for bit
        assert torch.equal(got, ref)


# --------------------------------------------------------------------------------------------------------
# Closed forms in float64 (written from the papers, independently of yoda_kernels.coefs)
# --------------------------------------------------------------------------------------------------------
def _x0_eps_f64(prediction, x, out, ab):
    """(x0, eps) from the model output: eps (Ho et al. 2020 eq. 4 inverted), x0, or v = sqrt(ab) eps -
    sqrt(1 - ab) x0 (Salimans & Ho 2022, sec. 4)."""
    sa, s1 = math.sqrt(ab), math.sqrt(1 - ab)
    if prediction == "eps":
        return (x - s1 * out) / sa, out
    if prediction == "x0":
        return out, (x - sa * out) / s1
    return sa * x - s1 * out, s1 * x + sa * out


def _ddpm_f64(prediction, x, out, z, ab_t, ab_prev):
    """Ancestral DDPM step between ab_t and ab_prev (alpha_t = ab_t / ab_prev): posterior mean of
    Ho et al. eq. 7, mu = sqrt(ab_prev) beta / (1 - ab_t) x0 + sqrt(alpha) (1 - ab_prev) / (1 - ab_t) x_t,
    and the "fixed small" variance beta~ = (1 - ab_prev) / (1 - ab_t) beta (eq. 7); for eps predictions
    the mean is written as eq. 11, (x_t - beta / sqrt(1 - ab_t) eps) / sqrt(alpha)."""
    alpha = ab_t / ab_prev
    beta = 1 - alpha
    var = (1 - ab_prev) / (1 - ab_t) * beta
    if prediction == "eps":
        mean = (x - beta / math.sqrt(1 - ab_t) * out) / math.sqrt(alpha)
    else:
        x0, _ = _x0_eps_f64(prediction, x, out, ab_t)
        mean = math.sqrt(ab_prev) * beta / (1 - ab_t) * x0 + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab_t) * x
    return mean + math.sqrt(var) * z


def _ddim_f64(prediction, x, out, z, ab_t, ab_prev, eta):
    """DDIM (Song et al. 2021, eq. 12 with sigma of eq. 16): x_prev = sqrt(ab_prev) x0 +
    sqrt(1 - ab_prev - sigma^2) eps + sigma z, sigma = eta sqrt((1 - ab_prev)/(1 - ab_t)) sqrt(1 - ab_t/ab_prev)."""
    x0, eps = _x0_eps_f64(prediction, x, out, ab_t)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps + sigma * z


CLOSED_FORMS = [
    pytest.param(p, s, eta, id=f"{s}-{p}" + (f"-eta{eta}" if s == "ddim" else ""))
    for p in ("eps", "x0", "v")
    for s, eta in (("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0))
]


@pytest.mark.parametrize("prediction, sampler, eta", CLOSED_FORMS)
@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
def test_tau_le_0_is_the_plain_sampler(backend, prediction, sampler, eta):
    """tau <= 0 activates every pixel (A >= 0): the YODA step is the plain sampler step, bit for bit equal to
    attention=None and equal to the float64 step from alpha_bar."""
    case = T.Case("cpu", torch.float32, (2, 3, 37, 53))
    g = torch.Generator().manual_seed(1)
    x, out, c, z = (T.randn(case, g) for _ in range(4))
    A = T.blob_attention(2, 37, 53)
    ab_t, ab_prev = 0.3, 0.45
    kw = dict(ab_t=ab_t, ab_prev=ab_prev, prediction=prediction, sampler=sampler, eta=eta, noise=z, backend=backend)
    plain = yk.masked_step(x, out, c, None, **kw)
    for tau in (0.0, -0.5):
        assert torch.equal(yk.masked_step(x, out, c, A, tau, **kw), plain)
    f = _ddpm_f64 if sampler == "ddpm" else lambda *a: _ddim_f64(*a, eta)
    want = f(prediction, x.double(), out.double(), z.double(), ab_t, ab_prev)
    # |values| <= ~10 here: 2e-5 is ~20 float32 ulps of the largest term, far below any coefficient error
    torch.testing.assert_close(plain.double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
def test_tau_above_1_is_the_lr_branch(backend):
    """tau > 1 > max(A): every pixel takes sqrt(ab_prev) c + sqrt(1 - ab_prev) z (float64 from alpha_bar),
    and x / model_out are not needed at all (NaN there must not leak)."""
    case = T.Case("cpu", torch.float32, (1, 3, 37, 53))
    g = torch.Generator().manual_seed(2)
    c = T.randn(case, g)
    x = torch.full(case.shape, float("nan"))
    A = T.blob_attention(1, 37, 53)
    ab_prev = 0.45
    got = yk.masked_step(x, x, c, A, 1.5, ab_t=0.3, ab_prev=ab_prev, seed=7, step=3, backend=backend)
    z = philox.noise(7, 3, case.shape).double()
    want = math.sqrt(ab_prev) * c.double() + math.sqrt(1 - ab_prev) * z
    torch.testing.assert_close(got.double(), want, rtol=0, atol=4e-6)  # 1e-6 noise + float32 rounding


# --------------------------------------------------------------------------------------------------------
# Reads a tile class must not do (DESIGN.md §8), on the fused backends through the raw op
# --------------------------------------------------------------------------------------------------------
FUSED = [b for b in yk.available_backends("cpu") if b in ("cpp", "triton")]


@pytest.mark.parametrize("backend", FUSED)
def test_tile_classes_skip_reads(backend):
    """NaN planted where a tile class must not read: x / model_out in inactive tiles, A in full tiles.
    The result must equal the clean run."""
    B, C, H, W, tile = 1, 3, 37, 53, 8
    g = torch.Generator().manual_seed(3)
    x, out, c = (torch.randn(B, C, H, W, generator=g) for _ in range(3))
    A = T.blob_attention(B, H, W)
    tau = T.tau_for_fraction(A, 0.4)
    tmax, tmin = naive.tile_stats(A, tile)
    coefs = yk.step_coefficients(0.3, 0.45)
    op = ops._impl("masked_step", backend)
    clean = op(x, out, c, A, tmax, tmin, tau, coefs, False, 1, 2, None, tile)
    inactive = (tmax < tau).repeat_interleave(tile, 1).repeat_interleave(tile, 2)[:, :H, :W].unsqueeze(1)
    full = (tmin >= tau).repeat_interleave(tile, 1).repeat_interleave(tile, 2)[:, :H, :W].unsqueeze(1)
    assert inactive.any() and full.any() and not (inactive | full).all()  # all three classes present
    xn, on = x.masked_fill(inactive, float("nan")), out.masked_fill(inactive, float("nan"))
    An = A.masked_fill(full, float("nan"))
    dirty = op(xn, on, c, An, tmax, tmin, tau, coefs, False, 1, 2, None, tile)
    assert torch.equal(dirty, clean)


@pytest.mark.parametrize("noise", [True, False])
def test_rows_of_many_short_segments_sweep_as_the_reference(noise):
    """The C++ sweep prefetches the segments of a row of several tile classes kAheadPixels (512) ahead and holds at
    most 16 waiting (csrc/cpu/tile_sweep.h): rows that cycle inactive / full / mixed at every 8-px tile (140 segments
    a row, the queue full), wider than a noise chunk (1024), give the reference's bits, and inactive tiles still
    read no x nor model_out (NaN planted there)."""
    if "cpp" not in yk.available_backends("cpu"):
        pytest.skip("C++ backend unavailable")
    B, C, H, W, tile = 1, 2, 16, 1100, 8
    g = torch.Generator().manual_seed(5)
    x, out, c = (torch.randn(B, C, H, W, generator=g) for _ in range(3))
    kind = torch.arange(W) // tile % 3  # 0 inactive, 1 full, 2 mixed (half of its columns active)
    A = torch.where(kind == 0, 0.1, torch.where(kind == 1, 0.9, torch.where(torch.arange(W) % 2 == 0, 0.9, 0.1)))
    A = A.expand(B, 1, H, W).contiguous()
    tmax, tmin = naive.tile_stats(A, tile)
    coefs = yk.step_coefficients(0.3, 0.45)
    z = torch.randn(B, C, H, W, generator=g) if noise else None
    ref = naive.masked_step(x, out, c, A, tmax, tmin, 0.5, coefs, False, 1, 2, z, tile)
    op = ops._impl("masked_step", "cpp")
    assert torch.equal(op(x, out, c, A, tmax, tmin, 0.5, coefs, False, 1, 2, z, tile), ref)
    inactive = (kind == 0).expand(B, C, H, W)
    xn, on = x.masked_fill(inactive, float("nan")), out.masked_fill(inactive, float("nan"))
    assert torch.equal(op(xn, on, c, A, tmax, tmin, 0.5, coefs, False, 1, 2, z, tile), ref)
    zero = yk.step_coefficients(0.98, 1.0)  # sigma = lb = 0: no noise at all, the same sweep
    assert torch.equal(op(x, out, c, A, tmax, tmin, 0.5, zero, False, 1, 2, None, tile),
                       naive.masked_step(x, out, c, A, tmax, tmin, 0.5, zero, False, 1, 2, None, tile))


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "naive"])
@pytest.mark.parametrize("op_name", ["masked_step", "masked_combine"])
def test_a_nan_in_A_leaves_only_its_pixel_inactive_in_direct_calls(backend, op_name):
    """The public ops refuse a NaN in A, but the registered ops take one (direct calls, a TileStats made before A
    changed in place): its tile's stats are NaN, and the kernels took the whole tile as inactive (63 of 64 pixels
    off the reference, which leaves only the NaN pixel inactive). Now such a tile is mixed: the reference's bits."""
    shape = (1, 2, 16, 24)
    g = torch.Generator().manual_seed(6)
    x, out, c = (torch.randn(shape, generator=g) for _ in range(3))
    A = torch.ones(1, 1, 16, 24)
    A[0, 0, 3, 5] = float("nan")
    tmax, tmin = naive.tile_stats(A, 8)
    assert tmax.isnan().sum() == 1
    if op_name == "masked_step":
        args = (x, out, c, A, tmax, tmin, 0.5, yk.step_coefficients(0.3, 0.45), False, 1, 2, None, 8)
    else:
        args = (x, out, None, None, c, A, tmax, tmin, 0.5, [0.9, 0.1, 0.0, 0.0, 0.0, 0.8, 0.0], 1, 2, None, 8)
    want, got = ops._impl(op_name, "naive")(*args), ops._impl(op_name, backend)(*args)
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_noiseless_step_ignores_an_explicit_noise_tensor(backend):
    """A step that draws no noise (the last DDPM step, DDIM with eta = 0: sigma = lb = 0) does not read the noise
    argument on any backend, the reference included: NaN there must not reach the output."""
    shape = (1, 2, 12, 20)
    g = torch.Generator().manual_seed(5)
    x, out, c = (torch.randn(shape, generator=g) for _ in range(3))
    A = T.blob_attention(1, 12, 20)
    coefs = yk.step_coefficients(0.3, 1.0)
    assert not yk.needs_noise(coefs)
    op = ops._impl("masked_step", backend)
    args = (x, out, c, A, *naive.tile_stats(A, 8), 0.5, coefs, False, 1, 2)
    nan = torch.full(shape, float("nan"))
    assert torch.equal(op(*args, nan, 8), op(*args, None, 8))
    assert not torch.isnan(op(*args, nan, 8)).any()


# --------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------
def _good(shape=(1, 3, 16, 20)):
    g = torch.Generator().manual_seed(4)
    x, out, c = (torch.randn(shape, generator=g) for _ in range(3))
    return x, out, c, torch.rand(shape[0], 1, *shape[2:], generator=g)


BAD = [
    ("model_out-shape", lambda x, o, c, A: dict(model_out=o[:, :2]), ValueError, "model_out"),
    ("c-dtype", lambda x, o, c, A: dict(c=c.double()), TypeError, "c "),
    ("x-int", lambda x, o, c, A: dict(x=x.int(), model_out=o.int(), c=c.int()), TypeError, "x must be float"),
    ("x-3d", lambda x, o, c, A: dict(x=x[0]), ValueError, "x must be 4-D"),
    ("A-shape", lambda x, o, c, A: dict(A=A[..., :-1]), ValueError, "A must be"),
    ("A-device", lambda x, o, c, A: dict(A=A.to("meta")), ValueError, "A is on meta"),
    ("c-device", lambda x, o, c, A: dict(c=c.to("meta")), ValueError, "c is on meta"),
    ("A-nan", lambda x, o, c, A: dict(A=A.index_fill(3, torch.tensor([5]), float("nan"))), ValueError, "A contains NaN"),
    ("tile-12", lambda x, o, c, A: dict(tile=12), ValueError, "tile must be one of"),
    ("tau-nan", lambda x, o, c, A: dict(tau=float("nan")), ValueError, "tau"),
    ("tau-str", lambda x, o, c, A: dict(tau="0.5"), TypeError, "tau must be a float, got str"),
    ("noise-shape", lambda x, o, c, A: dict(noise=x[:, :1]), ValueError, "noise"),
    ("seed-negative", lambda x, o, c, A: dict(seed=-1), ValueError, "seed"),
    ("step-too-big", lambda x, o, c, A: dict(step=2**31), ValueError, "step"),
    ("coefs-9", lambda x, o, c, A: dict(coefs=[0.0] * 9), ValueError, "coefs"),
    ("coefs-inf", lambda x, o, c, A: dict(coefs=[math.inf] + [0.0] * 9), ValueError, "coefs"),
    ("stats-shape", lambda x, o, c, A: dict(stats=naive.tile_stats(A, 8)), ValueError, "stats"),
    # three were taken: stats without A (ignored: every pixel active), clip="no" (clipped), A in float64
    ("stats-no-A", lambda x, o, c, A: dict(A=None, stats=yk.tile_stats(A)), ValueError, "stats given without A"),
    ("clip-str", lambda x, o, c, A: dict(clip="no"), TypeError, "clip must be True or False, got 'no'"),
    ("A-float64", lambda x, o, c, A: dict(A=A.double()), TypeError, "A must be float32, float16 or bfloat16"),
    ("tau-2", lambda x, o, c, A: dict(tau=torch.tensor([0.5, 0.6])), ValueError, r"tau must be one number"),
    ("no-schedule", lambda x, o, c, A: dict(ab_t=None), ValueError, "coefs or both ab_t"),
    # eta > 1 was taken (the direction term clamped to 0: a wrong step), and eta with DDPM ignored
    ("ddim-eta-2", lambda x, o, c, A: dict(sampler="ddim", eta=2.0), ValueError, r"eta must be a float in \[0, 1\]"),
    ("ddpm-eta", lambda x, o, c, A: dict(sampler="ddpm", eta=0.5), ValueError, "eta applies to sampler='ddim' only"),
    # a review (thirty-fifth pass): sparse tensors reached the dispatcher ("Could not run 'yoda::masked_step' ...
    # 'SparseCPU'"), a bool tensor tau was 1.0, a dict of coefs ran with its keys 0..9, "0.5" and True as ab were
    # taken, and 10**400 raised a bare OverflowError
    ("x-sparse", lambda x, o, c, A: dict(x=x.to_sparse()), TypeError, r"x must be a dense tensor.*\.to_dense\(\)"),
    ("A-sparse", lambda x, o, c, A: dict(A=A.to_sparse()), TypeError, "A must be a dense tensor"),
    ("tau-bool-tensor", lambda x, o, c, A: dict(tau=torch.tensor(True)), TypeError, "tau must be a float, got a tensor "
     "of torch.bool"),
    ("tau-complex", lambda x, o, c, A: dict(tau=torch.tensor(0.5j)), TypeError, "tau must be a float"),
    ("coefs-dict", lambda x, o, c, A: dict(coefs=dict(enumerate(yk.step_coefficients(0.3, 0.45))), ab_t=None,
                                          ab_prev=None), ValueError,
     "coefs must be 10 finite floats"),
    ("ab-str", lambda x, o, c, A: dict(ab_t="0.3"), TypeError, "ab_t must be a float, got str"),
    ("ab-bool", lambda x, o, c, A: dict(ab_prev=True), TypeError, "ab_prev must be a float, got bool"),
    ("ab-huge", lambda x, o, c, A: dict(ab_t=10**400), ValueError, "ab_t must be in .* past float64's range"),
    ("eta-bool", lambda x, o, c, A: dict(sampler="ddim", eta=True), TypeError, "eta must be a float in"),
    ("stats-sparse", lambda x, o, c, A: dict(stats=tuple(s.to_sparse() for s in yk.tile_stats(A))), TypeError,
     "stats must be a dense tensor"),
]


def test_alpha_bars_are_numbers_of_any_kind_but_bools_strings_and_complex():
    """The alpha-bar check that refuses "0.5" and True (taken before) takes what float() reads as a real number:
    numpy scalars and 0-d arrays, 0-d tensors, Decimal (as it did)."""
    import decimal

    want = yk.step_coefficients(0.5, 0.625)
    for v in (np.float32(0.5), np.array(0.5), torch.tensor(0.5, dtype=torch.float64), decimal.Decimal("0.5")):
        assert yk.step_coefficients(v, 0.625) == want, type(v)
    for v in (np.bool_(True), np.array(True), torch.tensor(0.5j), np.complex64(0.5), None, [0.5], bytearray(b"0.5"),
              memoryview(b"0.5")):
        with pytest.raises(TypeError, match="^ab_t must be a float, got "):
            yk.step_coefficients(v, 0.625)


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
@pytest.mark.parametrize("make, exc, match", [pytest.param(m, e, s, id=n) for n, m, e, s in BAD])
def test_bad_input_names_the_argument(backend, make, exc, match):
    x, o, c, A = _good()
    kw = dict(x=x, model_out=o, c=c, A=A, tau=0.5, ab_t=0.3, ab_prev=0.45, backend=backend)
    kw.update(make(x, o, c, A))
    with pytest.raises(exc, match=match):
        yk.masked_step(**kw)


@pytest.mark.parametrize("cuda_built, triton_ok, device, want", [
    (True, True, "cuda", "cuda"), (False, True, "cuda", "triton"), (False, False, "cuda", "naive"),
    (True, True, "meta", "naive")])
def test_auto_backend_order(monkeypatch, cuda_built, triton_ok, device, want):
    """backend='auto' on a GPU: the prebuilt CUDA kernel, then Triton, then the reference (no GPU needed: the
    choice is made from the device type and what is installed)."""
    kernels = {op: frozenset({"CPU", "CUDA"} if cuda_built else {"CPU"}) for op in ops.OPS}
    monkeypatch.setattr(ops, "DEVICE_KERNELS", kernels)
    monkeypatch.setattr(ops, "triton_available", lambda: triton_ok)
    monkeypatch.setattr(ops, "_warned", {"reference on cuda"})  # the one-time warning is tested below
    assert ops.resolve_backend("auto", torch.device(device)) == want
    assert ops.resolve_backend("auto", device) == want  # a device's name too (was AttributeError: 'str' ... 'type')


def test_mps_is_refused_by_name():
    """An Apple GPU's tensors failed deep inside the reference with torch's own float64 error (MPS has none); the
    backend's choice (every op's first step) says so first, for every backend name."""
    for backend in ("auto", "naive", "cpp"):
        with pytest.raises(ValueError, match=r"^device mps \(an Apple GPU\) is not supported: .*keep the tensors "
                                             r"on the CPU$"):
            ops.resolve_backend(backend, "mps")


@pytest.mark.parametrize("triton_ok, interpret, why", [
    (False, True, "triton is not installed, or its kernels did not register"),
    (True, False, "off a GPU Triton runs through its interpreter: set TRITON_INTERPRET=1 before triton is imported")])
def test_triton_not_available_says_why(monkeypatch, triton_ok, interpret, why):
    """backend='triton' where it cannot run said only "not available"; it says why now."""
    monkeypatch.setattr(ops, "triton_available", lambda: triton_ok)
    monkeypatch.setattr(ops, "_triton_module", lambda: type("T", (), {"INTERPRET": interpret}))
    with pytest.raises(RuntimeError, match=f"backend 'triton' is not available on device cpu \\({why}\\)"):
        ops.resolve_backend("triton", torch.device("cpu"))


def test_fallback_is_per_op_and_visible(monkeypatch):
    """The reference stands in per op for the device kernels the extension did not bring, and active_backends()
    says so; a GPU with neither CUDA kernels nor triton warns once that the reference runs there."""
    assert ops.active_backends("cpu") == {op: "cpp" for op in ops.OPS}
    assert yk.active_backends("cpu", "naive") == {op: "naive" for op in ops.OPS}
    monkeypatch.setattr(ops, "DEVICE_KERNELS", {**ops.DEVICE_KERNELS, "tile_stats": frozenset()})
    assert ops.active_backends("cpu") == {"masked_step": "cpp", "masked_combine": "cpp", "tile_stats": "naive",
                                          "masked_q_sample": "cpp"}
    assert ops.active_backends("cpu", "cpp")["tile_stats"] == "naive"
    monkeypatch.setattr(ops, "DEVICE_KERNELS", {op: frozenset() for op in ops.OPS})
    monkeypatch.setattr(ops, "triton_available", lambda: False)
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="reference runs there"):
        assert ops.active_backends("cuda") == {op: "naive" for op in ops.OPS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.resolve_backend("auto", torch.device("cuda")) == "naive"  # once only


def test_bound_backend_is_resolved_once(monkeypatch):
    """bind_backend resolves once; the ops then take the bound backend without choosing again, and refuse
    tensors on another device type."""
    x, o, c, A = _good()
    bound = yk.bind_backend("auto", x.device)
    assert bound == yk.Backend(ops.resolve_backend("auto", x.device), "cpu")
    want = yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend=bound.name)
    calls = []
    real = ops.resolve_backend
    monkeypatch.setattr(ops, "resolve_backend", lambda *a: calls.append(a) or real(*a))
    got = yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend=bound)
    assert torch.equal(got, want) and calls == []
    with pytest.raises(ValueError, match="bound for cuda"):
        yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend=yk.Backend("cuda", "cuda"))


def test_hand_made_backends_and_non_integer_seeds_are_refused():
    """A Backend tuple names a backend for its device type (a bogus name ran the C++ kernel; "cuda" bound for the
    CPU ran it too); a float seed or step is an error, not truncated."""
    x, o, c, A = _good()
    for bad in (yk.Backend("bogus", "cpu"), yk.Backend("cuda", "cpu"), yk.Backend("auto", "cpu")):
        with pytest.raises(ValueError, match="is not a backend for cpu"):
            yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend=bad)
        with pytest.raises(ValueError, match="is not a backend for cpu"):
            yk.bind_backend(bad, "cpu")
    for kw in (dict(seed=3.7), dict(step=1.0), dict(seed=True)):
        with pytest.raises(TypeError, match="must be an int"):
            yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend="naive", **kw)


@pytest.mark.parametrize("op", ["masked_step", "masked_combine", "masked_q_sample"])
def test_fused_ops_refuse_inputs_that_want_a_gradient(op):
    """The kernels have no backward: cpp returned a tensor with a grad_fn whose backward gave x.grad None with only
    a warning. The reference differentiates; under no_grad any backend runs."""
    x, o, c, A = _good()
    call = {"masked_step": lambda x, b: yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend=b),
            "masked_combine": lambda x, b: yk.masked_combine(x, [o], c, A, 0.5, coefs=[1, 0.5, 0, 0, 0, 0.9, 0.1],
                                                             backend=b),
            "masked_q_sample": lambda x, b: yk.masked_q_sample(x, c, o, A, 0.5, 0.7, backend=b)}[op]
    xg = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"{op} is not differentiable on the 'cpp' backend"):
        call(xg, "cpp")
    call(xg, "naive").sum().backward()
    assert xg.grad is not None and bool(xg.grad.abs().sum() > 0)
    with torch.no_grad():
        assert torch.equal(call(xg, "cpp"), call(x, "naive"))


def test_nan_in_attention_is_refused_with_given_stats():
    """With stats= the tile statistics were not computed, so a NaN in A went unchecked: cpp took the whole tile as
    inactive, naive only that pixel."""
    x, o, c, A = _good()
    stats = yk.tile_stats(A, 8)
    A[0, 0, 3, 3] = float("nan")
    for backend in ("naive", "cpp"):
        with pytest.raises(ValueError, match="A contains NaN"):
            yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, tile=8, stats=naive.tile_stats(A, 8),
                           backend=backend)
    assert stats[0].isfinite().all()  # stats of the clean map pass
    # either statistic holding a NaN is found (both are searched with one device sync)
    tmax, tmin = naive.tile_stats(x[:, :1].clone(), 8)
    for bad in ((tmax, tmin.index_fill(2, torch.tensor([1]), float("nan"))),
                (tmax.index_fill(1, torch.tensor([0]), float("nan")), tmin)):
        with pytest.raises(ValueError, match="A contains NaN"):
            yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, tile=8, stats=bad, backend="cpp")


def test_stats_from_tile_stats_are_not_searched_again(monkeypatch):
    """tile_stats' TileStats, given back every step, is not searched for NaN again (a device sync per step on a
    GPU); a plain tuple is, and either way the step is the same."""
    x, o, c, A = _good()
    stats = yk.tile_stats(A, 8)
    assert isinstance(stats, yk.TileStats) and torch.equal(stats.tile_max, naive.tile_stats(A, 8)[0])
    searched = []
    real = ops.values_checkable
    monkeypatch.setattr(ops, "values_checkable", lambda t: (searched.append(t is stats.tile_max), real(t))[1])
    kw = dict(ab_t=0.3, ab_prev=0.45, tile=8, backend="cpp")
    fast = yk.masked_step(x, o, c, A, 0.5, stats=stats, **kw)
    assert True not in searched
    assert torch.equal(yk.masked_step(x, o, c, A, 0.5, stats=tuple(stats), **kw), fast)
    assert searched.count(True) == 1  # both statistics, one device sync
    # a TileStats made by hand is a plain tuple: searched (NaN of A, max < min), and trusted to describe A
    assert torch.equal(yk.masked_step(x, o, c, A, 0.5, stats=yk.TileStats(*stats), **kw), fast)
    assert searched.count(True) == 2


@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_given_stats_of_another_A_are_refused(backend):
    """stats= made of another A (or of this A before an in-place change, or in another dtype) gave wrong results
    on the C++ and Triton backends, which classify tiles by them, and right ones on the naive reference, which reads
    A; a plain tuple with max and min swapped made mixed tiles full. Now each is refused on every backend."""
    x, o, c, A = _good()
    kw = dict(ab_t=0.3, ab_prev=0.45, tile=8, backend=backend, seed=1, step=1)
    want = yk.masked_step(x, o, c, A, 0.5, **kw)
    stats = yk.tile_stats(A, 8)
    assert torch.equal(yk.masked_step(x, o, c, A, 0.5, stats=stats, **kw), want)
    tmax, tmin = stats  # still a pair
    other = A.flip(-1).contiguous()
    stale = A.clone()
    st_stale = yk.tile_stats(stale, 8)
    stale.mul_(0.5)
    for B, st in ((other, stats), (A.half(), stats), (stale, st_stale), (A, yk.tile_stats(A, 8 * 2))):
        with pytest.raises(ValueError, match=r"^stats (were made of another A, or of this A before it changed in "
                                             r"place: call tile_stats\(A, 8\) again|must be two tensors)"):
            yk.masked_step(x if B.dtype == x.dtype else x.half(), o.to(B.dtype), c.to(B.dtype), B, 0.5,
                           stats=st, **kw)
    with pytest.raises(ValueError, match=r"^stats must be \(tile_max, tile_min\), in that order"):
        yk.masked_step(x, o, c, A, 0.5, stats=(tmin, tmax), **kw)
    # the same map as (B, H, W) and as its (B, 1, H, W) view is one A; a copy of the stats is searched, not refused
    flat = A[:, 0].clone()
    assert torch.equal(yk.masked_step(x, o, c, flat[:, None], 0.5, stats=yk.tile_stats(flat, 8), **kw), want)
    for view in (lambda a: a.detach(), lambda a: a.view_as(a), lambda a: a[:, 0], lambda a: a.squeeze(1)):
        # stats of a temporary view of A: the memory they describe is A's, still held (a weak reference to the
        # view's own tensor object refused them once it was gone)
        got = yk.masked_step(x, o, c, A, 0.5, stats=yk.tile_stats(view(A), 8), **kw)  # (not in an assert, whose
        assert torch.equal(got, want)  # rewriting keeps the view alive)
    assert torch.equal(yk.masked_step(x, o, c, A.squeeze(1), 0.5, stats=copy.deepcopy(stats), **kw), want)
    # once the A they were made of is freed, another A may take its memory (the CUDA caching allocator hands it
    # out at once), with the same pointer, shape and strides: refused (the address is made to match here)
    gone = A.clone()
    st_gone = yk.tile_stats(gone, 8)
    del gone
    gc.collect()
    st_gone._source = ops._source(A, 8)
    with pytest.raises(ValueError, match="^stats were made of another A"):
        yk.masked_step(x, o, c, A, 0.5, stats=st_gone, **kw)
    # two tensors over one buffer (torch.from_numpy twice; frombuffer, dlpack) each have a storage and a version
    # counter of their own: stats of the first, changed in place through it, matched the second by its address
    arr = np.zeros(tuple(A.shape), dtype=np.float32)
    first = torch.from_numpy(arr)
    st_first = yk.tile_stats(first, 8)
    first.fill_(1.0)
    with pytest.raises(ValueError, match="^stats were made of another A"):
        yk.masked_step(x, o, c, torch.from_numpy(arr), 0.5, stats=st_first, **kw)
    ops_ = yk.MaskedOps(c, stale, tile=8, backend=backend, seed=1)
    k = yk.step_coefficients(0.3, 0.45)
    ops_.step(x, o, 0.5, coefs=k, step=1)
    stale.add_(0.1)  # MaskedOps made its statistics once: a change after that is refused, not ignored
    with pytest.raises(ValueError, match="^stats were made of another A.*; make a new MaskedOps\\(c, A, ...\\) of it$"):
        ops_.step(x, o, 0.5, coefs=k, step=1)


def test_unknown_backend():
    x, o, c, A = _good()
    with pytest.raises(ValueError, match="backend must be one of"):
        yk.masked_step(x, o, c, A, 0.5, ab_t=0.3, ab_prev=0.45, backend="fortran")


# Numbers and shapes pinned in full: the C++ messages format them without iostreams (csrc/common.h, num / shape)
CPP_BAD = [
    ("model_out-shape", dict(model_out=lambda t: t[:, :, :8]),
     r"model_out must have the shape of x \[1, 3, 16, 20\], got \[1, 3, 8, 20\]"),
    ("c-dtype", dict(c=lambda t: t.half()), "c has dtype"),
    ("x-float64", dict(x=lambda t: t.double(), model_out=lambda t: t.double(), c=lambda t: t.double()),
     "x must be float32, float16 or bfloat16"),
    ("A-shape", dict(A=lambda t: t[:, :, :8]), r"A must be \(1, 1, 16, 20\) or \(1, 16, 20\), got \[1, 1, 8, 20\]"),
    ("tile_max-shape", dict(tile_max=lambda t: t[:, :, :1]),
     r"tile_max must have shape \(1, 1, 2\) = tile_stats\(A, 16\), got \[1, 1, 1\]"),
    ("tile_max-alone", dict(tile_min=lambda t: None), "both tile_max and tile_min"),
    ("tile_min-dtype", dict(tile_min=lambda t: t.double()), "tile_min must be float32"),
    ("noise-dtype", dict(noise=lambda t: t.half()), "noise has dtype"),
    ("tile-24", dict(tile=lambda t: 24), r"tile must be one of \(8, 16, 32\), got 24$"),
    ("coefs-3", dict(coefs=lambda t: [1.0, 2.0, 3.0]), "coefs must hold 10 floats, got 3$"),
    ("seed", dict(seed=lambda t: 2**32), r"seed must be in \[0, 2\*\*32 - 1\], got 4294967296$"),
    ("coefs-inf", dict(coefs=lambda t: [1.0, float("inf")] + [0.25] * 8),
     r"coefs must be finite, got \[1, inf, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25\]$"),
    # the schema's Scalar / Scalar[] (dynamic under torch.compile) also takes bools and complex numbers: refused
    ("tau-bool", dict(tau=lambda t: True), "tau must be real, got a bool$"),
    ("coefs-complex", dict(coefs=lambda t: [1.0] * 9 + [1j]), "coefs must be real, got a complex$"),
]


@pytest.mark.skipif("cpp" not in yk.available_backends("cpu"), reason="C++ extension not built")
@pytest.mark.parametrize("change, match", [pytest.param(c, m, id=n) for n, c, m in CPP_BAD])
def test_cpp_op_checks_name_the_argument(change, match):
    """The raw op (no Python validation in front) refuses bad input with a message naming the argument."""
    x, o, c, A = _good()
    tmax, tmin = naive.tile_stats(A, 16)
    args = dict(x=x, model_out=o, c=c, A=A, tile_max=tmax, tile_min=tmin, tau=0.5,
                coefs=yk.step_coefficients(0.3, 0.45), clip=False, seed=0, step=0, noise=torch.randn_like(x), tile=16)
    for k, f in change.items():
        args[k] = f(args[k])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.yoda.masked_step(*args.values())


# --------------------------------------------------------------------------------------------------------
# torch.library integration
# --------------------------------------------------------------------------------------------------------
def _opcheck_args():
    x, o, c, A = _good((2, 3, 19, 24))
    tmax, tmin = naive.tile_stats(A, 8)
    coefs = yk.step_coefficients(0.3, 0.45, prediction="v")
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return [
        pytest.param((x, o, c, A, tmax, tmin, 0.5, coefs, True, 1, 2, None, 8), id="A-stats-philox"),
        pytest.param((x, o, c, None, None, None, 0.0, coefs, False, 1, 2, torch.randn_like(x), 16), id="plain-noise"),
        pytest.param((cl(x), cl(o), cl(c), A[:, 0].half(), None, None, 0.3, coefs, False, 5, 6, None, 32),
                     id="channels_last-A3d-no-stats"),
    ]


@pytest.mark.parametrize("args", _opcheck_args())
def test_opcheck(args):
    torch.library.opcheck(torch.ops.yoda.masked_step.default, args)


def test_torch_compile_cpu():
    """A compiled function around the op (fake kernel for tracing, the registered CPU kernel at run time)
    equals eager."""
    x, o, c, A = _good((1, 3, 16, 24))
    tmax, tmin = naive.tile_stats(A, 8)
    coefs = yk.step_coefficients(0.3, 0.45)

    def step(x, o, c, A, tmax, tmin):
        y = torch.ops.yoda.masked_step(x, o, c, A, tmax, tmin, 0.5, coefs, False, 3, 4, None, 8)
        return y * 2.0 + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, o, c, A, tmax, tmin), step(x, o, c, A, tmax, tmin))


def test_the_ops_compile_whole_across_new_tau_coefs_and_sizes():
    """A compiled sampling loop passes new tau and coefs at every step, and sizes change: the recompile makes them
    dynamic, on which the scalar checks (struct's float32 round trip, math.isnan, max(shape, default=)) sent dynamo
    into a RecursionError or "Unsupported", and MaskedOps' look at A._version into a data-dependent guard, from the
    second call on. Every call equals eager, on the default backend, fullgraph included."""
    x, o, c, A = _good((2, 3, 8, 8))
    ops = yk.MaskedOps(c, A, seed=1)
    comb = [[0.9, 0.2, -0.1, 0.0, 0.05, 0.7, 0.3], [0.8, 0.3, -0.1, 0.0, 0.0, 0.6, 0.4]]
    calls = [
        (lambda x, k, t: yk.masked_step(x, o, c, A, t, coefs=k, seed=1),
         [(x, yk.step_coefficients(a, a + 0.1), t) for a, t in ((0.3, 0.5), (0.4, 0.6), (0.5, 0.7))]),
        (lambda x, k, t: yk.masked_combine(x, [o, x], c, A, t, coefs=k, seed=1),
         [(x, k, t) for k, t in zip(comb, (0.5, 0.6))]),
        (lambda x, k, t: ops.step(x, o, t, coefs=k),
         [(x, yk.step_coefficients(a, 0.5), t) for a, t in ((0.3, 0.5), (0.35, 0.55), (0.4, 0.6))]),
    ]
    for fn, args in calls:
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend="eager", fullgraph=True)
        for a in args:
            assert torch.equal(compiled(*a), fn(*a))
    sized = lambda x: yk.masked_step(x, x, x, x[:, :1].abs().clamp(max=1), 0.5, coefs=yk.step_coefficients(0.3, 0.4))
    torch._dynamo.reset()
    compiled = torch.compile(sized, backend="eager", fullgraph=True)
    for h in (8, 16, 24):
        y = _good((1, 3, h, 8))[0]
        assert torch.equal(compiled(y), sized(y))


@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_a_compiled_loop_recompiles_once_across_its_steps(backend):
    """A compiled sampling loop passes a new tau, new coefs and a new step each call: the ops' float tau, float[]
    coefs and int seed / step were specialised, so every step recompiled and the 9th stopped at dynamo's recompile
    limit (fullgraph: FailOnRecompileLimitHit). As Scalar / Scalar[] / SymInt they are dynamic after the first
    recompile: 10 steps of each op compile twice, and every call equals eager."""
    x, o, c, A = _good((1, 3, 12, 20))  # (not 16 x 16: dynamo keeps fake tensors of these, and a test that counts
    ops_ = yk.MaskedOps(c, A, seed=1, backend=backend)  # the maps alive at an HR of 16 x 16 found them)
    ab = torch.linspace(0.1, 0.9, 11).tolist()
    from torch._dynamo.utils import counters

    calls = (lambda x, t, k, i: yk.masked_step(x, o, c, A, t, coefs=k, seed=1, step=i, backend=backend),
             lambda x, t, k, i: ops_.step(x, o, t, coefs=k, step=i),
             lambda x, t, k, i: yk.masked_combine(x, [o, x], c, A, t, coefs=[k.cx, 0.5, 0.5, 0.0, k.sigma, k.la,
                                                                              k.lb], seed=1, step=i, backend=backend))
    try:
        for fn in calls:
            torch._dynamo.reset()
            counters.clear()
            compiled = torch.compile(fn, backend="eager", fullgraph=True)
            for i in range(10):
                args = (x, 0.5 + 0.01 * i, yk.step_coefficients(ab[i], ab[i + 1]), i + 1)
                assert torch.equal(compiled(*args), fn(*args)), i
            assert counters["stats"]["unique_graphs"] == 2
    finally:
        torch._dynamo.reset()


def test_the_reference_compiles_whole_for_every_step():
    """torch.compile of the reference itself, as the benchmarks compare against (fullgraph: nothing breaks the graph,
    across the recompiles of other coefficients and explicit noise): deciding in float32 whether a step draws noise
    with struct.pack sent dynamo into a RecursionError at the second step."""
    x, o, c, A = _good((1, 3, 16, 24))
    z = torch.randn_like(x)
    torch._dynamo.reset()
    compiled = torch.compile(naive.masked_step, backend="eager", fullgraph=True)
    for ab_prev, noise in ((1.0, None), (0.45, z), (0.45, None)):
        args = (x, o, c, A, None, None, 0.5, list(yk.step_coefficients(0.3, ab_prev)), False, 3, 4, noise, 8)
        assert torch.equal(compiled(*args), naive.masked_step(*args))


def test_fallback_warns_once_without_extension():
    """With yoda_kernels._C unimportable, importing yoda_kernels warns once, the reference serves the ops
    and asking for the C++ backend says why it is missing."""
    code = textwrap.dedent(
        """
        import importlib.abc, sys, warnings
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "yoda_kernels._C":
                    raise ImportError("hidden by the test")
        sys.meta_path.insert(0, Hide())
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import yoda_kernels, yoda_kernels.ops
            import torch
            x = torch.ones(1, 1, 8, 8)
            y = yoda_kernels.masked_step(x, x, x, None, ab_t=0.5, ab_prev=1.0)
            y = yoda_kernels.masked_step(x, x, x, None, ab_t=0.5, ab_prev=1.0)
        msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
        assert len(msgs) == 1 and "compiled extension is not used" in msgs[0], msgs
        assert "cpp" not in yoda_kernels.available_backends("cpu")
        assert yoda_kernels.active_backends("cpu") == {op: "naive" for op in yoda_kernels.ops.OPS}
        assert all(not k for k in yoda_kernels.ops.DEVICE_KERNELS.values())
        try:
            yoda_kernels.masked_step(x, x, x, None, ab_t=0.5, ab_prev=1.0, backend="cpp")
        except RuntimeError as e:
            assert "hidden by the test" in str(e), e
        else:
            raise AssertionError("backend='cpp' did not raise")
        print("OK", float(y.mean()))
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    # x = 1, eps = 1, ab_t = 0.5, last step: x0 = (1 - sqrt(.5)) / sqrt(.5) = sqrt(2) - 1
    assert r.stdout.startswith("OK") and abs(float(r.stdout.split()[1]) - (math.sqrt(2) - 1)) < 1e-6


def test_missing_backends_fail_the_test_session():
    """tests/conftest.py: without yoda_kernels._C and triton, pytest refuses to start (exit code 4, one line that
    names both and the opt-out), instead of running a suite whose backend cases were never collected; with
    YODA_ALLOW_MISSING_BACKENDS=1 it runs."""
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        import torch  # first: a CUDA build of torch looks for triton as it is imported (find_spec)
        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "yoda_kernels._C" or name.split(".")[0] == "triton":
                    raise ImportError("hidden by the test")
        sys.meta_path.insert(0, Hide())
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--co", "tests/test_masks.py"]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "YODA_ALLOW_MISSING_BACKENDS"}
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr + r.stdout
    assert "yoda_kernels._C (ImportError: hidden by the test)" in err and "triton (ImportError: hidden" in err
    assert "YODA_ALLOW_MISSING_BACKENDS=1" in err
    env["YODA_ALLOW_MISSING_BACKENDS"] = "1"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "tests collected" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_stats_of_wrong_dtype_are_rejected():
    x = torch.zeros(1, 3, 16, 16)
    A = torch.rand(1, 1, 16, 16)
    tmax, tmin = yk.tile_stats(A, 16)
    with pytest.raises(ValueError, match="stats must be float32"):
        yk.masked_step(x, x, x, A, 0.5, ab_t=0.5, ab_prev=0.6, stats=(tmax.double(), tmin.double()))


def test_a_stale_build_is_not_loaded(tmp_path):
    """An editable install keeps its compiled _C across a `git pull` that changes csrc/: a build of the noise
    stream version 1 ran silently against version 2 sources (images off by up to 80 levels). The build carries
    the fingerprint of its sources; one that does not match csrc/ beside the package is not imported."""
    from pathlib import Path

    from yoda_kernels._source_hash import source_hash, stale_build

    csrc = tmp_path / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "a.h").write_text("int a;")
    (csrc / "cpu" / "b.cpp").write_text("int b;")
    (csrc / "notes.txt").write_text("not a source")
    lib = tmp_path / "_C.so"
    lib.write_bytes(b"\0ELF..." + f"yoda-source-hash:0x{source_hash(csrc)}ULL".encode() + b"\0...")
    assert stale_build(str(lib), csrc) is None
    assert stale_build(str(lib), tmp_path / "absent") is None  # a wheel: no sources beside it, not checked
    (csrc / "notes.txt").write_text("changed")  # not a source: same fingerprint
    assert stale_build(str(lib), csrc) is None
    (csrc / "cpu" / "b.cpp").write_text("int b = 1;")
    assert "compiled from other sources" in stale_build(str(lib), csrc)
    lib.write_bytes(b"\0ELF without a marker")
    assert "carries no source fingerprint" in stale_build(str(lib), csrc)
    # the build in this tree matches its sources, and a mismatch falls back to the reference, with one warning
    assert yk.extension_error is None
    assert _C_tag() == f"0x{source_hash(Path(yk.__file__).parent.parent / 'csrc')}ULL"
    code = textwrap.dedent(
        """
        import importlib.util, sys, warnings
        spec = importlib.util.spec_from_file_location("yoda_kernels._source_hash", "yoda_kernels/_source_hash.py")
        sh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sh)
        sh.source_hash = lambda csrc: "0" * 16  # csrc/ "changed" since the build
        sys.modules["yoda_kernels._source_hash"] = sh
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import yoda_kernels
        msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
        assert len(msgs) == 1 and "compiled from other sources" in msgs[0] and "rebuild" in msgs[0], msgs
        assert yoda_kernels.active_backends("cpu") == {op: "naive" for op in yoda_kernels.ops.OPS}
        assert "yoda_kernels._C" not in sys.modules
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_missing_extension_says_how_to_get_it_where_it_is(tmp_path):
    """Without yoda_kernels._C the warning told everyone to run `pip install --no-build-isolation -e .` in a clone:
    a source tree imported from its own folder (which hides an installed yoda-sr) is told so; an installed package
    is told to reinstall."""
    import shutil

    def warning_of(root, editable=False, **env):
        shutil.copytree(Path(ROOT) / "yoda_kernels", root / "yoda_kernels",
                        ignore=shutil.ignore_patterns("_C*", "__pycache__"))
        code = ("import sys, warnings\n"  # not this checkout's editable install: the copy, as it is
                + ("" if editable else
                   "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n")
                + "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')"
                "\n    import yoda_kernels\nprint([str(m.message) for m in w if m.category is RuntimeWarning])")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                           env={**{k: v for k, v in os.environ.items() if k != "YODA_NO_EXTENSION"},
                                "PYTHONPATH": str(root), **env})
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    tree = tmp_path / "clone"
    (tree / "csrc").mkdir(parents=True)
    (tree / "csrc" / "yoda.cpp").write_text("")
    (tree / "setup.py").write_text("")
    out = warning_of(tree)
    assert f"yoda_kernels is imported from the source tree {tree}, which has no built extension: build it there " \
           "(`pip install -e .`); Python started in a clone imports it before an installed yoda-sr" in out, out
    # with this checkout's editable install on the path, its finder handed the copy this checkout's _C, without a
    # word (a sanitizer copy not yet built ran the plain library, and its tests passed): refused, and said
    clone2 = tmp_path / "clone2"
    shutil.copytree(tree, clone2, ignore=shutil.ignore_patterns("yoda_kernels"))
    if any("__editable__" in getattr(f, "__module__", "") for f in sys.meta_path):  # (pip install -e .)
        out = warning_of(clone2, editable=True)
        assert f"yoda_kernels is imported from the source tree {clone2}, which has no built extension (the one " \
               f"found, " in out and "is another tree's, through its editable install)" in out, out
    out = warning_of(tmp_path / "site-packages")
    # (by name, `pip install ... yoda-sr` asked an index, where no yoda-sr is: the source it came from)
    assert "no compiled extension (installed with YODA_NO_EXTENSION=1, or its build did not run); reinstall it from " \
           "the source you installed it from (its sdist or wheel file, or a clone: `pip install --force-reinstall " \
           "--no-deps --no-cache-dir SOURCE`)" in out, out
    assert warning_of(tmp_path / "opted-out", YODA_NO_EXTENSION="1").strip() == "[]"  # asked for: no warning


def _C_tag() -> str:
    from yoda_kernels import _C

    return _C.source_hash


@pytest.mark.skipif("triton" not in yk.available_backends("cpu"), reason="triton not installed")
def test_triton_takes_views_whose_rows_span_2_to_the_31_elements():
    """Triton addresses a strip from a 64-bit base plus 32-bit offsets: a view with a column stride of 2**29 (W
    outermost of a 4 GiB buffer; only a few pages of it are touched) wrapped to a negative offset and read out of
    bounds (a segfault under the interpreter, an illegal address or wrong data on a GPU). Such views are copied
    dense first; C++ and CUDA index in 64 bits."""
    from yoda_kernels.triton.launch import narrow_offsets

    S, H, W = 2**29, 4, 5
    store = torch.empty(4 * S + H, dtype=torch.float16)
    x = store.as_strided((1, 1, H, W), (0, 0, 1, S))  # also the map: 0 .. 0.59, tau 0.3
    dense = torch.arange(H * W, dtype=torch.float16).view(1, 1, H, W) / 32
    x.copy_(dense)
    o, c = torch.zeros_like(dense), torch.full_like(dense, -1.0)
    coefs = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # active: x; inactive: c
    want = yk.masked_step(dense, o, c, dense, 0.3, coefs=coefs, backend="naive")
    assert torch.equal(yk.masked_step(x, o, c, x, 0.3, coefs=coefs, backend="triton"), want)
    assert torch.equal(yk.tile_stats(x, 8, backend="triton")[0], dense.float().amax().view(1, 1, 1))
    assert narrow_offsets(x, 16) is not x and narrow_offsets(dense, 16) is dense and narrow_offsets(None, 16) is None


def test_triton_refuses_blocks_whose_dense_rows_span_2_to_the_31_elements(monkeypatch):
    """Where even a dense copy's block of rows spans 2**31 elements (rows of 2**27 pixels and more; a channels-last
    output's rows of that many elements), Triton's 32-bit offsets wrapped and wrote out of bounds, without a word:
    now a ValueError naming the tensor. A view copied dense kept the copy's layout in the output (contiguous where
    the reference returns channels-last). Shown with the limit lowered to 200 elements (a block of 8 rows of 16
    pixels spans 127; in channels-last with 3 channels, 381)."""
    from yoda_kernels.triton import launch

    monkeypatch.setattr(launch, "OFFSET_LIMIT", 200)
    g = torch.Generator().manual_seed(0)
    x, o, c = (torch.randn(1, 3, 16, 16, generator=g) for _ in range(3))
    A = torch.rand(1, 1, 16, 16, generator=g)
    k = yk.step_coefficients(0.3, 0.45)
    want = yk.masked_step(x, o, c, A, 0.5, coefs=k, tile=8, seed=1, backend="naive")
    # H outermost (a block of 8 rows spans 7 * 48 + 15 = 351 elements): copied dense, the output contiguous
    view = x.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)
    got = yk.masked_step(view, o, c, A, 0.5, coefs=k, tile=8, seed=1, backend="triton")
    assert torch.equal(got, want) and got.is_contiguous()
    # channels-last: the inputs could be copied, the output (channels-last, as the reference's) cannot
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, o, c)]
    with pytest.raises(ValueError, match=r"^out of shape \(1, 3, 16, 16\): a block of 8 rows spans 381 elements, more "
                                         r"than the Triton kernels' 32-bit offsets take \(2\*\*31\); use "
                                         r"backend='cuda'"):
        yk.masked_step(*cl, A, 0.5, coefs=k, tile=8, seed=1, backend="triton")
    # rows too wide even dense: refused, naming the tensor (a block of 8 rows of 32 pixels spans 255)
    wide = torch.zeros(1, 1, 8, 32)
    for op in (lambda: yk.masked_step(wide, wide, wide, None, 0.5, coefs=k, tile=8, backend="triton"),
               lambda: yk.masked_q_sample(wide, wide, wide, None, 0.5, 0.5, backend="triton"),
               lambda: yk.masked_combine(wide, [wide], wide, None, 0.5, coefs=yk.CombineCoefs(0.5, 0.5, 0, 0, 0.5, 0.5, 0.5), tile=8,
                                         backend="triton")):
        with pytest.raises(ValueError, match=r"^x0? of shape \(1, 1, 8, 32\): a block of (8|16) rows spans"):
            op()


# ---- found by a review of the ops as their direct users (twenty-second session) ----
def test_every_backend_rounds_the_coefficients_to_float32_first():
    """The reference and Triton decided whether a step draws noise on float64 coefficients, C++ on float32 ones: a
    sigma of 1e-300 (0 in float32) took an explicit noise of NaN / Inf in two backends and not in the third
    ([nan, nan, 1, 1] against [1, 1, 1, 1]); a coefficient of 1e300 (Inf in float32) made every output Inf."""
    x = torch.ones(1, 1, 1, 4)
    noise = torch.tensor([[[[math.nan, math.inf, 1.0, 2.0]]]])
    coefs = yk.StepCoefs(k1=1, k2=0, e1=0, e2=0, cx0=1, cx=0, ceps=0, sigma=1e-300, la=0, lb=0)
    for backend in yk.available_backends("cpu"):
        out = yk.masked_step(x, x, x, None, coefs=coefs, noise=noise, backend=backend)
        assert torch.equal(out, torch.ones(1, 1, 1, 4)), backend
        with pytest.raises(ValueError, match=r"^coefs must be 10 finite floats \(in float32's range: the kernels "
                                             r"compute in float32\), got \[1e\+300, 0"):
            yk.masked_step(x, x, x, None, coefs=[1e300] + [0.0] * 9, backend=backend)
        with pytest.raises(ValueError, match=r"^coefs must be 10 finite floats .*, got \[1, 0, 0, 0, 'a'"):
            yk.masked_step(x, x, x, None, coefs=[1, 0, 0, 0, "a"] + [0.0] * 5, backend=backend)


def test_every_backend_compares_A_with_float32_tau():
    """A subnormal tau: Triton (the interpreter) compared A >= tau in float64 (16 of 64 pixels active where the
    reference and C++ made 48); tau is rounded to float32 for every backend, as the contract says."""
    k = yk.step_coefficients(0.3, 0.45)
    x, o, c = (torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    A = torch.zeros(1, 1, 8, 8)
    A.view(-1)[:32], A.view(-1)[32:48], A.view(-1)[48:] = 1e-45, 3e-45, -1e-45  # 1, 2, -1 ulps of 2 ** -149
    plain = yk.masked_step(x, o, c, None, 0.0, coefs=k, tile=8, seed=1, backend="naive")
    for tau, active in ((2e-45, 48), (-1e-45, 64), (3e-45, 16)):  # float32: 1, -1 and 2 ulps
        for backend in yk.available_backends("cpu"):
            out = yk.masked_step(x, o, c, A, tau, coefs=k, tile=8, seed=1, backend=backend)
            assert int((out == plain).sum()) == active, (tau, backend)
    from yoda_kernels.checks import check_call

    for tau, f32 in ((3.4e38, 3.3999999521443642e38), (1e39, math.inf), (-1e39, -math.inf), (0.1, 0.10000000149011612)):
        assert check_call(x, A, tau, list(k), 10, 0, 0, None)[0] == f32  # (3.4e38 was left unrounded)
    # tile_stats and active_tiles refuse what the ops refuse: a gradient the kernel drops, a NaN threshold
    with pytest.raises(RuntimeError, match="tile_stats is not differentiable on the 'cpp' backend"):
        yk.tile_stats(A.clone().requires_grad_(True), 8, backend="cpp")
    tmax, _ = yk.tile_stats(A, 8)
    with pytest.raises(ValueError, match="tau must not be NaN"):
        yk.active_tiles(tmax, float("nan"))
    assert torch.equal(yk.active_tiles(tmax, torch.tensor(0.5)), yk.active_tiles(tmax, 0.5))  # as the ops take it
    with pytest.raises(TypeError, match="tau must be a float, got True"):
        yk.active_tiles(tmax, True)
    with pytest.raises(TypeError, match=r"^tile_max must be a tensor: pass the tile_max of tile_stats\(A, tile\), not "
                                        r"the pair$"):  # (it was "'>=' not supported between ... 'TileStats'")
        yk.active_tiles(yk.tile_stats(A, 8), 0.5)
    with pytest.raises(RuntimeError, match=r"tau is not differentiable \(a threshold\)"):
        yk.masked_q_sample(x, c, o, A, torch.tensor([0.5], requires_grad=True), 0.5, backend="naive")
    # an A that wants a gradient is refused by the op the caller called, not by tile_stats within it
    with pytest.raises(RuntimeError, match="masked_step is not differentiable on the 'cpp' backend"):
        yk.masked_step(x, o, c, A.clone().requires_grad_(True), 0.5, coefs=k, backend="cpp")
    with pytest.raises(RuntimeError, match=r"tau is not differentiable \(a threshold\)"):
        yk.masked_step(x, o, c, A, torch.tensor(0.5, requires_grad=True), coefs=k, backend="cpp")
    with pytest.raises(TypeError, match=r"ab must be a float or a \(1,\) tensor, got a bool"):
        yk.masked_q_sample(x, c, o, A, 0.5, True)
    with pytest.raises(TypeError, match=r"tau must be a float or a \(1,\) tensor, got a bool"):
        yk.masked_q_sample(x, c, o, A, torch.tensor([True]), 0.5)


def test_schedule_arguments_beside_coefs_are_refused():
    """masked_step(coefs=k, prediction="x0") took the eps coefficients of k without a word."""
    x = torch.rand(1, 3, 4, 4)
    k = yk.step_coefficients(0.3, 0.45)
    with pytest.raises(ValueError, match=r"^give coefs or \(ab_t, ab_prev, prediction, sampler, eta\), not both: "
                                         r"coefs already fix the update \(got prediction, eta too\)$"):
        yk.masked_step(x, x, x, coefs=k, prediction="x0", eta=0.0)
    by_schedule = yk.masked_step(x, x, x, ab_t=0.3, ab_prev=0.45, seed=1)  # the defaults: eps, ddpm, eta 0
    assert torch.equal(by_schedule, yk.masked_step(x, x, x, coefs=k, seed=1))
    for bad in (dict(prediction=""), dict(sampler="")):  # not taken for the defaults
        with pytest.raises(ValueError, match="must be one of"):
            yk.masked_step(x, x, x, ab_t=0.3, ab_prev=0.45, **bad)


def test_meta_tensors_and_named_stats_errors():
    """On the meta device the public functions failed in their NaN checks ("Tensor.item() cannot be called on meta
    tensors"; Triton: "Cannot copy out of meta tensor") where the op itself gives the shape; stats=A said "not
    enough values to unpack"."""
    x, A = torch.empty(1, 3, 8, 8, device="meta"), torch.empty(1, 1, 8, 8, device="meta")
    k = yk.step_coefficients(0.3, 0.45)
    for backend in yk.available_backends("meta"):  # the reference and Triton (their fakes)
        out = yk.masked_step(x, x, x, A, 0.5, coefs=k, backend=backend)
        assert out.device.type == "meta" and out.shape == x.shape, backend
    stats = yk.tile_stats(A, 8)
    assert stats.tile_max.device.type == "meta" and stats.tile_max.shape == (1, 1, 1)
    xs, As = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    for bad in (As, (*yk.tile_stats(As, 16), As)):
        with pytest.raises(ValueError, match=r"^stats must be two tensors of shape \(1, 1, 1\) "
                                             r"\(tile_stats\(A, 16\)\), got (Tensor|tuple)$"):
            yk.masked_step(xs, xs, xs, As, 0.5, coefs=k, stats=bad)


def test_the_ops_compile_whole():
    """torch.compile(fullgraph=True) failed at the NaN checks' data-dependent branch ("Unsupported"); they are
    skipped while compiling, and the compiled graph gives eager's bits."""
    x, A = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    k = yk.step_coefficients(0.3, 0.45)

    def step(x, A):
        return yk.masked_step(x, x, x, A, 0.5, coefs=k, seed=3, step=1, tile=8, backend="naive")

    torch._dynamo.reset()
    try:
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(x, A)
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, step(x, A))
