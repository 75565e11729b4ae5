"""The noise stream (DESIGN.md §9, version 2): Philox 4x32-10 against Random123's published known-answer vectors;
every implementation of the normal transform (the PyTorch reference yoda_kernels/philox.py, the scalar C++
csrc/philox.h, the SIMD block path csrc/cpu/normals.cpp in each ISA build, Triton through its interpreter)
bit for bit against the others, on random words and on the transform's edge words; the reference's exact fma
and sqrt against exact rational arithmetic; the transform against exact Box-Muller of the same uniforms (max
error) and against N(0, 1) (moments, KS distance, tails); the counter / lane map, determinism, seed and step
sensitivity, layout and tile independence. Every backend's noise is read out through masked_step with
coefficients that make the output equal z."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import philox
from yoda_kernels import testing as T

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

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
            wt = torch.tensor([w])
            assert _C.uniforms(w) == (float(philox.uniform(wt)), float(philox.angle(wt)))


def test_uniform_edges():
    """u1 = f32(w | 1) 2^-32 lies in (0, 1]: 2^-32 for w = 0 and 1, exactly 1 where f32 rounds w | 1 up to 2^32
    (w >= 0xffffff80), just below 1 under that; t = f32(int32(w << 1)) 2^-32 lies in [-1/2, 1/2] from bits
    30..0 only (bit 31 picks the half circle), rounding to +-1/2 at the ends."""
    w = torch.tensor([0, 1, 0xFFFFFF7F, 0xFFFFFF80, 0xFFFFFFFF, 2**31])
    u = philox.uniform(w)
    assert u[0] == u[1] == 2.0**-32
    assert u[2] == 1 - 2.0**-24 and u[3] == 1.0 and u[4] == 1.0 and u[5] == 0.5
    t = philox.angle(torch.tensor([0, 2**31, 2**30, 2**30 - 1, 2**30 + 1, 2**31 + 2**30, 2**31 - 1]))
    assert t.tolist() == [0.0, 0.0, -0.5, 0.5, -0.5, -0.5, -(2.0**-31)]  # 2^31 - 2 and -2^31 + 2 round to +-2^31
    if _C is not None:
        for v in w.tolist():
            assert _C.uniforms(v)[0] == float(philox.uniform(torch.tensor([v])))


@needs_C
def test_cpp_normals_bit_exact():
    g = torch.arange(0, 4096 * 37, 37)
    ref = torch.stack(philox.randn4(3, 9, g), dim=1)
    got = torch.tensor([_C.randn4(3, 9, c) for c in g.tolist()], dtype=torch.float32)
    assert torch.equal(got, ref)


# H % 4 = 0, 1, 2, 3 with B * C > 1: the row-group count ceil(H / 4) sets where image (b, c) starts in the
# counter space, and a wrong count (H // 4 + 1 is right for H % 4 != 0 only) shifts every image but the first
MAP_SHAPES = [(2, 3, 4, 5), (2, 3, 5, 5), (2, 3, 6, 5), (2, 3, 7, 5), (3, 2, 8, 3)]


def _lane_map_f(seed, step, shape):
    """The module docstring's map written out element by element: z[b, c, y, x] = lane y % 4 of
    randn4(((b C + c) ceil(H / 4) + y // 4) W + x)."""
    B, C, H, W = shape
    groups = math.ceil(H / 4)
    idx = [(b, c, y, x) for b in range(B) for c in range(C) for y in range(H) for x in range(W)]
    g = torch.tensor([((b * C + c) * groups + y // 4) * W + x for b, c, y, x in idx])
    lanes = torch.stack(philox.randn4(seed, step, g))  # (4, n)
    lane = torch.tensor([y % 4 for _, _, y, _ in idx])
    return lanes[lane, torch.arange(len(idx))].view(shape)


@pytest.mark.parametrize("shape", MAP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_counter_and_lane_map(shape):
    """Every element (b, c, y, x) of the reference noise is lane y % 4 of randn4(g), g = ((b C + c) ceil(H/4) +
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
    assert torch.equal(z, ref)  # the same bits as the reference (Triton: through the interpreter)
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
    """Word pairs (a, b) at the edges of the transform, every radius edge with every angle edge. Radius (a):
    f32(a | 1) at its smallest (0, 1), at powers of two and their neighbours (the exponent split's steps), around
    f32(sqrt(1/2)) 2^k (where the split moves z across sqrt(1/2) and e by one) and around 2^32 (0xffffff7f the
    largest u1 < 1; 0xffffff80.. round to u1 = 1, L = 0, clamped to 2^-100). Angle (b): t at 0, +-1/2 and their
    neighbours, with and without bit 31 (the half-circle flip)."""
    u1 = [0, 1, 2, 3, 0xFFFFFF7F, 0xFFFFFF80, 0xFFFFFFFE, 0xFFFFFFFF]
    for k in (1, 8, 23, 24, 25, 31):
        u1 += [2**k - 1, 2**k, 2**k + 1]
    for k in (0, 7, 16, 24, 31):
        m = int(math.sqrt(0.5) * 2**(k + 1))
        u1 += [m - 1, m, m + 1]
    u2 = []
    for top in (0, 2**31):
        u2 += [top + d for d in (0, 1, 2**30 - 1, 2**30, 2**30 + 1, 2**31 - 1)]
    a = torch.tensor(u1, dtype=torch.int64).repeat_interleave(len(u2))
    b = torch.tensor(u2, dtype=torch.int64).repeat(len(u1))
    return a, b


def _u32_bytes(w: torch.Tensor) -> bytes:
    return w.to(torch.int64).numpy().astype("uint32").tobytes()


def _f32(buf: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(buf, dtype=np.float32).copy())


def _box_muller_f64(a: torch.Tensor, b: torch.Tensor):
    """Exact Box-Muller (float64) of the transform's own uniforms: r = sqrt(-2 log u1), angle pi t, negated
    cosine where bit 31 of b is set."""
    u1, t = philox.uniform(a).double(), philox.angle(b).double()
    r = torch.sqrt(-2 * torch.log(u1))
    sign = torch.where((b & 0x80000000) != 0, -1.0, 1.0)
    return r * torch.cos(math.pi * t) * sign, r * torch.sin(math.pi * t)


@needs_block
@pytest.mark.parametrize("g0, n", [(0, 0), (0, 1), (5, 7), (1000, 8), (123, 37), (2**32 - 5, 13), (2**31 - 3, 64)])
def test_block_words_bit_exact(g0, n):
    """Block Philox (AVX2 over 8 counters plus a scalar tail) = the reference, word for word, for sizes that
    are and are not multiples of 8 and counters that wrap around 2**32."""
    seed, step = 0x9E3779B9, 2**31 - 1
    w = torch.from_numpy(np.frombuffer(_C.philox_block(seed, step, g0, n), dtype=np.uint32).astype(np.int64))
    ref = philox.philox4x32(seed, step, (g0 + torch.arange(n)) & 0xFFFFFFFF)
    assert torch.equal(w.view(4, n), torch.stack(ref)), "philox_block words differ from philox.py"


def _word_pairs():
    ea, eb = _edge_words()
    return torch.cat([ea, _words(2**20, 1)]), torch.cat([eb, _words(2**20, 2)])


@needs_block
@pytest.mark.parametrize("path", ["block", "baseline", "scalar"])
def test_cpp_transform_bit_exact(path):
    """Every C++ build of the transform -- the dispatched SIMD clone (AVX-512 or AVX2 + FMA), the baseline-ISA
    build (libm's exact fmaf), philox.h's scalar function -- equals the PyTorch reference bit for bit on 2**20
    random word pairs and every pair of edge words."""
    a, b = _word_pairs()
    zc, zs = (_f32(t) for t in _C.box_muller_block(_u32_bytes(a), _u32_bytes(b), path=path))
    rc, rs = philox.normal_pair(a, b)
    assert torch.equal(zc, rc) and torch.equal(zs, rs)


def test_transform_error_vs_exact_box_muller():
    """The float32 transform against exact Box-Muller of the same uniforms: within 1e-6 everywhere (measured
    8.2e-7 over these pairs; DESIGN.md §9), the radius within 4e-7 relative; u1 = 1 gives r = 2^-50 (L clamped
    to 2^-100), not 0; the largest radius is sqrt(64 ln 2) = 6.66 (u1 = 2^-32)."""
    a, b = _word_pairs()
    na, nb = philox.normal_pair(a, b)
    ea, eb = _box_muller_f64(a, b)
    err = max(float((na.double() - ea).abs().max()), float((nb.double() - eb).abs().max()))
    assert err <= 1e-6, err
    r = torch.hypot(na.double(), nb.double())
    r_exact = torch.hypot(ea, eb)
    big = r_exact > 1e-3
    assert float(((r - r_exact).abs() / r_exact)[big].max()) <= 4e-7
    one = philox.uniform(a) == 1.0
    assert one.any() and torch.allclose(r[one], torch.tensor(2.0**-50, dtype=torch.float64), rtol=1e-6)
    assert float(r.max()) == pytest.approx(math.sqrt(64 * math.log(2)), rel=1e-6)
    assert bool(torch.isfinite(na).all() and torch.isfinite(nb).all())


def test_polynomials_against_their_functions():
    """The three polynomials on a fine grid of their ranges, evaluated as the transform does (float32, exact fma):
    -2 log(1 + f) / f within 2.5e-7 relative on [sqrt(1/2) - 1, sqrt(2) - 1], sin(pi t) and cos(pi t) within
    2e-7 absolute on [-1/2, 1/2] (fit errors 1.7e-7, 3.3e-9, 5.3e-8 plus float32 rounding)."""
    f = torch.linspace(math.sqrt(0.5) - 1, math.sqrt(2) - 1, 200001, dtype=torch.float32)
    f = f[f != 0]
    p = philox._horner(philox.LOG_P, f).double()
    exact = -2 * torch.log1p(f.double()) / f.double()
    assert float(((p - exact) / exact).abs().max()) <= 2.5e-7
    t = torch.linspace(-0.5, 0.5, 200001, dtype=torch.float32)
    t2 = t * t
    s = (t * philox._horner(philox.SIN_P, t2)).double()
    c = philox.fma32(t2, philox._horner(philox.COS_P, t2), torch.ones_like(t2)).double()
    assert float((s - torch.sin(math.pi * t.double())).abs().max()) <= 2e-7
    assert float((c - torch.cos(math.pi * t.double())).abs().max()) <= 2e-7


def _exact_fma32(a: float, b: float, c: float) -> float:
    """The float32 nearest a * b + c, from exact rationals (ties to even)."""
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    g = np.float32(float(exact))
    cands = [np.nextafter(g, np.float32(-np.inf)), g, np.nextafter(g, np.float32(np.inf))]
    return float(min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.float32(v).view(np.uint32)) & 1)))


def test_fma32_is_one_rounding():
    """philox.fma32 (float64 with round-to-odd) equals the correctly rounded a * b + c on random operands of mixed
    magnitudes, and on a double-rounding case: a = b = 1 + 2^-12 gives a * b = 1 + 2^-11 + 2^-24, exactly the
    midpoint between two float32 values; with c = +-2^-80 the exact sum lies just above / below it, float64
    rounds it onto the midpoint, and a plain float64 evaluation then rounds to even (wrong for +2^-80)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3000, generator=g) * 4
    b = torch.randn(3000, generator=g) * 4
    c = (torch.randn(3000, generator=g) * torch.logspace(-9, 2, 3000)).to(torch.float32)
    got = philox.fma32(a, b, c)
    want = torch.tensor([_exact_fma32(x, y, z) for x, y, z in zip(a.tolist(), b.tolist(), c.tolist())])
    assert torch.equal(got, want.to(torch.float32))
    h = torch.tensor([1.0 + 2.0**-12] * 2)
    tiny = torch.tensor([2.0**-80, -(2.0**-80)])
    got = philox.fma32(h, h, tiny)
    assert got.tolist() == [1.0 + 2.0**-11 + 2.0**-23, 1.0 + 2.0**-11]
    plain = (h.double() * h.double() + tiny.double()).to(torch.float32)
    assert plain[0] == 1.0 + 2.0**-11  # the double rounding fma32 avoids


def test_sqrt32_correctly_rounded():
    """philox.sqrt32 is the correctly rounded float32 square root (checked with exact rationals) on random values
    across the transform's range [2^-100, 45] and on squares of float32 values and their neighbours."""
    g = torch.Generator().manual_seed(4)
    v = torch.exp2(torch.rand(4000, generator=g) * 105.5 - 100).to(torch.float32)
    q = torch.rand(2000, generator=g).to(torch.float32) * 6.7
    sq = (q.double() ** 2).to(torch.float32)
    v = torch.cat([v, sq, torch.nextafter(sq, torch.full_like(sq, 100.0)), torch.nextafter(sq, torch.zeros_like(sq))])
    got = philox.sqrt32(v)
    for x, r in zip(v.tolist(), got.tolist()):
        fr = Fraction(r)
        up = Fraction(float(np.nextafter(np.float32(r), np.float32(np.inf))))
        down = Fraction(float(np.nextafter(np.float32(r), np.float32(0))))
        assert ((fr + down) / 2) ** 2 <= Fraction(x) <= ((fr + up) / 2) ** 2, (x, r)


def test_normals_against_the_standard_normal():
    """4M normals of one (seed, step) (lanes 0..3 of 2**20 counters): mean, variance, skewness and excess
    kurtosis within 5 standard errors of N(0, 1)'s; KS distance below the 0.1 % critical value; the
    frequencies of |z| > 2, 3, 4 within 5 standard errors; nothing beyond 6.67."""
    from scipy import stats

    z = torch.stack(philox.randn4(2024, 7, torch.arange(2**20))).flatten().double()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float(stats.skew(z.numpy()))) < 5 * math.sqrt(6 / n)
    assert abs(float(stats.kurtosis(z.numpy()))) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z.numpy(), "norm").statistic < 1.95 / math.sqrt(n)
    for k in (2.0, 3.0, 4.0):
        p = math.erfc(k / math.sqrt(2))
        assert abs(float((z.abs() > k).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n), k
    assert float(z.abs().max()) <= 6.67


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
def test_block_isa_dispatch():
    """The block path runs the best build the CPU supports (x86-64 Linux builds): x86-64-v4's AVX-512 (F, VL, BW,
    DQ), AVX2 + FMA ("x86-64-v3"), else the baseline build; a build with the baseline only (GCC < 9,
    -DYODA_BASELINE_NOISE) says so, and failed here on every AVX2 CPU as "default" did."""
    import platform

    isa = _C.noise_isa()
    assert isa in ("x86-64-v4", "x86-64-v3", "default", "default (built without dispatch)")
    if platform.machine() == "x86_64" and platform.system() == "Linux" and isa != "default (built without dispatch)":
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
        v3 = {"avx2", "fma"} <= flags
        v4 = v3 and {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
        assert isa == ("x86-64-v4" if v4 else "x86-64-v3" if v3 else "default")


@needs_block
def test_block_hook_errors():
    with pytest.raises(ValueError, match="same number of uint32"):
        _C.box_muller_block(b"\0" * 8, b"\0" * 4)
    with pytest.raises(ValueError, match="path must be"):
        _C.box_muller_block(b"\0" * 4, b"\0" * 4, path="libm")
    with pytest.raises(ValueError, match="n must be"):
        _C.randn4_block(0, 0, 0, -1)
    for bad in (2**32, 2**64 + 1, -1, -(2**64) + 5, 1.0):  # out of uint32 range (or not an int), never masked
        with pytest.raises(ValueError, match="uint32"):
            _C.philox_block(bad, 0, 0, 4)
        # the scalar hooks too: they parsed with "k", which read 2**64 + 5 and -(2**64) + 5 as 5
        for call in (lambda: _C.philox4x32(bad, 0, 0, 0, 1, 2), lambda: _C.philox4x32(0, 0, 0, 0, 1, bad),
                     lambda: _C.uniforms(bad), lambda: _C.randn4(1, bad, 3)):
            with pytest.raises(ValueError, match="must be uint32"):
                call()
    with pytest.raises(ValueError, match=r"rounds must be in \[0, 64\]"):
        _C.philox4x32(0, 0, 0, 0, 1, 2, 2**31 - 1)  # held the GIL for seconds


def test_polynomials_are_the_fits_and_every_copy_agrees():
    """benchmarks/noise_fit.py regenerates LOG_P / SIN_P / COS_P exactly, and csrc/philox.h (hex literals) and
    yoda_kernels/triton/noise.py (decimal literals) hold the same float32 values: a coefficient changed in one
    copy only would change one backend's stream."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("noise_fit", root / "benchmarks" / "noise_fit.py")
    fit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit)
    got = fit.fits()
    header = (root / "csrc" / "philox.h").read_text()
    triton_src = (root / "yoda_kernels" / "triton" / "noise.py").read_text()
    for name in ("LOG_P", "SIN_P", "COS_P"):
        coefs = getattr(philox, name)
        assert got[name][0] == coefs, name
        for c in coefs:
            assert float(c).hex().replace("0000000p", "p") + "f" in header, (name, c)
            assert repr(c) in triton_src, (name, c)


def _setup_cxx_flags(name: str = "CXX_FLAGS") -> list:
    """setup.py's CXX_FLAGS (or LINK_FLAGS), read without running setup.py."""
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).resolve().parent.parent / "setup.py").read_text())
    return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", None) == name)


@pytest.mark.skipif(not (__import__("shutil").which("gcc") and __import__("shutil").which("nm")),
                    reason="no gcc / nm to link a library")
def test_a_fast_math_cflags_links_no_flush_to_zero(tmp_path):
    """setuptools puts CFLAGS on the link line too, before setup.py's flags: with -ffast-math there GCC <= 12 linked
    crtfastmath.o into the library, whose loading set flush-to-zero for the whole process. LINK_FLAGS undo it (a
    shared library linked the way setup.py links has no set_fast_math)."""
    import subprocess

    (tmp_path / "s.c").write_text("int f(int x) { return x + 1; }\n")

    def fast_math_linked(*flags) -> bool:
        lib = tmp_path / "s.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-ffast-math", str(tmp_path / "s.c"), *flags, "-o", str(lib)],
                       check=True, capture_output=True, timeout=120)
        return "set_fast_math" in subprocess.run(["nm", str(lib)], capture_output=True, text=True).stdout

    if not fast_math_linked():  # (GCC >= 13 no longer links it into a shared library: nothing to undo)
        pytest.skip("this gcc links no crtfastmath.o into a -ffast-math shared library")
    assert not fast_math_linked(*_setup_cxx_flags("LINK_FLAGS"))


@pytest.mark.parametrize("cxx", ["g++", "clang++"])
@pytest.mark.parametrize("bit_cast", ["builtin", "memcpy", "fast-math-cflags"])
def test_header_alone_with_either_bit_cast(tmp_path, bit_cast, cxx):
    """csrc/philox.h built on its own with the host flags (-O2 -ffp-contract=off): __builtin_bit_cast (GCC >= 11,
    Clang) and the memcpy path of older compilers (forced by -DYODA_NO_BIT_CAST) give the reference's words and
    normals, bit for bit. So does a build with -ffast-math in the environment's CFLAGS (they come before
    setup.py's flags): its normals differed from the reference's, and the extension loaded without a word."""
    import pathlib
    import shutil
    import subprocess

    if not shutil.which(cxx):
        pytest.skip(f"no {cxx} to build the header alone")
    probe = tmp_path / "probe.cpp"
    probe.write_text("#include <cstdio>\nint main() { return 0; }\n")
    if cxx != "g++" and subprocess.run([cxx, "-std=c++17", str(probe), "-o", str(tmp_path / "probe")],
                                       capture_output=True, timeout=120).returncode:
        pytest.skip(f"{cxx} cannot build a C++ program here (its standard library is missing)")
    csrc = pathlib.Path(__file__).resolve().parent.parent / "csrc"
    seed, step, n = 0x1234ABCD, 0x9E37, 4096
    prog = tmp_path / "p.cpp"
    prog.write_text(
        '#include <cstdio>\n#include "philox.h"\n'
        f"int main() {{ for (uint32_t g = 0; g < {n}u; ++g) {{\n"
        f"  yoda::Normal4 z = yoda::randn4({seed}u, {step}u, g * 2654435761u);\n"
        "  for (int k = 0; k < 4; ++k) std::printf(\"%08x\\n\", yoda::f32_bits(z.v[k])); } }\n")
    flags = {"memcpy": ["-O2", "-ffp-contract=off", "-DYODA_NO_BIT_CAST"], "builtin": ["-O2", "-ffp-contract=off"],
             "fast-math-cflags": ["-ffast-math", *_setup_cxx_flags()]}[bit_cast]
    exe = tmp_path / "p"
    built = subprocess.run([cxx, "-std=c++17", *flags, f"-I{csrc}", str(prog), "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    got = [int(w, 16) for w in subprocess.run([str(exe)], check=True, capture_output=True, text=True,
                                              timeout=60).stdout.split()]
    counter = (torch.arange(n, dtype=torch.int64) * 2654435761) % 2**32
    want = torch.stack(philox.randn4(seed, step, counter), dim=1).reshape(-1)
    assert got == want.view(torch.int32).to(torch.int64).remainder(2**32).tolist()
