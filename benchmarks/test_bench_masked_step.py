"""masked_step benchmark: every backend at three sizes and three active fractions; correctness first, then
time; effective bandwidth from the minimal byte count.

    pytest benchmarks/ --benchmark-only                      # all (CPU: naive and cpp)
    pytest benchmarks/ --benchmark-only -k "cpp and 1024"    # a subset

Minimal bytes of one step (fp32 state, Philox noise, nothing else is needed):
    active pixel:   read x and model_out, write out          3 x C x 4 bytes
    inactive pixel: read c, write out                         2 x C x 4 bytes
    mixed tiles:    + A, once per pixel (not per channel)     4 bytes
tile_max / tile_min are computed once per sampling run (A is fixed) and passed in, so not counted.
The attention is a coherent blob (yoda_kernels.testing.blob_attention), thresholded at the quantile that
activates the wanted fraction of pixels -- as real attention maps are, not random pixels.

On CPU the naive reference is timed with one round (it takes seconds at 4x3x1024^2: its Philox runs in
int64 tensor ops); the C++ kernel with several. test_cpp_speedup_over_naive records the ratio at
4x3x512^2 (target >= 4x on the 2-core development machine). With --benchmark-disable (or xdist) nothing is
timed: the outputs are still checked against the reference.
"""

from __future__ import annotations


import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import naive
from yoda_kernels import testing as T
from _timing import fastest, interleaved, median, ratio  # benchmarks/_timing.py


# one table (and one baseline for the relative columns) per file: pytest-benchmark compares within a group
pytestmark = pytest.mark.benchmark(group="masked_step")

SHAPES = ((1, 3, 512, 512), (4, 3, 1024, 1024), (16, 4, 128, 128))
FRACTIONS = (0.0, 0.5, 1.0)
TILE = 16
SEED, STEP = 7, 3
COEFS = yk.step_coefficients(0.3, 0.45, prediction="eps", sampler="ddpm")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_naive_out: dict = {}  # (shape, fraction) -> naive output (the correctness oracle, computed once)


def _backends():
    have = yk.available_backends(DEVICE)
    out = ["naive", "cpp"]  # cpp always: a missing build is a skip line (_cpp_unavailable), not a vanished row
    if DEVICE == "cuda":  # off a GPU the Triton interpreter is not a performance backend
        out += [b for b in ("cuda", "triton") if b in have]
    out.append("compile-naive")  # torch.compile of the reference (explicit noise): what fusion alone gives
    return out


def _cpp_unavailable():
    """Why the C++ kernel is not timed here (None: it is)."""
    if DEVICE != "cpu":
        return "the C++ kernel is a CPU kernel; the inputs are on the GPU here"
    if yk.extension_error is not None:
        return f"C++ backend unavailable: {yk.extension_error}"
    if "cpp" not in yk.available_backends("cpu"):
        return "C++ backend unavailable: the extension has no CPU kernel"
    return None


_inputs_cache: dict = {}


def _inputs(shape, fraction):
    key = (shape, fraction)
    if key not in _inputs_cache:
        _inputs_cache.clear()  # keep one size in memory (4x3x1024^2 fp32 is 50 MB per tensor)
        g = torch.Generator().manual_seed(0)
        B, C, H, W = shape
        x, out, c = (torch.randn(shape, generator=g).to(DEVICE) for _ in range(3))
        A = T.blob_attention(B, H, W, device=DEVICE)
        tau = T.tau_for_fraction(A, fraction)
        stats = yk.tile_stats(A, TILE)
        _inputs_cache[key] = (x, out, c, A, tau, stats)
    return _inputs_cache[key]


def minimal_bytes(x, A, tau, stats) -> int:
    """The bytes a step must move (module docstring)."""
    B, C, H, W = x.shape
    s = x.element_size()
    active = int((A >= torch.tensor(tau, dtype=torch.float32)).sum())
    inactive = B * H * W - active
    tmax, tmin = stats
    mixed_tiles = (tmax >= tau) & ~(tmin >= tau)
    # pixels of mixed tiles (ragged edge tiles counted by their true size)
    rows = torch.full((tmax.shape[1],), TILE)
    rows[-1] = H - TILE * (tmax.shape[1] - 1)
    cols = torch.full((tmax.shape[2],), TILE)
    cols[-1] = W - TILE * (tmax.shape[2] - 1)
    area = rows.view(-1, 1) * cols.view(1, -1)
    mixed_px = int((mixed_tiles.cpu() * area).sum())
    return active * C * 3 * s + inactive * C * 2 * s + mixed_px * A.element_size()


def _run(backend, x, out, c, A, tau, stats):
    if backend == "compile-naive":
        # The step's own Philox noise, precomputed and passed explicitly: Inductor does not finish compiling the
        # reference's exact int64 Philox (> 15 min on the 2-core CPU), so this row is fusion of the rest alone.
        fn = _compiled_naive((tuple(x.shape), tau))
        return fn(x, out, c, A, stats[0], stats[1], tau, COEFS, False, SEED, STEP, _step_noise(x), TILE)
    return yk.masked_step(x, out, c, A, tau, coefs=COEFS, seed=SEED, step=STEP, tile=TILE, stats=stats,
                          backend=backend)


_compiled: dict = {}  # (shape, tau) -> torch.compile of the reference, for that cell only
_noise_of: dict = {}


def _step_noise(x):
    """The Philox noise of (SEED, STEP) for x's shape on x's device, computed once (outside the timings)."""
    key = (tuple(x.shape), str(x.device))
    if key not in _noise_of:
        _noise_of.clear()
        _noise_of[key] = T.reference_noise(x.shape, SEED, STEP, COEFS).to(x.device)
    return _noise_of[key]


def _compiled_naive(key):
    """A compiled reference per cell, dynamo reset in between: dynamo specialises on the float tau, so one function
    shared by the 9 cells recompiled at each and ran the 9th eagerly, silently, past its recompile limit (8)."""
    if key not in _compiled:
        _compiled.clear()
        torch._dynamo.reset()
        _compiled[key] = torch.compile(naive.masked_step, dynamic=False)
    return _compiled[key]


@pytest.fixture(autouse=True)
def _no_eager_fallback():
    """A compiled function past dynamo's recompile limit raises here instead of running eagerly under its name."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _reference(shape, fraction, x, out, c, A, tau, stats):
    key = (shape, fraction)
    if key not in _naive_out:
        _naive_out[key] = _run("naive", x, out, c, A, tau, stats)
    return _naive_out[key]


def _check(backend, got, ref):
    """Correctness before timing: every backend draws the same normals, and computes in float32 in the reference's
    operation order, so outputs (O(1) here) differ from naive's by a few float32 ulps at most."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    err = (got.double() - ref.double()).abs().max().item()
    assert err <= 4e-6, f"{backend}: max |out - naive| = {err:.3g}"


@pytest.mark.parametrize("fraction", FRACTIONS, ids=lambda f: f"active{int(f * 100)}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", _backends())
def test_masked_step(benchmark, backend, shape, fraction):
    if backend == "cpp" and _cpp_unavailable():
        pytest.skip(_cpp_unavailable())
    x, out, c, A, tau, stats = _inputs(shape, fraction)
    ref = _reference(shape, fraction, x, out, c, A, tau, stats)
    if backend != "naive":
        _check(backend, _run(backend, x, out, c, A, tau, stats), ref)  # also warms up (compiles) the backend

    def once():
        y = _run(backend, x, out, c, A, tau, stats)
        _sync()
        return y

    slow = backend == "naive" and DEVICE == "cpu"
    benchmark.pedantic(once, rounds=1 if slow else 5, iterations=1, warmup_rounds=0 if slow else 1)
    nbytes = minimal_bytes(x, A, tau, stats)
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        active_fraction=fraction,
        minimal_bytes=nbytes,
    )
    if fastest(benchmark):  # over the fastest round: one stalled round on the shared machine does not count
        benchmark.extra_info["effective_GBps_min"] = round(nbytes / fastest(benchmark) / 1e9, 3)


@pytest.mark.skipif(_cpp_unavailable() is not None, reason=str(_cpp_unavailable()))
def test_cpp_speedup_over_naive(benchmark):
    """C++ / naive time ratio at 4x3x512^2, half the pixels active, in-kernel Philox noise (target >= 4x on 2
    cores): the median of per-round ratios, the two timed interleaved in this test (the machine is shared).
    The recorded ratios are 100-190x (RESULTS.md): the 4x only catches a broken C++ path, not a slower kernel."""
    shape, fraction = (4, 3, 512, 512), 0.5
    x, out, c, A, tau, stats = _inputs(shape, fraction)
    _check("cpp", _run("cpp", x, out, c, A, tau, stats), _reference(shape, fraction, x, out, c, A, tau, stats))
    fns = {b: (lambda b=b: _run(b, x, out, c, A, tau, stats)) for b in ("naive", "cpp")}
    benchmark.pedantic(fns["cpp"], rounds=3, iterations=1, warmup_rounds=0)
    if not benchmark.enabled:  # timing off (--benchmark-disable, xdist): the check above is the test
        return
    times = interleaved(fns, 3)
    speedup = ratio(times, "naive", "cpp")
    benchmark.extra_info.update(naive_ms=round(median(times["naive"]) * 1e3, 1),
                                cpp_ms=round(median(times["cpp"]) * 1e3, 2), speedup=round(speedup, 1))
    assert speedup >= 4.0, f"C++ is only {speedup:.1f}x faster than naive (target >= 4x)"


CMP_SHAPES = ((4, 3, 512, 512), (4, 3, 1024, 1024))


@pytest.mark.skipif(_cpp_unavailable() is not None, reason=str(_cpp_unavailable()))
@pytest.mark.parametrize("threads", (1, 2), ids=lambda t: f"thr{t}")
@pytest.mark.parametrize("fraction", FRACTIONS, ids=lambda f: f"active{int(f * 100)}")
@pytest.mark.parametrize("shape", CMP_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpp_vs_compile(benchmark, shape, fraction, threads):
    """C++ masked_step against torch.compile(naive.masked_step), both with the same explicit noise tensor, timed
    interleaved in one run (compile time excluded); also the C++ step with its in-kernel Philox noise. The
    ratios are the medians of per-round ratios (the machine is shared). Target (issue 13): cpp / compile <= 1
    and philox / explicit <= 1.5; recorded in extra_info, not asserted (too noisy on a shared 2-core box)."""
    x, out, c, A, tau, stats = _inputs(shape, fraction)
    z = _step_noise(x)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch._dynamo.reset()  # Inductor's C++ fixes the OpenMP thread count when it compiles
        comp = torch.compile(naive.masked_step, dynamic=False)

        def run_compile():
            return comp(x, out, c, A, stats[0], stats[1], tau, COEFS, False, SEED, STEP, z, TILE)

        def run_cpp(noise):
            return yk.masked_step(x, out, c, A, tau, coefs=COEFS, seed=SEED, step=STEP, tile=TILE, stats=stats,
                                  noise=noise, backend="cpp")

        ref = naive.masked_step(x, out, c, A, stats[0], stats[1], tau, COEFS, False, SEED, STEP, z, TILE)
        assert torch.equal(run_compile(), ref)  # also compiles (outside the timings)
        assert torch.equal(run_cpp(z), ref)  # same noise, same operation order: bit for bit
        fns = {"cpp": lambda: run_cpp(z), "compile": run_compile, "cpp_philox": lambda: run_cpp(None)}
        benchmark.pedantic(fns["cpp"], rounds=3, iterations=1, warmup_rounds=0)
        times = interleaved(fns, 9) if benchmark.enabled else None  # None: timing off, the checks are the test
    finally:
        torch.set_num_threads(old)
    if times is None:
        return
    benchmark.extra_info.update(threads=threads, cpp_ms=round(median(times["cpp"]) * 1e3, 3),
                                compile_ms=round(median(times["compile"]) * 1e3, 3),
                                cpp_philox_ms=round(median(times["cpp_philox"]) * 1e3, 3),
                                cpp_over_compile=round(ratio(times, "cpp", "compile"), 3),
                                philox_over_explicit=round(ratio(times, "cpp_philox", "cpp"), 3))


def _noise_hooks():
    if yk.extension_error is not None:  # a refused build (stale, another ABI) is not benchmarked
        return None
    from yoda_kernels import _C

    return _C if hasattr(_C, "box_muller_block") else None


@pytest.mark.skipif(_noise_hooks() is None, reason=f"C++ backend unavailable: {yk.extension_error}"
                    if yk.extension_error else "C++ block noise hooks not built")
@pytest.mark.parametrize("path", ["block", "scalar"])
def test_cpp_box_muller(benchmark, path):
    """The noise transform of 2**20 word pairs, single thread: the block path masked_step uses
    (csrc/cpu/normals.h, vectorised: AVX-512 or AVX2 + FMA clone) vs philox.h's scalar normal_pair one pair at a
    time. Includes the hook's copies (~1 ms); compare the two in one run."""
    C = _noise_hooks()
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 2**32, (2**20,), generator=g).numpy().astype("uint32").tobytes() for _ in range(2))
    out = benchmark.pedantic(lambda: C.box_muller_block(a, b, path=path), rounds=5, iterations=1, warmup_rounds=1)
    assert out == C.box_muller_block(a, b, path="scalar")  # the same bits on every path (it timed them only)
    benchmark.extra_info.update(isa=C.noise_isa() if path == "block" else "scalar", pairs=2**20)
