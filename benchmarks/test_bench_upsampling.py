"""up(lr) for released checkpoints (yoda.upsampling): SR3's Pillow 8-bit bicubic ("sr3") and SRDiff's MATLAB
imresize ("srdiff") against torch's bicubic, x4 of a 256x256 LR on one thread. Before the eleventh session "sr3"
summed its fixed-point taps in int64, which has no BLAS path (3.1 s here, n^3) and no CUDA kernel; it is float64
now (exact: every product and partial sum is an integer below 2**53). Target: up(lr) is not the slow part of a
step, i.e. "sr3" within 10x of torch's bicubic (asserted; one model call of the embedded model at 1024^2 takes
seconds). Each method's test times torch's bicubic itself, interleaved with it (benchmarks/_timing.py), so a
test run alone (-k sr3) checks its target too.

    pytest benchmarks/test_bench_upsampling.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from _timing import fastest, interleaved, ratio  # benchmarks/_timing.py
from yoda.upsampling import upsample

pytestmark = pytest.mark.benchmark(group="upsampling")


@pytest.mark.parametrize("method", ["torch", "sr3", "srdiff"])
def test_upsample_256_x4(benchmark, method):
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fns = {m: (lambda m=m: upsample(x, 4, m)) for m in dict.fromkeys((method, "torch"))}
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = benchmark.pedantic(fns[method], rounds=5, iterations=1, warmup_rounds=1)
        times = interleaved(fns, 5) if benchmark.enabled and method != "torch" else None
    finally:
        torch.set_num_threads(old)
    assert out.shape == (1, 3, 1024, 1024)
    if fastest(benchmark):
        benchmark.extra_info["seconds_min"] = round(fastest(benchmark), 4)
    if times:  # None: torch's own row, or timing off (--benchmark-disable, xdist)
        over = ratio(times, method, "torch")
        benchmark.extra_info["over_torch"] = round(over, 2)
        assert over <= 10, f"up(lr) {method!r} is {over:.1f}x torch's bicubic (target <= 10x)"
