"""The yoda ops: schemas (once), backend registration and the checked public entry points.

Layers, same op name at each:
    torch.ops.yoda.<op>          schema defined here; CPU kernel from csrc/cpu/<op>.cpp, CUDA kernel from
                                 csrc/cuda/<op>.cu (both in the compiled extension ``yoda_kernels._C``);
                                 for every (op, device) the extension did not bring, the reference is
                                 registered in its place (per op; see DEVICE_KERNELS and active_backends)
    torch.ops.yoda.<op>_triton   yoda_kernels/triton/<op>.py (GPU; CPU through TRITON_INTERPRET=1)
    yoda_kernels.naive.<op>      the reference, any device
What every backend agrees on (coefficients, tile sizes, predictions, memory format) is yoda_kernels.contract.
The public functions at the bottom validate inputs (errors name the argument) and pick a backend; a caller
that runs many ops (the sampler) resolves it once with :func:`bind_backend` and passes the result.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
import weakref
from typing import NamedTuple, Optional, Sequence, Union

import torch

from . import coefs as _coefs
from . import naive
from .checks import (check_attention, check_call, check_clip, check_counter, check_dense, check_history,
                     check_nan, check_q_sample_states, check_state, refuse_tau_grad, tile_stats_args,
                     values_checkable)
from .contract import FAKES, FLOAT_DTYPES, MAX_HISTORY, NUM_COEFS, NUM_COMBINE_COEFS, check_tile  # noqa: F401
# (FLOAT_DTYPES: re-exported, ops.FLOAT_DTYPES is the contract's; the checks themselves are checks.py's)

# tau and coefs are Scalar / Scalar[] (the kernels read them as doubles), seed and step SymInt (int64 to the
# kernels): under torch.compile a float, float[] or int argument of a custom op is specialised, so a compiled loop
# recompiled at every new tau, coefs and step and stopped at dynamo's recompile limit (8; fullgraph: an error);
# these become dynamic after the first recompile
SCHEMAS = {
    "masked_step": (
        "masked_step(Tensor x, Tensor model_out, Tensor c, Tensor? A, Tensor? tile_max, Tensor? tile_min, "
        "Scalar tau, Scalar[] coefs, bool clip, SymInt seed, SymInt step, Tensor? noise, int tile) -> Tensor"
    ),
    "masked_combine": (
        "masked_combine(Tensor x, Tensor d0, Tensor? d1, Tensor? d2, Tensor c, Tensor? A, Tensor? tile_max, "
        "Tensor? tile_min, Scalar tau, Scalar[] coefs, SymInt seed, SymInt step, Tensor? noise, int tile) -> Tensor"
    ),
    "tile_stats": "tile_stats(Tensor A, int tile) -> (Tensor, Tensor)",
    "masked_q_sample": (
        "masked_q_sample(Tensor x0, Tensor c, Tensor noise, Tensor? A, Tensor sqrt_ab, Tensor sqrt_1m_ab, "
        "Tensor tau) -> Tensor"
    ),
}
OPS = tuple(SCHEMAS)
BACKENDS = ("naive", "cpp", "cuda", "triton")
DISPATCH_KEYS = {"cpp": "CPU", "cuda": "CUDA"}  # compiled backend -> the dispatch key its kernels register

_lib = torch.library.Library("yoda", "DEF")  # noqa: kept alive for the process
for _schema in SCHEMAS.values():
    _lib.define(_schema)

def _load_extension() -> Optional[str]:
    """Import yoda_kernels._C (its kernels register themselves); None, or why it is not used: not built, not
    loadable, or built from other sources than the csrc/ beside this package holds (a stale build of a source
    tree: its kernels would silently compute another contract, e.g. another noise stream)."""
    import importlib.util
    from pathlib import Path

    from ._source_hash import stale_build

    try:
        spec = importlib.util.find_spec(f"{__package__}._C")
    except (ImportError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    root = Path(__file__).resolve().parent.parent
    tree = (root / "csrc" / "yoda.cpp").is_file() and (root / "setup.py").is_file()  # a source tree, not an install
    rebuild = (f"rebuild it in {root} with the command it was installed with (`pip install -e .`, or `pip install "
               f"--no-build-isolation -e .`)" if tree else
               "reinstall it from the source you installed it from (its sdist or wheel file, or a clone: `pip install "
               "--force-reinstall --no-deps --no-cache-dir SOURCE`)")
    if spec is None or not spec.origin:
        if sys.platform == "win32":
            return "the C++ kernels are not built on Windows (README, Platforms): the reference runs"
        if tree:  # python run in a clone imports the clone's package, which hides an installed one
            return (f"yoda_kernels is imported from the source tree {root}, which has no built extension: build it "
                    f"there (`pip install -e .`); Python started in a clone imports it before an installed yoda-sr")
        return f"no compiled extension (installed with YODA_NO_EXTENSION=1, or its build did not run); {rebuild}"
    if tree and Path(spec.origin).resolve().parent != Path(__file__).resolve().parent:  # (another clone's editable
        return (f"yoda_kernels is imported from the source tree {root}, which has no built extension (the one found, "
                f"{spec.origin}, is another tree's, through its editable install): build it there (`pip install -e "
                f".`, or `python setup.py build_ext --inplace`)")  # install's finder: a sanitizer copy ran without)
    try:  # a source tree (an editable install) only: yoda's own csrc/ and setup.py beside the package
        stale = stale_build(spec.origin, root / "csrc") if tree else None
    except (OSError, ValueError) as e:  # an empty (interrupted link) or unreadable build
        return f"{type(e).__name__}: {e}; {rebuild}"
    if stale:
        return f"{stale}; {rebuild}"
    try:
        from . import _C  # noqa: F401  registers the CPU (and, if built, CUDA) kernels
    except (ImportError, OSError) as e:  # unloadable (another torch's ABI, a missing symbol)
        return f"{type(e).__name__}: {e}; {rebuild}"
    return None


extension_error: Optional[str] = _load_extension()
# Windows builds none (setup.py; README, Platforms); YODA_NO_EXTENSION=1 at run time too: none was asked for
if extension_error is not None and sys.platform != "win32" and os.environ.get("YODA_NO_EXTENSION") != "1":
    warnings.warn(f"yoda_kernels: the compiled extension is not used ({extension_error}). The pure-PyTorch "
                  "reference runs instead.", RuntimeWarning, stacklevel=2)


def _extension_kernels() -> dict[str, frozenset]:
    """op -> the dispatch keys ("CPU", "CUDA") the extension registered a kernel for, asked through the op's
    public OpOverload.has_kernel_for_dispatch_key before the reference fills the gaps."""
    return {op: frozenset(k for k in DISPATCH_KEYS.values()
                          if getattr(torch.ops.yoda, op).default.has_kernel_for_dispatch_key(k))
            for op in OPS}


# What the extension brought, per op; the reference stands in, per op, for every device kernel it did not.
DEVICE_KERNELS: dict[str, frozenset] = _extension_kernels()
for _op in OPS:
    for _key in DISPATCH_KEYS.values():
        if _key not in DEVICE_KERNELS[_op]:
            _lib.impl(_op, getattr(naive, _op), _key)
if extension_error is None:
    _partial = sorted(op for op in OPS if "CPU" not in DEVICE_KERNELS[op])
    if _partial:
        warnings.warn(f"yoda_kernels: the compiled extension has no CPU kernel for {', '.join(_partial)}; the "
                      "reference runs for those ops (yoda_kernels.active_backends())", RuntimeWarning, stacklevel=2)


for _op, _fake in FAKES.items():
    torch.library.register_fake(f"yoda::{_op}")(_fake)


def _triton_module():
    from . import triton as _triton  # imported lazily: triton is optional and slow to import

    return _triton


def triton_available() -> bool:
    """Whether the Triton kernels import. An error other than a missing triton (torch 2.4-2.6's custom_op refuses
    the ops' annotations) is warned of once, and Triton is then not available, as without triton."""
    try:
        _triton_module()
        return True
    except ImportError:
        return False
    except Exception as e:  # any failure to register them leaves the other backends usable
        _warn_once("triton", f"yoda_kernels: the Triton kernels could not be registered ({type(e).__name__}: {e}); "
                   "they are not used", UserWarning, stacklevel=2)
        return False


def _built(backend: str, op: Optional[str] = None) -> bool:
    """Whether the extension brought ``backend``'s ("cpp" / "cuda") kernel of ``op`` (None: of any op)."""
    key = DISPATCH_KEYS[backend]
    return any(key in DEVICE_KERNELS[o] for o in ((op,) if op else OPS))


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this process ("naive" always). A compiled backend counts when
    the extension brought any of its kernels; active_backends() says, per op, what really runs."""
    kind = torch.device(device).type
    out = ["naive"]
    if kind == "cpu" and _built("cpp"):
        out.append("cpp")
    if kind == "cuda" and _built("cuda"):
        out.append("cuda")
    if triton_available() and (kind == "cuda" or _triton_module().INTERPRET):
        out.append("triton")
    return out


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend that runs on ``device`` for ``backend`` ("auto": the CUDA kernel, else Triton, else the
    reference on a GPU; the C++ kernel, else the reference on the CPU); ValueError for an unknown name,
    RuntimeError naming what is missing for a backend that is not available there."""
    if not isinstance(device, torch.device):  # "cpu" too, as available_backends / bind_backend take it (a public
        device = torch.device(device)  # op's every call comes here with a device: not made again)
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    if device.type == "mps":  # said here, not as torch's float64 error from deep inside the reference
        raise ValueError("device mps (an Apple GPU) is not supported: the reference's noise computes in float64, "
                         "which MPS lacks; keep the tensors on the CPU")
    if backend == "auto":  # without importing triton unless it is a candidate (the import takes seconds)
        if device.type == "cuda":
            # The prebuilt CUDA kernel first: it needs no JIT compiler at run time (benchmarks/RESULTS.md
            # compares it with Triton).
            return "cuda" if _built("cuda") else ("triton" if triton_available() else _reference_on(device))
        return "cpp" if (device.type == "cpu" and _built("cpp")) else "naive"
    if backend == "naive" or (backend == "cpp" and device.type == "cpu" and _built("cpp")):
        return backend
    have = available_backends(device)
    if backend not in have:
        why = f" ({extension_error})" if backend in ("cpp", "cuda") and extension_error else ""
        if backend == "triton":
            why = (" (triton is not installed, or its kernels did not register)" if not triton_available() else
                   " (off a GPU Triton runs through its interpreter: set TRITON_INTERPRET=1 before triton is imported)")
        raise RuntimeError(f"backend {backend!r} is not available on device {device}{why}; available: {have}")
    return backend


_warned: set = set()  # what _warn_once has said in this process


def _warn_once(key: str, message: str, category: type, stacklevel: int) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def _reference_on(device: torch.device) -> str:
    """"naive", with a one-time warning: a GPU runs the reference when neither CUDA kernels nor triton exist."""
    _warn_once(f"reference on {device.type}", f"yoda_kernels: no compiled kernels and no triton for {device.type}; "
               f"the pure-PyTorch reference runs there ({extension_error or 'the extension was built without them'})",
               RuntimeWarning, stacklevel=3)
    return "naive"


class Backend(NamedTuple):
    """A backend resolved once for a device type (:func:`bind_backend`); the ops take it as ``backend=`` and
    skip the choice."""

    name: str
    device_type: str


def bind_backend(backend: Union[str, Backend], device: torch.device | str) -> Backend:
    """Resolve ``backend`` ("auto" or a name) for ``device`` once, for a caller that runs many ops there."""
    device = torch.device(device)
    if isinstance(backend, Backend):
        resolve_backend(_backend_name(backend, device), device)  # available here, or a RuntimeError saying why
        return backend
    return Backend(resolve_backend(backend, device), device.type)


def _backend_name(backend: Union[str, Backend], device: torch.device) -> str:
    if isinstance(backend, Backend):
        if backend.device_type != device.type:
            raise ValueError(f"backend {backend.name!r} was bound for {backend.device_type}, the tensors are on "
                             f"{device}")
        if backend.name not in BACKENDS or {"cpp": "cpu", "cuda": "cuda"}.get(backend.name, device.type) != device.type:
            raise ValueError(f"{backend!r} is not a backend for {device} (yoda_kernels.bind_backend makes one)")
        return backend.name
    return resolve_backend(backend, device)


def active_backends(device: torch.device | str = "cpu", backend: str = "auto") -> dict[str, str]:
    """What runs for each op on ``device`` with ``backend`` (default "auto"): {op: "cpp" | "cuda" | "triton" |
    "naive"}. An op whose device kernel the extension did not bring shows "naive": the reference registered in
    its place, even when "cpp" / "cuda" was asked for."""
    device = torch.device(device)
    name = resolve_backend(backend, device)
    return {op: ("naive" if name in DISPATCH_KEYS and not _built(name, op) else name) for op in OPS}


def _plain_eager(first: Optional[torch.Tensor]) -> bool:
    """Whether a call on ``first`` runs plainly: a torch.Tensor (no subclass: fake tensors) outside torch.compile,
    torch.jit.trace, functorch transforms (vmap: batched tensors pass the type test) and dispatch modes (flop
    counters, debug modes), each of which must see the op."""
    return (type(first) is torch.Tensor and first.device.type != "meta" and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0 and not torch._C._are_functorch_transforms_active())


def _impl(op: str, backend: str, first: Optional[torch.Tensor] = None):
    """What runs ``op`` on ``backend``; ``first``: the op's first tensor argument. Triton's op in a plain eager
    call (_plain_eager) is its launch function itself: the custom_op's dispatch around it (autograd, aliasing
    checks) costs 20 us a call on a 2-core CPU, 40 us on the H200's host. Everything else, and ``first=None``,
    gets the op."""
    if backend == "naive" or (torch.jit.is_tracing() and op in ("masked_step", "masked_combine")):
        # torch.jit.trace cannot record a Scalar[] argument ("unsupported input list type: Scalar"): it traces the
        # reference, the same bits in plain torch ops
        return getattr(naive, op)
    if backend == "triton":
        if _plain_eager(first):
            return _triton_module().EAGER[f"{op}_triton"]
        return getattr(torch.ops.yoda, f"{op}_triton")
    return getattr(torch.ops.yoda, op)  # the device kernel, or the reference registered in its place


# ----------------------------------------------------------------------------------------------------------
# Validation (shared by the public entry points)
# ----------------------------------------------------------------------------------------------------------


def _check_no_grad(op: str, backend: str, *tensors: Optional[torch.Tensor]) -> None:
    """The fused kernels have no backward: refuse inputs that want a gradient, instead of returning a result whose
    backward silently gives none (the reference is plain torch and differentiates)."""
    if backend != "naive" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is not differentiable on the {backend!r} backend (its kernel has no backward); "
                           f"run it under torch.no_grad(), or use backend='naive' for gradients")


# ----------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------
class _Stats(NamedTuple):
    tile_max: torch.Tensor
    tile_min: torch.Tensor


class TileStats(_Stats):
    """What :func:`tile_stats` returns: per-tile max and min of A, each (B, ceil(H/tile), ceil(W/tile)) float32.
    Given back as ``stats=`` with the A it was made of, it is not searched for NaN again (tile_stats refused a NaN
    in A when it made it): a loop that passes it every step waits for the device once, not at every step.

    It remembers which A it was made of (storage, shape, strides, dtype, device, tile and torch's in-place version
    counter; A's memory must still be held, by A or any view of it): given with another A (a copy of A too), with
    an A changed in place since, or once that memory is freed, it is refused, since the C++ and Triton kernels
    classify tiles by it (the naive reference reads A). Writes that torch does not count (through ``A.numpy()`` or
    ``A.data``, or to an A made under torch.inference_mode, which has no counter) are not seen. A TileStats made by hand or copied, or a plain
    (max, min) tuple, is searched for NaN and for max < min (a device sync), and is trusted to describe A."""

    def matches(self, A: torch.Tensor, tile: int) -> Optional[bool]:
        """Whether these stats were made of ``A`` at ``tile`` as it is now; None: not known (made by hand, or a
        copy). The memory they were made of must still be held (by A or a view of it): once it is freed, another
        A can take it."""
        made_of = getattr(self, "_source", None)
        if made_of is None:
            return None
        # the very storage, not only its address: two tensors over one buffer (torch.from_numpy twice, frombuffer,
        # dlpack) have storages of their own, and a write counted on the first one's version was not seen
        return _plain_eager(A) and self._of() is A.untyped_storage() and made_of == _source(A, tile)

    def __reduce__(self):
        """A copy (pickle, copy.deepcopy) is made by hand: it does not know which A it was made of."""
        return (type(self), tuple(self))


def _source(A: torch.Tensor, tile: int) -> tuple:
    """What identifies ``A`` as tile_stats saw it (TileStats.matches), the same for (B, H, W) and its (B, 1, H, W)
    views: ~1 us."""
    shape, stride = tuple(A.shape), A.stride()
    if A.dim() == 4:  # the channel of 1 is no part of the map
        shape, stride = shape[:1] + shape[2:], stride[:1] + stride[2:]
    version = None if A.is_inference() else A._version  # an inference tensor has no version counter
    return A.data_ptr(), shape, stride, A.dtype, A.device, version, tile


def _made_of(stats: TileStats, A: torch.Tensor, tile: int) -> TileStats:
    if _plain_eager(A):  # (fake and traced tensors have no storage to name)
        stats._source, stats._of = _source(A, tile), weakref.ref(A.untyped_storage())  # its memory, whichever view
    return stats


def tile_stats(A: torch.Tensor, tile: int = 16, *, backend: Union[str, Backend] = "auto") -> TileStats:
    """Per-tile (max, min) of the attention map, each (B, ceil(H/tile), ceil(W/tile)) float32.

    A: (B, 1, H, W) or (B, H, W), fp32 / fp16 / bf16 (values in [0, 1] as yoda makes them; any real value is
    taken). A tile is active at threshold tau if max >= tau, full if min >= tau (DESIGN.md §8). Raises if A holds
    NaN (not searched for on the meta device or under torch.compile). Pass the result as ``stats=`` only with
    this A (TileStats)."""
    tile = tile_stats_args(A, tile)
    name = _backend_name(backend, A.device)
    _check_no_grad("tile_stats", name, A)  # the C++ kernel's stats wanted a gradient and gave none
    tmax, tmin = _impl("tile_stats", name, A)(A.contiguous(), tile)
    check_nan("A", tmax, tmin)
    return _made_of(TileStats(tmax, tmin), A, tile)


def active_tiles(tile_max: torch.Tensor, tau: float) -> torch.Tensor:
    """(n, 3) int64 [b, tile_y, tile_x] of the tiles with any pixel active at tau (SIGE's reduce_mask)."""
    if isinstance(tau, bool) or not isinstance(tau, (numbers.Real, torch.Tensor)) or (
            isinstance(tau, torch.Tensor) and tau.numel() != 1):
        raise TypeError(f"tau must be a float, got {tau!r}")
    if math.isnan(float(tau)):  # no tile was active
        raise ValueError("tau must not be NaN")
    if isinstance(tile_max, TileStats):  # (a bare "'>=' not supported between 'TileStats' and 'Tensor'")
        raise TypeError("tile_max must be a tensor: pass the tile_max of tile_stats(A, tile), not the pair")
    if not isinstance(tile_max, torch.Tensor):
        raise TypeError(f"tile_max must be a tensor, got {type(tile_max).__name__}")
    return torch.nonzero(tile_max >= torch.tensor(float(tau), dtype=torch.float32, device=tile_max.device))


def masked_step(
    x: torch.Tensor,
    model_out: torch.Tensor,
    c: torch.Tensor,
    A: Optional[torch.Tensor] = None,
    tau: float = 0.0,
    *,
    ab_t: Optional[float] = None,
    ab_prev: Optional[float] = None,
    prediction: Optional[str] = None,
    sampler: Optional[str] = None,
    eta: Optional[float] = None,
    coefs: Optional[Sequence[float]] = None,
    clip: bool = False,
    seed: int = 0,
    step: int = 0,
    noise: Optional[torch.Tensor] = None,
    tile: int = 16,
    stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    backend: Union[str, Backend] = "auto",
) -> torch.Tensor:
    """One fused YODA reverse step t -> t_prev (DESIGN.md §5), in one pass over memory.

    x (x_t), model_out (eps, x0 or v: ``prediction``), c (the LR image in the model's space): (B, C, H, W),
    fp32/fp16/bf16, same dtype and device. A: (B, 1, H, W) or (B, H, W) attention at the state's grid, or
    None (every pixel active: the plain sampler). Pixels with A >= tau take the sampler update, the others
    sqrt(ab_prev) c + sqrt(1 - ab_prev) z. The schedule enters as (ab_t, ab_prev) with ``prediction``,
    ``sampler`` and ``eta`` (defaults "eps", "ddpm", 0), or as precomputed ``coefs`` (see yoda_kernels.coefs; not both).
    Noise z is Philox(seed, step, element) unless ``noise`` (same shape as x) is given. ``stats`` =
    tile_stats(A, tile) of this very A may be passed to avoid recomputing it every step: the C++ and Triton
    kernels classify tiles by it (reading A only in mixed tiles), the naive reference reads A; stats made of
    another A, or of A before an in-place change, are refused (TileStats). Returns x_prev, dtype and memory
    format of x.

    Refused, naming the argument: float64 states or A, NaN in A or tau (not searched for on the meta device, under
    torch.compile, where a check on values would break the graph, or in a TileStats of this A, made when A had
    none), a seed outside [0, 2**32 - 1] or a step
    outside [0, 2**31 - 1], coefficients that are not finite in float32, and inputs that want a gradient on any
    backend but "naive" (the kernels have no backward). Any strides are taken (views, channels-last).
    """
    check_state("x", x)
    check_state("model_out", model_out, x)
    schedule = dict(ab_t=ab_t, ab_prev=ab_prev, prediction=prediction, sampler=sampler, eta=eta)
    if coefs is None:
        if ab_t is None or ab_prev is None:
            raise ValueError("give either coefs or both ab_t and ab_prev")
        coefs = _coefs.step_coefficients(ab_t, ab_prev, prediction="eps" if prediction is None else prediction,
                                         sampler="ddpm" if sampler is None else sampler,
                                         eta=0.0 if eta is None else eta)
    elif any(v is not None for v in schedule.values()):  # they were ignored without a word
        raise ValueError(f"give coefs or ({', '.join(schedule)}), not both: coefs already fix the update "
                         f"(got {', '.join(k for k, v in schedule.items() if v is not None)} too)")
    c, A, tau, coefs, tile, backend, tmax, tmin = _check_masked(x, c, A, tau, coefs, NUM_COEFS, seed, step, noise,
                                                                tile, stats, backend)
    _check_no_grad("masked_step", backend, x, model_out, c, A, noise)
    return _impl("masked_step", backend, x)(
        x, model_out, c, A, tmax, tmin, tau, coefs, check_clip(clip), int(seed), int(step), noise, tile
    )


def masked_combine(
    x: torch.Tensor,
    denoised: Sequence[torch.Tensor],
    c: torch.Tensor,
    A: Optional[torch.Tensor] = None,
    tau: float = 0.0,
    *,
    coefs: Sequence[float],
    seed: int = 0,
    step: int = 0,
    noise: Optional[torch.Tensor] = None,
    tile: int = 16,
    stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    backend: Union[str, Backend] = "auto",
) -> torch.Tensor:
    """One fused masked solver update (yoda_kernels.contract, CombineCoefs), in one pass over memory:

        x' = cx x + cd0 d0 + cd1 d1 + cd2 d2 + sigma z    where A >= tau
        x' = la c + lb z                                  elsewhere

    x (the state), denoised = [d0, d1, d2][:n] (this step's denoised estimate and up to two earlier ones), c:
    (B, C, H, W), one dtype and device. ``coefs``: the seven CombineCoefs (float64, from the solver); terms of
    absent estimates must have weight 0. Noise, A, tau, tile and stats as in :func:`masked_step`."""
    check_state("x", x)
    if not isinstance(denoised, (list, tuple)) or not 1 <= len(denoised) <= MAX_HISTORY:
        raise ValueError(f"denoised must be a list of 1 to {MAX_HISTORY} tensors, got "
                         f"{len(denoised) if isinstance(denoised, (list, tuple)) else type(denoised).__name__}")
    for j, d in enumerate(denoised):
        check_state(f"denoised[{j}]", d, x)
    c, A, tau, coefs, tile, backend, tmax, tmin = _check_masked(x, c, A, tau, coefs, NUM_COMBINE_COEFS, seed, step,
                                                                noise, tile, stats, backend)
    d = check_history(denoised, coefs)
    _check_no_grad("masked_combine", backend, x, *d, c, A, noise)
    return _impl("masked_combine", backend, x)(
        x, d[0], d[1], d[2], c, A, tmax, tmin, tau, coefs, int(seed), int(step), noise, tile
    )


def _check_masked(x, c, A, tau, coefs, n_coefs, seed, step, noise, tile, stats, backend):
    """The checks that masked_step and masked_combine share -> (c, A, tau, coefs, tile, backend, tmax, tmin)."""
    A, tile, backend, tmax, tmin = _check_fixed(x, c, A, tile, stats, backend)
    tau, coefs = check_call(x, A, tau, coefs, n_coefs, seed, step, noise)
    return c, A, tau, coefs, tile, backend, tmax, tmin


def _check_fixed(x, c, A, tile, stats, backend, ref="x"):
    """The checks of what a loop of steps keeps fixed (MaskedOps checks them once, with c for x: ``ref`` names
    it) -> (A, tile, backend name, tmax, tmin)."""
    check_state("c", c, x)
    A = check_attention(A, x, ref=ref)
    tile = check_tile(tile)
    check_counter(x, ref)
    backend = _backend_name(backend, x.device)
    tmax = tmin = None
    if A is None and stats is not None:  # every pixel would be active, whatever the stats say
        raise ValueError("stats given without A: pass the A that tile_stats made them of")
    if A is not None:
        given = stats is not None
        if not given:
            stats = tile_stats(A.detach(), tile, backend=Backend(backend, x.device.type))  # (the op names a grad)
        expect = (x.shape[0], -(-x.shape[2] // tile), -(-x.shape[3] // tile))
        try:
            tmax, tmin = stats
        except (TypeError, ValueError):  # (it said "too many values to unpack")
            raise ValueError(f"stats must be two tensors of shape {expect} (tile_stats(A, {tile})), got "
                             f"{type(stats).__name__}") from None
        if not (isinstance(tmax, torch.Tensor) and isinstance(tmin, torch.Tensor)):  # (an AttributeError of .shape)
            raise TypeError(f"stats must be two tensors of shape {expect} (tile_stats(A, {tile})), got "
                            f"{type(tmax).__name__} and {type(tmin).__name__}")
        if tuple(tmax.shape) != expect or tuple(tmin.shape) != expect:
            raise ValueError(f"stats must be two tensors of shape {expect} (tile_stats(A, {tile}))")
        for s in (tmax, tmin):  # (aten::bitwise_or's SparseCPU error)
            check_dense(s, "stats")
        if tmax.dtype != torch.float32 or tmin.dtype != torch.float32 or tmax.device != x.device or tmin.device != x.device:
            raise ValueError(f"stats must be float32 tensors on {x.device} (tile_stats(A, {tile}))")
        if given:
            check_given_stats(stats, A, tile, tmax, tmin)
    return A, tile, backend, tmax, tmin


def check_given_stats(stats, A: torch.Tensor, tile: int, tmax: torch.Tensor, tmin: torch.Tensor) -> None:
    """stats= made by tile_stats of this very A (TileStats.matches), else (by hand, a plain tuple) searched for a NaN
    of A (a tile holding one has NaN stats) and for max < min, in one device sync."""
    known = stats.matches(A, tile) if isinstance(stats, TileStats) and _plain_eager(A) else None
    if known is False:  # the C++ and Triton kernels would classify tiles by another A's statistics
        raise ValueError(f"stats were made of another A, or of this A before it changed in place: call "
                         f"tile_stats(A, {tile}) again")
    if known is None and values_checkable(tmax):
        nan, swapped = torch.stack([(tmax.isnan() | tmin.isnan()).any(), (tmax < tmin).any()]).tolist()
        if nan:
            raise ValueError("A contains NaN")
        if swapped:
            raise ValueError("stats must be (tile_max, tile_min), in that order: some tile_max < tile_min")


def masked_q_sample(
    x0: torch.Tensor,
    c: torch.Tensor,
    noise: torch.Tensor,
    A: Optional[torch.Tensor],
    tau: torch.Tensor | float,
    ab: torch.Tensor | float,
    *,
    backend: Union[str, Backend] = "auto",
) -> torch.Tensor:
    """Training-time forward noising with YODA masks (DESIGN.md §7):
    x_t = sqrt(ab) (x0 where A >= tau else c) + sqrt(1 - ab) noise, per batch element.

    x0, c, noise: (B, C, H, W); A: (B, 1, H, W), (B, H, W) or None; tau and ab: floats or (B,) tensors, ab in
    (0, 1]. NaN in A, tau or ab and an ab out of range are refused (not on the meta device or under
    torch.compile); inputs that want a gradient only on the "naive" backend."""
    A = check_q_sample_states(x0, c, noise, A)
    B = x0.shape[0]

    def per_batch(name, v):
        if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):  # (True was 1.0)
            raise TypeError(f"{name} must be a float or a ({B},) tensor, got a bool")
        if name == "tau":
            refuse_tau_grad(v)
        if isinstance(v, torch.Tensor) and v.is_complex():  # (as_tensor dropped the imaginary part)
            raise TypeError(f"{name} must be a float or a ({B},) tensor of floats, got {v.dtype}")
        if isinstance(v, numbers.Integral):
            try:
                float(v)
            except OverflowError:  # past float64's range: its infinity, as masked_step takes such a tau (it was a
                v = math.inf if v > 0 else -math.inf  # bare OverflowError)
        try:
            v = torch.as_tensor(v, dtype=torch.float64, device=x0.device)
        except OverflowError:  # (a list holding such an int)
            raise ValueError(f"{name} must be a float or a ({B},) tensor, got a number past float64's range") \
                from None
        except (TypeError, ValueError, RuntimeError):  # (it said "new(): invalid data type 'str'")
            raise TypeError(f"{name} must be a float or a ({B},) tensor, got {v!r}") from None
        if v.dim() == 0:
            v = v.expand(B)
        if v.shape != (B,):
            raise ValueError(f"{name} must be a float or a ({B},) tensor, got shape {tuple(v.shape)}")
        check_nan(name, v)
        return v.contiguous()

    ab = per_batch("ab", ab)
    if values_checkable(ab) and ((ab <= 0) | (ab > 1)).any():
        raise ValueError("ab must be in (0, 1]")
    tau = per_batch("tau", tau).float()
    if A is not None:
        check_nan("A", A)
    backend = _backend_name(backend, x0.device)
    _check_no_grad("masked_q_sample", backend, x0, c, noise, A, ab, tau)  # ab, tau: a tensor's grad was dropped
    # sqrt(1 - ab) in float64: 1 - ab cancels badly in float32 at the smallest noise levels (ab ~ 1 - 1e-6)
    sqrt_ab, sqrt_1m_ab = ab.sqrt().float(), (1 - ab).sqrt().float()
    return _impl("masked_q_sample", backend, x0)(x0, c, noise, A, sqrt_ab, sqrt_1m_ab, tau)
