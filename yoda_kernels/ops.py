"""The yoda ops: schemas (once), backend registration and the checked public entry points.

Layers, same op name at each (STYLE.md §3):
    torch.ops.yoda.<op>          schema defined here; CPU kernel from csrc/cpu/<op>.cpp, CUDA kernel from
                                 csrc/cuda/<op>.cu (both in the compiled extension ``yoda_kernels._C``);
                                 without the extension, the reference is registered in their place.
    torch.ops.yoda.<op>_triton   yoda_kernels/triton/<op>.py (GPU; CPU through TRITON_INTERPRET=1)
    yoda_kernels.naive.<op>      the reference, any device
The public functions at the bottom validate inputs (errors name the argument) and pick a backend.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch

from . import coefs as _coefs
from . import naive, philox

SCHEMAS = {
    "masked_step": (
        "masked_step(Tensor x, Tensor model_out, Tensor c, Tensor? A, Tensor? tile_max, Tensor? tile_min, "
        "float tau, float[] coefs, bool clip, int seed, int step, Tensor? noise, int tile) -> Tensor"
    ),
    "tile_stats": "tile_stats(Tensor A, int tile) -> (Tensor, Tensor)",
    "masked_q_sample": (
        "masked_q_sample(Tensor x0, Tensor c, Tensor noise, Tensor? A, Tensor sqrt_ab, Tensor sqrt_1m_ab, "
        "Tensor tau) -> Tensor"
    ),
}
OPS = tuple(SCHEMAS)
BACKENDS = ("naive", "cpp", "cuda", "triton")

_lib = torch.library.Library("yoda", "DEF")  # noqa: kept alive for the process
for _schema in SCHEMAS.values():
    _lib.define(_schema)

extension_error: Optional[str] = None
try:
    from . import _C  # noqa: F401  registers the CPU (and, if built, CUDA) kernels
except (ImportError, OSError) as e:  # missing or unloadable extension
    extension_error = f"{type(e).__name__}: {e}"
    warnings.warn(
        f"yoda_kernels: compiled extension not available ({extension_error}); the pure-PyTorch reference "
        "is used instead. Reinstall with `pip install --no-build-isolation -e .` to build it.",
        RuntimeWarning,
        stacklevel=2,
    )


def _has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"yoda::{op}", key)


# The reference stands in for any device kernel the extension did not bring.
_CPP = _has_kernel("masked_step", "CPU")
_CUDA = _has_kernel("masked_step", "CUDA")
for _op in OPS:
    for _key, _present in (("CPU", _CPP), ("CUDA", _CUDA)):
        if not _present:
            _lib.impl(_op, getattr(naive, _op), _key)


@torch.library.register_fake("yoda::masked_step")
def _(x, model_out, c, A, tile_max, tile_min, tau, coefs, clip, seed, step, noise, tile):
    return torch.empty_like(x, memory_format=naive._memory_format(x))


@torch.library.register_fake("yoda::tile_stats")
def _(A, tile):
    B, H, W = A.shape[0], A.shape[-2], A.shape[-1]
    shape = (B, -(-H // tile), -(-W // tile))
    return A.new_empty(shape, dtype=torch.float32), A.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake("yoda::masked_q_sample")
def _(x0, c, noise, A, sqrt_ab, sqrt_1m_ab, tau):
    return torch.empty_like(x0, memory_format=naive._memory_format(x0))


def _triton_module():
    from . import triton as _triton  # imported lazily: triton is optional and slow to import

    return _triton


def triton_available() -> bool:
    try:
        _triton_module()
        return True
    except ImportError:
        return False


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this process ("naive" always)."""
    kind = torch.device(device).type
    out = ["naive"]
    if kind == "cpu" and _CPP:
        out.append("cpp")
    if kind == "cuda" and _CUDA:
        out.append("cuda")
    if triton_available() and (kind == "cuda" or _triton_module().INTERPRET):
        out.append("triton")
    return out


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    if backend == "auto":  # without importing triton unless it is a candidate (the import takes seconds)
        if device.type == "cuda":
            # The prebuilt CUDA kernel first: it needs no JIT compiler at run time, and on an H200 it won every
            # 4x3x1024^2 case of benchmarks/RESULTS.md (Triton won most of the 4x3x2048^2 ones).
            return "cuda" if _CUDA else ("triton" if triton_available() else "naive")
        return "cpp" if (device.type == "cpu" and _CPP) else "naive"
    if backend == "naive" or (backend == "cpp" and device.type == "cpu" and _CPP):
        return backend
    have = available_backends(device)
    if backend not in have:
        why = f" ({extension_error})" if backend in ("cpp", "cuda") and extension_error else ""
        raise RuntimeError(f"backend {backend!r} is not available on device {device}{why}; available: {have}")
    return backend


def _impl(op: str, backend: str):
    if backend == "naive":
        return getattr(naive, op)
    if backend == "triton":
        return getattr(torch.ops.yoda, f"{op}_triton")
    return getattr(torch.ops.yoda, op)


# ----------------------------------------------------------------------------------------------------------
# Validation (shared by the public entry points)
# ----------------------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_state(name: str, t: torch.Tensor, ref: Optional[torch.Tensor] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if ref is not None:
        if t.shape != ref.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(ref.shape)}, got {tuple(t.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but x is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {ref.dtype}")


def _check_attention(A: Optional[torch.Tensor], x: torch.Tensor, name: str = "A") -> Optional[torch.Tensor]:
    if A is None:
        return None
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(A).__name__}")
    B, _, H, W = x.shape
    ok = (A.dim() == 4 and A.shape[1] == 1 and tuple(A.shape[2:]) == (H, W) and A.shape[0] == B) or (
        A.dim() == 3 and tuple(A.shape) == (B, H, W)
    )
    if not ok:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W) = ({B}, 1, {H}, {W}), got {tuple(A.shape)}")
    if A.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float tensor, got {A.dtype}")
    if A.device != x.device:
        raise ValueError(f"{name} is on {A.device} but x is on {x.device}")
    return A


def _check_tile(tile: int) -> int:
    if tile not in naive.TILE_SIZES:
        raise ValueError(f"tile must be one of {naive.TILE_SIZES}, got {tile}")
    return int(tile)


def _check_nan(name: str, t: torch.Tensor) -> None:
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")


# ----------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------
def tile_stats(A: torch.Tensor, tile: int = 16, *, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile (max, min) of the attention map, each (B, ceil(H/tile), ceil(W/tile)) float32.

    A: (B, 1, H, W) or (B, H, W) in [0, 1]. A tile is active at threshold tau if max >= tau, full if
    min >= tau (DESIGN.md §8). Raises if A holds NaN."""
    if not isinstance(A, torch.Tensor) or A.dim() not in (3, 4) or (A.dim() == 4 and A.shape[1] != 1):
        raise ValueError(f"A must be (B, 1, H, W) or (B, H, W), got {getattr(A, 'shape', type(A))}")
    if A.dtype not in FLOAT_DTYPES:
        raise TypeError(f"A must be a float tensor, got {A.dtype}")
    tile = _check_tile(tile)
    tmax, tmin = _impl("tile_stats", resolve_backend(backend, A.device))(A.contiguous(), tile)
    _check_nan("A", tmax)
    _check_nan("A", tmin)
    return tmax, tmin


def active_tiles(tile_max: torch.Tensor, tau: float) -> torch.Tensor:
    """(n, 3) int64 [b, tile_y, tile_x] of the tiles with any pixel active at tau (SIGE's reduce_mask)."""
    return torch.nonzero(tile_max >= torch.tensor(tau, dtype=torch.float32))


def masked_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor] = None,
    tau: float = 0.0,
    *,
    ab_t: Optional[float] = None,
    ab_prev: Optional[float] = None,
    prediction: str = "eps",
    sampler: str = "ddpm",
    eta: float = 0.0,
    coefs: Optional[Sequence[float]] = None,
    clip: bool = False,
    seed: int = 0,
    step: int = 0,
    noise: Optional[torch.Tensor] = None,
    tile: int = 16,
    stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One fused YODA reverse step t -> t_prev (DESIGN.md §5), in one pass over memory.

    x (x_t), model_out (eps, x0 or v: ``prediction``), c (the LR image in the model's space): (B, C, H, W),
    fp32/fp16/bf16, same dtype and device. A: (B, 1, H, W) or (B, H, W) attention at the state's grid, or
    None (every pixel active: the plain sampler). Pixels with A >= tau take the sampler update, the others
    sqrt(ab_prev) c + sqrt(1 - ab_prev) z. The schedule enters as (ab_t, ab_prev) with ``sampler`` and
    ``eta``, or as precomputed ``coefs`` (see yoda_kernels.coefs). Noise z is Philox(seed, step, element)
    unless ``noise`` (same shape as x) is given. ``stats`` = tile_stats(A, tile) may be passed to avoid
    recomputing it every step. Returns x_prev, dtype and memory format of x.
    """
    _check_state("x", x)
    _check_state("model_out", model_out, x)
    _check_state("c", c, x)
    A = _check_attention(A, x)
    tile = _check_tile(tile)
    if noise is not None:
        _check_state("noise", noise, x)
    philox.check_seed_step(seed, step)
    if philox.num_groups(x.shape) >= 2**31:
        raise ValueError(f"x of shape {tuple(x.shape)} is too large for the 32-bit noise counter")
    tau = float(tau)
    if math.isnan(tau):
        raise ValueError("tau must not be NaN")
    if coefs is None:
        if ab_t is None or ab_prev is None:
            raise ValueError("give either coefs or both ab_t and ab_prev")
        coefs = _coefs.step_coefficients(ab_t, ab_prev, prediction=prediction, sampler=sampler, eta=eta)
    coefs = [float(v) for v in coefs]
    if len(coefs) != naive.NUM_COEFS or not all(math.isfinite(v) for v in coefs):
        raise ValueError(f"coefs must be {naive.NUM_COEFS} finite floats, got {coefs}")
    backend = resolve_backend(backend, x.device)
    tmax = tmin = None
    if A is not None:
        if stats is None:
            stats = tile_stats(A, tile, backend=backend)
        tmax, tmin = stats
        expect = (x.shape[0], -(-x.shape[2] // tile), -(-x.shape[3] // tile))
        if tuple(tmax.shape) != expect or tuple(tmin.shape) != expect:
            raise ValueError(f"stats must be two tensors of shape {expect} (tile_stats(A, {tile}))")
        if tmax.dtype != torch.float32 or tmin.dtype != torch.float32 or tmax.device != x.device or tmin.device != x.device:
            raise ValueError(f"stats must be float32 tensors on {x.device} (tile_stats(A, {tile}))")
    return _impl("masked_step", backend)(
        x, model_out, c, A, tmax, tmin, tau, coefs, bool(clip), int(seed), int(step), noise, tile
    )


def masked_q_sample(
    x0: torch.Tensor,
    c: torch.Tensor,
    noise: torch.Tensor,
    A: Optional[torch.Tensor],
    tau: torch.Tensor | float,
    ab: torch.Tensor | float,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Training-time forward noising with YODA masks (DESIGN.md §7):
    x_t = sqrt(ab) (x0 where A >= tau else c) + sqrt(1 - ab) noise, per batch element.

    x0, c, noise: (B, C, H, W); A: (B, 1, H, W), (B, H, W) or None; tau and ab: floats or (B,) tensors."""
    _check_state("x0", x0)
    _check_state("c", c, x0)
    _check_state("noise", noise, x0)
    A = _check_attention(A, x0)
    B = x0.shape[0]

    def per_batch(name, v):
        v = torch.as_tensor(v, dtype=torch.float64, device=x0.device)
        if v.dim() == 0:
            v = v.expand(B)
        if v.shape != (B,):
            raise ValueError(f"{name} must be a float or a ({B},) tensor, got shape {tuple(v.shape)}")
        _check_nan(name, v)
        return v.contiguous()

    ab = per_batch("ab", ab)
    if ((ab <= 0) | (ab > 1)).any():
        raise ValueError("ab must be in (0, 1]")
    tau = per_batch("tau", tau).float()
    if A is not None:
        _check_nan("A", A)
    backend = resolve_backend(backend, x0.device)
    # sqrt(1 - ab) in float64: 1 - ab cancels badly in float32 at the smallest noise levels (ab ~ 1 - 1e-6)
    sqrt_ab, sqrt_1m_ab = ab.sqrt().float(), (1 - ab).sqrt().float()
    return _impl("masked_q_sample", backend)(x0, c, noise, A, sqrt_ab, sqrt_1m_ab, tau)
