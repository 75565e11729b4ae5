"""masked_combine (the solvers' fused update, contract.CombineCoefs): every backend against the naive reference
over the dtype x shape x layout grid (yoda_kernels.testing) with 1, 2 and 3 denoised estimates, the reference
itself against float64, the noise (masked_step's stream; skipped when sigma == lb == 0; an explicit tensor when
given), the reads a tile class must not do, bad inputs, opcheck and torch.compile."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import naive, ops, philox
from yoda_kernels import testing as T
from yoda_kernels.contract import CombineCoefs

# Coefficient sets of the three kinds of solver step (values of the size DPM++ 2M / 3M SDE and Euler produce,
# none of them exact in float32, so the float32 rounding of each coefficient is exercised):
COEFS = {
    "sde": CombineCoefs(cx=0.6130456789, cd0=0.5234567891, cd1=-0.1876543219, cd2=0.0412345679,
                        sigma=0.2712345678, la=0.8312345671, lb=0.5587654321),
    "ode": CombineCoefs(cx=0.7712345671, cd0=0.2287654329, cd1=0.1123456781, cd2=-0.0523456789,
                        sigma=0.0, la=0.9012345671, lb=0.4333333337),  # noise drawn for the LR branch only
    "last": CombineCoefs(cx=0.0, cd0=1.3456789012, cd1=-0.4567890123, cd2=0.1111111119,
                         sigma=0.0, la=1.0, lb=0.0),  # sigma == lb == 0: no noise drawn
}


def coefs_for(kind: str, nd: int) -> list[float]:
    """The set ``kind`` with the weights of absent estimates set to 0 (the public entry point requires it)."""
    k = COEFS[kind]._asdict()
    for j in range(nd, 3):
        k[f"cd{j}"] = 0.0
    return list(CombineCoefs(**k))


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    nd: int  # number of denoised estimates
    attention: str = "blob"  # "none" | "blob" | "random" | "blob3d_bf16" (A (B, H, W) in bfloat16)
    fraction: float = 0.5
    coefs: str = "sde"
    explicit_noise: bool = False
    tile: int = 16


SCENARIOS = [
    Scenario("plain-nd1-sde", 1, attention="none"),
    Scenario("blob-nd2-sde-t8", 2, tile=8),
    Scenario("random-nd3-sde-noise-t32", 3, attention="random", explicit_noise=True, tile=32),
    Scenario("blob3d-bf16A-nd3-ode", 3, attention="blob3d_bf16", coefs="ode", fraction=0.3),
    Scenario("blob-nd2-last", 2, coefs="last", fraction=0.8),
    Scenario("blob-nd1-ode-noise", 1, coefs="ode", explicit_noise=True, fraction=0.2),
]
GRID_SCENARIOS = {"blob-nd2-sde-t8", "random-nd3-sde-noise-t32"}
TRITON_SCENARIOS = {"plain-nd1-sde", "blob-nd2-sde-t8", "random-nd3-sde-noise-t32"}


def _params():
    return T.scenario_params(SCENARIOS, GRID_SCENARIOS, TRITON_SCENARIOS)


def _inputs(case: T.Case, sc: Scenario, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = T.randn(case, g)
    ds = [T.randn(case, g, scale=0.8) for _ in range(sc.nd)]
    c = T.randn(case, g, scale=0.5)
    A, tau = T.scenario_attention(case, sc.attention, sc.fraction, sc.tile, g)
    noise = T.randn(case, g) if sc.explicit_noise else None
    return x, ds, c, A, tau, noise


# --------------------------------------------------------------------------------------------------------
# Float64 oracle (the contract's equation with float64 coefficients) and its rounding scale
# --------------------------------------------------------------------------------------------------------
def _blend(A, tau, sr, lr):
    if A is None:
        return sr
    Af = A.detach().to("cpu", torch.float32)
    Af = Af.unsqueeze(1) if Af.dim() == 3 else Af
    return torch.where(Af >= torch.tensor(tau, dtype=torch.float32), sr, lr)


def combine_f64(x, ds, c, A, tau, coefs, z, absolute=False):
    """sr = cx x + sum_j cdj dj + sigma z where A >= tau, la c + lb z elsewhere, in float64; absolute=True:
    every term by its magnitude (what float32 roundings scale with)."""
    f = (lambda t: t.detach().to("cpu", torch.float64).abs()) if absolute else (
        lambda t: t.detach().to("cpu", torch.float64))
    k = [abs(float(v)) if absolute else float(v) for v in coefs]
    sr = k[0] * f(x) + k[4] * f(z)
    for j, d in enumerate(ds):
        sr = sr + k[1 + j] * f(d)
    return _blend(A, tau, sr, k[5] * f(c) + k[6] * f(z))


@pytest.mark.parametrize("case, backend, sc", _params())
def test_matches_reference(case, backend, sc):
    x, ds, c, A, tau, noise = _inputs(case, sc)
    coefs = coefs_for(sc.coefs, sc.nd)
    kw = dict(coefs=coefs, seed=123, step=45, noise=noise, tile=sc.tile)
    got = yk.masked_combine(x, ds, c, A, tau, backend=backend, **kw)
    ref = yk.masked_combine(x, ds, c, A, tau, backend="naive", **kw)
    z = noise.float() if noise is not None else T.reference_noise(case.shape, 123, 45, coefs)
    ref64 = combine_f64(x, ds, c, A, tau, coefs, z)
    scale = combine_f64(x, ds, c, A, tau, coefs, z, absolute=True)
    T.assert_within_reference_error(got, ref, ref64, scale=scale, what=backend)  # the same noise bits everywhere
    assert got.device == x.device and got.stride() == ref.stride()
    if backend == "cpp" and (noise is not None or not yk.needs_noise(coefs)):
        # same float32 operation order and same noise: the C++ kernel is the reference bit for bit
        assert torch.equal(got, ref)


@pytest.mark.parametrize("dtype", T.DTYPES, ids=T.DTYPE_IDS.get)
@pytest.mark.parametrize("nd", (1, 2, 3))
@pytest.mark.parametrize("kind", sorted(COEFS))
def test_reference_within_ulps_of_float64(kind, nd, dtype):
    """The reference holds itself to a few float32 ulps of the float64 equation at every element (the bound the
    backends are then measured in), with all three tile classes and planted ties; and it is not loose: dropping
    the last estimate's term, or comparing A > tau, puts it far outside."""
    case = T.Case("cpu", dtype, (2, 3, 33, 65), "channels_last")
    sc = Scenario("f64", nd, attention="blob", coefs=kind, explicit_noise=True)
    x, ds, c, A, tau, noise = _inputs(case, sc, seed=nd)
    coefs = coefs_for(kind, nd)
    out = naive.masked_combine(x, *(ds + [None] * (3 - nd)), c, A, None, None, tau, coefs, 1, 2, noise, 16)
    z = noise.float() if yk.needs_noise(coefs) else torch.zeros(case.shape)
    ref64 = combine_f64(x, ds, c, A, tau, coefs, z)
    scale = combine_f64(x, ds, c, A, tau, coefs, z, absolute=True)
    T.assert_reference_within_ulps(out, ref64, scale)
    with pytest.raises(AssertionError, match="further from float64"):
        T.assert_reference_within_ulps(out, combine_f64(x, ds[:-1], c, A, tau, coefs, z), scale)
    strict = torch.where(A > tau, 1.0, 0.0)  # A > tau: the planted ties take the other branch
    with pytest.raises(AssertionError, match="further from float64"):
        T.assert_reference_within_ulps(out, combine_f64(x, ds, c, strict, 0.5, coefs, z), scale)


# --------------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_noise_is_masked_steps_stream(backend):
    """With cx = cd0 = 0 and sigma = 1 the update is z itself: the same Philox stream and counters as
    masked_step's (its init coefficients give x_T = z) and the PyTorch reference's, bit for bit."""
    shape = (2, 3, 13, 21)  # H not a multiple of 4: a ragged last Philox group
    g = torch.Generator().manual_seed(6)
    x, d, c = (torch.randn(shape, generator=g) for _ in range(3))
    pure = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    z = yk.masked_combine(x, [d], c, None, coefs=pure, seed=2**32 - 1, step=77, backend=backend)
    z_step = yk.masked_step(x, x, c, None, coefs=yk.init_coefficients(0.5), seed=2**32 - 1, step=77,
                            backend=backend)
    assert torch.equal(z, z_step)
    assert torch.equal(z, philox.noise(2**32 - 1, 77, shape))
    other = yk.masked_combine(x, [d], c, None, coefs=pure, seed=2**32 - 1, step=78, backend=backend)
    assert not torch.allclose(other, z)  # the step indexes the stream


@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_explicit_noise_replaces_philox(backend):
    shape = (1, 2, 12, 20)
    g = torch.Generator().manual_seed(7)
    x, d, c, z = (torch.randn(shape, generator=g) for _ in range(4))
    A = T.blob_attention(1, 12, 20)
    coefs = coefs_for("sde", 1)
    got = yk.masked_combine(x, [d], c, A, 0.5, coefs=coefs, noise=z, backend=backend)
    T.assert_within_reference_error(got, naive.masked_combine(x, d, None, None, c, A, None, None, 0.5, coefs, 0, 0,
                                                              z, 8),
                                    combine_f64(x, [d], c, A, 0.5, coefs, z),
                                    scale=combine_f64(x, [d], c, A, 0.5, coefs, z, absolute=True), what=backend)
    assert not torch.allclose(got, yk.masked_combine(x, [d], c, A, 0.5, coefs=coefs, backend=backend))


@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_noiseless_update_ignores_an_explicit_noise_tensor(backend):
    """sigma == lb == 0 (the last step): no noise is drawn or read on any backend, the reference included."""
    shape = (1, 2, 12, 20)
    g = torch.Generator().manual_seed(5)
    x, d0, d1, c = (torch.randn(shape, generator=g) for _ in range(4))
    A = T.blob_attention(1, 12, 20)
    coefs = coefs_for("last", 2)
    assert not yk.needs_noise(coefs)
    op = ops._impl("masked_combine", backend)
    args = (x, d0, d1, None, c, A, *naive.tile_stats(A, 8), 0.5, coefs, 1, 2)
    nan = torch.full(shape, float("nan"))
    with_nan = op(*args, nan, 8)
    assert not torch.isnan(with_nan).any() and torch.equal(with_nan, op(*args, None, 8))
    want = combine_f64(x, [d0, d1], c, A, 0.5, coefs, torch.zeros(shape))
    torch.testing.assert_close(with_nan.double(), want, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Thresholds and the reads a tile class must not do
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", yk.available_backends("cpu"))
def test_tau_extremes(backend):
    """tau <= 0: every pixel takes the solver branch, bit for bit A=None; tau > max(A): every pixel takes
    la c + lb z, and x / the estimates are not needed (NaN there must not leak)."""
    shape = (1, 3, 20, 24)
    g = torch.Generator().manual_seed(8)
    x, d0, d1, d2, c, z = (torch.randn(shape, generator=g) for _ in range(6))
    A = T.blob_attention(1, 20, 24)
    kw = dict(coefs=coefs_for("sde", 3), noise=z, tile=8, backend=backend)
    plain = yk.masked_combine(x, [d0, d1, d2], c, None, **kw)
    for tau in (0.0, -0.5):
        assert torch.equal(yk.masked_combine(x, [d0, d1, d2], c, A, tau, **kw), plain)
    nan = torch.full(shape, float("nan"))
    lr = yk.masked_combine(nan, [nan, nan, nan], c, A, 1.5, **kw)
    k = COEFS["sde"]
    torch.testing.assert_close(lr.double(), k.la * c.double() + k.lb * z.double(), rtol=0, atol=2e-6)


FUSED = [b for b in yk.available_backends("cpu") if b in ("cpp", "triton")]


@pytest.mark.parametrize("backend", FUSED)
def test_tile_classes_skip_reads(backend):
    """NaN planted where a tile class must not read: x and the estimates in inactive tiles, A and c in full
    tiles. The result must equal the clean run."""
    B, C, H, W, tile = 1, 2, 37, 53, 8
    g = torch.Generator().manual_seed(3)
    x, d0, d1, d2, c = (torch.randn(B, C, H, W, generator=g) for _ in range(5))
    A = T.blob_attention(B, H, W)
    tau = T.tau_for_fraction(A, 0.4)
    tmax, tmin = naive.tile_stats(A, tile)
    coefs = coefs_for("sde", 3)
    op = ops._impl("masked_combine", backend)
    clean = op(x, d0, d1, d2, c, A, tmax, tmin, tau, coefs, 1, 2, None, tile)
    up = lambda m: m.repeat_interleave(tile, 1).repeat_interleave(tile, 2)[:, :H, :W].unsqueeze(1)  # noqa: E731
    inactive, full = up(tmax < tau), up(tmin >= tau)
    assert inactive.any() and full.any() and not (inactive | full).all()  # all three classes present
    xn, d0n, d1n, d2n = (t.masked_fill(inactive, float("nan")) for t in (x, d0, d1, d2))
    cn, An = c.masked_fill(full, float("nan")), A.masked_fill(full, float("nan"))
    dirty = op(xn, d0n, d1n, d2n, cn, An, tmax, tmin, tau, coefs, 1, 2, None, tile)
    assert torch.equal(dirty, clean)


# --------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------
def _good(shape=(1, 3, 16, 20)):
    g = torch.Generator().manual_seed(4)
    x, d0, d1, c = (torch.randn(shape, generator=g) for _ in range(4))
    return x, [d0, d1], c, torch.rand(shape[0], 1, *shape[2:], generator=g)


def _with(i, v):
    return lambda ds: [v(d) if j == i else d for j, d in enumerate(ds)]


BAD = [
    ("coefs-6", dict(coefs=[0.5] * 6), ValueError, "coefs must be 7"),
    ("coefs-10", dict(coefs=[0.5] * 10), ValueError, "coefs must be 7"),
    ("coefs-nan", dict(coefs=[math.nan] + [0.0] * 6), ValueError, "coefs must be 7 finite"),
    ("cd2-without-d2", dict(coefs=[0.5, 0.3, 0.2, 0.1, 0.0, 1.0, 0.0]), ValueError, r"cd2 = 0.1 .*denoised\[2\]"),
    ("cd1-without-d1", dict(denoised=lambda ds: ds[:1]), ValueError, r"cd1 = 0.2 .*denoised\[1\]"),
    ("denoised-empty", dict(denoised=lambda ds: []), ValueError, "denoised must be a list of 1 to 3"),
    ("denoised-4", dict(denoised=lambda ds: ds * 2), ValueError, "denoised must be a list of 1 to 3"),
    ("denoised-tensor", dict(denoised=lambda ds: ds[0]), ValueError, "denoised must be a list"),
    ("d1-shape", dict(denoised=_with(1, lambda d: d[:, :2])), ValueError, r"denoised\[1\] must have the shape"),
    ("d0-dtype", dict(denoised=_with(0, lambda d: d.half())), TypeError, r"denoised\[0\] has dtype"),
    ("d1-device", dict(denoised=_with(1, lambda d: d.to("meta"))), ValueError, r"denoised\[1\] is on meta"),
    ("d0-3d", dict(denoised=_with(0, lambda d: d[0])), ValueError, r"denoised\[0\] must be 4-D"),
    ("c-dtype", dict(c=lambda c: c.double()), TypeError, "c must be float32"),
    ("c-device", dict(c=lambda c: c.to("meta")), ValueError, "c is on meta"),
    ("A-shape", dict(A=lambda A: A[..., :-1]), ValueError, "A must be"),
    ("A-device", dict(A=lambda A: A.to("meta")), ValueError, "A is on meta"),
    ("noise-shape", dict(noise=lambda x: x[:, :1]), ValueError, "noise must have the shape"),
    ("noise-dtype", dict(noise=lambda x: x.half()), TypeError, "noise has dtype"),
    ("tile-12", dict(tile=12), ValueError, "tile must be one of"),
    ("seed-negative", dict(seed=-1), ValueError, "seed"),
    ("tau-nan", dict(tau=float("nan")), ValueError, "tau"),
]


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
@pytest.mark.parametrize("change, exc, match", [pytest.param(c, e, m, id=n) for n, c, e, m in BAD])
def test_bad_input_names_the_argument(backend, change, exc, match):
    x, ds, c, A = _good()
    kw = dict(x=x, denoised=ds, c=c, A=A, tau=0.5, coefs=[0.5, 0.3, 0.2, 0.0, 0.1, 0.9, 0.4], backend=backend)
    for key, v in change.items():
        src = x if key == "noise" else kw.get(key)
        kw[key] = v(src) if callable(v) else v
    with pytest.raises(exc, match=match):
        yk.masked_combine(**kw)


CPP_BAD = [
    ("d0-shape", dict(d0=lambda t: t[:, :, :8]), "d0 must have the shape of x"),
    ("d1-dtype", dict(d1=lambda t: t.half()), "d1 has dtype"),
    ("d2-shape", dict(d2=lambda t: t[:, :1]), "d2 must have the shape of x"),
    ("d2-without-d1", dict(d1=lambda t: None), "d2 is given without d1"),
    ("c-dtype", dict(c=lambda t: t.half()), "c has dtype"),
    ("x-float64", dict(**{k: (lambda t: t.double()) for k in ("x", "d0", "d1", "d2", "c", "noise")}),
     "x must be float32, float16 or bfloat16"),
    ("A-shape", dict(A=lambda t: t[:, :, :8]), "A must be"),
    ("tile_max-shape", dict(tile_max=lambda t: t[:, :, :1]), "tile_max must have shape"),
    ("tile_min-dtype", dict(tile_min=lambda t: t.double()), "tile_min must be float32"),
    ("noise-dtype", dict(noise=lambda t: t.half()), "noise has dtype"),
    ("tile-24", dict(tile=lambda t: 24), "tile must be one of"),
    ("coefs-10", dict(coefs=lambda t: [0.1] * 10), "coefs must hold 7"),
    ("cd2-without-d2", dict(d2=lambda t: None), "cd2 = .* but d2 is not given"),
    ("step", dict(step=lambda t: 2**31), "step must be in"),
]


@pytest.mark.skipif("cpp" not in yk.available_backends("cpu"), reason="C++ extension not built")
@pytest.mark.parametrize("change, match", [pytest.param(c, m, id=n) for n, c, m in CPP_BAD])
def test_cpp_op_checks_name_the_argument(change, match):
    """The raw op (no Python validation in front) refuses bad input with a message naming the argument."""
    x, (d0, d1), c, A = _good()
    tmax, tmin = naive.tile_stats(A, 16)
    args = dict(x=x, d0=d0, d1=d1, d2=d1.clone(), c=c, A=A, tile_max=tmax, tile_min=tmin, tau=0.5,
                coefs=list(COEFS["sde"]), seed=0, step=0, noise=torch.randn_like(x), tile=16)
    for k, f in change.items():
        args[k] = f(args[k])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.yoda.masked_combine(*args.values())


@pytest.mark.skipif("triton" not in yk.available_backends("cpu"), reason="triton not available")
def test_triton_op_checks():
    x, (d0, d1), c, _ = _good()
    op = torch.ops.yoda.masked_combine_triton
    with pytest.raises(ValueError, match="d2 is given without d1"):
        op(x, d0, None, d1, c, None, None, None, 0.0, list(COEFS["sde"]), 0, 0, None, 8)
    with pytest.raises(ValueError, match="cd1 = .* but d1 is not given"):
        op(x, d0, None, None, c, None, None, None, 0.0, list(COEFS["sde"]), 0, 0, None, 8)
    with pytest.raises(ValueError, match="coefs must be 7"):
        op(x, d0, d1, None, c, None, None, None, 0.0, [0.0] * 10, 0, 0, None, 8)


# --------------------------------------------------------------------------------------------------------
# torch.library integration
# --------------------------------------------------------------------------------------------------------
def _opcheck_args():
    x, (d0, d1), c, A = _good((2, 3, 19, 24))
    tmax, tmin = naive.tile_stats(A, 8)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return [
        pytest.param((x, d0, d1, d1 * 0.5, c, A, tmax, tmin, 0.5, list(COEFS["sde"]), 1, 2, None, 8),
                     id="nd3-A-stats-philox"),
        pytest.param((x, d0, None, None, c, None, None, None, 0.0, coefs_for("ode", 1), 1, 2, torch.randn_like(x),
                      16), id="nd1-plain-noise"),
        pytest.param((cl(x), cl(d0), cl(d1), None, cl(c), A[:, 0].half(), None, None, 0.3, coefs_for("last", 2), 5,
                      6, None, 32), id="nd2-channels_last-A3d-no-stats"),
    ]


@pytest.mark.parametrize("args", _opcheck_args())
def test_opcheck(args):
    torch.library.opcheck(torch.ops.yoda.masked_combine.default, args)


def test_torch_compile_cpu():
    x, (d0, d1), c, A = _good((1, 3, 16, 24))
    tmax, tmin = naive.tile_stats(A, 8)
    coefs = coefs_for("sde", 2)

    def update(x, d0, d1, c, A, tmax, tmin):
        y = torch.ops.yoda.masked_combine(x, d0, d1, None, c, A, tmax, tmin, 0.5, coefs, 3, 4, None, 8)
        return y * 2.0 + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(update, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x, d0, d1, c, A, tmax, tmin), update(x, d0, d1, c, A, tmax, tmin))
