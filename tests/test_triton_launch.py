"""What is specific to the Triton backend (the op-level grid over backends lives in test_masked_step.py etc.):
schemas, launch configuration, the three strip paths of masked_step, read avoidance (inactive data is never
loaded: NaN planted there must not reach the output), the noise counter map, strides and dtypes.

Runs on CUDA when present, else through the Triton interpreter (the root conftest.py sets TRITON_INTERPRET=1
before triton is imported). The interpreter takes ~1-3 s per launch here, so shapes are small and odd.
"""

import math
import time
import warnings

import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import coefs as coefs_mod
from yoda_kernels import contract, naive, ops, philox

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    "triton" not in yk.available_backends(DEVICE), reason="triton backend unavailable on " + DEVICE
)

if "triton" in yk.available_backends(DEVICE):
    from yoda_kernels import triton as ytr
    from yoda_kernels.triton.masked_step import launch_config

TAU = 0.5


def _gradient_attention(B, H, W, gen):
    """(B, 1, H, W) attention falling from 1 (top) to 0 (bottom) with a ripple along x: the top tile rows
    are full, the bottom ones empty and the middle ones mixed, so every strip path of the kernel runs."""
    y = torch.arange(H, dtype=torch.float64).view(H, 1) / (H - 1)
    x = torch.arange(W, dtype=torch.float64).view(1, W)
    A = (1.5 * (1.0 - y) + 0.08 * torch.sin(x / 2.0)).clamp(0, 1).to(torch.float32)
    shift = torch.rand(B, 1, 1, 1, generator=gen) * 0.02  # images differ, paths stay the same
    return (A.expand(B, 1, H, W) * (1 - shift)).contiguous()


def _strip_paths(A, tile, tau, noise=True):
    """Set of strip paths ('lr', 'sr', 'pixel') the kernel takes for A at tau (mirrors its classification)."""
    tmax, tmin = naive.tile_stats(A, tile)
    per_strip = launch_config(A.shape[-1], tile, noise)[0] // tile
    paths = set()
    for start in range(0, tmax.shape[-1], per_strip):
        hi, lo = tmax[..., start:start + per_strip], tmin[..., start:start + per_strip]
        for b in range(A.shape[0]):
            for ty in range(tmax.shape[1]):
                if (hi[b, ty] < tau).all():
                    paths.add("lr")
                elif (lo[b, ty] >= tau).all():
                    paths.add("sr")
                else:
                    paths.add("pixel")
    return paths


def _inputs(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, o, c, z = (torch.randn(shape, generator=gen) for _ in range(4))
    A = _gradient_attention(shape[0], shape[2], shape[3], gen)
    cast = lambda t: t.to(device=DEVICE, dtype=dtype)  # noqa: E731
    return cast(x), cast(o), cast(c), A.to(DEVICE), cast(z)


def test_schemas_match_the_contract():
    for op, schema in ops.SCHEMAS.items():
        got = str(getattr(torch.ops.yoda, f"{op}_triton").default._schema)
        # custom_op infers int arguments as SymInt, which accepts exactly the same values (the base ops' tile too);
        # tau / coefs are Scalar / Scalar[] in both (torch.types.Number), seed / step SymInt in both
        want = "yoda::" + schema.replace(f"{op}(", f"{op}_triton(", 1)
        assert got.replace("SymInt", "int") == want.replace("SymInt", "int")
        assert ("Scalar tau, Scalar[] coefs" in got) == ("Scalar tau, Scalar[] coefs" in want) == (op in (
            "masked_step", "masked_combine"))


@pytest.mark.parametrize("W, tile, noise, unit_w, block_w, warps", [
    (2048, 8, False, True, 256, 4), (2048, 16, False, True, 128, 4), (2048, 32, False, True, 64, 4),  # 2048 px
    (2048, 16, False, False, 128, 8),  # strided tensors: 8 warps (the 4-warp build spills)
    (2048, 8, True, True, 256, 4), (2048, 16, True, True, 128, 4),  # Philox, unit stride: 2048 px too
    (2048, 32, True, False, 32, 4), (2048, 16, True, False, 64, 4),  # Philox, strided: 1024 px (2048 spills)
    (53, 8, False, True, 64, 2), (53, 32, True, True, 64, 4), (20, 32, False, True, 32, 4),  # narrow images:
    (5, 16, True, True, 16, 1), (1, 8, False, False, 8, 1)])  # >= 8 pixels per thread
def test_launch_config(W, tile, noise, unit_w, block_w, warps):
    assert launch_config(W, tile, noise, unit_w) == (block_w, warps)
    assert block_w % tile == 0  # a strip holds whole tiles: the classification is per tile


def test_next_pow2_and_cdiv_by_their_definitions():
    """The host-side next_pow2 and cdiv (triton's are @jit) against their definitions (an off-by-one in next_pow2
    survived the launch-config cases, whose widths it rounds to the same block)."""
    from yoda_kernels.triton.launch import cdiv, next_pow2

    for n in range(-2, 1100):
        assert next_pow2(n) == (1 if n <= 1 else min(p for p in (2 ** k for k in range(12)) if p >= n)), n
    assert [cdiv(n, 8) for n in (0, 1, 7, 8, 9, 16, 17)] == [0, 1, 1, 1, 2, 2, 3]


def test_masked_combine_keeps_1024_pixel_philox_strips(monkeypatch):
    """masked_combine's Philox launch stays at 1024-pixel strips (8 pixels per thread) until measured on a GPU: at
    2048 it takes 208-210 registers against 147 (offline sm_90 compile)."""
    from yoda_kernels.triton import masked_combine as mc

    assert launch_config(2048, 16, True, True, philox_pixels=1024) == (64, 4)
    seen = []
    monkeypatch.setattr(mc, "launch_config", lambda *a, **k: seen.append((a, k)) or launch_config(*a, **k))
    x, o, c, A, _ = _inputs((1, 1, 8, 64), seed=5)
    yk.masked_combine(x, [o], c, A, TAU, coefs=[0.5, 0.5, 0.0, 0.0, 0.3, 0.6, 0.2], tile=8, backend="triton")
    assert seen and seen[-1][1] == {"philox_pixels": 1024} and seen[-1][0][2] is True


@pytest.mark.parametrize("tile", contract.TILE_SIZES)
def test_every_strip_path_matches_reference(tile):
    """Philox noise, clip, ragged H and W (not multiples of 4 or of the tile): all three strip paths
    against the reference. Noise differs from the reference's only by log/cos rounding (<= ~1e-6)."""
    shape = (1, 2, 70, 45)
    x, o, c, A, _ = _inputs(shape, seed=tile)
    assert _strip_paths(A.cpu(), tile, TAU) == {"lr", "sr", "pixel"}
    cf = coefs_mod.step_coefficients(0.3, 0.45, prediction="v", sampler="ddpm")
    args = (x, o, c, A, *naive.tile_stats(A, tile), TAU, cf, True, 2**32 - 5, 17, None, tile)
    got = torch.ops.yoda.masked_step_triton(*args)
    ref = naive.masked_step(*args)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, ref, rtol=0, atol=4e-6)


def test_inactive_data_is_never_read():
    """NaN in x / model_out where the pixel is inactive, in c where it is active, and in A wherever the
    tile is full or empty (only mixed tiles may read A): none of it may reach the output."""
    shape, tile = (1, 3, 40, 72), 8
    x, o, c, A, z = _inputs(shape, seed=3)
    tmax, tmin = naive.tile_stats(A, tile)
    active = (A >= TAU).expand(shape)
    nan = torch.tensor(float("nan"), device=DEVICE)
    x_p, o_p = torch.where(active, x, nan), torch.where(active, o, nan)
    c_p = torch.where(active, nan, c)
    mixed = ((tmax >= TAU) & (tmin < TAU)).repeat_interleave(tile, 1).repeat_interleave(tile, 2)
    A_p = torch.where(mixed[:, :40, :72].unsqueeze(1), A, nan)
    assert torch.isnan(A_p).any() and torch.isnan(x_p).any() and torch.isnan(c_p).any()
    cf = coefs_mod.step_coefficients(0.2, 0.3, sampler="ddim", eta=0.5)
    got = torch.ops.yoda.masked_step_triton(x_p, o_p, c_p, A_p, tmax, tmin, TAU, cf, False, 9, 4, z, tile)
    ref = naive.masked_step(x_p, o_p, c_p, A, tmax, tmin, TAU, cf, False, 9, 4, z, tile)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, ref, rtol=0, atol=0)  # explicit noise: same float32 operations


def test_noise_counter_map():
    """init coefficients with A=None make the step return the raw noise z: the element -> (Philox counter,
    lane) map of yoda_kernels.philox, with a seed above 2**31 and a step in the key's upper word."""
    shape = (2, 3, 10, 13)  # H % 4 != 0: the last Philox group is partly outside the image
    x = torch.randn(shape, device=DEVICE)
    seed, step = 2**31 + 12345, 777
    got = torch.ops.yoda.masked_step_triton(
        x, x, x, None, None, None, 0.0, coefs_mod.init_coefficients(0.5), False, seed, step, None, 16)
    ref = philox.noise(seed, step, shape, device=DEVICE)
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-6)
    other = torch.ops.yoda.masked_step_triton(
        x, x, x, None, None, None, 0.0, coefs_mod.init_coefficients(0.5), False, seed, step + 1, None, 16)
    assert (other - got).abs().mean() > 0.5  # the step is part of the key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_channels_last_and_no_noise(dtype):
    """fp16/bf16 in and out with fp32 compute, channels-last x and c, a sliced (non-contiguous) model_out,
    and the last step (sigma = lb = 0: no noise drawn, the noise tensor is not read)."""
    shape, tile = (2, 3, 24, 19), 16
    x, o, c, A, z = _inputs(shape, dtype=dtype, seed=5)
    x = x.contiguous(memory_format=torch.channels_last)
    c = c.contiguous(memory_format=torch.channels_last)
    o = torch.cat([o, o], dim=3)[..., ::2]  # stride 2 along W
    assert not o.is_contiguous()
    cf = coefs_mod.step_coefficients(0.4, 1.0)
    assert not coefs_mod.needs_noise(cf)
    z_nan = torch.full_like(z, float("nan"))
    args = (x, o, c, A, *naive.tile_stats(A, tile), TAU, cf, False, 1, 2, z_nan, tile)
    got = torch.ops.yoda.masked_step_triton(*args)
    ref = naive.masked_step(*args[:-2], z.zero_(), tile)  # sigma * 0 == 0: the reference with z = 0
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_without_attention_is_the_plain_update():
    shape = (1, 2, 9, 11)
    x, o, c, _, z = _inputs(shape, seed=6)
    c_nan = torch.full_like(c, float("nan"))  # A=None: every pixel takes the SR branch, c is never read
    cf = coefs_mod.step_coefficients(0.1, 0.2, prediction="x0")
    got = torch.ops.yoda.masked_step_triton(x, o, c_nan, None, None, None, 0.7, cf, True, 0, 0, z, 8)
    ref = naive.masked_step(x, o, c, None, None, None, 0.7, cf, True, 0, 0, z, 8)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_stats_computed_when_missing():
    shape, tile = (1, 1, 16, 33), 32
    x, o, c, A, z = _inputs(shape, seed=7)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    got = torch.ops.yoda.masked_step_triton(x, o, c, A, None, None, TAU, cf, False, 0, 0, z, tile)
    ref = naive.masked_step(x, o, c, A, None, None, TAU, cf, False, 0, 0, z, tile)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("tile", contract.TILE_SIZES)
def test_tile_stats(tile):
    gen = torch.Generator().manual_seed(tile)
    A = torch.rand(2, 1, 37, 50, generator=gen)
    A[1, 0, 36, 49] = float("nan")  # in the ragged corner tile: must propagate, never be dropped
    A = A.to(DEVICE)
    A3 = A[:, 0].transpose(1, 2).contiguous().transpose(1, 2)  # (B, H, W), column-major strides
    for a in (A, A3):
        tmax, tmin = torch.ops.yoda.tile_stats_triton(a, tile)
        rmax, rmin = naive.tile_stats(a, tile)
        assert tmax.dtype == torch.float32 and tmax.shape == (2, math.ceil(37 / tile), math.ceil(50 / tile))
        torch.testing.assert_close(tmax, rmax, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(tmin, rmin, rtol=0, atol=0, equal_nan=True)
        assert torch.isnan(tmax[1, -1, -1]) and torch.isnan(tmin[1, -1, -1])


@pytest.mark.parametrize("dtype, with_a", [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)])
def test_masked_q_sample(dtype, with_a):
    shape = (3, 2, 21, 35)
    x0, _, c, A, z = _inputs(shape, dtype=dtype, seed=8)
    x0 = x0.contiguous(memory_format=torch.channels_last)
    ab = torch.tensor([0.9, 0.5, 0.05], device=DEVICE)
    tau = torch.tensor([0.2, 0.5, 0.95], device=DEVICE)
    A = A[:, 0] if with_a else None  # the (B, H, W) form
    args = (x0, c, z, A, ab.sqrt(), (1 - ab).sqrt(), tau)
    got = torch.ops.yoda.masked_q_sample_triton(*args)
    ref = naive.masked_q_sample(*args)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_public_entry_point_routes_to_triton():
    shape = (1, 1, 8, 8)
    x, o, c, A, z = _inputs(shape, seed=9)
    got = yk.masked_step(x, o, c, A, TAU, ab_t=0.5, ab_prev=0.6, noise=z, tile=8, backend="triton")
    ref = yk.masked_step(x, o, c, A, TAU, ab_t=0.5, ab_prev=0.6, noise=z, tile=8, backend="naive")
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert ytr.INTERPRET == (DEVICE == "cpu")


def test_launch_rejects_inconsistent_inputs():
    """The raw op checks what the kernel would otherwise read out of bounds, naming the argument."""
    x = torch.zeros(1, 2, 16, 24, device=DEVICE)
    A = torch.rand(1, 1, 16, 24, device=DEVICE)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    tmax, tmin = naive.tile_stats(A, 8)
    op = torch.ops.yoda.masked_step_triton
    with pytest.raises(ValueError, match="tile_max must have shape"):
        op(x, x, x, A, tmax[:, :1], tmin, 0.5, cf, False, 0, 0, None, 8)
    with pytest.raises(ValueError, match="A must be"):
        op(x, x, x, A[..., :8], None, None, 0.5, cf, False, 0, 0, None, 8)
    with pytest.raises(ValueError, match="tile must be one of"):
        op(x, x, x, None, None, None, 0.5, cf, False, 0, 0, None, 12)
    with pytest.raises(ValueError, match="model_out must have the shape"):
        op(x, x[:, :1], x, None, None, None, 0.5, cf, False, 0, 0, None, 8)


# what the C++ ops refuse (test_masked_step.CPP_BAD), given to the Triton op: a change of the good arguments and
# the argument the message must name
TRITON_BAD = [
    ("model_out-shape", dict(model_out=lambda t: t[:, :, :8]), "model_out must have the shape of x"),
    ("c-dtype", dict(c=lambda t: t.half()), "c has dtype"),
    ("x-float64", dict(x=lambda t: t.double(), model_out=lambda t: t.double(), c=lambda t: t.double()),
     "x must be float32, float16 or bfloat16"),
    ("A-shape", dict(A=lambda t: t[:, :, :8]), "A must be"),
    ("A-float64", dict(A=lambda t: t.double()), "A must be float32"),
    ("tile_max-shape", dict(tile_max=lambda t: t[:, :, :1]), "tile_max must have shape"),
    ("tile_max-alone", dict(tile_min=lambda t: None), "both tile_max and tile_min"),
    ("tile_min-dtype", dict(tile_min=lambda t: t.double()), "tile_min must have shape"),
    ("noise-dtype", dict(noise=lambda t: t.half()), "noise has dtype"),
    ("tile-24", dict(tile=lambda t: 24), "tile must be one of"),
    ("coefs-3", dict(coefs=lambda t: [1.0, 2.0, 3.0]), "coefs must be 10 finite floats"),
    ("coefs-inf", dict(coefs=lambda t: [1.0, float("inf")] + [0.25] * 8), "coefs must be 10 finite floats"),
    ("seed", dict(seed=lambda t: 2**32), r"seed must be in \[0, 2\*\*32 - 1\]"),
    ("step", dict(step=lambda t: -1), "step must be in"),
    ("tau-nan", dict(tau=lambda t: float("nan")), "tau must not be NaN"),
]


@pytest.mark.parametrize("change, match", [pytest.param(c, m, id=n) for n, c, m in TRITON_BAD])
def test_the_op_checks_what_the_cpp_op_checks(change, match):
    """torch.ops.yoda.masked_step_triton called as an op (directly, under a dispatch mode or in a compiled graph;
    no public entry point in front) refuses what the C++ op refuses, naming the argument: a seed of 2**32 ran as
    seed 0, a float16 c or noise was read as the state's dtype, a NaN tau made every pixel inactive. The public
    entry point's plain eager call takes the unchecked launch (checked before it)."""
    x = torch.rand(1, 3, 16, 20, device=DEVICE)
    A = torch.rand(1, 1, 16, 20, device=DEVICE)
    tmax, tmin = naive.tile_stats(A, 16)
    args = dict(x=x, model_out=x.clone(), c=x.clone(), A=A, tile_max=tmax, tile_min=tmin, tau=0.5,
                coefs=yk.step_coefficients(0.3, 0.45), clip=False, seed=0, step=0, noise=torch.randn_like(x), tile=16)
    for k, f in change.items():
        args[k] = f(args[k])
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.yoda.masked_step_triton(*args.values())


def test_the_other_ops_check_as_the_cpp_ops():
    """masked_combine_triton, masked_q_sample_triton and tile_stats_triton as ops: what csrc/common.h refuses."""
    x = torch.rand(1, 3, 8, 8, device=DEVICE)
    cf = [0.5, 0.5, 0.0, 0.0, 0.0, 0.5, 0.5]  # cx, cd0, cd1, cd2, sigma, la, lb
    combine = torch.ops.yoda.masked_combine_triton
    with pytest.raises(ValueError, match="d2 is given without d1"):
        combine(x, x, None, x, x, None, None, None, 0.5, cf, 0, 0, None, 8)
    with pytest.raises(ValueError, match=r"coefs: cd1 = 0.25 but d1 is not given"):
        combine(x, x, None, None, x, None, None, None, 0.5, [0.5, 0.5, 0.25, 0.0, 0.0, 0.5, 0.5], 0, 0, None, 8)
    with pytest.raises(TypeError, match="d1 has dtype"):
        combine(x, x, x.half(), None, x, None, None, None, 0.5, cf, 0, 0, None, 8)
    with pytest.raises(ValueError, match="seed must be in"):
        combine(x, x, None, None, x, None, None, None, 0.5, cf, -1, 0, None, 8)
    v = torch.full((1,), 0.5, device=DEVICE)
    q = torch.ops.yoda.masked_q_sample_triton
    with pytest.raises(TypeError, match="noise has dtype"):
        q(x, x, x.half(), None, v, v, v)
    with pytest.raises(ValueError, match=r"tau must be a float tensor of shape \(1,\)"):
        q(x, x, x, None, v, v, v.long())
    with pytest.raises(ValueError, match=r"A must be \(B, 1, H, W\) or \(B, H, W\)"):
        q(x, x, x, x, v, v, v)
    with pytest.raises(TypeError, match="A must be float32"):
        torch.ops.yoda.tile_stats_triton(x[:, :1].double(), 8)
    with pytest.raises(ValueError, match="tile must be one of"):
        torch.ops.yoda.tile_stats_triton(x[:, :1], 4)
    good = combine(x, x, None, None, x, None, None, None, 0.5, cf, 0, 0, None, 8)  # the checks pass what is right
    assert torch.equal(good, naive.masked_combine(x, x, None, None, x, None, None, None, 0.5, cf, 0, 0, None, 8))


@pytest.mark.skipif(DEVICE == "cuda", reason="the interpreter's lock: CPU tensors")
def test_interpreter_launches_take_turns_across_threads():
    """Triton's interpreter keeps global state (the grid index, its patches of triton.language): launches from 4
    threads at once raised InterpreterError ("Did you forget to add @triton.jit ?") in 7 of 8 first calls here.
    A launch on CPU tensors now holds a lock: one in another thread waits for it, then gives the right bits."""
    import threading

    from yoda_kernels.triton import launch

    x = torch.rand(1, 3, 8, 8)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    call = lambda: torch.ops.yoda.masked_step_triton(x, x, x, None, None, None, 0.5, cf, False, 3, 1, None, 8)  # noqa
    call()  # warm: the interpreter's first launch of a kernel rewrites it
    t0 = time.perf_counter()
    call()
    took = time.perf_counter() - t0
    out = []
    worker = threading.Thread(target=lambda: out.append(call()))
    with launch.on_device(x):  # a launch in progress in this thread
        worker.start()
        worker.join(timeout=3 * took + 0.2)
        assert worker.is_alive() and out == []  # waiting for the lock
    worker.join()
    assert torch.equal(out[0], naive.masked_step(x, x, x, None, None, None, 0.5, cf, False, 3, 1, None, 8))


def test_signed_zeros_as_the_reference():
    """A step that draws no noise (sigma = lb = 0) skipped the reference's + sigma * z: an output of -0 stayed
    -0 where the reference (and C++ / CUDA) add 0 * 0 and give +0. Now the sign bits match, for both ops."""
    shape, tile = (1, 2, 8, 24), 8
    neg0 = torch.full(shape, -0.0, device=DEVICE)
    A = torch.zeros(1, 1, 8, 24, device=DEVICE)
    A[..., 12:] = 1.0  # half the pixels active: both branches, and both uniform strip paths
    cf = coefs_mod.step_coefficients(0.5, 1.0)  # the last DDIM step: no noise
    assert not coefs_mod.needs_noise(cf)
    args = (neg0, neg0, neg0, A, *naive.tile_stats(A, tile), TAU, cf, False, 0, 0, None, tile)
    got, ref = torch.ops.yoda.masked_step_triton(*args), naive.masked_step(*args)
    assert torch.equal(torch.signbit(got), torch.signbit(ref)) and not torch.signbit(ref).any()
    x = -torch.ones(shape, device=DEVICE)  # 0 * x = -0, + 1 * (-0) stays -0 without the + sigma * 0
    cc = [0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # cx, cd0, cd1, cd2, sigma, la, lb
    args = (x, neg0, None, None, neg0, A, *naive.tile_stats(A, tile), TAU, cc, 0, 0, None, tile)
    got, ref = torch.ops.yoda.masked_combine_triton(*args), naive.masked_combine(*args)
    assert torch.equal(torch.signbit(got), torch.signbit(ref)) and not torch.signbit(ref).any()
    # a weight of -0.0 (a user's coefs): Triton takes a -0.0 argument as +0.0 (under the interpreter), so the
    # reference's -0 * 0 = -0 (a -0 sum stays -0) became +0. The entry points take -0.0 as +0.0 on every backend.
    backends = [b for b in ("naive", "cpp", "triton") if b in yk.available_backends(DEVICE)]
    x = -torch.ones(shape, device=DEVICE)  # every term -0
    for j in range(contract.NUM_COEFS):
        cf = [0.0] * contract.NUM_COEFS
        cf[j] = -0.0
        signs = [torch.signbit(yk.masked_step(x, neg0, neg0, A, TAU, coefs=cf, backend=b)) for b in backends]
        assert all(torch.equal(s, signs[0]) for s in signs), (contract.COEF_NAMES[j], backends)
    for j in (0, 1, 4, 5, 6):  # cx, cd0, sigma, la, lb
        cc = [0.0] * contract.NUM_COMBINE_COEFS
        cc[j] = -0.0
        signs = [torch.signbit(yk.masked_combine(x, [neg0], neg0, A, TAU, coefs=cc, backend=b)) for b in backends]
        assert all(torch.equal(s, signs[0]) for s in signs), (j, backends)


def test_masked_q_sample_nan_attention_takes_c():
    """The raw op (the public one refuses NaN in A): a NaN pixel is not active, so it takes c as in the
    reference and the C++ / CUDA kernels; Triton loaded neither x0 nor c there and used 0."""
    shape = (1, 1, 2, 2)
    x0, c, z = (torch.full(shape, v, device=DEVICE) for v in (0.5, 0.75, 0.25))
    A = torch.tensor([[[[float("nan"), 1.0], [0.0, float("nan")]]]], device=DEVICE)
    one = torch.ones(1, device=DEVICE)
    args = (x0, c, z, A, one, one, torch.full((1,), 0.5, device=DEVICE))
    got = torch.ops.yoda.masked_q_sample_triton(*args)
    torch.testing.assert_close(got, naive.masked_q_sample(*args), rtol=0, atol=0)
    assert got.flatten().tolist() == [1.0, 0.75, 1.0, 1.0]  # c + z where NaN or inactive, x0 + z where active


def test_ops_are_opaque_to_torch_compile():
    """custom_op, not triton_op: a compiled graph calls the op (its eager launch keeps enable_fp_fusion=False and
    float32 scalars) instead of Inductor re-emitting the kernel launch; opcheck passes with the shared fakes."""
    from torch._library.custom_ops import CustomOpDef

    for op in ops.OPS:
        assert isinstance(getattr(ytr, f"{op}_triton"), CustomOpDef), op
    x, o, c, A, z = _inputs((1, 1, 8, 16), seed=11)
    cf = coefs_mod.step_coefficients(0.5, 0.6)
    torch.library.opcheck(torch.ops.yoda.masked_step_triton.default,
                          (x, o, c, A, *naive.tile_stats(A, 8), TAU, cf, False, 1, 2, z, 8))
    torch.library.opcheck(torch.ops.yoda.tile_stats_triton.default, (A, 8))


def test_eager_calls_launch_directly_and_compiled_calls_take_the_op():
    """In a plain eager call the public ops call the Triton launch function itself (the custom_op's dispatch costs
    as much again as the launch's Python); under torch.compile, torch.jit.trace, vmap and dispatch modes, and for
    tensor subclasses such as fake tensors, they take the op (a fake tensor's output comes from the op's fake)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, o, c, A, z = _inputs((1, 1, 8, 16), seed=12)
    for op in ops.OPS:
        assert ops._impl(op, "triton", x) is ytr.EAGER[f"{op}_triton"], op
        assert ops._impl(op, "triton", torch.nn.Parameter(x)) is getattr(torch.ops.yoda, f"{op}_triton"), op
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        assert ops._impl("masked_step", "triton", fx) is torch.ops.yoda.masked_step_triton
        out = ops._impl("masked_step", "triton", fx)(fx, fx, fx, None, None, None, TAU,
                                                      coefs_mod.step_coefficients(0.5, 0.6), False, 0, 0, None, 8)
        assert type(out) is type(fx) and out.shape == x.shape and out.dtype == x.dtype
    seen = []

    def step(x, o, c):  # without A: no tile statistics, whose NaN check would break the graph
        seen.append(ops._impl("masked_step", "triton", x))
        return yk.masked_step(x, o, c, None, ab_t=0.5, ab_prev=0.6, noise=z, tile=8, backend="triton")

    got = torch.compile(step, backend="eager", fullgraph=True)(x, o, c)
    assert seen == [torch.ops.yoda.masked_step_triton]
    torch.testing.assert_close(got, step(x, o, c), rtol=0, atol=0)
    assert seen[-1] is ytr.EAGER["masked_step_triton"]

    # what must see the op: a dispatch mode (flop counters, debug modes), torch.jit.trace, vmap's batched tensors
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen():
        step(x, o, c)
    assert seen[-2] is torch.ops.yoda.masked_step_triton and seen[-1] == "yoda.masked_step_triton.default"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        traced = torch.jit.trace(lambda x: step(x, o, c), (x,), check_trace=False)
    # (the tracer cannot record the op's Scalar[] coefs: it traces the reference, the same bits in torch ops)
    assert not any(n.kind().startswith("yoda::") for n in traced.graph.nodes())
    x2 = torch.randn_like(x)
    torch.testing.assert_close(traced(x2), step(x2, o, c), rtol=0, atol=0)
    # an op without Scalar[] arguments is recorded as itself: a launch the tracer cannot see would be baked in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda a: yk.tile_stats(a, 8, backend="triton")[0], (A,), check_trace=False)
    assert any(n.kind() == "yoda::tile_stats_triton" for n in traced.graph.nodes())
    A2 = torch.rand_like(A)
    torch.testing.assert_close(traced(A2), yk.tile_stats(A2, 8, backend="naive")[0], rtol=0, atol=0)
    xs = torch.stack([x[0], x2[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's warning that the op has no batching rule
        batched = torch.vmap(lambda xi: step(xi[None], o, c)[0])(xs)
    torch.testing.assert_close(batched, torch.cat([step(x, o, c), step(x2, o, c)]), rtol=0, atol=0)


def test_triton_that_cannot_register_leaves_the_other_backends(monkeypatch):
    """With torch 2.4-2.6, torch.library.custom_op refuses the Triton ops' annotations (a ValueError, not an
    ImportError): available_backends() and every backend choice then raised. Such a failure is warned of once
    and Triton counts as absent, as without triton."""
    def broken():
        raise ValueError("Unsupported type annotation list[float]. It is not a type.")

    monkeypatch.setattr(ops, "_triton_module", broken)
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(UserWarning, match=r"the Triton kernels could not be registered \(ValueError: Unsupported "
                                         r"type annotation"):
        assert ops.available_backends("cpu") == ["naive", "cpp"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        assert not ops.triton_available()
        assert ops.resolve_backend("auto", torch.device("cpu")) == "cpp"


def test_bfloat16_subnormals_are_read_exactly():
    """Triton's interpreter widened bfloat16 subnormals wrongly: a state of 1e-39 came out 4.4e-39, an A of -9e-41
    became -0.0 (a tile's max, and a pixel active at tau 0 that naive leaves inactive). The loads now widen bf16 by
    its bits under the interpreter; every op equals the reference on subnormal states, A and noise."""
    g = torch.Generator().manual_seed(0)
    tiny = torch.tensor(1e-38)

    def sub(*shape):
        return (torch.randn(shape, generator=g) * tiny).bfloat16().to(DEVICE)

    x, o, c, z = (sub(1, 2, 9, 13) for _ in range(4))
    A = (torch.randn(1, 1, 9, 13, generator=g) * 1e-39).bfloat16().to(DEVICE)
    assert ((A != 0) & (A.float().abs() < 1.2e-38)).any() and ((x != 0) & (x.float().abs() < 1.2e-38)).any()
    k = yk.step_coefficients(0.3, 0.45)
    runs = {
        "tile_stats": lambda be: torch.stack(tuple(yk.tile_stats(A, 8, backend=be))),
        "masked_step": lambda be: yk.masked_step(x, o, c, A, 0.0, coefs=k, noise=z, tile=8, backend=be),
        "masked_combine": lambda be: yk.masked_combine(x, [o, x], c, A, 0.0, coefs=[k.cx, 0.5, 0.5, 0, k.sigma, k.la,
                                                                                      k.lb], noise=z, tile=8,
                                                       backend=be),
        "masked_q_sample": lambda be: yk.masked_q_sample(x, c, z, A, 0.0, 0.5, backend=be),
    }
    for name, run in runs.items():
        assert torch.equal(run("triton"), run("naive")), name
