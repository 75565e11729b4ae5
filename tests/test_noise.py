"""The noise stream (DESIGN.md §9): Philox 4x32-10 against Random123's published known-answer vectors,
the C++ stream (csrc/philox.h) word for word and uniform for uniform against the PyTorch reference
(yoda_kernels/philox.py), normals within 1e-6, the counter / lane map, determinism, seed and step
sensitivity, layout and tile independence, and the statistics of the normals; every backend's noise is
read out through masked_step with coefficients that make the output equal z."""

from __future__ import annotations

import math

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


def test_counter_and_lane_map():
    """Element (b, c, y, x) of the reference noise is lane y % 4 of randn4x(g), g = ((b C + c) ceil(H/4) +
    y // 4) W + x, for a shape whose H is not a multiple of 4."""
    B, C, H, W = 2, 3, 7, 5
    z = philox.noise(4, 2, (B, C, H, W))
    for b, c, y, x in [(0, 0, 0, 0), (1, 2, 6, 4), (0, 1, 5, 3), (1, 0, 3, 1)]:
        g = ((b * C + c) * 2 + y // 4) * W + x
        lanes = philox.randn4x(4, 2, torch.tensor([g]))
        assert z[b, c, y, x] == lanes[y % 4][0]


@pytest.mark.parametrize("backend", _fused_backends())
def test_backend_noise_equals_reference(backend):
    shape = (1, 3, 37, 53) if backend == "triton" else (2, 3, 37, 53)
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
