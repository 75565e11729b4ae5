"""The `yoda` CLI through yoda.cli.main([...]) on tiny images with a tiny random model in the "yoda" format."""

import argparse
import csv
import json
import math
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import yoda
from yoda.adapters import as_adapter
from yoda.cli import main
from yoda.drawing import README_WIDTH
from yoda.errors import Terminated, UserError
from yoda.models import save_model
from yoda.images import load_image, to_uint8
from yoda.models.sr3 import SR3Config, SR3UNet
from yoda.schedule import Schedule

# small forwards: on a shared 2-core machine two intra-op threads spin against each other (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)).save(rgb)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (12, 8), dtype=np.uint8), mode="L").save(grey)
    return str(rgb), str(grey)


class DictStore(dict):
    """torchrun's key-value store as the ranks use it (set / check / get), in a dict."""

    def set(self, k, v):
        self[k] = str(v).encode()

    def check(self, keys):
        return all(k in self for k in keys)

    get = dict.__getitem__


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def expected_upscale(model, path, *, steps, sampler, attention, grey=False):
    """What `yoda upscale` must write, from the library: the LR file edge-padded so that the HR size is a multiple
    of the model's size multiple (8 for the tiny SR3: an even LR size), the map of the attention (a name) made of
    the LR file itself and edge-padded the same way, yoda.sample with the CLI's defaults (eta 0, lower bound 0.6,
    seed 0), cropped back to 4x the LR size, grey files as the channel mean; uint8 (H, W, C).
    model: a loaded model or a "yoda" file."""
    from yoda.sampling.prepare import resolve_attention

    model = yoda.load("yoda", model) if isinstance(model, str) else model
    lr = load_image(path)
    h, w = lr.shape[-2:]
    unit = math.lcm(4, as_adapter(model).multiple)
    x = F.pad(lr, (0, -(-4 * w // unit) * unit // 4 - w, 0, -(-4 * h // unit) * unit // 4 - h), mode="replicate")
    if attention is not None and x.shape != lr.shape:
        A = resolve_attention(attention, lr, (4 * h, 4 * w))
        attention = F.pad(A, (0, 4 * (x.shape[-1] - w), 0, 4 * (x.shape[-2] - h)), mode="replicate")
    with torch.no_grad():
        sr = yoda.sample(model, x, attention=attention, steps=steps, sampler=sampler, lower_bound=0.6, seed=0,
                         progress=False)[..., : 4 * h, : 4 * w]
    return to_uint8(sr.mean(dim=-3, keepdim=True) if grey else sr)[0]


def assert_same_pixels(path, want):
    got = np.asarray(Image.open(path))
    got = got[..., None] if got.ndim == 2 else got
    assert got.shape == want.shape
    # the same computation in the same process: identical but for a float32 rounding that crosses a level
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_upscale_one_file_right_size(tmp_path, tiny_model, images, capsys):
    rgb, _ = images
    out = tmp_path / "out.png"
    code, stdout, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--steps", "3", "-q"], capsys)
    assert code == 0, err
    im = Image.open(out)
    assert im.size == (13 * 4, 10 * 4) and im.mode == "RGB"  # odd LR size: padded for the UNet, cropped back
    # the default attention is none: plain sampling (QUALITY.md); --attention edge gives the YODA image
    assert_same_pixels(out, expected_upscale(tiny_model, rgb, steps=3, sampler="ddim", attention=None))
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--steps", "3", "--lower-bound",
                        "0.4", "-q"], capsys)  # no attention: the lower bound does nothing, and the user is told
    assert code == 0 and err == "yoda: note: --lower-bound has no effect without --attention (plain sampling)\n"
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--steps", "3", "--attention", "edge",
                        "-q"], capsys)
    assert code == 0, err
    assert_same_pixels(out, expected_upscale(tiny_model, rgb, steps=3, sampler="ddim", attention="edge"))


def test_upscale_grey_and_folder_output(tmp_path, tiny_model, images, capsys):
    rgb, grey = images
    out = tmp_path / "outdir"
    code, _, err = run(["upscale", rgb, grey, "-o", str(out), "--model", tiny_model, "--steps", "2",
                        "--sampler", "ddpm", "--attention", "gaussian", "-q"], capsys)
    assert code == 0, err
    g = Image.open(out / "grey_x4.png")
    assert g.mode == "L" and g.size == (8 * 4, 12 * 4)
    assert Image.open(out / "rgb_x4.png").size == (52, 40)
    kw = dict(steps=2, sampler="ddpm", attention="gaussian")
    assert_same_pixels(out / "grey_x4.png", expected_upscale(tiny_model, grey, grey=True, **kw))
    assert_same_pixels(out / "rgb_x4.png", expected_upscale(tiny_model, rgb, **kw))
    # an RGB file of a grey image whose channels differ by a level or two here and there (a black-and-white scan
    # saved as RGB) is grey too: its output was RGB, with the model's colour fringe on the grey (up to 18 levels)
    from yoda.images import is_grey

    a = np.repeat(np.asarray(Image.open(grey))[..., None], 3, axis=2).astype(np.int16)
    a[0, 0, 0] += 2 if a[0, 0, 0] < 254 else -2
    a[3, 5, 2] += 1 if a[3, 5, 2] < 255 else -1
    Image.fromarray(a.astype(np.uint8)).save(tmp_path / "scan.png")
    assert run(["upscale", str(tmp_path / "scan.png"), "-o", str(out), "--model", tiny_model, "-q"], capsys)[0] == 0
    assert Image.open(out / "scan_x4.png").mode == "L"
    a[3, 5] = (100, 103, 101)  # 3 levels apart: a colour, however faint
    assert is_grey(a.astype(np.uint8)) is False
    assert is_grey(np.asarray(Image.open(rgb))) is False


def test_upscale_into_an_existing_folder_whatever_its_name(tmp_path, tiny_model, images, capsys):
    """-o naming an existing folder is that folder even with one input and an image suffix (as cp does)."""
    rgb, _ = images
    (tmp_path / "isdir.png").mkdir()
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "isdir.png"), "--model", tiny_model, "--steps", "1",
                        "-q"], capsys)
    assert code == 0, err
    assert os.listdir(tmp_path / "isdir.png") == ["rgb_x4.png"]
    assert_same_pixels(tmp_path / "isdir.png" / "rgb_x4.png",
                       expected_upscale(tiny_model, rgb, steps=1, sampler="ddim", attention=None))


def test_upscale_refuses_an_output_its_format_cannot_hold_before_sampling(tmp_path, tiny_model, monkeypatch, capsys):
    """A 4200 px wide panorama x4 into .webp was sampled, then failed at the write with Pillow's "encoding error 5"
    as an internal error; WebP holds at most 16383 pixels a side (JPEG 65500). Now refused before sampling."""
    import yoda.cli as cli

    src = tmp_path / "pano.png"
    Image.fromarray(np.zeros((2, 4100, 3), np.uint8)).save(src)
    monkeypatch.setattr(cli, "_upscale_one", lambda *a: pytest.fail("sampled before the check"))
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "o.webp"), "--model", tiny_model, "-q"], capsys)
    assert code == 2 and err == (f"yoda: error: {src}: output {tmp_path / 'o.webp'}: a 16400x8 image does not fit "
                                 f"in WEBP (at most 16383 pixels a side); write .png or .tif instead\n")
    assert sorted(os.listdir(tmp_path)) == ["pano.png"]


def test_a_model_that_names_no_steps_gets_a_note(tmp_path, tiny_model, images, capsys):
    """A model whose file names no steps (trained without a config's "sampling", an upstream checkpoint) was
    sampled with 50 steps (at most T) without a word, 15-30 times slower than its 1 step (a new user's fine-tune)."""
    import dataclasses

    import yoda

    net = yoda.load("yoda", tiny_model)
    net.card = dataclasses.replace(net.card, sampling=None)
    bare = tmp_path / "bare.safetensors"
    yoda.save_model(net, bare)
    rgb, _ = images
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", str(bare), "-q"], capsys)
    assert code == 0 and err == "yoda: note: 20 sampling steps: the model's file names none (--steps sets them)\n"
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o2.png"), "--model", tiny_model, "-q"], capsys)
    assert code == 0 and err == ""  # its card says 20
    # the file's sampler too (a card's "ddpm" was sampled with DDIM, the CLI's default)
    net.card = dataclasses.replace(net.card, sampling={"sampler": "ddpm", "steps": 2})
    own = tmp_path / "own.safetensors"
    yoda.save_model(net, own)
    outs = {}
    for name, extra in (("own", []), ("ddpm", ["--sampler", "ddpm", "--steps", "2"]),
                        ("ddim", ["--sampler", "ddim", "--steps", "2"])):
        assert run(["upscale", rgb, "-o", str(tmp_path / f"{name}.png"), "--model", str(own), "-q", *extra],
                   capsys)[0] == 0
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(outs["own"], outs["ddpm"]) and not np.array_equal(outs["own"], outs["ddim"])


def test_upscale_bad_path_exit_2_no_output(tmp_path, tiny_model, images, capsys):
    rgb, _ = images
    out = tmp_path / "out.png"
    code, stdout, err = run(["upscale", str(tmp_path / "missing.png"), "-o", str(out), "--model", tiny_model], capsys)
    assert code == 2
    assert "missing.png" in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["grey.jpg", "rgb.png"]
    # a corrupt image, a missing model, a scale the model does not have: same treatment
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, _, err = run(["upscale", str(bad), "-o", str(out), "--model", tiny_model], capsys)
    assert code == 2 and "bad.png" in err and not out.exists()
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 2 and "nope.safetensors" in err and not out.exists()
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--scale", "2"], capsys)
    assert code == 2 and "scale" in err and not out.exists()
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--attention", "bogus"], capsys)
    assert code == 2 and "bogus" in err and not out.exists()


SR3_X4_CONFIG = {  # an upstream SR3 JSON config, x4 (4 -> 16), small
    "model": {"unet": {"in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                       "channel_multiplier": [1, 2, 2, 2], "attn_res": [], "res_blocks": 1, "dropout": 0.0},
              "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 30, "linear_start": 1e-4,
                                          "linear_end": 0.1},
                                "val": {"schedule": "linear", "n_timestep": 20, "linear_start": 1e-3,
                                        "linear_end": 0.2}},
              "diffusion": {"image_size": 16}},
    "datasets": {"val": {"l_resolution": 4, "r_resolution": 16}}}


def test_upscale_with_upstream_checkpoints(tmp_path, images, capsys):
    """--model sr3:PATH (with --model-config, its JSON) and srdiff:PATH read upstream checkpoints through
    yoda.load: the pixels of yoda.sample on the same loaded model. A missing file, a missing config or a config
    given for a yoda file is a one-line error, and nothing is written."""
    from yoda.models import SRDiff
    from yoda.models import load_sr3_config

    rgb, _ = images
    out = tmp_path / "out.png"
    # SR3: GaussianDiffusion.state_dict() as upstream saves it (denoise_fn.* and the float32 schedule buffers)
    cfg = tmp_path / "sr_sr3_4_16.json"
    cfg.write_text(json.dumps(SR3_X4_CONFIG))
    torch.manual_seed(1)
    net = SR3UNet.from_config(load_sr3_config(cfg)[0])
    sd = {"denoise_fn." + k: v for k, v in net.state_dict().items()}
    sd["betas"] = Schedule.linear(30, 1e-4, 0.1).betas.float()
    ck = tmp_path / "I10_E1_gen.pth"
    torch.save(sd, ck)
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", f"sr3:{ck}", "--model-config", str(cfg),
                        "--steps", "3", "--attention", "edge", "-q"], capsys)
    assert code == 0, err
    want = expected_upscale(yoda.load("sr3", ck, config=cfg), rgb, steps=3, sampler="ddim", attention="edge")
    assert_same_pixels(out, want)
    # SRDiff: model_ckpt_steps_*.ckpt, its config read from the weights
    torch.manual_seed(2)
    m = SRDiff(hidden_size=8, dim_mults=(1, 2, 3), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=4, timesteps=12)
    sd = dict(m.state_dict(), betas=m.schedule.betas.float())
    ck2 = tmp_path / "model_ckpt_steps_1000.ckpt"
    torch.save({"global_step": 1000, "state_dict": {"model": sd}}, ck2)
    out2 = tmp_path / "out2.png"
    code, _, err = run(["upscale", rgb, "-o", str(out2), "--model", f"srdiff:{ck2}", "--steps", "2", "-q"], capsys)
    assert code == 0, err
    assert_same_pixels(out2, expected_upscale(yoda.load("srdiff", ck2), rgb, steps=2, sampler="ddim",
                                              attention=None))
    # errors: one line each, naming what is wrong; nothing written
    out3 = tmp_path / "out3.png"
    for args, words in (([f"srdiff:{tmp_path / 'nope.ckpt'}"], ("--model", "nope.ckpt")),
                        ([f"sr3:{ck}", "--model-config", str(tmp_path / "nope.json")], ("--model-config", "nope.json")),
                        ([f"sr3:{ck2}"], ("--model (sr3)", "an SRDiff checkpoint", "--model srdiff:PATH")),  # as SR3
                        ([str(ck2)], ("ckpt",)),  # an upstream checkpoint without its kind: not a yoda file
                        ([f"srdiff:{ck2}", "--model-config", str(cfg)], ("config",))):
        code, _, err = run(["upscale", rgb, "-o", str(out3), "--model", *args, "-q"], capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert all(w in err for w in words), (args, err)
        assert not out3.exists()


def test_upscale_never_overwrites_an_input_and_names_colliding_inputs(tmp_path, tiny_model, images, capsys,
                                                                     no_sampling, monkeypatch):
    rgb, grey = images
    before = open(rgb, "rb").read()
    code, _, err = run(["upscale", rgb, "-o", rgb, "--model", tiny_model], capsys)
    assert code == 2 and err.count("\n") == 1 and f"-o {rgb} is the input {rgb}" in err
    assert open(rgb, "rb").read() == before
    code, _, err = run(["upscale", rgb, "-o", "", "--model", tiny_model], capsys)
    assert code == 2 and "argument -o/--output: an empty path (an unset shell variable?)" in err
    for args in (["eval", "--images", ""], ["figures", "-o", ""], ["upscale", "", "-o", "x.png"], ["eval", "-o", ""]):
        code, _, err = run(args, capsys)  # an unset $DIR: the built-in images, the working folder, "."
        assert code == 2 and "an empty path" in err, (args, err)
    # "-" (stdout / stdin): upscale -o - made a folder "-" and printed its lines into the pipe, eval -o - a file "-"
    monkeypatch.chdir(tmp_path)
    for args, which in ((["upscale", rgb, "-o", "-", "--model", tiny_model], "-o/--output"),
                        (["eval", "-o", "-"], "-o/--output"), (["upscale", "-", "-o", "x.png"], "IN")):
        code, _, err = run(args, capsys)
        assert code == 2 and f"argument {which}: '-': yoda reads and writes files and folders, not stdin or " \
            "stdout; give a path" in err, err
    assert not os.path.exists(tmp_path / "-")
    long = "L" * 300  # each command's first look at it failed as "LLL...png: File name too long", without the option
    for args, which in ((["attention", rgb, "-o", f"{long}.png"], "-o/--output"), (["plot", "x.csv", "-o",
                        f"{long}.png"], "-o/--output"), (["upscale", rgb, "-o", f"{long}/x.png"], "-o/--output"),
                        (["eval", "--images", f"{long}.png"], "--images")):
        code, _, err = run(args, capsys)
        assert code == 2 and f"argument {which}: {long}" in err and "a file or folder name of 30" in err, err
    code, _, err = run(["eval", "-o", str(tmp_path / "table.png")], capsys)
    assert code == 2 and "table.png: eval writes a table (Markdown, any other name) or a CSV (.csv), not an image" \
        in err and not (tmp_path / "table.png").exists()


def test_an_input_whose_output_cannot_be_made_is_refused_alone(tmp_path, tiny_model, images, capsys):
    """An input whose output name is an input of the user's, a pair of inputs with one stem, an output name a
    folder holds: each such input is refused in its own line and the others are made (one such pair stopped a
    whole folder before any image); nothing of the user's is written over."""
    rgb, grey = images
    before = open(rgb, "rb").read()
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    (tmp_path / "out").mkdir()
    own = tmp_path / "out" / "rgb_x4.png"  # an input already named as rgb.png's output would be
    own.write_bytes(before)
    code, _, err = run(["upscale", str(own.parent / ".." / "out" / "rgb_x4.png"), rgb, "-o", str(own.parent),
                        *common], capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith(f"yoda: error: the output of {rgb} would be {own}, "
                                                                  f"which is the input "), err
    assert open(rgb, "rb").read() == before and own.read_bytes() == before and (own.parent / "rgb_x4_x4.png").is_file()
    # two inputs with one stem: each refused, naming both and the file they would share; a third is made
    other = tmp_path / "rgb.jpg"
    Image.open(rgb).save(other)
    code, _, err = run(["upscale", rgb, str(other), grey, "-o", str(tmp_path / "o2"), *common], capsys)
    lines = err.splitlines()
    clash = "{} and {} have the same file name stem: both would be written to " + str(tmp_path / 'o2' / 'rgb_x4.png')
    # each line leads with its own input (the two lines were the same)
    assert code == 2 and len(lines) == 3 and clash.format(rgb, other) in lines[0], err
    assert clash.format(other, rgb) in lines[1], err
    assert lines[2] == "yoda: error: 2 of 3 inputs failed (see the lines above)"
    assert sorted(os.listdir(tmp_path / "o2")) == ["grey_x4.png"]
    code, _, err = run(["upscale", rgb, str(other), "-o", str(tmp_path / "o3"), *common], capsys)
    assert code == 2 and not (tmp_path / "o3").exists()  # nothing made: no folder left
    (tmp_path / "o4" / "rgb_x4.png").mkdir(parents=True)  # a folder where an output goes
    code, _, err = run(["upscale", rgb, grey, "-o", str(tmp_path / "o4"), *common], capsys)
    assert code == 2 and err.startswith(f"yoda: error: {rgb}: its output {tmp_path / 'o4' / 'rgb_x4.png'} is a "
                                        f"folder; remove or rename it\n"), err
    assert (tmp_path / "o4" / "grey_x4.png").is_file()
    # -o a dangling symbolic link: said so (mkdir's bare "File exists" named neither the link nor why)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "dangling"), *common], capsys)
    assert code == 2 and err == (f"yoda: error: {tmp_path / 'dangling'}: {tmp_path / 'dangling'} is a symbolic link "
                                 f"to {tmp_path / 'nowhere'}, which does not exist\n"), err


def test_an_output_name_too_long_is_refused_before_sampling(tmp_path, tiny_model, images, capsys):
    """An input whose stem fits but whose output name (stem + "_x4.png") does not: with -o a folder yet to be made,
    it was sampled and then failed in the write with "[Errno 36] File name too long", naming neither the input nor
    -o. Now refused first, in its own line; the other inputs are made."""
    rgb, grey = images
    long = tmp_path / ("a" * 250 + ".png")
    shutil.copy(rgb, long)
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    for out in ("new", "made"):
        if out == "made":
            (tmp_path / out).mkdir()
        code, _, err = run(["upscale", str(long), grey, "-o", str(tmp_path / out), *common], capsys)
        lines = err.splitlines()
        assert code == 2 and lines[0] == (f"yoda: error: {long}: its output {tmp_path / out / (long.stem + '_x4.png')}: "
                                          "its file name is 257 bytes long, more than the 255 a file system takes; "
                                          "give a shorter one"), err
        assert sorted(os.listdir(tmp_path / out)) == ["grey_x4.png"]


def test_contradictory_messages_are_one(tmp_path, tiny_model, images, capsys):
    """--lower-bound nan without --attention was noted to have no effect, then refused; eval and figures
    said "unknown attention 'none'" where demo and attention say what none means."""
    rgb, _ = images
    # a negative value in exponent form or -inf was read as an option: "argument --lower-bound: expected one
    # argument", where --lower-bound=-inf got the option's own error
    for bad, said in (("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("-1e-3", "-0.001"), ("-NaN", "nan"),
                      ("-.5", "-0.5")):
        code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--lower-bound", bad],
                           capsys)
        assert code == 2 and err == f"yoda: error: --lower-bound must be a finite float >= 0, got {said}\n", err
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--eta", "-1E+2"], capsys)
    assert code == 2 and err == "yoda: error: --eta must be >= 0, got -100.0\n", err
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--eta", "-x"], capsys)  # an option still
    assert code == 2 and "argument --eta: expected one argument" in err, err
    for cmd in (["eval"], ["figures", "-o", str(tmp_path / "f")]):
        code, _, err = run([*cmd, "--attention", "edge", "none", "--model", tiny_model, "-q"], capsys)
        assert code == 2 and err.startswith("yoda: error: --attention none (or plain, no map): this command draws or "
                                            "compares an attention map; name one"), err
    # where none is a choice (upscale), an unknown name's list says so; where it is not (attention), it does not
    known = "known: edge, gaussian, sift, dino-vits8:PATH, dino-resnet50:PATH"
    for cmd, end in ((["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model],
                      f"{known}, none (plain sampling)\n"), (["attention", rgb, "-o", str(tmp_path / "a.png")], f"{known}\n")):
        code, _, err = run([*cmd, "--attention", "foo"], capsys)
        assert code == 2 and err == f"yoda: error: --attention foo: unknown attention 'foo'; {end}", err


def test_upscale_folder_goes_on_past_a_bad_image(tmp_path, tiny_model, capsys):
    """One process, several inputs: an image that cannot be read is reported in one line, the others are
    written (the pixels of a run without it), and the exit status is 2."""
    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(src / name)
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    assert run(["upscale", str(src), "-o", str(tmp_path / "good"), *common], capsys)[0] == 0
    (src / "b.png").write_bytes(open(src / "a.png", "rb").read()[:60])  # truncated
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "bad"), *common], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "b.png" in lines[0] and "1 of 3 inputs failed" in lines[1], err
    assert sorted(f.name for f in (tmp_path / "bad").iterdir()) == ["a_x4.png", "c_x4.png"]
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "bad"), *common, "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "1 of 3 inputs failed" in err  # --debug: the traceback too
    for n in ("a_x4.png", "c_x4.png"):
        assert (tmp_path / "bad" / n).read_bytes() == (tmp_path / "good" / n).read_bytes()
    # a bad option is one error before any input, not one per input
    for bad in (["--eta", "3"], ["--attention", "bogus"], ["--steps", "5000"]):
        code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "opt"), *common, *bad], capsys)
        assert code == 2 and err.count("\n") == 1 and not (tmp_path / "opt").exists(), (bad, err)
    # every input failing leaves no output folder behind
    code, _, err = run(["upscale", str(src / "b.png"), str(src / "b.png"), "-o", str(tmp_path / "none"), *common],
                       capsys)
    assert code == 2 and not (tmp_path / "none").exists()


def test_upscale_a_folder_into_itself_can_be_rerun(tmp_path, tiny_model, capsys):
    """-o DIR where DIR is the input folder: a rerun leaves the outputs of the first run (STEM_x4.png next to
    STEM.png) out of its inputs with a note, instead of refusing to overwrite them as inputs; --skip-existing
    then skips them. A file named on the command line stays an input (and is refused as its own output)."""
    rng = np.random.default_rng(9)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b_x4.png"):  # b_x4.png has no b.* beside it: an input
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(src / name)
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    assert run(["upscale", str(src), "-o", str(src), *common], capsys)[0] == 0
    assert sorted(f.name for f in src.iterdir()) == ["a.png", "a_x4.png", "b_x4.png", "b_x4_x4.png"]
    first = (src / "a_x4.png").read_bytes()
    code, out, err = run(["upscale", str(src), "-o", str(src), *common, "--skip-existing"], capsys)
    assert code == 0, err
    assert "left out a_x4.png, b_x4_x4.png: they are the outputs of an earlier run" in err
    assert "0 written, 2 skipped, 0 failed, of 2 inputs" in out and (src / "a_x4.png").read_bytes() == first
    code, _, err = run(["upscale", str(src), str(src / "a_x4.png"), "-o", str(src), *common], capsys)
    assert code == 2 and f"the output of {src / 'a.png'} would be {src / 'a_x4.png'}, which is the input" in err
    assert (src / "a_x4.png").read_bytes() == first  # a.png refused alone: the named a_x4.png was upscaled
    os.remove(src / "a_x4_x4.png")
    # another folder's outputs in it too: `upscale other/ in/ -o in/` twice
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(other / "c.png")
    for _ in range(2):
        code, out, err = run(["upscale", str(other), str(src), "-o", str(src), *common, "--skip-existing"], capsys)
        assert code == 0, err
    assert "left out a_x4.png, b_x4_x4.png, c_x4.png: they are the outputs" in err
    assert "0 written, 3 skipped, 0 failed, of 3 inputs" in out
    # a picture of the user's that has an output's name but not its size is an input, never overwritten
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, size in (("d.png", (10, 8)), ("d_x4.png", (53, 37))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(mine / name)
    before = (mine / "d_x4.png").read_bytes()
    code, out, err = run(["upscale", str(mine), "-o", str(mine), *common], capsys)
    assert code == 2 and err.count("\n") == 2 and "left out" not in err
    assert (f"the output of {mine / 'd.png'} would be {mine / 'd_x4.png'}, which is the input {mine / 'd_x4.png'} "
            "(it has an output's name but not an output's size)" in err)  # it said "-o DIR/d_x4.png", never typed
    # d.png alone is refused; d_x4.png, an input, is upscaled
    assert (mine / "d_x4.png").read_bytes() == before and sorted(os.listdir(mine)) == ["d.png", "d_x4.png",
                                                                                        "d_x4_x4.png"]
    assert "1 written, 0 skipped, 1 failed, of 2 inputs" in out
    # with --skip-existing d.png is left out (its output's name is taken), and d_x4.png is skipped now
    code, out, err = run(["upscale", str(mine), "-o", str(mine), "--skip-existing", *common], capsys)
    assert code == 0 and (mine / "d_x4.png").read_bytes() == before, err
    assert sorted(os.listdir(mine)) == ["d.png", "d_x4.png", "d_x4_x4.png"]
    assert "0 written, 2 skipped, 0 failed, of 2 inputs" in out

def test_upscale_scale_defaults_to_the_models(tmp_path, images, capsys):
    """--scale is the model's unless given (a x2 model needs no option); a wrong one is refused."""
    rgb, _ = images
    torch.manual_seed(0)
    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                    res_blocks=1, image_size=16, mid_attn=False, scale=2)
    x2 = tmp_path / "x2.safetensors"
    save_model(SR3UNet.from_config(cfg), x2, schedule=Schedule.linear(20, 1e-3, 0.2))
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "out"), "--model", str(x2), "--steps", "1", "-q"],
                       capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "out" / "rgb_x2.png").size == (26, 20)
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", str(x2), "--scale", "4"], capsys)
    assert code == 2 and "--scale 4 does not match the model, which upscales x2" in err


def test_attention_command(tmp_path, images, capsys, monkeypatch):
    """The map is the one yoda.sample uses (at the HR size of --scale, resized and renormalised; it was the LR
    map, up to 0.03 off in the ratio), and the figure's title says the ratio printed (it said "this run's
    steps" for the every-step ratio)."""
    from PIL import ImageDraw

    from yoda.attention import get
    from yoda.images import load_image
    from yoda.masks import pixel_update_ratio, refine_fraction
    from yoda.sampling.prepare import resolve_attention

    rgb, _ = images
    out = tmp_path / "att.png"
    drawn, orig = [], ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: drawn.append(t) or
                        orig(self, xy, t, *a, **k))
    code, stdout, err = run(["attention", rgb, "-o", str(out), "--lower-bound", "0.5"], capsys)
    assert code == 0, err
    assert Image.open(out).size[0] > 0
    ratio = float(stdout.split("):")[1].split()[0])
    lr = load_image(rgb)
    A = resolve_attention(get("edge"), lr, (lr.shape[-2] * 4, lr.shape[-1] * 4))
    want = float(pixel_update_ratio(A, 0.5).mean())
    assert abs(ratio - want) < 1e-3  # the exact ratio over T = 1000 steps is within 1/T of mean(min(1, A + l))
    assert any("every step of T=1000" in t and f"{ratio:.3f}" in t for t in drawn)
    assert not any("this run" in t for t in drawn)
    code, stdout, err = run(["attention", rgb, "-o", str(out), "--lower-bound", "0.5", "--T", "3"], capsys)
    want3 = float(refine_fraction(A, range(3), 3, 0.5)[0])
    assert code == 0 and float(stdout.split("):")[1].split()[0]) == pytest.approx(want3, abs=5e-4), err
    # lower bound >= 1: plain sampling, every pixel refined at every step
    code, stdout, err = run(["attention", rgb, "-o", str(out), "--lower-bound", "1.2"], capsys)
    assert code == 0 and float(stdout.split("):")[1].split()[0]) == 1.0, err


def test_attention_steps_gives_the_ratio_of_yoda_samples_run(tmp_path, capsys):
    """--steps N: the ratio printed (and drawn) was always over every step of T, which no run of the embedded model
    takes (2 steps with --attention at l = 0.6). It is now the mean active fraction of the N steps yoda.sample
    visits, the number its callback reports."""
    import yoda
    from yoda.images import from_uint8

    arr = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "in.png")
    out = tmp_path / "att.png"
    code, stdout, err = run(["attention", str(tmp_path / "in.png"), "-o", str(out), "--steps", "2"], capsys)
    assert code == 0 and "(edge, lower bound 0.6, 2 steps of T=1000): " in stdout, err
    fractions = []
    yoda.sample(yoda.load("yoda", "default"), from_uint8(arr), steps=2, attention="edge", lower_bound=0.6,
                callback=lambda d: fractions.append(float(d["active_fraction"][0])), progress=False)
    assert 0 < fractions[0] < 1 and fractions[-1] == 1.0
    assert float(stdout.split("):")[1].split()[0]) == pytest.approx(np.mean(fractions), abs=5e-4)
    code, _, err = run(["attention", str(tmp_path / "in.png"), "-o", str(out), "--steps", "2", "--T", "1"], capsys)
    assert code == 2 and "--steps must be at most --T (1), got 2" in err


def test_attention_title_escapes_a_file_names_control_characters(tmp_path, images, capsys, monkeypatch):
    """A newline in the image's name drew a second title line over the panels' labels."""
    import shutil

    from PIL import ImageDraw

    texts = []
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: texts.append(t) or
                        draw_text(self, xy, t, *a, **k))
    odd = tmp_path / "a\nb.png"
    shutil.copy(images[0], odd)
    code, _, err = run(["attention", str(odd), "-o", str(tmp_path / "att.png")], capsys)
    assert code == 0, err
    assert any("edge attention of a\\nb.png, x4" in t for t in texts)
    assert not any("\n" in t for t in texts)


def test_attention_none_is_a_user_error_where_a_map_is_drawn(tmp_path, images, capsys):
    rgb, _ = images
    for cmd in (["attention", rgb, "-o", str(tmp_path / "a.png")], ["demo", "-o", str(tmp_path / "d.png")]):
        code, _, err = run(cmd + ["--attention", "none"], capsys)
        assert code == 2 and "--attention none" in err and "Traceback" not in err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "d.png").exists()


def test_demo_with_tiny_model(tmp_path, tiny_model, capsys, monkeypatch):
    """The comparison row (each result with its PSNR and SSIM, as the table prints them), the table, and under it
    the masks of the steps the YODA run took, with the run's own update ratio (the mean active fraction of its
    steps), not those of a run with every step."""
    import yoda.sampling
    from PIL import ImageDraw

    steps, texts = [], []
    def sample(*a, callback=None, **k):  # yoda.sample, recording the steps it takes
        def record(d):
            steps.append((d["t"] + 1, float(d["active_fraction"][0])))
            if callback is not None:
                callback(d)
        return real(*a, callback=record, **k)

    real = yoda.sampling.sample
    monkeypatch.setattr(yoda.sampling, "sample", sample)
    draw_text = ImageDraw.ImageDraw.text
    at, where = {}, []  # where each text is first drawn; where every text is drawn, in order
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: texts.append(t) or
                        where.append(xy) or at.setdefault(t, xy) and draw_text(self, xy, t, *a, **k))
    out = tmp_path / "demo.png"
    code, stdout, err = run(["demo", "-o", str(out), "--model", tiny_model, "--steps", "2", "--lr-size", "8",
                             "--lower-bound", "0.3", "-q"], capsys)
    assert code == 0, err
    rows = {r.split("|")[1].strip(): r.split("|")[2:4] for r in stdout.splitlines() if r.startswith("| ")}
    for name in ("bicubic", "plain", "YODA"):
        psnr, ssim = float(rows[name][0]), float(rows[name][1])
        assert f"{name}  {psnr:.2f} dB, SSIM {ssim:.3f}" in texts
    im = Image.open(out)
    # 160-px panels (32 px enlarged) within README's width, under the title (wrapped to the figure: a tmp path names
    # the model): LR | bicubic | HR, then plain | YODA | A under them (the six were one row, 1578 px at 256 px)
    first = next(i for i, t in enumerate(texts) if t.startswith("yoda demo: "))
    heads = texts[first:texts.index("LR (nearest)")]
    title, top, line = " ".join(heads), 6 + 18 * len(heads), 18 + 160 + 6  # line: a label and its panel
    assert title.startswith("yoda demo: astronaut, x4 (8 -> 32 px), model ") and title.endswith("ddim 2 steps, seed 0")
    assert where[first:first + len(heads)] == [(6, 2 + 18 * i) for i in range(len(heads))]  # a line may be "0"
    label = {name: next(t for t in texts if t.startswith(name + "  ")) for name in ("bicubic", "plain", "YODA")}
    assert [at["LR (nearest)"], at[label["bicubic"]], at["HR"]] == [(x, top) for x in (6, 172, 338)]
    a_label = next(t for t in texts if t.startswith("attention A ("))
    assert [at[label["plain"]], at[label["YODA"]], at[a_label]] == [(x, top + line) for x in (6, 172, 338)]
    yoda_steps = steps[-2:]  # the plain run's two steps come first
    assert yoda_steps[0][0] > yoda_steps[1][0]
    masks = [t for t in texts if t.startswith("M(t=") and t.endswith("refined")]
    assert [int(t[4:t.index(")")]) for t in masks] == [t for t, _ in yoda_steps]
    # the key (room is left in the masks' row): colours of A, with the drawn masks' thresholds on it
    assert "key" in texts and "value of A" in texts
    assert [t for t in texts if t.startswith("M(t=") and t.endswith(")")] == [f"M(t={t})" for t, _ in yoda_steps]
    # the error maps: |plain - HR|, |YODA - HR|, |YODA - plain| with their means (the two runs differ here), on a
    # line of their own under their scale (the first of them sat beside the key, under the masks' caption), each
    # under the panel it is of (|YODA - plain| under the map); then the masks' caption (wrapped), the map over the
    # LR, the masks and the key on one line (four 160-px panels fit README's width)
    errors = [t for t in texts if t.startswith("|") and ", mean " in t]
    assert [t.split(",")[0] for t in errors] == ["|plain - HR|", "|YODA - HR|", "|YODA - plain|"]
    assert float(errors[2].split("mean ")[1]) > 0
    scale = "|a - b|: mean over RGB, 8-bit levels, black 0, white >= 32"
    assert at[scale] == (6, top + 2 * line) and [at[e] for e in errors] == [(x, top + 18 + 2 * line)
                                                                            for x in (6, 172, 338)]
    cap = texts[texts.index(errors[2]) + 1:texts.index("A over LR")]
    assert cap[0].startswith("YODA: edge attention, l = 0.3; masks M(t) = 1[A >= t/T - 0.3] at its 2 steps")
    ratio = sum(f for _, f in yoda_steps) / 2
    assert " ".join(cap).endswith(f"pixel update ratio (of the run)={ratio:.3f}")  # (ratio_text's: a ratio above 0
    # read "0.000" in the demo, "<0.001" in yoda attention's figure)
    assert [at[c] for c in cap] == [(6, top + 18 + 3 * line + 18 * i) for i in range(len(cap))]
    y = top + 18 + 3 * line + 18 * len(cap)
    assert [at[t] for t in ["A over LR", *masks, "key"]] == [(x, y) for x in (6, 172, 338, 504)]
    assert im.size == (6 + 4 * 166, y + line + 12) and im.width <= README_WIDTH
    code, _, err = run(["demo", "-o", str(out), "--model", tiny_model, "--image", "camera"], capsys)
    assert code == 2 and "--image must be one of the images no model here was trained on (astronaut," in err
    for bad in ("0", "-5"):
        code, _, err = run(["demo", "-o", str(out), "--model", tiny_model, "--lr-size", bad], capsys)
        assert code == 2 and err.count("\n") == 1 and f"--lr-size must be >= 1, got {bad}" in err
    code, _, err = run(["demo", "-o", str(out), "--model", tiny_model, "--lr-size", "5000"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--lr-size 5000 is too large for astronaut (512x512) at x4: at most 128" in err
    # the embedded model: plain takes its 1 step, YODA the fewest that refine every pixel; its ratio against a
    # plain run of its own steps (0.59 at the defaults) read as "59% of plain's work" beside a plain column of 1 step
    steps.clear()
    texts.clear()
    code, _, err = run(["demo", "-o", str(out), "--lr-size", "8", "--lower-bound", "0.3", "-q"], capsys)
    assert code == 0, err
    n_yoda = 4  # the fewest steps whose last refines every pixel at l = 0.3 (the caption's "at its 4 steps")
    ratio = sum(f for _, f in steps[-n_yoda:]) / n_yoda  # the plain column: the embedded model's 1 step
    errors = [t for t in texts if t.startswith("|") and ", mean " in t]
    assert " ".join(texts[texts.index(errors[2]) + 1:texts.index("A over LR")]).endswith(
        f"pixel update ratio (vs plain at its {n_yoda} steps)={ratio:.3f}, {ratio * n_yoda:.2f}x the plain column's "
        "updates")


def test_demo_draws_the_growing_masks_and_the_first_full_one(tmp_path, tiny_model, capsys, monkeypatch):
    """With more steps than panels demo drew evenly spaced steps: it skipped the last mask that still grows and
    drew a later full one instead of the first; it now picks them as `yoda attention` does."""
    import yoda.sampling
    from PIL import ImageDraw

    taus, texts = [], []
    real = yoda.sampling.sample
    monkeypatch.setattr(yoda.sampling, "sample", lambda *a, callback=None, **k: real(
        *a, callback=lambda d: taus.append((d["t"] + 1, d["tau"])) or (callback and callback(d)), **k))
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: texts.append(t) or
                        draw_text(self, xy, t, *a, **k))
    code, _, err = run(["demo", "-o", str(tmp_path / "d.png"), "--model", tiny_model, "--steps", "12", "--lr-size",
                        "8", "--lower-bound", "0.2", "-q"], capsys)
    assert code == 0, err
    yoda_steps = taus[-12:]
    drawn = [int(t[4:t.index(")")]) for t in texts if t.startswith("M(t=") and t.endswith("refined")]
    growing = [t for t, tau in yoda_steps if tau > 0]
    full = [t for t, tau in yoda_steps if tau <= 0]
    assert len(drawn) == 5 and drawn[0] == yoda_steps[0][0] and drawn[-1] == full[0] and drawn[-2] == growing[-1]


def test_demo_keeps_its_rows_of_three_with_large_panels(tmp_path, tiny_model, capsys, monkeypatch):
    """README's `yoda demo --lr-size 96` (384-px panels) split each row of three two and one: HR alone under LR and
    bicubic, the map alone under plain and YODA. The rows stay together; the figure is wider than README's."""
    from PIL import ImageDraw

    at = {}
    draw_text = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, t, *a, **k: at.setdefault(t, xy) and
                        draw_text(self, xy, t, *a, **k))
    out = tmp_path / "d.png"
    code, _, err = run(["demo", "-o", str(out), "--model", tiny_model, "--steps", "1", "--lr-size", "96", "-q"], capsys)
    assert code == 0, err
    heads = [xy for t, xy in at.items() if t in ("LR (nearest)", "HR") or t.startswith(("bicubic  ", "plain  "))]
    assert sorted(x for x, _ in heads) == [6, 6, 396, 786] and len({y for _, y in heads}) == 2
    assert Image.open(out).size[0] == 6 + 3 * 390


def test_demo_names_yodas_steps_as_yodas(tmp_path, capsys):
    """yoda demo always has a YODA column; with the model's own steps (1 for the embedded model) it takes YODA's
    2, and its note said so naming --attention, a flag the user never gave."""
    code, stdout, err = run(["demo", "-o", str(tmp_path / "d.png"), "--lr-size", "8", "-q"], capsys)
    assert code == 0 and "(YODA 2 steps)" in stdout.splitlines()[0] and "--attention" not in err, (stdout, err)
    assert err.startswith("yoda: note: YODA: 2 steps, the fewest whose last step refines every pixel whatever "
                          "the map (at 1, "), err


def test_demo_error_maps():
    """The demo's error maps: the mean over RGB of |a - b| in 8-bit levels, drawn grey from black (0) to white
    (ERROR_WHITE levels and above)."""
    from yoda.drawing import ERROR_WHITE, error_image, error_map

    a = np.zeros((2, 3, 3), np.uint8)
    b = a.copy()
    b[0, 0] = (3, 6, 9)  # mean 6
    b[1, 2] = (255, 255, 0)  # mean 170: white
    b[0, 1] = (0, 0, 48)  # mean 16: mid grey
    e = error_map(a, b)
    assert e.dtype == np.float64 and e.shape == (2, 3)
    assert e[0, 0] == 6 and e[1, 2] == 170 and e[0, 1] == 16 and e[1, 0] == 0
    assert np.array_equal(error_map(b, a), e)  # absolute: no wrap-around of uint8
    im = error_image(e)
    assert im.shape == (2, 3, 3) and (im[..., 0] == im[..., 2]).all()
    assert im[1, 2, 0] == 255 and im[1, 0, 0] == 0 and im[0, 1, 0] == round(16 / ERROR_WHITE * 255)


def test_demo_draws_the_map_the_sampler_used_when_the_lr_is_padded(tmp_path, tiny_model, capsys, monkeypatch):
    """An LR side the model does not take (7 for a model on a grid of 2): the sampler gets the edge-padded LR and
    the map of the LR itself (the one `yoda attention` draws), edge-padded the same way; the demo draws that map.
    The map was made of the padded LR (normalised over the padding, a Gaussian centred on it), unlike the map
    `yoda attention` draws, and the demo drew the unpadded one."""
    import yoda.attention
    import yoda.sampling
    from yoda.sampling.prepare import resolve_attention

    import yoda.attention.figure

    drawn, given = [], []
    colormap = yoda.attention.figure.colormap  # the demo draws the map through it
    monkeypatch.setattr(yoda.attention.figure, "colormap", lambda a: drawn.append(a) or colormap(a))
    import yoda.sampling.loop as loop

    real = loop.prepare  # what yoda.sample(pad=True) samples: the padded lr, and the map it pads
    monkeypatch.setattr(loop, "prepare", lambda ad, spec, x, A, noise, **kw: given.append((x, A)) or real(
        ad, spec, x, A, noise, **kw))
    for attention in ("edge", "gaussian"):
        code, _, err = run(["demo", "-o", str(tmp_path / "d.png"), "--model", tiny_model, "--steps", "1",
                            "--lr-size", "7", "--attention", attention, "-q"], capsys)
        assert code == 0, err
        x, A = given[-1]
        assert x.shape[-2:] != (7, 7)  # padded
        lr = x[..., :7, :7]
        want = resolve_attention(attention, lr, (28, 28))
        torch.testing.assert_close(A[..., :28, :28], want, rtol=0, atol=0)
        torch.testing.assert_close(A, F.pad(want, (0, A.shape[-1] - 28, 0, A.shape[-2] - 28), mode="replicate"))
        heat = [d for d in drawn if d.shape == tuple(want.shape[-2:])][-1]  # not the key's ramp
        torch.testing.assert_close(torch.from_numpy(heat), want[0, 0], rtol=0, atol=0)
        of_padded = resolve_attention(attention, x, tuple(A.shape[-2:]))[..., :28, :28]
        assert (of_padded - want).abs().max() > 0.01  # the maps of the padded LR differ: the test tells them apart
    im = Image.open(tmp_path / "d.png")
    assert (im.width - 6) % (28 * 6 + 6) == 0  # small crops are drawn enlarged (28 -> 168 px), so that labels fit


def test_every_command_writing_o_refuses_an_input(tmp_path, tiny_model, capsys):
    """`yoda eval -o` wrote its table over an image of --images or the --model file, `yoda attention IMG -o IMG`
    replaced the picture with its figure, and `yoda plot` wrote through a hard link to its log: every command
    that writes -o now refuses one of its inputs, before any work. A file of the images folder that is not an
    image (the table of an earlier run) is no input."""
    from yoda.figures import FIGURE_FILES

    folder = tmp_path / "ev"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"im{k}.png")
    fig = folder / FIGURE_FILES[0]
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(fig)  # an input named as a figure
    log = tmp_path / "log.csv"
    log.write_text("step,loss,lr,seconds\n1,0.5,0.001,1\n")
    os.link(log, tmp_path / "log.png")
    kept = {p: p.read_bytes() for p in (folder / "im0.png", Path(tiny_model), fig, log)}
    common = ["--images", str(folder), "--model", tiny_model, "--steps", "1", "-q"]
    for args, dst in ((["eval", *common, "-o", str(folder / "im0.png")], folder / "im0.png"),
                      (["eval", *common, "-o", tiny_model], tiny_model),
                      (["figures", *common, "-o", str(folder)], fig),
                      (["attention", str(folder / "im0.png"), "-o", str(folder / "im0.png")], folder / "im0.png"),
                      (["plot", str(log), "-o", str(tmp_path / "log.png")], tmp_path / "log.png")):
        code, _, err = run(args, capsys)
        if args[0] == "figures":  # the images' folder itself is refused first (the next run read the figures)
            assert code == 2 and err == f"yoda: error: -o {folder} is the --images folder; give the figures a " \
                                        "folder of their own\n", err
            continue
        if dst == folder / "im0.png" and args[0] == "eval":  # an image name is no table's, input or not
            assert code == 2 and err.endswith("eval writes a table (Markdown, any other name) or a CSV (.csv), not "
                                              "an image\n"), err
            continue
        assert code == 2 and err.count("\n") == 1 and f"-o {dst} is the input " in err, (args, err)
        assert "does not overwrite its inputs" in err
    assert all(p.read_bytes() == b for p, b in kept.items())
    for _ in range(2):  # the second run writes over the first one's table, which is in the folder now
        code, out, err = run(["eval", *common, "-o", str(folder / "table.md")], capsys)
        assert code == 0 and (folder / "table.md").read_text() == out, err


def test_eval_command(tmp_path, tiny_model, capsys):
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "2",
                             "--lower-bounds", "0.4", "0.8", "--attention", "edge", "-q"], capsys)
    assert code == 0, err
    lines = [l for l in stdout.splitlines() if l.startswith("| ")]
    assert [l.split("|")[1].strip() for l in lines[1:]] == ["bicubic", "bicubic-matlab", "plain", "yoda", "yoda"]
    assert "LPIPS omitted" in stdout
    # what was measured heads the table (the tables of two samplers looked alike)
    assert stdout.splitlines()[0] == f"yoda eval: model {tiny_model}, ddim 2 steps, seed 0, PSNR / SSIM on RGB"
    code, _, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--model", "default"], capsys)
    assert code == 2 and f"--model is given twice ({tiny_model} and default); give it once" in err  # took the last
    # so is every option whose second occurrence dropped the first without a word (0.4 and edge were lost)
    for twice, said in ((["--lower-bounds", "0.4", "--lower-bounds", "0.8"],
                         "--lower-bounds is given twice; give its values after one: --lower-bounds 0.4 0.8"),
                        (["--attention", "edge", "--attention", "gaussian"],
                         "--attention is given twice; give its values after one: --attention edge gaussian"),
                        (["-o", "a.md", "-o", "b.md"], "-o is given twice (a.md and b.md)")):
        code, _, err = run(["eval", "--images", str(folder), *twice], capsys)  # (refused as it is parsed)
        assert code == 2 and said in err, err
    # every other command's options too (train --config A --config B trained B; --steps 1 --steps 2 took 2)
    for args, said in ((["train", "--config", "a.json", "--config", "b.json"], "--config is given twice (a.json and "
                        "b.json)"),
                       (["upscale", "x.png", "--steps", "1", "--steps", "2"], "--steps is given twice (1 and 2)"),
                       (["plot", "log.csv", "--labels", "a", "--labels", "b"], "--labels is given twice; give its "
                        "values after one: --labels a b"),
                       (["attention", "x.png", "--lower-bound", "0.2", "--lower-bound", "0.9"], "--lower-bound is "
                        "given twice (0.2 and 0.9)")):
        code, _, err = run(args, capsys)
        assert code == 2 and said in err and err.count("\n") == 1, (args, err)
    code, _, err = run(["eval", "--images", str(tmp_path / "empty_missing"), "--model", tiny_model], capsys)
    assert code == 2 and "empty_missing" in err
    # a folder named like one of yoda.data's sources is still the folder
    (tmp_path / "photos").mkdir()
    Image.open(folder / "a.png").save(tmp_path / "photos" / "a.png")
    code, stdout2, err = run(["eval", "--images", str(tmp_path / "photos"), "--model", tiny_model, "--steps", "2",
                              "--lower-bounds", "0.4", "0.8", "--attention", "edge", "-q"], capsys)
    table = lambda out: [l.rsplit("|", 2)[0] for l in out.splitlines() if l.startswith("| ")]  # less the time
    assert code == 0 and table(stdout2) == table(stdout), err
    # eval has --lower-bounds only (which argparse lets --lower-bound abbreviate); bad --max-size and --lpips
    # files are named before any work
    code, stdout3, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1",
                              "--attention", "edge", "--lower-bound", "0.3", "-q"], capsys)
    rows = [l for l in stdout3.splitlines() if l.startswith("| yoda")]
    assert code == 0 and len(rows) == 1 and "0.3" in rows[0], (stdout3, err)
    for args, want in ((["--max-size", "-5"], "--max-size must be >= 0 (0: full size), got -5"),
                       (["--max-size", "3"], "--max-size 3 is below 8, the smallest HR side this model takes"),
                       (["--attention", "edge", "edge"], "--attention: 'edge' is given twice"),
                       (["--lower-bounds", "0.4", "0.4"], "--lower-bounds: 0.4 is given twice"),
                       (["--lpips", "nope1", "nope2"], "--lpips: weights file nope1: not found"),
                       (["--lpips", str(folder), "nope2"], f"--lpips: weights file {folder}: a folder"),  # "not found"
                       (["--lpips", "/dev/null", "nope2"], "--lpips: weights file /dev/null: not a regular file"),
                       (["--seed", "-1"], "argument --seed: '-1' must be an integer in [0, 4294967295]")):
        code, _, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "3", "-q", *args],
                           capsys)  # (3 steps cover every default lower bound: no note)
        assert code == 2 and err.count("\n") == 1 and want in err, (args, err)


def test_train_lines_say_a_row_a_minute_and_every_validated_one(monkeypatch, capsys):
    from yoda import cli

    clock = iter([0.0, 10.0, 59.0, 61.0, 62.0, 63.0, 64.0])
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    say = cli.train_lines(every_s=60.0)
    for step, val, loss, final in ((1, "", 0.5, False), (2, "", 0.5, False), (3, 28.5, 0.5, False),
                                   (4, "", 0.5, False), (5, "", math.nan, True), (6, "", 0.5, False),
                                   (7, "", 0.5, True)):
        say({"step": step, "loss": loss, "lr": 1e-4, "time": float(step), "val_psnr_plain": val,
             "val_psnr_yoda": ""}, 9, final)
    said = capsys.readouterr().out.splitlines()
    # 1, the first; 2 within a minute of it; 3 validated (said at 59); 4 within a minute of 3; 5 a stop's last row
    # (it was left out: a Ctrl-C'd run's log ended before its stop), whose steps had no active pixel (no "nan"); 6
    # within a minute; 7, the end
    assert [line.split(":")[0] for line in said] == ["step 1 of 9", "step 3 of 9", "step 5 of 9", "step 7 of 9"]
    assert said[2] == "step 5 of 9: no loss (no active pixel), lr 0.0001, 5 s", said


def test_train_and_plot_commands(tmp_path, capsys):
    import json

    from PIL import Image as I

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        I.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = {
        "name": "t", "model": {"kind": "sr3", "in_channel": 6, "out_channel": 3, "inner_channel": 8,
                               "norm_groups": 4, "channel_mults": [1, 2], "attn_res": [], "res_blocks": 1,
                               "image_size": 16, "mid_attn": False, "scale": 4},
        "schedule": {"kind": "linear", "T": 20, "beta_start": 0.001, "beta_end": 0.2},
        "data": {"source": str(folder), "crop": 16, "val_source": str(folder), "val_crops": 1, "val_crop": 16},
        "loss": {"mask_input": True, "mask_loss": True}, "batch": 2, "steps": 2, "log_every": 1,
        "val_every": 2, "val_steps": 2,
    }
    cpath = tmp_path / "c.json"
    cpath.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    code, stdout, err = run(["train", "--config", str(cpath), "--out", str(out), "--device", "cpu", "-q"], capsys)
    assert code == 0, err
    assert stdout.startswith("trained 2 steps in ") and stdout.count("\n") == 1, stdout  # -q: the result alone
    for f in ("model.safetensors", "log.csv", "config.json", "TRAINING.md", "checkpoint.pt"):
        assert (out / f).exists(), f
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows[-1]["step"] == "2"
    # without a terminal (a CI log, nohup) no bar is drawn, and the run said nothing until it ended: it prints the
    # logged rows (at most one a minute, each validated one and the last), the validation PSNRs too
    code, again, err = run(["train", "--config", str(cpath), "--out", str(tmp_path / "run2"), "--device", "cpu"],
                           capsys)
    assert code == 0, err
    row1, row2 = list(csv.DictReader(open(tmp_path / "run2" / "log.csv")))
    lines = again.splitlines()
    assert lines[0] == (f"step 1 of 2: loss {float(row1['loss']):.4f}, lr {float(row1['lr']):.3g}, "
                        f"{float(row1['time']):.0f} s"), again
    assert lines[1] == (f"step 2 of 2: loss {float(row2['loss']):.4f}, lr {float(row2['lr']):.3g}, "
                        f"{float(row2['time']):.0f} s; validation PSNR plain {float(row2['val_psnr_plain']):.2f} dB, "
                        f"YODA {float(row2['val_psnr_yoda']):.2f} dB"), again
    assert lines[2].startswith("trained 2 steps in ") and len(lines) == 3, again
    # the logged validation PSNRs are those of the exported (EMA) weights on the held-out crop: recomputed here
    # from the saved config with yoda.sample and skimage's PSNR (yoda.evaluate.psnr)
    from yoda.data import fixed_crops, load_source, make_lr
    from yoda.evaluate import psnr

    saved = json.loads((out / "config.json").read_text())
    hr = fixed_crops(load_source(str(folder), 16), 1, 16, seed=saved["seed"] + 1)
    lr = make_lr(hr, 4)
    model = yoda.load("yoda", str(out / "model.safetensors"))
    want = {}
    for key, attention in (("val_psnr_plain", None), ("val_psnr_yoda", saved["attention"])):
        with torch.no_grad():
            sr = yoda.sample(model, lr, attention=attention, steps=saved["val_steps"], sampler="ddim",
                             lower_bound=saved["loss"]["lower_bound"], seed=saved["seed"], progress=False)
        want[key] = psnr(to_uint8(sr)[0], to_uint8(hr)[0])
        assert float(rows[-1][key]) == pytest.approx(want[key], abs=1e-3), key
    assert want["val_psnr_plain"] != want["val_psnr_yoda"]  # the masks were in play
    # TRAINING.md gives bicubic's PSNR on the same crops beside them, the bar a model must clear (a run below it
    # said nothing of it)
    from yoda.adapters import upsample

    bicubic = psnr(to_uint8(upsample(lr, 4))[0], to_uint8(hr)[0])
    assert (f"YODA {float(rows[-1]['val_psnr_yoda']):.2f} dB; bicubic {bicubic:.2f} dB on the same crops (a model "
            "below it makes them worse)\n") in (out / "TRAINING.md").read_text()
    # the exported weights are a loadable "yoda" model
    code, _, err = run(["upscale", str(folder / "0.png"), "-o", str(tmp_path / "sr.png"), "--model",
                        str(out / "model.safetensors"), "--steps", "2", "-q"], capsys)
    assert code == 0, err
    png = tmp_path / "curves.png"
    (tmp_path / "copy.csv").write_bytes((out / "log.csv").read_bytes())
    code, _, err = run(["plot", str(out / "log.csv"), str(tmp_path / "copy.csv"), "--labels", "a", "b", "-o",
                        str(png)], capsys)
    assert code == 0, err
    assert I.open(png).size == (900, 360)
    code, _, err = run(["plot", str(out), str(out / "log.csv"), "-o", str(tmp_path / "c3.png")], capsys)
    assert code == 2 and err.endswith(f"{out / 'log.csv'} and {out / 'log.csv'} are the same log; give each once\n")
    code, _, err = run(["plot", str(out / "log.csv"), str(out / "log.csv"), "--labels", "a", "-o", str(png)], capsys)
    assert code == 2 and "--labels: give one label per log (2 logs, 1 labels)" in err  # the option, not "labels"
    for bad in (tmp_path, tmp_path / "c.jpg"):  # a folder was told to give .jpg too, which was then refused
        code, _, err = run(["plot", str(out / "log.csv"), "-o", str(bad)], capsys)
        assert code == 2 and err == f"yoda: error: -o {bad}: yoda plot writes a PNG; give a file name ending in .png\n"
    code, _, err = run(["train", "--config", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "none.json" in err
    # a binary file given as a log is named; a run that fails before writing anything leaves no folder
    code, _, err = run(["plot", str(png), "-o", str(tmp_path / "c2.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{png} is not a training log" in err
    (tmp_path / "new.csv").write_text(open(out / "log.csv").readline())  # a run's log before its first step
    code, _, err = run(["plot", str(tmp_path / "new.csv"), "-o", str(tmp_path / "c2.png")], capsys)
    assert code == 2 and "new.csv has no logged steps yet (only its header)" in err
    cfg["data"].update(source=str(tmp_path / "no_data"))
    cpath.write_text(json.dumps(cfg))
    code, _, err = run(["train", "--config", str(cpath), "--out", str(tmp_path / "runs" / "b"), "-q"], capsys)
    assert code == 2 and "no_data" in err and not (tmp_path / "runs").exists()


def test_demo_with_the_embedded_default_model(tmp_path, capsys):
    """The shipped weights load and super-resolve the held-out image: both samplers land within 1.5 dB of
    bicubic (a broken or mis-parameterised model lands far below: ~4 dB when x0 weights are sampled as eps)."""
    out = tmp_path / "demo.png"
    code, stdout, err = run(["demo", "-o", str(out), "--lr-size", "32", "--steps", "10", "-q"], capsys)
    assert code == 0, err
    psnr = {row.split("|")[1].strip(): float(row.split("|")[2]) for row in stdout.splitlines()
            if row.startswith("| ") and not row.startswith("| method")}
    assert set(psnr) == {"bicubic", "plain", "YODA"}
    assert psnr["plain"] > psnr["bicubic"] - 1.5 and psnr["YODA"] > psnr["bicubic"] - 1.5, psnr
    assert Image.open(out).size[0] == 6 + 3 * (256 + 6) <= README_WIDTH  # 128 px enlarged x2, three a line
    # at the defaults the YODA column takes the steps `yoda upscale --attention` takes (2 at l = 0.6), plain 1
    code, stdout, err = run(["demo", "-o", str(out), "--lr-size", "16", "-q"], capsys)
    assert code == 0 and "ddim 1 step (YODA 2 steps), attention edge" in stdout and "note: YODA: 2 steps" in err


# ----------------------------------------------------------------------------------------------------------
# Hostile inputs: bombs, pixel limits, output paths checked before any sampling, failing models
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_sampling(monkeypatch):
    """Sampling raises: a test using it proves that its error came before any sampling."""
    import yoda.cli
    import yoda.cli_demo

    def never(*a, **k):
        raise AssertionError("sampling started")

    for module in (yoda.cli, yoda.cli_demo):
        monkeypatch.setattr(module, "upscale_tensor", never)


def test_bomb_png_is_refused_in_one_line(tmp_path, tiny_model, capsys, no_sampling):
    from test_images import bomb_png

    for side in (20000, 10000):  # refused by Pillow's own check at open / by ours from the header (+ a warning)
        bomb = bomb_png(tmp_path / "bomb.png", side)
        for args in (["upscale", str(bomb), "-o", str(tmp_path / "o.png"), "--model", tiny_model],
                     ["attention", str(bomb), "-o", str(tmp_path / "a.png")]):
            code, _, err = run(args, capsys)
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert f"bomb.png is {side * side} pixels" in err or f"= {side * side} pixels" in err, err
            assert "more than the limit of 67108864" in err and "--max-pixels" in err
    assert sorted(os.listdir(tmp_path)) == ["bomb.png"]


def test_max_pixels_option(tmp_path, tiny_model, images, capsys):
    rgb, _ = images  # 13x10 = 130 pixels, 2080 at x4
    out = tmp_path / "o.png"
    code, _, err = run(["attention", rgb, "-o", str(out), "--max-pixels", "129"], capsys)
    assert code == 2 and "rgb.png is 13x10 = 130 pixels, more than the limit of 129" in err and not out.exists()
    code, _, err = run(["attention", rgb, "-o", str(out), "--max-pixels", "130", "--scale", "1"], capsys)
    assert code == 0, err
    # the map is drawn at the HR size (--scale, 4 by default), which is bounded too (a 16384² map took 4.6 GB)
    code, _, err = run(["attention", rgb, "-o", str(out), "--max-pixels", "2079"], capsys)
    assert code == 2 and "13x10 upscaled x4 is 52x40 = 2080 pixels, more than the limit of 2079" in err
    code, _, err = run(["attention", rgb, "-o", str(out), "--max-pixels", "2080"], capsys)
    assert code == 0, err
    # upscale also bounds its output: 130 LR pixels are 2080 at x4
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "u.png"), "--model", tiny_model, "--steps", "1",
                        "--max-pixels", "2079", "-q"], capsys)
    assert code == 2 and "13x10 upscaled x4 is 52x40 = 2080 pixels, more than the limit of 2079" in err
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "u.png"), "--model", tiny_model, "--steps", "1",
                        "--max-pixels", "2080", "-q"], capsys)
    assert code == 0, err
    code, _, err = run(["attention", rgb, "-o", str(out), "--max-pixels", "-1"], capsys)
    assert code == 2 and "--max-pixels must be >= 0" in err


def test_max_pixels_raises_pillows_own_limit_for_the_command(tmp_path, images, capsys, monkeypatch):
    rgb, _ = images
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow alone would refuse 130 > 2 * 50
    code, _, err = run(["attention", rgb, "-o", str(tmp_path / "a.png"), "--max-pixels", "0"], capsys)
    assert code == 0, err
    assert Image.MAX_IMAGE_PIXELS == 50  # restored after the command
    code, _, err = run(["attention", rgb, "-o", str(tmp_path / "a.png")], capsys)
    assert code == 2 and "is 130 pixels, more than the limit of" not in err and "Pillow's own limit" in err


@pytest.mark.parametrize("suffix", [".bmp", ".jpg", ".webp", ".tiff"])
def test_upscale_writes_the_format_of_the_suffix(tmp_path, tiny_model, images, capsys, suffix):
    rgb, _ = images
    out = tmp_path / f"out{suffix}"
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--steps", "1", "-q"], capsys)
    assert code == 0, err
    assert out.is_file()  # a file, not a folder with a PNG inside
    with Image.open(out) as im:
        assert im.size == (52, 40) and im.format == {".bmp": "BMP", ".jpg": "JPEG", ".webp": "WEBP",
                                                     ".tiff": "TIFF"}[suffix]


def test_output_paths_are_checked_before_sampling(tmp_path, tiny_model, images, capsys, no_sampling, monkeypatch):
    rgb, grey = images
    (tmp_path / "isdir.png").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["upscale", rgb, "-o", str(tmp_path / "nope" / "o.png")], "nope/o.png: the folder"),
        (["upscale", rgb, "-o", str(tmp_path / "o.gif")], "o.gif: cannot write images with the suffix '.gif'"),
        (["upscale", rgb, grey, "-o", str(tmp_path / "o.png")], "several inputs need an output folder"),
        (["upscale", rgb, grey, "-o", str(tmp_path / "afile" / "sub")], "afile is a file"),
        (["attention", rgb, "-o", str(tmp_path / "isdir.png")], "isdir.png is a folder"),
        (["attention", rgb, "-o", str(tmp_path / "o.txt")], "o.txt: cannot write images"),
        (["demo", "-o", str(tmp_path / "nope" / "d.png"), "--model", tiny_model], "nope/d.png: the folder"),
        (["figures", "-o", str(tmp_path / "f.png"), "--model", tiny_model], "f.png: yoda figures writes 3 PNGs"),
    ]
    # a FIFO or a device (-o /dev/null), or a link to one, was replaced by a regular file (as root, /dev/null itself)
    fifo, link = tmp_path / "fifo.png", tmp_path / "link.png"
    os.mkfifo(fifo)
    os.mkfifo(tmp_path / "fifo.csv")
    os.symlink(fifo, link)
    special = "is not a regular file (a device or a pipe)"
    cases += [(["upscale", rgb, "-o", str(fifo)], f"-o {fifo} {special}"),
              (["attention", rgb, "-o", str(link)], f"{link} {special}"),
              (["demo", "-o", str(fifo), "--model", tiny_model], f"{fifo} {special}"),
              (["eval", "--images", os.path.dirname(rgb), "-o", str(tmp_path / "fifo.csv"), "--model", tiny_model],
               f"fifo.csv {special}")]
    import yoda.cli

    def no_load(*args, **kwargs):  # -o is checked before the model loads (a large checkpoint takes a while)
        raise AssertionError("the model was loaded before -o was checked")

    import yoda.cli_models

    monkeypatch.setattr(yoda.cli_models, "load_model", no_load)
    for args, want in cases:
        code, _, err = run(args + (["--model", tiny_model] if args[0] == "upscale" else []), capsys)
        assert code == 2 and want in err and err.count("\n") == 1, (args, err)
    from yoda import _io

    def read_only(folder, name):
        raise PermissionError(13, "Permission denied", os.path.join(folder, f".{name}.abc.tmp"))

    monkeypatch.setattr(_io, "_create_temp", read_only)
    (tmp_path / "exists").mkdir()  # an existing folder was checked only after the model had loaded
    for args in (["upscale", rgb, "-o", str(tmp_path / "ro.png"), "--model", tiny_model],
                 ["upscale", rgb, grey, "-o", str(tmp_path / "newdir"), "--model", tiny_model],
                 ["upscale", rgb, grey, "-o", str(tmp_path / "exists"), "--model", tiny_model]):
        code, _, err = run(args, capsys)
        assert code == 2 and "Permission denied" in err and ".tmp" not in err, err
        assert args[args.index("-o") + 1] in err  # the user's path, not the temporary file
    assert sorted(os.listdir(tmp_path)) == ["afile", "exists", "fifo.csv", "fifo.png", "grey.jpg", "isdir.png",
                                            "link.png", "rgb.png"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISFIFO(os.stat(tmp_path / "fifo.csv").st_mode)


def test_a_full_disk_does_not_take_the_numbers_of_attention_demo_and_figures(tmp_path, tiny_model, images, capsys,
                                                                            monkeypatch):
    """`yoda figures`, `demo` and `attention` printed their numbers (update ratios, regional error, scores: said
    nowhere else, after all the sampling) only once the figure was written: a full disk took them along."""
    import errno

    import yoda.cli
    import yoda.cli_demo
    import yoda.figures

    def no_space(*args):
        raise OSError(errno.ENOSPC, "cannot write the figure: No space left on device")

    rgb, _ = images
    monkeypatch.setattr(yoda.cli, "save_figure", no_space)
    code, out, err = run(["attention", rgb, "-o", str(tmp_path / "att.png"), "--lower-bound", "0.5"], capsys)
    assert code == 2 and out.startswith("pixel update ratio (edge, lower bound 0.5, ") and "->" not in out, out
    assert err == "yoda: error: cannot write the figure: No space left on device\n", err
    monkeypatch.setattr(yoda.cli_demo, "save_figure", no_space)
    code, out, err = run(["demo", "-o", str(tmp_path / "d.png"), "--model", tiny_model, "--lr-size", "16",
                          "--steps", "1", "-q"], capsys)
    assert code == 2 and "| plain |" in out and "| YODA |" in out and "wrote" not in out, out
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    monkeypatch.setattr(yoda.figures, "write_figures", no_space)
    code, out, err = run(["figures", "--images", str(folder), "--model", tiny_model, "--steps", "2", "-q",
                          "-o", str(tmp_path / "figs")], capsys)
    assert code == 2 and "pixel update ratio (mean over 1 image):" in out and "regional error by attention" in out
    assert "No space left on device" in err and not (tmp_path / "figs").exists()  # (the folder it made: removed)
    # and a stdout that cannot be written (`> /dev/full`) does not take the figures: written, then exit code 2
    import io

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.undo()
    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["demo", "-o", str(tmp_path / "d.png"), "--model", tiny_model, "--lr-size", "16", "--steps", "1",
                 "-q"]) == 2 and Image.open(tmp_path / "d.png").size[0] > 0
    assert main(["figures", "--images", str(folder), "--model", tiny_model, "--steps", "2", "-q",
                 "-o", str(tmp_path / "figs")]) == 2 and len(list((tmp_path / "figs").iterdir())) == 3
    assert main(["attention", rgb, "-o", str(tmp_path / "att.png")]) == 2 and (tmp_path / "att.png").exists()
    # the error names stdout: "No space left on device" alone read as the output disk's (the figure was written)
    assert capsys.readouterr().err.endswith("yoda: error: cannot write to stdout: No space left on device\n")


def test_full_disk_with_several_inputs_leaves_no_empty_folder(tmp_path, tiny_model, images, capsys, monkeypatch):
    import errno

    import yoda.cli

    rgb, grey = images

    def no_space(x, path, grey=False, exif=None):
        raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")

    monkeypatch.setattr(yoda.cli, "save_output", no_space)
    out = tmp_path / "new" / "deeper"
    code, _, err = run(["upscale", rgb, grey, "-o", str(out), "--model", tiny_model, "--steps", "1", "-q"], capsys)
    assert code == 2 and f"yoda: error: cannot write {out}" in err and "No space left on device" in err
    assert "[Errno" not in err  # Python's prefix is not the user's business
    assert not (tmp_path / "new").exists()  # both created levels removed again


def test_bad_choice_is_one_line(capsys):
    code, _, err = run(["upscale", "x.png", "-o", "y.png", "--sampler", "foo"], capsys)
    assert code == 2 and err.count("\n") == 1 and "usage" not in err
    assert err.startswith("yoda upscale: error: argument --sampler: invalid choice: 'foo'")
    # --minutes 0 / -1 trained one step and nan the whole run; --T 0 was named as the library's T
    for v in ("0", "-1", "nan"):
        code, _, err = run(["train", "--config", "c.json", "--minutes", v], capsys)
        assert code == 2 and f"argument --minutes: '{v}' must be a number > 0 and <= 1e+08" in err, err
    code, _, err = run(["attention", "x.png", "-o", "y.png", "--T", "0"], capsys)
    assert code == 2 and "argument --T: '0' must be an integer >= 1" in err


def test_library_argument_words_become_options():
    """The library's "leave eta None", "sampler='ddim'" and "steps=" inside a message read as the options; the
    CLI has no spacing option (the model card's); a name that is no option, or train's config keys, stay."""
    one = yoda.cli_parser.one_line
    msg = ValueError("eta applies to sampler='ddim' or 'euler_a' only; leave eta None (or 0) for 'ddpm'")
    assert one(msg) == "--eta applies to --sampler ddim or 'euler_a' only; leave out --eta (or 0) for 'ddpm'"
    msg = ValueError("sigmas applies to the solvers only; sampler='ddim' visits the timesteps of steps= and spacing=")
    assert one(msg) == ("--sigmas applies to the solvers only; --sampler ddim visits the timesteps of --steps and "
                        "the model's spacing")
    assert one(ValueError("T=5 and noise= differ; leave x None")) == "T=5 and noise= differ; leave x None"
    assert one(ValueError("autocast='bf16' is slow here; leave autocast out")) == ("--autocast bf16 is slow here; "
                                                                                   "leave out --autocast")
    from yoda.evaluate import EvalSettings

    got = repr(EvalSettings(steps=50, sampler="ddpm"))  # with tuples inside (lower_bounds=(0.4, 0.6, 0.8))
    assert "(" in got[got.index("(") + 1:] and "sampler='ddpm'" in got
    assert one(ValueError(f"settings must be EvalSettings, got {got}; steps= too")) == (
        f"settings must be EvalSettings, got {got}; --steps too")
    assert one(msg, options=False) == str(msg)


def test_model_with_inf_output_is_a_one_line_error(tmp_path, images, capsys):
    torch.manual_seed(0)
    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                    attn_res=(), res_blocks=1, image_size=16, mid_attn=False, scale=4)
    net = SR3UNet.from_config(cfg)
    with torch.no_grad():
        net.final_conv.block[3].weight.fill_(3e38)  # finite weights, overflowing output
    path = tmp_path / "inf.safetensors"
    save_model(net, path, schedule=Schedule.linear(20, 1e-3, 0.2))
    rgb, _ = images
    out = tmp_path / "o.png"
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", str(path), "--steps", "3", "-q"], capsys)
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "NaN or Inf at step 0" in err and "SR3UNet" in err


def test_a_bug_prints_its_traceback_and_debug_shows_user_errors_too(tmp_path, tiny_model, images, capsys, monkeypatch):
    """User errors are one line (exit 2); anything else is a bug: its traceback and exit code 1. --debug (before
    or after the command) adds the traceback to user errors."""
    import yoda.cli

    rgb, _ = images
    missing = ["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o.png"), "--model", tiny_model]
    code, _, err = run(missing, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    for args in (["--debug"] + missing, missing + ["--debug"]):
        code, _, err = run(args, capsys)
        assert code == 2 and "Traceback" in err and "missing.png" in err
        assert err.splitlines()[-1].startswith("yoda: error:")

    for exc in (TypeError("unsupported operand"), RuntimeError("shape mismatch in a kernel"), KeyError("k")):
        def broken(*a, _exc=exc, **k):
            raise _exc

        monkeypatch.setattr(yoda.cli, "upscale_tensor", broken)
        code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "-q"], capsys)
        assert code == 1 and "Traceback" in err and "in broken" in err and type(exc).__name__ in err, err
        assert "yoda: error:" not in err and not (tmp_path / "o.png").exists()
    # a ValueError from inside the library where no user input is handed over is a bug as well
    monkeypatch.setattr(yoda.cli, "upscale_tensor", lambda *a, **k: (_ for _ in ()).throw(ValueError("internal")))
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "-q"], capsys)
    assert code == 1 and "Traceback" in err


def test_upscale_runs_tiled_over_max_memory(tmp_path, tiny_model, images, capsys):
    """An image whose estimated need is over --max-memory is denoised in windows chosen by the CLI (the largest
    multiple of the model's 8 that fits, overlap a quarter): the very image of the same --tiles given
    explicitly, and not the untiled one. A small image runs untiled under the default budget."""
    rng = np.random.default_rng(1)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(big)  # HR 144 x 160
    common = ["--model", tiny_model, "--steps", "2"]
    outs = {}
    for name, extra in (("auto", ["--max-memory", "16M"]),
                        ("explicit", ["--tiles", "64,16", "--window-batch", "1", "--max-memory", "0"]),
                        ("untiled", ["--max-memory", "0"]), ("quiet", ["--max-memory", "16M", "-q"])):
        code, stdout, err = run(["upscale", str(big), "-o", str(tmp_path / f"{name}.png"), *common, *extra], capsys)
        assert code == 0, err
        # a line per image, which -q hides (it was printed under -q too)
        assert ("windows of 64 (overlap 16: --tiles 64,16), 1 per call" in stdout) == (name == "auto"), stdout
        small = f"yoda: note: {big}: windows of 64 pixels give the model little around each pixel: slower, and " \
                "softer than windows of 128 or more (a larger --max-memory)\n"
        assert (small in err) == (name in ("auto", "quiet")), err
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert outs["auto"].shape == (144, 160, 3)
    assert np.array_equal(outs["auto"], outs["explicit"])
    # a --window-batch above the 3 x 3 windows is what a call takes: 9 (it printed "50 per call")
    code, stdout, err = run(["upscale", str(big), "-o", str(tmp_path / "b.png"), *common, "--max-memory", "16M",
                             "--window-batch", "50"], capsys)
    assert code == 0 and "windows of 64 (overlap 16: --tiles 64,16), 9 per call" in stdout, stdout + err
    assert not np.array_equal(outs["auto"], outs["untiled"])
    # a budget below the smallest window the model takes (8: 8 x 8 x HR_BYTES_PER_PIXEL = 256 KiB) is said to be
    # unmet (it printed "windows of 8 ... 1 per call" alone)
    code, stdout, err = run(["upscale", str(big), "-o", str(tmp_path / "c.png"), *common, "--max-memory", "100K"],
                            capsys)
    assert code == 0 and "windows of 8 (overlap 0: --tiles 8,0), 1 per call" in stdout, stdout + err
    assert f"yoda: note: {big}: one window of 8, the smallest this model takes, needs about 256 KiB, over " \
           "--max-memory 100 KiB\n" in err, err
    assert "the smallest this model takes" not in run(["upscale", str(big), "-o", str(tmp_path / "c.png"), *common,
                                                       "--max-memory", "300K"], capsys)[2]
    rgb, _ = images
    code, stdout, _ = run(["upscale", rgb, "-o", str(tmp_path / "small.png"), *common, "-q"], capsys)
    code0, _, _ = run(["upscale", rgb, "-o", str(tmp_path / "small0.png"), *common, "--max-memory", "0", "-q"], capsys)
    assert code == code0 == 0 and "windows" not in stdout
    assert (tmp_path / "small.png").read_bytes() == (tmp_path / "small0.png").read_bytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_and_autocast_are_named(tmp_path, tiny_model, images, capsys):
    """--device cuda without a GPU did not name --device; --autocast fp16 on the CPU ran 4-6 times slower than
    float32 without a word."""
    rgb, _ = images
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--device", "cuda"],
                       capsys)
    assert code == 2 and err == "yoda: error: --device cuda requested but no CUDA GPU is available\n", err
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--steps", "1",
                        "--autocast", "fp16", "-q"], capsys)
    assert code == 0 and err == ("yoda: note: --autocast fp16 on the CPU is slower than float32 (few CPUs compute in "
                                 "float16); --autocast bf16 or none\n"), err


def test_upscale_window_options_are_checked(tmp_path, tiny_model, images, capsys, no_sampling):
    """Bad --tiles / --window-batch / --max-memory values: one line, exit 2, before any sampling."""
    rgb, _ = images
    for extra, msg in ((["--tiles", "60,8"], "--tiles 60,8: window and overlap must be multiples of 8 (this model's "
                                           "size multiple and scale), e.g. --tiles 56,8 or 64,8"),
                       # the value as typed (100, not 100,24), and a window to use instead
                       (["--tiles", "100"], "--tiles 100: window and overlap must be multiples of 8 (this model's "
                                            "size multiple and scale), e.g. --tiles 96 or 104"),
                       # the overlap typed is kept in the suggestion, rounded, and less than the window (it said
                       # "e.g. --tiles 64" for 64,12, and 128 for 128,30)
                       (["--tiles", "64,12"], "multiples of 8 (this model's size multiple and scale), e.g. --tiles "
                                              "64,16\n"),
                       (["--tiles", "17,15"], "e.g. --tiles 16,8 or 24,16\n"),
                       (["--tiles", "64,64"], "--tiles"),
                       (["--tiles", "a"], "--tiles"), (["--window-batch", "0"], "--window-batch"),
                       (["--max-memory", "lots"], "--max-memory"),
                       # 0.5 (meant as GB?) was 0 bytes, which means no limit
                       (["--max-memory", "0.5"], "'0.5' is 0 bytes, less than any image needs (0 means no limit")):
        code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, *extra], capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (extra, err)
    from yoda.cli_upscale import check_tiles

    for tiles, near in ((12, "16"), (4, "16"), ((12, 20), "16x16"), (28, "24 or 32")):  # at least 16: 8 was suggested
        with pytest.raises(UserError, match=rf"must be multiples of 8 .*, e\.g\. --tiles {near}$"):
            check_tiles(argparse.Namespace(tiles=(tiles, None)), 8, 16)
    from yoda.cli_parser import _bytes_arg

    assert _bytes_arg("1e9") == _bytes_arg("1000000000") == 10**9 and _bytes_arg("1.5E3K") == 1500 * 1024  # was
    # "not a size", where 1000000000 was taken; 1e400 is not a size either (it ended in OverflowError's traceback)
    with pytest.raises(argparse.ArgumentTypeError, match="'1e400' is not a size"):
        _bytes_arg("1e400")


def _torchrun(args, tmp_path, nproc=2):
    """`python -m torch.distributed.run --nproc_per_node nproc -m yoda ARGS` on the CPU (gloo), one thread each."""
    import subprocess
    import tempfile

    # --standalone: the agent's store binds port 0 itself (a port picked here first could be taken before it binds)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "yoda",
           *args]
    with tempfile.TemporaryDirectory() as tmp:  # torchrun's torchelastic_* log folders go there, not into /tmp
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": tmp}
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("maker_fails", [False, True])
def test_skip_existing_waits_for_an_output_another_process_is_making(tmp_path, tiny_model, capsys, monkeypatch,
                                                                     maker_fails):
    """Two `yoda upscale DIR -o OUT --skip-existing` started together did every image twice; then an output that
    another process had claimed (yoda._io.output_claim, held while it makes the file) was left to it, and left
    unmade when that process failed. Now the run does the others first, then waits for the claim to go: made
    there, the output is skipped; left unmade, it is made here. The claim files go with the claims."""
    import contextlib

    from yoda import cli_upscale
    from yoda._io import CLAIM_SUFFIX, output_claim

    rng = np.random.default_rng(4)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / f"im{k}.png")
    common = ["--model", tiny_model, "--steps", "1", "-q", "--skip-existing"]
    other = contextlib.ExitStack()  # another process making im0
    assert other.enter_context(output_claim(out / "im0_x4.png"))
    seen = []

    def sleep(seconds):  # the run polling im0's claim: the other process finishes at the second look
        seen.append(sorted(f.name for f in out.iterdir()))
        if len(seen) == 2:
            if not maker_fails:
                (out / "im0_x4.png").write_bytes(b"the other process's")
            other.close()

    monkeypatch.setattr(cli_upscale.time, "sleep", sleep)
    code, printed, err = run(["upscale", str(src), "-o", str(out), *common], capsys)
    assert code == 0, err
    # -q hides the line per input (it printed this one), not the wait on stderr
    assert "is being made by another process" not in printed
    assert "waiting for another process to finish 1 output(s)" in err
    assert seen == [[".im0_x4.png" + CLAIM_SUFFIX, "im1_x4.png"]] * 2  # im1 first; polled until the claim went
    assert sorted(f.name for f in out.iterdir()) == ["im0_x4.png", "im1_x4.png"]
    if maker_fails:  # made here
        assert "2 written, 0 skipped" in printed and Image.open(out / "im0_x4.png").size == (32, 32)
    else:
        assert "1 written, 1 skipped" in printed and (out / "im0_x4.png").read_bytes() == b"the other process's"
    code, printed, err = run(["upscale", str(src), "-o", str(out), *common], capsys)
    assert code == 0 and "0 written, 2 skipped, 0 failed, of 2 inputs" in printed, err


def test_skip_existing_one_input_waits_for_its_maker(tmp_path, tiny_model, capsys, monkeypatch):
    """One input whose output another process is making: the run waits for it (and makes it, the other having
    failed), instead of an error or a silent skip."""
    import contextlib

    from yoda import cli_upscale
    from yoda._io import output_claim

    src = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src)
    other, looks = contextlib.ExitStack(), []
    assert other.enter_context(output_claim(tmp_path / "sr.png"))
    monkeypatch.setattr(cli_upscale.time, "sleep", lambda s: (looks.append(s), other.close()))
    code, printed, err = run(["upscale", str(src), "-o", str(tmp_path / "sr.png"), "--model", tiny_model,
                              "--steps", "1", "-q", "--skip-existing"], capsys)
    assert code == 0, err
    assert printed.count("is being made by another process: waiting for it") == 1 and looks == [1.0]
    assert Image.open(tmp_path / "sr.png").size == (32, 32)


def test_upscale_of_a_folder_stops_at_a_full_disk(tmp_path, tiny_model, capsys, monkeypatch):
    """A full disk failed each input of a folder in turn, after all its denoising (hours on a large folder, and a
    line per image); now the first write that finds no room ends the run, naming the file."""
    import errno

    import yoda.cli

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / f"{k}.png")
    tried = []

    def full(sr, dst, grey, exif=None):
        tried.append(os.path.basename(dst))
        raise OSError(errno.ENOSPC, f"cannot write {dst}: No space left on device")

    monkeypatch.setattr(yoda.cli, "save_output", full)
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model, "--steps", "1",
                        "-q"], capsys)
    assert code == 2 and tried == ["0_x4.png"] and err.count("\n") == 1, err
    assert "No space left on device" in err and "0_x4.png" in err and not (tmp_path / "out").exists()


def test_upscale_with_attention_takes_the_steps_that_refine_every_pixel(tmp_path, capsys):
    """`yoda upscale --attention edge` with the embedded model ran its default 1 step: YODA's masks never widened
    past A >= 0.4 (at l = 0.6), the other pixels kept the bicubic image, and a sawtooth showed where the refined
    ones began. Without --steps it now takes the fewest steps whose last one refines every pixel (2 at l = 0.6,
    10 at l = 0.1), saying so; given --steps are kept, with a note when they leave pixels unrefined."""
    src = tmp_path / "lr.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
    out = lambda name: str(tmp_path / name)  # noqa: E731
    code, _, err = run(["upscale", str(src), "-o", out("auto.png"), "--attention", "edge", "-q"], capsys)
    assert code == 0 and ("yoda: note: --attention: 2 steps, the fewest whose last step refines every pixel "
                          "whatever the map (at 1, pixels whose attention is below 0.40 keep the bicubic "
                          "image") in err, err
    code, _, err = run(["upscale", str(src), "-o", out("two.png"), "--attention", "edge", "--steps", "2", "-q"], capsys)
    assert code == 0 and err == ""
    assert Image.open(out("auto.png")).tobytes() == Image.open(out("two.png")).tobytes()
    code, _, err = run(["upscale", str(src), "-o", out("one.png"), "--attention", "edge", "--steps", "1", "-q"], capsys)
    assert code == 0 and "at 1 step(s) with --lower-bound 0.6 pixels whose attention is below 0.40 keep the " \
                         "bicubic image" in err and err.endswith("--steps 2 refines every pixel by the end\n"), err
    assert "yoda.sample:" not in err  # the library's warning of it (yoda.UnrefinedWarning): said once, in the CLI's words
    assert Image.open(out("one.png")).tobytes() != Image.open(out("two.png")).tobytes()
    code, _, err = run(["upscale", str(src), "-o", out("l01.png"), "--attention", "edge", "--lower-bound", "0.1",
                        "-q"], capsys)
    assert code == 0 and "--attention: 10 steps" in err
    # many more steps than the model's 1 cost it detail (5 at l = 0.2 etched faces): said; YODA's 2 are not
    assert "; each step beyond the model's own 1 can cost detail, and a higher --lower-bound needs fewer)" in err
    assert "cost detail" not in run(["upscale", str(src), "-o", out("l06.png"), "--attention", "edge", "-q"],
                                    capsys)[2]
    code, _, err = run(["upscale", str(src), "-o", out("plain.png"), "-q"], capsys)
    assert code == 0 and err == ""  # plain: the default 1 step, no note


def test_upscale_removes_the_temporary_files_a_killed_run_left(tmp_path, tiny_model, capsys):
    """A run killed while writing (SIGKILL, a power loss) left .NAME.RANDOM.tmp next to its output for good. The
    next run over those outputs removes the ones untouched for an hour (a write lasts seconds: a younger one may
    be another process's write in progress), of its own outputs only."""
    import time

    from yoda._io import STALE_TEMP_S, _create_temp

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "a.png")
    old, young = (_create_temp(str(out), "a_x4.png")[0] for _ in range(2))
    other = _create_temp(str(out), "b_x4.png")[0]  # not an output of this run
    long_ago = time.time() - STALE_TEMP_S - 60
    for p in (old, other):
        os.utime(p, (long_ago, long_ago))
    code, _, err = run(["upscale", str(src), "-o", str(out), "--model", tiny_model, "--steps", "1", "-q"], capsys)
    assert code == 0 and err == "yoda: note: removed 1 temporary file(s) a killed run left next to the outputs\n"
    assert sorted(os.listdir(out)) == sorted(["a_x4.png", os.path.basename(young), os.path.basename(other)])
    # the claim file of a --skip-existing run killed so (SIGKILL) went only with a later --skip-existing run; one
    # another process holds stays
    from yoda._io import claim_path, output_claim

    open(claim_path(out / "a_x4.png"), "w").close()
    (src / "b.png").write_bytes((src / "a.png").read_bytes())
    with output_claim(out / "b_x4.png") as mine:
        assert mine
        code, _, err = run(["upscale", str(src), "-o", str(out), "--model", tiny_model, "--steps", "1", "-q"],
                           capsys)
        # a's claim, and b_x4.png's old temporary file (b_x4.png is an output now)
        assert code == 0 and err == "yoda: note: removed 2 temporary file(s) a killed run left next to the outputs\n"
        assert os.path.exists(claim_path(out / "b_x4.png")) and not os.path.exists(claim_path(out / "a_x4.png"))
        assert not os.path.exists(other)
    # a link in a claim's place is never taken, nor counted as removed (every run said "removed 1")
    from yoda._io import remove_stale_temps

    os.symlink(tmp_path / "nowhere", claim_path(out / "c_x4.png"))
    assert remove_stale_temps([out / "c_x4.png"]) == 0 and os.path.islink(claim_path(out / "c_x4.png"))


def test_output_claim_is_one_holders_and_rechecked_after_a_handover(tmp_path):
    from yoda._io import CLAIM_SUFFIX, output_claim

    path = tmp_path / "sr.png"
    with output_claim(path) as first:
        with output_claim(path) as second:
            assert first and not second
        assert (tmp_path / (".sr.png" + CLAIM_SUFFIX)).exists()  # the refused one leaves the holder's file
    assert list(tmp_path.iterdir()) == []
    (tmp_path / (".sr.png" + CLAIM_SUFFIX)).write_bytes(b"")  # a killed process's claim file: taken over
    with output_claim(path) as mine:
        assert mine
    assert list(tmp_path.iterdir()) == []
    (tmp_path / (".sr.png" + CLAIM_SUFFIX)).symlink_to(tmp_path / "elsewhere")  # a link planted in its place
    with output_claim(path) as mine:
        assert mine  # unclaimed, as where flock is missing
    assert not (tmp_path / "elsewhere").exists()  # not followed: nothing made where it points


def test_output_claim_without_flock_leaves_no_claim_file(tmp_path, monkeypatch):
    """Where nothing locks (Windows, some NFS) the claim file was made, closed and left beside every output of
    --skip-existing (.sr.png.yoda-claim, which Windows shows): it is removed, and the output is unclaimed."""
    import yoda._io as io

    monkeypatch.setattr(io, "_flock_now", lambda fd: None)
    with io.output_claim(tmp_path / "sr.png") as mine:
        assert mine and list(tmp_path.iterdir()) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="flock: claims are not locked on Windows")
def test_output_claim_handed_over_is_one_holders(tmp_path, monkeypatch):
    """B opens the claim file while A holds it, A finishes (unlinks it) before B's lock: B's lock is on a deleted
    file, which claims nothing (C would claim too, and B's unlink would then remove C's file); B must take the
    file now at the path. A name too long for its claim file's is claimed under a hash of it."""
    import contextlib
    import fcntl

    from yoda._io import claim_path, output_claim

    path, a = tmp_path / "sr.png", contextlib.ExitStack()
    assert a.enter_context(output_claim(path))
    real, calls = fcntl.flock, []

    def flock_after_a_ends(fd, op):
        if not calls:
            a.close()  # A's unlink and close fall between B's open and B's lock
        calls.append(fd)
        return real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_ends)
    with output_claim(path) as b:
        assert b and len(calls) == 2  # the first lock was on A's deleted file: tried again
        with output_claim(path) as c:
            assert not c
        assert os.path.exists(claim_path(path))
    assert list(tmp_path.iterdir()) == []
    long = tmp_path / ("a" * 246 + ".png")  # a valid name; its claim file's would be 258 bytes
    assert len(os.path.basename(claim_path(long))) < 255
    with output_claim(long) as first, output_claim(long) as second:
        assert first and not second


def test_upscale_folder_sharded_under_torchrun(tmp_path, tiny_model, capsys):
    """`torchrun -m yoda upscale DIR -o OUT` with 2 gloo ranks on the CPU: the sorted inputs are sharded over the
    ranks and the outputs are byte-identical to a single-process run; a bad image is reported by its rank, the
    other inputs are still written, and the run exits non-zero; --skip-existing leaves existing outputs alone."""
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    src.mkdir()
    for k, (h, w) in enumerate(((10, 13), (8, 8), (12, 9))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"im{k}.png")
    common = ["--model", tiny_model, "--steps", "2", "-q"]
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "single"), *common], capsys)
    assert code == 0, err
    p = _torchrun(["upscale", str(src), "-o", str(tmp_path / "multi"), *common], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(f.name for f in (tmp_path / "single").iterdir())
    assert names == ["im0_x4.png", "im1_x4.png", "im2_x4.png"]
    assert sorted(f.name for f in (tmp_path / "multi").iterdir()) == names
    for n in names:
        assert (tmp_path / "single" / n).read_bytes() == (tmp_path / "multi" / n).read_bytes(), n
    # --skip-existing: nothing is recomputed (an output made unreadable by sampling would show)
    before = {n: (tmp_path / "multi" / n).stat().st_mtime_ns for n in names}
    code, out, _ = run(["upscale", str(src), "-o", str(tmp_path / "multi"), *common, "--skip-existing"], capsys)
    assert code == 0 and "0 written, 3 skipped, 0 failed, of 3 inputs" in out
    assert before == {n: (tmp_path / "multi" / n).stat().st_mtime_ns for n in names}
    # a bad image (sorted first: rank 0 gets it and im1, rank 1 gets im0 and im2)
    (src / "a_bad.png").write_bytes(b"not a png")
    p = _torchrun(["upscale", str(src), "-o", str(tmp_path / "bad"), *common], tmp_path)
    assert p.returncode != 0
    assert "rank 0" in p.stderr and "a_bad.png" in p.stderr
    assert sorted(f.name for f in (tmp_path / "bad").iterdir()) == names
    for n in names:
        assert (tmp_path / "single" / n).read_bytes() == (tmp_path / "bad" / n).read_bytes(), n
    # every input failing: the folders the run created are removed again, as one process does (they were left)
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    for n in ("x.png", "y.png"):
        (only_bad / n).write_bytes(b"not a png")
    p = _torchrun(["upscale", str(only_bad), "-o", str(tmp_path / "none" / "deeper") + "/", *common], tmp_path)
    assert p.returncode != 0 and "x.png" in p.stderr and "y.png" in p.stderr
    assert not (tmp_path / "none").exists()


def test_a_folder_run_has_a_bar_a_closing_count_and_survives_a_closed_pipe(tmp_path, tiny_model, capsys,
                                                                             monkeypatch):
    """A folder run showed no progress over its inputs and ended on the last image's line; -q hid only the bars
    (500 lines for 500 images); Ctrl-C said nothing of what was done; and `yoda upscale DIR -o OUT | head -1`
    reported every image after the first as failed ("Broken pipe", exit 2), though each was written."""
    import subprocess

    import yoda.cli as cli

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(src / f"im{k}.png")
    common = ["--model", tiny_model, "--steps", "1"]
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "a"), *common, "-q"], capsys)
    assert code == 0 and out.startswith("3 written, 0 skipped, 0 failed, of 3 inputs in ") and out.count("\n") == 1
    monkeypatch.setattr(cli, "bars", lambda a: True)  # a terminal: the bar over the inputs, on stderr
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "a"), *common, "--skip-existing"], capsys)
    assert code == 0 and out.count("exists, skipped (--skip-existing)") == 3 and "0 written, 3 skipped" in out
    os.utime(src / "im2.png", (time.time() + 60,) * 2)  # edited after its output was made: say it is stale
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "a"), *common, "--skip-existing"], capsys)
    assert code == 0 and out.count("exists, skipped (--skip-existing)") == 2 and "0 written, 3 skipped" in out
    assert out.count(" exists but is older than its input (remove it to make it again), skipped (--skip-existing)") == 1
    assert f"{src / 'im2.png'} -> {tmp_path / 'a' / 'im2_x4.png'} exists but is older" in out
    assert "yoda upscale: 100%" in err and "3/3" in err
    real = cli._upscale_one

    def ctrl_c_at_the_second(a, run_, arr, grey, src_, dst, tally, exif=None):
        if "im1" in src_:
            raise KeyboardInterrupt
        return real(a, run_, arr, grey, src_, dst, tally, exif)

    monkeypatch.setattr(cli, "_upscale_one", ctrl_c_at_the_second)
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "b"), *common, "-q"], capsys)
    assert code == 130 and err.endswith("yoda: interrupted\n")
    assert "1 written, 0 skipped, 0 failed, of 3 inputs in " in out
    assert out.rstrip().endswith("s; a rerun with --skip-existing makes the rest")
    # stopped after the second image was written (in the heap's release after it): it counts as written and done;
    # it counted as written, not done ("2 written, -1 skipped")
    monkeypatch.setattr(cli, "_upscale_one", real)
    monkeypatch.setattr(cli, "tune_malloc", lambda: True)
    calls = []

    def stop_in_the_second_release():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "release_heap", stop_in_the_second_release)
    code = cli.main(["upscale", str(src), "-o", str(tmp_path / "b1"), *common, "-q"], program=True)  # (malloc: stub)
    out, err = capsys.readouterr()
    assert code == 130 and err.endswith("yoda: interrupted\n")
    assert "2 written, 0 skipped, 0 failed, of 3 inputs in " in out and len(os.listdir(tmp_path / "b1")) == 2

    def fail_in_the_second_release():  # an error after the write: failed (as the error line says), not written
        calls.append(1)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")

    calls.clear()
    monkeypatch.setattr(cli, "release_heap", fail_in_the_second_release)
    code = cli.main(["upscale", str(src), "-o", str(tmp_path / "b4"), *common, "-q"], program=True)
    out, err = capsys.readouterr()
    assert code == 2 and "2 written, 0 skipped, 1 failed, of 3 inputs in " in out and "1 of 3 inputs failed" in err
    # stopped in the first input (a slow first image): the count and the hint all the same
    monkeypatch.setattr(cli, "_upscale_one", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "b2"), *common, "-q"], capsys)
    assert code == 130 and err.endswith("yoda: interrupted\n")
    assert "0 written, 0 skipped, 0 failed, of 3 inputs in " in out
    assert out.rstrip().endswith("s; a rerun with --skip-existing makes the rest")
    # Python <= 3.11 wraps a Ctrl-C (or SIGTERM) that lands while torch's import defines a class in a RuntimeError
    # ("Error calling __set_name__"): it was "internal error (a bug in yoda)", exit code 1
    for stop, code_, said in ((KeyboardInterrupt(), 130, "yoda: interrupted\n"),
                              (Terminated(143), 143, "yoda: terminated (SIGTERM)\n")):
        def wrapped(*a, stop=stop):
            try:
                raise stop
            except BaseException as e:
                raise RuntimeError("Error calling __set_name__ on 'cached_property' instance") from e

        monkeypatch.setattr(cli, "_upscale_one", wrapped)
        code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "b3"), *common, "-q"], capsys)
        assert code == code_ and err.endswith(said) and "internal error" not in err and "Traceback" not in err, err
        assert "0 written, 0 skipped, 0 failed, of 3 inputs in " in out  # the stopped input is not a failed one
    # a reader that went away (its end of the pipe closed before the first line): the run writes every image
    read_end, write_end = os.pipe()
    os.close(read_end)
    p = subprocess.run([sys.executable, "-m", "yoda", "upscale", str(src), "-o", str(tmp_path / "c"), *common],
                       stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(write_end)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert sorted(os.listdir(tmp_path / "c")) == ["im0_x4.png", "im1_x4.png", "im2_x4.png"]


def test_clashes_links_and_left_out_entries_are_all_named(tmp_path, tiny_model, capsys):
    """Only the first pair of inputs with one stem was named (three pairs took three runs); a link to an image of
    the folder was dropped without a word; a broken link was said to be left out for its suffix, and subfolders
    were lost in a long list of other files."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "a.jpg", "b.png", "b.bmp", "c.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / name)
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", tiny_model, "-q"], capsys)
    lines = err.splitlines()  # each input of a pair in its own line; c.png made
    assert code == 2 and len(lines) == 5 and lines[4] == "yoda: error: 4 of 5 inputs failed (see the lines above)"
    for line, (one, other) in zip(lines, (("a.jpg", "a.png"), ("a.png", "a.jpg"), ("b.bmp", "b.png"), ("b.png", "b.bmp"))):
        assert f"{src / one} and {src / other} have the same file name stem" in line, err
    assert all(x.endswith("; rename one of them") for x in lines[:4]) and os.listdir(tmp_path / "o") == ["c_x4.png"]
    for name in ("a.jpg", "b.bmp"):
        (src / name).unlink()
    os.symlink(src / "c.png", src / "link.png")
    os.link(src / "c.png", src / "hard.png")  # was upscaled twice
    os.symlink(src / "gone.png", src / "broken.png")
    for k in range(6):
        (src / f"n{k}.txt").write_text("not an image")
    (src / "z_sub").mkdir()
    os.mkfifo(src / "fifo.png")  # named like an image, but no file: it was said to be left out for its suffix
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", tiny_model, "-q"], capsys)
    assert code == 0 and "3 written, 0 skipped, 0 failed, of 3 inputs" in out, err
    assert f"upscaled once, under the name met first (its output is named after it): {src / 'hard.png'} (as "\
           f"{src / 'c.png'}), {src / 'link.png'} (as {src / 'c.png'})" in err
    assert "left out z_sub/, broken.png (a broken link), fifo.png (not a regular file), n0.txt, " in err, err
    assert "(9 in all)" in err


def test_upscale_folder_goes_on_after_an_out_of_memory_input_and_leaves_hidden_files(tmp_path, tiny_model, capsys,
                                                                                      monkeypatch):
    """An input that ran out of memory ended the whole folder run (run_items caught only UserError and OSError),
    though the README says the other inputs are written; macOS's AppleDouble ._name files (a copied folder) failed
    as unreadable images and .hidden.png was upscaled into a hidden output."""
    import yoda.cli as cli

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a_big.png", "b.png", ".hidden.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / name)
    (src / "._b.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    real = cli._upscale_one

    def upscale_one(a, run_, arr, grey, src_, dst, tally, exif=None):
        if "a_big" in src_:
            raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 4294967296 bytes.")
        return real(a, run_, arr, grey, src_, dst, tally, exif)

    monkeypatch.setattr(cli, "_upscale_one", upscale_one)
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model, "--steps", "1",
                        "-q"], capsys)
    assert code == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["b_x4.png"]
    assert (f"yoda: error: {src / 'a_big.png'}: out of memory (DefaultCPUAllocator: not enough memory: you tried to "
            "allocate 4294967296 bytes.); a lower --max-memory, or smaller --tiles, denoises in smaller windows\n"
            ) in err, err  # the input named: it was not, in a folder of hundreds
    assert "left out ._b.png, .hidden.png (" in err and "cannot read" not in err, err


def test_rank_and_world_are_checked_and_a_missing_host_is_waited_for_in_python(monkeypatch, capsys):
    """RANK=1 alone upscaled every input and said "5 written ... of 4 inputs"; a rank whose store host (rank 0) was
    not up waited in TCPStore's C++ connect for 5 minutes, deaf to Ctrl-C and SIGTERM; a rank with one input of a
    sharded run printed no closing line."""
    import socket

    from yoda import cli_upscale, torchrun
    from yoda.errors import UserError
    from yoda.torchrun import dist_env

    for env, ok in (({"RANK": "1"}, False), ({"RANK": "3", "WORLD_SIZE": "2"}, False),
                    ({"RANK": "0", "WORLD_SIZE": "0"}, False), ({"RANK": "1", "WORLD_SIZE": "2"}, True)):
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        if ok:
            assert dist_env() == (1, 2)
            continue
        rank, world = env["RANK"], env.get("WORLD_SIZE", "1")
        with pytest.raises(UserError, match=rf"^RANK={rank} and WORLD_SIZE={world} do not go together: RANK must "
                                            r"be in \[0, WORLD_SIZE\) \(torchrun sets both\)$"):
            dist_env()
    with socket.socket() as s:  # a port nobody listens at (bound, not listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        monkeypatch.setattr(torchrun, "HOST_WAIT_S", 0.3)
        with pytest.raises(UserError, match=rf"^nothing answers at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} after "
                                            r"0.3 s: is rank 0 running \(or torchrun's agent\)\?$"):
            torchrun.wait_for_host("127.0.0.1", port)
        s.listen()
        torchrun.wait_for_host("127.0.0.1", port)  # answers: no wait
    # a rank that does not host the store waits for it so, before TCPStore's connect
    waited = []
    monkeypatch.setattr(torchrun, "wait_for_host", lambda *a: waited.append(a) or (_ for _ in ()).throw(
        UserError("stop here")))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    import torch.distributed as dist

    monkeypatch.setattr(dist, "TCPStore", lambda *a, **k: (_ for _ in ()).throw(UserError("TCPStore reached")))
    with pytest.raises(UserError, match="^stop here$"):
        torchrun.meeting_store(1, 2, "yoda-upscale")
    assert waited == [("127.0.0.1", 29999)]
    tally = cli_upscale.Tally(1, bar=False, quiet=True, where="rank 1: ", several=True)
    with tally.one():
        tally.written += 1
    tally.close()
    assert capsys.readouterr().out.startswith("rank 1: 1 written, 0 skipped, 0 failed, of 1 input in ")
    cli_upscale.Tally(1, bar=False, quiet=True).close()  # one input of one process: no closing line
    assert capsys.readouterr().out == ""


def test_ranks_meet_in_the_store_and_a_signal_ends_the_wait(tmp_path, monkeypatch, capsys, lone_rank_0):
    """The ranks met in gloo collectives, which hold a process in C++: a rank killed mid-run made the others'
    final all_reduce fail ("a bug in yoda"), and Ctrl-C or SIGTERM could not end a rank waiting for the others
    (torchrun killed it 30 s later). They now meet in the store, polled: each rank says how many inputs failed
    and waits until all have (every rank then exits 2 if any input failed anywhere, none before the others
    finish); a signal ends the wait at once."""
    import threading
    import time

    from yoda import cli_upscale, torchrun
    from yoda.errors import UserError

    class Store:  # torchrun's store, shared by two ranks run as threads here
        def __init__(self):
            self.d, self.lock = {}, threading.Lock()

        def set(self, k, v):
            with self.lock:
                self.d[k] = str(v).encode()
                events.append(k)

        def get(self, k):
            return self.d[k]

        def check(self, keys):
            with self.lock:
                return all(k in self.d for k in keys)

    store, order, codes, events = Store(), [], {}, []
    monkeypatch.setattr(cli_upscale, "meeting_store", lambda rank, world, purpose: (store, False))  # the agent's
    monkeypatch.setattr(torchrun, "MEET_POLL_S", 0.01)
    monkeypatch.setattr(cli_upscale, "EXIT_GRACE_S", 0.0)
    slow = threading.Event()

    def work(item):
        if item == "slow":
            slow.wait(5)
        if item == "bad":
            raise UserError("bad input")
        order.append(item)

    def rank(r):
        def close():  # rank 1's closing line comes late: rank 0 must still exit after it
            time.sleep(0.3 * r)
            events.append(f"close/{r}")

        codes[r] = cli_upscale.run_sharded(["bad", "fast", "slow", "ok"], r, 2, work, str, close=close)
        events.append(f"return/{r}")

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    threads[1].join(0.3)
    # rank 1 ("fast", "ok") is done and waits for rank 0 ("bad", "slow"), which still works
    assert threads[1].is_alive() and sorted(order) == ["fast", "ok"]
    slow.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    # rank 0 says it and exits 2, the other 0: torchrun stops the ranks still running when one exits with an error,
    # and rank 1's exit 2 stopped rank 0 before its closing line (or made it "terminated (SIGTERM)")
    assert codes == {0: 2, 1: 0} and sorted(order) == ["fast", "ok", "slow"]
    # and rank 0 exits last: every rank's closing line comes before it leaves, and rank 0 waits for them all, its
    # store hosted or not (under torchrun's agent store a finished rank 1 was stopped as "terminated (SIGTERM)")
    at = {e: i for i, e in enumerate(events)}
    assert at["close/0"] < at["left/0"] and at["close/1"] < at["left/1"] < at["return/0"]
    assert store.get("failed/0") == b"1" and store.get("failed/1") == b"0"
    # rank 0 says it once, as one process does: how many of all the inputs failed
    assert capsys.readouterr().err.count("yoda: error: 1 of 4 inputs failed (see the lines above)\n") == 1
    # a rank waiting for one that never comes (rank 0 hosting the store, as without torchrun) ends on SIGTERM
    lone_rank_0("run_sharded([], 0, 2, lambda item: None, str)", 2, 1.0,
                prelude="from yoda.cli_upscale import run_sharded\n")


def test_each_ranks_closing_line_names_it(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank printed the same `yoda: terminated (SIGTERM)` or full-disk error, and the notes
    of the inputs (which every rank reads) once per rank. The closing lines name the rank; notes come from rank 0."""
    import signal

    import yoda.cli
    from yoda.cli_models import note

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, signum, line in (("1", signal.SIGTERM, "yoda: rank 1: terminated (SIGTERM)\n"),
                               ("0", signal.SIGINT, "yoda: rank 0: interrupted\n")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: signal.raise_signal(signum))
        assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[::2] == (
            143 if signum == signal.SIGTERM else 130, line)
        note("the same for every rank")
        assert capsys.readouterr().err == ("yoda: note: the same for every rank\n" if rank == "0" else "")
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: (_ for _ in ()).throw(OSError(28, "No space left")))
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[::2] == (
        2, "yoda: error: rank 0: No space left\n")
    monkeypatch.delenv("WORLD_SIZE")  # one process: no prefix
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[::2] == (
        2, "yoda: error: No space left\n")


def test_world_size_alone_is_one_line(tmp_path, tiny_model, capsys, monkeypatch):
    """WORLD_SIZE set without torchrun's MASTER_ADDR gave an internal error with a traceback (and, for a while, a
    closing count of no work done above it). A rank above 0 prints its line per image (only its bars are off)."""
    from yoda import cli_upscale

    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    inputs = []
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
        inputs.append(str(tmp_path / name))
    code, out, err = run(["upscale", *inputs, "-o", str(tmp_path / "o"), "--model", tiny_model, "-q"], capsys)
    assert code == 2 and out == "" and err == (
        "yoda: error: rank 0: WORLD_SIZE=2, but MASTER_ADDR / MASTER_PORT are not set, so the ranks cannot meet; run "
        "under torchrun, or unset WORLD_SIZE\n"), err

    class Store(DictStore):  # rank 0 done already, with no failure, having listed what rank 1 lists
        def set(self, k, v):
            super().set(k, v)
            if k == "listed/1":
                self["listed/0"] = self[k]

    monkeypatch.setattr(cli_upscale, "meeting_store", lambda rank, world, purpose: (Store({"failed/0": b"0"}), False))
    monkeypatch.setenv("RANK", "1")
    code, out, err = run(["upscale", *inputs, "-o", str(tmp_path / "o"), "--model", tiny_model], capsys)
    assert code == 0, err
    assert out.count(" -> ") == 2 and "b.png -> " in out and "d.png -> " in out  # rank 1's share: b and d
    assert "rank 1: 2 written, 0 skipped, 0 failed, of 2 inputs in " in out
    assert all(line.startswith("rank 1: ") for line in out.splitlines()), out
    # on a terminal, where rank 0 draws its bar, rank 1 says only its closing line
    monkeypatch.setattr(cli_upscale, "meeting_store", lambda rank, world, purpose: (Store({"failed/0": b"0"}), False))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(["upscale", *inputs, "-o", str(tmp_path / "o2"), "--model", tiny_model], capsys)
    assert code == 0 and " -> " not in out and "rank 1: 2 written, 0 skipped, 0 failed, of 2 inputs in " in out, out


def test_say_survives_a_closed_stdout_without_a_file_descriptor(monkeypatch):
    """A stdout that is not a file (a wrapper) raised io.UnsupportedOperation from the redirect to os.devnull, an
    OSError: the image whose line it was counted as failed although it was written."""
    import io

    from yoda.console import say

    class Gone(io.TextIOBase):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    say("a line nobody reads")
    assert sys.stdout.name == os.devnull
    say("and the next one")
    sys.stdout.close()


def test_streams_nobody_reads_end_the_lines_not_the_work(tmp_path, tiny_model, monkeypatch):
    """`yoda upscale DIR -o OUT 2>&1 | head -1` stopped at its first error line (the handler's own line raised
    again): the later images were never written; `yoda plot ... | head -0` and the other commands exited 2 ("Broken
    pipe") after writing their files; argparse's --help / --version raised a traceback on Debian's Python."""
    import errno
    import io
    import subprocess

    class Gone(io.TextIOBase):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    src = tmp_path / "in"
    src.mkdir()
    for k in (1, 2, 4):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(src / f"{k}.png")
    (src / "3.png").write_bytes(b"junk")
    monkeypatch.setattr(sys, "stdout", Gone())
    monkeypatch.setattr(sys, "stderr", Gone())
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", tiny_model, "--steps", "1"]) == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["1_x4.png", "2_x4.png", "4_x4.png"]
    assert sys.stdout.name == sys.stderr.name == os.devnull  # (no file descriptor: replaced)
    for stream in ("stdout", "stderr"):  # a reader that goes away halfway
        monkeypatch.setattr(sys, stream, Gone())
    assert main(["attention", str(src / "1.png"), "-o", str(tmp_path / "a.png"), "--attention", "edge"]) == 0
    assert (tmp_path / "a.png").is_file()

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    # a result said only on stdout (attention's ratio; figures' and demo's tables) cannot go to a full disk unsaid
    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["attention", str(src / "1.png"), "-o", str(tmp_path / "b.png"), "--attention", "edge"]) == 2
    monkeypatch.setattr(sys, "stdout", Gone())
    assert main(["--version"]) == 0 and sys.stdout.name == os.devnull
    monkeypatch.setattr(sys, "stderr", Gone())
    assert main(["upscale", "--no-such-option"]) == 2 and sys.stderr.name == os.devnull
    # the real descriptors: a pipe whose reader is gone, in a process of its own
    r, w = os.pipe()
    os.close(r)
    try:
        for argv, stream in ((["--version"], "stdout"), (["upscale", "--help"], "stdout"), (["upscale"], "stderr")):
            other = "stderr" if stream == "stdout" else "stdout"
            p = subprocess.run([sys.executable, "-m", "yoda", *argv], stdin=subprocess.DEVNULL,
                               **{stream: w, other: subprocess.PIPE})
            assert p.returncode == (0 if stream == "stdout" else 2) and getattr(p, other) == b"", (argv, p)
    finally:
        os.close(w)


def test_a_tuned_run_returns_the_heap_after_each_image(tmp_path, tiny_model, monkeypatch, capsys):
    """With malloc's mmap off (tune_malloc), the blocks an image leaves free stay in the heap: a folder of six
    1024² / 600x440 LRs peaked at 2.51 GiB against one image's 2.17. release_heap runs after each image (2.41)."""
    import yoda.cli as cli

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(src / f"im{k}.png")
    calls = []
    monkeypatch.setattr(cli, "release_heap", lambda: calls.append(1))
    tunes = []
    for tuned, want in ((True, 3), (False, 0)):
        calls.clear()
        monkeypatch.setattr(cli, "tune_malloc", lambda tuned=tuned: tunes.append(1) or tuned)
        code = main(["upscale", str(src), "-o", str(tmp_path / f"out{tuned}"), "--model", tiny_model, "--steps",
                     "1", "-q"], program=True)
        assert code == 0 and len(calls) == want and len(os.listdir(tmp_path / f"out{tuned}")) == 3
    # main() called by another program leaves its malloc alone (mallopt's settings cannot be undone): it stayed
    # tuned for the rest of that process
    tunes.clear()
    assert run(["upscale", str(src / "im0.png"), "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--steps", "1",
                "-q"], capsys)[0] == 0 and tunes == []
    import yoda.__main__ as entry

    monkeypatch.setattr(entry.gc, "freeze", lambda: None)  # (the program's exit: not this test process's)
    monkeypatch.setattr(entry, "passive_openmp", lambda: None)  # (nor its environment)
    monkeypatch.setattr(sys, "argv", ["yoda", "upscale", str(src / "im1.png"), "-o", str(tmp_path / "p.png"),
                                      "--model", tiny_model, "--steps", "1", "-q"])
    assert entry.run() == 0 and tunes == [1]  # the console script and python -m yoda: the program's own


def test_say_takes_windows_closed_pipe_and_raises_other_errors(monkeypatch):
    """On Windows a closed pipe raises OSError(EINVAL), not BrokenPipeError (cpython#79935): `yoda upscale | head`
    counted every later image as failed there. A stdout on a full disk ends the lines as a closed pipe does (it
    stopped a folder at its first image); any other OSError still raises."""
    import errno
    import io

    from yoda.console import say

    class Gone(io.TextIOBase):
        def __init__(self, err):
            self.err = err

        def write(self, s):
            raise OSError(self.err, os.strerror(self.err))

    monkeypatch.setattr(sys, "stdout", Gone(errno.EINVAL))
    with pytest.raises(OSError):  # EINVAL is a closed pipe on Windows only
        say("a line")
    monkeypatch.setattr(sys, "platform", "win32")
    say("a line nobody reads")
    assert sys.stdout.name == os.devnull
    sys.stdout.close()
    monkeypatch.setattr(sys, "stdout", Gone(errno.EACCES))
    with pytest.raises(OSError, match="Permission denied"):
        say("a line")


def test_file_names_with_terminal_escapes_are_shown_not_obeyed(tmp_path, tiny_model, capsys):
    """A file named with escape sequences (one that sets the terminal's title and erases the line) was printed
    raw in `src -> dst` and in error lines: the terminal obeyed it. Control characters are escaped now."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a\x1b]0;owned\x07\x1b[2K.png")
    (folder / "b\x1b[31m.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / os.fsdecode(b"c\xff.png"))  # not UTF-8
    code, out, err = run(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", tiny_model, "--steps",
                          "1"], capsys)  # not -q: the line per image is what is looked at
    assert code == 2 and "\x1b" not in out and "\x1b" not in err and "\x07" not in out
    assert "a\\x1b]0;owned\\x07\\x1b[2K.png -> " in out
    assert "c\\xff.png -> " in out  # the byte, as ls -b shows it (it was \\udcff)
    assert "b\\x1b[31m.png: not an image in a format yoda reads" in err
    assert (tmp_path / "out" / "a\x1b]0;owned\x07\x1b[2K_x4.png").exists()  # the file itself keeps its name


def test_inputs_that_would_write_one_output_are_refused(tmp_path, tiny_model, capsys, monkeypatch):
    """Two inputs whose outputs would have one name are refused before any work; on a file system that ignores
    letter case (macOS' and Windows' defaults) also a/Img.png and b/img.png, one file there (the second upscale
    silently replaced the first), while a case-sensitive one (Linux) keeps both."""
    import yoda.cli_upscale as U

    assert not U.case_insensitive(tmp_path / "not" / "made")  # this machine's tmp: case-sensitive
    for d, name in (("a", "x.png"), ("b", "x.png"), ("a", "Img.png"), ("b", "img.png")):
        (tmp_path / d).mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / d / name)

    def upscale(name_a, name_b, out):
        return run(["upscale", str(tmp_path / "a" / name_a), str(tmp_path / "b" / name_b), "-o", str(tmp_path / out),
                    "--model", tiny_model, "--steps", "1", "-q"], capsys)

    code, out, err = upscale("x.png", "x.png", "o1")
    assert code == 2 and out.startswith("0 written, 0 skipped, 2 failed, of 2 inputs") and err.count("\n") == 3, err
    assert "a/x.png and " in err and "b/x.png have the same file name stem: both would be written to " in err
    assert not (tmp_path / "o1").exists()
    # one file met twice (in a named folder and named itself) is one input, not two with one stem
    code, out, err = run(["upscale", str(tmp_path / "a"), str(tmp_path / "a" / "x.png"), "-o", str(tmp_path / "o4"),
                          "--model", tiny_model, "--steps", "1", "-q"], capsys)
    assert code == 0 and sorted(os.listdir(tmp_path / "o4")) == ["Img_x4.png", "x_x4.png"], err
    code, out, err = upscale("Img.png", "img.png", "o2")
    assert code == 0 and sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["Img_x4.png", "img_x4.png"], err
    monkeypatch.setattr(U, "case_insensitive", lambda folder: True)
    code, out, err = upscale("Img.png", "img.png", "o3")
    assert code == 2 and "b/img.png have the same file name stem (letter case, and an accent's encoding, aside)" in err
    assert not (tmp_path / "o3").exists()
    # macOS' file systems also take an accented letter composed (NFC) and decomposed (NFD) as one name
    for d, name in (("a", "caf\u00e9.png"), ("b", "cafe\u0301.png")):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / d / name)
    code, out, err = upscale("caf\u00e9.png", "cafe\u0301.png", "o5")
    assert code == 2 and "have the same file name stem (letter case, and an accent's encoding, aside)" in err, err
    assert not (tmp_path / "o5").exists()


def test_every_command_runs_under_sigterm_exits(tmp_path, monkeypatch, capsys):
    """SIGTERM ended a command at once (its temporary file and empty output folder stayed): every command now
    runs with SIGTERM raising SystemExit(143) (yoda.errors.sigterm_exits), as Ctrl-C raises KeyboardInterrupt."""
    import signal

    import yoda.cli

    seen = []
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: seen.append(signal.getsignal(signal.SIGTERM)) or 0)
    before = signal.getsignal(signal.SIGTERM)
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[0] == 0
    assert seen[0].__qualname__ == "sigterm_exits.<locals>.stop" and signal.getsignal(signal.SIGTERM) == before
    # it ended without a word (exit 143); it is said as Ctrl-C is
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: signal.raise_signal(signal.SIGTERM))
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[::2] == (143, "yoda: terminated "
                                                                                            "(SIGTERM)\n")

    # Python drops an exception raised in a weakref / import-lock callback ("Exception ignored in"): a SIGTERM
    # while `yoda train` started up was lost, and the run trained to its end and exited 0. Lost, it still stops
    # training before its first step, and any command exits 143.
    def lost():  # the handler ran, its Terminated went nowhere
        try:
            signal.raise_signal(signal.SIGTERM)
        except SystemExit:
            pass

    from yoda.training.stopping import stop_on_interrupt

    steps = []

    def starts():  # as Trainer.run starts
        for sig, handler in stop_on_interrupt()[1].items():
            signal.signal(sig, handler)
        steps.append(1)

    def train(a):
        lost()
        starts()
        return 0

    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", train)
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[::2] == (143, "yoda: terminated "
                                                                                            "(SIGTERM)\n")
    assert steps == [] and signal.getsignal(signal.SIGTERM) == before
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: lost() or 0)
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[::2] == (143, "yoda: terminated "
                                                                                            "(SIGTERM)\n")
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: 0)  # each one once: the next run is not stopped
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[0] == 0
    # yoda train enters sigterm_exits twice (cli.main, train_main): one lost between them was forgotten
    from yoda.errors import sigterm_exits

    def nested(a):
        lost()
        with sigterm_exits():
            starts()
            return 0

    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", nested)
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[0] == 143 and steps == []
    # one delivered as usual (the command ended 143) does not stop the process's next training run at step 0
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", lambda a: signal.raise_signal(signal.SIGTERM))
    assert run(["plot", str(tmp_path), "-o", str(tmp_path / "p.png")], capsys)[0] == 143
    starts()  # Trainer.run from Python afterwards: it trains
    assert steps == [1]


def test_the_program_makes_openmp_threads_wait_passively():
    """torch's OpenMP threads spin after each op: on a busy CPU `yoda demo` took 15.9 s against 3.2 s with
    OMP_WAIT_POLICY=PASSIVE (same bytes). The yoda program sets it before torch loads, unless the environment says
    how OpenMP's threads wait; a library user's process is left alone."""
    import subprocess

    from yoda.__main__ import passive_openmp

    for env in ({}, {"OMP_WAIT_POLICY": ""}, {"OMP_WAIT_POLICY": " "}):  # (set empty: libgomp said "Invalid value")
        passive_openmp(env)
        assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for own in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(own)
        passive_openmp(env)
        assert env == own
    code = ("import os, sys, yoda.cli, yoda.__main__ as m\n"
            "yoda.cli.main = lambda program: print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules) or 0\n"
            "sys.exit(m.run())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert (r.returncode, r.stdout) == (0, "PASSIVE False\n"), r.stderr


def test_ctrl_c_while_the_command_loads_is_one_line(monkeypatch, capsys):
    """A Ctrl-C in the first fraction of a second, while the console script imported yoda.cli, printed an
    import traceback. The console script (and `python -m yoda`) is yoda.__main__.run, which loads the command
    inside its own handler."""
    import importlib.util
    import signal
    import types

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    import yoda.__main__ as entry

    monkeypatch.setattr(entry.gc, "freeze", lambda: None)  # (the program's exit: not this test process's)
    monkeypatch.setattr(entry, "passive_openmp", lambda: None)  # (nor its environment)
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["yoda"] == "yoda.__main__:run"

    ran = []

    class CtrlC:  # a stand-in yoda.cli, during whose import the key is pressed
        def find_spec(self, name, path=None, target=None):
            return importlib.util.spec_from_loader(name, self) if name == "yoda.cli" else None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            signal.raise_signal(signal.SIGINT)
            module.main = lambda: ran.append(1) or 0

    monkeypatch.delitem(sys.modules, "yoda.cli")
    monkeypatch.delattr(yoda, "cli")
    monkeypatch.setattr(sys, "meta_path", [CtrlC(), *sys.meta_path])
    assert entry.run() == 130 and not ran  # the held Ctrl-C ends it before main
    # a finished command skips the exit's garbage collection (0.2-0.5 s of a short run): its objects are frozen
    import gc

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    monkeypatch.setitem(sys.modules, "yoda.cli", types.SimpleNamespace(main=lambda **k: 2))
    assert entry.run() == 2 and frozen == [1]
    assert capsys.readouterr().err == "yoda: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_train_aborted_by_a_second_ctrl_c_says_what_stays(tmp_path, monkeypatch, capsys):
    """A second Ctrl-C while training (the first promises to save; this one aborts) said only "yoda: interrupted",
    though the run's last checkpoint stays and the same command resumes from it; other commands keep the one word.
    A Ctrl-C while the run starts up (before any checkpoint in --out) promised one all the same."""
    def ctrl_c(a):
        raise KeyboardInterrupt

    monkeypatch.setitem(yoda.cli.COMMANDS, "train", ctrl_c)
    assert yoda.cli.main(["train", "--config", "c.json"]) == 130  # (runs/<name>, the config's: not known here)
    assert capsys.readouterr().err == ("yoda: interrupted; any checkpoint written stays, and the same command "
                                       "resumes from it\n")
    out = tmp_path / "run"
    assert yoda.cli.main(["train", "--config", "c.json", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "yoda: interrupted; no checkpoint was written\n"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    assert yoda.cli.main(["train", "--config", "c.json", "--out", str(out)]) == 130
    assert "the last checkpoint written stays" in capsys.readouterr().err
    monkeypatch.setitem(yoda.cli.COMMANDS, "plot", ctrl_c)
    assert yoda.cli.main(["plot", "runs/x", "-o", "p.png"]) == 130 and capsys.readouterr().err == "yoda: interrupted\n"


def test_upscale_makes_its_output_folder_again_if_it_went(tmp_path, tiny_model, capsys, monkeypatch):
    """A second `yoda upscale -o OUT` started by mistake and stopped removes OUT, which it made, while OUT is still
    empty; the first run then failed every write ("folder does not exist"). The folder is made again before
    each write."""
    import shutil

    import yoda.cli

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    real = yoda.cli.upscale_tensor

    def gone(*a, **k):  # the other process removes the empty folder while this one samples
        shutil.rmtree(out)
        return real(*a, **k)

    monkeypatch.setattr(yoda.cli, "upscale_tensor", gone)
    code, stdout, err = run(["upscale", str(tmp_path / "a.png"), "-o", str(out) + "/", "--model", tiny_model,
                             "--steps", "1", "-q"], capsys)
    assert code == 0, err
    assert (out / "a_x4.png").exists()


def test_no_progress_bars_into_a_file_or_a_pipe(monkeypatch):
    """`yoda upscale ... 2> log` wrote every redraw of the bars into the log (about 1.5 KB of carriage-return
    updates per image at 20 steps, no newline): the bars are drawn only on a terminal, and never with -q."""
    import argparse
    import io

    from yoda.cli_models import bars

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bars(argparse.Namespace(quiet=False))
    monkeypatch.setattr(sys, "stderr", Tty())
    assert bars(argparse.Namespace(quiet=False)) and not bars(argparse.Namespace(quiet=True))


def test_torchrun_variables_must_be_integers(monkeypatch):
    """LOCAL_RANK (read on a GPU to pick the device) was int()ed bare: a bad value was an internal-error traceback."""
    from yoda.torchrun import dist_env, env_int, main_rank, rank_prefix
    from yoda.training.distributed import Ranks, env_ranks
    from yoda.errors import UserError

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_env() == (0, 1) and env_int("LOCAL_RANK", 0) == 0
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # empty is unset, as for YODA_MAX_PIXELS
        monkeypatch.setenv(k, "")
    assert dist_env() == (0, 1) and env_int("LOCAL_RANK", 0) == 0 and env_ranks() == Ranks()
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert env_int("LOCAL_RANK", 0) == 3
    for k in ("LOCAL_RANK", "RANK"):
        monkeypatch.setenv(k, "one")
        with pytest.raises(UserError, match=rf"^{k} must be an integer \(as torchrun sets it\), got 'one'$"):
            env_int(k, 0) if k == "LOCAL_RANK" else dist_env()
        with pytest.raises(UserError, match=rf"^{k} must be an integer"):  # training reads them in the same place
            env_ranks()
        monkeypatch.delenv(k)
    # messages read them leniently: a line about another error must not fail on a bad variable
    monkeypatch.setenv("RANK", "one")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_prefix() == "rank one: " and not main_rank()
    monkeypatch.setenv("RANK", "0")
    assert main_rank() and rank_prefix() == "rank 0: "
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_prefix() == ""


def test_upscale_cfg_scale_needs_a_guided_model(tmp_path, tiny_model, images, capsys, no_sampling):
    """--cfg-scale on a model without an unconditional branch (every yoda-format model): one line naming the
    option, exit 2, before any sampling; a guided adapter gets the scale (yoda.cli_models.guided_model)."""
    from yoda.cli_models import guided_model
    from yoda.errors import UserError

    rgb, _ = images
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--cfg-scale", "3"],
                       capsys)
    assert code == 2 and "--cfg-scale 3" in err and "unconditional" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()

    class Guided(yoda.adapters.CallableAdapter):
        supports_cfg = True

        def with_cfg_scale(self, scale):
            self.cfg_scale = scale
            return self

    ad = Guided(lambda x, t, c: x, prediction="eps", schedule=Schedule.linear(10))
    assert guided_model(ad, None) is ad and guided_model(ad, 2.5).cfg_scale == 2.5
    with pytest.raises(UserError, match="--cfg-scale"):
        guided_model(ad, float("nan"))


def test_tiny_inputs_with_the_embedded_model(tmp_path, capsys):
    """The embedded SRDiff's size multiple is 8 but its bottleneck's reflection pad needs 16 HR pixels a side: a
    2x2 input crashed with a traceback (yoda upscale), and so did 8..15 px crops in eval. upscale now pads to
    what the model takes and crops back; yoda.sample refuses the size naming lr; eval names the small file."""
    import torch

    import yoda

    rng = np.random.default_rng(1)
    tiny = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    Image.fromarray(tiny).save(tmp_path / "t.png")
    code, _, err = run(["upscale", str(tmp_path / "t.png"), "-o", str(tmp_path / "t_x4.png"), "-q"], capsys)
    assert code == 0, err
    net = yoda.load("yoda", "default")
    lr = yoda.from_uint8(tiny)
    padded = torch.nn.functional.pad(lr, (0, 2, 0, 2), mode="replicate")  # 4x4 LR: 16x16 HR, the model's least
    want = yoda.to_uint8(yoda.sample(net, padded, steps=1, sampler="ddim", seed=0)[..., :8, :8])[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t_x4.png")), want)
    with pytest.raises(ValueError, match=r"^lr of 2x2 \(width x height\) gives an HR image of 8x8 that this model "
                                         r"cannot take: both sides must be at least 16 \(pad lr to at least 4 pixels a side; "
                                         r"yoda.sample\(..., pad=True\) does\)"):
        yoda.sample(net, lr, steps=1)
    with pytest.raises(ValueError, match=r"^windows: the window 8 must be at least 16 pixels"):
        yoda.sample(net, torch.zeros(1, 3, 8, 8), steps=1, windows=(8, 0))
    # a window that covers an image smaller than that (SR 12x36, padded to 16x40) spans the grid: it was refused
    small = torch.rand(1, 3, 3, 9, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(yoda.sample(net, small, steps=1, seed=0, pad=True, windows=((12, 36), 0)),
                       yoda.sample(net, small, steps=1, seed=0, pad=True))
    code, _, err = run(["upscale", str(tmp_path / "t.png"), "-o", str(tmp_path / "w.png"), "--tiles", "8,0"], capsys)
    assert code == 2 and "--tiles 8,0: the window must be at least 16 pixels" in err
    code, _, err = run(["upscale", str(tmp_path / "t.png"), "-o", str(tmp_path / "w.png"), "--tiles", "8"], capsys)
    assert code == 2 and "--tiles 8: the window must be at least 16 pixels" in err  # as typed (it said "8,0")
    code, _, err = run(["upscale", str(tmp_path / "t.png"), "-o", str(tmp_path / "w.png"), "--tiles", "64,0", "-q"],
                       capsys)  # windows without overlap: accepted, with a word on the seams they leave
    assert code == 0 and err == "yoda: note: --tiles 64,0: windows that do not overlap leave seams where they meet; " \
                                "--tiles 64 blends them over 16 pixels\n", err
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (12, 40, 3), dtype=np.uint8)).save(folder / "thin.webp")
    code, out, err = run(["eval", "--images", str(folder), "-q", "--attention", "edge", "--lower-bounds", "0.6",
                          "--steps", "2"], capsys)
    assert code == 2 and err.count("\n") == 2  # the other image is evaluated
    assert f"{folder / 'thin.webp'}: image of size 40x12: its height is below 16, the smallest HR side" in err
    assert "1 of 2 images could not be used" in err and "| plain | - | - | 1 |" in out


def test_eval_writes_per_image_csv_and_resolves_attention_once(tmp_path, tiny_model, capsys, monkeypatch):
    import csv

    import yoda.attention

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(folder / f"{n}.png")
    made = []
    real_get = yoda.attention.get
    monkeypatch.setattr(yoda.attention, "get", lambda name: made.append(name) or real_get(name))
    out = tmp_path / "rows.csv"
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "2", "-q",
                             "--attention", "edge", "gaussian", "--lower-bounds", "0.4", "0.8", "-o", str(out)],
                            capsys)
    assert code == 0, err
    assert made == ["edge", "gaussian"]  # once each, not once per image and lower bound
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * (3 + 4) and {r["image"] for r in rows} == {str(folder / "a.png"), str(folder / "b.png")}
    plain = [float(r["psnr"]) for r in rows if r["method"] == "plain"]
    table = {l.split("|")[1].strip(): l for l in stdout.splitlines() if l.startswith("| ")}
    assert f"| {np.mean(plain):.2f} |" in table["plain"]  # the table is the mean of the rows
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                             "--attention", "edge", "--lower-bounds", "0.4", "--y-channel"], capsys)
    assert code == 0 and "| PSNR-Y (dB) | vs plain (dB) | SSIM-Y |" in stdout, err


def test_steps_default_depends_on_the_model(tmp_path, tiny_model, images, capsys):
    """One DDIM step (chosen for the embedded x0 model) was every --model's default: an upstream eps model gave
    noise (5.8 dB with an eps model right to 2 %). Another model now gets OTHER_MODEL_STEPS, at most its T."""
    from types import SimpleNamespace

    from yoda.cli_models import default_steps, load_model
    from yoda.cli_parser import DEFAULT_STEPS, OTHER_MODEL_STEPS

    assert (DEFAULT_STEPS, OTHER_MODEL_STEPS) == (1, 50)
    from yoda.models.loading import DEFAULT_WEIGHTS

    copy = tmp_path / "my_copy.safetensors"  # the embedded weights under another name: the same defaults
    copy.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    for spec, steps, want in (("default", None, 1), (str(DEFAULT_WEIGHTS), None, 1), (str(copy), None, 1),
                              (tiny_model, None, 20), (tiny_model, 3, 3)):
        a = SimpleNamespace(model=spec, steps=steps)
        default_steps(a, load_model(spec, "cpu"))
        assert a.steps == want, spec  # the tiny model's T is 20 < 50
    rgb, _ = images
    out = tmp_path / "o.png"
    code, _, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "-q"], capsys)
    assert code == 0, err
    assert_same_pixels(out, expected_upscale(tiny_model, rgb, steps=20, sampler="ddim", attention=None))


def test_eval_stopped_keeps_the_images_it_finished(tmp_path, tiny_model, capsys, monkeypatch):
    """Ctrl-C in `yoda eval` lost everything, however long it had run: no table, no CSV. Now the images whose every
    method is done are summarised and written, marked partial, and the run still ends as interrupted (130)."""
    import csv

    import yoda.evaluate

    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in ("a", "b", "c"):
        Image.fromarray(np.full((16, 24, 3), 90, np.uint8)).save(folder / f"{n}.png")
    real, calls = yoda.evaluate.run_sample, []

    def stop_in_the_second_image(*args, **kw):
        calls.append(1)
        if len(calls) == 5:  # image b's second sampled method (the untimed first call, then plain and yoda edge
            # 0.6 for each image)
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(yoda.evaluate, "run_sample", stop_in_the_second_image)
    out, part = tmp_path / "rows.csv", tmp_path / "rows.partial.csv"
    out.write_text("an earlier run's rows\n")
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                             "--attention", "edge", "--lower-bounds", "0.6", "-o", str(out)], capsys)
    assert code == 130 and err.endswith("yoda: interrupted\n"), err
    with open(part, newline="") as f:  # under a name of their own: they were in -o, taken for a whole run's
        rows = list(csv.DictReader(f))
    assert {r["image"] for r in rows} == {str(folder / "a.png")} and len(rows) == 4  # a's 4 methods, none of b's
    assert out.read_text() == "an earlier run's rows\n"
    assert stdout.rstrip().endswith(f"(partial: stopped after 1 of 3 images; written to {part})")
    assert "| plain |" in stdout
    calls.clear()  # a table (-o table.md) the same way; a whole run removes a stopped one's partial file
    table, tpart = tmp_path / "table.md", tmp_path / "table.partial.md"
    table.write_text("an earlier run's table\n")
    code, stdout, _ = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                           "--attention", "edge", "--lower-bounds", "0.6", "-o", str(table)], capsys)
    assert code == 130 and table.read_text() == "an earlier run's table\n" and "| plain |" in tpart.read_text()
    tpart.unlink()  # a Ctrl-C that Python wrapped in a RuntimeError (a class defined in a lazy import): the same

    def wrapped_stop(*args, **kw):
        try:
            return stop_in_the_second_image(*args, **kw)
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__ on 'cached_property' instance") from e

    calls.clear()
    monkeypatch.setattr(yoda.evaluate, "run_sample", wrapped_stop)
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                             "--attention", "edge", "--lower-bounds", "0.6", "-o", str(table)], capsys)
    assert code == 130 and "| plain |" in tpart.read_text() and "internal error" not in err, err
    monkeypatch.setattr(yoda.evaluate, "run_sample", real)
    code, stdout, _ = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                           "--attention", "edge", "--lower-bounds", "0.6", "-o", str(out)], capsys)
    assert code == 0 and not part.exists() and len(list(csv.DictReader(out.open()))) == 12
    # the crop the rows were measured on is said (the default --max-size 128 was silent)
    assert "(each image centre-cropped to at most 128 pixels a side (--max-size; 0: whole images))" in stdout
    # a disk that fills up: the table was computed and then lost with the file (printed after it), and a stop's
    # partial file that could not be written turned the Ctrl-C (130) into an error (2)
    def full_disk(path, rows):
        raise OSError(28, f"cannot write {path}: No space left on device")

    monkeypatch.setattr(yoda.evaluate, "write_csv", full_disk)
    part.write_text("a stopped run's rows\n")  # kept: the whole run's file was not written (it was removed first)
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                             "--attention", "edge", "--lower-bounds", "0.6", "-o", str(out)], capsys)
    assert code == 2 and "| plain |" in stdout and err.endswith(f"\nyoda: error: cannot write {out}: No space left on "
                                                                "device\n"), err
    assert part.read_text() == "a stopped run's rows\n"
    calls.clear()
    monkeypatch.setattr(yoda.evaluate, "run_sample", stop_in_the_second_image)
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                             "--attention", "edge", "--lower-bounds", "0.6", "-o", str(out)], capsys)
    assert code == 130 and "| plain |" in stdout and err.endswith(f"\nyoda: error: cannot write {part}: No space left "
                                                                  "on device\nyoda: interrupted\n"), err


def test_eval_says_where_its_yoda_rows_leave_pixels_unrefined(tmp_path, tiny_model, capsys):
    """At the model's 1 step and l = 0.6 eval's YODA rows never refine attention below 0.4, and their PSNR read as
    the method's loss (-0.52 dB, -0.02 at 2 steps) without a word; upscale and demo raise the steps instead."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    args = ["eval", "--images", str(folder), "--model", tiny_model, "--attention", "edge", "-q", "--lower-bounds"]
    code, _, err = run(args + ["0.6", "0.3", "--steps", "1"], capsys)
    assert code == 0 and err == ("yoda: note: at 1 step(s) the YODA rows keep the bicubic image where the attention "
                                 "is below 0.40 at l = 0.6, 0.70 at l = 0.3 (the plain rows refine every pixel); "
                                 "--steps 4 refines every pixel\n"), err
    code, _, err = run(args + ["0.6", "--steps", "2"], capsys)
    assert code == 0 and err == "", err
    # without --steps the YODA rows take upscale's steps (they scored a picture upscale does not make), and say so:
    # a model whose own steps are 1, as the embedded model's
    from yoda.models import save_model
    from yoda.models.yoda_format import load_yoda

    one = tmp_path / "one_step.safetensors"
    net = load_yoda(tiny_model)
    save_model(net, one, schedule=net.card.schedule, sampling={"steps": 1})
    args[args.index(tiny_model)] = str(one)
    code, out, err = run(args + ["0.6", "0.3"], capsys)
    assert code == 0 and err == ("yoda: note: the YODA rows take 2 steps at l = 0.6, 4 steps at l = 0.3, the fewest "
                                 "whose last step refines every pixel, as upscale --attention (plain 1); --steps "
                                 "sets one count for every row\n"), err
    assert "| yoda, 2 steps | edge | 0.6 |" in out and "| yoda, 4 steps | edge | 0.3 |" in out


def test_figures_say_where_yoda_leaves_pixels_unrefined_and_bad_names_are_said_first(tmp_path, tiny_model, capsys):
    """figures --steps 1 sampled Fig. 4 and 5's YODA images at 1 step without a word (attention below 0.4 stays
    bicubic, and Fig. 5 showed it as the method's loss); a missing DINO file was said without --attention by
    figures, and after the steps note by eval; a missing --images folder without the option."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "a.png")
    args = ["figures", "--images", str(folder), "--model", tiny_model, "--attention", "edge", "-q", "--max-size", "0"]
    code, _, err = run(args + ["--steps", "1", "-o", str(tmp_path / "f1")], capsys)
    assert code == 0 and err == ("yoda: note: at 1 step(s) Fig. 4 and 5's YODA images keep the bicubic image where "
                                 "the attention is below 0.40 at l = 0.6 (plain refines every pixel); --steps 2 "
                                 "refines every pixel\n"), err
    code, _, err = run(args + ["--steps", "2", "-o", str(tmp_path / "f2")], capsys)
    assert code == 0 and err == "", err
    code, out, err = run([a for a in args if a != "-q"] + ["--steps", "2", "--bins", "200", "-o", str(tmp_path / "fb")],
                         capsys)  # the bins' edges told apart (--bins 100000 printed rows all "1.00-1.00")
    rows = [r.split("|")[1].strip() for r in out.splitlines() if r.startswith("| 0.") or r.startswith("| 1.")]
    assert code == 0 and len(rows) == 200 and rows[0] == "0.000-0.005" and rows[-1] == "0.995-1.000", out
    missing = str(tmp_path / "nope.pth")
    for cmd in (["figures", "-o", str(tmp_path / "f3")], ["eval", "--steps", "1", "--lower-bounds", "0.6"]):
        code, _, err = run(cmd + ["--images", str(folder), "--model", tiny_model, "--attention",
                                  f"dino-vits8:{missing}"], capsys)
        assert code == 2 and err.startswith(f"yoda: error: --attention dino-vits8:{missing}: weights file not "
                                            f"found"), err
    code, _, err = run(["eval", "--images", str(tmp_path / "none"), "--model", tiny_model], capsys)
    assert code == 2 and err == f"yoda: error: --images: {tmp_path / 'none'} not found\n", err
    (tmp_path / "empty").mkdir()  # a folder without an image: said with the option too
    code, _, err = run(["eval", "--images", str(tmp_path / "empty"), "--model", tiny_model], capsys)
    assert code == 2 and err.startswith("yoda: error: --images: no images (") and err.rstrip().endswith(
        f"in folder {tmp_path / 'empty'}"), err


def test_eval_notes_images_named_as_the_embedded_models_training_photographs(tmp_path, tiny_model, capsys):
    """`yoda eval --images` on photographs the embedded model was trained on printed a table like any other;
    training refuses the held-out ones, the reverse was silent. Said by name, for the embedded model only."""
    from yoda.photos import HELD_OUT_PHOTOS, PHOTOS

    folder = tmp_path / "imgs"
    folder.mkdir()
    trained = sorted(set(PHOTOS) - set(HELD_OUT_PHOTOS))[0]
    for name in (trained, HELD_OUT_PHOTOS[0], "mine"):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{name}.png")
    args = ["eval", "--images", str(folder), "--steps", "1", "-q", "--attention", "edge", "--lower-bounds", "0.2"]
    code, _, err = run(args, capsys)
    assert code == 0 and err.startswith(f"yoda: note: 1 of the images is named as photographs the embedded model "
                                        f"(default_x4.safetensors) was trained on ({trained}.png): their scores"), err
    code, _, err = run(args + ["--model", tiny_model], capsys)
    assert code == 0 and "trained on" not in err, err
    # a model of `yoda train`, scored on its own training folder (its file records it): said (it was silent)
    import shutil

    from yoda.models import save_model

    net = yoda.load("yoda", tiny_model)
    mine = tmp_path / "mine.safetensors"
    save_model(net, mine, schedule=net.card.schedule, sampling={"steps": 20},
               extra={"train_config": {"data": {"source": str(tmp_path / "." / "imgs")}}, "steps": 1})
    code, _, err = run(args + ["--model", str(mine)], capsys)
    assert code == 0 and err.startswith(f"yoda: note: 3 of the images are in {folder}, the folder the model was "
                                        f"trained on ({sorted(os.listdir(folder))[0]}, "), err
    shutil.copytree(folder, tmp_path / "other")  # the same images elsewhere: by folder only
    code, _, err = run(args[:2] + [str(tmp_path / "other")] + args[3:] + ["--model", str(mine)], capsys)
    assert code == 0 and "trained on" not in err, err


def test_the_cli_runs_where_its_streams_cannot_be_written(tmp_path, monkeypatch):
    """An environment review: `>&-` (a closed stdout / stderr) ended the run with an AttributeError of None after
    the work, or before it; an ASCII stdout crashed on eval's "±"; `>/dev/full` stopped a folder at its first image
    with "No space left on device", read as the output disk's; TRAINING.md of an --out named in Latin-1 (a path of
    surrogates) failed at the end of the run; a ~ after --model= (which the shell leaves) or in a config's source
    was not expanded."""
    import errno
    import io

    from yoda._io import atomic_write_text
    from yoda.cli import _usable_streams
    from yoda.console import say
    from yoda.cli_parser import _path
    from yoda.training.config import TrainConfig, absolute_folders

    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    with _usable_streams():
        assert sys.stdout.name == sys.stderr.name == os.devnull
    sys.stdout.close()
    sys.stderr.close()
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    with _usable_streams():
        print("28.1 \u00b1 0.3")
    ascii_out.flush()
    assert ascii_out.buffer.getvalue() == b"28.1 \\xb1 0.3\n"
    assert ascii_out.errors == "strict"  # as it was, after (main() called from a program left it escaping for good)
    host = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")  # main() called from a program
    monkeypatch.setattr(sys, "stdout", host)
    with _usable_streams():
        assert host.errors == "surrogateescape"  # its own policy, kept
    for errors in ("surrogateescape", "ignore"):  # LANG=C without UTF-8 mode: "±" failed (an eval lost its -o file);
        c_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors=errors)  # "ignore" dropped it
        monkeypatch.setattr(sys, "stdout", c_out)
        with _usable_streams():
            print("28.1 \u00b1 0.3")
        c_out.flush()
        assert c_out.buffer.getvalue() == b"28.1 \\xb1 0.3\n" and c_out.errors == errors, errors

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    full = Full()
    monkeypatch.setattr(sys, "stdout", full)
    say("wrote a_x4.png")  # the line goes nowhere, the run goes on
    assert sys.stdout is not full and sys.stdout.name == os.devnull
    sys.stdout.close()
    atomic_write_text(tmp_path / "r.md", "--out w/r\udce9\n")
    assert (tmp_path / "r.md").read_bytes() == b"--out w/r\xe9\n"
    from yoda.training.report import earlier_sessions  # and a resume reads the record back (its history was lost)

    out = os.path.join(str(tmp_path), os.fsdecode(b"run\xe9"))
    os.makedirs(out)
    atomic_write_text(os.path.join(out, "TRAINING.md"), f"- command: `yoda train --out {out}`\n- steps: 10 (this run: 10)\n")
    assert earlier_sessions(out, 10).startswith(f"`yoda train --out {out}`")
    assert _path("~/m.safetensors") == os.path.expanduser("~/m.safetensors")
    cfg = absolute_folders(TrainConfig(data={"source": "~/photos", "crop": 16, "scale": 4}, val_every=0))
    assert cfg.data.source == os.path.expanduser("~/photos")


def test_eval_and_figures_take_max_pixels(tmp_path, tiny_model, capsys):
    """The pixel-limit error told eval / figures users to pass --max-pixels, which they did not have."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(folder / "a.png")
    for cmd in (["eval"], ["figures", "-o", str(tmp_path / "figs")]):
        code, _, err = run(cmd + ["--images", str(folder), "--model", tiny_model, "--max-pixels", "100"], capsys)
        assert code == 2 and "is 24x16 = 384 pixels, more than the limit of 100" in err and "--max-pixels N" in err, err


def test_eval_and_figures_read_one_image_at_a_time_and_skip_bad_ones(tmp_path, tiny_model, capsys, monkeypatch):
    """eval / figures read the whole folder before sampling (every full-size image in memory at once), and one
    unreadable file stopped the run. Now each image is read when the work reaches it, and a bad one is reported,
    skipped, and makes the exit status 2."""
    import yoda.data
    import yoda.evaluate

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for n in ("a", "c"):
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(folder / f"{n}.png")
    (folder / "b.png").write_bytes(b"not a png")
    events = []
    real_read, real_sample = yoda.data.read_image, yoda.evaluate.run_sample
    monkeypatch.setattr(yoda.data, "read_image", lambda p, *a: events.append(("read", os.path.basename(p)))
                        or real_read(p, *a))
    monkeypatch.setattr(yoda.evaluate, "run_sample", lambda *a: events.append(("sample",)) or real_sample(*a))
    code, out, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "2", "-q",
                          "--attention", "edge", "--lower-bounds", "0.6"], capsys)
    assert code == 2
    assert err.splitlines() == [f"yoda: error: cannot read image {folder / 'b.png'}: not an image in a format yoda "
                                "reads (PNG, JPEG, WebP, TIFF, BMP, GIF ...: yoda.images.READ_FORMATS) (skipped)",
                                "yoda: error: 1 of 3 images could not be used (see the lines above)"]
    # plain and YODA sampled for a (after the untimed first call at its size) before b is read, and c after
    assert events == [("read", "a.png"), ("sample",), ("sample",), ("sample",), ("read", "b.png"), ("read", "c.png"),
                      ("sample",), ("sample",)]
    assert "| plain | - | - | 2 |" in out
    code, out, err = run(["figures", "--images", str(folder), "--model", tiny_model, "--steps", "1", "-q",
                          "-o", str(tmp_path / "figs")], capsys)
    assert code == 2 and "b.png" in err and "1 of 3 images could not be used" in err
    assert sorted(os.listdir(tmp_path / "figs")) == ["fig3_update_ratio.png", "fig4_crops.png",
                                                     "fig5_regional_error.png"]


def test_a_folder_names_what_it_leaves_out(tmp_path, tiny_model, capsys):
    """A folder's subfolders and files of other suffixes were passed over without a word, and `eval --images FILE`
    said "image folder not found" for a file that exists. A folder also left out formats yoda reads (a phone's
    AVIF, JFIF), its note named files and subfolders given on the command line too, which were upscaled, and
    hidden files (.DS_Store) came first in it, before what matters. (Not GIF's 256 colours.)"""
    from yoda.data import IMAGE_EXTENSIONS

    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "nested" / "d.png")
    for name in ("a.png", "anim.gif", "b.jfif", "c.avif"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / name)
    for name in (".DS_Store", "notes.txt", "given.txt"):
        (folder / name).write_text("x")
    code, _, err = run(["upscale", str(folder), "-o", str(tmp_path / "out") + "/", "--model", tiny_model,
                        "--steps", "1", "-q"], capsys)
    assert code == 0, err
    assert err.splitlines() == [f"yoda: note: {folder}: left out nested/, anim.gif, given.txt, notes.txt, .DS_Store "
                                f"(a folder stands for its own files with the suffixes {', '.join(IMAGE_EXTENSIONS)}, "
                                "not its subfolders or hidden files)"]
    assert sorted(os.listdir(tmp_path / "out")) == ["a_x4.png", "b_x4.png", "c_x4.png"]
    # named too, a subfolder and a file are not "left out"; --format jpg writes JPEG files
    code, _, err = run(["upscale", str(folder), str(folder / "nested" / "d.png"), str(folder / "notes.txt"), "-o",
                        str(tmp_path / "jpg"), "--format", "jpg", "--model", tiny_model, "--steps", "1", "-q"], capsys)
    assert code == 2 and f"yoda: note: {folder}: left out nested/, anim.gif, given.txt, .DS_Store (a folder" in err, err
    assert sorted(os.listdir(tmp_path / "jpg")) == ["a_x4.jpg", "b_x4.jpg", "c_x4.jpg", "d_x4.jpg"]
    with Image.open(tmp_path / "jpg" / "d_x4.jpg") as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    code, _, err = run(["upscale", str(folder / "a.png"), "-o", str(tmp_path / "x.png"), "--format", "webp",
                        "--model", tiny_model], capsys)
    assert code == 2 and err == f"yoda: error: --format webp does not match -o {tmp_path / 'x.png'}, a .png file: " \
                                "give one of them\n"
    code, _, err = run(["upscale", str(folder), str(folder / "a.png"), "-o", str(tmp_path / "y.jpg"), "--model",
                        tiny_model], capsys)
    assert code == 2 and "several inputs need an output folder, not a file name (--format sets the format of the " \
                         "files written into it)" in err, err
    # eval --images takes files too (it said "is a file, not a folder"), and folders beside them
    code, out, err = run(["eval", "--images", str(folder / "a.png"), str(folder / "nested"), "--model", tiny_model,
                          "--steps", "2", "--lower-bounds", "0.6", "--attention", "edge", "-q"], capsys)
    assert code == 0 and err == "" and "| plain | - | - | 2 |" in out, (out, err)  # the file and nested/d.png
    for name in ("a.png", "b.jfif", "c.avif"):  # only a subfolder and other files left: the error names them
        (folder / name).unlink()
    code, _, err = run(["upscale", str(folder), "-o", str(tmp_path / "out2") + "/", "--model", tiny_model], capsys)
    assert code == 2 and "; it holds nested/, anim.gif, given.txt, notes.txt, .DS_Store, and a folder's subfolders " \
                         "are not read" in err, err


def test_a_rerun_into_its_folder_leaves_out_its_outputs_of_any_format(tmp_path, tiny_model, capsys):
    """`yoda upscale DIR -o DIR --format jpg`, then the same without --format, upscaled a_x4.jpg again (a_x4_x4.png,
    16 times the pixels): an earlier run's outputs are left out whatever their format. --format takes any suffix
    yoda writes, in any case (jpeg, TIFF)."""
    folder = tmp_path / "f"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    assert run(["upscale", str(folder), "-o", str(folder), "--format", "JPG", *common], capsys)[0] == 0
    code, _, err = run(["upscale", str(folder), "-o", str(folder), *common], capsys)
    assert code == 0 and "left out a_x4.jpg: it is the output of an earlier run" in err, err
    assert sorted(os.listdir(folder)) == ["a.png", "a_x4.jpg", "a_x4.png"]
    for fmt, name in (("jpeg", "b.jpg"), ("TIFF", "b.tif")):  # the same format by another suffix
        code, _, err = run(["upscale", str(folder / "a.png"), "-o", str(tmp_path / name), "--format", fmt, *common],
                           capsys)
        assert code == 0, err
    code, _, err = run(["upscale", str(folder / "a.png"), "-o", str(tmp_path / "c.png"), "--format", "gif", *common],
                       capsys)
    assert code == 2 and "--format: invalid choice: 'gif' (choose from 'png', 'jpg', 'jpeg', 'webp', 'tif', " in err


def test_recursive_mirrors_a_photo_librarys_subfolders(tmp_path, tiny_model, capsys):
    """A photo library's folders (2023/IMG_0001.jpg, 2024/IMG_0001.jpg: cameras' counters repeat) could not be
    upscaled into one folder: the same stems were refused, and subfolders were left out. --recursive takes every
    subfolder's images (not hidden ones, nor the output folder inside the library) and writes each output to the
    same subfolder of -o; a rerun into the library itself leaves its earlier outputs out."""
    import shutil

    lib = tmp_path / "lib"
    for sub in ("", "2023 Urlaub", "2024/deep", ".thumbnails"):
        (lib / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(lib / sub / "IMG_0001.png")
    (lib / "2024" / "notes.txt").write_text("x")
    shutil.copytree(lib, tmp_path / "lib2")
    common, out = ["--model", tiny_model, "--steps", "1"], lib / "upscaled"
    want = ["2023 Urlaub/IMG_0001_x4.png", "2024/deep/IMG_0001_x4.png", "IMG_0001_x4.png"]
    for _ in range(2):  # the second run does not walk into the first one's outputs, inside the library
        code, _, err = run(["upscale", str(lib), "-o", str(out), "-r", *common], capsys)
        assert code == 0, err
        assert err == f"yoda: note: {lib}: left out 2024/notes.txt (files without the suffixes " \
                      f"{', '.join(yoda.data.IMAGE_EXTENSIONS)}, and hidden ones)\n", err
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == want
    for name in want:  # each the upscale of its own input
        with Image.open(out / name) as im:
            assert im.size == (48, 64)
    lib2 = tmp_path / "lib2"
    for _ in range(2):  # into the library itself: the second run leaves the first one's outputs out
        code, _, err = run(["upscale", str(lib2), "-o", str(lib2), "-r", *common], capsys)
        assert code == 0, err
    assert f"left out {', '.join(want)}: they are the outputs of an earlier run" in err, err
    assert sorted(str(p.relative_to(lib2)) for p in lib2.rglob("*_x4*.png")) == want
    code, _, err = run(["upscale", str(lib / "2024"), "-o", str(tmp_path / "flat"), *common], capsys)
    assert code == 2 and "it holds deep/, notes.txt, and a folder's subfolders are not read" in err, err  # no -r
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, _, err = run(["upscale", str(tmp_path / "empty"), "-o", str(tmp_path / "e"), "-r", *common], capsys)
    assert code == 2 and "no images (.png, " in err and "in folder" in err and "or its subfolders" in err, err


def test_a_heic_without_its_decoder_says_which_package_reads_it(tmp_path, monkeypatch):
    """iPhones' HEIC photographs: a folder takes them, Pillow reads them with the pillow-heif package (registered by
    yoda where it is installed), and without it the error says so, not only "not an image in a format yoda reads"."""
    import sys
    import types

    from yoda import images

    p = tmp_path / "IMG_0001.HEIC"
    p.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    monkeypatch.setattr(images, "_heif_tried", False)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # not installed
    with pytest.raises(images.DataError, match=r"IMG_0001\.HEIC: not an image in a format yoda reads .*; reading "
                                               r"HEIF / HEIC needs the pillow-heif package: pip install pillow-heif$"):
        images.read_image(p)
    # a folder leaves them out with the same advice (a training folder refused to load over one), and takes them
    # where a HEIF decoder is registered
    from yoda import data

    (tmp_path / "a.png").write_bytes(b"")
    left: list = []
    assert data.list_folder(str(tmp_path), left) == [str(tmp_path / "a.png")] and left == ["IMG_0001.HEIC"]
    assert data.left_out_note("f", left).endswith("hidden files; HEIF / HEIC photographs need the pillow-heif "
                                                  "package: pip install pillow-heif)")
    assert "pillow-heif" not in data.left_out_note("f", ["notes.txt"])
    monkeypatch.setattr(data, "heif_readable", lambda: True)
    assert data.list_folder(str(tmp_path)) == [str(tmp_path / "IMG_0001.HEIC"), str(tmp_path / "a.png")]
    registered = []
    monkeypatch.setattr(images, "_heif_tried", False)
    monkeypatch.setitem(sys.modules, "pillow_heif", types.SimpleNamespace(
        register_heif_opener=lambda: registered.append(1)))
    with pytest.raises(images.DataError):
        images.read_image(p)
    with pytest.raises(images.DataError):
        images.read_image(p)
    assert registered == [1]  # once, the first time an image is opened


def test_small_budget_windows_overlap_and_say_kib():
    """Under a tiny --max-memory the CLI chose 16-px windows with overlap 0 (side // 4 rounded down to 8), whose
    seams show, and said "over --max-memory 0 MiB"."""
    from yoda.cli_upscale import HR_BYTES_PER_PIXEL, mebibytes, plan_windows

    budget = 16 * 16 * HR_BYTES_PER_PIXEL  # a 16-px window fits
    assert plan_windows(64, 64, 8, 8, budget)[0] == (16, 8)
    assert plan_windows(64, 64, 8, 8, 8 * 8 * HR_BYTES_PER_PIXEL)[0] == (8, 0)  # one unit: no room to overlap
    assert plan_windows(512, 512, 8, 8, 128 * 128 * HR_BYTES_PER_PIXEL)[0] == (128, 32)  # a quarter, as before
    # where a 128-px window fits, none is smaller: 120-px squares (as many, 11 x 11 at 1024²) were taken for their
    # fewer pixels, with the CLI's own note that windows below 128 are softer
    assert plan_windows(1024, 1024, 8, 8, 64 << 20)[0] == (128, 32)
    assert plan_windows(1024, 1024, 8, 8, 48 << 20)[0] == (104, 24)  # 128 does not fit: as large as fits
    assert (mebibytes(64 * 1024), mebibytes(3 * 2**20)) == ("64 KiB", "3 MiB")


def test_window_notes_say_what_max_memory_does_not_bound(capsys, monkeypatch):
    """--max-memory 256M on a 4096² output took 1.2 GB over the process, and 1M chose 16-px windows (250 times
    slower, visibly softer), both without a word: the image's own buffers and small windows are noted."""
    from yoda.cli_upscale import HR_BYTES_PER_PIXEL, IMAGE_BYTES_PER_PIXEL, window_notes
    from yoda.sampling.tiles import SMALL_WINDOW

    window_notes("a.png", 4096, 4096, 256, 256 * 2**20)
    own = 4096 * 4096 * IMAGE_BYTES_PER_PIXEL
    assert capsys.readouterr().err == (f"yoda: note: a.png: its own buffers (state, condition, blend; about "
                                       f"{own // 2**20} MiB at 4096x4096) come on top of --max-memory 256 MiB, "
                                       "whatever the windows\n")
    window_notes("b.png", 300, 200, SMALL_WINDOW - 8, 2**31)
    assert capsys.readouterr().err == ("yoda: note: b.png: windows of 120 pixels give the model little around each "
                                       "pixel: slower, and softer than windows of 128 or more (a larger "
                                       "--max-memory)\n")
    window_notes("s.png", 96, 6000, (96, 3016), 2**31)  # README's strip: its 96 rows are the whole image, no note
    window_notes("t.png", 6000, 96, (3016, 96), 2**31)
    assert capsys.readouterr().err == ""
    window_notes("u.png", 97, 6000, (96, 3016), 2**31)  # a side short of the image's is counted
    assert capsys.readouterr().err.startswith("yoda: note: u.png: windows of 96 pixels")
    window_notes("c.png", 300, 200, SMALL_WINDOW, SMALL_WINDOW**2 * HR_BYTES_PER_PIXEL)  # none: no word
    assert capsys.readouterr().err == ""
    window_notes("e.png", 300, 200, SMALL_WINDOW, SMALL_WINDOW**2 * HR_BYTES_PER_PIXEL - 1)  # the window's own need
    assert capsys.readouterr().err == ("yoda: note: e.png: one window of 128, the smallest this model takes, needs "
                                       "about 64 MiB, over --max-memory 64 MiB\n")
    monkeypatch.setenv("RANK", "1")  # under torchrun the rank upscaling the image says it (rank 0's notes: no)
    monkeypatch.setenv("WORLD_SIZE", "2")
    window_notes("d.png", 300, 200, SMALL_WINDOW - 8, 2**31)
    assert capsys.readouterr().err.startswith("yoda: note: rank 1: d.png: windows of 120 pixels")


def test_automatic_windows_are_as_few_and_as_small_as_they_can_be():
    """The largest window that fit --max-memory covered an 800² output with 2 x 2 windows of 720², 3.2 times its
    pixels, which doubled the CPU time of ordinary photographs; then as few squares as that largest side needs,
    each the smallest that covers the image with that many: still 1.5-1.6 times a photograph's pixels, 2.3 times an
    800 x 6000 panorama's. Now the rectangles (sides >= 128, at most 4 to 1 unless the shorter spans the image,
    overlapping by a quarter of the shorter side) that denoise the fewest pixels in no more calls than those
    squares: checked against every such rectangle. An image thinner than 128 took squares of 152 in about twice the
    calls: its windows span it."""
    from yoda.cli_parser import DEFAULT_MAX_MEMORY
    from yoda.cli_upscale import HR_BYTES_PER_PIXEL, plan_windows
    from yoda.sampling.tiles import default_overlap, window_sides, window_starts

    def count(h, w, wh, ww, o):
        return len(window_starts(h, wh, o)) * len(window_starts(w, ww, o))

    area = DEFAULT_MAX_MEMORY // HR_BYTES_PER_PIXEL
    largest = math.isqrt(area) // 8 * 8  # 720
    assert plan_windows(800, 800, 8, 8, DEFAULT_MAX_MEMORY)[0] == ((456, 800), 112)  # 2 calls, not 2 x 2 of 456²
    for h, w in ((800, 800), (1000, 1000), (730, 3000), (300, 6000), (1536, 2048), (8192, 72), (96, 6000)):
        sq = lambda s: count(h, w, s, s, default_overlap(s, 8))  # noqa: E731
        side = next(s for s in range(8, largest + 1, 8) if sq(s) <= sq(largest))  # the squares of before
        best = (sq(side) * min(side, h) * min(side, w), sq(side))
        whole = (-(-h // 8) * 8, -(-w // 8) * 8)
        sides = [[n] if n < 128 else range(128, n + 1, 8) for n in whole]  # a thin image's windows span it
        for wh in sides[0]:
            for ww in [v for v in sides[1] if v <= area // wh]:
                short = min(wh, ww)
                if max(wh, ww) <= 4 * short or short == whole[wh > ww]:
                    n = count(h, w, wh, ww, default_overlap(short, 8))
                    if n <= sq(side):
                        best = min(best, (n * min(wh, h) * min(ww, w), n))
        window, overlap = plan_windows(h, w, 8, 8, DEFAULT_MAX_MEMORY)[0]
        wh, ww = window_sides(window)
        assert wh % 8 == 0 and ww % 8 == 0 and wh * ww <= area and overlap == default_overlap(min(wh, ww), 8)
        n = count(h, w, wh, ww, overlap)
        assert (n * min(wh, h) * min(ww, w), n) == best, (h, w, window, best)
    assert plan_windows(800, 6000, 8, 8, DEFAULT_MAX_MEMORY)[0] == ((456, 1096), 112)  # 12 calls, 1.25 x its pixels
    assert plan_windows(96, 6000, 8, 8, DEFAULT_MAX_MEMORY)[0] == ((96, 3016), 24)  # 2 calls, not 11 squares of 712
    # as many windows a call as fit, counted by the rectangle's own area
    assert plan_windows(160, 640, 8, 8, 200 << 20, tiles=((64, 128), 16))[1] == 6  # 200M / (64 * 128 * 4096)


def test_library_warnings_are_one_line(tmp_path, tiny_model, capsys):
    """A warning of the library (here: an ICC profile LittleCMS cannot read) printed Python's two-line warning
    with a file and line of yoda's code; the CLI prints it as one "yoda: warning:" line."""
    p = tmp_path / "broken_icc.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p, icc_profile=b"not a profile" * 20)
    code, _, err = run(["upscale", str(p), "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--steps", "1",
                        "-q"], capsys)
    assert code == 0, err
    assert err.splitlines() == [f"yoda: warning: {p}: its ICC colour profile cannot be read (cannot open profile "
                                "from string); the pixels are taken as sRGB"]


def test_window_batch_and_tiles_w_on_a_folder_of_mixed_sizes(tmp_path, tiny_model, capsys):
    """--window-batch made every image that needs no windows fail ("applies to tiled denoising only: give
    windows="), and --tiles W's default overlap W // 4 was refused unless W was a multiple of 4 units."""
    from yoda.sampling.tiles import default_overlap

    rng = np.random.default_rng(4)
    src = tmp_path / "mix"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(src / "big.png")  # HR 144 x 160
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / "small.png")  # HR 32 x 32
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    code, out, err = run(["upscale", str(src), "-o", str(tmp_path / "o") + "/", "--max-memory", "16M",
                          "--window-batch", "2", *common[:-1]], capsys)
    assert code == 0, err
    assert "big.png: up to about" in out and "small.png: up to about" not in out  # only the big one in windows
    code, _, err = run(["upscale", str(src / "small.png"), "-o", str(tmp_path / "s.png"), *common], capsys)
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "o" / "small_x4.png").read_bytes()
    code, _, err = run(["upscale", str(src / "big.png"), "-o", str(tmp_path / "t.png"), "--tiles", "40", *common],
                       capsys)
    assert code == 0, err  # was refused: "--tiles 40,10: window and overlap must be multiples of 8"
    code, _, err = run(["upscale", str(src / "big.png"), "-o", str(tmp_path / "t8.png"), "--tiles", "40,8",
                        *common], capsys)
    assert (tmp_path / "t.png").read_bytes() == (tmp_path / "t8.png").read_bytes()  # W / 4 rounded down to 8
    assert (default_overlap(40, 8), default_overlap(128, 8), default_overlap(16, 8)) == (8, 32, 8)


@pytest.mark.parametrize("cmd, argv, advice", [
    ("train", ["train", "--config", "c.json"], "a smaller batch, data.crop or data.val_crops in the config needs less"),
    ("upscale", ["upscale", "in.png", "-o", "out.png"], "a lower --max-memory, or smaller --tiles, denoises in smaller "
                                                        "windows"),
])
def test_out_of_memory_is_one_line_with_what_helps(monkeypatch, capsys, cmd, argv, advice):
    """A batch of 10**12 in a config ended in an allocator traceback and "internal error: a bug in yoda"."""
    import torch

    from yoda import cli

    def alloc(a):
        torch.empty(2**60, dtype=torch.uint8)

    monkeypatch.setitem(cli.COMMANDS, cmd, alloc)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("yoda: error: out of memory (") and err.endswith(f"); {advice}\n")
    assert "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setitem(cli.COMMANDS, cmd, lambda a: (_ for _ in ()).throw(RuntimeError("a real bug")))
    assert cli.main(argv) == 1 and "internal error" in capsys.readouterr().err


def test_a_light_photograph_is_not_taken_for_a_0_1_image(tmp_path, tiny_model, capsys):
    """A held-out photograph whose darkest pixel is 8-bit 130 (a bright wallpaper, range [0.0196, 0.8745] in
    [-1, 1]) made `yoda eval` warn "lr has no negative value ... comes out washed out": the CLI reads every image
    as 8 bits, so the warning can only be wrong there, as in evaluate / figures / training's validation. Called
    directly with such a tensor, yoda.sample still warns (it cannot know)."""
    import warnings

    import yoda
    from yoda.evaluate import EvalSettings, evaluate
    from yoda.images import from_uint8

    light = np.random.default_rng(3).integers(130, 240, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(light).save(tmp_path / "light.png")
    (tmp_path / "hr").mkdir()
    Image.fromarray(np.repeat(np.repeat(light, 4, 0), 4, 1)).save(tmp_path / "hr" / "light.png")
    for args in (["upscale", str(tmp_path / "light.png"), "-o", str(tmp_path / "sr.png"), "--steps", "1"],
                 ["eval", "--images", str(tmp_path / "hr"), "--model", tiny_model, "--steps", "2",
                  "--attention", "edge", "--lower-bounds", "0.6"]):
        code, _, err = run(args + (["--model", tiny_model, "-q"] if args[0] == "upscale" else ["-q"]), capsys)
        assert code == 0 and err == "", err
    model = yoda.load("yoda", tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", yoda.UnrefinedWarning)  # (its YODA rows at 1 step: said, and right)
        evaluate(model, [("light", np.repeat(np.repeat(light, 4, 0), 4, 1))], EvalSettings(steps=1))
    with pytest.warns(UserWarning, match="lr has no negative value"):
        yoda.sample(model, from_uint8(light), steps=1, progress=False)


def test_q_hides_the_line_of_an_input_taken_up_later(capsys, monkeypatch):
    """-q hid the per-input lines but not "... is being made by another process; back to it at the end", printed
    once per input another --skip-existing run held (15 lines of a shared folder)."""
    from yoda import cli_upscale

    monkeypatch.setattr(cli_upscale.time, "sleep", lambda s: None)
    for quiet in (False, True):
        tries = []

        def work(item):
            tries.append(item)
            if len(tries) == 1:
                raise cli_upscale.Busy(f"{item} is being made by another process")

        assert cli_upscale.run_items(["a.png"], work, str, quiet=quiet) == 0 and tries == ["a.png", "a.png"]
        out, err = capsys.readouterr()
        assert ("a.png is being made by another process; back to it at the end (--skip-existing)" in out) != quiet
        assert "waiting for another process to finish 1 output(s)" in err
    # a rank's line names the rank, as its other lines do (it had no "rank R: ")
    tries.clear()
    assert cli_upscale.run_items(["a.png"], work, str, where="rank 1: ") == 0
    assert "rank 1: a.png is being made by another process; back to it" in capsys.readouterr().out


def test_warnings_under_torchrun_are_said_once(monkeypatch, capsys):
    """Under torchrun every rank printed every warning: a model's or an option's (the same on every rank) came
    WORLD_SIZE times. Rank 0 alone says those; one met on an input is said by the rank working on it, named."""
    import warnings

    from yoda import cli, cli_upscale

    def work(item):
        warnings.warn(f"{item}: odd")

    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = cli._show_warning
            warnings.warn("the model is odd")
            assert cli_upscale.run_items(["a.png"], work, str, where=f"rank {rank}: ") == 0
            warnings.warn("the model is odd")
        lines = capsys.readouterr().err.splitlines()
        model = ["yoda: warning: the model is odd"] if rank == "0" else []
        assert lines == model + [f"yoda: warning: rank {rank}: a.png: odd"] + model


def test_tiles_of_one_unit_say_which_windows_overlap(tmp_path, tiny_model, images, capsys):
    """--tiles 8 on a model of 8-px units (default overlap 0) said "--tiles 8,0: ...; --tiles 8 blends them over 0
    pixels": what was typed, as the fix. It now quotes what was typed and names the windows that overlap."""
    rgb, _ = images
    code, _, err = run(["upscale", rgb, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--steps", "1",
                        "--tiles", "8", "-q"], capsys)
    assert code == 0 and err == ("yoda: note: --tiles 8: windows that do not overlap leave seams where they meet; "
                                 "windows of 16 or more overlap by default\n"), err


def test_the_command_line_says_what_its_help_says(tmp_path, tiny_model, images, capsys, monkeypatch):
    """A review read every command's --help and tried it: --minutes 1e308 crashed (inf seconds), --T had no bound
    (1e8 took 5 GB), an unknown option was reported by `yoda` with `yoda -h` (which lists no command's options),
    help lines broke names at hyphens (dino-/vits8:PATH, package names) and --sampler's choices ran past 80
    columns, --attention NONE was unknown while Edge worked, --lower abbreviated silently lost its note, and demo
    noted YODA's steps before refusing --attention none."""
    code, _, err = run(["train", "--config", "default_x4", "--minutes", "1e308"], capsys)
    assert code == 2 and "argument --minutes: '1e308' must be a number > 0 and <= 1e+08" in err, err
    code, _, err = run(["attention", images[0], "-o", str(tmp_path / "a.png"), "--T", "100000000"], capsys)
    assert code == 2 and "argument --T: '100000000' must be an integer >= 1 and <= 1000000" in err, err
    code, _, err = run(["upscale", images[0], "-o", str(tmp_path / "x.png"), "--bogus"], capsys)
    assert code == 2 and err == "yoda upscale: error: unrecognized arguments: --bogus (see: yoda upscale -h)\n", err
    code, _, err = run(["data", "--debug", "export", str(tmp_path / "d"), "extra"], capsys)
    assert code == 2 and "yoda data export: error: unrecognized arguments: extra" in err, err
    # no command, or a mistyped one, was said of argparse's name for it ("arguments are required: cmd"); no --version
    code, _, err = run([], capsys)
    assert code == 2 and err == "yoda: error: the following arguments are required: COMMAND (see: yoda -h)\n", err
    code, _, err = run(["upscall"], capsys)
    assert code == 2 and err.startswith("yoda: error: argument COMMAND: invalid choice: 'upscall'"), err
    assert run(["--version"], capsys) == (0, f"yoda {yoda.__version__}\n", "")
    monkeypatch.setenv("COLUMNS", "80")
    for cmd in (["upscale"], ["eval"], ["figures"], ["attention"], ["data", "build"], ["train"]):
        code, text, _ = run([*cmd, "--help"], capsys)
        assert code == 0
        assert max(map(len, text.splitlines())) <= 80, (cmd, [s for s in text.splitlines() if len(s) > 80])
        assert not any(s.rstrip().endswith(("dino-", "plasma-workspace-", "lomiri-", "data-")) for s in
                       text.splitlines()), (cmd, text)
    out = tmp_path / "none.png"
    code, _, err = run(["upscale", images[0], "-o", str(out), "--model", tiny_model, "--attention", " NONE",
                        "--lower", "0.3", "-q"], capsys)
    assert code == 0 and out.exists() and err == "yoda: note: --lower-bound has no effect without --attention " \
                                                 "(plain sampling)\n", err
    code, _, err = run(["upscale", images[0], images[1], "-o", str(tmp_path / "wb"), "--model", tiny_model,
                        "--window-batch", "4", "-q"], capsys)  # ignored without a word
    assert code == 0 and err == f"yoda: note: --window-batch has no effect on {images[0]}: it is not split into " \
                                "windows (--tiles, or a --max-memory it needs more than, splits an image)\n", err
    code, _, err = run(["upscale", images[0], "-o", str(tmp_path / "wb1.png"), "--model", tiny_model, "--tiles",
                        "4096", "--window-batch", "4", "-q"], capsys)  # one window covers it: ignored without a word
    assert code == 0 and err == f"yoda: note: --window-batch has no effect on {images[0]}: --tiles 4096 covers it " \
                                "whole (one window)\n", err
    code, _, err = run(["demo", "--attention", "plain", "-o", str(tmp_path / "d.png"), "--model", tiny_model],
                       capsys)
    assert code == 2 and err.startswith("yoda: error: --attention none (or plain, no map)") and "note" not in err


def test_model_kinds_the_cli_cannot_load_are_named(tmp_path, capsys):
    """--model diffbir:FILE said "model file not found" of a file that exists: the CLI loads no latent model."""
    lr = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(lr)
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    for spec, want in ((f"diffbir:{ckpt}", f"--model diffbir:{ckpt}: 'diffbir' is not a model kind (latent models "
                        "(the SD x4 upscaler, LDM-SR, DiffBIR, other diffusers models) are for the Python API: "
                        "yoda.models.SDUpscalerAdapter, yoda.models.LDMSRAdapter, yoda.models.DiffBIRAdapter"),
                       (f"diffbir:{ckpt}x", f"--model diffbir:{ckpt}x: no such model file, and 'diffbir' is not a "
                        "model kind (latent models"),
                       (f"gan:{ckpt}", f"--model gan:{ckpt}: 'gan' is not a model kind; "
                        "--model takes a yoda model file's path, 'default', or sr3:PATH / srdiff:PATH"),
                       (f"SR3:{ckpt}", "is not a model kind (kinds are lower case)"),
                       (f"sr3:{tmp_path / 'nope.pth'}", f"model file not found: {tmp_path / 'nope.pth'}"),
                       # a ~user that does not exist: Path.expanduser's RuntimeError was an internal error
                       ("gan:~nosuchuser-yoda/x.pt", "--model gan:~nosuchuser-yoda/x.pt: no such model file, and "
                        "'gan' is not a model kind"),
                       ("sr3:~nosuchuser-yoda/x.pth", "model file not found: ~nosuchuser-yoda/x.pth"),
                       ("sr3:", "--model sr3:: give the checkpoint's path after it: --model sr3:PATH"),
                       ("srdiff", "--model srdiff: give the checkpoint's path after it: --model srdiff:PATH"),
                       ("/dev/null", "--model /dev/null: /dev/null is not a regular file (a device or a pipe)")):
        code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", spec], capsys)
        assert code == 2 and err.count("\n") == 1 and want in err, (spec, err)
    assert not (tmp_path / "o.png").exists()
    # the files of latent models with upstream key names (Stable Diffusion's .ckpt, DiffBIR's ControlNet .pt, a
    # ControlLDM's state dict) were "not a yoda model file ... loads as sr3:PATH" and, as sr3:, "pass the JSON"
    t = torch.zeros(2)
    from safetensors.torch import save_file

    # SD's .safetensors often carry {"format": "pt"}: it was "metadata 'format' must be 'yoda-model'", unnamed
    save_file({"model.diffusion_model.out.0.weight": t, "first_stage_model.decoder.conv_in.weight": t.clone()},
              str(tmp_path / "sd.safetensors"), metadata={"format": "pt"})
    code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "sd.safetensors")],
                       capsys)
    assert code == 2 and "a latent diffusion model's" in err and "yoda.models.SDUpscalerAdapter" in err, err
    for name, sd in (("sd.ckpt", {"state_dict": {"model.diffusion_model.out.0.weight": t,
                                                 "first_stage_model.decoder.conv_in.weight": t}, "global_step": 1}),
                     ("DiffBIR_v2.1.pt", {"input_blocks.0.0.weight": t, "zero_convs.0.0.weight": t,
                                          "middle_block_out.0.weight": t}),
                     ("cldm.pt", {"unet.out.0.weight": t, "vae.decoder.conv_in.weight": t,
                                  "controlnet.zero_convs.0.0.weight": t})):
        torch.save(sd, tmp_path / name)
        for kind in ("", "sr3:"):
            spec = f"{kind}{tmp_path / name}"
            code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", spec], capsys)
            assert code == 2 and err.count("\n") == 1 and "a latent diffusion model's" in err \
                and "are for the Python API: yoda.models.SDUpscalerAdapter" in err and "JSON" not in err, (spec, err)
    # a diffusers pipeline's folder, its unet folder, or the UNet's weights in it: "is a folder: its model is
    # .../diffusion_pytorch_model.safetensors", and that file then "not a yoda model file"
    pipe = tmp_path / "sd-x4"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text('{"_class_name": "StableDiffusionUpscalePipeline"}')
    (pipe / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"{}")
    for spec in (pipe, pipe / "unet", weights):
        code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(spec)], capsys)
        assert code == 2 and err == f"yoda: error: --model {spec}: a diffusers model (latent models (the SD x4 " \
            "upscaler, LDM-SR, DiffBIR, other diffusers models) are for the Python API: " \
            "yoda.models.SDUpscalerAdapter, yoda.models.LDMSRAdapter, yoda.models.DiffBIRAdapter, " \
            "yoda.models.from_diffusers); the command line loads yoda model files and sr3: / srdiff: checkpoints\n", err
    code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(pipe / "unet" / "typo.pt")],
                       capsys)  # a name not found in such a folder is said so
    assert code == 2 and err.endswith(f"model file not found: {pipe / 'unet' / 'typo.pt'}\n"), err
    (pipe / "model_index.json").unlink()
    (pipe / "unet" / "config.json").write_text('"my _class_name notes"')  # a string, not a diffusers config
    code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(pipe / "unet")], capsys)
    assert code == 2 and err == f"yoda: error: --model {pipe / 'unet'} is a folder: its model is {weights}\n", err
    (pipe / "unet" / "config.json").write_text('["a list"]')  # no diffusers config: the folder's own message
    code, _, err = run(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(pipe / "unet")], capsys)
    assert code == 2 and err == f"yoda: error: --model {pipe / 'unet'} is a folder: its model is {weights}\n", err


def test_eval_scores_a_file_met_twice_once(tmp_path, tiny_model, capsys):
    """A symlink (or a hard link) beside its image was scored as another image: it counted twice in every mean."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / name)
    args = ["eval", "--images", str(src), "--model", tiny_model, "--steps", "1", "-o", str(tmp_path / "r.csv")]
    def scores():  # the csv's rows less their timings
        with open(tmp_path / "r.csv", newline="") as f:
            return [{k: v for k, v in r.items() if "time" not in k and "seconds" not in k} for r in csv.DictReader(f)]

    code, _, err = run(args, capsys)
    rows = scores()
    os.symlink(src / "a.png", src / "c.png")
    os.link(src / "b.png", src / "d.png")
    code2, _, err2 = run(args, capsys)
    assert code == code2 == 0 and scores() == rows and {r["image"] for r in rows} >= {str(src / "b.png")}, err2
    assert f"scored once, under the name met first: {src / 'c.png'} (as {src / 'a.png'}), {src / 'd.png'} (as " \
           f"{src / 'b.png'})" in err2


def test_eval_says_when_its_output_is_not_written(tmp_path, tiny_model, capsys):
    """With no image scored, eval exited 2 and left an earlier run's -o as it was, without a word."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "r.csv"
    out.write_text("an earlier run's rows\n")
    code, _, err = run(["eval", "--images", str(src), "--model", tiny_model, "--steps", "1", "-o", str(out)], capsys)
    assert code == 2 and out.read_text() == "an earlier run's rows\n"
    assert f"yoda: -o {out} is not written: no image was scored (the file there is an earlier run's)" in err, err


def test_eval_writes_its_output_when_stdout_cannot_be_written(tmp_path, tiny_model, images, monkeypatch):
    """`yoda eval -o r.csv > /dev/full` (or `| head -1`, a race) exited 2 with "No space left on device" and no
    r.csv: the table was printed with print() before the file was written."""
    import errno
    import io

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    def scores(out):  # the rows without their times
        assert main(["eval", "--images", os.path.dirname(images[0]), "--model", tiny_model, "--steps", "1", "-q",
                     "-o", str(out)]) == 0
        return [line.split(",")[:5] for line in out.read_text().splitlines()]

    want = scores(tmp_path / "want.csv")
    monkeypatch.setattr(sys, "stdout", Full())
    assert scores(tmp_path / "r.csv") == want and len(want) > 2
    sys.stdout.close()
    # without -o the table is the output: `yoda eval > results.md` on a full disk fails (it exited 0, file empty);
    # a reader that went away (`| head -1`) is no error
    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["eval", "--images", os.path.dirname(images[0]), "--model", tiny_model, "--steps", "1", "-q"]) == 2

    class Gone(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    assert main(["eval", "--images", os.path.dirname(images[0]), "--model", tiny_model, "--steps", "1", "-q"]) == 0
    sys.stdout.close()


def test_a_rank_that_lost_another_says_so_in_one_line(monkeypatch, capsys):
    """When a training rank was killed, the other's collective failed in gloo ("Connection closed by peer") and it
    printed gloo's traceback and "yoda: internal error: RuntimeError (a bug in yoda ...)", without its rank."""
    from yoda import cli

    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                        "peer [127.0.0.1]:1938. This is typically caused by a remote worker crashing.")
    monkeypatch.setitem(cli.COMMANDS, "train", lambda a: (_ for _ in ()).throw(gloo))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "--config", "c.json"]) == 1
    assert capsys.readouterr().err == ("yoda: error: rank 0: another rank or torchrun ended (killed, or out of "
                                       "memory?), so this one cannot go on (Connection closed by peer); the run "
                                       "resumes from its last checkpoint (the same command)\n")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: not another rank's doing
    assert cli.main(["train", "--config", "c.json"]) == 1 and "internal error" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # an OSError of the user's (a network share) is not a rank's death
    reset = ConnectionResetError(104, "Connection reset by peer")
    monkeypatch.setitem(cli.COMMANDS, "train", lambda a: (_ for _ in ()).throw(reset))
    assert cli.main(["train", "--config", "c.json"]) == 2 and "another rank" not in capsys.readouterr().err
    # the store's host (rank 0, or torchrun's agent) killed: each other rank's last store meeting failed with a
    # DistNetworkError, said as "internal error: rank 1: DistNetworkError (a bug in yoda ...)" after a traceback
    import torch.distributed as dist

    gone = dist.DistNetworkError("sendBytes failed on SocketImpl(fd=7, addr=[localhost]:40212, remote=[localhost]:"
                                 "29787): Broken pipe")
    monkeypatch.setitem(cli.COMMANDS, "upscale", lambda a: (_ for _ in ()).throw(gone))
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["upscale", "in", "-o", "out"]) == 1
    assert capsys.readouterr().err == ("yoda: error: rank 1: another rank or torchrun ended (killed, or out of "
                                       "memory?), so this one cannot go on (the ranks' store is gone: Broken "
                                       "pipe)\n")


def test_an_error_line_is_one_write(monkeypatch):
    """Ranks failing at once printed "...multiple of 3yoda: error: rank 0: ..." on one line: print (and tqdm.write)
    wrote the newline in a write of its own, between which another rank's line got in. So did the lines of
    images written on stdout (say), glued 0-5 times in a run of 40 images on 3 ranks piped to a file."""
    import io

    from yoda.console import error_line, say

    class Writes(io.StringIO):
        def __init__(self):
            super().__init__()
            self.calls = []

        def write(self, s):
            self.calls.append(s)
            return super().write(s)

    err = Writes()
    monkeypatch.setattr(sys, "stderr", err)
    error_line("yoda: error: rank 1: the batch must be a multiple of 3")
    assert [c for c in err.calls if c] == ["yoda: error: rank 1: the batch must be a multiple of 3\n"]  # ("": none)
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    say("rank 2: a.png -> b.png (96x64, 0.2 s)")
    assert [c for c in out.calls if c] == ["rank 2: a.png -> b.png (96x64, 0.2 s)\n"]


def test_an_os_error_on_a_name_with_a_newline_stays_on_its_line():
    from yoda.cli_parser import one_line

    assert one_line(PermissionError(13, "Permission denied", "out/a\nb.png")) == "out/a\\nb.png: Permission denied"


def test_a_missing_dino_weights_file_names_the_option(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    missing = tmp_path / "missing.pth"
    code, _, err = run(["attention", str(img), "-o", str(tmp_path / "o.png"), "--attention",
                        f"dino-vits8:{missing}"], capsys)
    assert code == 2 and err.startswith(f"yoda: error: --attention dino-vits8:{missing}: weights file not found"), err
    (tmp_path / "link.pth").symlink_to(missing)
    code, _, err = run(["upscale", str(img), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "link.pth")],
                       capsys)
    assert code == 2 and err.endswith(f"model file not found: {tmp_path / 'link.pth'} (a broken link to {missing})\n"), err


def test_a_file_named_like_an_option_is_said_to_be_one(tmp_path, monkeypatch, capsys):
    """`yoda upscale -dash.png -o x.png` said "the following arguments are required: IN", naming no file."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save("-dash.png")
    code, _, err = run(["upscale", "-dash.png", "-o", "x.png"], capsys)
    assert code == 2 and err == ("yoda upscale: error: the following arguments are required: IN; -dash.png is a file: "
                                 "write ./-dash.png (a name starting with '-' is read as an option) (see: yoda "
                                 "upscale -h)\n"), err
    code, _, err = run(["upscale", "-nofile.png", "-o", "x.png"], capsys)  # no such file: argparse's words alone
    assert code == 2 and "is a file" not in err and not os.path.exists("x.png"), err
    code, _, err = run(["upscale", "-o", "x.png", "--steps", "abc", "--", "-dash.png"], capsys)  # after --: a name
    assert code == 2 and "is a file" not in err and "--steps" in err, err


def test_a_rank_whose_store_host_is_gone_ends_with_one_line(tmp_path, tiny_model):
    """A rank of `yoda upscale` whose store's host went away (rank 0 or torchrun killed) wrote its outputs and then
    printed c10d's C++ warning and a 25-line stack trace ("sendBytes failed ...") before yoda's one line, where the
    README promises the one line. The store's host is this test: it goes away once rank 1 has joined."""
    import socket
    import subprocess
    import time

    import torch.distributed as dist

    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(src / f"im{k}.png")
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    host = dist.TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False)
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CPP_LOG_LEVEL", "TORCHELASTIC_RUN_ID")}
    env.update(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "yoda", "upscale", str(src), "-o", str(tmp_path / "out"), "--model",
                          tiny_model, "--steps", "1", "-q"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while host.num_keys() < 1 and p.poll() is None and time.monotonic() < deadline:  # rank 1 listed its inputs
            time.sleep(0.05)
        del host  # the host goes away while rank 1 waits for rank 0's list
        err = p.communicate(timeout=120)[1]
    finally:
        p.kill()
    assert p.returncode == 1 and re.fullmatch(  # (the reason was cut at 80 characters: "... Did the remote server")
        r"yoda: error: rank 1: another rank or torchrun ended \(killed, or out of memory\?\), so this one cannot go "
        r"on \(the ranks' store is gone: (Broken pipe|Connection reset by peer|Failed to recv, got 0 bytes\. "
        r"Connection was likely closed\. Did the remote server shutdown or crash\?)\)\n", err), err


def test_ranks_shard_one_list_and_their_lines_name_them(monkeypatch, capsys):
    """Each rank lists its input folders itself: -o inside an input folder, listed by one rank after rank 0 had
    written there, gave the ranks different lists, so inputs were skipped or made twice. The ranks now compare their
    lists before any work. A rank's per-input lines were unprefixed, and on a terminal they broke rank 0's bar."""
    from yoda import cli_upscale
    from yoda.errors import UserError

    done = []
    import threading
    import time

    from yoda import torchrun

    monkeypatch.setattr(torchrun, "MEET_POLL_S", 0.01)
    store = DictStore({"listed/0": b"another list", "failed/0": b"0", "left/0": b"1"})
    monkeypatch.setattr(cli_upscale, "meeting_store", lambda rank, world, purpose: (store, False))
    threading.Timer(0.3, store.set, ("differ/0", "1")).start()  # rank 0 (the store's host) has read the lists too
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"^the ranks found different inputs \(a folder changed while they started\?\)"):
        cli_upscale.run_sharded(["a", "b"], 1, 2, done.append, str)
    assert time.monotonic() - t0 >= 0.25  # it left after rank 0 had read, not while rank 0 could still be reading
    assert done == [] and "failed/1" not in store and store["differ/1"] == b"1" and store["read/1"] == b"1"
    # the store's host (rank 0, ranks started by hand) leaves only once every rank has seen that the lists differ:
    # it left as soon as differ/* were all there, and a rank still polling for them met a closed store ("another
    # rank or torchrun ended", exit 1, and c10d's C++ trace) instead of this error
    store = DictStore({"listed/1": b"another list", "differ/1": b"1"})
    monkeypatch.setattr(cli_upscale, "meeting_store", lambda rank, world, purpose: (store, True))
    threading.Timer(0.3, store.set, ("read/1", "1")).start()
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"^the ranks found different inputs"):
        cli_upscale.run_sharded(["a", "b"], 0, 2, done.append, str)
    assert time.monotonic() - t0 >= 0.25 and done == []
    tally = cli_upscale.Tally(2, bar=False, quiet=False, where="rank 1: ", several=True)
    tally.say("b.png -> b_x4.png")
    assert capsys.readouterr().out == "rank 1: b.png -> b_x4.png\n"


def test_rectangular_windows_are_chosen_said_and_given_back_with_tiles(tmp_path, tiny_model, capsys):
    """The automatic windows may be rectangles (yoda.sampling.tiles.fewest_pixel_windows), said WxH as image sizes
    are: --tiles WxH,O as the line says gives the same image, and a rectangle off the model's grid is named with a
    size that fits."""
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (40, 160, 3), dtype=np.uint8)).save(tmp_path / "wide.png")  # HR 160 x 640
    common = ["--model", tiny_model, "--steps", "1"]
    code, out, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "auto.png"), "--max-memory",
                          "96M", *common], capsys)
    # the --tiles that gives them back, overlap and all (--tiles WxH alone overlaps by windows='s rule: below)
    assert code == 0 and "denoising in windows of 136x160 (overlap 32: --tiles 136x160,32), 1 per call" in out, out + err
    code, out, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "given.png"), "--tiles",
                          "136x160,32", "--window-batch", "1", *common], capsys)
    assert code == 0, err
    assert (tmp_path / "auto.png").read_bytes() == (tmp_path / "given.png").read_bytes()
    code, out, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "x.png"), "--tiles", "130x164",
                          *common], capsys)
    assert code == 2 and err == ("yoda: error: --tiles 130x164: window and overlap must be multiples of 8 (this "
                                 "model's size multiple and scale), e.g. --tiles 128x160\n"), err
    range_ = "with W, H >= 1 and 0 <= O < W or H"
    for bad, why in (("10x0", range_), ("8x8x8", "(integers)"), ("16x8,16", range_), ("ax8", "(integers)")):
        # three sides were told of the range, not of the form
        code, _, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "x.png"), "--tiles", bad,
                            *common], capsys)
        assert code == 2 and f"'{bad}' must be W, W,O, WxH or WxH,O {why}" in err, (bad, err)
    assert not (tmp_path / "x.png").exists()
    # --tiles WxH without O overlaps as windows=((H, W), None): by a quarter of the side that tiles the image (a
    # window as high as it tiles its width: 80, not a quarter of its height, 40)
    for name, tiles in (("none.png", "320x160"), ("80.png", "320x160,80"), ("40.png", "320x160,40")):
        code, _, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / name), "--tiles", tiles,
                            *common], capsys)
        assert code == 0, err
    assert (tmp_path / "none.png").read_bytes() == (tmp_path / "80.png").read_bytes()
    assert (tmp_path / "none.png").read_bytes() != (tmp_path / "40.png").read_bytes()
    # an overlap past the side that spans the image (160: HR 640 x 160) but below the side that tiles it (320), as
    # windows= takes it: it was refused as typed ("0 <= O < W, H"); the same overlap past the tiling side is not
    code, _, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "200.png"), "--tiles",
                        "320x160,200", *common], capsys)
    assert code == 0, err
    code, _, err = run(["upscale", str(tmp_path / "wide.png"), "-o", str(tmp_path / "x.png"), "--tiles", "160x320,200",
                        *common], capsys)
    assert code == 2 and err.startswith("yoda: error: --tiles: the overlap 200 must be less than the window's side "
                                        "160, along which it tiles"), err


def test_skip_existing_keeps_a_read_only_output_and_pillows_warnings_are_named_once(tmp_path, tiny_model, capsys,
                                                                                   monkeypatch):
    """--skip-existing over a folder whose finished outputs are read-only stopped the whole run ("the file exists
    and is read-only"), though it skips them; a warning of yoda's about ./anim.gif named the file twice."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / f"{name}.png")
    (out / "a_x4.png").write_bytes(b"finished")
    (out / "a_x4.png").chmod(0o444)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.fspath(p).endswith("a_x4.png") and m == os.W_OK
                        else real(p, m, **k))
    common = ["--model", tiny_model, "--steps", "1", "-q"]
    code, out_text, err = run(["upscale", str(src), "-o", str(out), "--skip-existing", *common], capsys)
    assert code == 0 and (out / "b_x4.png").is_file() and (out / "a_x4.png").read_bytes() == b"finished", err
    os.remove(out / "b_x4.png")
    code, _, err = run(["upscale", str(src), "-o", str(out), *common], capsys)  # without it: a alone is refused
    assert code == 2 and err.splitlines()[0] == (
        f"yoda: error: {src / 'a.png'}: its output {out / 'a_x4.png'}: the file exists and is read-only (chmod u+w "
        f"it to replace it, or write another name)"), err  # (with no "[Errno 13] " before it)
    assert (out / "b_x4.png").is_file() and (out / "a_x4.png").read_bytes() == b"finished"
    monkeypatch.chdir(tmp_path)
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 99)]
    frames[0].save("anim.gif", save_all=True, append_images=frames[1:])
    code, _, err = run(["upscale", "./anim.gif", "-o", "x.png", *common], capsys)
    assert code == 0 and err == "yoda: warning: anim.gif holds 2 frames; only the first is read\n", err


def test_a_rank_waiting_at_the_end_says_so_on_rank_0_only(monkeypatch, capsys):
    """Every finished rank said "done; waiting for ranks 0 (a rank that never comes: stop with Ctrl-C)" after 10 s,
    under -q too and over rank 0's bar, of a rank 0 that was only still working. Rank 0 says which ranks are still
    working (not under -q); the others say nothing."""
    import hashlib
    import threading

    from yoda import cli_upscale, torchrun

    monkeypatch.setattr(torchrun, "WAIT_NOTE_S", 0.0)
    monkeypatch.setattr(torchrun, "MEET_POLL_S", 0.01)
    monkeypatch.setattr(cli_upscale, "EXIT_GRACE_S", 0.0)
    listed = hashlib.sha256(repr(["a", "b"]).encode()).hexdigest()  # what run_sharded publishes of its list
    note = "yoda: note: rank 0: done; rank 1 still working\n"
    for rank, quiet, said in ((1, False, ""), (0, True, ""), (0, False, note)):
        other = 1 - rank
        store = DictStore({f"listed/{other}": listed.encode(), f"left/{other}": b"1"})
        monkeypatch.setattr(cli_upscale, "meeting_store", lambda r, w, purpose, store=store: (store, False))
        threading.Timer(0.2, store.set, (f"failed/{other}", "0")).start()  # the other rank, still working
        assert cli_upscale.run_sharded(["a", "b"], rank, 2, lambda item: None, str, quiet=quiet) == 0
        assert capsys.readouterr().err == said, (rank, quiet)
    # a stderr nobody reads (`torchrun ... 2>&1 | head -1`): the note goes nowhere and the rank finishes (it raised)
    import io

    class Gone(io.TextIOBase):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    store = DictStore({"listed/1": listed.encode(), "left/1": b"1"})
    monkeypatch.setattr(cli_upscale, "meeting_store", lambda r, w, purpose: (store, False))
    monkeypatch.setattr(sys, "stderr", Gone())
    threading.Timer(0.2, store.set, ("failed/1", "0")).start()
    assert cli_upscale.run_sharded(["a", "b"], 0, 2, lambda item: None, str, quiet=False) == 0
    assert sys.stderr.name == os.devnull


def test_a_missing_package_is_named_as_pip_installs_it(capsys, monkeypatch):
    """A missing dependency was named by its import ("the Python package 'cv2'"), not by what pip installs
    (opencv-python-headless), with no command; and with tqdm itself missing, the error line raised again."""
    import yoda.cli

    for module, said in (("cv2", "opencv-python-headless (import cv2), which is not installed: pip install "
                                 "opencv-python-headless"),
                         ("skimage.metrics", "scikit-image (import skimage), which is not installed: pip install "
                                             "scikit-image"),
                         ("safetensors", "safetensors, which is not installed: pip install safetensors")):
        def missing(a, module=module):
            raise ModuleNotFoundError(f"No module named '{module}'", name=module)

        monkeypatch.setitem(yoda.cli.COMMANDS, "plot", missing)
        assert run(["plot", "x", "-o", "p.png"], capsys)[::2] == (2, f"yoda: error: this needs the Python package "
                                                                      f"{said}\n")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    assert run(["plot", "x", "-o", "p.png"], capsys)[::2] == (2, "yoda: error: this needs the Python package "
                                                                 "safetensors, which is not installed: pip install "
                                                                 "safetensors\n")


def test_main_from_two_threads_leaves_the_process_as_it_was(monkeypatch):
    """yoda.cli.main called in two threads at once (a service): each command sets warnings' filters and Pillow's
    pixel limit for the process and puts back what it found, so the one that ended last put back the other's:
    --max-pixels 0 switched Pillow's decompression-bomb limit off for good, yoda's warning format stayed. Calls
    now run one after another."""
    import threading
    import time
    import warnings

    from PIL import Image

    from yoda import cli

    inside, most = [0], [0]

    def command(a):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.2)  # (long enough for the other thread to start its own)
        inside[0] -= 1
        return 0

    monkeypatch.setitem(cli.COMMANDS, "attention", command)
    limit, show, filters = Image.MAX_IMAGE_PIXELS, warnings.showwarning, list(warnings.filters)
    codes = []
    runs = [threading.Thread(target=lambda args=args: codes.append(cli.main(["attention", "x.png", "-o", "y.png", *args])))
            for args in (["--max-pixels", "0"], [])]
    for t in runs:
        t.start()
        time.sleep(0.05)
    for t in runs:
        t.join()
    assert codes == [0, 0] and most[0] == 1
    assert Image.MAX_IMAGE_PIXELS == limit and warnings.showwarning is show and warnings.filters == filters


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_while_main_runs_is_not_locked_out():
    """main()'s one-call-at-a-time lock, held by a thread when the process forked (a fork pool's worker calling
    main()), was copied held into the child, which waited for ever."""
    from yoda import cli

    with cli._ONE_AT_A_TIME:
        pid = os.fork()
        if pid == 0:  # the child: its own lock, free
            os._exit(0 if cli._ONE_AT_A_TIME.acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
