"""up(lr) as each model family was trained with it (yoda.upsampling): torch's bicubic for yoda's models, Pillow's
8-bit bicubic for SR3's released checkpoints, MATLAB's imresize of lr / 256 for SRDiff's."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

import yoda
from yoda.upsampling import upsample

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other


def lr_of(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1.0


@pytest.mark.parametrize("h, w, s", [(7, 9, 4), (16, 16, 4), (5, 6, 8), (3, 4, 2), (1, 5, 4)])
def test_sr3_is_pillows_bicubic_bit_for_bit(h, w, s):
    """SR3's data: Image.resize(BICUBIC) of the 8-bit LR (prepare_data.py), in Pillow's fixed point."""
    a = np.random.default_rng(h * w * s).integers(0, 256, (h, w, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(a).resize((w * s, h * s), Image.BICUBIC))
    got = upsample(lr_of(a), s, "sr3")
    assert got.dtype == torch.float32
    assert np.array_equal(np.rint((got[0].permute(1, 2, 0).double().numpy() + 1) * 127.5).astype(np.uint8), want)


def keys(d):
    d = np.abs(d)
    return np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, np.where(d < 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, 0.0))


@pytest.mark.parametrize("method, div", [("srdiff", 256.0), ("matlab", 255.0)])
@pytest.mark.parametrize("h, w, s", [(9, 11, 4), (4, 3, 8), (2, 2, 4)])
def test_srdiff_and_matlab_are_matlab_imresize(h, w, s, method, div):
    """SRDiff's data: imresize(img_lr / 256, scale) (MATLAB bicubic: a = -0.5, edges mirrored), then 2 x - 1;
    papers' bicubic baseline: imresize(img_lr) of the 8-bit image (/ 255). Written out here sample by sample."""
    a = np.random.default_rng(h + w + s).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pad = 3
    ap = np.pad(a / div, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    want = np.zeros((h * s, w * s, 3))
    for y in range(h * s):
        uy = (y + 0.5) / s - 0.5
        for x in range(w * s):
            ux = (x + 0.5) / s - 0.5
            for j in range(int(np.floor(uy)) - 1, int(np.floor(uy)) + 3):
                for i in range(int(np.floor(ux)) - 1, int(np.floor(ux)) + 3):
                    want[y, x] += keys(uy - j) * keys(ux - i) * ap[j + pad, i + pad]
    got = upsample(lr_of(a).double(), s, method)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - (2 * want - 1)).max() < 1e-12
    if min(h, w) >= 9:  # away from the edges it is Pillow's float bicubic (the same kernel and centres)
        pil = np.asarray(Image.fromarray((a[..., 0] / div).astype(np.float32), mode="F")
                         .resize((w * s, h * s), Image.BICUBIC))
        m = 3 * s
        assert np.abs((got[..., 0] + 1) / 2 - pil)[m:-m, m:-m].max() < 1e-6


def test_torch_is_the_default_and_methods_are_checked():
    lr = torch.rand(1, 3, 5, 6) * 2 - 1
    want = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(upsample(lr, 4), want) and torch.equal(yoda.adapters.upsample(lr, 4, "torch"), want)
    with pytest.raises(ValueError, match=r"method must be one of \('torch', 'sr3', 'srdiff', 'matlab'\), got 'pil'"):
        upsample(lr, 4, "pil")


def test_released_checkpoints_are_conditioned_as_they_were_trained(tmp_path):
    """yoda.load gives an upstream SR3 / SRDiff checkpoint its family's up(lr) (the adapters conditioned every
    model on torch's bicubic: 2 levels apart on average, up to ~20 at edges); yoda's own files keep torch's."""
    from yoda.models import SRDiff
    from yoda.models.sr3 import SR3Config, SR3UNet

    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    lr = lr_of(a)
    torch.manual_seed(0)
    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                    res_blocks=1, image_size=32, mid_attn=True, scale=4)
    net = SR3UNet.from_config(cfg)
    ck = tmp_path / "I1_E1_gen.pth"
    torch.save(net.state_dict(), ck)
    conf = tmp_path / "sr3.json"
    conf.write_text('{"model": {"unet": {"in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4, '
                    '"channel_multiplier": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0}, '
                    '"beta_schedule": {"train": {"schedule": "linear", "n_timestep": 10, "linear_start": 1e-4, '
                    '"linear_end": 0.02}, "val": {"schedule": "linear", "n_timestep": 10, "linear_start": 1e-4, '
                    '"linear_end": 0.02}}, "diffusion": {"image_size": 32, "channels": 3}}, '
                    '"datasets": {"train": {"l_resolution": 8, "r_resolution": 32}}}')
    sr3 = yoda.load("sr3", ck, config=conf).yoda_adapter()
    assert sr3.upsampling == "sr3" and torch.equal(sr3.prepare(lr).c, upsample(lr, 4, "sr3"))
    m = SRDiff(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=4)
    p = tmp_path / "model_ckpt_steps_1.ckpt"
    torch.save({"state_dict": {"model": m.state_dict()}}, p)
    guess = r"model_ckpt_steps_1\.ckpt: no betas buffer and no config, so its schedule is a guess, upstream's default"
    with pytest.warns(UserWarning, match=guess):  # a bare state dict, as SRDiff's own training saves it
        srdiff = yoda.load("srdiff", p).yoda_adapter()
    up = upsample(lr, 4, "srdiff")  # (decode's up(lr): the UNet reads none, up_input off)
    assert srdiff.upsampling == "srdiff" and torch.equal(
        srdiff.decode(torch.zeros_like(up), lr, srdiff.prepare(lr).cond), up.clamp(-1.0, 1.0))
    yoda_file = tmp_path / "mine.safetensors"
    m.card = yoda.models.ModelCard(m.schedule, 4)
    yoda.save_model(m, yoda_file)
    assert yoda.load("yoda", yoda_file).yoda_adapter().upsampling == "torch"
    assert yoda.load("yoda", "default").yoda_adapter().upsampling == "torch"  # what the embedded model learnt
    # a released checkpoint saved in the yoda format samples as the model that was saved (it came back "torch")
    with pytest.warns(UserWarning, match=guess):
        released = (("sr3", yoda.load("sr3", ck, config=conf)), ("srdiff", yoda.load("srdiff", p)))
    for name, model in released:
        yoda.save_model(model, tmp_path / f"{name}.safetensors")
        again = yoda.load("yoda", tmp_path / f"{name}.safetensors")
        assert again.yoda_adapter().upsampling == name
        with safe_open(str(tmp_path / f"{name}.safetensors"), "pt") as f:  # version 1 readers would ignore it
            assert f.metadata()["version"] == "2"
        kw = dict(steps=2, seed=0, progress=False)
        assert torch.equal(yoda.sample(again, lr, **kw), yoda.sample(model, lr, **kw))


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
@pytest.mark.parametrize("method", ["sr3", "srdiff", "matlab"])
def test_overshooting_lr_is_upsampled_as_its_8_bit_image(method):
    from yoda.upsampling import upsample
    a = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    a[2, 3] = 255
    a[4, 1] = 0
    lr = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    over = lr.clone()
    over[..., 2, 3] = 1.015  # a bicubic / antialiased resize's overshoot (yoda.sample takes up to 1.02)
    over[..., 4, 1] = -1.015
    got = upsample(over, 4, method)
    if method == "sr3":  # Pillow's own 8-bit bicubic of the image, the independent reference
        want = np.asarray(Image.fromarray(a).resize((28, 24), Image.BICUBIC))
        assert np.array_equal(np.rint((got[0].permute(1, 2, 0).double().numpy() + 1) * 127.5).astype(np.uint8), want)
    else:
        assert torch.equal(got, upsample(lr, 4, method))


def test_bad_arguments_are_named():
    """upsample checked nothing: a numpy array was an AttributeError, an int tensor a NotImplementedError (or, for
    "sr3", values in {-1, 0, 1}), scale 2.5 gave sizes that differ by method, 0 an empty image or an error."""
    lr = torch.rand(1, 3, 5, 6) * 2 - 1
    for method in ("torch", "sr3", "srdiff", "matlab"):
        with pytest.raises(TypeError, match=r"^lr must be a torch.Tensor \(B, C, h, w\), got ndarray$"):
            upsample(lr.numpy(), 4, method)
        for bad in ((lr * 100).int(), lr[0], lr[:0]):
            with pytest.raises(ValueError, match=r"^lr must be a non-empty floating-point \(B, C, h, w\) tensor"):
                upsample(bad, 4, method)
        for scale in (0, -2, 2.5, True, "4"):
            with pytest.raises(ValueError, match=rf"^scale must be an int >= 1, got {scale!r}$"):
                upsample(lr, scale, method)
        assert upsample(lr, np.int64(2), method).shape == (1, 3, 10, 12)

