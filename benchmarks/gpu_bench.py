"""GPU benchmark of one YODA step (masked_step): copy bandwidth, naive eager, torch.compile(naive), Triton, CUDA.

Checks first, then times: every implementation's output is compared with the reference before it is timed, and
must equal it bit for bit (the kernels compute the reference's float32 operations in its order and round once to
the state's dtype: fp32, fp16 and bf16 states). torch.compile of the reference runs right after the first shape's
rows, with explicit noise or none, within 1e-5 (Inductor may fuse multiply-adds); its table is printed after the
main one. Timing: triton.testing.do_bench (CUDA events, warm-up, median, L2 flushed between runs), inputs
random normal (never zeros); each kernel also replayed from a CUDA graph (do_bench_cudagraph: its own time,
without the host's launch cost), and the host's time per call is measured last on a tiny shape. Bandwidth is
counted on the *minimal* bytes of the step at the given active fraction (each needed input read once, the
output written once):

    out (all pixels)  +  x, model_out (active pixels)  +  c (inactive pixels)
    +  A (pixels of mixed tiles only)  +  tile_max, tile_min  (+ the noise tensor, when it is explicit)

and reported as GB/s and as % of the card's device-to-device copy bandwidth (bytes read + written).
Attention is a coherent blob per image (a Gaussian), tau set by quantile for 0 / 50 / 100 % active.

    python3 benchmarks/gpu_bench.py --out $OUT/gpu_results.md          # on the GPU machine
    python3 benchmarks/gpu_bench.py --cpu-dry-run                      # logic check on a CPU (tiny sizes)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="markdown results file (default: print only)")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="tiny sizes on the CPU (Triton through the interpreter, host timers): checks the logic")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(naive)")
    p.add_argument("--budget-s", type=float, default=150.0,
                   help="wall-clock budget: later torch.compile cases are skipped once it is spent")
    p.add_argument("--hard-budget-s", type=float, default=None,
                   help="wall-clock budget: every later case is skipped once it is spent (default 240 on a GPU, none "
                        "for --cpu-dry-run, which checks every case's logic)")
    return p


PARSER = make_parser()
ARGS = PARSER.parse_args()
if ARGS.hard_budget_s is None:
    ARGS.hard_budget_s = float("inf") if ARGS.cpu_dry_run else 240.0
if ARGS.cpu_dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

if not ARGS.cpu_dry_run and not torch.cuda.is_available():  # before --out's folder is made
    PARSER.error("no CUDA device visible; --cpu-dry-run runs the checks on the CPU")

import yoda_kernels as yk  # noqa: E402
from yoda_kernels import coefs as coefs_mod  # noqa: E402
from yoda_kernels import naive  # noqa: E402

START = time.time()
# Noise of the step: Philox in the kernel, an explicit tensor (read like an input), or none (sigma = lb = 0).
# torch.compile(naive) is timed without Philox only: Inductor does not finish compiling the reference's
# exact int64 Philox (measured on the CPU), so the >= 2x target is checked on the explicit-noise step.
NOISE_MODES = ("philox", "tensor", "none")
DEV = "cpu" if ARGS.cpu_dry_run else "cuda"
TILE = 16


def bench(fn) -> float:
    """Median milliseconds of fn()."""
    if DEV == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def bench_graph(fn) -> float | None:
    """Median milliseconds of fn() replayed from a CUDA graph: the kernel's own time, without the host's launch
    cost (Python, Triton's argument binding), which an eager call exposes once it exceeds the GPU's. None off a
    GPU or if fn cannot be captured."""
    if DEV != "cuda":
        return None
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median"))
    except Exception as e:  # report, do not fail the table: the eager time is the main column
        print(f"  (CUDA graph timing failed: {type(e).__name__}: {str(e).splitlines()[0][:100]})", flush=True)
        return None


def host_us_per_call(fn) -> float:
    """Microseconds of host time per call of fn() issued back to back on a tiny shape, where the GPU finishes each
    kernel before the next launch is issued: the launch overhead (the rate the host can feed the GPU)."""
    n = 300 if DEV == "cuda" else 2  # the CPU dry run only checks the logic (Triton's interpreter is slow)
    for _ in range(min(n, 20)):
        fn()
    if DEV == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if DEV == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def launch_overhead_lines(have: list[str]) -> list[str]:
    """Host microseconds per call of each kernel on 1x3x64x64 with attention and Philox noise: the raw op (for
    Triton the custom_op, which torch.compile calls), the public entry point (yoda_kernels.masked_step, with its
    checks, TileStats given), MaskedOps.step (what yoda.sample calls: the fixed arguments checked once), and for Triton the launch function alone (what the public
    entry point calls outside torch.compile, and what the table times)."""
    gen = torch.Generator().manual_seed(1)
    x, o, c = (torch.randn(1, 3, 64, 64, generator=gen).to(DEV) for _ in range(3))
    A = blob_attention(1, 64, 64, gen)
    stats = yk.tile_stats(A, TILE)
    cf = coefs_mod.step_coefficients(0.3, 0.35)
    args = (x, o, c, A, *stats, 0.5, cf, False, 1234, 5, None, TILE)
    rows = []
    for name in [n for n in ("cuda", "triton") if n in have]:
        op = torch.ops.yoda.masked_step if name == "cuda" else torch.ops.yoda.masked_step_triton
        public = lambda: yk.masked_step(x, o, c, A, 0.5, coefs=cf, seed=1234, step=5, tile=TILE,  # noqa: E731
                                        stats=stats, backend=name)  # noqa: B023
        bound = yk.MaskedOps(c, A, tile=TILE, stats=stats, seed=1234, backend=name)
        loop = lambda: bound.step(x, o, 0.5, coefs=cf, step=5)  # noqa: E731,B023 - what yoda.sample calls
        cells = [f"op {host_us_per_call(lambda: op(*args)):.1f}", f"public {host_us_per_call(public):.1f}",
                 f"MaskedOps.step {host_us_per_call(loop):.1f}"]
        if name == "triton":
            from yoda_kernels.triton import EAGER

            cells.append(f"launch function {host_us_per_call(lambda: EAGER['masked_step_triton'](*args)):.1f}")
        rows.append(f"- {name}: " + ", ".join(cells) + " us per call")
    return rows


def copy_bandwidth() -> tuple[float, float]:
    """(GB/s, ms) of a large device-to-device copy, counting bytes read + written."""
    n = (256 << 20) if DEV == "cuda" else (1 << 20)  # 1 GiB of fp32 on the GPU, 4 MiB on the CPU
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * n * 4 / ms / 1e6, ms


def blob_attention(B, H, W, gen) -> torch.Tensor:
    """(B, 1, H, W) coherent attention: a Gaussian blob per image (random centre), in [0, 1]."""
    y = torch.linspace(-1, 1, H).view(1, H, 1)
    x = torch.linspace(-1, 1, W).view(1, 1, W)
    cy = (torch.rand(B, 1, 1, generator=gen) - 0.5) * 0.5
    cx = (torch.rand(B, 1, 1, generator=gen) - 0.5) * 0.5
    A = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.5)
    A = (A - A.amin((1, 2), keepdim=True)) / (A.amax((1, 2), keepdim=True) - A.amin((1, 2), keepdim=True))
    return A.unsqueeze(1).to(DEV)


def tau_for(A: torch.Tensor, frac: float) -> float:
    """Threshold giving ~frac of the pixels active (A >= tau)."""
    if frac <= 0:
        return 1.5  # above every value of A
    if frac >= 1:
        return 0.0
    flat = A.flatten().float()
    k = max(1, int(round(flat.numel() * (1 - frac))))
    return float(flat.kthvalue(k).values.item())


def minimal_bytes(shape, es: int, A: torch.Tensor, tau: float, tmax, tmin) -> tuple[int, float]:
    """(bytes, active fraction) the step needs at tau (see module docstring)."""
    B, C, H, W = shape
    active = (A >= tau).sum().item()
    pixels = B * H * W
    mixed = ((tmax >= tau) & (tmin < tau)).repeat_interleave(TILE, 1).repeat_interleave(TILE, 2)
    mixed_px = mixed[:, :H, :W].sum().item()
    total = pixels * C * es + active * C * 2 * es + (pixels - active) * C * es
    total += mixed_px * A.element_size() + 2 * tmax.numel() * 4
    return int(total), active / pixels


def check_and_time(fn, args, ref, graph: bool = False) -> tuple[float, float, float | None]:
    """(median ms of fn(*args), max |fn(*args) - ref|, median ms replayed from a CUDA graph if ``graph``, else
    None): every backend computes the reference's float32 operations in its order and rounds once to the state's
    dtype, so anything but 0 is a mismatch."""
    got = fn(*args)
    err = (got.float() - ref.float()).abs().max().item()
    return bench(lambda: fn(*args)), err, (bench_graph(lambda: fn(*args)) if graph else None)


def compile_pass(sweep_cases: dict, first_ms: dict, copy_gbs: float) -> tuple[int, list[str]]:
    """torch.compile of the reference on the first shape, after every shape's rows, the masked_combine strips and the
    host times (its cold compiles are the slowest part: what comes before is cheap and owed), before the launch
    sweep, printed after the main table: explicit
    noise and none only (Inductor did not finish compiling the reference's exact int64 Philox in 15 min on the
    2-core CPU). Returns (the number of failed checks, the table's lines)."""
    lines: list[str] = []
    emit = lines.append
    compiled = torch.compile(naive.masked_step)
    impls = [name for name in ("triton", "cuda") if any(k[2] == name for k in first_ms)]
    emit("")
    emit("torch.compile(naive.masked_step) on the first shape (fp32); speed-up = compile's ms / the kernel's ms "
         "(target >= 2x):")
    emit("")
    emit("| active | noise | compile ms | % of copy | " + " | ".join(f"{n} speed-up" for n in impls) + " | check |")
    emit("|---|---|---|---|" + "---|" * len(impls) + "---|")
    failures = 0
    for (frac, mode), (args, nbytes) in sorted(sweep_cases.items()):
        if mode == "philox":
            continue
        if time.time() - START > min(ARGS.budget_s, ARGS.hard_budget_s):
            emit(f"| {frac:.0%} | {mode} | skipped (time budget) | |" + " |" * len(impls) + " |")
            continue
        try:
            ref = naive.masked_step(*args)
            ms, err, _ = check_and_time(compiled, args, ref)
            ok = err <= 1e-5 * max(1.0, ref.abs().max().item())  # Inductor may contract a * b + c into an FMA
        except Exception as e:
            failures += 1
            emit(f"| {frac:.0%} | {mode} | ERROR {type(e).__name__}: {str(e).splitlines()[0][:120]} | |"
                 + " |" * len(impls) + " |")
            continue
        failures += not ok
        ups = [f"{ms / first_ms[(frac, mode, n)]:.2f}x" if (frac, mode, n) in first_ms else "" for n in impls]
        emit(f"| {frac:.0%} | {mode} | {ms:.3f} | {100 * nbytes / ms / 1e6 / copy_gbs:.1f}% | " + " | ".join(ups)
             + f" | {'ok' if ok else 'MISMATCH'} (max err {err:.1e}) |")
        print(lines[-1], flush=True)
    return failures, lines


def combine_strips(sweep_cases: dict) -> tuple[int, list[str]]:
    """masked_combine (three estimates, Philox) on the first shape at its 1024-pixel Philox strips (the default)
    and at masked_step's 2048 (launch_config's philox_pixels): whether the default should follow masked_step's.
    Both must equal the reference bit for bit. Returns (failed checks, the table's lines)."""
    from yoda_kernels.triton.masked_combine import launch_masked_combine
    from yoda_kernels.triton.masked_step import launch_config

    lines = ["", "masked_combine, 3 estimates, Philox, first shape: 1024- vs 2048-pixel strips:", "",
             "| active | 1024 px (default) ms | 2048 px ms | 2048 / 1024 speed-up | check |", "|---|---|---|---|---|"]
    failures = 0
    coefs = [0.2, 0.5, 0.2, 0.1, 0.3, 0.6, 0.4]  # cx, cd0, cd1, cd2, sigma, la, lb
    for (frac, mode), (args, _) in sorted(sweep_cases.items()):
        if mode != "philox":
            continue
        if time.time() - START > ARGS.hard_budget_s:
            lines.append(f"| {frac:.0%} | skipped (time budget) | | | |")
            continue
        x, o, c, A, tmax, tmin, tau = args[:7]
        cargs = (x, o, c, x, c, A, tmax, tmin, tau, coefs, 1234, 5, None, TILE)
        W = x.shape[-1]
        try:
            ref = naive.masked_combine(*cargs)
            cells, ok = [], True
            for pixels in (1024, 2048):
                bw, nw = launch_config(W, TILE, True, True, philox_pixels=pixels)
                got = launch_masked_combine(*cargs, block_w=bw, num_warps=nw)
                ok = ok and torch.equal(got, ref)
                cells.append(bench(lambda: launch_masked_combine(*cargs, block_w=bw, num_warps=nw)))  # noqa: B023
        except Exception as e:
            failures += 1
            lines.append(f"| {frac:.0%} | ERROR {type(e).__name__}: {str(e).splitlines()[0][:100]} | | | |")
            continue
        failures += not ok
        lines.append(f"| {frac:.0%} | {cells[0]:.3f} | {cells[1]:.3f} | {cells[0] / cells[1]:.2f}x | "
                     f"{'ok' if ok else 'MISMATCH'} |")
        print(lines[-1], flush=True)
    return failures, lines


def bench_cases():
    """(shape, dtype) in the order they are run: the target shape in float32 first, then its half-precision
    states (half the bytes), then a smaller shape."""
    if DEV == "cpu":
        return [((1, 3, 32, 48), torch.float32), ((1, 3, 32, 48), torch.float16)]
    big = (4, 3, 2048, 2048)
    return [(big, torch.float32), (big, torch.float16), (big, torch.bfloat16), ((4, 3, 1024, 1024), torch.float32)]


def main() -> int:
    lines: list[str] = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)
        if ARGS.out:  # rewritten after every row: a run cut short still leaves its table
            with open(ARGS.out, "w") as f:
                f.write("\n".join(lines) + "\n")

    if ARGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(ARGS.out)), exist_ok=True)

    card = torch.cuda.get_device_name() if DEV == "cuda" else f"CPU dry run ({platform.processor() or 'cpu'})"
    import triton

    emit(f"# masked_step benchmark on {card}")
    emit()
    emit(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}; "
         f"backends on {DEV}: {yk.available_backends(DEV)}"
         + (f"; extension: {yk.extension_error}" if yk.extension_error else ""))
    copy_gbs, copy_ms = copy_bandwidth()
    copy_size, timer = (("1 GiB", "median of triton.testing.do_bench") if DEV == "cuda" else
                        ("4 MiB", "median of 3 host timer (perf_counter) runs after one warm-up call"))
    emit(f"{'Device-to-device' if DEV == 'cuda' else 'Host'} copy ({copy_size}, read + write): "
         f"**{copy_gbs:.0f} GB/s** ({copy_ms:.3f} ms)")
    emit(f"tile {TILE}; timings: {timer}; GB/s on the minimal bytes.")
    emit()

    impls = {"naive eager": lambda *a: naive.masked_step(*a)}
    have = yk.available_backends(DEV)
    if "triton" in have:  # the launch function, as the public ops call it outside torch.compile (ops._impl)
        from yoda_kernels.triton import EAGER

        impls["triton"] = EAGER["masked_step_triton"]
    if "cuda" in have:
        impls["cuda"] = lambda *a: torch.ops.yoda.masked_step(*a)

    emit("| shape | dtype | active | noise | impl | ms | GB/s | % of copy | graph ms | % of copy in a graph | check |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    sweep_cases = {}  # (active fraction, noise mode) -> (args, minimal bytes) of the first shape
    first_ms = {}  # (active fraction, noise mode, impl) -> ms of the first shape
    compile_lines: list[str] = []
    first = bench_cases()[0]
    for shape, dtype in bench_cases():
        gen = torch.Generator().manual_seed(0)
        x, o, c, z = (torch.randn(shape, generator=gen).to(DEV, dtype) for _ in range(4))
        A = blob_attention(shape[0], shape[2], shape[3], gen)
        tmax, tmin = naive.tile_stats(A, TILE)
        es = x.element_size()
        for frac in (0.0, 0.5, 1.0):
            tau = tau_for(A, frac)
            nbytes, act = minimal_bytes(shape, es, A, tau, tmax, tmin)
            for mode in NOISE_MODES:
                cf = coefs_mod.step_coefficients(0.3, 1.0 if mode == "none" else 0.35)
                args = (x, o, c, A, tmax, tmin, tau, cf, False, 1234, 5, z if mode == "tensor" else None, TILE)
                mode_bytes = nbytes + (z.numel() * es if mode == "tensor" else 0)  # the explicit noise is read
                ref = naive.masked_step(*args)
                for name, fn in impls.items():
                    tag = f"| {'x'.join(map(str, shape))} | {str(dtype).split('.')[-1]} | {act:.0%} | {mode} | {name} "
                    if time.time() - START > ARGS.hard_budget_s:
                        emit(tag + "| skipped (time budget) | | | | | |")
                        continue
                    try:
                        ms, err, gms = check_and_time(fn, args, ref, graph=name != "naive eager")
                    except Exception as e:  # report and go on: one broken backend must not hide the others
                        failures += 1
                        emit(tag + f"| ERROR {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | | |")
                        continue
                    failures += err != 0
                    if (shape, dtype) == first:
                        first_ms[(frac, mode, name)] = ms
                    gbs = mode_bytes / ms / 1e6
                    graph = (f"{gms:.3f} | {100 * mode_bytes / gms / 1e6 / copy_gbs:.1f}%" if gms else " | ")
                    emit(tag + f"| {ms:.3f} | {gbs:.0f} | {100 * gbs / copy_gbs:.1f}% | {graph} | "
                         f"{'ok' if err == 0 else 'MISMATCH'} (max err {err:.1e}) |")
                if (shape, dtype) == first:
                    sweep_cases[(frac, mode)] = (args, mode_bytes)
                del ref
        del x, o, c, z, A
        if DEV == "cuda":
            torch.cuda.empty_cache()

    # masked_combine's pending launch question and the host times first: cheap and owed; the cold torch.compile
    # pass and the launch sweep below may run out of the time budget
    if "triton" in have and sweep_cases:
        bad, combine_lines = combine_strips(sweep_cases)
        failures += bad
        for line in combine_lines:
            emit(line)
    emit()
    emit("Launch overhead: host time per call on 1x3x64x64 (attention, Philox), calls issued back to back:")
    emit()
    try:  # (16 calls: ~20 s of the CPU dry run's interpreter)
        over = time.time() - START > ARGS.hard_budget_s
        for line in ["- skipped: past --hard-budget-s"] if over else launch_overhead_lines(have):
            emit(line)
    except Exception as e:  # the tables above stand without it
        failures += 1
        emit(f"- ERROR {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
    if sweep_cases and not ARGS.no_compile:
        bad, compile_lines = compile_pass(sweep_cases, first_ms, copy_gbs)
        failures += bad
    # Launch-configuration sweep of the Triton kernel on the first shape: pixels per thread (TILE x BLOCK_W over
    # the threads) and warps, at every active fraction, with and without Philox noise.
    if "triton" in have and sweep_cases:
        from yoda_kernels.triton.masked_step import launch_config, launch_masked_step

        shape0 = next(iter(sweep_cases.values()))[0][0].shape
        W = shape0[-1]
        emit()
        emit(f"Triton launch sweep ({'x'.join(map(str, shape0))}, tile {TILE}; "
             f"% of copy bandwidth; defaults: philox {launch_config(W, TILE, True)}, "
             f"none {launch_config(W, TILE, False)}):")
        emit()
        cases = sorted(k for k in sweep_cases if k[1] != "tensor")
        emit("| BLOCK_W | num_warps | pixels/thread | " + " | ".join(
            f"{frac:.0%} {mode}" for frac, mode in cases) + " |")
        emit("|---|---|---|" + "---|" * len(cases))
        for bw, nw in ((32, 4), (64, 4), (128, 4), (64, 8), (128, 8), (256, 8)):
            cells = []
            for key in cases:
                args, nbytes = sweep_cases[key]
                if time.time() - START > ARGS.hard_budget_s:
                    cells.append("skipped")
                    continue
                try:
                    # any launch configuration draws the same noise per element: the output must not change
                    got = launch_masked_step(*args, block_w=bw, num_warps=nw)
                    if not torch.equal(got, torch.ops.yoda.masked_step_triton(*args)):
                        failures += 1
                        cells.append("MISMATCH")
                        continue
                    ms = bench(lambda: launch_masked_step(*args, block_w=bw, num_warps=nw))
                    cells.append(f"{ms:.3f} ms {100 * nbytes / ms / 1e6 / copy_gbs:.0f}%")
                except Exception as e:
                    cells.append(f"ERROR {type(e).__name__}")
            emit(f"| {bw} | {nw} | {TILE * bw // (32 * nw)} | " + " | ".join(cells) + " |")
    for line in compile_lines:
        emit(line)
    emit()
    emit(f"checks failed: {failures}; wall time {time.time() - START:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
