"""tile_stats: every backend against the reference (max / min are exact, so results must be equal), ragged
tiles, (B, 1, H, W) and (B, H, W) inputs, layouts, NaN propagation and rejection, bad input, opcheck."""

from __future__ import annotations

import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import contract, naive
from yoda_kernels import testing as T

SHAPES = ((1, 37, 53), (2, 16, 16), (1, 5, 7), (2, 33, 65), (3, 64, 96))
TRITON_CPU = {((1, 37, 53), torch.float32, "contiguous"), ((2, 16, 16), torch.bfloat16, "strided")}


def _params():
    out = []
    for device in T.DEVICES:
        for backend in [b for b in yk.available_backends(device) if b != "naive"]:
            for shape in SHAPES:
                for dtype in T.DTYPES:
                    for layout in ("contiguous", "strided", "3d"):
                        if backend == "triton" and device == "cpu" and (shape, dtype, layout) not in TRITON_CPU:
                            continue
                        i = f"{backend}-{device}-{T.DTYPE_IDS[dtype]}-{'x'.join(map(str, shape))}-{layout}"
                        out.append(pytest.param(backend, device, shape, dtype, layout, id=i))
    return out


@pytest.mark.parametrize("backend, device, shape, dtype, layout", _params())
def test_matches_reference(backend, device, shape, dtype, layout):
    B, H, W = shape
    g = torch.Generator().manual_seed(H * W)
    A = torch.rand((B, 1, H, W), generator=g).to(dtype)
    if layout == "strided":
        A = T.with_layout(A, "strided")
    elif layout == "3d":
        A = A[:, 0]
    A = A.to(device)
    for tile in contract.TILE_SIZES:
        got = torch.ops.yoda.tile_stats(A, tile) if backend != "triton" else torch.ops.yoda.tile_stats_triton(A, tile)
        want = naive.tile_stats(A, tile)
        ny, nx = -(-H // tile), -(-W // tile)
        for g_, w_, name in zip(got, want, ("tile_max", "tile_min")):
            assert g_.dtype == torch.float32 and tuple(g_.shape) == (B, ny, nx), name
            assert torch.equal(g_.cpu(), w_.cpu()), f"{name} differs at tile {tile}"


def test_reference_by_hand():
    """The reference itself on a case worked out by hand: 5 x 7 map, tile 8 covers it all, then values
    chosen per tile for tile 8 on a 9 x 10 map (ragged second row / column of tiles)."""
    A = torch.arange(35, dtype=torch.float32).view(1, 1, 5, 7) / 34
    tmax, tmin = naive.tile_stats(A, 8)
    assert tmax.tolist() == [[[1.0]]] and tmin.tolist() == [[[0.0]]]
    A = torch.full((1, 9, 10), 0.5)
    A[0, 8, 9], A[0, 0, 0], A[0, 8, 0] = 0.75, 0.125, 0.25  # exact in float32
    tmax, tmin = yk.tile_stats(A, 8)
    assert tmax.tolist() == [[[0.5, 0.5], [0.5, 0.75]]]
    assert tmin.tolist() == [[[0.125, 0.5], [0.25, 0.5]]]


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
def test_nan_is_rejected(backend):
    A = torch.rand(2, 1, 20, 20)
    A[1, 0, 19, 3] = float("nan")
    with pytest.raises(ValueError, match="A contains NaN"):
        yk.tile_stats(A, 16, backend=backend)
    # the raw op propagates NaN into the tile that holds it (as torch.amax does), nowhere else
    tmax, tmin = yk.ops._impl("tile_stats", backend)(A, 16)
    assert torch.isnan(tmax[1, 1, 0]) and torch.isnan(tmin[1, 1, 0])
    assert torch.isnan(tmax).sum() == 1 and torch.isnan(tmin).sum() == 1


@pytest.mark.parametrize(
    "A, tile, exc, match",
    [
        pytest.param(torch.rand(1, 2, 8, 8), 8, ValueError, "A must be", id="two-channels"),
        pytest.param(torch.rand(8, 8), 8, ValueError, "A must be", id="2d"),
        pytest.param(torch.rand(1, 8, 8).double(), 8, TypeError, "A must be float32, float16 or bfloat16, got torch.float64", id="float64"),
        pytest.param(torch.ones(1, 8, 8, dtype=torch.int32), 8, TypeError, "A must be float32, float16 or bfloat16", id="int"),
        pytest.param(torch.rand(1, 8, 8), 4, ValueError, "tile must be one of", id="tile-4"),
    ],
)
def test_bad_input(A, tile, exc, match):
    with pytest.raises(exc, match=match):
        yk.tile_stats(A, tile)


@pytest.mark.skipif("cpp" not in yk.available_backends("cpu"), reason="C++ extension not built")
def test_cpp_checks():
    with pytest.raises(RuntimeError, match="tile must be one of"):
        torch.ops.yoda.tile_stats(torch.rand(1, 8, 8), 12)
    with pytest.raises(RuntimeError, match="A must be float32, float16 or bfloat16"):
        torch.ops.yoda.tile_stats(torch.rand(1, 8, 8).double(), 8)
    with pytest.raises(RuntimeError, match="A must be"):
        torch.ops.yoda.tile_stats(torch.rand(1, 3, 8, 8), 8)


@pytest.mark.parametrize(
    "A, tile",
    [
        pytest.param(torch.rand(2, 1, 37, 53), 16, id="4d-fp32"),
        pytest.param(torch.rand(1, 20, 9).half(), 8, id="3d-fp16"),
    ],
)
def test_opcheck(A, tile):
    torch.library.opcheck(torch.ops.yoda.tile_stats.default, (A, tile))


def test_sides_of_2_to_the_31_are_refused():
    """The GPU kernels of tile_stats and masked_q_sample index a row or column in 32 bits: a side of 2**31 pixels
    gave back an uninitialised output (CUDA) or wrapped (Triton). Refused, naming the argument (meta tensors: no
    memory)."""
    import yoda_kernels as yk

    A = torch.empty(1, 1, 1, 2**31, dtype=torch.float16, device="meta")
    with pytest.raises(ValueError, match=r"A of shape \(1, 1, 1, 2147483648\) has a side of 2\*\*31 or more"):
        yk.tile_stats(A)
    x = torch.empty(1, 1, 2**31, 1, device="meta")
    with pytest.raises(ValueError, match=r"x0 of shape \(1, 1, 2147483648, 1\) has a side of 2\*\*31"):
        yk.masked_q_sample(x, x, x, None, 0.5, 0.5)
    # the raw C++ ops too (UBSan: (H + tile - 1) / tile overflowed for an expanded empty tensor with a side near
    # 2**63, and tile_stats asked for a tensor of a negative size)
    from yoda_kernels.coefs import step_coefficients

    cf = list(step_coefficients(0.3, 0.35))
    for side in (2**31, 2**63 - 1):
        x = torch.empty(1, 1, 1, 0).expand(1, 1, side, 0)
        with pytest.raises(RuntimeError, match=rf"yoda::masked_step: x has a side of 2\*\*31 or more, got "
                                               rf"\[1, 1, {side}, 0\]; the kernels take less"):
            torch.ops.yoda.masked_step(x, x, x, None, None, None, 0.5, cf, False, 1, 2, None, 8)
        with pytest.raises(RuntimeError, match=r"yoda: A has a side of 2\*\*31 or more"):
            torch.ops.yoda.tile_stats(torch.empty(1, 0, 1).expand(1, 0, side), 8)
