"""Static resource report of the Triton masked_step kernel, compiled offline for an NVIDIA GPU: no GPU needed.

For each tile size and noise mode, the kernel is compiled at the launch configuration the library uses
(``yoda_kernels.triton.masked_step.launch_config``) for the target architecture (default sm_90: H100 / H200),
with Triton's own ptxas, and the report gives what decides whether a memory-bound kernel can reach copy
bandwidth: registers per thread, how many warps per SM those registers allow, spilled bytes, stack, and the
static SASS instruction count.

    python benchmarks/sass_report.py                 # markdown table, sm_90
    python benchmarks/sass_report.py --check         # exit 1 if a default configuration spills registers
                                                     # or leaves fewer than MIN_WARPS_PER_SM resident warps
    python benchmarks/sass_report.py --arch 100      # another architecture (Blackwell uses ptxas-blackwell)

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
MIN_WARPS_PER_SM = 12  # --check: at fewer, the Philox kernel (issue-bound) measured about 25 % slower on an H200
FLOAT_ARGS = {"tau", "k1", "k2", "e1", "e2", "cx0", "cx", "ceps", "sigma", "la", "lb"}
NOISE_NAMES = {0: "none", 1: "philox", 2: "tensor"}


@dataclass(frozen=True)
class Resources:
    tile: int
    noise: str
    has_a: bool
    block_w: int
    num_warps: int
    registers: int
    spill_bytes: int  # spill stores + spill loads, bytes per thread
    stack_bytes: int  # includes libdevice's sin/cos Payne-Hanek scratch (32 B), which the fast path never touches
    sass_instructions: int

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


def _signature(fn) -> tuple[dict, list[str]]:
    """Triton signature of a float32 launch: pointers end in _ptr, the step coefficients are fp32, other runtime
    arguments (sizes, strides, seed, step) i32."""
    sig = {}
    for p in fn.params:
        if p.is_constexpr:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = "*fp32"
        elif p.name in FLOAT_ARGS:
            sig[p.name] = "fp32"
        else:
            sig[p.name] = "i32"
    return sig, [p.name for p in fn.params]


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


def compile_masked_step(tile: int, noise: int, has_a: bool = True, arch: int = 90,
                        block_w: int | None = None, num_warps: int | None = None) -> Resources:
    """Compile _masked_step_kernel for sm_<arch> at the library's launch configuration for a wide image (or at
    block_w / num_warps) and read its resources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from yoda_kernels.triton import masked_step as ms

    cfg_w, cfg_warps = ms.launch_config(4096, tile, noise == ms.NOISE_PHILOX)
    block_w, num_warps = block_w or cfg_w, num_warps or cfg_warps
    const = dict(HAS_A=has_a, NOISE=noise, CLIP=False, TILE=tile, BLOCK_W=block_w, SOFT_BF16=False)
    sig, params = _signature(ms._masked_step_kernel)
    if set(const) != {p for p, t in sig.items() if t == "constexpr"}:
        raise RuntimeError(f"the kernel's compile-time parameters changed: {sorted(sig)}; update this report")
    src = ASTSource(fn=ms._masked_step_kernel, signature=sig,
                    constexprs={(params.index(k),): v for k, v in const.items()})
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options=dict(num_warps=num_warps, enable_fp_fusion=False))
    log = _ptxas_log(k.asm["ptx"], arch)
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    stack = int(re.search(r"(\d+) bytes stack frame", log).group(1))
    return Resources(tile, NOISE_NAMES[noise], has_a, block_w, num_warps, regs, spills, stack,
                     _sass_count(k.asm["cubin"], arch))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100 / H200)")
    ap.add_argument("--tiles", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--noise", nargs="+", default=["none", "philox", "tensor"], choices=list(NOISE_NAMES.values()))
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if a configuration spills registers or allows < {MIN_WARPS_PER_SM} warps per SM")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("unset TRITON_INTERPRET: the interpreter replaces the kernel that this report compiles")
    modes = {v: k for k, v in NOISE_NAMES.items()}
    print(f"masked_step (Triton), sm_{args.arch}, launch_config for wide images, A given (tile stats on)\n")
    print("| tile | noise | BLOCK_W | warps | pixels/thread | registers | warps/SM | spill B | stack B | SASS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for tile in args.tiles:
        for name in args.noise:
            r = compile_masked_step(tile, modes[name], arch=args.arch)
            bad += r.spill_bytes > 0 or r.warps_per_sm < MIN_WARPS_PER_SM
            print(f"| {tile} | {name} | {r.block_w} | {r.num_warps} | {r.pixels_per_thread} | {r.registers} | "
                  f"{r.warps_per_sm} | {r.spill_bytes} | {r.stack_bytes} | {r.sass_instructions} |", flush=True)
    if args.check and bad:
        print(f"\n{bad} configuration(s) spill registers or allow < {MIN_WARPS_PER_SM} warps per SM", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
