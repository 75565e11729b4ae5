"""The benchmark scripts' command lines (benchmarks/*.py): bad arguments end in one argparse error (exit 2) before
any long work, and the small pieces of logic that decide what a long run does (the quality grid's cache, the
stability study's loss CV) behave. Every test runs in seconds: nothing is trained or benchmarked here."""

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look themselves up
    path = list(sys.path)  # the scripts put the repository first on sys.path: not for the tests after this one
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
        sys.path[:] = path
    return module


def run(script: str, *args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# ---- test_bench_large.py ------------------------------------------------------------------------------------------

def test_the_sampler_benchmarks_stub_and_timer_fit_the_embedded_model(monkeypatch):
    """`pytest benchmarks/ --benchmark-only` failed in test_sampler_host_time when the SRDiff adapter began passing
    the features' projection to the model (its stand-in took four arguments); nothing under tests/ ran it. The
    stand-in samples, and the network timer covers every network call (the projection too: outside the timer it
    counted as the sampler's overhead)."""
    import time

    import yoda

    monkeypatch.syspath_prepend(str(BENCH))  # (its _timing)
    bench = load_script("test_bench_large")
    m, lr = yoda.load("yoda", "default"), torch.rand(1, 3, 8, 8) * 2 - 1
    with bench.StubNet(m, lr):
        out = yoda.sample(m, lr, steps=2, seed=0, progress=False)
    assert out.shape == (1, 3, 32, 32) and "forward" not in vars(m) and "project_cond" not in vars(m.denoise_fn)
    real = m.denoise_fn.project_cond
    slow = m.denoise_fn.project_cond = lambda f: (time.sleep(0.3), real(f))[1]  # a slow projection: timed
    with bench.NetTimer(m) as nt:
        assert vars(m.denoise_fn)["project_cond"] is not slow  # wrapped by the timer
        yoda.sample(m, lr, steps=2, seed=0, progress=False)
    assert nt.seconds >= 0.3 and "project_cond" not in vars(m.denoise_fn)
    # the bare loop's forward makes the projection inside the timed forward: counted once, not twice (twice, the
    # bare loop's network time grew and the sampler's overhead beyond it was overstated)
    m.denoise_fn.project_cond = slow
    with bench.NetTimer(m) as nt, torch.inference_mode():
        t0 = time.perf_counter()
        bench.bare_loop(m, lr, 1, torch.zeros(1, 3, 32, 32))
        wall = time.perf_counter() - t0
    assert 0.3 <= nt.seconds <= wall  # (twice: over wall by 0.3 s, whatever the machine's load)


# ---- gpu_bench.py -------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_gpu_bench_without_cuda_says_so_and_creates_nothing(tmp_path):
    out = tmp_path / "new" / "res.md"
    r = run("gpu_bench.py", "--out", out)
    assert r.returncode == 2, r.stderr
    assert last_line(r.stderr) == ("gpu_bench.py: error: no CUDA device visible; --cpu-dry-run runs the checks on "
                                   "the CPU")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "new").exists()


def test_gpu_bench_dry_run_header_says_what_it_measures(tmp_path):
    out = tmp_path / "res.md"  # --hard-budget-s 0: every case skipped, only the header and the copy are measured
    r = run("gpu_bench.py", "--cpu-dry-run", "--no-compile", "--hard-budget-s", "0", "--out", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "Host copy (4 MiB, read + write)" in text
    assert "timings: median of 3 host timer (perf_counter) runs after one warm-up call" in text
    assert "1 GiB" not in text and "do_bench" not in text
    assert "calls issued back to back:\n\n- skipped: past --hard-budget-s\n" in text  # (~20 s of the interpreter)


# ---- gpu_check.sh -------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("timeout"), reason="needs bash and coreutils")
def test_gpu_check_order_and_old_setuptools(tmp_path):
    """The one script a lent GPU runs, with a stub Python (every call returns at once, or as told): the owed crash
    check runs right after the import; an old setuptools (< 77, which cannot read pyproject's SPDX license) gets the
    TOML-table form in the copy of the tree; the masked-step grid stopped at its limit is partial, not failed."""
    (tmp_path / "benchmarks").mkdir()
    for name in ("gpu_check.sh", "gpu_setuptools.sh"):
        shutil.copy(BENCH / name, tmp_path / "benchmarks" / name)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "pyproject.toml").chmod(0o444)  # a read-only checkout's (put back by a redirect: only root could)
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "py"
    stub.write_text(f"""#!/bin/bash
echo "$*" >> {calls}
case "$*" in *setuptools.__version__.split*) exit 1;; *setuptools*) echo 65.5;; *test_masked_step*) exit 124;;
  *build_ext*) grep -q 'license = {{ text = "MIT" }}' pyproject.toml && ! grep -q license-files pyproject.toml \
    && echo "built with the table form" >> {calls};; esac
exit 0
""")
    stub.chmod(0o755)
    r = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=str(stub), OUT=str(tmp_path / "out"), DEADLINE_S="570"), timeout=60)
    steps = [line.split()[3] for line in r.stdout.splitlines() if line.startswith("=== [") and "(limit" in line]
    assert steps == ["build", "import", "tests_errors", "tests_speed", "tests_gpu", "bench", "loop",
                     "tests_masked_step", "triton_launch", "tests_maps"], r.stdout
    assert "setuptools 65.5 < 77: license as a TOML table for the build" in r.stdout
    assert "built with the table form" in calls.read_text()  # what the build read
    assert (tmp_path / "pyproject.toml").read_text() == (ROOT / "pyproject.toml").read_text()  # put back at exit
    assert (tmp_path / "pyproject.toml").stat().st_mode & 0o777 == 0o444 and "yoda-orig" not in str(os.listdir(tmp_path))
    assert "tests_masked_step: partial (124: stopped at its limit)" in r.stdout and r.returncode == 0
    assert "setup.py build_ext --inplace" in calls.read_text()
    # sourced twice (gpu_session.sh, then its gpu_check.sh): the inner run's backup was the rewritten file, and the
    # outer trap found none: pyproject.toml stayed rewritten
    calls.write_text("")
    r = subprocess.run(["bash", "-c", "source benchmarks/gpu_setuptools.sh && bash benchmarks/gpu_check.sh"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHON=str(stub), PY=str(stub), LOG=str(tmp_path / "log.txt"),
                                OUT=str(tmp_path / "out"), DEADLINE_S="570"))
    assert r.returncode == 0 and "built with the table form" in calls.read_text(), r.stdout + r.stderr
    assert (tmp_path / "pyproject.toml").read_text() == (ROOT / "pyproject.toml").read_text(), r.stderr


# ---- gpu_loop.py --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_gpu_loop_without_cuda_says_so_and_creates_nothing(tmp_path):
    out = tmp_path / "new" / "loop.md"
    r = run("gpu_loop.py", "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert last_line(r.stderr) == ("gpu_loop.py: error: no CUDA device visible; --cpu-dry-run checks the logic on "
                                   "the CPU")
    assert not (tmp_path / "new").exists()
    r = run("gpu_loop.py", "--cpu-dry-run", "--only", "bf16,channels_last")
    assert r.returncode == 2 and last_line(r.stderr).startswith("gpu_loop.py: error: --only: unknown bf16; the rows")


def test_gpu_loop_dry_run_rows(tmp_path):
    """The reference row compares with itself (bit-identical, 1.00x); channels-last only reorders the network's
    arithmetic (close, not necessarily equal); a row left out is not printed."""
    out = tmp_path / "loop.md"
    r = run("gpu_loop.py", "--cpu-dry-run", "--only", "channels_last", "--no-overhead", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| options")}
    assert set(rows) == {"fp32", "channels_last"}
    assert rows["fp32"][3:6] == ["1.00x", "0.0e+00", "inf"]
    assert float(rows["channels_last"][4]) < 1e-4 and float(rows["channels_last"][5]) > 80
    assert "failures: 0" in out.read_text() and "overhead" not in out.read_text()


# ---- stability.py -------------------------------------------------------------------------------------------------

def test_stability_loss_cv_needs_two_points():
    st = load_script("stability")
    assert math.isnan(st.loss_cv([{"step": "210", "loss": "0.5"}], 200))
    assert math.isnan(st.loss_cv([{"step": "100", "loss": "0.5"}, {"step": "200", "loss": "0.7"}], 200))
    assert st.loss_cv([{"step": "210", "loss": "1.0"}, {"step": "220", "loss": "3.0"}], 200) == pytest.approx(
        math.sqrt(2) / 2)


def test_stability_min_steps_matches_the_trainers_logging():
    st = load_script("stability")
    assert st.min_steps(200, 10, 100) == 211  # logged at 210 and at the last step
    assert st.min_steps(200, 1, 0) == 202
    assert st.min_steps(200, 0, 300) == 301
    assert st.min_steps(200, 0, 0) is None


def test_stability_too_few_steps_is_an_argument_error(tmp_path):
    r = run("stability.py", "--steps", "8", "--data", tmp_path / "nothing", "--runs", tmp_path / "runs",
            "-o", tmp_path / "report.md",
            "--figure", tmp_path / "s.png")
    assert r.returncode == 2
    assert last_line(r.stderr) == (
        "stability.py: error: --steps 8 logs fewer than 2 losses after the 200-step warm-up (the loss CV needs 2): "
        "the smallest valid --steps is 211 with --log-every 10 and --val-every 100")
    assert not (tmp_path / "runs").exists()


def test_stability_failed_run_exits_with_the_childs_message_only(tmp_path):
    """A `yoda train` that fails (here a stand-in package run through --code) ends the study with its own message
    and status 2, without a CalledProcessError traceback."""
    code = tmp_path / "code"
    (code / "yoda").mkdir(parents=True)
    (code / "yoda" / "__init__.py").write_text("")
    (code / "yoda" / "__main__.py").write_text("import sys\nsys.exit('yoda: error: image folder X/train not found')\n")
    r = run("stability.py", "--steps", "211", "--code", code, "--runs", tmp_path / "runs",
            "-o", tmp_path / "report.md", "--figure", tmp_path / "s.png")
    assert r.returncode == 2
    assert r.stderr.strip() == "yoda: error: image folder X/train not found"
    assert not (tmp_path / "report.md").exists()


# ---- quality_grid.py ----------------------------------------------------------------------------------------------

def grid_args(tmp_path, model, **kw) -> list[str]:
    opts = dict(data=tmp_path / "data", samplers="ddim0", steps="1", size="32", attention="edge",
                lower_bounds="0.6") | kw
    args = ["eval", "--models", model]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.fixture
def grid_data(tmp_path):
    from PIL import Image

    (tmp_path / "data" / "heldout").mkdir(parents=True)
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0))
    Image.fromarray((pixels * 255).byte().numpy()).save(tmp_path / "data" / "heldout" / "a.png")
    return tmp_path / "data"


def test_quality_grid_eval_needs_runs_or_model_paths(tmp_path):
    r = run("quality_grid.py", "eval", "--data", tmp_path, "-o", tmp_path / "g.json")
    assert r.returncode == 2
    assert last_line(r.stderr) == ("quality_grid.py eval: error: give --runs (the folder of `quality_grid.py train`) "
                                   "or --models as .safetensors paths")


def test_quality_grid_cell_settings_hold_everything_that_changes_the_result(tmp_path):
    qg = load_script("quality_grid")
    a = argparse.Namespace(data=str(tmp_path), runs="RUNS", models=["pixel_x0", str(tmp_path / "m.safetensors")],
                           samplers=["ddim0"], steps=[5], size=128, attention=["edge"], lower_bounds=[0.6])
    cells = qg.eval_cells(a)
    assert list(cells) == ["pixel_x0/ddim0/5", "m.safetensors/ddim0/5"]
    assert cells["m.safetensors/ddim0/5"][1] == {
        "model": str(tmp_path / "m.safetensors"), "data": str(tmp_path / "heldout"), "sampler": "ddim0", "steps": 5,
        "size": 128, "attentions": ["edge"], "lower_bounds": [0.6], "seed": 0}
    assert cells["pixel_x0/ddim0/5"][1]["model"] == os.path.abspath("RUNS/pixel_x0/model.safetensors")


def test_quality_grid_refuses_a_cached_cell_with_other_settings(tmp_path):
    model = tmp_path / "other" / "default_x4.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"")  # only its path matters: the check comes before anything is loaded
    qg = load_script("quality_grid")
    a = argparse.Namespace(data=str(tmp_path / "data"), runs="", models=[str(model)], samplers=["ddim0"], steps=[1],
                           size=64, attention=["edge"], lower_bounds=[0.6])
    (key, (_, settings)), = qg.eval_cells(a).items()
    out = tmp_path / "g.json"
    out.write_text(json.dumps({key: {"rows": [], "settings": settings}}))
    r = run("quality_grid.py", *grid_args(tmp_path, model, size=32), "-o", out)
    assert r.returncode == 2
    assert last_line(r.stderr) == (f"quality_grid.py eval: error: {out} holds default_x4.safetensors/ddim0/1 computed "
                                   "with other settings (size 64 there, 32 now): use another -o")
    other = ROOT / "yoda" / "weights" / "default_x4.safetensors"  # the same name, another file
    r = run("quality_grid.py", *grid_args(tmp_path, other, size=64), "-o", out)
    assert r.returncode == 2
    assert f"(model '{model}' there, '{other}' now)" in last_line(r.stderr)


def test_quality_grid_skips_a_cached_cell_with_the_same_settings_and_says_so(tmp_path, grid_data):
    model = ROOT / "yoda" / "weights" / "default_x4.safetensors"
    qg = load_script("quality_grid")
    a = argparse.Namespace(data=str(grid_data), runs="", models=[str(model)], samplers=["ddim0"], steps=[1],
                           size=32, attention=["edge"], lower_bounds=[0.6])
    (key, (_, settings)), = qg.eval_cells(a).items()
    out = tmp_path / "g.json"
    out.write_text(json.dumps({key: {"rows": [], "settings": settings}}))
    r = run("quality_grid.py", *grid_args(tmp_path, model), "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"default_x4.safetensors/ddim0/1: skipped, already in {out} with the same settings"


def test_quality_grid_eval_creates_the_output_folder(tmp_path, grid_data):
    model = ROOT / "yoda" / "weights" / "default_x4.safetensors"
    out = tmp_path / "new" / "sub" / "g.json"
    r = run("quality_grid.py", *grid_args(tmp_path, model), "-o", out)
    assert r.returncode == 0, r.stderr
    cell = json.loads(out.read_text())["default_x4.safetensors/ddim0/1"]
    assert cell["settings"]["size"] == 32 and {row["method"] for row in cell["rows"]} == {"bicubic", "bicubic-matlab",
                                                                                           "plain", "yoda"}


def test_quality_grid_bad_data_is_one_line(tmp_path):
    model = ROOT / "yoda" / "weights" / "default_x4.safetensors"
    r = run("quality_grid.py", *grid_args(tmp_path, model, data=tmp_path / "nothing"), "-o", tmp_path / "g.json")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert last_line(r.stderr) == (f"quality_grid.py eval: error: --data {tmp_path / 'nothing'}: image folder "
                                   f"{tmp_path / 'nothing' / 'heldout'} not found")


def test_quality_grid_train_needs_a_data_folder(tmp_path):
    r = run("quality_grid.py", "train", "--data", tmp_path / "nothing", "--runs", tmp_path / "runs")
    assert r.returncode == 2
    assert last_line(r.stderr) == (f"quality_grid.py train: error: --data {tmp_path / 'nothing'}: no train/ folder in "
                                   "it (give the folder of `yoda data build`)")
    assert not (tmp_path / "runs").exists()


def test_quality_grid_train_reports_each_run_and_fails_if_one_does(tmp_path, monkeypatch, capsys):
    """The six `yoda train` processes are stand-ins here: pixel_v fails, the others succeed at once."""
    qg = load_script("quality_grid")
    (tmp_path / "data" / "train").mkdir(parents=True)
    popen = subprocess.Popen

    def fake(cmd, **kw):
        fails = cmd[cmd.index("--out") + 1].endswith("pixel_v")
        return popen([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)" if fails else "pass"], **kw)

    monkeypatch.setattr(qg.subprocess, "Popen", fake)
    a = argparse.Namespace(data=str(tmp_path / "data"), runs=str(tmp_path / "runs"), minutes=1.0, loss="l1")
    with pytest.raises(SystemExit) as e:
        qg.cmd_train(a, None)
    assert e.value.code == "1 of 6 runs failed: pixel_v"
    lines = [re.sub(r"after \d+ s", "after N s", line) for line in capsys.readouterr().out.splitlines()]
    names = list(qg.grid_configs())
    runs = tmp_path / "runs"
    assert lines[:6] == [f"{n}: started (1 min), log {runs / (n + '.out')}" for n in names]
    assert sorted(lines[6:]) == sorted(f"{n}: exit {3 if n == 'pixel_v' else 0} after N s"
                                       + (f": FAILED, see {runs / 'pixel_v.out'}" if n == "pixel_v" else "")
                                       for n in names)
    assert (runs / "pixel_v.out").read_text() == "boom\n"
    assert json.loads((runs / "residual_x0.json").read_text())["loss"]["loss"] == "l1"


# ---- noise_fit.py, mutants.py -------------------------------------------------------------------------------------

def test_noise_fit_help_does_not_fit():
    r = run("noise_fit.py", "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: noise_fit.py [-h]")
    assert "LOG_P =" not in r.stdout


def test_mutants_list_quotes_its_commands(capsys):
    mutants = load_script("mutants")
    with_spaces = next(m for m in mutants.MUTANTS if any(" " in t for t in m.tests))
    assert mutants.main(["--list", with_spaces.name]) == 0
    command = capsys.readouterr().out.splitlines()[1].strip()
    assert shlex.split(command) == ["pytest", *with_spaces.tests]  # unquoted, "-k a and b" splits into more words


def test_unseen_photos_takes_the_largest_picture_of_an_edje_file():
    """Enlightenment's backgrounds are Eet archives holding the photograph at several sizes: the largest entry that
    Pillow reads is taken, as stored; other entries and unreadable images are passed over; a file that is not an Eet
    archive, or whose records point outside it, is refused."""
    import io
    import struct

    from PIL import Image

    m = load_script("unseen_photos")

    def jpeg(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (w % 256, 10, 20)).save(buf, "JPEG")
        return buf.getvalue()

    entries = [("edje/images/0", jpeg(8, 6)), ("edje/images/1", jpeg(20, 12)), ("edje/images/2", b"raw pixels"),
               ("edje/edje_file", jpeg(40, 40))]  # the largest picture, but not an image entry
    names = b"".join(n.encode() + b"\0" for n, _ in entries)
    head = 12 + 24 * len(entries)
    blobs_at = head + len(names)
    records, pos, name_at = b"", blobs_at, head
    for n, blob in entries:
        records += struct.pack(">6I", pos, len(blob), len(blob), name_at, len(n) + 1, 0)
        pos, name_at = pos + len(blob), name_at + len(n) + 1
    edj = struct.pack(">III", m.EET_MAGIC, len(entries), len(names)) + records + names + b"".join(b for _, b in entries)
    assert m.largest_image(edj) == entries[1][1]
    with pytest.raises(ValueError, match="not an Eet archive"):
        m.largest_image(b"\x89PNG" + edj[4:])
    with pytest.raises(ValueError, match="lies outside the file"):
        m.largest_image(edj[:-200])
    assert m.resized(Image.new("RGB", (2048, 1024))).size == (1024, 512)
    assert m.resized(Image.new("RGB", (300, 200))).size == (300, 200)  # never enlarged


def test_unseen_photos_decodes_as_data_build(tmp_path):
    """The unseen photographs are decoded as `yoda data build` decodes its own (yoda.images.read_image): a
    transparent pixel is white, not black, a phone's EXIF orientation turns the picture, 16-bit samples are
    mapped, not clipped to white. (The 25 files of the Debian 12 packages have none of these, so QUALITY.md §7's
    images are unchanged: compared pixel for pixel.)"""
    import io
    import struct

    import numpy as np
    from PIL import Image

    m = load_script("unseen_photos")
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (10, 20, 30, 255)  # the left half opaque, the right half transparent black
    Image.fromarray(rgba).save(tmp_path / "a.png")
    a = np.asarray(m.decoded(tmp_path / "a.png"))
    assert a.shape == (4, 6, 3) and (a[:, :3] == (10, 20, 30)).all() and (a[:, 3:] == 255).all()
    exif = Image.Exif()
    exif[274] = 6  # turned 90 degrees: stored 8 wide, 4 high
    Image.new("RGB", (8, 4), (200, 0, 0)).save(tmp_path / "p.jpg", exif=exif)
    assert m.decoded(tmp_path / "p.jpg").size == (4, 8)
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(tmp_path / "g.png")  # half of 16 bits: grey 128
    assert (np.asarray(m.decoded(tmp_path / "g.png")) == 128).all()
    entries = [(b"edje/images/0", Image.new("RGBA", (6, 2), (0, 0, 0, 0)))]
    buf = io.BytesIO()
    entries[0][1].save(buf, "PNG")
    blob, name = buf.getvalue(), entries[0][0] + b"\0"
    head = 12 + 24
    edj = (struct.pack(">III", m.EET_MAGIC, 1, len(name)) + struct.pack(">6I", head + len(name), len(blob), len(blob),
           head, len(name), 0) + name + blob)
    (tmp_path / "x.edj").write_bytes(edj)
    with pytest.warns(UserWarning, match="every pixel is fully transparent"):
        assert (np.asarray(m.edje_picture(tmp_path / "x.edj")) == 255).all()  # its transparent pixels on white
