"""`torchrun --nproc_per_node 2 -m yoda upscale DIR -o OUT` against one process on the same 8 images (issue 12):
the outputs must be byte-identical; the wall-time ratio (2 ranks / 1 process: torchrun_over_single) is reported.

    pytest benchmarks/test_bench_torchrun_upscale.py --benchmark-only -s

Every run is a whole command in a subprocess (start-up, model loading, reading and writing included), as a user
would run it: `python -m torch.distributed.run` (torchrun) with 2 gloo ranks of one thread each (torchrun's
default OMP_NUM_THREADS=1), against `python -m yoda upscale` with one thread (the same threads per process, so
the same floating-point rounding: byte-identical outputs are asserted) and with torch's default threads (all
cores in one process; timed only: oneDNN may round some images differently at another thread count). The inputs
are 8 64x64 LR crops of the held-out scikit-image photographs (2 each), upscaled x4 by the embedded default
model, with the CLI defaults (DDIM, 1 step) and with 8 steps (more sampling per start-up). One round each.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from _timing import fastest  # benchmarks/_timing.py
from yoda.models.loading import DEFAULT_WEIGHTS
from yoda.data import HELD_OUT, builtin_image


# one table (and one baseline for the relative columns) per file: pytest-benchmark compares within a group
pytestmark = pytest.mark.benchmark(group="torchrun upscale")

N_IMAGES = 8


def _inputs(folder):
    folder.mkdir()
    for name in HELD_OUT:
        a = builtin_image(name)
        h, w = a.shape[:2]
        for k, (y, x) in enumerate((((h - 256) // 4, (w - 256) // 4), ((h - 256) // 2, (w - 256) // 2))):
            Image.fromarray(a[y: y + 256: 4, x: x + 256: 4]).save(folder / f"{name}{k}.png")  # 64x64
    assert len(list(folder.iterdir())) == N_IMAGES
    return folder


def _run(cmd, cwd, env) -> float:
    env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    return seconds


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="the embedded default model is not installed")
@pytest.mark.parametrize("steps", [1, 8])
def test_torchrun_two_ranks_vs_one_process(benchmark, tmp_path, steps):
    src = _inputs(tmp_path / "in")
    args = ["upscale", str(src), "--steps", str(steps), "-q"]
    single_s = _run([sys.executable, "-m", "yoda", *args, "-o", str(tmp_path / "single")], tmp_path,
                    {**os.environ, "OMP_NUM_THREADS": "1"})
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    threads_s = _run([sys.executable, "-m", "yoda", *args, "-o", str(tmp_path / "threads")], tmp_path, env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
                "-m", "yoda", *args, "-o", str(tmp_path / "multi")]
    benchmark.pedantic(lambda: _run(torchrun, tmp_path, {**os.environ, "OMP_NUM_THREADS": "1"}), rounds=1,
                       iterations=1, warmup_rounds=0)
    names = sorted(f.name for f in (tmp_path / "single").iterdir())
    assert len(names) == N_IMAGES and sorted(f.name for f in (tmp_path / "multi").iterdir()) == names
    for n in names:
        assert (tmp_path / "single" / n).read_bytes() == (tmp_path / "multi" / n).read_bytes(), n
    same = sum((tmp_path / "single" / n).read_bytes() == (tmp_path / "threads" / n).read_bytes() for n in names)
    ranks_s = fastest(benchmark)
    if ranks_s is None:  # timing off (--benchmark-disable, xdist): the byte-identical outputs are the test
        return
    benchmark.extra_info.update(single_1_thread_s=single_s, single_default_threads_s=threads_s, torchrun_s=ranks_s,
                                torchrun_over_single=ranks_s / single_s,
                                torchrun_over_default_threads=ranks_s / threads_s, default_threads_identical=same)
    print(f"\n{N_IMAGES} images 64->256, DDIM {steps} step(s): torchrun 2 ranks x 1 thread {ranks_s:.1f} s; 1 process "
          f"x 1 thread {single_s:.1f} s (ratio {ranks_s / single_s:.2f}, outputs byte-identical); 1 process with "
          f"torch's default threads {threads_s:.1f} s (ratio {ranks_s / threads_s:.2f}, {same} of "
          f"{N_IMAGES} outputs byte-identical)")
