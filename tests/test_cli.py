"""The `yoda` CLI through yoda.cli.main([...]) on tiny images with a tiny random model in the "yoda" format."""

import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from yoda.cli import main
from yoda.checkpoint import save_model
from yoda.models.sr3 import SR3Config, SR3UNet
from yoda.schedule import Schedule


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                    attn_res=(), res_blocks=1, image_size=16, mid_attn=False, scale=4)
    net = SR3UNet.from_config(cfg)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(net, path, schedule=Schedule.linear(20, 1e-3, 0.2))
    return str(path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)).save(rgb)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rng.integers(0, 256, (12, 8), dtype=np.uint8), mode="L").save(grey)
    return str(rgb), str(grey)


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_upscale_one_file_right_size(tmp_path, tiny_model, images, capsys):
    rgb, _ = images
    out = tmp_path / "out.png"
    code, stdout, err = run(["upscale", rgb, "-o", str(out), "--model", tiny_model, "--steps", "3", "-q"], capsys)
    assert code == 0, err
    im = Image.open(out)
    assert im.size == (13 * 4, 10 * 4) and im.mode == "RGB"  # odd LR size: padded for the UNet, cropped back


def test_upscale_grey_and_folder_output(tmp_path, tiny_model, images, capsys):
    rgb, grey = images
    out = tmp_path / "outdir"
    code, _, err = run(["upscale", rgb, grey, "-o", str(out), "--model", tiny_model, "--steps", "2",
                        "--sampler", "ddpm", "--attention", "gaussian", "-q"], capsys)
    assert code == 0, err
    g = Image.open(out / "grey_x4.png")
    assert g.mode == "L" and g.size == (8 * 4, 12 * 4)
    assert Image.open(out / "rgb_x4.png").size == (52, 40)


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


def test_attention_command(tmp_path, images, capsys):
    rgb, _ = images
    out = tmp_path / "att.png"
    code, stdout, err = run(["attention", rgb, "-o", str(out), "--lower-bound", "0.5"], capsys)
    assert code == 0, err
    assert Image.open(out).size[0] > 0
    ratio = float(stdout.split("):")[1].split()[0])
    from yoda.attention import get
    from yoda.images import load_image
    from yoda.masks import pixel_update_ratio

    want = float(pixel_update_ratio(get("edge")(load_image(rgb)), 0.5).mean())
    assert abs(ratio - want) < 1e-3  # the printed ratio is mean(min(1, A + l)) of this image's map


def test_demo_with_tiny_model(tmp_path, tiny_model, capsys):
    out = tmp_path / "demo.png"
    code, stdout, err = run(["demo", "-o", str(out), "--model", tiny_model, "--steps", "2", "--lr-size", "8",
                             "-q"], capsys)
    assert code == 0, err
    assert "| plain |" in stdout and "| YODA |" in stdout and "| bicubic |" in stdout
    im = Image.open(out)
    assert im.width >= 6 * 32  # six 32x32 panels in the comparison row
    code, _, err = run(["demo", "-o", str(out), "--model", tiny_model, "--image", "camera"], capsys)
    assert code == 2 and "held-out" in err


def test_eval_command(tmp_path, tiny_model, capsys):
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    code, stdout, err = run(["eval", "--images", str(folder), "--model", tiny_model, "--steps", "2",
                             "--lower-bounds", "0.4", "0.8", "--attention", "edge", "-q"], capsys)
    assert code == 0, err
    lines = [l for l in stdout.splitlines() if l.startswith("| ")]
    assert [l.split("|")[1].strip() for l in lines[1:]] == ["bicubic", "plain", "yoda", "yoda"]
    assert "LPIPS omitted" in stdout
    code, _, err = run(["eval", "--images", str(tmp_path / "empty_missing"), "--model", tiny_model], capsys)
    assert code == 2 and "empty_missing" in err


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
    for f in ("model.safetensors", "log.csv", "config.json", "TRAINING.md", "checkpoint.pt"):
        assert (out / f).exists(), f
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows[-1]["step"] == "2" and 3 < float(rows[-1]["val_psnr_plain"]) < 60 and 3 < float(rows[-1]["val_psnr_yoda"]) < 60
    # the exported weights are a loadable "yoda" model
    code, _, err = run(["upscale", str(folder / "0.png"), "-o", str(tmp_path / "sr.png"), "--model",
                        str(out / "model.safetensors"), "--steps", "2", "-q"], capsys)
    assert code == 0, err
    png = tmp_path / "curves.png"
    code, _, err = run(["plot", str(out / "log.csv"), str(out / "log.csv"), "--labels", "a", "b", "-o", str(png)],
                       capsys)
    assert code == 0, err
    assert I.open(png).size == (900, 360)
    code, _, err = run(["train", "--config", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "none.json" in err


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
    assert Image.open(out).size[0] > 6 * 128  # six 128-px panels in the top row
