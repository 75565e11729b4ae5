"""Behaviour that no other test ran (a branch-coverage run of the whole suite, 2026-12-07): each test checks the
result against a known value or an independent reference, so that each one can fail."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import yoda
from yoda.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# 1. SR3 configs' other beta schedules (yoda/models/sr3.py:191-200): against upstream SR3's make_beta_schedule
# --------------------------------------------------------------------------------------------------------------
def _upstream_sr3_betas(schedule, n_timestep, linear_start, linear_end, cosine_s=8e-3):
    """SR3's model/sr3_modules/diffusion.py make_beta_schedule, transcribed (numpy / float64)."""
    if schedule in ("warmup10", "warmup50"):
        frac = 0.1 if schedule == "warmup10" else 0.5
        betas = linear_end * np.ones(n_timestep, dtype=np.float64)
        warmup_time = int(n_timestep * frac)
        betas[:warmup_time] = np.linspace(linear_start, linear_end, warmup_time, dtype=np.float64)
        return betas
    if schedule == "const":
        return linear_end * np.ones(n_timestep, dtype=np.float64)
    if schedule == "cosine":
        timesteps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        alphas = np.cos(timesteps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        return np.minimum(1 - alphas[1:] / alphas[:-1], 0.999)
    raise AssertionError(schedule)


@pytest.mark.parametrize("kind", ["warmup10", "warmup50", "const", "cosine"])
@pytest.mark.parametrize("T", [37, 2000])
def test_sr3_config_beta_schedules_match_upstream(kind, T):
    from yoda.models.sr3 import sr3_beta_schedule

    opt = {"schedule": kind, "n_timestep": T, "linear_start": 1e-6, "linear_end": 1e-2}
    got = sr3_beta_schedule(opt).betas.numpy()
    want = _upstream_sr3_betas(kind, T, 1e-6, 1e-2)
    assert got.dtype == np.float64 and got.shape == (T,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)  # cosine: upstream's / alphas[0] rounds apart


def test_sr3_config_with_a_warmup_schedule_loads_through_the_json(tmp_path):
    """The whole JSON path (yoda.models.sr3_load): an SR3 config whose val schedule is warmup50."""
    from yoda.models.sr3_load import load_sr3_config

    cfg = {"datasets": {"train": {"l_resolution": 16, "r_resolution": 128}},
           "model": {"unet": {"in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
                              "channel_multiplier": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0},
                     "diffusion": {"image_size": 128},
                     "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 100, "linear_start": 1e-6,
                                                 "linear_end": 1e-2},
                                       "val": {"schedule": "warmup50", "n_timestep": 50, "linear_start": 1e-6,
                                               "linear_end": 1e-2}}}}
    path = tmp_path / "sr3.json"
    path.write_text(json.dumps(cfg))
    cfg_, train, val = load_sr3_config(str(path))
    assert cfg_.scale == 8 and train == yoda.Schedule.linear(100, 1e-6, 1e-2) and val.T == 50
    np.testing.assert_allclose(val.betas.numpy(), _upstream_sr3_betas("warmup50", 50, 1e-6, 1e-2), rtol=1e-12,
                               atol=0)


# --------------------------------------------------------------------------------------------------------------
# 2. SR3UNet(with_noise_level_emb=False) (yoda/models/sr3.py:381-382, 456->464)
# --------------------------------------------------------------------------------------------------------------
def test_sr3_without_noise_level_embedding_ignores_the_level_and_has_no_embedding_weights():
    from yoda.models.sr3 import SR3UNet

    kw = dict(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
              res_blocks=1, image_size=8, mid_attn=False)
    torch.manual_seed(0)
    plain = SR3UNet(**kw, with_noise_level_emb=False).eval()
    torch.manual_seed(0)
    with_emb = SR3UNet(**kw).eval()
    keys = set(plain.state_dict())
    assert not any("noise_level_mlp" in k or "noise_func" in k for k in keys)
    # the same UNet but for the embedding MLP and the per-block FeatureWiseAffine
    assert keys == {k for k in with_emb.state_dict() if "noise_level_mlp" not in k and "noise_func" not in k}
    x = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = plain(x, None)
        b = plain(x, torch.tensor([0.1, 0.9]))
        with_emb.load_state_dict(plain.state_dict(), strict=False)
        for m in with_emb.modules():  # zero embedding contribution: the two nets compute the same function
            if type(m).__name__ == "FeatureWiseAffine":
                torch.nn.init.zeros_(m.noise_func[0].weight)
                torch.nn.init.zeros_(m.noise_func[0].bias)
        c = with_emb(x, torch.tensor([0.1, 0.9]))
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 3. diffusers scheduler configs: trained_betas and an unsupported beta_schedule (yoda/models/latent.py:364, 372)
# --------------------------------------------------------------------------------------------------------------
def test_scheduler_config_trained_betas_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from yoda.models.latent import schedule_from_diffusers

    betas = (np.linspace(1e-4, 0.02, 40) ** 1.3).tolist()  # no named schedule gives these
    cfg = {"num_train_timesteps": 40, "trained_betas": betas, "beta_schedule": "linear",
           "prediction_type": "v_prediction"}
    sched, pred = schedule_from_diffusers(cfg)
    assert pred == "v" and sched.T == 40
    np.testing.assert_array_equal(sched.betas.numpy(), np.asarray(betas, dtype=np.float64))
    ref = diffusers.DDPMScheduler(**cfg)  # diffusers keeps alpha_bar in float32
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid' is not supported"):
        schedule_from_diffusers({"num_train_timesteps": 40, "beta_schedule": "sigmoid"})


# --------------------------------------------------------------------------------------------------------------
# 4. Tiled denoising: an adapter whose conds cannot be stacked falls back to one window per call
#    (yoda/sampling/tiles.py:208-210)
# --------------------------------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.zero_()

    def forward(self, inp, level):
        return self.conv(inp) * (0.5 + level.view(-1, 1, 1, 1))


def test_unstackable_conds_fall_back_to_one_window_per_call():
    from yoda.adapters import PixelAdapter

    class NoStack(PixelAdapter):
        tried = 0

        def stack_conds(self, conds):
            NoStack.tried += 1
            raise NotImplementedError("this cond cannot be stacked")

    sched = yoda.Schedule.linear(50, 1e-4, 2e-2)
    lr = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    A = torch.rand(1, 1, 16, 24, generator=torch.Generator().manual_seed(1))
    kw = dict(attention=A, seed=3, steps=4, windows=(8, 2), progress=False, backend="naive")
    with torch.backends.mkldnn.flags(enabled=False):
        one = yoda.sample(PixelAdapter(_Net(), sched, scale=2), lr, window_batch=1, **kw)
        batches, calls = [], []
        got = yoda.sample(NoStack(_Net(), sched, scale=2), lr, window_batch=4,
                          callback=lambda d: (batches.append(d["batches"]), calls.append(d["calls"])), **kw)
    assert NoStack.tried == 1  # tried once; the rest of the run goes one window per call
    assert torch.equal(got, one)
    assert batches == calls and max(calls) > 1


# --------------------------------------------------------------------------------------------------------------
# 5. The CLI's --seed with a value (yoda/cli_parser.py:252: no test ever passed a valid --seed)
# --------------------------------------------------------------------------------------------------------------
def _upscale(tmp_path, capsys, src, model, name, *extra):
    out = tmp_path / name
    code = main(["upscale", src, "-o", str(out), "--model", model, "--steps", "3", "--sampler", "ddim", "-q",
                 *extra])
    _, err = capsys.readouterr()
    assert code == 0, err
    return np.asarray(Image.open(out)).astype(int)


def test_cli_seed_is_the_library_seed(tmp_path, tiny_model, capsys):
    src = _png(tmp_path / "lr.png", 8, 8)  # 8x8 -> 32x32: a multiple of the tiny model's 8, no padding
    default = _upscale(tmp_path, capsys, src, tiny_model, "d.png")
    zero = _upscale(tmp_path, capsys, src, tiny_model, "s0.png", "--seed", "0")
    seven = _upscale(tmp_path, capsys, src, tiny_model, "s7.png", "--seed", "7")
    big = _upscale(tmp_path, capsys, src, tiny_model, "sbig.png", "--seed", str(2**32 - 1))
    assert np.array_equal(default, zero)
    assert np.abs(seven - zero).mean() > 1 and np.abs(big - seven).mean() > 1
    net = yoda.load("yoda", tiny_model)
    with torch.no_grad():
        sr = yoda.sample(net, yoda.load_image(src), attention=None, steps=3, sampler="ddim", lower_bound=0.6,
                         seed=7, progress=False)
    want = yoda.to_uint8(sr)[0].astype(int)
    diff = np.abs(seven - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # (a float32 rounding may cross a level)


# --------------------------------------------------------------------------------------------------------------
# 6. CLI errors no test reached (yoda/cli.py:511, yoda/cli_models.py:82, 112, yoda/cli_upscale.py:520, 559)
# --------------------------------------------------------------------------------------------------------------
def test_cli_user_errors_not_tested_elsewhere(tmp_path, tiny_model, capsys, monkeypatch):
    import yoda.cli

    src = _png(tmp_path / "lr.png", 8, 8)
    (tmp_path / "notes").write_text("x")  # an existing file without a suffix
    (tmp_path / "out" / "lr_x4.png").mkdir(parents=True)  # the one input's output is a folder
    diffusers_dir = tmp_path / "unet"
    diffusers_dir.mkdir()
    (diffusers_dir / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (diffusers_dir / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    cases = [
        (["upscale", src, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--steps", "0"],
         "--steps must be >= 1, got 0"),
        (["demo", "-o", str(tmp_path / "d.png"), "--model", tiny_model, "--steps", "-2"],
         "--steps must be >= 1, got -2"),
        (["upscale", src, "-o", str(tmp_path / "o.png"), "--model", tiny_model, "--model-config", str(cfg)],
         "--model-config is for sr3:PATH or srdiff:PATH models; a yoda model file carries its own config"),
        (["upscale", src, "-o", str(tmp_path / "o.png"), "--model",
          str(diffusers_dir / "diffusion_pytorch_model.safetensors")], "a diffusers model"),
        (["upscale", src, "-o", str(tmp_path / "notes"), "--model", tiny_model],
         "notes is a file; several inputs (or a name without a suffix) need a folder"),
        (["upscale", src, "-o", str(tmp_path / "out"), "--model", tiny_model],
         f"its output {tmp_path / 'out' / 'lr_x4.png'} is a folder; remove or rename it"),
    ]
    loads = []
    real = yoda.cli_models.load_model
    monkeypatch.setattr(yoda.cli_models, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    for args, want in cases:
        code = main(args)
        _, err = capsys.readouterr()
        assert code == 2 and want in err, (args, err)
        assert err.count("\n") == 1, err  # one line, no traceback
    # each was refused before any model was read, but the --model ones (refused by load_model itself) and the
    # output that is a folder (an output's name carries the model's scale: known once it is loaded)
    assert [a[2] for a in loads] == [str(cfg), None, None], loads


def test_pillow_limit_raises_pillows_own_limit_and_restores_it():
    """--max-pixels above Pillow's default (89,478,485) raises Image.MAX_IMAGE_PIXELS for the command
    (yoda/cli_models.py:503); 0 lifts it; a lower value leaves it; it is restored afterwards, on error too."""
    from yoda.cli_models import pillow_limit

    old = Image.MAX_IMAGE_PIXELS
    assert old is not None
    with pillow_limit(old * 3):
        assert Image.MAX_IMAGE_PIXELS == old * 3
    with pillow_limit(0):
        assert Image.MAX_IMAGE_PIXELS is None
    with pillow_limit(1000):
        assert Image.MAX_IMAGE_PIXELS == old
    with pytest.raises(KeyError):
        with pillow_limit(old * 2):
            raise KeyError
    assert Image.MAX_IMAGE_PIXELS == old


# --------------------------------------------------------------------------------------------------------------
# 7. DINO weights: checkpoint_key= (yoda/attention/weights.py:83-88)
# --------------------------------------------------------------------------------------------------------------
def test_dino_weights_checkpoint_key(tmp_path):
    from yoda.attention.weights import load_state_dict
    from yoda.checkpoint import CheckpointError

    t, s = torch.arange(4.0), -torch.arange(4.0)
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {"module.backbone.w": t, "module.head.last": t}, "student": {"module.backbone.w": s},
                "epoch": 3}, path)
    assert list(load_state_dict(str(path))) == ["w"]  # default: the teacher, head dropped
    assert torch.equal(load_state_dict(str(path))["w"], t)
    got = load_state_dict(str(path), checkpoint_key="student")
    assert list(got) == ["w"] and torch.equal(got["w"], s)
    with pytest.raises(CheckpointError, match=r"have no entry 'ema' \(top-level keys: \['epoch', 'student', "
                                              r"'teacher'\]\)"):
        load_state_dict(str(path), checkpoint_key="ema")
    with pytest.raises(CheckpointError, match="not a dict of tensors"):
        load_state_dict(str(path), checkpoint_key="epoch")


# --------------------------------------------------------------------------------------------------------------
# 8. The "builtin" data source that two installed configs train on (yoda/data.py:330, 338)
# --------------------------------------------------------------------------------------------------------------
def test_builtin_source_images():
    from yoda.data import BUILTIN_TRAIN, HELD_OUT, load_source
    from yoda.images import DataError

    items = load_source("builtin", min_size=172)  # "at least 172 px on the short side" (yoda/data.py)
    assert [n for n, _ in items] == list(BUILTIN_TRAIN)
    for name, a in items:
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 172, name
    assert not set(BUILTIN_TRAIN) & set(HELD_OUT)
    smallest = min(items, key=lambda it: min(it[1].shape[:2]))
    h, w = smallest[1].shape[:2]
    with pytest.raises(DataError, match=f"image {smallest[0]} is {w}x{h}, smaller than the crop size {min(h, w) + 1}"):
        load_source("builtin", min_size=min(h, w) + 1)
    from yoda.training.report import _describe_source

    assert _describe_source("builtin") == f"'builtin' ({', '.join(BUILTIN_TRAIN)})"


# --------------------------------------------------------------------------------------------------------------
# 9. Images: bool arrays, a wrong channel count, a truncated WebP (yoda/images.py:119, 128, 361)
# --------------------------------------------------------------------------------------------------------------
def test_to_rgb_u8_bool_and_bad_channels_and_a_truncated_webp(tmp_path):
    from yoda.images import DataError, load_image, to_rgb_u8

    mask = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(to_rgb_u8(mask), np.repeat((mask * 255).astype(np.uint8)[..., None], 3, 2))
    with pytest.raises(DataError, match=r"img: expected \(H, W\), \(H, W, 3\) or \(H, W, 4\), got shape \(2, 2, 2\)"):
        to_rgb_u8(np.zeros((2, 2, 2), np.uint8), "img")
    good = tmp_path / "good.webp"
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(good)
    cut = tmp_path / "cut.webp"
    cut.write_bytes(good.read_bytes()[:12])  # its RIFF / WEBP header, then nothing
    with pytest.raises(DataError, match=f"cannot read image {cut}: a truncated or corrupt WebP file"):
        load_image(cut)


# --------------------------------------------------------------------------------------------------------------
# 10. ModelCard's checks, the Schedule's index and hash (yoda/models/card.py:120-127, yoda/schedule.py:186, 307)
# --------------------------------------------------------------------------------------------------------------
def test_model_card_refuses_bad_fields():
    from yoda.models import ModelCard

    s = yoda.Schedule.linear(10)
    assert ModelCard(s, 4).prediction == "eps"
    for kw, err, msg in ((dict(schedule="linear"), TypeError, "ModelCard.schedule must be a yoda.Schedule, got str"),
                         (dict(prediction="epsilon"), ValueError, "ModelCard.prediction must be one of"),
                         (dict(space="latent"), ValueError, "ModelCard.space must be one of"),
                         (dict(config=[1]), TypeError, "ModelCard.config must be a mapping or None, got list")):
        with pytest.raises(err, match=msg):
            ModelCard(**{"schedule": s, "scale": 4, **kw})


def test_schedule_tensor_index_and_hash():
    s = yoda.Schedule.linear(10)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64), 0)
    assert s.alpha_bar(torch.tensor(3)) == s.alpha_bar(3) == pytest.approx(float(ab[3]), rel=1e-15)
    assert s.noise_level(torch.tensor([9])) == pytest.approx(math.sqrt(float(ab[9])), rel=1e-15)
    with pytest.raises(ValueError, match="idx must be an int in"):
        s.alpha_bar(torch.tensor([1, 2]))
    same = yoda.Schedule.from_betas(torch.linspace(1e-4, 2e-2, 10, dtype=torch.float64))
    assert same == s and hash(same) == hash(s) and len({s, same, yoda.Schedule.linear(11)}) == 2


# --------------------------------------------------------------------------------------------------------------
# 11. save_model with a dict config; numpy values in a training config (yoda/models/yoda_format.py:165-168,
#     yoda/training/config.py:382-386)
# --------------------------------------------------------------------------------------------------------------
def test_save_model_takes_a_dict_config(tmp_path):
    from yoda.models import save_model
    from yoda.models.sr3 import SR3Config, SR3UNet

    torch.manual_seed(0)
    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                    attn_res=(), res_blocks=1, image_size=8, mid_attn=False, scale=2)
    net = SR3UNet.from_config(cfg)
    sched = yoda.Schedule.linear(20)
    save_model(net, tmp_path / "a.safetensors", config=cfg.to_dict(), schedule=sched)
    back = yoda.load("yoda", str(tmp_path / "a.safetensors"))
    assert back.card.scale == 2 and back.card.schedule == sched
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in back.state_dict().items())
    with pytest.raises(TypeError, match="config must be the model's config dataclass or a dict, got list"):
        save_model(net, tmp_path / "b.safetensors", config=[1], schedule=sched)
    assert not (tmp_path / "b.safetensors").exists()


def test_training_config_numpy_values_become_json():
    from yoda.training.config import _json_form

    v = {"a": np.float32(0.25), "b": np.arange(3), "c": np.int64(7), "d": (1, 2), "e": np.bool_(True)}
    got = _json_form(v, "model")
    assert got == {"a": 0.25, "b": [0, 1, 2], "c": 7, "d": [1, 2], "e": True}
    assert type(got["a"]) is float and type(got["c"]) is int and type(got["e"]) is bool
    with pytest.raises(ValueError, match=r"model must hold only JSON values .*object is not JSON"):
        _json_form({"x": object()}, "model")


# --------------------------------------------------------------------------------------------------------------
# 12. `yoda data build` that reads every photograph (yoda/cli.py:428: only failing builds were tested);
#     `yoda plot` of a CSV that is not a training log (yoda/plots.py:55)
# --------------------------------------------------------------------------------------------------------------
def test_cli_data_build_all_installed_exits_0(tmp_path, monkeypatch, capsys):
    from yoda import photos

    src = tmp_path / "src"
    src.mkdir()
    held = photos.HELD_OUT_PHOTOS[0]
    train = [n for n in sorted(photos.PHOTOS) if n not in photos.HELD_OUT_PHOTOS][:2]
    fake = {held: ("pkg-a", "1.0", _png(src / "a.png", 200, 300, 0)),
            train[0]: ("pkg-a", "1.0", _png(src / "b.png", 240, 160, 1)),
            train[1]: ("pkg-b", "2.0", _png(src / "c.png", 150, 150, 2))}
    monkeypatch.setattr(photos, "PHOTOS", {n: photos.PHOTOS[n] for n in fake})
    monkeypatch.setattr(photos, "installed_photos", lambda: fake)
    out = tmp_path / "data"
    code = main(["data", "build", "--out", str(out), "--short-side", "100"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert f"wrote 2 training and 1 held-out photographs to {out}" in stdout + err
    assert "not installed" not in stdout + err and "error" not in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["not_installed"] == [] and man["skipped"] == {} and len(man["photos"]) == 3
    assert sorted(os.listdir(out / "train")) == sorted(f"{n}.png" for n in train)


def test_plot_refuses_a_csv_without_step_and_loss(tmp_path):
    from yoda.plots import read_log

    p = tmp_path / "eval.csv"
    p.write_text("image,psnr\na.png,30.1\n")
    with pytest.raises(ValueError, match=f"^{p} is not a training log \\(needs step and loss columns\\)$"):
        read_log(str(p))


# --------------------------------------------------------------------------------------------------------------
# 13. Training off the main thread (a notebook's or a service's worker thread; yoda/training/stopping.py:28):
#     no signal handler is installed, and the run is the one the main thread trains
# --------------------------------------------------------------------------------------------------------------
def test_training_in_a_worker_thread_equals_the_main_thread(tmp_path):
    import signal
    import threading

    from yoda.training import TrainConfig, Trainer

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        _png(d / f"im{i}.png", 40, 36, seed=10 + i)
    model = {"kind": "sr3", "in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
             "channel_mults": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0.0, "image_size": 16,
             "mid_attn": False, "scale": 4}
    cfg = TrainConfig.from_dict(dict(
        name="tiny", model=model, schedule={"kind": "linear", "T": 50, "beta_start": 1e-3, "beta_end": 0.1},
        data={"source": str(d), "crop": 16, "scale": 4, "val_source": str(d), "val_crops": 2, "val_crop": 16},
        batch=2, steps=2, lr=1e-3, log_every=1, ckpt_every=2, val_every=0, ema_decay=0.9))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    main_summary = Trainer(cfg, str(tmp_path / "main"), device="cpu", progress=False).run()
    box = {}

    def work():
        try:
            box["summary"] = Trainer(cfg, str(tmp_path / "thread"), device="cpu", progress=False).run()
        except BaseException as e:  # noqa: BLE001 - reported below
            box["error"] = e

    th = threading.Thread(target=work)
    th.start()
    th.join(600)
    assert "error" not in box, repr(box.get("error"))
    assert box["summary"]["stopped_by"] is None and main_summary["stopped_by"] is None
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    a = yoda.load("yoda", str(next((tmp_path / "main").glob("*.safetensors"))))
    b = yoda.load("yoda", str(next((tmp_path / "thread").glob("*.safetensors"))))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resolve_device_refuses_other_devices():
    """yoda/devices.py:25: the library's device= (Trainer, yoda.train) takes auto / cpu / cuda / cuda:N only; the
    README's MPS users are told so (the CLI's --device has choices, so only the library reaches this)."""
    from yoda.devices import resolve_device

    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("mps", "CPU", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match=f"device must be auto, cpu or cuda, got '{bad}'"):
            resolve_device(bad)
