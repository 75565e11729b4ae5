"""Whole-loop speed of yoda.sample on a GPU (issue 12, item 5): the embedded model, one photograph, DDIM.

Each row is one set of speed options of yoda.sample (compile, autocast, channels_last, cuda_graphs), timed over
the whole call (features, every step's network call and masked step, decoding) and checked against the plain
float32 run of the same seed: the largest difference and the PSNR to it (inf: bit-identical). One call warms up
(torch.compile compiles, a CUDA graph is captured), then the median of --repeats calls is reported, with
torch.cuda.synchronize around each.

The sampler's overhead is measured the way benchmarks/test_bench_large.py does on the CPU: the time outside the
network (timed by wrapping it, with a synchronize on each side) beyond a bare DDIM loop written by hand, over the
total; then the same call with attention (YODA, the Gaussian map) is timed against the plain one.

    python3 benchmarks/gpu_loop.py --out $OUT/gpu_loop.md            # on the GPU machine
    python3 benchmarks/gpu_loop.py --cpu-dry-run                     # logic check on a CPU (tiny, no graphs)
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402

# (label, yoda.sample speed options); the first is the reference of every other row
CONFIGS = (
    ("fp32", {}),
    ("channels_last", dict(channels_last=True)),
    ("autocast bf16", dict(autocast="bf16")),
    ("autocast fp16", dict(autocast="fp16")),
    ("bf16 + channels_last", dict(autocast="bf16", channels_last=True)),
    ("cuda_graphs", dict(cuda_graphs=True)),
    ("bf16 + channels_last + cuda_graphs", dict(autocast="bf16", channels_last=True, cuda_graphs=True)),
    ("compile", dict(compile=True)),
    ("compile + bf16 + channels_last", dict(compile=True, autocast="bf16", channels_last=True)),
)


COMPILE_RESERVE_S = 60.0  # a torch.compile row starts only with this much of --budget-s left (a cold compile)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a size, batch or count of 0 would fail later with a traceback)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return n


def make_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="markdown results file (rewritten row by row)")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU, no CUDA graphs")
    p.add_argument("--lr", type=positive_int, default=256, help="LR side (HR = 4x)")
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--budget-s", type=float, default=240.0, help="later rows are skipped once this is spent")
    p.add_argument("--only", default=None, help="comma-separated labels of the rows to run (default: all; "
                                                "the first row, fp32, always runs: it is every row's reference)")
    p.add_argument("--no-overhead", action="store_true", help="skip the sampler-overhead measurement")
    return p


def photo_lr(side: int, batch: int, dev: str) -> torch.Tensor:
    """skimage's astronaut resized to side x side, in [-1, 1], repeated batch times."""
    from PIL import Image

    from yoda.data import builtin_image
    from yoda.images import from_uint8

    im = Image.fromarray(builtin_image("astronaut")).resize((side, side), Image.Resampling.BICUBIC)
    return from_uint8(im).repeat(batch, 1, 1, 1).to(dev)


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev: str, repeats: int) -> tuple[float, object]:
    """(median seconds over repeats, the last output), after one warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(dev)
        t0 = time.perf_counter()
        out = fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def psnr_to(a: torch.Tensor, ref: torch.Tensor) -> float:
    mse = (a.float() - ref.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # range [-1, 1]: peak-to-peak 2


def main() -> int:
    parser = make_parser()
    args = parser.parse_args()
    labels = [label for label, _ in CONFIGS]
    only = set(labels) if args.only is None else {v.strip() for v in args.only.split(",")} | {labels[0]}
    if only - set(labels):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(labels)))}; the rows are: {', '.join(labels)}")
    if not args.cpu_dry_run and not torch.cuda.is_available():  # before --out's folder is made
        parser.error("no CUDA device visible; --cpu-dry-run checks the logic on the CPU")
    dev = "cpu" if args.cpu_dry_run else "cuda"
    if args.cpu_dry_run:
        args.lr, args.steps, args.repeats = min(args.lr, 16), min(args.steps, 2), 1
    import yoda

    start = time.time()
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    card = torch.cuda.get_device_name() if dev == "cuda" else "CPU dry run"
    m = yoda.load().to(dev).eval()
    lr = photo_lr(args.lr, args.batch, dev)
    hr = args.lr * 4
    emit(f"# yoda.sample whole-loop speed on {card}")
    emit()
    emit(f"torch {torch.__version__}; embedded model (SRDiff residual, x0), {args.batch}x3x{args.lr}^2 LR -> "
         f"{hr}^2 HR, DDIM eta 0, {args.steps} steps, no attention, seed 0; median of {args.repeats} calls "
         f"after one warm-up; backend auto ({yoda_backend(dev)}).")
    emit()
    for line in HEADER:
        emit(line)
    ref = base_s = overhead = None
    failures = 0
    for label, opts in CONFIGS:
        if label not in only:
            continue
        if ref is None and label != CONFIGS[0][0]:  # the fp32 row failed: nothing to compare with
            emit(f"| {label} | skipped (no fp32 reference) | | | | | |")
            continue
        if dev == "cpu" and opts.get("cuda_graphs"):
            emit(f"| {label} | skipped on the CPU | | | | | |")
            continue

        if opts.get("cuda_graphs"):  # one cache per row: captured at the warm-up, replayed by the timed calls
            from yoda.sampling.speed import GraphCache

            opts = {**opts, "cuda_graphs": GraphCache()}
        if time.time() - start > args.budget_s - (COMPILE_RESERVE_S if opts.get("compile") else 0):
            emit(f"| {label} | skipped (time budget) | | | | | |")
            continue

        def run(opts=opts):
            with torch.inference_mode():
                return yoda.sample(m, lr, steps=args.steps, sampler="ddim", eta=0.0, seed=0, progress=False, **opts)

        try:
            t0 = time.time()
            run()
            warm = time.time() - t0
            s, out = timed(run, dev, args.repeats)
        except Exception as e:  # one failing option must not hide the others
            failures += 1
            emit(f"| {label} | ERROR {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''} | | | | | |")
            continue
        if ref is None:
            ref, base_s = out, s
            if not args.no_overhead:  # right after the reference row: a slow compile row must not cost this line
                overhead = overhead_line(m, lr, args, dev) + "\n\n" + yoda_line(m, lr, args, dev, s)
        diff = (out.float() - ref.float()).abs().max().item()
        emit(f"| {label} | {s:.3f} | {1e3 * s / args.steps:.2f} | {base_s / s:.2f}x | {diff:.1e} | "
             f"{psnr_to(out, ref):.1f} | {warm:.1f} |")
        if overhead:  # written at once, below the reference row (a SIGINT in a slow compile row lost it)
            for line in ("", overhead, "", *HEADER):
                emit(line)
            overhead = None
        if not math.isfinite(out.float().sum().item()):
            failures += 1
    emit()
    emit(f"failures: {failures}; wall time {time.time() - start:.0f} s")
    return 1 if failures else 0


HEADER = ("| options | s per call | ms per step | vs fp32 | max diff to fp32 | PSNR to fp32 (dB) | warm-up s |",
          "|---|---|---|---|---|---|---|")


def yoda_backend(dev: str) -> str:
    import yoda_kernels as yk

    return ", ".join(yk.available_backends(dev))


def yoda_line(m, lr, args, dev, plain_s: float) -> str:
    """yoda.sample with attention (the Gaussian map, lower_bound 0.4; fp32) against the plain fp32 call of the same
    steps: the network still sees the whole state at every step, so the difference is the masked loop's own cost
    (the map, its tile statistics, and nothing synchronised per step)."""
    import yoda

    def run():
        with torch.inference_mode():
            return yoda.sample(m, lr, attention="gaussian", lower_bound=0.4, steps=args.steps, sampler="ddim",
                               eta=0.0, seed=0, progress=False)

    try:
        s, _ = timed(run, dev, args.repeats)
    except Exception as e:
        return f"YODA call: not measured ({type(e).__name__}: {e})"
    return (f"YODA (attention 'gaussian', lower_bound 0.4, fp32, {args.steps} steps): {s:.3f} s per call against "
            f"the plain call's {plain_s:.3f} s ({100 * (s - plain_s) / plain_s:+.1f}%).")


def overhead_line(m, lr, args, dev) -> str:
    """The sampler's time outside the network beyond a bare hand-written loop's, over its total (fp32); and the
    two loops' wall times without the network timer, whose synchronisations leave the GPU idle during all host
    work: on a GPU the host's time is hidden behind queued kernels until it exceeds them, so the untimed wall
    times are what a user sees, the timed split the host's work itself."""
    try:
        from test_bench_large import NetTimer, bare_loop
    except Exception as e:  # pragma: no cover - the benchmark module moved
        return f"overhead: not measured ({type(e).__name__}: {e})"
    import yoda

    z = torch.randn(lr.shape[0], 3, lr.shape[2] * 4, lr.shape[3] * 4, generator=torch.Generator().manual_seed(0))
    z = z.to(dev)

    def seconds(name: str) -> float:
        sync(dev)
        t0 = time.perf_counter()
        if name == "yoda":
            yoda.sample(m, lr, steps=args.steps, sampler="ddim", eta=0.0, seed=0, progress=False)
        else:
            bare_loop(m, lr, args.steps, z)
        sync(dev)
        return time.perf_counter() - t0

    best, wall = {}, {}
    with torch.inference_mode():
        for _ in range(3):
            for name in ("yoda", "bare"):
                with NetTimer(m) as nt:
                    total = seconds(name)
                best[name] = min(best.get(name, (math.inf, 0.0)), (total, nt.seconds))
        for _ in range(3):  # untimed: kernels queue as they do in use
            for name in ("yoda", "bare"):
                wall[name] = min(wall.get(name, math.inf), seconds(name))
    (ty, ny), (tb, nb) = best["yoda"], best["bare"]
    over = ((ty - ny) - (tb - nb)) / ty
    return (f"Sampler overhead (fp32, best of 3, network timed with a synchronize on each side): yoda.sample "
            f"{ty:.3f} s of which {ny:.3f} s in the network; bare loop {tb:.3f} s of which {nb:.3f} s; "
            f"**overhead {100 * over:.2f}%** of yoda's total (target <= 1%). Without the timer (best of 3): "
            f"yoda.sample {wall['yoda']:.3f} s, bare loop {wall['bare']:.3f} s, "
            f"**{100 * (wall['yoda'] - wall['bare']) / wall['yoda']:+.2f}%** of yoda's wall time.")


if __name__ == "__main__":
    sys.exit(main())
