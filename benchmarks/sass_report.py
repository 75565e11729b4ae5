"""Static resource report of the Triton masked_step kernel, compiled offline for an NVIDIA GPU: no GPU needed.

For each tile size, noise mode and memory layout, the kernel is compiled as Triton's JIT would compile it at
the launch ``launch_masked_step`` makes for a float32 1x3x2048x2048 step: the library's launch configuration
(``launch_config``, or --block-w / --warps), and Triton's own argument specialisation (pointers aligned to 16
bytes, integers equal to 1 folded in, integers divisible by 16 marked so). The target defaults to sm_90
(H100 / H200) and the report gives what decides whether a memory-bound kernel can reach copy bandwidth:
registers per thread, how many warps per SM those registers allow, spilled bytes, stack, the widest global
load and the static SASS instruction count.

    python benchmarks/sass_report.py                 # markdown table, sm_90
    python benchmarks/sass_report.py --check         # exit 1 if a configuration spills registers
    python benchmarks/sass_report.py --block-w 128 --warps 4 --tiles 16    # another launch configuration

Run it WITHOUT TRITON_INTERPRET=1 (the interpreter replaces the JIT function that is compiled here). Counts come
from the ptxas shipped with the installed Triton and may differ slightly from another Triton's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REGS_PER_SM = 65536
MAX_WARPS_PER_SM = 64  # sm_80 .. sm_100
NOISE_NAMES = {0: "none", 1: "philox", 2: "tensor"}


@dataclass(frozen=True)
class Resources:
    tile: int
    noise: str
    layout: str  # contiguous (W-stride 1, specialised by Triton) or channels_last
    block_w: int
    num_warps: int
    registers: int
    spill_bytes: int  # spill stores + spill loads, bytes per thread
    stack_bytes: int  # includes libdevice's sin/cos Payne-Hanek scratch (32 B), which the fast path never touches
    sass_instructions: int
    load_bits: int  # widest global load in the PTX: 128 = float4

    @property
    def pixels_per_thread(self) -> int:
        """Pixels of one channel that a thread owns in a strip (TILE x BLOCK_W over the block's threads)."""
        return self.tile * self.block_w // (32 * self.num_warps)

    @property
    def warps_per_sm(self) -> int:
        """Resident warps per SM that the register count allows (registers are allocated per warp in units of
        256, i.e. 8 per thread), in whole blocks."""
        per_warp = -(-self.registers // 8) * 8 * 32
        warps = min(MAX_WARPS_PER_SM, REGS_PER_SM // per_warp)
        return warps - warps % self.num_warps


def _ptxas_log(ptx: str, arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        Path(src).write_text(ptx)
        cmd = [get_ptxas(arch).path, "-v", "--fmad=false", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}a"
               if arch >= 90 else f"--gpu-name=sm_{arch}", src, "-o", os.path.join(d, "k.o")]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stderr


def _sass_count(cubin: bytes, arch: int) -> int:
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(arch).path).with_name("cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        sass = subprocess.run([str(cuobjdump), "-sass", path], check=True, capture_output=True, text=True).stdout
    return sum(1 for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/\s+\S", line))


class _Recorder:
    """Stands in for ``kernel[grid]``: keeps the arguments of the launch instead of running it."""

    def __init__(self, kernel):
        self.kernel, self.call = kernel, None

    def __getitem__(self, grid):
        return lambda *args, **kwargs: setattr(self, "call", (args, kwargs))


def _launch_arguments(shape, tile: int, noise: int, layout: str, block_w, num_warps):
    """(args, kwargs) that ``launch_masked_step`` passes to the kernel for a float32 step of ``shape`` on the
    CPU (the values decide Triton's specialisation: pointers aligned to 16 bytes, integers equal to 1 or
    divisible by 16)."""
    import torch

    from yoda_kernels import coefs as coefs_mod
    from yoda_kernels import naive
    from yoda_kernels.triton import masked_step as ms

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.zeros(shape).contiguous(memory_format=fmt)
    A = torch.zeros(shape[0], 1, *shape[2:])
    cf = coefs_mod.step_coefficients(0.3, 1.0 if noise == ms.NOISE_NONE else 0.35)
    z = x if noise == ms.NOISE_TENSOR else None
    recorder = _Recorder(ms._masked_step_kernel)
    ms._masked_step_kernel = recorder
    try:
        ms.launch_masked_step(x, x, x, A, *naive.tile_stats(A, tile), 0.5, cf, False, 1, 2, z, tile,
                              block_w=block_w, num_warps=num_warps)
    finally:
        ms._masked_step_kernel = recorder.kernel
    return recorder.call


def compile_masked_step(tile: int, noise: int, layout: str = "contiguous", arch: int = 90,
                        block_w: int | None = None, num_warps: int | None = None,
                        shape=(1, 3, 2048, 2048)) -> Resources:
    """Compile _masked_step_kernel for sm_<arch> exactly as Triton's JIT would at the launch that
    ``launch_masked_step`` makes for a float32 ``shape`` step (its launch configuration, or block_w /
    num_warps), with Triton's own argument specialisation, and read its resources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from yoda_kernels.triton import masked_step as ms

    args, kwargs = _launch_arguments(shape, tile, noise, layout, block_w, num_warps)
    kernel, target = ms._masked_step_kernel, GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    k = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                       options=options.__dict__)
    log = _ptxas_log(k.asm["ptx"], arch)
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    stack = int(re.search(r"(\d+) bytes stack frame", log).group(1))
    widths = [int(w) for w in re.findall(r"ld\.global(?:\.[a-z]+)*\.v(\d)\.b32", k.asm["ptx"])]
    return Resources(tile, NOISE_NAMES[noise], layout, kwargs["BLOCK_W"], kwargs["num_warps"], regs, spills, stack,
                     _sass_count(k.asm["cubin"], arch), 32 * max(widths, default=1))


# ---- the noise transform (issue 13): SASS instructions per normal, Philox excluded -------------------------

NOISE_BLOCK, NOISE_WARPS, NOISE_PAIRS = 512, 4, 4  # four word pairs per thread (constants loaded once)


def _noise_kernels():
    """Three small kernels over word pairs (wa[i], wb[i]), one pair per thread: the project's transform
    (yoda_kernels/triton/noise.py: normal_pair), stream version 1's (Triton's uint_to_uniform_float and
    pair_uniform_to_normal, i.e. tl.randn4x without Philox), and the same loads and stores with a bit cast in
    place of a transform (the skeleton whose instructions the other two subtract)."""
    import triton
    import triton.language as tl
    from triton.language.random import pair_uniform_to_normal, uint_to_uniform_float

    from yoda_kernels.triton.noise import normal_pair

    @triton.jit
    def transform_v2(wa_ptr, wb_ptr, na_ptr, nb_ptr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        na, nb = normal_pair(tl.load(wa_ptr + i), tl.load(wb_ptr + i))
        tl.store(na_ptr + i, na)
        tl.store(nb_ptr + i, nb)

    @triton.jit
    def transform_v1(wa_ptr, wb_ptr, na_ptr, nb_ptr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        na, nb = pair_uniform_to_normal(uint_to_uniform_float(tl.load(wa_ptr + i)),
                                        uint_to_uniform_float(tl.load(wb_ptr + i)))
        tl.store(na_ptr + i, na)
        tl.store(nb_ptr + i, nb)

    @triton.jit
    def skeleton(wa_ptr, wb_ptr, na_ptr, nb_ptr, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(na_ptr + i, tl.load(wa_ptr + i).to(tl.float32, bitcast=True))
        tl.store(nb_ptr + i, tl.load(wb_ptr + i).to(tl.float32, bitcast=True))

    return {"v2": transform_v2, "v1": transform_v1, "skeleton": skeleton}


def _sass_lines(cubin: bytes, arch: int) -> list[str]:
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(arch).path).with_name("cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        sass = subprocess.run([str(cuobjdump), "-sass", path], check=True, capture_output=True, text=True).stdout
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]{4}\*/\s+(.*?);", line)
        if m and not m.group(1).startswith("NOP"):
            out.append(m.group(1).strip())
    return out


def noise_transform_report(arch: int = 90) -> dict[str, list[str]]:
    """SASS (without NOPs) of the three kernels of _noise_kernels, compiled for sm_<arch> with
    enable_fp_fusion=False (as the library's kernels are)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    sig = {"wa_ptr": "*u32", "wb_ptr": "*u32", "na_ptr": "*fp32", "nb_ptr": "*fp32", "BLOCK": "constexpr"}
    out = {}
    for name, fn in _noise_kernels().items():
        k = triton.compile(ASTSource(fn, sig, constexprs={"BLOCK": NOISE_BLOCK}), target=target,
                           options={"num_warps": NOISE_WARPS, "enable_fp_fusion": False})
        out[name] = _sass_lines(k.asm["cubin"], arch)
    return out


def noise_instructions_per_normal(report: dict[str, list[str]]) -> dict[str, float]:
    """(kernel instructions - skeleton instructions) / (2 NOISE_PAIRS) for each transform: SASS per normal,
    Philox excluded (each thread turns NOISE_PAIRS word pairs into normals)."""
    base = len(report["skeleton"])
    return {k: (len(v) - base) / (2 * NOISE_PAIRS) for k, v in report.items() if k != "skeleton"}


def power_of_two(text: str) -> int:
    """argparse type: a positive power of two (Triton's block sizes and warp counts must be)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or n & (n - 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a power of two")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from yoda_kernels.contract import TILE_SIZES

    # the architectures with 64 resident warps per SM (MAX_WARPS_PER_SM); another number aborted in LLVM
    ap.add_argument("--arch", type=int, default=90, choices=(80, 90, 100),
                    help="compute capability x 10 (default 90: H100 / H200)")
    ap.add_argument("--tiles", type=int, nargs="+", default=list(TILE_SIZES), choices=TILE_SIZES)
    ap.add_argument("--noise", nargs="+", default=["none", "philox", "tensor"], choices=list(NOISE_NAMES.values()))
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"],
                    choices=["contiguous", "channels_last"])
    ap.add_argument("--block-w", type=power_of_two, default=None, help="override launch_config's BLOCK_W")
    ap.add_argument("--warps", type=power_of_two, default=None, help="override launch_config's num_warps")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a configuration spills registers")
    ap.add_argument("--noise-transform", action="store_true",
                    help="report SASS instructions per normal of the noise transform (stream v2 vs v1) instead")
    ap.add_argument("--max-per-normal", type=float, default=None,
                    help="with --noise-transform: exit 1 if stream v2 needs more SASS instructions per normal")
    args = ap.parse_args(argv)
    if args.max_per_normal is not None and not args.noise_transform:
        ap.error("--max-per-normal needs --noise-transform (it bounds the noise transform's instructions)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernel that this report compiles")
    if args.noise_transform:
        report = noise_transform_report(args.arch)
        per = noise_instructions_per_normal(report)
        print(f"noise transform, sm_{args.arch}: SASS instructions per normal (Philox excluded; {NOISE_PAIRS} word "
              "pairs per thread, minus the load/store skeleton)\n")
        print("| transform | SASS per pair | per normal |")
        print("|---|---|---|")
        for k in ("v2", "v1"):
            print(f"| {k} | {2 * per[k]:g} | {per[k]:g} |")
        ops: dict[str, int] = {}
        for ins in report["v2"]:
            op = ins.split()[1] if ins.startswith("@") else ins.split()[0]
            ops[op] = ops.get(op, 0) + 1
        print(f"\nv2 kernel ({NOISE_PAIRS} pairs per thread) by opcode:",
              ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])))
        if args.max_per_normal is not None and per["v2"] > args.max_per_normal:
            print(f"\nstream v2 needs {per['v2']:g} > {args.max_per_normal:g} instructions per normal", file=sys.stderr)
            return 1
        return 0
    modes = {v: k for k, v in NOISE_NAMES.items()}
    print(f"masked_step (Triton), sm_{args.arch}, float32 1x3x2048x2048 step with attention\n")
    print("| tile | noise | layout | BLOCK_W | warps | pixels/thread | registers | warps/SM | spill B | stack B | "
          "widest load | SASS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for tile in args.tiles:
        for name in args.noise:
            for layout in args.layouts:
                r = compile_masked_step(tile, modes[name], layout, arch=args.arch, block_w=args.block_w,
                                        num_warps=args.warps)
                bad += r.spill_bytes > 0
                print(f"| {tile} | {name} | {layout} | {r.block_w} | {r.num_warps} | {r.pixels_per_thread} | "
                      f"{r.registers} | {r.warps_per_sm} | {r.spill_bytes} | {r.stack_bytes} | {r.load_bits} bit | "
                      f"{r.sass_instructions} |", flush=True)
    if args.check and bad:
        print(f"\n{bad} configuration(s) spill registers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
