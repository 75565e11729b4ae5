"""The noise stream (DESIGN.md §9): Philox 4x32-10 against Random123's published known-answer vectors,
the C++ stream (csrc/philox.h) word for word and uniform for uniform against the PyTorch reference
(yoda_kernels/philox.py), normals within 1e-6, the counter / lane map, determinism, seed and step
sensitivity, layout and tile independence, and the statistics of the normals; every backend's noise is
read out through masked_step with coefficients that make the output equal z."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import philox
from yoda_kernels import testing as T

try:
    from yoda_kernels import _C
except ImportError:  # the extension is optional; its tests skip
    _C = None
needs_C = pytest.mark.skipif(_C is None, reason="C++ extension not built")

# Random123 tests/kat_vectors (github.com/DEShawResearch/random123): rounds, counter[4], key[2] -> output[4]
KAT = [
    (10, (0x00000000,) * 4, (0x00000000,) * 2, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
]
KAT_IDS = ["zeros-10", "ones-10", "pi-10", "ones-7", "pi-7"]

# z = out: coefs with sigma = 1 and every other coefficient 0 (x_prev = 0 x0 + 0 x + 0 eps + 1 z, exact)
Z_COEFS = [0.0] * 7 + [1.0, 0.0, 0.0]


def _z(backend, shape, seed, step, device="cpu", layout="contiguous", tile=16):
    """The noise a backend draws for (seed, step), read out through masked_step."""
    x = T.with_layout(torch.zeros(shape, device=device), layout)
    return yk.masked_step(x, x, x, None, coefs=Z_COEFS, seed=seed, step=step, tile=tile, backend=backend)


def _fused_backends(device="cpu"):
    return [b for b in yk.available_backends(device) if b != "naive"]


def test_reference_kat_zeros():
    """philox.py takes counters (g, 0, 0, 0), so only the all-zero vector applies to it directly; the other
    vectors check csrc/philox.h, and the two implementations are compared word for word below."""
    rounds, ctr, key, want = KAT[0]
    got = philox.philox4x32(key[0], key[1], torch.tensor([ctr[0]]), rounds)
    assert tuple(int(w) for w in got) == want


@needs_C
@pytest.mark.parametrize("rounds, ctr, key, want", KAT, ids=KAT_IDS)
def test_cpp_kat(rounds, ctr, key, want):
    assert _C.philox4x32(*ctr, *key, rounds) == want


COUNTERS = [0, 1, 2, 3, 4, 1000, 2**20 + 7, 2**31 - 1, 2**31, 2**32 - 1]
KEYS = [(0, 0), (1, 0), (0, 1), (12345, 678), (2**32 - 1, 2**31 - 1), (0x9E3779B9, 0x3B67AE85)]  # step < 2**31 (the stream's range)


@needs_C
@pytest.mark.parametrize("seed, step", KEYS)
def test_cpp_words_and_uniforms_bit_exact(seed, step):
    g = torch.tensor(COUNTERS + list(range(5, 200, 7)))
    ref = philox.philox4x32(seed, step, g)
    for i, c in enumerate(g.tolist()):
        words = _C.philox4x32(c, 0, 0, 0, seed, step)
        assert words == tuple(int(r[i]) for r in ref), f"counter {c}"
        for w in words:
            u_ref = philox.uint_to_uniform(torch.tensor([w]))
            assert torch.tensor(_C.uint_to_uniform(w), dtype=torch.float32).view(torch.int32) == u_ref.view(torch.int32)


def test_uniform_edges():
    """Triton's uint_to_uniform_float: int32 bitcast, negatives folded (-s - 1), times 4.6566127342e-10."""
    u = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**31 + 5])
    got = philox.uint_to_uniform(u)
    assert got[0] == 0 and got[4] == 0  # 0 and 0xffffffff (-1 -> 0)
    assert got[1] == torch.tensor(philox.UNIFORM_SCALE, dtype=torch.float32)  # 1 -> the scale itself
    assert 0 < got[2] < 1 and got[2] == got[3]  # INT32_MAX and INT32_MIN (-> INT32_MAX) give the largest
    assert float(got[2]) == pytest.approx(1.0, abs=2e-7)
    if _C is not None:
        for v, r in zip(u.tolist(), got.tolist()):
            assert _C.uint_to_uniform(v) == r


@needs_C
def test_cpp_normals_within_1e6():
    g = torch.arange(0, 4096 * 37, 37)
    ref = torch.stack(philox.randn4x(3, 9, g), dim=1)
    got = torch.tensor([_C.randn4(3, 9, c) for c in g.tolist()], dtype=torch.float32)
    assert (got - ref).abs().max() <= T.NOISE_ATOL


# H % 4 = 0, 1, 2, 3 with B * C > 1: the row-group count ceil(H / 4) sets where image (b, c) starts in the
# counter space, and a wrong count (H // 4 + 1 is right for H % 4 != 0 only) shifts every image but the first
MAP_SHAPES = [(2, 3, 4, 5), (2, 3, 5, 5), (2, 3, 6, 5), (2, 3, 7, 5), (3, 2, 8, 3)]


def _lane_map_f(seed, step, shape):
    """The module docstring's map written out element by element: z[b, c, y, x] = lane y % 4 of
    randn4x(((b C + c) ceil(H / 4) + y // 4) W + x)."""
    B, C, H, W = shape
    groups = math.ceil(H / 4)
    idx = [(b, c, y, x) for b in range(B) for c in range(C) for y in range(H) for x in range(W)]
    g = torch.tensor([((b * C + c) * groups + y // 4) * W + x for b, c, y, x in idx])
    lanes = torch.stack(philox.randn4x(seed, step, g))  # (4, n)
    lane = torch.tensor([y % 4 for _, _, y, _ in idx])
    return lanes[lane, torch.arange(len(idx))].view(shape)


@pytest.mark.parametrize("shape", MAP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_counter_and_lane_map(shape):
    """Every element (b, c, y, x) of the reference noise is lane y % 4 of randn4x(g), g = ((b C + c) ceil(H/4) +
    y // 4) W + x, for each H % 4 and several images and channels."""
    assert torch.equal(philox.noise(4, 2, shape), _lane_map_f(4, 2, shape))
    assert philox.num_groups(shape) == shape[0] * shape[1] * math.ceil(shape[2] / 4) * shape[3]


def _noise_params():
    out = []
    for backend in _fused_backends():
        # H % 4 = 1, 0, 2, 3; the Triton interpreter takes ~2 s for 1x3x37x53, so it runs one image of that
        for shape in [(1 if backend == "triton" else 2, 3, 37, 53)] + [(2, 3, h, 11) for h in (36, 38, 39)]:
            out.append(pytest.param(backend, shape, id=f"{backend}-{'x'.join(map(str, shape))}"))
    return out


@pytest.mark.parametrize("backend, shape", _noise_params())
def test_backend_noise_equals_reference(backend, shape):
    ref = philox.noise(5, 6, shape)
    z = _z(backend, shape, 5, 6)
    assert (z - ref).abs().max() <= T.NOISE_ATOL
    assert torch.equal(z, _z(backend, shape, 5, 6))  # same seed and step: the same bits on every call


@pytest.mark.skipif("cpp" not in yk.available_backends("cpu"), reason="C++ extension not built")
def test_cpp_noise_independent_of_layout_and_tile():
    """The noise is a function of the logical element index only: channels-last / strided x and the tile
    size do not change it, bit for bit."""
    shape = (2, 3, 37, 53)
    base = _z("cpp", shape, 8, 9)
    for layout in ("channels_last", "strided"):
        assert torch.equal(_z("cpp", shape, 8, 9, layout=layout), base)
    for tile in (8, 32):
        assert torch.equal(_z("cpp", shape, 8, 9, tile=tile), base)


@pytest.mark.parametrize("backend", ["naive"] + [b for b in _fused_backends() if b != "triton"])
def test_seeds_and_steps_differ(backend):
    shape = (1, 2, 16, 16)
    a = _z(backend, shape, 1, 1)
    for seed, step in [(2, 1), (1, 2), (2**32 - 1, 1), (1, 2**31 - 1)]:
        b = _z(backend, shape, seed, step)
        assert (a != b).float().mean() > 0.99, (seed, step)
    # the four lanes of one call are four different numbers (rows 0..3 of a column differ)
    assert (a[0, 0, 0] != a[0, 0, 1]).all()


@pytest.mark.parametrize("backend", ["naive"] + [b for b in _fused_backends() if b != "triton"])
def test_normal_statistics(backend):
    """n = 98304 draws: mean, variance, P(|z| < 1) and P(|z| < 2) within 5 standard errors of N(0, 1)'s,
    and the lag-1 correlation along rows and columns within 5 / sqrt(n)."""
    z = _z(backend, (2, 3, 128, 128), 2024, 17).double()
    n = z.numel()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    for k in (1.0, 2.0):
        p = math.erf(k / math.sqrt(2))
        assert abs((z.abs() < k).double().mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    for dim in (2, 3):
        a, b = z.narrow(dim, 0, z.shape[dim] - 1), z.narrow(dim, 1, z.shape[dim] - 1)
        assert abs((a * b).mean()) < 5 / math.sqrt(a.numel())


# ---- the block (SIMD) noise path of csrc/cpu/normals.h, which masked_step's C++ kernel draws from ----------

needs_block = pytest.mark.skipif(_C is None or not hasattr(_C, "randn4_block"), reason="C++ block noise not built")


def _words(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64)


def _edge_words():
    """Word pairs (a, b) -> (u1, u2) at the edges of Box-Muller's domain, every u1 edge with every u2 edge:
    u1 = 0 (words 0 and 0xffffffff; clamped to 1e-7), around the clamp (u1 ~ 1e-7: words 200..230 and their
    negative twins), the smallest nonzero, the largest (< 1: 0x7fffffff, 0x80000000); u2 = 0, around 1/4, 1/2,
    3/4 (words near 2**29, 2**30, 3 * 2**29: th near pi/2, pi, 3 pi/2) and the largest (th just below 2 pi)."""
    u1 = [0, 0xFFFFFFFF, 1, 2, 0x7FFFFFFF, 0x80000000, 0x7FFFFFFE, 0xFFFFFFFE] + list(range(200, 231))
    u1 += [0xFFFFFFFF - w for w in range(200, 231)]
    u2 = [0, 0xFFFFFFFF, 1, 0x7FFFFFFF, 0x80000000, 0x7FFFFFC0]
    for c in (2**29, 2**30, 3 * 2**29):
        u2 += [c + d for d in range(-40, 41)]
    a = torch.tensor(u1, dtype=torch.int64).repeat_interleave(len(u2))
    b = torch.tensor(u2, dtype=torch.int64).repeat(len(u1))
    return a, b


def _u32_bytes(w: torch.Tensor) -> bytes:
    return w.to(torch.int64).numpy().astype("uint32").tobytes()


def _f32(buf: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(buf, dtype=np.float32).copy())


def _box_muller_f64(a: torch.Tensor, b: torch.Tensor):
    """The float32 reference formula, rounding to float32 exactly where it does, with log / cos / sin
    evaluated in float64 by numpy (libm's double functions, < 1 double ulp) and rounded once: the correctly
    rounded float32 value of each operation up to a double-rounding case of probability ~2^-28 per call.
    (torch's float64 cos / sin on CPU are not accurate enough for this: they miss on ~15 % of elements.)"""
    f32 = np.float32
    u1 = np.maximum(philox.uint_to_uniform(a).numpy(), f32(1.0e-7))
    th = f32(philox.TWO_PI) * philox.uint_to_uniform(b).numpy()
    L = np.log(u1.astype(np.float64)).astype(f32)
    r = np.sqrt(f32(-2.0) * L)
    c = r * np.cos(th.astype(np.float64)).astype(f32)
    s = r * np.sin(th.astype(np.float64)).astype(f32)
    return torch.from_numpy(c), torch.from_numpy(s)


def _ulps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x - y| in float32 ulps of y (finite, same sign or zero)."""
    spacing = torch.nextafter(y.abs(), torch.tensor(float("inf"))) - y.abs()
    return (x.double() - y.double()).abs() / spacing.double()


@needs_block
@pytest.mark.parametrize("g0, n", [(0, 0), (0, 1), (5, 7), (1000, 8), (123, 37), (2**32 - 5, 13), (2**31 - 3, 64)])
def test_block_words_bit_exact(g0, n):
    """Block Philox (AVX2 over 8 counters plus a scalar tail) = the reference, word for word, for sizes that
    are and are not multiples of 8 and counters that wrap around 2**32."""
    seed, step = 0x9E3779B9, 2**31 - 1
    w = torch.from_numpy(np.frombuffer(_C.philox_block(seed, step, g0, n), dtype=np.uint32).astype(np.int64))
    ref = philox.philox4x32(seed, step, (g0 + torch.arange(n)) & 0xFFFFFFFF)
    assert torch.equal(w.view(4, n), torch.stack(ref)), "philox_block words differ from philox.py"


@needs_block
def test_block_normals_correctly_rounded():
    """Block Box-Muller on 2**20 random word pairs and every pair of edge words equals the float64-evaluated,
    float32-rounded formula bit for bit (up to two double-rounding cases), and is never more than one ulp
    off it."""
    ea, eb = _edge_words()
    a = torch.cat([ea, _words(2**20, 1)])
    b = torch.cat([eb, _words(2**20, 2)])
    zc, zs = (_f32(t) for t in _C.box_muller_block(_u32_bytes(a), _u32_bytes(b)))
    rc, rs = _box_muller_f64(a, b)
    assert torch.isfinite(zc).all() and torch.isfinite(zs).all()
    differ = int((zc != rc).sum() + (zs != rs).sum())
    assert differ <= 2, f"{differ} of {2 * a.numel()} normals not bit-identical to the float64 formula"
    assert max(float(_ulps(zc, rc).max()), float(_ulps(zs, rs).max())) <= 1.0
    # the edges themselves, bit for bit: u2 = 0 gives (r, +0); u1 = 0 clamps to 1e-7, r = sqrt(-2 log 1e-7)
    n_edge = ea.numel()
    assert torch.equal(zc[:n_edge], rc[:n_edge]) and torch.equal(zs[:n_edge], rs[:n_edge])
    u0 = (ea == 0) & (eb == 0)
    assert (zs[:n_edge][u0] == 0).all() and not torch.signbit(zs[:n_edge][u0]).any()
    assert float(zc[:n_edge][u0][0]) == pytest.approx(math.sqrt(-2 * math.log(1e-7)), rel=1e-6)


@needs_block
def test_block_normals_vs_libm_scalar_path():
    """The scalar path (philox.h box_muller: glibc logf / cosf / sinf, which are not always correctly
    rounded) and the block path agree within NOISE_ATOL everywhere; they differ in the last bits on ~1.5 %
    of the normals with glibc 2.36 (one ulp of log, cos or sin, scaled by r), and where they do, the block
    path is the correctly rounded one (test above)."""
    a, b = _words(2**18, 3), _words(2**18, 4)
    fast = [_f32(t) for t in _C.box_muller_block(_u32_bytes(a), _u32_bytes(b))]
    libm = [_f32(t) for t in _C.box_muller_block(_u32_bytes(a), _u32_bytes(b), path="libm")]
    differ = sum(int((f != s).sum()) for f, s in zip(fast, libm))
    assert differ <= 0.05 * 2 * a.numel(), f"{differ} normals differ from the libm path"
    for f, s in zip(fast, libm):
        assert (f - s).abs().max() <= T.NOISE_ATOL


@needs_block
@pytest.mark.parametrize("seed, step, g0, n", [(3, 9, 0, 4099), (2**32 - 1, 2**31 - 1, 2**32 - 100, 333)])
def test_block_randn4_vs_reference(seed, step, g0, n):
    """The four lanes of the block path against philox.randn4x (PyTorch float32) within NOISE_ATOL, and
    against the scalar C++ randn4 (same words, libm Box-Muller) within NOISE_ATOL."""
    z = _f32(_C.randn4_block(seed, step, g0, n)).view(4, n)
    g = (g0 + torch.arange(n)) & 0xFFFFFFFF
    ref = torch.stack(philox.randn4x(seed, step, g))
    assert (z - ref).abs().max() <= T.NOISE_ATOL
    scalar = torch.tensor([_C.randn4(seed, step, c) for c in g[:512].tolist()], dtype=torch.float32).T
    assert (z[:, :512] - scalar).abs().max() <= T.NOISE_ATOL


@needs_block
@pytest.mark.skipif("cpp" not in yk.available_backends("cpu"), reason="C++ extension not built")
@pytest.mark.parametrize("shape", [(1, 2, 37, 53), (2, 1, 6, 9), (1, 1, 7, 40), (1, 1, 4, 8), (2, 3, 8, 5)])
@pytest.mark.parametrize("tile", [8, 16, 32])
def test_cpp_step_noise_is_the_block_path(shape, tile):
    """masked_step's C++ noise is randn4_block's, bit for bit, placed by the counter / lane map -- through
    full 4-row groups and ragged last groups of 1, 2, 3 rows (H % 4), and tile segments narrower than 8."""
    B, C, H, W = shape
    n = philox.num_groups(shape)
    lanes = _f32(_C.randn4_block(11, 12, 0, n)).view(4, B, C, (H + 3) // 4, W)
    want = lanes.permute(1, 2, 3, 0, 4).reshape(B, C, -1, W)[:, :, :H]
    assert torch.equal(_z("cpp", shape, 11, 12, tile=tile), want)


@needs_block
def test_baseline_build_gives_the_same_bits():
    """The baseline-ISA build of the block Box-Muller (what CPUs without AVX2 run) equals the dispatched clone
    (AVX2 here) bit for bit: the same IEEE operations in the same order, no FMA contraction."""
    ea, eb = _edge_words()
    a = _u32_bytes(torch.cat([ea, _words(2**18, 5)]))
    b = _u32_bytes(torch.cat([eb, _words(2**18, 6)]))
    block, baseline = _C.box_muller_block(a, b), _C.box_muller_block(a, b, path="baseline")
    assert block == baseline


@needs_block
def test_block_isa_dispatch():
    """The block path runs the AVX2 clone wherever the CPU has AVX2 (x86-64 Linux builds)."""
    import platform

    isa = _C.noise_isa()
    assert isa in ("avx2", "default")
    if platform.machine() == "x86_64" and platform.system() == "Linux":
        with open("/proc/cpuinfo") as f:
            has_avx2 = " avx2" in f.read()
        assert (isa == "avx2") == has_avx2


@needs_block
def test_block_hook_errors():
    with pytest.raises(ValueError, match="same number of uint32"):
        _C.box_muller_block(b"\0" * 8, b"\0" * 4)
    with pytest.raises(ValueError, match="path must be"):
        _C.box_muller_block(b"\0" * 4, b"\0" * 4, path="avx512")
    with pytest.raises(ValueError, match="n must be"):
        _C.randn4_block(0, 0, 0, -1)
    for bad in (2**32, 2**64 + 1, -1):  # out of uint32 range, never masked into it
        with pytest.raises(ValueError, match="uint32"):
            _C.philox_block(bad, 0, 0, 4)
