import os
import sys

import pytest
import torch

# Without the compiled extension (or triton) the backend-parametrised tests are not collected at all (about two
# thirds of test_masked_step.py) and everything else passes on the reference: a green run that tested much less. The
# session therefore refuses to start unless every backend of this machine is present, or this is set to 1.
ALLOW_MISSING = "YODA_ALLOW_MISSING_BACKENDS"


def missing_backends() -> list[str]:
    """What this machine should test but cannot: the C++ kernels of yoda_kernels._C, its CUDA kernels when torch
    sees a GPU, and the Triton kernels (triton is in the test extra; on a CPU it runs through the interpreter)."""
    import yoda_kernels as yk

    missing = []
    if "cpp" not in yk.available_backends("cpu") and sys.platform != "win32":  # setup.py builds none on Windows
        missing.append(f"the C++ extension yoda_kernels._C ({yk.extension_error or 'no CPU kernel registered'})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "cuda" not in yk.available_backends("cuda"):
        missing.append("the CUDA kernels of yoda_kernels._C (torch sees a GPU; the extension was built without them)")
    if "triton" not in yk.available_backends(device) and sys.platform.startswith("linux"):  # no wheels elsewhere
        try:
            import triton  # noqa: F401

            why = "imported, but not usable on this machine"
        except ImportError as e:
            why = f"{type(e).__name__}: {e}"
        missing.append(f"triton ({why})")
    return missing


def pytest_configure(config):
    if os.environ.get(ALLOW_MISSING) == "1":
        return
    missing = missing_backends()
    if missing:
        raise pytest.UsageError(
            "yoda tests: backend(s) missing: " + "; ".join(missing) + ". Their tests would silently drop out of "
            "the run. Build the extension (`pip install --no-build-isolation -e \".[test]\"`, or "
            "`PYTHONPATH=. python setup.py build_ext --inplace`) and install triton, or set "
            f"{ALLOW_MISSING}=1 to run the rest on purpose (DEVELOPERS.md)."
        )


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small forwards: on a shared 2-core machine two threads spin against
    each other (a ResNet-50 forward took 1.4 s with 2 threads vs 0.3 s with 1, at load 8). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random SR3UNet saved in the "yoda" format (its path), for CLI and figure tests. Three
    downsamplings: HR sizes must be multiples of 8, so an odd LR size (x4) is padded by one LR pixel."""
    from yoda.models import save_model
    from yoda.models.sr3 import SR3Config, SR3UNet
    from yoda.schedule import Schedule

    torch.manual_seed(0)
    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2, 2, 2),
                    attn_res=(), res_blocks=1, image_size=16, mid_attn=False, scale=4)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    # its card names its steps (all 20; a model without them gets a note from the CLI)
    save_model(SR3UNet.from_config(cfg), path, schedule=Schedule.linear(20, 1e-3, 0.2), sampling={"steps": 20})
    return str(path)


@pytest.fixture
def flip_record_byte():
    """flip(path, suffix): flip one byte inside the data of the zip record of torch.save's file ``path`` whose name
    ends with ``suffix`` (e.g. "data/0"), as a damaged disk or copy would; torch.load reads such a file unchanged."""
    import struct
    import zipfile

    def flip(path, suffix: str) -> None:
        with zipfile.ZipFile(path) as z:
            info = next(i for i in z.infolist() if i.filename.endswith(suffix))
        data = bytearray(open(path, "rb").read())
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x55  # the local header's
        open(path, "wb").write(bytes(data))  # extra field, not the central directory's: torch pads records there

    return flip


@pytest.fixture
def yoda_on_latent():
    """check(ad, lr, kw, whole, tiled): YODA masks and denoiser windows on a latent adapter (tests/test_ldm_sr.py,
    test_sd_upscaler.py): edge attention at l = 0.3 starts below full and widens to every pixel; l = 1 is the plain
    run; one window of ``whole`` latent pixels over the grid is the dense run; windows of ``tiled`` = (size,
    overlap) give finite pixels of the plain shape. Returns the YODA result (B, 3, 4h, 4w)."""
    import yoda

    def check(ad, lr, kw: dict, whole: int, tiled: tuple):
        fractions = []
        sr = yoda.sample(ad, lr, attention="edge", lower_bound=0.3,
                         callback=lambda d: fractions.append(d["active_fraction"]), **kw)
        assert sr.shape == (lr.shape[0], 3, 4 * lr.shape[2], 4 * lr.shape[3]) and torch.isfinite(sr).all()
        first, last = fractions[0], fractions[-1]
        assert (first < 1).all() and (last >= first).all() and (last == 1).all()
        plain = yoda.sample(ad, lr, attention=None, **kw)
        assert torch.equal(plain, yoda.sample(ad, lr, attention="edge", lower_bound=1.0, **kw))
        # the noised LR pixels are cropped with the latent; one window over the whole grid is the dense run
        assert (yoda.sample(ad, lr, attention=None, windows=(whole, 0), **kw) - plain).abs().max() < 1e-5
        win = yoda.sample(ad, lr, attention="edge", lower_bound=0.3, windows=tiled, **kw)
        assert win.shape == plain.shape and torch.isfinite(win).all()
        return sr

    return check


@pytest.fixture
def lone_rank_0():
    """run(code, world, after_s, prelude=""): in a fresh interpreter, ``code`` as rank 0 of ``world`` processes that
    never come, hosting the store itself (MASTER_ADDR:0, no torchrun), inside yoda's SIGTERM handling, with a SIGTERM
    after ``after_s`` seconds; asserts the signal ended it (a wait in C++ would not end) and returns its stderr."""
    import subprocess
    import textwrap

    def run(code: str, world: int, after_s: float, prelude: str = "") -> str:
        script = ("import os, signal, threading, sys\n" + prelude +
                  "from yoda.errors import Terminated, sigterm_exits\n"
                  f"threading.Timer({after_s}, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
                  "try:\n"
                  "    with sigterm_exits():\n" + textwrap.indent(code, " " * 8) + "\n"
                  "except Terminated:\n"
                  "    sys.exit('ended by SIGTERM')\n")
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0", "WORLD_SIZE": str(world), "RANK": "0"}
        env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and p.stderr.strip().endswith("ended by SIGTERM"), p.stderr[-2000:]
        return p.stderr

    return run
