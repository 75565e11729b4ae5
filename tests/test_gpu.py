"""GPU-only checks of the CUDA C++ and Triton backends (skipped without a CUDA device).

- both backends against the reference (yoda_kernels.naive, run on the same GPU) over dtype x shape x tile,
  bit for bit on an explicit noise tensor (same float32 operations, no fused multiply-add on either side)
  and on Philox noise (the noise transform is explicit float32 operations, DESIGN.md §9);
- the noise transform's sqrt (sqrt.rn's 5-instruction fast path) against sqrt_rn on every float32 of its range;
- same seed -> same image on both backends, bit for bit; channels-last in, channels-last out;
- read avoidance: NaN planted where a branch is not taken never reaches the output;
- a sampler-free check: a short DDPM loop driven through masked_step on each backend, with every pixel
  active, against the textbook posterior computed independently in float64;
- masked_combine (the solvers' update) on both backends: bit for bit on explicit noise, masked_step's noise
  stream, read avoidance;
- yoda.sample with the solvers: the same image with and without a callback, near the CPU's;
- tile_stats, masked_q_sample; torch.library.opcheck and torch.compile for the Triton ops.
"""

import math

import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import coefs as coefs_mod
from yoda_kernels import contract, naive, philox

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
GPU_BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (dtype, shape, tile, coefficients, clip): odd and aligned sizes, each tile size, each prediction / sampler,
# each dtype. Kept short: every dtype x stride pattern x noise source is one more Triton compilation (seconds)
# on the GPU machine, and the whole GPU check must finish in 5 minutes.
CASES = (
    (torch.float32, (1, 1, 8, 8), 8, dict(prediction="eps"), True),
    (torch.float32, (2, 3, 37, 53), 16, dict(prediction="v", sampler="ddim", eta=1.0), False),
    (torch.float32, (1, 4, 64, 96), 32, dict(prediction="x0"), True),
    (torch.float16, (2, 3, 37, 53), 8, dict(prediction="eps", sampler="ddim", eta=0.5), True),
    (torch.bfloat16, (1, 4, 64, 96), 16, dict(prediction="v"), False),
)
CASE_IDS = [f"{str(d).split('.')[-1]}-{'x'.join(map(str, s))}-t{t}" for d, s, t, _, _ in CASES]
TAU = 0.5


def _need(backend):
    if backend not in yk.available_backends(DEV):
        why = "triton not importable" if backend == "triton" else (
            yk.extension_error or "the extension was built without CUDA kernels")
        pytest.skip(f"backend {backend!r} not available on cuda: {why}")


def _op(backend, name):
    return getattr(torch.ops.yoda, name + ("_triton" if backend == "triton" else ""))


def _blob(B, H, W, seed=0):
    """(B, 1, H, W) attention: a Gaussian blob per image plus a little noise, in [0, 1] (full, empty and
    mixed tiles at tau = 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.linspace(-1, 1, H).view(1, H, 1)
    x = torch.linspace(-1, 1, W).view(1, 1, W)
    cy, cx = (torch.rand(B, 1, 1, generator=gen) - 0.5) * 0.6, (torch.rand(B, 1, 1, generator=gen) - 0.5) * 0.6
    A = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.3) + 0.05 * torch.rand(B, H, W, generator=gen)
    A = (A - A.amin((1, 2), keepdim=True)) / (A.amax((1, 2), keepdim=True) - A.amin((1, 2), keepdim=True))
    return A.unsqueeze(1).to(DEV)


def _state(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(DEV, dtype) for _ in range(4)]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype, shape, tile, kind, clip", CASES, ids=CASE_IDS)
def test_masked_step_matches_reference(backend, dtype, shape, tile, kind, clip):
    _need(backend)
    x, o, c, z = _state(shape, dtype, seed=sum(shape))
    A = _blob(shape[0], shape[2], shape[3], seed=shape[3])
    cf = coefs_mod.step_coefficients(0.3, 0.4, **kind)
    stats = naive.tile_stats(A, tile)
    args = (x, o, c, A, *stats, TAU, cf, clip, 123, 7, z, tile)
    got = _op(backend, "masked_step")(*args)
    ref = naive.masked_step(*args)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0, msg="explicit noise: same float32 operations")
    # Philox noise: the same normals bit for bit (stream version 2), so the same output
    args = (x, o, c, A, *stats, TAU, cf, clip, 123, 7, None, tile)
    got = _op(backend, "masked_step")(*args)
    ref = naive.masked_step(*args)
    torch.testing.assert_close(got, ref, rtol=0, atol=0, msg="philox noise")


def test_same_seed_same_image_across_backends():
    for b in GPU_BACKENDS:
        _need(b)
    shape = (2, 3, 67, 131)
    x, o, c, _ = _state(shape, torch.float32, seed=1)
    A = _blob(2, 67, 131, seed=2)
    cf = coefs_mod.step_coefficients(0.1, 0.15)
    outs = [yk.masked_step(x, o, c, A, TAU, coefs=cf, seed=2**32 - 1, step=2**31 - 1, backend=b)
            for b in GPU_BACKENDS + ("naive",)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # the raw stream (init coefficients, A=None: the step returns z) against the PyTorch reference on the GPU
    # and on the CPU, bit for bit
    z_ref = philox.noise(5, 6, shape, device=DEV)
    assert torch.equal(z_ref.cpu(), philox.noise(5, 6, shape))
    for b in GPU_BACKENDS:
        z = yk.masked_step(x, o, c, None, coefs=coefs_mod.init_coefficients(0.5), seed=5, step=6, backend=b)
        assert torch.equal(z, z_ref), b
        assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


def test_noise_sqrt_fast_path_is_sqrt_rn():
    """yoda_kernels/triton/noise.py's _sqrt (and csrc/philox.h's sqrt_f32, the same PTX) is sqrt.rn's fast path
    without its range check: equal to tl.sqrt_rn on every float32 in [2^-100, 2^7) (the transform's L is below
    44.4), about 9e8 values."""
    import triton
    import triton.language as tl

    from yoda_kernels.triton.noise import _sqrt

    @triton.jit
    def count_mismatches(lo, n, out_ptr, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        bits = (lo + i).to(tl.int32)
        v = bits.to(tl.float32, bitcast=True)
        bad = (_sqrt(v).to(tl.int32, bitcast=True) != tl.sqrt_rn(v).to(tl.int32, bitcast=True)) & (i < n)
        tl.atomic_add(out_ptr, tl.sum(bad.to(tl.int32), axis=0))

    lo, hi = 0x0D800000, 0x43000000  # bits of 2^-100 and 2^7
    out = torch.zeros(1, dtype=torch.int32, device=DEV)
    block = 4096
    count_mismatches[(triton.cdiv(hi - lo, block),)](lo, hi - lo, out, BLOCK=block)
    assert int(out.item()) == 0


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_channels_last_and_strided(backend):
    _need(backend)
    shape = (2, 3, 48, 72)
    x, o, c, z = _state(shape, torch.float16, seed=3)
    x = x.contiguous(memory_format=torch.channels_last)
    c = c.contiguous(memory_format=torch.channels_last)
    o = torch.cat([o, o], dim=2)[:, :, ::2]  # stride 2 along H
    A = _blob(2, 48, 72, seed=4)[:, 0]  # (B, H, W) form
    cf = coefs_mod.step_coefficients(0.3, 0.5)
    args = (x, o, c, A, *naive.tile_stats(A, 16), TAU, cf, True, 1, 1, z, 16)
    got = _op(backend, "masked_step")(*args)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, naive.masked_step(*args), rtol=0, atol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_inactive_data_not_read(backend):
    _need(backend)
    shape, tile = (2, 3, 96, 160), 16
    x, o, c, z = _state(shape, torch.float32, seed=5)
    A = _blob(2, 96, 160, seed=6)
    tmax, tmin = naive.tile_stats(A, tile)
    active = (A >= TAU).expand(shape)
    nan = torch.tensor(float("nan"), device=DEV)
    mixed = ((tmax >= TAU) & (tmin < TAU)).repeat_interleave(tile, 1).repeat_interleave(tile, 2).unsqueeze(1)
    x_p, o_p, c_p = torch.where(active, x, nan), torch.where(active, o, nan), torch.where(active, nan, c)
    A_p = torch.where(mixed, A, nan)
    cf = coefs_mod.step_coefficients(0.4, 0.5)
    for noise in (z, None):
        got = _op(backend, "masked_step")(x_p, o_p, c_p, A_p, tmax, tmin, TAU, cf, False, 3, 3, noise, tile)
        ref = naive.masked_step(x_p, o_p, c_p, A, tmax, tmin, TAU, cf, False, 3, 3, noise, tile)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


# masked_combine (the solvers' update): (dtype, shape, tile, number of estimates, channels-last)
COMBINE_COEFS = contract.CombineCoefs(cx=0.6130456789, cd0=0.5234567891, cd1=-0.1876543219, cd2=0.0412345679,
                                      sigma=0.2712345678, la=0.8312345671, lb=0.5587654321)
COMBINE_CASES = (
    (torch.float32, (2, 3, 37, 53), 8, 3, False),
    (torch.float16, (1, 4, 64, 96), 16, 2, True),
    (torch.bfloat16, (2, 3, 37, 53), 32, 1, False),
)
COMBINE_IDS = [f"{str(d).split('.')[-1]}-{'x'.join(map(str, s))}-t{t}-nd{n}" + ("-cl" if cl else "")
               for d, s, t, n, cl in COMBINE_CASES]


def _combine_coefs(nd, noise=True):
    k = COMBINE_COEFS._asdict()
    for j in range(nd, 3):
        k[f"cd{j}"] = 0.0
    if not noise:
        k["sigma"] = k["lb"] = 0.0
    return list(contract.CombineCoefs(**k))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype, shape, tile, nd, cl", COMBINE_CASES, ids=COMBINE_IDS)
def test_masked_combine_matches_reference(backend, dtype, shape, tile, nd, cl):
    _need(backend)
    x, c, z, d0 = _state(shape, dtype, seed=sum(shape) + nd)
    ds = [d0] + _state(shape, dtype, seed=nd)[: nd - 1]
    if cl:
        x, c, *ds = (t.contiguous(memory_format=torch.channels_last) for t in [x, c] + ds)
    ds += [None] * (3 - nd)
    A = _blob(shape[0], shape[2], shape[3], seed=shape[2])
    stats = naive.tile_stats(A, tile)
    cf = _combine_coefs(nd)
    args = (x, *ds, c, A, *stats, TAU, cf, 123, 7, z, tile)
    got = _op(backend, "masked_combine")(*args)
    ref = naive.masked_combine(*args)
    assert got.dtype == dtype and got.stride() == ref.stride()
    torch.testing.assert_close(got, ref, rtol=0, atol=0, msg="explicit noise: same float32 operations")
    args = (x, *ds, c, A, *stats, TAU, cf, 123, 7, None, tile)
    got = _op(backend, "masked_combine")(*args)
    ref = naive.masked_combine(*args)
    torch.testing.assert_close(got, ref, rtol=0, atol=0, msg="philox noise")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_masked_combine_noise_and_reads(backend):
    """The noise is masked_step's stream (cx = cd0 = 0, sigma = 1 gives z; masked_step's init coefficients too);
    NaN where a branch is not taken, and in a noise tensor of a noiseless update, never reaches the output."""
    _need(backend)
    shape, tile = (2, 3, 96, 160), 16
    x, d0, d1, c = _state(shape, torch.float32, seed=14)
    pure = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    z = _op(backend, "masked_combine")(x, d0, None, None, c, None, None, None, 0.0, pure, 9, 4, None, tile)
    z_step = _op(backend, "masked_step")(x, x, c, None, None, None, 0.0, coefs_mod.init_coefficients(0.5), False,
                                         9, 4, None, tile)
    assert torch.equal(z, z_step)
    A = _blob(2, 96, 160, seed=15)
    tmax, tmin = naive.tile_stats(A, tile)
    active = (A >= TAU).expand(shape)
    nan = torch.tensor(float("nan"), device=DEV)
    xp, d0p, d1p = (torch.where(active, t, nan) for t in (x, d0, d1))
    cp = torch.where(active, nan, c)
    mixed = ((tmax >= TAU) & (tmin < TAU)).repeat_interleave(tile, 1).repeat_interleave(tile, 2).unsqueeze(1)
    Ap = torch.where(mixed, A, nan)
    for cf, noise in ((_combine_coefs(2), None), (_combine_coefs(2, noise=False), torch.full_like(x, float("nan")))):
        got = _op(backend, "masked_combine")(xp, d0p, d1p, None, cp, Ap, tmax, tmin, TAU, cf, 3, 3, noise, tile)
        ref = naive.masked_combine(xp, d0p, d1p, None, cp, A, tmax, tmin, TAU, cf, 3, 3, noise, tile)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_sampler_free_ddpm_loop(backend):
    """Ten DDPM steps of a fixed linear 'model' eps = 0.3 x with every pixel active (A=None), driven directly
    through masked_step, against the posterior mean / variance of Ho et al. computed in float64 from the
    betas (independent of yoda_kernels.coefs and naive), on the same explicit noise."""
    _need(backend)
    T = 10
    betas = torch.linspace(1e-3, 0.2, T, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    shape = (1, 3, 40, 56)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    zs = torch.randn((T,) + shape, generator=gen, dtype=torch.float64)
    x_dev = x.float().to(DEV)
    for t in range(T - 1, -1, -1):
        ab_t, ab_prev = ab[t].item(), (ab[t - 1].item() if t > 0 else 1.0)
        z = zs[t].float().to(DEV)
        x_dev = _op(backend, "masked_step")(
            x_dev, 0.3 * x_dev, x_dev, None, None, None, 0.0,
            coefs_mod.step_coefficients(ab_t, ab_prev), False, 0, t, z, 16)
        eps = 0.3 * x
        x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
        beta_t = 1 - ab_t / ab_prev
        mean = (math.sqrt(ab_prev) * beta_t / (1 - ab_t)) * x0 + (
            math.sqrt(1 - beta_t) * (1 - ab_prev) / (1 - ab_t)) * x
        var = (1 - ab_prev) / (1 - ab_t) * beta_t
        x = mean + (math.sqrt(var) * zs[t] if t > 0 else 0.0)
    err = (x_dev.double().cpu() - x).abs().max().item()
    assert err < 1e-4 * max(1.0, x.abs().max().item()), err


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_solvers_sample_on_the_gpu_with_and_without_a_callback(backend, monkeypatch):
    """yoda.sample with the solvers on the GPU (their history replaced in place without a callback, copied with
    one; the NaN / Inf check by least and greatest values): the same image either way, bit for bit, within float
    rounding of the CPU's reference run, and an Inf from a two-call solver's second model call named."""
    import yoda
    from yoda.adapters import CallableAdapter
    from yoda.schedule import Schedule

    _need(backend)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # (TF32 convolutions: 1e-3 from the CPU's)
    conv = torch.nn.Conv2d(6, 3, 3, padding=1)
    torch.nn.init.normal_(conv.weight, std=0.2, generator=torch.Generator().manual_seed(0))
    torch.nn.init.zeros_(conv.bias)

    def fn(x, t, c):
        net = conv.to(x.device)
        return torch.tanh(net(torch.cat([c, x], 1)) * (0.5 + t.to(x.dtype)[:, None, None, None] / 1000))

    sched = Schedule.scaled_linear(1000)
    lr = (torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    A = _blob(2, 24, 40, seed=3)
    for solver in ("dpmpp_3m_sde", "dpmpp_2m", "heun"):
        kw = dict(sampler=solver, attention=A, lower_bound=0.5, seed=7, steps=6, progress=False)
        ad = CallableAdapter(fn, prediction="eps", schedule=sched, scale=2)
        got = yoda.sample(ad, lr.to(DEV), backend=backend, **kw)
        shown = yoda.sample(ad, lr.to(DEV), backend=backend, callback=lambda d: None, **kw)
        assert torch.equal(got, shown), solver
        ref = yoda.sample(ad, lr, backend="naive", **dict(kw, attention=A.cpu()))
        assert (got.cpu() - ref).abs().max().item() < 1e-4, solver
    n = [0]

    def second_inf(x, t, c):
        n[0] += 1
        return torch.full_like(x, float("inf")) if n[0] == 2 else fn(x, t, c)

    bad = CallableAdapter(second_inf, prediction="eps", schedule=sched, scale=2, clip_x0=True)
    with pytest.raises(FloatingPointError, match="the model output has NaN or Inf at step 0"):
        yoda.sample(bad, lr.to(DEV), sampler="heun", steps=4, seed=0, backend=backend, progress=False)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_masked_ops_equal_the_public_ops(backend):
    """MaskedOps (what yoda.sample calls: the fixed arguments checked once) gives the public ops' bits on the GPU:
    three masked steps with Philox noise and a 3-estimate combine, and refuses a model output of another shape."""
    _need(backend)
    gen = torch.Generator().manual_seed(5)
    shape = (2, 3, 40, 56)
    x, c, *preds = (torch.randn(shape, generator=gen).to(DEV) for _ in range(5))
    A = torch.rand(2, 1, 40, 56, generator=gen).to(DEV)
    ops = yk.MaskedOps(c, A, tile=16, seed=7, backend=backend)
    for i in range(3):
        k = coefs_mod.step_coefficients(0.2 + 0.2 * i, 0.35 + 0.2 * i, prediction="v", sampler="ddim", eta=0.5)
        got = ops.step(x, preds[i], 0.5 - 0.1 * i, coefs=k, step=i + 1)
        want = yk.masked_step(x, preds[i], c, A, 0.5 - 0.1 * i, coefs=k, step=i + 1, seed=7, tile=16, backend=backend)
        assert torch.equal(got, want)
        x = got
    k = [0.6, 0.5, -0.2, 0.04, 0.27, 0.83, 0.56]
    assert torch.equal(ops.combine(x, preds, 0.3, coefs=k, step=9),
                       yk.masked_combine(x, preds, c, A, 0.3, coefs=k, step=9, seed=7, tile=16, backend=backend))
    with pytest.raises(ValueError, match="model_out must have the shape of x"):
        ops.step(x, preds[0][..., :8], 0.5, coefs=coefs_mod.step_coefficients(0.3, 0.4), step=1)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_nan_in_A_leaves_only_its_pixel_inactive_on_the_gpu(backend):
    """The registered ops called directly with a NaN in A (its tile's stats NaN): only that pixel takes the LR
    branch, as in the reference (the whole tile did: classify_tile in csrc/step.h, Triton's tile_classes)."""
    _need(backend)
    from yoda_kernels import ops as ops_mod

    gen = torch.Generator().manual_seed(6)
    x, out, c = (torch.randn(1, 2, 16, 24, generator=gen) for _ in range(3))
    A = torch.ones(1, 1, 16, 24)
    A[0, 0, 3, 5] = float("nan")
    tmax, tmin = naive.tile_stats(A, 8)
    args = (x, out, c, A, tmax, tmin, 0.5, coefs_mod.step_coefficients(0.3, 0.45), False, 1, 2, None, 8)
    want = ops_mod._impl("masked_step", "naive")(*args)
    got = ops_mod._impl("masked_step", backend)(*(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args))
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_tile_stats_and_q_sample(backend, dtype):
    _need(backend)
    shape = (3, 2, 45, 77)
    x0, c, z, _ = _state(shape, dtype, seed=7)
    A = _blob(3, 45, 77, seed=8).to(dtype)
    A[2, 0, 44, 76] = float("nan")
    for tile in contract.TILE_SIZES:
        got = _op(backend, "tile_stats")(A, tile)
        ref = naive.tile_stats(A, tile)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=0, atol=0, equal_nan=True)
    A[2, 0, 44, 76] = 0.0
    ab = torch.tensor([0.9, 0.4, 0.01], device=DEV)
    tau = torch.tensor([0.0, 0.5, 1.5], device=DEV)
    for a in (A, None):
        args = (x0.contiguous(memory_format=torch.channels_last), c, z, a, ab.sqrt(), (1 - ab).sqrt(), tau)
        got = _op(backend, "masked_q_sample")(*args)
        torch.testing.assert_close(got, naive.masked_q_sample(*args), rtol=0, atol=0)
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_triton_ops_opcheck_and_compile():
    _need("triton")
    shape = (1, 2, 24, 40)
    x, o, c, z = _state(shape, torch.float32, seed=9)
    A = _blob(1, 24, 40, seed=10)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    tmax, tmin = naive.tile_stats(A, 8)
    step_args = (x, o, c, A, tmax, tmin, TAU, cf, False, 4, 2, None, 8)
    torch.library.opcheck(torch.ops.yoda.masked_step_triton.default, step_args)
    torch.library.opcheck(torch.ops.yoda.masked_combine_triton.default,
                          (x, o, c, None, z, A, tmax, tmin, TAU, _combine_coefs(2), 4, 2, None, 8))
    torch.library.opcheck(torch.ops.yoda.tile_stats_triton.default, (A, 8))
    ab = torch.tensor([0.5], device=DEV)
    torch.library.opcheck(torch.ops.yoda.masked_q_sample_triton.default,
                          (x, c, z, A, ab.sqrt(), (1 - ab).sqrt(), torch.tensor([0.5], device=DEV)))

    # compiled, the op keeps the eager launch's bits: float32 scalars (A == float32(0.7) is active at tau 0.7;
    # Inductor's re-emitted triton_op launch compared in fp64, where it is not) and no fused multiply-adds
    tau = 0.7
    A7 = A.clone()
    A7[..., :3, :] = 0.7  # float32(0.7) < 0.7 in float64

    @torch.compile(fullgraph=True)
    def step(x, o, c, A):
        tmax, tmin = torch.ops.yoda.tile_stats_triton(A, 8)
        return torch.ops.yoda.masked_step_triton(x, o, c, A, tmax, tmin, tau, cf, False, 4, 2, None, 8) * 2.0

    eager = torch.ops.yoda.masked_step_triton(x, o, c, A7, *naive.tile_stats(A7, 8), tau, cf, False, 4, 2, None, 8)
    torch.testing.assert_close(step(x, o, c, A7), 2.0 * eager, rtol=0, atol=0)
    torch.testing.assert_close(eager, naive.masked_step(x, o, c, A7, None, None, tau, cf, False, 4, 2, None, 8),
                               rtol=0, atol=2e-6)


def test_cuda_ops_opcheck():
    _need("cuda")
    shape = (1, 2, 24, 40)
    x, o, c, z = _state(shape, torch.float32, seed=12)
    A = _blob(1, 24, 40, seed=13)
    tmax, tmin = naive.tile_stats(A, 8)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    torch.library.opcheck(torch.ops.yoda.masked_step.default, (x, o, c, A, tmax, tmin, TAU, cf, False, 4, 2, z, 8))
    torch.library.opcheck(torch.ops.yoda.tile_stats.default, (A, 8))
    torch.library.opcheck(torch.ops.yoda.masked_combine.default,
                          (x, o, c, None, z, A, tmax, tmin, TAU, _combine_coefs(2), 4, 2, None, 8))


def test_cuda_errors_name_the_argument():
    _need("cuda")
    x = torch.randn(1, 2, 8, 8, device=DEV)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    with pytest.raises(RuntimeError, match="model_out"):
        torch.ops.yoda.masked_step(x, x.cpu(), x, None, None, None, 0.5, cf, False, 0, 0, None, 8)
    with pytest.raises(RuntimeError, match="tile"):
        torch.ops.yoda.masked_step(x, x, x, None, None, None, 0.5, cf, False, 0, 0, None, 12)
    with pytest.raises(RuntimeError, match="noise"):
        torch.ops.yoda.masked_step(x, x, x, None, None, None, 0.5, cf, False, 0, 0, x.half(), 8)
    cc = _combine_coefs(2)
    with pytest.raises(RuntimeError, match="d1"):
        torch.ops.yoda.masked_combine(x, x, x.cpu(), None, x, None, None, None, 0.5, cc, 0, 0, None, 8)
    with pytest.raises(RuntimeError, match="cd1 = .* but d1 is not given"):
        torch.ops.yoda.masked_combine(x, x, None, None, x, None, None, None, 0.5, cc, 0, 0, None, 8)


def test_speed_options_on_cuda():
    """yoda.sample's speed options on a real GPU (tests/test_speed.py checks their logic on the CPU, with a fake
    capture): a CUDA graph replays the very kernels of the eager call, so the image is bit-identical and a
    GraphCache captures once for several calls; channels-last and bf16 autocast change only the network's
    arithmetic (within float / bf16 rounding of the eager image). cuDNN without TF32 and deterministic: NCHW and
    NHWC may pick kernels that round TF32 differently (8.5e-4 apart in an emulation), and ConvTranspose2d may pick
    a nondeterministic one."""
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        _speed_options_on_cuda()


def _speed_options_on_cuda():
    import yoda
    from yoda.sampling.speed import GRAPH_WARMUP, GraphCache

    m = yoda.load().to(DEV).eval()
    lr = (torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(4)) * 2 - 1).to(DEV)

    def run(**kw):
        with torch.inference_mode():
            return yoda.sample(m, lr, steps=3, sampler="ddim", eta=0.0, seed=5, progress=False, **kw)

    plain = run()
    calls = []
    forward = m.forward
    m.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
    try:
        cache = GraphCache()
        first, second = run(cuda_graphs=cache), run(cuda_graphs=cache)
    finally:
        del m.forward
    assert len(cache) == 1 and len(calls) == GRAPH_WARMUP + 1  # one capture, then replays only (no Python call)
    torch.testing.assert_close(first, plain, rtol=0, atol=0)
    torch.testing.assert_close(second, plain, rtol=0, atol=0)
    torch.testing.assert_close(run(channels_last=True), plain, rtol=0, atol=1e-4)
    bf16 = run(autocast="bf16")
    assert bf16.dtype == plain.dtype and 0 < (bf16 - plain).abs().max().item() < 0.1
