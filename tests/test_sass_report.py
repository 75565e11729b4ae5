"""The Triton masked_step kernel at the library's launch configurations, compiled offline for sm_90 (H100 /
H200) with Triton's own ptxas and argument specialisation, contiguous and channels-last: no configuration
spills registers (benchmarks/sass_report.py --check), and each has the widest load its layout allows. Needs no
GPU; skipped where Triton has no NVIDIA backend or ptxas."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.path.exists(get_ptxas(90).path)
    except Exception:  # no triton, no NVIDIA backend, or no bundled ptxas
        return False


# The widest global load of each row, the same for every tile size (launch_config, benchmarks/RESULTS.md): float4
# where W is unit-stride, with Philox too (16 pixels per thread since noise stream 2); one float at a time for
# channels-last (W stride C)
WIDEST_LOAD = {
    ("contiguous", "none"): "128 bit",
    ("contiguous", "tensor"): "128 bit",
    ("contiguous", "philox"): "128 bit",
    ("channels_last", "none"): "32 bit",
    ("channels_last", "tensor"): "32 bit",
    ("channels_last", "philox"): "32 bit",
}


@pytest.mark.skipif(not _ptxas_available(), reason="Triton's NVIDIA backend / ptxas not installed")
def test_default_launch_configs_do_not_spill():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sass_report.py"), "--check"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in r.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| tile")]
    assert {(int(c[0]), c[1], c[2]) for c in rows} == {
        (t, n, lay) for t in (8, 16, 32) for n in ("none", "philox", "tensor") for lay in ("contiguous", "channels_last")}
    for c in rows:
        assert int(c[8]) == 0, c  # spill bytes
        assert c[10] == WIDEST_LOAD[c[2], c[1]], c



@pytest.mark.skipif(not _ptxas_available(), reason="Triton's NVIDIA backend / ptxas not installed")
def test_noise_transform_instruction_count():
    """Issue 13's target for the noise transform: at most 20 SASS instructions per normal on sm_90, Philox
    excluded (benchmarks/sass_report.py --noise-transform: four word pairs per thread, as the Philox launch of
    masked_step has, minus a load/store skeleton), branch-free (sqrt.rn's fast path only), against 96 in stream
    version 1's code (tl.randn4x's Box-Muller, counting libdevice's never-taken slow paths)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sass_report.py"), "--noise-transform",
                        "--max-per-normal", "20"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    per = {c[0]: float(c[2]) for c in ([x.strip() for x in line.split("|")[1:-1]] for line in r.stdout.splitlines()
                                       if line.startswith("| v"))}
    assert per["v2"] <= 20 and per["v1"] > 2 * per["v2"], per
    assert "MUFU.RSQ" in r.stdout and "CALL" not in r.stdout and "BSSY" not in r.stdout  # no slow-path branch


def _sass_report_main(*argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sass_report", ROOT / "benchmarks" / "sass_report.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up
    path = list(sys.path)  # the script puts the repository first on sys.path: not for the tests after this one
    try:
        spec.loader.exec_module(module)
        return module.main(list(argv))
    finally:
        del sys.modules[spec.name]
        sys.path[:] = path


@pytest.mark.parametrize("argv, message", [
    (("--max-per-normal", "20"), "--max-per-normal needs --noise-transform (it bounds the noise transform's "
                                 "instructions)"),
    (("--block-w", "100"), "argument --block-w: '100' is not a power of two"),
    (("--warps", "0"), "argument --warps: '0' is not a power of two"),
    (("--warps", "four"), "argument --warps: 'four' is not a power of two"),
])
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    """Argument errors end before anything is compiled (no GPU, ptxas or Triton traceback needed to see them)."""
    with pytest.raises(SystemExit) as e:
        _sass_report_main(*argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].split(": error: ", 1)[1] == message
