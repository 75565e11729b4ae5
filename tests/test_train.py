"""Training loss (DESIGN.md §7) and the trainer: switches, plain-loss equality, masked averaging, resume."""

import argparse
import base64
import csv
import contextlib
import dataclasses
import io
import json
import math
import glob
import os
import shutil
import subprocess
import re
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from yoda.schedule import Schedule
from yoda.masks import tau_at
from yoda.training import (
    LossConfig,
    TrainConfig,
    Trainer,
    diffusion_loss,
    draw_noise_level,
    space_tensors,
    step_taus,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

T = 10


class TinyNet(torch.nn.Module):
    """A conditioned 'denoiser' small enough to run instantly: conv over cat(up, x_t) + noise-level bias."""

    def __init__(self, cin=6, cout=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = torch.nn.Linear(1, cout)

    def forward(self, x, noise_level):
        return self.conv(x) + self.emb(noise_level.view(-1, 1)).view(x.shape[0], -1, 1, 1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    c = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(3, 3, 8, 8, generator=g)
    A = torch.rand(3, 1, 8, 8, generator=g)
    idx = torch.tensor([0, 5, 9])
    sab = torch.tensor([0.99, 0.6, 0.1])
    return x0, c, noise, A, idx, sab


def ab():
    return Schedule.linear(T, 1e-2, 0.3).alphas_cumprod


def plain_sr3_loss(net, x0, up, noise, sab, kind="l1", target="eps"):
    """The base model's loss written out by hand (Janspiry's SR3 p_losses with given t, gamma, noise)."""
    g = sab.view(-1, 1, 1, 1).float()
    sigma = (1 - sab.double().view(-1, 1, 1, 1) ** 2).sqrt().float()  # sqrt(1 - ab) taken in float64, then rounded
    x_noisy = g * x0 + sigma * noise
    out = net(torch.cat([up, x_noisy], dim=1), sab.float().view(-1, 1))
    # v in float64 from its definition (Salimans & Ho): v = sqrt(ab) eps - sqrt(1 - ab) x0
    v = (g.double() * noise.double() - (1 - g.double() ** 2).sqrt() * x0.double()).float()
    tgt = {"eps": noise, "x0": x0, "v": v}[target]
    return (out - tgt).abs().mean() if kind == "l1" else F.mse_loss(out, tgt)


def sr3_denoiser(net, up):
    return lambda x_t, idx, sab: net(torch.cat([up, x_t], dim=1), sab.view(-1, 1))


@pytest.mark.parametrize("kind", ["l1", "l2"])
@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_switches_off_equal_plain_loss(batch, kind, target):
    x0, up, noise, A, idx, sab = batch
    net = TinyNet()
    cfg = LossConfig(loss=kind, target=target)
    want = plain_sr3_loss(net, x0, up, noise, sab, kind, target)
    for attn in (None, A):  # an attention map given but unused must not change anything
        got = diffusion_loss(sr3_denoiser(net, up), x0, up, attn, ab(), cfg, idx=idx, sqrt_ab=sab, noise=noise)
        # v: the float32 target vs its float64 definition, a few ulps apart; eps / x0: the same operations
        torch.testing.assert_close(got.loss, want, rtol=1e-6 if target == "v" else 0, atol=0)
        assert got.active_fraction == 1.0
    # gradients flow to the model exactly as in the plain loss
    net.zero_grad()
    diffusion_loss(sr3_denoiser(net, up), x0, up, None, ab(), cfg, idx=idx, sqrt_ab=sab, noise=noise).loss.backward()
    g1 = net.conv.weight.grad.clone()
    net.zero_grad()
    plain_sr3_loss(net, x0, up, noise, sab, kind, target).backward()
    torch.testing.assert_close(g1, net.conv.weight.grad, rtol=1e-5 if target == "v" else 0, atol=1e-7 if target == "v" else 0)


def test_masked_loss_counts_only_active_pixels():
    # A: left half 1, right half 0. lower_bound 0.3 and idx 7 -> tau = 8/10 - 0.3 = 0.5: only the left half.
    B, C, H, W = 2, 3, 4, 6
    A = torch.zeros(B, 1, H, W)
    A[..., : W // 2] = 1.0
    x0 = torch.zeros(B, C, H, W)
    noise = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))
    err = torch.full((B, C, H, W), 100.0)
    err[..., : W // 2] = 1.0  # |pred - eps| = 1 on active pixels, 100 on inactive ones
    denoise = lambda x_t, idx, sab: noise + err  # noqa: E731
    idx, sab = torch.tensor([7, 7]), torch.tensor([0.5, 0.5])
    kw = dict(idx=idx, sqrt_ab=sab, noise=noise)
    assert torch.allclose(step_taus(idx, T, 0.3), torch.tensor([0.5, 0.5]))
    assert step_taus(idx, T, 0.3).tolist() == [torch.tensor(tau_at(8, T, 0.3), dtype=torch.float32).item()] * 2
    on = diffusion_loss(denoise, x0, x0, A, ab(), LossConfig(mask_loss=True, lower_bound=0.3), **kw)
    assert on.loss.item() == pytest.approx(1.0, abs=1e-6)
    assert on.active_fraction == 0.5
    off = diffusion_loss(denoise, x0, x0, A, ab(), LossConfig(lower_bound=0.3), **kw)
    assert off.loss.item() == pytest.approx(50.5, abs=1e-4)
    # L2 over the active pixels: 1^2
    l2 = diffusion_loss(denoise, x0, x0, A, ab(), LossConfig(mask_loss=True, loss="l2", lower_bound=0.3), **kw)
    assert l2.loss.item() == pytest.approx(1.0, abs=1e-6)
    # per-element tau: the second image at idx 2 has tau = 0.3 - 0.3 = 0 -> all its pixels count
    mixed = diffusion_loss(denoise, x0, x0, A, ab(), LossConfig(mask_loss=True, lower_bound=0.3),
                           idx=torch.tensor([7, 2]), sqrt_ab=sab, noise=noise)
    n_active = 12 + 24  # image 0: left half (4x3); image 1: all 4x6
    assert mixed.loss.item() == pytest.approx((12 * 1.0 + 12 * 1.0 + 12 * 100.0) / n_active, rel=1e-6)


def test_masked_input_mixes_x0_and_c(batch):
    x0, c, noise, A, idx, sab = batch
    seen = {}

    def denoise(x_t, i, s):
        seen["x_t"] = x_t
        return torch.zeros_like(x_t)

    cfg = LossConfig(mask_input=True, lower_bound=0.6)
    diffusion_loss(denoise, x0, c, A, ab(), cfg, idx=idx, sqrt_ab=sab, noise=noise)
    tau = torch.tensor([(i + 1) / T - 0.6 for i in idx.tolist()], dtype=torch.float64)
    s = sab.double().view(-1, 1, 1, 1)
    base = torch.where(A.double() >= tau.view(-1, 1, 1, 1), x0.double(), c.double())
    want = s * base + (1 - s * s).sqrt() * noise.double()
    assert (seen["x_t"].double() - want).abs().max() < 1e-6
    # the mix really happened: at idx 9 (tau = 0.4) some pixels took c and some x0
    m = A[2].double() >= tau[2]
    assert 0 < m.float().mean() < 1


@pytest.mark.parametrize("target", ["eps", "x0", "v"])
def test_masked_input_targets_agree_across_parameterisations(batch, target):
    """mask_input without mask_loss: inactive pixels' x_t is made from c, so every target is that of c there.
    The prediction of the image x_t was really made from (eps = noise, x0 = x0 where active else c, v from
    those) has zero loss whatever the parameterisation; against HR's x0 it would not (eps and x0 disagreed)."""
    x0, c, noise, A, idx, sab = batch
    tau = step_taus(idx, T, 0.6).view(-1, 1, 1, 1)
    base = torch.where(A >= tau, x0, c)
    assert 0 < (A >= tau).float().mean() < 1  # some pixels of each kind
    s = sab.view(-1, 1, 1, 1)
    sigma = (1.0 - s.double() ** 2).sqrt().float()  # sqrt(1 - ab) in float64, as the loss takes it
    exact = {"eps": noise, "x0": base, "v": s * noise - sigma * base}[target]
    cfg = LossConfig(mask_input=True, lower_bound=0.6, target=target)
    out = diffusion_loss(lambda x_t, i, sa: exact, x0, c, A, ab(), cfg, idx=idx, sqrt_ab=sab, noise=noise)
    assert out.loss.item() == 0.0
    hr_target = {"eps": noise, "x0": x0, "v": s * noise - sigma * x0}[target]
    if target != "eps":  # HR's x0 / v differ from c's on the inactive pixels: a loss that could not be zero before
        wrong = diffusion_loss(lambda x_t, i, sa: hr_target, x0, c, A, ab(), cfg, idx=idx, sqrt_ab=sab, noise=noise)
        assert wrong.loss.item() > 1e-3


def test_noise_level_draws():
    a = ab()
    idx, sab = draw_noise_level(a, 4000, LossConfig(), torch.Generator().manual_seed(0))
    lo = a[idx].sqrt()
    hi = torch.cat([torch.ones(1, dtype=torch.float64), a])[idx].sqrt()
    assert idx.min() == 0 and idx.max() == T - 1
    assert sab.dtype == torch.float64 and bool(((sab >= lo) & (sab <= hi)).all())  # float64: sqrt(1 - ab) keeps
    # its digits where ab is near 1 (taken from the float32 value it was 2.3% off at idx 0 of SR3's schedule)
    # uniform inside the interval: the mean position is ~0.5 (std of the mean ~ 0.29 / sqrt(4000) = 0.005)
    pos = (sab.double() - lo) / (hi - lo)
    assert abs(pos.mean().item() - 0.5) < 0.03
    idx_d, sab_d = draw_noise_level(a, 50, LossConfig(noise_level="discrete"), torch.Generator().manual_seed(0))
    assert torch.equal(sab_d, a[idx_d].sqrt())
    idx_s, _ = draw_noise_level(a, 8, LossConfig(same_t_in_batch=True), torch.Generator().manual_seed(0))
    assert len(set(idx_s.tolist())) == 1


@pytest.mark.parametrize("mask_input", [False, True])
def test_the_first_noise_levels_keep_their_digits(mask_input):
    """sqrt(1 - ab) at the first steps of SR3's schedule (linear from 1e-6, T = 2000) was taken from the float32
    sqrt_ab the model is fed (and mask_input passed ab rounded to float32): 2.3% off at idx 0, 0.2% at idx 1. Now
    from the float64 level, within float32 rounding of the float64 value; the target v too."""
    a = Schedule.linear(2000, 1e-6, 0.01).alphas_cumprod
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (l = 1 makes the mask all ones, as this test wants)
        cfg = LossConfig(noise_level="discrete", mask_input=mask_input, lower_bound=1.0, target="v", loss="l2")
    zeros, noise = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)  # x_t = sigma, v = sqrt(ab): read off directly
    idx = torch.tensor([0, 1])
    sab = draw_noise_level(a, 2, cfg)[1] * 0 + a[idx].sqrt()  # (draw_noise_level's dtype: float64)
    seen = {}
    out = diffusion_loss(lambda x_t, i, s: seen.setdefault("x_t", x_t) * 0, zeros, zeros, torch.ones(2, 1, 4, 4) if
                         mask_input else None, a, cfg, idx=idx, sqrt_ab=sab, noise=noise)
    want = (1 - a[:2]).sqrt()
    got = seen["x_t"][:, 0, 0, 0].double()
    assert torch.allclose(got, want, rtol=1e-6, atol=0), (got, want)
    assert out.loss.item() == pytest.approx(float(a[:2].mean()), rel=1e-6)  # mean of v^2 = ab
    # v = sqrt(ab) noise - sqrt(1 - ab) x0: with x0 = 1 and no noise, v = -sigma, whose square is the loss
    out = diffusion_loss(lambda x_t, i, s: x_t * 0, torch.ones(2, 3, 4, 4), zeros, torch.ones(2, 1, 4, 4) if
                         mask_input else None, a, cfg, idx=idx, sqrt_ab=sab, noise=zeros)
    assert out.loss.item() == pytest.approx(float((1 - a[:2]).mean()), rel=1e-5)
    # a half-precision x0 gives the model a float32 x_t, on both paths (the masked one gave a half-precision one)
    diffusion_loss(lambda x_t, i, s: seen.__setitem__("half", x_t.dtype) or x_t.half() * 0, zeros.half(),
                   zeros.half(), torch.ones(2, 1, 4, 4) if mask_input else None, a, cfg, idx=idx, sqrt_ab=sab,
                   noise=noise)
    assert seen["half"] == torch.float32


def test_residual_space():
    hr = torch.rand(2, 3, 16, 16) * 2 - 1
    lr = F.interpolate(hr, scale_factor=0.25, mode="area")
    x0, c, up = space_tensors(hr, lr, LossConfig(space="residual", residual_scale=2.0), 4)
    want_up = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.allclose(up, want_up)
    assert torch.allclose(x0, ((hr - want_up) * 2).clamp(-1, 1))
    assert torch.equal(c, torch.zeros_like(hr))
    x0p, cp, _ = space_tensors(hr, lr, LossConfig(), 4)
    assert torch.equal(x0p, hr) and torch.equal(cp, want_up)


def test_loss_errors(batch):
    x0, c, noise, A, idx, sab = batch
    with pytest.raises(ValueError, match="attention map"):
        diffusion_loss(lambda *a: x0, x0, c, None, ab(), LossConfig(mask_loss=True), idx=idx, sqrt_ab=sab)
    with pytest.raises(ValueError, match="A must be"):
        diffusion_loss(lambda *a: x0, x0, c, A[:, :, :4], ab(), LossConfig(mask_loss=True), idx=idx, sqrt_ab=sab)
    with pytest.raises(ValueError, match="loss must be one of"):
        LossConfig(loss="huber")


# ----------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------
TINY_MODEL = {
    "kind": "sr3", "in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
    "channel_mults": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0.0, "with_noise_level_emb": True,
    "image_size": 16, "mid_attn": False, "scale": 4,
}


@pytest.fixture
def img_folder(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        arr = (torch.rand(40, 36, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(d / f"im{i}.png")
    return str(d)


def tiny_config(folder, **kw):
    base = dict(
        name="tiny", model=TINY_MODEL, schedule={"kind": "linear", "T": 50, "beta_start": 1e-3, "beta_end": 0.1},
        data={"source": folder, "crop": 16, "scale": 4, "val_source": folder, "val_crops": 2, "val_crop": 16},
        loss={"mask_input": True, "mask_loss": True}, batch=2, steps=4, lr=1e-3, log_every=1, ckpt_every=2,
        ema_decay=0.9,
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_config_json_round_trip(img_folder):
    cfg = tiny_config(img_folder)
    back = TrainConfig.from_json(cfg.to_json())
    assert back == cfg and back.loss.mask_input and back.data.crop == 16
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="batch"):
        cfg.replace(batch=0)


def test_progress_bar_by_default_on_a_terminal_only(tmp_path, img_folder, capsys, monkeypatch):
    """Trainer(progress=True) was the default and drew its bar into pipes and log files (each redraw a line of
    its own), where yoda.sample draws none: the default is now None, a bar only where stderr is a terminal."""
    cfg = tiny_config(img_folder, val_every=0, steps=1)
    Trainer(cfg, str(tmp_path / "a"), device="cpu").run()
    assert "step" not in capsys.readouterr().err  # stderr is pytest's capture: no terminal, no bar
    Trainer(cfg, str(tmp_path / "b"), device="cpu", progress=True).run()
    assert "1/1" in capsys.readouterr().err  # asked for: drawn
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    Trainer(cfg, str(tmp_path / "c"), device="cpu").run()
    assert "1/1" in capsys.readouterr().err  # a terminal: drawn


def test_cudnn_benchmark_is_set_for_the_run_only(tmp_path, img_folder, monkeypatch):
    """A CUDA Trainer set torch.backends.cudnn.benchmark in its constructor and left it on for the process: every
    later yoda.sample and the user's own code ran with timed (run-to-run varying) algorithm choices. Now only run()
    sets it, and gives back the caller's value, also when the run fails. (No GPU here: the device is said to be
    CUDA after the constructor, and train_step records the flag.)"""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    t = Trainer(tiny_config(img_folder, val_every=0), str(tmp_path / "o"), device="cpu", progress=False)
    assert torch.backends.cudnn.benchmark is False
    seen = []

    def step():
        seen.append(torch.backends.cudnn.benchmark)
        raise RuntimeError("stop")

    t.train_step, t.device = step, torch.device("cuda")
    with pytest.raises(RuntimeError, match="stop"):
        t.run(steps=1)
    assert seen == [True] and torch.backends.cudnn.benchmark is False


def test_ema_after_the_first_step(tmp_path, img_folder):
    """EMA decay min(ema_decay, (1 + step) / (10 + step)) = 0.1 at step 0: ema = 0.1 init + 0.9 model after one step
    (lerp's weight swapped would keep the EMA at the raw weights, which the exported model and validation use)."""
    import copy

    for decay, kept in ((0.9, 0.1), (0.05, 0.05)):  # the warm-up's 0.1 at step 0, or a config's smaller ema_decay
        # (no test set one where the cap binds: dropping it changed the exported weights of every long run)
        t = Trainer(tiny_config(img_folder, val_every=0, ema_decay=decay), str(tmp_path / f"o{decay}"), device="cpu",
                    progress=False)
        init = copy.deepcopy(t.model.state_dict())
        t.train_step()
        model = t.model.state_dict()
        for k, e in t.ema.state_dict().items():
            if e.is_floating_point():
                torch.testing.assert_close(e, init[k] * kept + model[k] * (1 - kept))


def test_validation_samples_with_the_ema_weights(tmp_path, img_folder):
    """validate() scores the EMA (the weights the run exports), not the raw model: zeroing the raw weights changes
    nothing it returns (the CLI test's recomputation could not tell them apart after two steps: 1e-4 dB)."""
    t = Trainer(tiny_config(img_folder, steps=1, val_every=1), str(tmp_path / "o"), device="cpu", progress=False)
    t.run()
    before = t.validate()
    with torch.no_grad():
        for p in t.model.parameters():
            p.zero_()
    assert t.validate() == before and all(isinstance(v, float) for v in before.values())
    with torch.no_grad():
        for p in t.ema.parameters():
            p.zero_()
    assert t.validate() != before


def test_resuming_a_checkpoint_of_the_per_crop_masks_is_warned_of(tmp_path, img_folder):
    """A checkpoint written before the masks were the whole images' (no loss_version) resumes with a warning that
    its remaining steps train differently; one of this version resumes silently."""
    import warnings

    cfg = tiny_config(img_folder, val_every=0)
    out = tmp_path / "o"
    Trainer(cfg, str(out), device="cpu", progress=False).run(steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Trainer(cfg, str(out), device="cpu", progress=False).step == 1
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    del st["loss_version"]
    torch.save(st, out / "checkpoint.pt")
    with pytest.warns(UserWarning, match=r"made the YODA masks of each training crop .* whole images' masks"):
        assert Trainer(cfg, str(out), device="cpu", progress=False).step == 1


def _disk_fills_after(monkeypatch, n: int) -> None:
    """Binary files that yoda._io opens for writing take ``n`` bytes, then fail as a full disk does."""
    import builtins

    import yoda._io

    class Full(io.FileIO):
        def write(self, b):
            room = n - self.tell()
            if len(b) > room:
                super().write(bytes(b)[:max(room, 0)])
                raise OSError(28, "No space left on device")
            return super().write(b)

    monkeypatch.setattr(yoda._io, "open", lambda f, mode="r", *a, **k: Full(f, "w") if mode == "wb"
                        else builtins.open(f, mode, *a, **k), raising=False)


def test_a_full_disk_is_an_oserror_naming_the_file_and_keeps_the_last_one(tmp_path, img_folder, monkeypatch,
                                                                          capsys):
    """A full disk while writing checkpoint.pt or the model file was torch.save's RuntimeError ("unexpected pos")
    and safetensors' SafetensorError: `yoda train` called it a bug in yoda, with a traceback. Both are serialised
    to bytes first now, and the write's OSError names the user's file; the previous file stays whole, and no
    temporary file is left."""
    import json

    from yoda.cli import main

    out = tmp_path / "o"
    t = Trainer(tiny_config(img_folder, val_every=0), str(out), device="cpu", progress=False)
    t.save_checkpoint()
    t.export(str(out / "model.safetensors"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _disk_fills_after(monkeypatch, 1000)
    for save, name in ((t.save_checkpoint, "checkpoint.pt"), (lambda: t.export(str(out / "model.safetensors")),
                                                              "model.safetensors")):
        with pytest.raises(OSError, match=f"cannot write {out / name}: No space left on device"):
            save()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config(img_folder, val_every=0).to_dict()))
    code = main(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"yoda: error: cannot write {tmp_path / 'run'}" in err and "No space left on device" in err


def test_a_log_append_that_fails_leaves_no_half_row(tmp_path):
    """log.csv appended on a full disk ended in half a row, and the error named no file."""
    from yoda._io import append_whole

    log = tmp_path / "log.csv"
    log.write_bytes(b"step,loss\r\n1,0.5\r\n")
    real = os.write
    calls = []

    def write_some(fd, data):  # the first write goes through in part, the next finds the disk full
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data)[:4])
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "write", write_some)
        with pytest.raises(OSError, match=f"cannot write {log}: No space left on device"):
            append_whole(log, b"2,0.25\r\n3,0.125\r\n")
    assert log.read_bytes() == b"step,loss\r\n1,0.5\r\n" and calls == [17, 13]
    append_whole(log, b"2,0.25\r\n")
    assert log.read_bytes() == b"step,loss\r\n1,0.5\r\n2,0.25\r\n"


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_resume_equals_uninterrupted_run(tmp_path, img_folder, dropout):
    """With dropout the resumed run drew the dropout masks of step 1 again (torch's generator was reseeded and
    not checkpointed): 6e-3 off in the weights. The checkpoint now holds torch's generator state."""
    cfg = tiny_config(img_folder, model={**TINY_MODEL, "dropout": dropout})
    full = Trainer(cfg, str(tmp_path / "full"), device="cpu", progress=False)
    full.run()
    part = Trainer(cfg, str(tmp_path / "part"), device="cpu", progress=False)
    part.run(steps=2)
    del part
    resumed = Trainer(cfg, str(tmp_path / "part"), device="cpu", progress=False)
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 4
    for key in ("model", "ema"):
        a, b = getattr(full, key).state_dict(), getattr(resumed, key).state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{key}.{k} differs after resume"
    # the EMA moved away from the raw weights and the raw weights moved away from the init
    assert not torch.equal(full.ema.state_dict()["final_conv.block.3.weight"],
                           full.model.state_dict()["final_conv.block.3.weight"])
    with open(tmp_path / "full" / "log.csv") as f:
        rows_full = list(csv.DictReader(f))
    with open(tmp_path / "part" / "log.csv") as f:
        rows_part = list(csv.DictReader(f))
    assert [r["step"] for r in rows_full] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in rows_full] == [r["loss"] for r in rows_part]
    assert all(math.isfinite(float(r["loss"])) for r in rows_full)


def test_a_resumed_run_logs_what_an_uninterrupted_one_logs(tmp_path, img_folder):
    """A run stopped between log rows (Ctrl-C, --minutes) writes a row at the stop; its resume then averaged the next
    row over the steps after the stop only, and kept the stop's row: a kink in `yoda plot` (0.0988 against 0.0907).
    The checkpoint keeps the steps since the last regular row, and the resume replaces the stop's row."""
    cfg = tiny_config(img_folder, steps=6, log_every=3, ckpt_every=0, val_every=0)
    full = Trainer(cfg, str(tmp_path / "full"), device="cpu", progress=False)
    full.run()
    part = Trainer(cfg, str(tmp_path / "part"), device="cpu", progress=False)
    assert part.run(max_seconds=0)["stopped_by"] == "--minutes"  # after step 1
    assert [r["step"] for r in part.rows] == [1]  # the stop's row, until the run resumes
    del part
    resumed = Trainer(cfg, str(tmp_path / "part"), device="cpu", progress=False)
    assert resumed.step == 1 and resumed.rows == []
    resumed.run()

    def log(run):
        with open(tmp_path / run / "log.csv") as f:
            return [(r["step"], r["loss"], r["lr"]) for r in csv.DictReader(f)]

    assert log("part") == log("full") and [r[0] for r in log("full")] == ["3", "6"]
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in full.rows]


def test_a_resume_on_other_images_is_warned_of(tmp_path, img_folder):
    """Training images removed, added or replaced between a stop and its resume went unnoticed: the resume could not
    match the uninterrupted run and TRAINING.md named the new count for the whole run. The checkpoint keeps a digest
    of each image's pixels; a resume on other images warns, naming them."""
    from PIL import Image

    cfg = tiny_config(img_folder, steps=4, val_every=0)
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run(steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)  # the same images: no word
    os.remove(os.path.join(img_folder, "im0.png"))
    Image.new("RGB", (36, 40)).save(os.path.join(img_folder, "im1.png"))  # the same name, other pixels
    Image.new("RGB", (40, 40)).save(os.path.join(img_folder, "new.png"))
    with pytest.warns(UserWarning, match=r"the training images differ from those .*checkpoint\.pt was trained on "
                                         r"\(added 'new\.png'; removed 'im0\.png'; changed 'im1\.png'\): the run "
                                         r"goes on with these"):
        Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)


def test_the_log_is_appended_not_rewritten(tmp_path, img_folder, monkeypatch):
    """log.csv was rewritten whole (every row, atomically) at each log step: 0.4 s a write at 50,000 rows, minutes
    over a long run. It is written whole once and after a resume (which drops rows past the checkpoint), and
    appended otherwise; the file is what a whole write gives."""
    import yoda.training.trainer as T

    whole = []
    real = T.atomic_write_text
    monkeypatch.setattr(T, "atomic_write_text",
                        lambda p, s, **k: (whole.append(os.path.basename(p)), real(p, s, **k))[1])
    cfg = tiny_config(img_folder, steps=6, ckpt_every=2, val_every=0)
    tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    tr.run(steps=4)
    assert whole.count("log.csv") == 1  # 4 log steps: one whole write, three appends
    log = tmp_path / "run" / "log.csv"

    def rendered(rows):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=T.CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        return buf.getvalue()

    assert open(log, newline="").read() == rendered(tr.rows) and len(tr.rows) == 4
    with open(log, "a", newline="") as f:  # a row logged after the last checkpoint (a run killed before its next one)
        f.write("5,0.5,0.001,9.0,,\r\n")
    del tr
    whole.clear()
    resumed = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    resumed.run()
    assert whole.count("log.csv") == 1 and [r["step"] for r in resumed.rows] == [1, 2, 3, 4, 5, 6]
    assert open(log, newline="").read() == rendered(resumed.rows)  # the stray row is gone: rewritten whole


def test_a_second_run_into_one_out_is_refused_while_one_trains(tmp_path, img_folder):
    """Two `yoda train --out RUN` at once (a job launched twice) both trained to the end: log.csv interleaved
    both runs' rows, and a run with another config was lost without a word (every file held the other's). The
    run holds RUN (an flock on the folder, released when the process ends): a second one is refused at once."""
    from yoda._io import FolderInUse, folder_lock
    from yoda.training import train_main

    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run, "--out"):
        with pytest.raises(FolderInUse, match=r"^--out .*run is in use by another yoda process; wait for it to end, "
                                              r"or use another folder$"):
            train_main(str(cfg_path), str(run), device="cpu", progress=False)
        assert list(run.iterdir()) == []  # nothing written
        # the busy run's log rows before its first checkpoint: refused, without "this run starts at step 0 and
        # writes its log afresh" first (it did not, and will not)
        (run / "log.csv").write_text("step,loss,lr,time,val_psnr_plain,val_psnr_yoda\n1,0.5,0.001,1.0,,\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(FolderInUse):
                train_main(str(cfg_path), str(run), device="cpu", progress=False)
        (run / "log.csv").unlink()
    assert train_main(str(cfg_path), str(run), device="cpu", progress=False)["start_step"] == 0  # free again


def test_stale_temporary_files_of_a_killed_run_go(tmp_path, img_folder, capsys):
    """Only `yoda upscale` removed the temporary files a run killed mid-write (SIGKILL, a power loss) left next to
    its outputs; `yoda train` (checkpoint, log, weights, record), `yoda eval -o` and `yoda figures` left theirs for
    good. Each now removes those of its own outputs untouched for an hour; a fresh one (another run's) stays, but
    in a training run's folder, which the run holds (a requeued job resumes within minutes of its SIGKILL)."""
    import time

    from yoda._io import STALE_TEMP_S, _create_temp
    from yoda.cli import main
    from yoda.training import train_main

    def temps(folder, names):
        made = {}
        for name, age in names:
            path, _ = _create_temp(str(folder), name)
            os.utime(path, (time.time() - age,) * 2)
            made[name, age] = path
        return made

    old, fresh = STALE_TEMP_S + 60, 60
    run = tmp_path / "run"
    run.mkdir()
    left = temps(run, [("checkpoint.pt", old), ("model.safetensors", old), ("log.csv", fresh), ("mine.txt", old)])
    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    train_main(str(cfg_path), str(run), device="cpu", progress=False)
    assert {k for k, p in left.items() if os.path.exists(p)} == {("mine.txt", old)}
    table = tmp_path / "t" / "rows.csv"
    table.parent.mkdir()
    figs = tmp_path / "figs"
    figs.mkdir()
    left = {**temps(table.parent, [("rows.csv", old)]), **temps(figs, [("fig3_update_ratio.png", old)])}
    kept = temps(table.parent, [("rows.csv", fresh)])  # perhaps another eval's, writing now
    model = str(run / "model.safetensors")
    assert main(["eval", "--images", img_folder, "--model", model, "--steps", "1", "-q", "-o", str(table),
                 "--attention", "edge", "--max-size", "16"]) == 0
    assert main(["figures", "--images", img_folder, "--model", model, "--steps", "1", "-q", "-o", str(figs),
                 "--max-size", "16"]) == 0
    assert not any(os.path.exists(p) for p in left.values()), capsys.readouterr().err
    assert all(os.path.exists(p) for p in kept.values())


def test_a_refused_run_leaves_the_folder_it_made_to_its_holder(tmp_path, img_folder, monkeypatch):
    """This run makes RUN, another process takes it before this one can (the race of two runs started at once):
    the refused run must not remove the folder, now the other run's, even while it is still empty."""
    import contextlib

    import yoda.training.report as report
    from yoda._io import FolderInUse, folder_lock
    from yoda.training import train_main

    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    run, other = tmp_path / "run", contextlib.ExitStack()
    real = report.made_dirs

    def made_then_taken(path):
        made = real(path)
        other.enter_context(folder_lock(path, "--out"))  # the other process, between mkdir and the lock
        return made

    monkeypatch.setattr(report, "made_dirs", made_then_taken)
    with other, pytest.raises(FolderInUse):
        train_main(str(cfg_path), str(run), device="cpu", progress=False)
    assert run.is_dir()  # still there for its holder


def test_resume_refuses_other_config(tmp_path, img_folder, monkeypatch):
    cfg = tiny_config(img_folder, steps=1)
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run()
    # refused before the training images are read and their attention maps made (minutes for a large set)
    import yoda.training.trainer as trainer_mod

    read = []
    real = trainer_mod._data.load_source
    monkeypatch.setattr(trainer_mod._data, "load_source", lambda *a, **k: (read.append(a[0]), real(*a, **k))[1])
    with pytest.raises(ValueError, match="different config.*lr"):
        Trainer(cfg.replace(lr=5e-4), str(tmp_path / "run"), device="cpu", progress=False)
    assert read == []
    # so is a missing validation folder
    gone = cfg.replace(val_every=1, data=dataclasses.replace(cfg.data, val_source=str(tmp_path / "missing")))
    from yoda.data import DataError

    with pytest.raises(DataError, match=r"^data\.val_source \(validation crops, as val_every > 0.*\): image "
                                        f"folder {re.escape(str(tmp_path / 'missing'))} not found"):
        Trainer(gone, str(tmp_path / "run2"), device="cpu", progress=False)
    assert read == [str(tmp_path / "missing")]
    monkeypatch.undo()
    # a difference inside a section names its field (was "differs in: loss"), and its two values (were not said)
    with pytest.raises(ValueError, match=r"differs in: loss.lower_bound: 0.6 there, 0.5 now\)"):
        Trainer(cfg.replace(loss=dataclasses.replace(cfg.loss, lower_bound=0.5)), str(tmp_path / "run"),
                device="cpu", progress=False)
    # so does one in the model's dict, a late key too (was "model: {'kind': 'sr3', ...", cut before it)
    with pytest.raises(ValueError, match=r"differs in: model.dropout: 0.0 there, 0.1 now\)"):
        Trainer(cfg.replace(model={**cfg.model, "dropout": 0.1}), str(tmp_path / "run"), device="cpu", progress=False)
    # the same folder written another way, and how often it logs / validates / checkpoints, may change (were refused)
    rel = os.path.relpath(img_folder)
    again = cfg.replace(data=dataclasses.replace(cfg.data, source="./" + rel, val_source=img_folder + "/"),
                        log_every=5, val_every=3, val_steps=2, ckpt_every=7)
    tr = Trainer(again, str(tmp_path / "run"), device="cpu", progress=False)
    assert tr.step == 1


def test_learning_rate_warmup_then_linear_decay(tmp_path, img_folder):
    cfg = tiny_config(img_folder, steps=20, lr=1e-3, warmup=4, decay_from=10)
    tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    got = [tr.learning_rate(s) for s in (0, 3, 4, 9, 10, 15, 19, 20, 25)]
    want = [1e-3 / 4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3 * 5 / 10, 1e-3 * 1 / 10, 0.0, 0.0]
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    with pytest.raises(ValueError, match="decay_from"):
        tiny_config(img_folder, decay_from=-1)


def test_resume_may_move_the_end_and_the_decay(tmp_path, img_folder):
    """steps and decay_from may change when a run is resumed (training longer, or ending it with a decay)."""
    cfg = tiny_config(img_folder, steps=2)
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rate at step 2 is lr before and after: no jump
        tr = Trainer(cfg.replace(steps=4, decay_from=2), str(tmp_path / "run"), device="cpu", progress=False)
    assert tr.step == 2 and tr.learning_rate(3) == pytest.approx(cfg.lr / 2)
    # a decay that would have started before the step drops the rate at once: lr * (8 - 2) / (8 - 1) at step 2
    with pytest.warns(UserWarning, match=r"learning rate at step 2, where the run resumes, is 0.000857; the run's "
                                         r"config gave 0.001 there \(steps 2, decay_from 0; now steps 8, decay_from 1"):
        Trainer(cfg.replace(steps=8, decay_from=1), str(tmp_path / "run"), device="cpu", progress=False)


def test_psnr_u8_matches_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    from yoda.evaluate import psnr
    from yoda.images import to_uint8
    from yoda.evaluate import psnr_u8

    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 9, 7, generator=g) * 2 - 1
    sr = (hr + 0.1 * torch.randn(2, 3, 9, 7, generator=g)).clamp(-1, 1)
    got = psnr_u8(sr, hr)
    for i in range(2):
        want = peak_signal_noise_ratio(to_uint8(hr[i]), to_uint8(sr[i]), data_range=255)
        assert got[i].item() == pytest.approx(want, abs=1e-9)
        assert psnr(to_uint8(sr[i]), to_uint8(hr[i])) == pytest.approx(want, abs=1e-9)
    # float32 values just above a half level (k + 0.5) / 127.5 - 1: float32 arithmetic rounds them to k, float64
    # to k + 1. psnr_u8 quantises like to_uint8 (what a saved PNG holds), so it agrees with the evaluation
    # metric on these too (a float64 quantiser gives 65, 67, 69, 71 here and a different PSNR)
    x = torch.tensor([-0.4941175878047943, -0.4784313142299652, -0.4627450406551361, -0.447058767080307])
    x = x.view(1, 1, 1, 4)
    assert to_uint8(x).reshape(-1).tolist() == [64, 66, 68, 70]
    zero = torch.zeros_like(x)
    assert psnr_u8(x, zero).item() == pytest.approx(
        peak_signal_noise_ratio(to_uint8(zero[0]), to_uint8(x[0]), data_range=255), abs=1e-9)
    assert torch.equal(psnr_u8(x, x), torch.tensor([math.inf], dtype=torch.float64))
    assert psnr(to_uint8(sr[0]), to_uint8(sr[0])) == math.inf
    # uint8 tensors gave 35.8 dB for two unrelated images (clamped to [-1, 1]); a (C, H, W) tensor one PSNR per
    # channel; numpy arrays an AttributeError
    u8 = torch.from_numpy(to_uint8(hr)).permute(0, 3, 1, 2)
    for bad, exc, what in (((u8, u8), TypeError, "sr must be a float .* got torch.uint8 \\(2, 3, 9, 7\\)"),
                           ((sr[0], hr[0]), ValueError, "sr must be a float .* got torch.float32 \\(3, 9, 7\\)"),
                           ((sr, to_uint8(hr)), TypeError, "hr must be a float .* got uint8 \\(2, 9, 7, 3\\)"),
                           ((sr, hr[..., :4]), ValueError, "sr and hr must have the same shape")):
        with pytest.raises(exc, match=what):
            psnr_u8(*bad)
    # float images in [0, 255] were clamped to white: two different ones scored inf
    with pytest.raises(ValueError, match=r"^sr values must lie in \[-1, 1\]"):
        psnr_u8(u8.float(), u8.float() * 0.5)
    with pytest.raises(ValueError, match=r"^hr values must lie in \[-1, 1\]"):
        psnr_u8(sr, hr * 3)
    assert psnr_u8(sr * 1.2, hr).isfinite().all()  # a little out (LR_MARGIN) is clamped as the saved PNG is
    for bad in (math.nan, math.inf):  # as to_uint8 refuses them (+inf and -inf together passed a first version)
        with pytest.raises(ValueError, match="^sr contains NaN or Inf$"):
            psnr_u8(torch.cat([torch.full_like(sr[..., :1], bad), -torch.full_like(sr[..., :1], bad),
                               sr[..., 2:]], dim=-1), hr)


def test_noise_level_follows_the_space():
    assert LossConfig().noise_level == "continuous"  # SR3: continuous sqrt(alpha_bar)
    assert LossConfig(space="residual").noise_level == "discrete"  # SRDiff: the integer step
    with pytest.raises(ValueError, match='noise_level must be "discrete"'):
        LossConfig(space="residual", noise_level="continuous")


def test_config_refuses_a_model_of_the_other_space_and_a_second_residual_scale(img_folder):
    cfg = tiny_config(img_folder, steps=1)
    for kind in (["sr3"], {"a": 1}):  # unhashable: a TypeError from a dict lookup, the CLI's "internal error"
        with pytest.raises(ValueError, match="model must be a dict with 'kind' in"):
            TrainConfig.from_dict(dict(cfg.to_dict(), model={"kind": kind}))
    srdiff = {"kind": "srdiff", "hidden_size": 8, "dim_mults": [1, 2], "rrdb_num_block": 2, "rrdb_num_feat": 8}
    with pytest.raises(ValueError, match="model.kind 'srdiff' is trained in the residual space.*'pixel'"):
        TrainConfig.from_dict(dict(cfg.to_dict(), model=srdiff))
    loss = dict(cfg.to_dict()["loss"], space="residual", noise_level="discrete", residual_scale=4.0)
    with pytest.raises(ValueError, match=r"model.res_rescale \(2.0\) and loss.residual_scale \(4.0\)"):
        TrainConfig.from_dict(dict(cfg.to_dict(), model=srdiff, loss=loss))
    ok = TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, res_rescale=4.0), loss=loss))
    assert ok.loss.residual_scale == ok.model["res_rescale"] == 4.0
    # upstream SRDiff's own schedule keys were accepted and ignored (the file then claimed a cosine T=100 schedule)
    loss2 = dict(loss, residual_scale=2.0)
    with pytest.raises(ValueError, match=r"model.timesteps \(10\) disagrees with the schedule trained on "
                                         r"\(schedule: 50\)"):
        TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, timesteps=10), loss=loss2))
    with pytest.raises(ValueError, match=r"model.beta_schedule \('cosine'\) disagrees"):
        TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, beta_schedule="cosine"), loss=loss2))
    assert TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, timesteps=50, beta_schedule="linear"),
                                      loss=loss2)).model["timesteps"] == 50
    # and beta_end / beta_s too (the model file's SRDiffConfig said beta_end 0.5 beside a card of 0.02)
    end = cfg.schedule.get("beta_end", 2e-2)
    with pytest.raises(ValueError, match=rf"model.beta_end \(0.5\) disagrees with the schedule trained on "
                                         rf"\(schedule: {end}\)"):
        TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, beta_end=0.5), loss=loss2))
    with pytest.raises(ValueError, match=r"model.beta_s \(0.1\) is no parameter of the linear schedule trained on"):
        TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, beta_s=0.1), loss=loss2))
    assert TrainConfig.from_dict(dict(cfg.to_dict(), model=dict(srdiff, beta_end=end), loss=loss2))


def test_resume_loads_no_code(tmp_path, img_folder):
    """checkpoint.pt is read with weights_only=True: a pickle that would run code is refused, not run."""
    cfg = tiny_config(img_folder, steps=1)
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run()
    assert Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).step == 1  # a real one resumes

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"x": Evil()}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="cannot be resumed: it is corrupt, or holds objects other than tensors"):
        Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_with_a_malformed_run_state_is_refused_by_name(tmp_path, img_folder):
    """A checkpoint whose rows, torch RNG state, step or upsampling were not what a run writes was an internal
    error (KeyError; "RNG state must be a torch.ByteTensor"), a message naming no file, or (step -5) resumed and
    trained 8 steps of a 3-step run."""
    cfg = tiny_config(img_folder, steps=1)
    run = tmp_path / "run"
    Trainer(cfg, str(run), device="cpu", progress=False).run()
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    for change, why in (({"rows": [{"x": 1}]}, "its log rows are not rows of steps"),
                        ({"torch_rng": torch.zeros(3)}, "its torch generator state is not one"),
                        ({"step": -5}, "its step -5 is not a count of steps"),
                        ({"step": "abc"}, "its step 'abc' is not a count of steps"),
                        ({"upsampling": "evil"}, "its upsampling 'evil' is not one of")):
        torch.save({**good, **change}, run / "checkpoint.pt")
        with pytest.raises(ValueError, match=f"^checkpoint {re.escape(str(run))}/checkpoint.pt cannot be resumed: "
                                             f"{re.escape(why)}"):
            Trainer(cfg, str(run), device="cpu", progress=False)
    torch.save({k: v for k, v in good.items() if k != "rows"}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="cannot be resumed: its log rows are not rows of steps"):
        Trainer(cfg, str(run), device="cpu", progress=False)


# ----------------------------------------------------------------------------------------------------------
# Config values checked where the JSON is read (types, scales, the decay), resume past the end, TRAINING.md
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key, value, message", [
    ("loss", "mask_input", "false", "loss.mask_input must be true or false, got 'false'"),  # a truthy string
    ("data", "flips", "no", "data.flips must be true or false, got 'no'"),
    (None, "batch", "2", "batch must be an int, got '2'"),
    (None, "batch", 2.7, "batch must be an int, got 2.7"),  # not "2.7 is not divisible by 1 process"
    (None, "steps", True, "steps must be an int, got True"),
    ("data", "scale", 4.0, "data.scale must be an int, got 4.0"),
    (None, "lr", "0.001", "lr must be a number, got '0.001'"),
    (None, "ema_decay", "0.99", "ema_decay must be a number, got '0.99'"),
    ("loss", "lower_bound", "0.6", "loss.lower_bound must be a number, got '0.6'"),
    ("loss", "noise_level", 1, "loss.noise_level must be a string or null, got 1"),
    (None, "betas", 0.9, "betas must be a list of 2 items, each a number, got 0.9"),
    (None, "betas", [0.9, "0.999"], "betas must be a list of 2 items, each a number, got [0.9, '0.999']"),
    (None, "model", "sr3", "model must be a JSON object, got 'sr3'"),
    (None, "data", [], "data must be a JSON object, got []"),
    (None, "name", 3, "name must be a string, got 3"),
])
def test_config_refuses_json_values_of_the_wrong_type(img_folder, section, key, value, message):
    d = json.loads(tiny_config(img_folder).to_json())
    (d if section is None else d[section])[key] = value
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(d)
    assert str(e.value) == message
    # the same config built in Python took batch="2" and 2.7 (and failed later, or not at all)
    cfg = tiny_config(img_folder)
    with pytest.raises(ValueError) as e:
        if section is None:
            cfg.replace(**{key: value})
        else:
            cfg.replace(**{section: dataclasses.replace(getattr(cfg, section), **{key: value})})
    assert str(e.value).endswith(message.removeprefix(f"{section}.") if section else message)


def test_a_config_built_in_python_takes_numpy_numbers(img_folder):
    """check_field_types refused numpy betas (np.float32 pairs, an array) that the config took before; numpy
    numbers become the Python numbers JSON writes, in every section, without changing the caller's objects."""
    import numpy as np
    from yoda.data import DataConfig

    data = DataConfig(crop=np.int64(64), scale=np.int32(4))
    cfg = tiny_config(img_folder).replace(betas=np.array([0.9, 0.99]), lr=np.float32(0.5), data=data)
    assert cfg.betas == (0.9, 0.99) and type(cfg.lr) is float and cfg.lr == 0.5
    assert type(cfg.data.crop) is int and cfg.data is data
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match=r"^crop must be an int, got '64'"):
        DataConfig(crop="64")  # was "'<' not supported between instances of 'str' and 'int'"


def test_the_loss_api_names_what_a_notebook_gets_wrong(tmp_path, img_folder):
    """A review of yoda.training as a library: an idx given without sqrt_ab was dropped for a drawn one; a float64
    x0 with mask_input was said of A; noise of one image was broadcast to the batch; sqrt_ab 1.5, ab > 1, a bool
    or float idx, a tuple output and a cfg dict failed deep inside or gave a NaN loss; with mask_loss, an Inf
    outside the mask made the loss NaN (0 * Inf); Trainer.run(max_seconds="60") failed after a step, nan never
    stopped; device "cuda:1" / torch.device("cpu") were refused."""
    from yoda.devices import resolve_device

    ab = Schedule.linear(T, 1e-2, 0.3).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, c = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.zeros(2, 3, 8, 8)
    A = torch.rand(2, 1, 8, 8, generator=g)
    cfg = LossConfig(mask_input=True, mask_loss=True, lower_bound=0.3, target="x0")
    net = lambda x, i, s: x * 0.5  # noqa: E731
    idx, sab = torch.tensor([3, 5]), ab[torch.tensor([3, 5])].sqrt()
    for kw, err, said in ((dict(idx=idx), ValueError, "give idx and sqrt_ab together"),
                          (dict(idx=idx[:1], sqrt_ab=sab[:1]), ValueError, r"idx must be a \(2,\) tensor"),
                          (dict(idx=idx.float(), sqrt_ab=sab), ValueError, "idx must hold integer steps in \\[0, 9\\]"),
                          (dict(idx=idx, sqrt_ab=sab * 0 + 1.5), ValueError, r"sqrt_ab must be in \(0, 1\]"),
                          (dict(noise=torch.zeros(1, 3, 8, 8)), ValueError, r"noise must have the shape of x0")):
        with pytest.raises(err, match=said):
            diffusion_loss(net, x0, c, A, ab, cfg, **kw)
    with pytest.raises(ValueError, match=r"noise must have the shape of x0 \(2, 3, 8, 8\), got \(1, 3, 8, 8\)"):
        diffusion_loss(net, x0, c, None, ab, LossConfig(), noise=torch.zeros(1, 3, 8, 8))  # (plain: broadcast)
    with pytest.raises(TypeError, match="x0 must be float32, float16 or bfloat16, got torch.float64"):
        diffusion_loss(net, x0.double(), c.double(), A, ab, cfg)
    with pytest.raises(ValueError, match=r"ab must hold values in \(0, 1\]"):
        diffusion_loss(net, x0, c, A, ab * 0 + 1.5, cfg)
    with pytest.raises(TypeError, match="cfg must be a LossConfig, got dict"):
        diffusion_loss(net, x0, c, A, ab, {"target": "x0"})
    with pytest.raises(TypeError, match="the model output must be a tensor of x0's shape, got tuple"):
        diffusion_loss(lambda x, i, s: (x,), x0, c, A, ab, cfg)
    for bad, err in ((dict(batch=0), ValueError), (dict(batch=-1), ValueError), (dict(ab=[0.5]), ValueError),
                     (dict(generator=0), TypeError), (dict(ab=ab * 0 + 1.5), ValueError)):
        with pytest.raises(err, match=next(iter(bad))):
            draw_noise_level(**{"ab": ab, "batch": 2, "cfg": cfg, **bad})
    # an Inf where the mask excludes the pixel counts nothing: the loss of the same output with 0 there
    noise = torch.randn(2, 3, 8, 8, generator=g)
    out = diffusion_loss(net, x0, c, A, ab, cfg, idx=idx, sqrt_ab=sab, noise=noise)
    tau = step_taus(idx, T, 0.3).view(2, 1, 1, 1)
    poisoned = diffusion_loss(lambda x, i, s: torch.where(A >= tau, x * 0.5, torch.inf), x0, c, A, ab, cfg, idx=idx,
                              sqrt_ab=sab, noise=noise)
    assert 0 < out.active_fraction < 1 and torch.isfinite(poisoned.loss) and poisoned.loss == out.loss
    w = torch.ones((), requires_grad=True)  # and its gradient: L2's backward made 2 * Inf * 0 = NaN of it
    diffusion_loss(lambda x, i, s: torch.where(A >= tau, x * w, torch.inf), x0, c, A, ab,
                   dataclasses.replace(cfg, loss="l2"), idx=idx, sqrt_ab=sab, noise=noise).loss.backward()
    assert torch.isfinite(w.grad) and w.grad != 0
    tr = Trainer(tiny_config(img_folder, val_every=0, steps=3), str(tmp_path / "run"), device=torch.device("cpu"),
                 progress=False)
    for bad in ("60", float("nan"), -5, True):  # (inf: no limit)
        with pytest.raises(ValueError, match=f"max_seconds must be a number >= 0, or None, got {bad!r}"):
            tr.run(max_seconds=bad)
    assert tr.step == 0
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device cuda:1 requested but there is no such CUDA GPU"):
            resolve_device("cuda:1")


def test_a_yoda_loss_whose_masks_are_all_ones_is_warned_of():
    """loss.lower_bound >= 1 with mask_input / mask_loss trained plain training under a YODA label (TRAINING.md,
    the plot's "active pixels only"), without a word."""
    for kw in (dict(mask_input=True), dict(mask_loss=True)):
        with pytest.warns(UserWarning, match=r"lower_bound 1.5 >= 1 makes every YODA mask all ones"):
            LossConfig(lower_bound=1.5, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LossConfig(lower_bound=1.5)  # plain: l is unused
        LossConfig(lower_bound=0.6, mask_input=True)


def test_config_takes_json_ints_for_numbers_and_null_for_optional(img_folder):
    d = json.loads(tiny_config(img_folder).to_json())
    d.update(lr=1, betas=[0, 0], ema_decay=0)
    d["loss"].update(lower_bound=1, noise_level=None)
    with pytest.warns(UserWarning, match="lower_bound 1 >= 1 makes every YODA mask all ones"):
        cfg = TrainConfig.from_dict(d)
    assert (cfg.lr, cfg.betas, cfg.ema_decay, cfg.loss.lower_bound, cfg.loss.noise_level) == \
        (1, (0.0, 0.0), 0, 1.0, "continuous")


def test_cli_says_a_wrong_config_type_in_one_line(tmp_path, img_folder, capsys):
    from yoda.cli import main

    d = json.loads(tiny_config(img_folder).to_json())
    d["loss"]["mask_input"] = "false"
    (tmp_path / "c.json").write_text(json.dumps(d))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o"), "-q"]) == 2
    cfg_file = f"config file {tmp_path / 'c.json'}: "  # the file that holds the key, which the error names
    assert capsys.readouterr().err == f"yoda: error: {cfg_file}loss.mask_input must be true or false, got 'false'\n"
    assert not (tmp_path / "o").exists()
    d["loss"]["mask_input"], d["seed"] = True, "0"  # a config key is named as in the config, not as an option
    (tmp_path / "c.json").write_text(json.dumps(d))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o"), "-q"]) == 2
    assert capsys.readouterr().err == f"yoda: error: {cfg_file}seed must be an int, got '0'\n"
    # a typo in model or sampling was said without its section, or without the key, and with no suggestion
    d["seed"] = 0
    for section, typo, said in (("model", "inner_chanel", "model: SR3Config: unknown key(s) inner_chanel (did you "
                                                            "mean inner_channel?); known: "),
                                ("sampling", "stpes", "unknown key(s) in sampling: stpes (did you mean steps?); "
                                                      "known: lower_bound, sampler, steps")):
        (tmp_path / "c.json").write_text(json.dumps(dict(d, **{section: dict(d[section], **{typo: 2})})))
        assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o"), "-q"]) == 2
        err = capsys.readouterr().err
        # the model's keys too (they were read when it was built, and said without the file; a review)
        assert err.startswith(f"yoda: error: {cfg_file}{said}") and err.count("\n") == 1, err


def test_config_refuses_a_model_scale_other_than_the_data_scale(img_folder):
    d = json.loads(tiny_config(img_folder).to_json())
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(dict(d, model=dict(TINY_MODEL, scale=2)))
    assert str(e.value) == ("model.scale (2) and data.scale (4) must be equal: the model file would say x2 but be "
                            "trained on x4 LR images")
    assert TrainConfig.from_dict(dict(d, model=dict(TINY_MODEL, scale=None))).model["scale"] is None  # unknown
    # SRDiff's scale is sr_scale, 4 unless given
    srdiff = {"kind": "srdiff", "hidden_size": 8, "dim_mults": [1, 2], "rrdb_num_block": 2, "rrdb_num_feat": 8}
    res = dict(loss={"space": "residual"}, data=dict(d["data"], scale=2))
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(dict(d, model=srdiff, **res))
    assert str(e.value).startswith("model.sr_scale (4) and data.scale (2) must be equal")
    assert TrainConfig.from_dict(dict(d, model=dict(srdiff, sr_scale=2), **res)).data.scale == 2


def test_config_refuses_a_decay_that_starts_at_or_after_the_end(img_folder):
    # or in the warm-up: the rate was held there, then dropped at once (0.89 lr at step 200 for 100 / 200 / 1000)
    with pytest.raises(ValueError, match=r"^decay_from \(100\) must not be below warmup \(200\)"):
        tiny_config(img_folder, steps=1000, warmup=200, decay_from=100)
    assert tiny_config(img_folder, steps=1000, warmup=200, decay_from=200).decay_from == 200
    for decay_from in (10, 3):
        with pytest.raises(ValueError) as e:
            tiny_config(img_folder, steps=3, decay_from=decay_from)
        assert str(e.value) == (f"decay_from ({decay_from}) must be below steps (3), the step at which the learning "
                                f"rate has decayed to 0 (decay_from 0: no decay)")
    cfg = tiny_config(img_folder, steps=3, decay_from=0)  # 0: no decay
    with pytest.raises(ValueError, match=r"decay_from \(10\) must be below steps \(3\)"):
        cfg.replace(decay_from=10)  # what yoda train --steps 3 --decay-from 10 does
    assert cfg.replace(decay_from=2).decay_from == 2


def test_steps_below_the_configs_decay_name_the_option(tmp_path, img_folder):
    """--steps 250 against a config's decay_from 300 said "must be below steps (250)" without naming --steps (as
    --decay-from's error names its option)."""
    from yoda.training import train_main

    path = tmp_path / "c.json"
    path.write_text(tiny_config(img_folder, steps=10, decay_from=5).to_json())
    with pytest.raises(ValueError, match=r"^--steps 4: decay_from \(5\) must be below steps \(4\)"):
        train_main(str(path), str(tmp_path / "run"), steps=4, device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_main_refuses_a_checkpoint_past_the_steps_and_records_the_flips(tmp_path, img_folder):
    from yoda.training import train_main

    path, out = tmp_path / "c.json", str(tmp_path / "run")
    path.write_text(tiny_config(img_folder, data=dict(tiny_config(img_folder).to_dict()["data"], flips=False),
                                steps=2, ckpt_every=0).to_json())
    assert train_main(str(path), out, device="cpu", progress=False)["steps"] == 2
    record = (tmp_path / "run" / "TRAINING.md").read_text()
    assert ", random 16x16 HR crops without flips, LR = " in record and "with flips" not in record
    assert f"- data: the images in {img_folder} (2 images), random" in record  # how many it trained on
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ValueError) as e:
        train_main(str(path), out, steps=1, device="cpu", progress=False)
    assert str(e.value) == f"the checkpoint in {out} is at step 2, past --steps 1: nothing to train (give more " \
                           f"steps, or another --out)"
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights  # nothing exported again
    path.write_text(tiny_config(img_folder, steps=4, warmup=1, decay_from=2).to_json())
    train_main(str(path), str(tmp_path / "flips"), device="cpu", progress=False)
    record = (tmp_path / "flips" / "TRAINING.md").read_text()
    assert ", random 16x16 HR crops with flips, LR = " in record
    # the learning-rate schedule (it said only "AdamW lr 0.001"), and what the held-out check does recognise
    assert "; AdamW lr 0.001, warm-up 1 step, linear decay from step 2 to 0 at step 4)" in record
    assert "refused as held out (by content, whole images, not crops): astronaut" in record


def test_trainer_refuses_held_out_images_by_content(tmp_path, img_folder):
    """A data folder holding a held-out image is refused, naming the file and the image, whatever the file's name:
    the picture itself, a resized JPEG copy, a grey, mirrored, flipped, turned or darkened copy. A user's own
    picture named like one trains. TRAINING.md says the model never saw them (a renamed or resized copy trained
    before; a flipped or turned one until the eight orientations were compared, and a copy at 5% of the brightness
    until the thumbnails were left unrounded)."""
    import io

    import numpy as np
    from PIL import Image

    from yoda.data import BUILTIN_TRAIN, HELD_OUT, DataError, builtin_image, load_source
    from yoda.heldout import held_out_lines
    from yoda.photos import HELD_OUT_PHOTOS

    bad = os.path.join(img_folder, "astronaut.png")
    Image.fromarray(builtin_image("astronaut")).save(bad)  # the picture itself, as `yoda data export` writes
    named = os.path.join(img_folder, f"{HELD_OUT_PHOTOS[0]}.png")  # a photograph's name, on a picture of one's own
    Image.fromarray(np.full((40, 40, 3), 9, np.uint8)).save(named)
    small = os.path.join(img_folder, "small.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small)
    tiny_copy = os.path.join(img_folder, "mine.png")  # too small and a copy: one line, one image
    Image.fromarray(builtin_image("rocket")).resize((12, 12)).save(tiny_copy)
    with pytest.raises(DataError) as e:  # with images too small: all in one error (it took a run each)
        Trainer(tiny_config(img_folder), str(tmp_path / "run"), device="cpu", progress=False)
    assert str(e.value) == (
        f"data.source: 4 image(s) of {img_folder} cannot be used (move them out, or fix them): image {tiny_copy} is "
        f"12x12, smaller than the crop size data.crop 16; image {small} is 8x8, smaller than the crop size data.crop "
        f"16; {bad} is held out for evaluation (yoda.data.HELD_OUT); {named} is named like {HELD_OUT_PHOTOS[0]}, a "
        f"photograph held out for evaluation (yoda.photos.HELD_OUT_PHOTOS)")

    def copy(name, width, grey=False):
        im = Image.fromarray(builtin_image(name))
        im = im.resize((width, round(width * im.height / im.width)), Image.BICUBIC).convert("L" if grey else "RGB")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=50)
        return np.asarray(Image.open(buf).convert("RGB"))

    chelsea, own = builtin_image("chelsea"), np.zeros((32, 32, 3), np.uint8)
    for held in HELD_OUT:
        assert held_out_lines([("d/own.png", own), ("d/im7.jpg", copy(held, 301, grey=held == "coffee"))]) == [
            f"d/im7.jpg is a copy of {held}, which is held out for evaluation (yoda.data.HELD_OUT)"]
    mirrored, brighter = builtin_image("rocket")[:, ::-1], np.clip(builtin_image("astronaut") * 0.9 + 20, 0, 255)
    turned, turned_mirrored = np.rot90(builtin_image("coffee")), np.rot90(builtin_image("chelsea")[:, ::-1], 3)
    for held, a in (("rocket", mirrored), ("astronaut", brighter.astype(np.uint8)), ("coffee", turned),
                    ("chelsea", turned_mirrored), ("rocket", np.rot90(builtin_image("rocket"), 2)),
                    ("rocket", builtin_image("rocket")[::-1]), ("chelsea", np.round(builtin_image("chelsea") * 0.05).astype(np.uint8))):
        assert held_out_lines([("d/x.png", a)]) == [
            f"d/x.png is a copy of {held}, which is held out for evaluation (yoda.data.HELD_OUT)"]
    with pytest.raises(DataError, match=r"^source 'heldout': astronaut is held out for evaluation \(yoda.data.HELD_OUT\); "
                                        r"coffee is held out"):
        load_source("heldout", vet=held_out_lines)
    # pictures that are not held out train, whatever their names: flat ones, a smooth gradient of mate-Wood's
    # aspect (its signature is the flattest, 6 levels from a plane), crops, other pictures
    y, x = np.mgrid[0:480, 0:640]
    gradient = np.repeat((209 + 10.8 * (x / 640 - 0.5) - 7.8 * (y / 480 - 0.5))[..., None], 3, -1).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flat picture is no copy, without a division by its zero deviation
        assert not held_out_lines([("d/im0.png", own), ("camera", own), ("d/cat.jpg", own),
                                   ("d/coffee.png", chelsea[:200]), ("d/grad.png", gradient),
                                   ("d/grey.png", np.full((480, 640, 3), 128, np.uint8))]
                                  + [(n, builtin_image(n)) for n in BUILTIN_TRAIN])


def test_validation_images_that_are_training_images_are_warned_of(tmp_path, img_folder):
    """A run's own split leaked silently: a validation image that is a copy of a training image (the same file, a
    re-encoded or grey copy) scored the model on what it trains on. Warned of by content before any step, naming
    both (a warning: a thumbnail also matches different pictures of one layout); images that are only alike (a
    crop, another picture) are no copies."""
    from PIL import Image

    from yoda.data import builtin_image

    val = tmp_path / "val"
    val.mkdir()
    train = sorted(os.listdir(img_folder))
    shutil.copy(os.path.join(img_folder, train[0]), val / "same.png")
    Image.open(os.path.join(img_folder, train[1])).convert("L").save(val / "grey.jpg", quality=60)
    Image.fromarray(builtin_image("camera")).save(val / "other.png")
    cfg = tiny_config(img_folder, val_every=1, data={**json.loads(tiny_config(img_folder).to_json())["data"],
                                                      "val_source": str(val), "val_crops": 2})
    with pytest.warns(UserWarning) as seen:
        Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    said = [str(w.message) for w in seen if "look like copies" in str(w.message)]
    # at the caller's line (a decorator around Trainer.__init__ made it contextlib's)
    assert [w.filename for w in seen if "look like copies" in str(w.message)] == [__file__]
    assert said == [
        f"validation images (data.val_source) look like copies of training images (data.source): "
        f"{val / 'grey.jpg'} like {os.path.join(img_folder, train[1])}, {val / 'same.png'} like "
        f"{os.path.join(img_folder, train[0])} (by a 16x16 thumbnail, as held-out images are told; pictures of one "
        f"layout look alike too); a copy's validation PSNR scores an image the model trains on: move it out of one "
        f"of the folders"]
    os.remove(val / "same.png"), os.remove(val / "grey.jpg")
    Image.open(os.path.join(img_folder, train[0])).crop((0, 0, 40, 40)).save(val / "crop.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a crop and another picture: no word
        Trainer(cfg, str(tmp_path / "run2"), device="cpu", progress=False)


def test_heldout_images_unused_are_warned_of(tmp_path, img_folder):
    """Images put in --data-dir's heldout/ were ignored without a word by a config that does not validate
    (default_x4): warned of, naming --val-every; a validating config, or an empty heldout/, says nothing."""
    from yoda.training.report import with_data_dir

    d = tmp_path / "data"
    shutil.copytree(img_folder, d / "train")
    (d / "heldout").mkdir()
    cfg = tiny_config(img_folder, val_every=0, data={"source": "builtin", "crop": 16, "scale": 4,
                                                      "val_source": "heldout", "val_crops": 2, "val_crop": 16})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_data_dir(cfg, str(d))  # empty heldout/
        shutil.copy(os.path.join(img_folder, "im0.png"), d / "heldout")
        assert with_data_dir(cfg.replace(val_every=5), str(d)).data.val_source == str(d / "heldout")
    with pytest.warns(UserWarning, match=f"^--data-dir {re.escape(str(d))}: its heldout/ images are not used: this "
                                         r"config does not validate \(val_every 0, data.val_crops 2\); --val-every N "
                                         "validates on them every N steps$"):
        with_data_dir(cfg, str(d))
    no_crops = cfg.replace(val_every=5, data=dataclasses.replace(cfg.data, val_crops=0))
    with pytest.warns(UserWarning, match=r"\(val_every 5, data.val_crops 0\); give data.val_crops > 0 in a copy of "
                                         "the config to validate on them$"):  # (--val-every would not help)
        with_data_dir(no_crops, str(d))
    # the held-out sets `yoda data export` / `build` write are no images put there: README's own command (default_x4
    # on an export or a build) warned at every run
    os.remove(d / "heldout" / "im0.png")
    shutil.copy(os.path.join(img_folder, "im0.png"), d / "heldout" / "coffee.png")  # an export's name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_data_dir(cfg, str(d))
        shutil.copy(os.path.join(img_folder, "im0.png"), d / "heldout" / "mine.png")
        (d / "manifest.json").write_text("{}")  # a build's folder
        with_data_dir(cfg, str(d))
    os.remove(d / "manifest.json")
    with pytest.warns(UserWarning, match="its heldout/ images are not used"):
        with_data_dir(cfg, str(d))


def test_held_out_signatures_are_the_images():
    """yoda.heldout.SIGNATURES are the held-out images' own: remade from scikit-image's pictures (and from the
    installed photographs, where their packages are), they agree within one level; every held-out image is
    recognised as itself, and the other images yoda ships or builds from are recognised as nothing."""
    import numpy as np
    from PIL import Image

    from yoda import heldout
    from yoda.data import BUILTIN_TRAIN, HELD_OUT, builtin_image
    from yoda.photos import HELD_OUT_PHOTOS, installed_photos

    installed = installed_photos()
    images = {n: builtin_image(n) for n in HELD_OUT}
    images.update({n: np.asarray(Image.open(installed[n][2]).convert("RGB")) for n in HELD_OUT_PHOTOS
                   if n in installed})
    assert set(heldout.SIGNATURES) == set(HELD_OUT) | set(HELD_OUT_PHOTOS)
    for name, (aspect, data) in heldout.make_signatures(images).items():
        want_aspect, want = heldout.SIGNATURES[name]
        assert aspect == pytest.approx(want_aspect, rel=1e-4), name
        diff = np.frombuffer(base64.b64decode(data), np.uint8).astype(int) - np.frombuffer(
            base64.b64decode(want), np.uint8)
        assert np.abs(diff).max() <= 1, name
        assert heldout.held_out_copy(images[name]) == name
    others = [builtin_image(n) for n in BUILTIN_TRAIN]
    others += [np.asarray(Image.open(p).convert("RGB").reduce(4)) for n, (_, _, p) in sorted(installed.items())
               if n not in HELD_OUT_PHOTOS]
    assert [heldout.held_out_copy(a) for a in others] == [None] * len(others)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_stops_after_the_step_and_saves(tmp_path, img_folder, monkeypatch, sig):
    """Ctrl-C during yoda train saved nothing (with ckpt_every 0, the default, the whole run was lost). Now the
    first one stops after the step in progress and saves as a time-out does; the run resumes bit-exactly. SIGTERM
    (SLURM, Kubernetes, torchrun stopping a job) killed the run without saving: it is handled the same way, and
    SIGHUP too (an ssh session dropped without nohup or tmux)."""
    import signal

    from yoda.training.stopping import STOP_SIGNALS

    sig = getattr(signal, sig)
    assert sig in STOP_SIGNALS  # (else the signal below ends the test's process)
    cfg = tiny_config(img_folder, steps=6, ckpt_every=0, val_every=0)
    full = Trainer(cfg, str(tmp_path / "full"), device="cpu", progress=False)
    full.run()
    tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    real_step = tr.train_step

    def step_then_ctrl_c():
        loss = real_step()
        if tr.step == 2:
            signal.raise_signal(sig)  # the handler sets the flag; the step in progress finishes
        return loss

    monkeypatch.setattr(tr, "train_step", step_then_ctrl_c)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    summary = tr.run()
    assert {s: signal.getsignal(s) for s in before} == before  # restored
    assert summary["interrupted"] and summary["signal"] == sig and summary["steps"] == 2
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
    resumed = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    assert resumed.step == 2
    assert not resumed.run()["interrupted"]
    a, b = full.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nohups_ignored_hangup_stays_ignored():
    """Under nohup (SIGHUP ignored) a run goes on when its terminal goes: the trainer leaves SIGHUP as it finds it."""
    import signal

    from yoda.training.stopping import stop_on_interrupt

    was = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        flag, old = stop_on_interrupt()
        for s, h in old.items():
            signal.signal(s, h)
        assert signal.SIGHUP not in old and set(old) == {signal.SIGINT, signal.SIGTERM}
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, was)


def test_a_signal_during_validation_stops_at_that_step(tmp_path, img_folder, monkeypatch):
    """A Ctrl-C / SIGTERM while the run validated (20 s at val_steps 200) let it train one more step before it
    stopped; it stops at the validated step now, its row whole, and resumes bit-exactly."""
    import signal

    cfg = tiny_config(img_folder, steps=6, ckpt_every=0, val_every=2)
    full = Trainer(cfg, str(tmp_path / "full"), device="cpu", progress=False)
    monkeypatch.setattr(full, "validate", lambda: {"val_psnr_plain": 20.0})
    full.run()
    tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    monkeypatch.setattr(tr, "validate", lambda: signal.raise_signal(signal.SIGTERM) or {"val_psnr_plain": 20.0})
    summary = tr.run()
    assert summary["interrupted"] and summary["steps"] == 2  # (3 before)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [(r["step"], r["val_psnr_plain"]) for r in rows][-1] == ("2", "20")
    resumed = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    monkeypatch.setattr(resumed, "validate", lambda: {"val_psnr_plain": 20.0})
    assert resumed.step == 2 and not resumed.run()["interrupted"]
    a, b = full.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_saves_without_validating_and_a_time_budget_validates(tmp_path, img_folder, monkeypatch):
    """A stop by Ctrl-C / SIGTERM validated the EMA before saving: 33 s after SIGTERM with compare_yoda's
    validation, past Kubernetes' 30 s grace period and torchrun's. A signal's stop saves at once; a --minutes stop
    still validates the model it ends with."""
    import signal

    cfg = tiny_config(img_folder, steps=6, ckpt_every=0, val_every=4)
    sigterm = lambda: signal.raise_signal(signal.SIGTERM)  # noqa: E731
    for name, stop, at in (("signal", sigterm, 2), ("signal_at_val_step", sigterm, 4), ("budget", None, 2)):
        tr = Trainer(cfg, str(tmp_path / name), device="cpu", progress=False)
        real_step, validated = tr.train_step, []
        monkeypatch.setattr(tr, "validate", lambda: validated.append(tr.step) or {"val_psnr_plain": 20.0})

        def step_then_stop(stop=stop, tr=tr, real_step=real_step, at=at):
            loss = real_step()
            if tr.step == at and stop is not None:
                stop()
            return loss

        monkeypatch.setattr(tr, "train_step", step_then_stop)
        with monkeypatch.context() as m:
            if stop is None:  # --minutes: 10 s a step, so the budget of 15 s ends after step 2
                import yoda.training.trainer as trainer_module

                m.setattr(trainer_module.time, "perf_counter", lambda tr=tr: 10.0 * tr.step)
            summary = tr.run(max_seconds=None if stop else 15.0)
        assert summary["steps"] == at and (tmp_path / name / "checkpoint.pt").is_file()
        assert validated == ([] if stop else [2]), (name, validated)
    # the validation a signal skipped at step 4 (val_every) is made when the run resumes, before it trains on:
    # its row had no PSNR for good (a resume replaces only a stop's own row, not a regular one)
    shutil.copytree(tmp_path / "signal_at_val_step", tmp_path / "no_step_left")
    tr = Trainer(cfg, str(tmp_path / "no_step_left"), device="cpu", progress=False)
    monkeypatch.setattr(tr, "validate", lambda: {"val_psnr_plain": 21.0})
    tr.run(steps=4)  # nothing left to train: the owed row is still written
    rows = list(csv.DictReader(open(tmp_path / "no_step_left" / "log.csv")))
    assert [(r["step"], r["val_psnr_plain"]) for r in rows if r["step"] == "4"] == [("4", "21")]
    tr = Trainer(cfg, str(tmp_path / "signal_at_val_step"), device="cpu", progress=False)
    validated = []
    monkeypatch.setattr(tr, "validate", lambda: validated.append(tr.step) or {"val_psnr_plain": 20.0})
    tr.run()
    assert validated == [4, 6]
    rows = list(csv.DictReader(open(tmp_path / "signal_at_val_step" / "log.csv")))
    assert [(r["step"], r["val_psnr_plain"]) for r in rows if r["step"] in ("4", "6")] == [("4", "20"), ("6", "20")]


@pytest.mark.parametrize("rank", [None, "1"])
def test_a_second_signal_aborts_as_its_kind(rank, monkeypatch, capsys):
    """The second SIGTERM while training raised KeyboardInterrupt: `yoda: interrupted`, exit 130. It is
    errors.Terminated now (`yoda: terminated (SIGTERM)`, 143); a second Ctrl-C stays KeyboardInterrupt. Under
    torchrun every rank printed "stopping after this step": rank 0 says it."""
    import signal

    from yoda.errors import Terminated
    from yoda.training.stopping import stop_on_interrupt

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    @contextlib.contextmanager
    def stop_handlers():
        flag, old = stop_on_interrupt()
        try:
            yield flag
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    for sig, want in ((signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)):
        with stop_handlers() as flag:
            signal.raise_signal(sig)
            assert flag == [sig]
            err = capsys.readouterr().err  # one line, prefixed as the CLI's others (it began with a blank line)
            said = err.count("stopping after this step and saving")
            assert said == (1 if rank is None else 0)
            assert err == ("" if rank is not None else f"yoda: {'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'}: "
                           f"stopping after this step and saving (a second one aborts without saving)\n"), err
            with pytest.raises(want):
                signal.raise_signal(sig)
    # Ctrl-C under torchrun: torchrun forwards the SIGINT, then SIGTERMs the ranks still running (saving); that
    # SIGTERM aborted without saving. It is the same stop there; a second Ctrl-C or SIGTERM after it aborts. In one
    # process a SIGTERM after a Ctrl-C (a job's time limit) still aborts at once
    monkeypatch.setenv("WORLD_SIZE", "2")
    for second, want in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)):
        with stop_handlers() as flag:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            assert flag == [signal.SIGINT, signal.SIGTERM]
            with pytest.raises(want):
                signal.raise_signal(second)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun --nproc-per-node 1: torchrun all the same
    with stop_handlers() as flag:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
        assert flag == [signal.SIGINT, signal.SIGTERM]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with stop_handlers():
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)


def test_ctrl_c_during_the_export_does_not_cut_it_short(tmp_path, img_folder, monkeypatch):
    """The stop handlers were put back before the weights were exported: a Ctrl-C then (the first one, which
    promises to save) aborted the export and left no model file. Now only a second one aborts."""
    import signal

    cfg = tiny_config(img_folder, steps=2, ckpt_every=0, val_every=0)
    tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    real = tr.export

    def ctrl_c_then_export(path):
        signal.raise_signal(signal.SIGINT)
        real(path)

    monkeypatch.setattr(tr, "export", ctrl_c_then_export)
    tr.run()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "config.json", "log.csv",
                                                                     "model.safetensors"]


def test_out_and_weights_are_checked_before_training(tmp_path, img_folder, monkeypatch):
    """An --out that cannot be written, or a folder where a run file goes, failed only after training (with
    log_every and ckpt_every 0, after every step), in errno text that did not name --out."""
    import yoda.data
    from yoda.training.report import train_main

    monkeypatch.setattr(yoda.data, "load_source", lambda *a, **k: pytest.fail("read images before checking --out"))
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(tiny_config(img_folder, log_every=0, ckpt_every=0).to_json())
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="--out .*afile: cannot create the folder"):
        train_main(str(cfg_path), str(tmp_path / "afile"), device="cpu", progress=False)
    with pytest.raises(NotADirectoryError, match="--out"):
        train_main(str(cfg_path), str(tmp_path / "afile" / "run"), device="cpu", progress=False)
    (tmp_path / "run" / "model.safetensors").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"--weights-name: .*model.safetensors is a folder"):
        train_main(str(cfg_path), str(tmp_path / "run"), device="cpu", progress=False)
    (tmp_path / "run2" / "log.csv").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"--out: .*log.csv is a folder"):
        train_main(str(cfg_path), str(tmp_path / "run2"), device="cpu", progress=False)
    for name in ("model.pt", ".safetensors"):  # (the suffix alone wrote a hidden file that ls does not show)
        with pytest.raises(ValueError, match=rf"'{name}' must be a name ending in .safetensors"):
            train_main(str(cfg_path), str(tmp_path / "run3"), device="cpu", progress=False, weights_name=name)
    assert not (tmp_path / "run3").exists()


def test_resume_under_another_weights_name_says_the_old_file_stays(tmp_path, img_folder):
    """A resume with another --weights-name wrote other.safetensors beside the first session's model.safetensors
    without a word: the stale file was the one a user picked up."""
    import warnings

    from yoda.training import train_main

    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    run = tmp_path / "run"
    train_main(str(cfg_path), str(run), device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same name again says nothing
        train_main(str(cfg_path), str(run), device="cpu", progress=False, steps=2)
    with pytest.warns(UserWarning, match=rf"^--out {re.escape(str(run))} also holds model\.safetensors: weights of an "
                                         r"earlier session under another --weights-name, left as they are; this run "
                                         r"writes other\.safetensors$"):
        train_main(str(cfg_path), str(run), device="cpu", progress=False, steps=3, weights_name="other.safetensors")
    assert (run / "other.safetensors").is_file() and (run / "model.safetensors").is_file()
    # the file a fine-tune started from (--init), kept in its --out, is no earlier session's weights
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    shutil.copy(run / "model.safetensors", tuned / "init.safetensors")
    train_main(str(cfg_path), str(tuned), device="cpu", progress=False, init=str(tuned / "init.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_main(str(cfg_path), str(tuned), device="cpu", progress=False, steps=2,
                   init=str(tuned / "init.safetensors"))


def test_a_long_load_error_is_cut_between_words():
    """The checkpoint's load error was cut at 300 characters mid-word ("... transferred incorrectly, o);")."""
    from yoda.checkpoint import first_line as _first_line

    text = " ".join(["word"] * 100) + " incorrectly, or the file is corrupt\nsecond line"
    cut = _first_line(text)
    assert len(cut) <= 300 and cut.endswith("word ...") and "second" not in cut
    assert _first_line("short\nnext") == "short" and _first_line("  ") == "empty" and _first_line("") == "empty"


@pytest.mark.parametrize("content, message", [
    (b"\x80garbage bytes, a pickle's start", r"it is corrupt or truncated \(IndexError"),
    (b"\x89PNG\r\n\x1a\n\x00", r"it is not a PyTorch checkpoint \(it starts with b'\\x89PNG\\r\\n\\x1a\\n'\)"),
    (b"", r"it is not a PyTorch checkpoint \(it is empty\)"),
    ("no-config", r"it is not a yoda training checkpoint \(no config, model, optimiser and step\)"),
    ("wrong-shape", r"its tensors do not fit this config's model \(Error\(s\) in loading state_dict"),
    ("foreign-pickle", r"holds objects other than tensors and plain data \(Unsupported global: GLOBAL "
                       r"datetime.date\)"),
    ("deflated", r"its zip entries expand to \d+ bytes from \d+ on disk \(compressed records"),
    ("damaged", r"it is corrupt: Bad CRC-32 for file '[^']*data/0' \(a damaged copy or disk\)"),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's, of the garbage bytes
def test_an_unusable_checkpoint_says_what_to_do(tmp_path, img_folder, content, message, flip_record_byte):
    """A checkpoint without a config, or with tensors of another shape, gave a traceback; a corrupt one torch's
    advice to load it with weights_only=False (unsafe), with terminal colour codes; an image saved over it is
    named by how it begins, as yoda.load names one."""
    import datetime

    cfg = tiny_config(img_folder, steps=2, val_every=0)
    tr = Trainer(cfg, str(tmp_path / "ok"), device="cpu", progress=False)
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / "checkpoint.pt"
    if isinstance(content, bytes):
        ckpt.write_bytes(content)
    elif content == "no-config":
        torch.save({"model": tr.model.state_dict()}, ckpt)
    elif content == "deflated":  # stored records recompressed: a few KB that torch.load would unpack to 4 MB
        torch.save({"model": torch.zeros(1 << 20)}, tmp_path / "stored.pt")
        with zipfile.ZipFile(tmp_path / "stored.pt") as src, zipfile.ZipFile(ckpt, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
    elif content == "damaged":  # a byte of a weight flipped on disk: resumed with a weight of 4900 (the loss 230x)
        torch.save(tr.state_dict(), ckpt)
        flip_record_byte(ckpt, "data/0")
    elif content == "wrong-shape":
        st = tr.state_dict()
        k = next(iter(st["model"]))
        st["model"][k] = torch.zeros(1)
        torch.save(st, ckpt)
    else:
        torch.save({"config": {}, "when": datetime.date(2026, 12, 3)}, ckpt)
    with pytest.raises(ValueError) as e:
        Trainer(cfg, str(run), device="cpu", progress=False)
    text = str(e.value)
    assert text.startswith(f"checkpoint {ckpt} cannot be resumed: ")
    assert re.search(message, text), text
    assert text.endswith("delete it to start this run afresh, or train into another --out")
    assert "\x1b" not in text and "weights_only" not in text and "\n" not in text


@pytest.mark.parametrize("key, value, message", [
    ("name", "../../escaped", "name must be a plain folder name"),
    ("name", "/tmp/abs", "name must be a plain folder name"),
    ("name", "", "name must be a plain folder name"),
    # names that are another drive, a hidden stream or a device on Windows: one rule everywhere (yoda._io.unportable)
    ("name", "D:exp", r"name must be a plain folder name .*got 'D:exp' \(characters Windows refuses: ':'\)"),
    ("name", "CON", r"got 'CON' \(a device name on Windows \(CON\)\)"),
    ("name", "run.", r"got 'run.' \(a name ending in a dot or a space"),
    ("name", "r" * 256, r"\(longer than 255 bytes, the most a file system takes\)"),
    ("seed", -1, r"seed must be an int in \[0, 2\*\*32 - 1\], got -1"),
    ("seed", 2**70, r"seed must be an int in \[0, 2\*\*32 - 1\]"),
    ("betas", [0.9, 1.5], r"betas must be two numbers in \[0, 1\) \(AdamW's\), got \[0.9, 1.5\]"),
    ("weight_decay", -1, "weight_decay must be a finite number >= 0, got -1"),
    ("lr", 1e400, "lr must be a finite number > 0, got inf"),
    ("data", {"scale": 0}, "data: scale must be >= 1, got 0"),
])
def test_config_values_are_checked_naming_the_key(img_folder, key, value, message):
    d = json.loads(tiny_config(img_folder).to_json())
    d[key] = dict(d[key], **value) if isinstance(value, dict) else value
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(d)


def test_config_file_that_is_not_utf8_and_a_bad_schedule_are_named(tmp_path, img_folder):
    p = tmp_path / "c.json"
    p.write_bytes(b'{"name": "\xc8\xff"}')
    with pytest.raises(ValueError, match=r"config file .*c.json is not UTF-8 text"):
        TrainConfig.load(str(p))
    with pytest.raises(ValueError, match=r"config schedule \{'kind': 'linear', 'T': 0\}: "):
        tiny_config(img_folder).replace(schedule={"kind": "linear", "T": 0})  # (refused as the config is made)
    # TrainConfig.load checks the schedule and the model's arguments, naming the file (they were refused only when
    # the Trainer was built, without it)
    for bad, said in (({"schedule": {"kind": "linear", "T": 0}}, r"config schedule \{'kind': 'linear', 'T': 0\}: "),
                      ({"model": dict(TINY_MODEL, inner_channel=-1)}, r"model: SR3Config\.inner_channel must be a "
                                                                      r"positive int, got -1")):
        p.write_text(json.dumps(dict(json.loads(tiny_config(img_folder).to_json()), **bad)))
        with pytest.raises(ValueError, match=rf"^config file {re.escape(str(p))}: {said}"):
            TrainConfig.load(str(p))
    # Notepad's BOM is read past (Python's "Unexpected UTF-8 BOM (decode using utf-8-sig)"); a key given twice is
    # refused (json kept the last, silently); comments and trailing commas are said to be no JSON
    text = tiny_config(img_folder).to_json()
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert TrainConfig.load(str(p)) == tiny_config(img_folder)
    p.write_text(text.replace('{', '{"seed": 3, ', 1))
    with pytest.raises(ValueError, match=r"c\.json: the key 'seed' is given twice in one object; give it once$"):
        TrainConfig.load(str(p))
    p.write_text(text.replace('{', '{"seed": 0, // mine\n', 1))
    with pytest.raises(ValueError, match=r"c\.json is not valid JSON: .* \(JSON has no comments and no trailing "
                                         r"commas\)"):
        TrainConfig.load(str(p))


def test_data_dir_is_stored_absolute(tmp_path, monkeypatch):
    """--data-dir was stored as given: a relative folder did not resolve when the run was resumed elsewhere."""
    from yoda.training.report import with_data_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dexp" / "train").mkdir(parents=True)
    cfg = with_data_dir(TrainConfig(), "dexp")  # val_every 0: heldout/ is never read, so it need not be there
    assert cfg.data.source == str(tmp_path / "dexp" / "train")
    with pytest.raises(ValueError, match=r"--data-dir .*dexp: no folder heldout/ in it \(the 'heldout' source"):
        with_data_dir(TrainConfig(val_every=5), "dexp")
    # a folder that is not there said "no folder train/ in it"
    with pytest.raises(FileNotFoundError, match=r"--data-dir .*/nothere: not found \(a folder with train/ and"):
        with_data_dir(TrainConfig(), "nothere")
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileNotFoundError, match=r"--data-dir .*/afile: not a folder"):
        with_data_dir(TrainConfig(), "afile")
    # a folder source beside a named val_source that is never read (val_every 0): --data-dir changed nothing
    folder = TrainConfig(data={"source": "mine", "val_source": "photos-heldout"})
    with pytest.raises(ValueError, match=r"this config trains on the folder 'mine' and does not validate: leave "
                                         r"--data-dir out"):
        with_data_dir(folder, "dexp")
    (tmp_path / "dexp" / "heldout").mkdir()
    assert with_data_dir(folder.replace(val_every=5), "dexp").data.val_source == str(tmp_path / "dexp" / "heldout")


def test_a_named_source_with_a_folder_of_its_name_here_is_refused(tmp_path, monkeypatch):
    """val_source "heldout" beside a folder heldout/ read scikit-image's held-out images, not the folder the user
    meant, without a word; it is refused as ambiguous (as a config file named like an installed one), where read."""
    from yoda.training.config import absolute_folders

    monkeypatch.chdir(tmp_path)
    (tmp_path / "heldout").mkdir()
    absolute_folders(TrainConfig())  # val_every 0: val_source is never read
    with pytest.raises(ValueError, match=r"^data.val_source 'heldout' names yoda's heldout source \(a named source, "
                                         r"never a folder\) while a folder heldout/ lies here: give \"./heldout\""):
        absolute_folders(TrainConfig(val_every=5))
    cfg = absolute_folders(TrainConfig(val_every=5, data={"val_source": "./heldout"}))
    assert cfg.data.val_source == str(tmp_path / "heldout")


def test_a_finished_run_rerun_keeps_its_record(tmp_path, img_folder, capsys):
    """Re-running a finished run rewrote TRAINING.md as a 0-step run and said "trained 4 steps"."""
    import json

    from yoda.cli import main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config(img_folder, val_every=0).to_dict()))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    assert "trained 4 steps in" in capsys.readouterr().out
    record = (out / "TRAINING.md").read_text()
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    assert "trained 0 steps (resumed at step 4) in" in capsys.readouterr().out
    assert (out / "TRAINING.md").read_text() == record
    (out / "TRAINING.md").unlink()  # the run that trained was stopped before it wrote its record: a rerun writes it,
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0  # saying whose steps 0-4 were
    record = (out / "TRAINING.md").read_text()  # (it attributed them to no session)
    assert "- steps: 4 (this run: 0;" in record
    assert "\n- earlier sessions: steps 0-4: no record (a session that wrote no TRAINING.md; log.csv has its rows)\n" \
        in record
    from yoda.training.report import earlier_sessions  # a record past the checkpoint (an older checkpoint put back)
    assert earlier_sessions(str(out), 2) == ""  # is a record all the same: no "no record" (its sessions wrote one)
    # a second Ctrl-C while a session saved: its checkpoint (step 4) past the record (step 2 here); a rerun that
    # trains nothing wrote none, and TRAINING.md kept step 2 beside the weights of step 4
    (out / "TRAINING.md").write_text(record.replace("- steps: 4 (this run: 0;", "- steps: 2 (this run: 2;"))
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    assert "- steps: 4 (this run: 0;" in (out / "TRAINING.md").read_text()


def test_a_resumed_runs_record_names_its_earlier_commands(tmp_path, img_folder, capsys):
    """TRAINING.md named the last session's command only: how the run's first steps were asked for was lost."""
    import json

    from yoda.cli import main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config(img_folder, val_every=0).to_dict()))
    out = tmp_path / "run"
    run = ["train", "--config", str(cfg_path), "--out", str(out), "-q"]
    for steps in ("1", "3", "4"):
        assert main(run + ["--steps", steps]) == 0
    record = (out / "TRAINING.md").read_text()
    first, second = (f"`yoda {' '.join(run + ['--steps', n])}`" for n in "13")
    assert f"- command: `yoda {' '.join(run + ['--steps', '4'])}`\n" in record
    assert f"\n- earlier sessions: {first} (steps 0-1); {second} (steps 1-3)\n" in record
    (out / "checkpoint.pt").unlink()  # the folder started afresh: the record of the run before is not its own
    assert main(run + ["--steps", "2"]) == 0
    assert "earlier sessions" not in (out / "TRAINING.md").read_text()
    assert [l for l in (out / "TRAINING.md").read_text().splitlines() if l.startswith("- steps:")][0].startswith(
        "- steps: 2 (this run: 2;")


def test_a_run_stopped_by_minutes_says_so(tmp_path, img_folder, capsys):
    """A --minutes stop printed what a finished run prints, and TRAINING.md did not record it. The lines to paste
    back (the note, TRAINING.md's command) quote a path with a space."""
    import shlex

    from yoda.cli import main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(tiny_config(img_folder, val_every=0, steps=50).to_json())
    out = tmp_path / "my run"
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q", "--minutes", "1e-9"]) == 0
    o, e = capsys.readouterr()
    assert "trained 1 step in" in o and "now at step 1 of 50" in o
    assert e == "yoda: --minutes 1e-09 ran out at step 1 of 50; the checkpoint is saved: the same command resumes\n"
    assert "stopped by --minutes before step 50: the same command resumes" in (out / "TRAINING.md").read_text()
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q", "--steps", "2"]) == 0  # finishes
    o, e = capsys.readouterr()
    assert "now at step 2 of 2" in o and "stopped by" not in (out / "TRAINING.md").read_text()
    # a finished run says how to use what it made
    assert e == (f"yoda: note: next: yoda upscale IMAGE -o OUT --model '{out / 'model.safetensors'}'; "
                 f"yoda plot '{out}' -o '{out / 'curves.png'}'\n")
    assert (f"- command: `yoda train --config {cfg_path} --out '{out}' -q --steps 2`"
            in (out / "TRAINING.md").read_text())
    # the plot it names runs as printed (it lacked -o, which plot requires)
    assert main(shlex.split(e.split("; ")[-1].strip())[1:]) == 0 and (out / "curves.png").is_file()


def test_the_closing_lines_of_train_escape_the_run_folder_name(tmp_path, img_folder, capsys):
    """The closing lines of `yoda train` printed the run folder's name as it was: an escape sequence in it was
    obeyed by the terminal (every other "wrote" line escapes names with printable())."""
    from yoda.cli import main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(tiny_config(img_folder, val_every=0, steps=1).to_json())
    out = tmp_path / "run\x1b[31m"
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    o, e = capsys.readouterr()
    assert "\x1b" not in o + e and o.count("run\\x1b[31m") == 1 and e.count("run\\x1b[31m") == 3, (o, e)
    # the "next:" line pastes back as it is, also for a name that is not UTF-8 (shlex.quote's 'r\xff' named another)
    out = tmp_path / os.fsdecode(b"r\xff")
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    o, e = capsys.readouterr()
    assert e.startswith("yoda: note: next: yoda upscale IMAGE -o OUT --model $'") and "r\\xff/model.safetensors'" in e
    quoted = e.split("--model ")[1].split(";")[0]
    assert subprocess.run(["bash", "-c", f"test -f {quoted}"]).returncode == 0, quoted


@pytest.mark.parametrize("name", ["edge", "sift"])
def test_training_masks_are_the_sampling_masks(name):
    """A training crop's mask is the crop of the map yoda.sample makes of the whole image. The trainer made a map of
    each crop: resized without min-max normalising it again (about 0.3 % of the pixels were on the other side of
    tau), then min-max normalised per crop (a featureless crop of an image got A from 0 to 1, so most of its
    pixels trained as active where sampling the image keeps them at the LR)."""
    from yoda.attention import get
    from yoda.data import CropSampler, builtin_image, make_lr
    from yoda.images import from_uint8
    from yoda.sampling.prepare import resolve_attention
    from yoda.training.glue import whole_image_maps

    arr = builtin_image("astronaut")[100:233, 200:330]  # 133 x 130: not multiples of the scale
    maps = whole_image_maps(get(name), [("a", arr)], 4)
    want = resolve_attention(name, make_lr(from_uint8(arr)[..., :132, :128], 4), (132, 128))[0]
    want = want.half()  # kept in float16 (glue.MAP_DTYPE: the maps of a large training set)
    assert maps[0].shape == (1, 133, 130) and torch.equal(maps[0][:, :132, :128], want)
    assert torch.equal(maps[0][:, 132:, :128], want[:, -1:].expand(1, 1, 128))  # the cut row repeats the edge
    assert float(want.amax()) == 1.0 and float(want.amin()) == 0.0
    # the crops (and flips) of the maps are those of the images: the HR crops are those of sample()
    sampler = CropSampler([("a", arr)], 32, flips=True, maps=maps)
    hr, A = sampler.sample_with_maps(6, torch.Generator().manual_seed(3))
    assert torch.equal(hr, sampler.sample(6, torch.Generator().manual_seed(3)))
    full_hr = from_uint8(arr)[0]
    for b in range(6):
        found = [(y, x, fy, fx) for y in range(133 - 31) for x in range(130 - 31) for fy in (0, 1) for fx in (0, 1)
                 if torch.equal(_flip(full_hr[:, y:y + 32, x:x + 32], fy, fx), hr[b])]
        assert found, b
        y, x, fy, fx = found[0]
        assert A.dtype == torch.float32 and torch.equal(_flip(maps[0][:, y:y + 32, x:x + 32], fy, fx).float(), A[b])
    # a crop's own map is not the image's: the bug this test is named after
    crop_map = resolve_attention(name, make_lr(hr[:1], 4), (32, 32))
    assert not torch.equal(crop_map, A[:1])


def test_the_trainer_masks_with_crops_of_the_whole_images_maps(tmp_path, img_folder, monkeypatch):
    """What train_step hands diffusion_loss as A: the crops of whole_image_maps with the crops of the HR batch."""
    import yoda.training.trainer as tr
    from yoda.attention import get
    from yoda.data import CropSampler, load_source
    from yoda.training.glue import whole_image_maps

    cfg = tiny_config(img_folder)
    seen = []
    real = tr.diffusion_loss
    monkeypatch.setattr(tr, "diffusion_loss", lambda *a, **k: seen.append(a[3]) or real(*a, **k))
    t = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    t.train_step()
    images = load_source(img_folder, cfg.data.crop)
    sampler = CropSampler(images, cfg.data.crop, cfg.data.flips, whole_image_maps(get(cfg.attention), images, 4))
    _, want = sampler.sample_with_maps(cfg.batch, torch.Generator().manual_seed(cfg.seed))
    assert torch.equal(seen[0], want)


def _flip(t, fy, fx):
    t = t.flip(2) if fx else t
    return t.flip(1) if fy else t


def test_bad_settings_are_refused_before_step_1(tmp_path, img_folder, monkeypatch):
    """A validation setting that cannot sample failed only at the first validation (after val_every steps, with
    nothing saved), naming "steps"; a crop the model cannot take failed at step 1 with the network's error; an
    export name could overwrite the run's own config or checkpoint. All are refused by Trainer() now, naming the
    config key, before any file is written or any image read (a large data set took its time first)."""
    import yoda.data

    real_load = yoda.data.load_source
    monkeypatch.setattr(yoda.data, "load_source", lambda *a: pytest.fail("images read before the checks"))
    deep = {**TINY_MODEL, "channel_mults": [1, 2, 2, 2]}  # three downsamplings: sizes multiples of 8
    for kw, message in ((dict(val_every=2, val_steps=200), r"config val_steps 200 \(validation with val_every 2\): "
                                                           r"steps must be in \[1, T=50\]"),
                        (dict(val_every=2, val_steps=0), r"^config val_steps 0 \(validation with val_every 2\): steps "
                                                         r"must be in"),
                        (dict(model=deep, data={"source": img_folder, "crop": 12, "scale": 4,
                                                "val_source": img_folder}),
                         r"^config data.crop: the crop 12 must be a multiple of 8 \(the scale and the model's size "
                         r"multiple\) and at least 8$"),  # it said "lr of size 3x3 ... yoda.sample(..., pad=True)"
                        (dict(model=deep, val_every=2, data={"source": img_folder, "crop": 16, "scale": 4,
                                                             "val_source": img_folder, "val_crop": 12}),
                         "config data.val_crop: the crop 12 must be a multiple of 8")):
        out = tmp_path / "run"
        with pytest.raises(ValueError, match=message):
            Trainer(tiny_config(img_folder, **kw), str(out), device="cpu", progress=False)
        assert not out.exists()
    monkeypatch.setattr(yoda.data, "load_source", real_load)
    for name in ("config.json", "checkpoint.pt", "log.csv", "", "sub/model.safetensors", "C:m.safetensors",
                 "best:v2.safetensors", "nul.safetensors", "sub\\m.safetensors"):
        with pytest.raises(ValueError, match=r"weights_name \(--weights-name\)"):
            Trainer(tiny_config(img_folder), str(tmp_path / "w"), device="cpu", progress=False, weights_name=name)
    with pytest.raises(ValueError, match="val_crops must be >= 0"):
        tiny_config(img_folder, data={"source": img_folder, "val_crops": -1, "crop": 16, "scale": 4})
    for key in ("source", "val_source"):  # "" read the working folder's images
        with pytest.raises(ValueError, match=f"^data: {key} must name a source or a folder .*, got ' '$"):
            tiny_config(img_folder, data={"source": img_folder, "crop": 16, "scale": 4, key: " "})
    with pytest.raises(ValueError, match="grad_clip must be a finite float >= 0"):
        tiny_config(img_folder, grad_clip=float("nan"))
    with pytest.raises(ValueError, match="model.in_channel and model.out_channel must be 6 and 3 for SR3"):
        tiny_config(img_folder, model={**TINY_MODEL, "in_channel": 3})  # failed at step 1: "x must be (B, 3, ..."


def test_validation_runs_every_val_every_steps_whatever_log_every(tmp_path, img_folder):
    """Validation sat inside the logging branch: val_every 3 with log_every 2 validated at steps 6 and 8, not 3
    and 6 (and with log_every 0 only at the end)."""
    for log_every, want in ((2, [3, 6, 8]), (0, [3, 6, 8])):
        tr = Trainer(tiny_config(img_folder, steps=8, val_every=3, log_every=log_every, ckpt_every=0),
                     str(tmp_path / f"v{log_every}"), device="cpu", progress=False)
        tr.run()
        assert [r["step"] for r in tr.rows if r["val_psnr_plain"] != ""] == want
        logged = [2, 3, 4, 6, 8] if log_every == 2 else [3, 6, 8]
        assert [r["step"] for r in tr.rows] == logged


def test_installed_configs_validate_as_their_models_sample():
    """default_x4 validated with 20 DDIM steps a model its card samples in 1: `--val-every 500` logged the embedded
    model 0.5 dB below bicubic on crops where it is 0.5 dB above. An installed config that names its sampling steps
    validates with them."""
    from yoda.training.config import CONFIGS, TrainConfig

    named = {p.stem: TrainConfig.load(str(p)) for p in sorted(CONFIGS.glob("*.json"))}
    assert "default_x4" in named
    for name, cfg in named.items():
        steps = (cfg.sampling or {}).get("steps")
        assert steps is None or cfg.val_steps == steps, (name, cfg.val_steps, steps)


def test_installed_configs_load_by_name(tmp_path, monkeypatch):
    """Outside a clone `yoda train --config yoda/configs/default_x4.json` has no file to read; the installed
    configs load by name (with or without .json). A file of that name in the working folder wins; a missing
    one is an error that lists the names."""
    from yoda.training.config import CONFIGS, TrainConfig

    monkeypatch.chdir(tmp_path)
    want = TrainConfig.load(str(CONFIGS / "default_x4.json"))
    assert TrainConfig.load("default_x4") == want == TrainConfig.load("default_x4.json")
    (tmp_path / "default_x4.json").write_text(want.replace(seed=want.seed + 1).to_json())
    assert TrainConfig.load("default_x4.json").seed == want.seed + 1
    with pytest.raises(ValueError, match=r"config file not found: nope \(the installed configs, by name: "
                                         r"compare_plain, compare_yoda, default_x4\)"):
        TrainConfig.load("nope")
    with pytest.raises(ValueError, match="config file not found: sub/default_x4"):
        TrainConfig.load("sub/default_x4")  # a path with a folder is a path


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
def test_masked_loss_of_a_batch_without_active_pixels_is_zero_not_nan():
    from yoda.schedule import Schedule
    from yoda.training import LossConfig
    from yoda.training.loss import diffusion_loss
    x0 = torch.zeros(2, 3, 4, 4)
    A = torch.zeros(2, 1, 4, 4)  # nothing attended; idx 9 of T = 10 with l = 0.3: tau = 0.7 > A everywhere
    out = diffusion_loss(lambda x, i, s: torch.ones_like(x), x0, x0, A, Schedule.linear(10, 1e-2, 0.3).alphas_cumprod,
                         LossConfig(mask_loss=True, lower_bound=0.3), idx=torch.tensor([9, 9]),
                         sqrt_ab=torch.tensor([0.5, 0.5]), noise=torch.zeros(2, 3, 4, 4))
    assert out.loss.item() == 0.0 and out.active_fraction == 0.0


def test_init_fine_tunes_from_a_model_file(tmp_path, img_folder, monkeypatch):
    """init: the model and its EMA start at the file's weights (bit for bit), the step and optimiser at 0; a resumed
    run keeps its checkpoint's weights; train_main makes the path absolute and TRAINING.md names it with its hash."""
    import hashlib

    from yoda.training import train_main

    first = Trainer(tiny_config(img_folder, steps=2, val_every=0), str(tmp_path / "a"), device="cpu", progress=False)
    first.run()
    src = tmp_path / "a" / "model.safetensors"
    cfg = tiny_config(img_folder, steps=3, val_every=0, seed=7, init=str(src))
    tr = Trainer(cfg, str(tmp_path / "b"), device="cpu", progress=False)
    assert tr.step == 0 and not tr.opt.state
    for k, want in first.ema.state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], want) and torch.equal(tr.ema.state_dict()[k], want), k
    fresh = Trainer(cfg.replace(init=""), str(tmp_path / "c"), device="cpu", progress=False)
    assert not torch.equal(next(fresh.model.parameters()), next(tr.model.parameters()))  # seed 7's own init
    tr.run()
    trained = {k: v.clone() for k, v in tr.model.state_dict().items()}
    again = Trainer(cfg, str(tmp_path / "b"), device="cpu", progress=False)  # resumes: init is not read again
    assert again.step == 3 and all(torch.equal(again.model.state_dict()[k], v) for k, v in trained.items())

    path = tmp_path / "c.json"
    path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    monkeypatch.chdir(tmp_path)
    train_main(str(path), str(tmp_path / "d"), device="cpu", progress=False, init="a/model.safetensors")
    record = (tmp_path / "d" / "TRAINING.md").read_text()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert f"- started from: `{src}` (sha256 {digest})\n" in record
    src.write_bytes(b"replaced")  # the record keeps the hash of the file as it was read, on resume too
    train_main(str(path), str(tmp_path / "d"), steps=2, device="cpu", progress=False)  # resumed without --init
    assert f"- started from: `{src}` (sha256 {digest})\n" in (tmp_path / "d" / "TRAINING.md").read_text()
    assert json.loads((tmp_path / "d" / "config.json").read_text())["init"] == str(src)  # the run's, kept
    with pytest.raises(ValueError, match=r"^--init must be the path of a yoda model file \(\.safetensors\), got ''$"):
        train_main(str(path), str(tmp_path / "e"), device="cpu", progress=False, init="")


def test_init_without_sampling_keeps_the_files(tmp_path, img_folder):
    """A fine-tune whose config names no sampling keeps its init file's (the sampler and steps the model samples
    with by default): in its config.json, its exported card and on resume; a config naming one wins."""
    from yoda.models.yoda_format import load_yoda

    own = {"sampler": "ddim", "steps": 3}
    lb = {"lower_bound": 0.6}  # the card's: trained with YODA's masked input (the config's own, not the init's)
    Trainer(tiny_config(img_folder, steps=1, val_every=0, sampling=own), str(tmp_path / "a"), device="cpu",
            progress=False).run()
    src = str(tmp_path / "a" / "model.safetensors")
    tr = Trainer(tiny_config(img_folder, steps=1, val_every=0, init=src), str(tmp_path / "b"), device="cpu",
                 progress=False)
    assert tr.cfg.sampling == own and tr.ema.card.sampling == tr.model.card.sampling == {**own, **lb}
    tr.run()
    assert load_yoda(str(tmp_path / "b" / "model.safetensors")).card.sampling == {**own, **lb}
    assert json.loads((tmp_path / "b" / "config.json").read_text())["sampling"] == own
    again = Trainer(tiny_config(img_folder, steps=2, val_every=0), str(tmp_path / "b"), device="cpu", progress=False)
    assert again.step == 1 and again.cfg.sampling == own and again.ema.card.sampling == {**own, **lb}
    # resumed with its own config.json (which records the file's sampling), then with the config naming none: still
    # the file's (the first resume recorded it as the config's, and the second dropped it: a 1-step model sampled
    # with 50 steps in the CLI, DDPM over every step in yoda.sample)
    again.run()
    mid = Trainer(TrainConfig.load(str(tmp_path / "b" / "config.json")).replace(steps=3), str(tmp_path / "b"),
                  device="cpu", progress=False)
    assert mid.step == 2 and mid.sampling_from_init
    mid.run()
    last = Trainer(tiny_config(img_folder, steps=4, val_every=0), str(tmp_path / "b"), device="cpu", progress=False)
    assert last.step == 3 and last.cfg.sampling == own and last.ema.card.sampling == {**own, **lb}
    mine = {"sampler": "ddpm", "steps": 5}
    tr = Trainer(tiny_config(img_folder, steps=1, val_every=0, init=src, sampling=mine), str(tmp_path / "c"),
                 device="cpu", progress=False)
    assert tr.cfg.sampling == mine and tr.ema.card.sampling == {**mine, **lb}
    # a run whose config named its sampling may drop it on resume (it was the config's, not an init file's)
    tr.run()
    again = Trainer(tiny_config(img_folder, steps=2, val_every=0, init=src), str(tmp_path / "c"), device="cpu",
                    progress=False)
    assert again.step == 1 and again.cfg.sampling == {} and again.ema.card.sampling == lb


def test_a_checkpoint_from_before_init_resumes(tmp_path, img_folder):
    """Checkpoints written before TrainConfig.init existed have no "init" in their config (nor init_sha256): they
    resume, and were refused as "a different config (differs in: init)"."""
    cfg = tiny_config(img_folder, steps=1, val_every=0)
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run()
    path = tmp_path / "run" / "checkpoint.pt"
    st = torch.load(path, weights_only=True)
    del st["config"]["init"], st["init_sha256"]
    torch.save(st, path)
    tr = Trainer(cfg.replace(steps=2), str(tmp_path / "run"), device="cpu", progress=False)
    assert tr.step == 1 and tr.cfg.init == "" and tr.init_sha256 is None


def test_init_named_on_resume_is_refused(tmp_path, img_folder):
    """A resumed run keeps what it started from; an --init that names another file was dropped with a warning (a
    fine-tune into the default --out, runs/<name>, of a scratch run went on training the scratch run and replaced
    its model): refused now, before any step. The same file by another path, or moved (its sha256), resumes."""
    Trainer(tiny_config(img_folder, steps=1, val_every=0), str(tmp_path / "a"), device="cpu", progress=False).run()
    src, other = str(tmp_path / "a" / "model.safetensors"), str(tmp_path / "other.safetensors")
    shutil.copy(src, other)
    cfg = tiny_config(img_folder, steps=1, val_every=0, init=src)
    Trainer(cfg, str(tmp_path / "b"), device="cpu", progress=False).run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the run's own init, by another spelling of its path, or a copy: no word
        for same_file in (str(tmp_path / "a" / ".." / "a" / "model.safetensors"), other):
            same = Trainer(cfg.replace(steps=2, init=same_file), str(tmp_path / "b"), device="cpu", progress=False)
            assert same.step == 1 and same.cfg.init == src
    with open(other, "r+b") as f:  # now another file
        f.seek(-1, os.SEEK_END)
        f.write(b"\x20")
    before = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*" / "*"))}
    for run, new, then in (("b", other, src), ("a", src, "a random init")):
        ckpt = str(tmp_path / run / "checkpoint.pt")
        with pytest.raises(ValueError, match=f"^checkpoint {re.escape(ckpt)} cannot be resumed: it started from "
                                             f"{re.escape(then)}, not from init \\(--init\\) {re.escape(new)}; "
                                             f"delete it to start this run afresh, or train into another --out$"):
            Trainer(cfg.replace(steps=2, init=new), str(tmp_path / run), device="cpu", progress=False)
    assert {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*" / "*"))} == before


def test_init_that_is_the_runs_own_export_is_refused(tmp_path, img_folder):
    """--init OUT/model.safetensors on a fresh run into OUT: the export at its end wrote over the weights it
    started from (and config.json named the overwritten file as its start). Refused before any step; another
    --weights-name trains."""
    from yoda.training.report import train_main

    Trainer(tiny_config(img_folder, steps=1, val_every=0), str(tmp_path / "a"), device="cpu", progress=False).run()
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    before = (tmp_path / "b" / "model.safetensors").read_bytes()
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    init = str(tmp_path / "b" / "." / "model.safetensors")
    with pytest.raises(ValueError, match=rf"^init \(--init\) .*model\.safetensors is the file this run exports its "
                                         rf"weights to \(model\.safetensors in --out {re.escape(str(tmp_path / 'b'))}\)"):
        train_main(str(cfg_path), str(tmp_path / "b"), device="cpu", progress=False, init=init)
    assert sorted(os.listdir(tmp_path / "b")) == ["model.safetensors"]
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == before
    s = train_main(str(cfg_path), str(tmp_path / "b"), device="cpu", progress=False, init=init,
                   weights_name="tuned.safetensors")
    assert s["steps"] == 1 and (tmp_path / "b" / "model.safetensors").read_bytes() == before


def test_init_refuses_another_model(tmp_path, img_folder):
    """A file of another architecture or prediction target is refused with the difference named, compared with
    every argument resolved (a config leaving one out compares its default); dropout, which changes only how the
    model trains, is warned of."""
    Trainer(tiny_config(img_folder, steps=1, val_every=0), str(tmp_path / "a"), device="cpu", progress=False).run()
    src = str(tmp_path / "a" / "model.safetensors")
    wider = dict(TINY_MODEL, inner_channel=16)
    with pytest.raises(ValueError, match=r"^init \(--init\) .*model\.safetensors: the file's model differs from the "
                                         r"config's model in inner_channel \(8, the config 16\) \(defaults included"):
        Trainer(tiny_config(img_folder, model=wider, init=src), str(tmp_path / "b"), device="cpu", progress=False)
    with pytest.warns(UserWarning, match=r"model\.safetensors: fine-tuned with the config's dropout 0\.1 \(the file's "
                                         r"model 0\.0\)$"):
        Trainer(tiny_config(img_folder, model=dict(TINY_MODEL, dropout=0.1), init=src), str(tmp_path / "g"),
                device="cpu", progress=False)
    no_mid = {k: v for k, v in TINY_MODEL.items() if k != "mid_attn"}  # left out: the default, True
    with pytest.raises(ValueError, match=r"differs from the config's model in mid_attn \(False, the config True\)"):
        Trainer(tiny_config(img_folder, model=no_mid, init=src), str(tmp_path / "m"), device="cpu", progress=False)
    # a config leaving the model's scale out (the data's is used) fine-tunes its own export (which names it)
    no_scale = {k: v for k, v in TINY_MODEL.items() if k != "scale"}
    Trainer(tiny_config(img_folder, model=no_scale, steps=1, val_every=0), str(tmp_path / "s"), device="cpu",
            progress=False).run()
    tr = Trainer(tiny_config(img_folder, model=no_scale, init=str(tmp_path / "s" / "model.safetensors")),
                 str(tmp_path / "s2"), device="cpu", progress=False)
    assert tr.init_sha256 is not None
    longer = {"kind": "linear", "T": 60, "beta_start": 1e-3, "beta_end": 0.1}
    with pytest.raises(ValueError, match=r"^init \(--init\) .*: the file's model was trained on another schedule"):
        Trainer(tiny_config(img_folder, schedule=longer, init=src), str(tmp_path / "h"), device="cpu",
                progress=False)
    eps = {"mask_input": True, "mask_loss": True, "target": "x0"}
    with pytest.raises(ValueError, match=r"the file's model has prediction 'eps', this config trains prediction 'x0'"):
        Trainer(tiny_config(img_folder, loss=eps, init=src), str(tmp_path / "c"), device="cpu", progress=False)
    with pytest.raises(ValueError, match="init must be the path"):
        tiny_config(img_folder, init="  ")
    with pytest.raises(FileNotFoundError, match=r"^init \(--init\): checkpoint file not found: .*missing.safetensors"):
        Trainer(tiny_config(img_folder, init=str(tmp_path / "missing.safetensors")), str(tmp_path / "e"),
                device="cpu", progress=False)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"init \(--init\): .*junk.safetensors: not a readable safetensors file"):
        Trainer(tiny_config(img_folder, init=str(tmp_path / "junk.safetensors")), str(tmp_path / "f"),
                device="cpu", progress=False)


def test_the_bar_shows_the_time_budget_left(tmp_path, img_folder, capsys):
    """With --minutes the bar's total and ETA counted to the config's steps (weeks for default_x4) while the run
    stopped at the budget: the bar shows the time left of it."""
    tr = Trainer(tiny_config(img_folder, steps=50, val_every=0, log_every=1), str(tmp_path / "run"), device="cpu",
                 progress=True)
    tr.run(steps=2, max_seconds=3600)
    err = capsys.readouterr().err
    import re

    left = [int(m) * 60 + int(s) for m, s in re.findall(r"budget left=(\d\d):(\d\d)", err)]
    assert left and all(3000 < v < 3600 for v in left) and "loss=" in err, err[-500:]
    tr.run(steps=3)
    assert "budget left" not in capsys.readouterr().err


def test_an_attention_weights_path_is_stored_absolute(tmp_path, img_folder, monkeypatch):
    """attention "dino-resnet50:w/x.pth" was stored relative in config.json: a resume from another folder read
    another file, or none, with an error that did not name the config's attention. Made absolute as the data
    folders are; a missing file is named with the key."""
    from yoda.training.config import absolute_folders

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(img_folder, attention="dino-resnet50:w/x.pth")
    assert absolute_folders(cfg).attention == f"dino-resnet50:{tmp_path / 'w' / 'x.pth'}"
    assert absolute_folders(tiny_config(img_folder)).attention == "edge"
    # a config file's init too (--init was made absolute, "init" in the file was not: another working folder's
    # config.json named no file there)
    assert absolute_folders(tiny_config(img_folder, init="runs/a/model.safetensors")).init == str(
        tmp_path / "runs" / "a" / "model.safetensors")
    assert absolute_folders(tiny_config(img_folder)).init == ""
    with pytest.raises(FileNotFoundError, match=r"^attention 'dino-resnet50:.*/w/x\.pth': weights file not found"):
        Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    # a checkpoint of a run that stored it relative (before 2026-12-05) resumes from its folder
    from yoda.training.trainer import _resume_view

    old = tiny_config(img_folder, attention="dino-resnet50:w/x.pth").to_dict()
    assert _resume_view(old) == _resume_view(absolute_folders(cfg).to_dict())


def test_a_released_model_fine_tunes_with_its_own_up_lr(tmp_path, img_folder, monkeypatch):
    """A released SR3 / SRDiff model saved as a yoda file (its up(lr) Pillow's or MATLAB's) was refused as --init:
    yoda trained with torch's bicubic only. The run now trains with the file's up(lr), the exported model keeps it,
    and a resume keeps it; an upstream checkpoint itself given to --init says how to fine-tune it."""
    import yoda
    from yoda.models import save_model
    from yoda.training import trainer as trainer_mod

    Trainer(tiny_config(img_folder, steps=1, val_every=0), str(tmp_path / "a"), device="cpu", progress=False).run()
    released = yoda.load("yoda", str(tmp_path / "a" / "model.safetensors"))
    released.upsampling = "sr3"  # as yoda.load("sr3", ...) gives it
    init = tmp_path / "released.safetensors"
    save_model(released, init)
    seen, real = [], trainer_mod.space_tensors
    monkeypatch.setattr(trainer_mod, "space_tensors", lambda *a: (seen.append(a[5]), real(*a))[1])
    cfg = tiny_config(img_folder, steps=2, val_every=0, ckpt_every=1, init=str(init))
    tr = Trainer(cfg, str(tmp_path / "r"), device="cpu", progress=False)
    assert tr.upsampling == "sr3" and tr.ema.upsampling == "sr3"
    tr.train_step()
    tr.save_checkpoint()
    assert seen == ["sr3"]
    again = Trainer(cfg, str(tmp_path / "r"), device="cpu", progress=False)  # resumed
    assert again.step == 1 and again.upsampling == "sr3"
    again.run()
    assert seen == ["sr3", "sr3"]
    assert yoda.load("yoda", str(tmp_path / "r" / "model.safetensors")).upsampling == "sr3"
    from yoda.training.report import training_record

    record = training_record(cfg, again, config_path="c.json", out=str(tmp_path / "r"), command="yoda train",
                             weights_name="model.safetensors", start_step=1, seconds=1.0)
    assert "; up(lr) 'sr3', the file's own (yoda.upsampling)" in record
    upstream = tmp_path / "I10_E1_gen.pth"
    torch.save(released.state_dict(), upstream)
    with pytest.raises(ValueError, match=r"not a yoda model file .*fine-tunes once saved as a yoda model file: "
                                         r"yoda\.save_model\(yoda\.load\('sr3', PATH, config=JSON\)"):
        Trainer(tiny_config(img_folder, init=str(upstream)), str(tmp_path / "u"), device="cpu", progress=False)


def test_a_trained_model_samples_as_its_config_says(tmp_path, img_folder):
    """A model trained (or fine-tuned) with the shipped default_x4 config sampled with DDPM over T = 1000 steps in
    yoda.sample and 50 steps in the CLI (12.2 s and 28.9 dB against 32.5 dB at its 1 DDIM step): its card had no
    sampling. The config's ``sampling`` is now its card's; it may change on resume (no training step depends on
    it), and a bad one is refused when the config is read."""
    import yoda
    from yoda.adapters import as_adapter, model_steps
    from yoda.training.config import CONFIGS

    assert TrainConfig.load(str(CONFIGS / "default_x4.json")).sampling == {"sampler": "ddim", "steps": 1}
    cfg = tiny_config(img_folder, steps=1, val_every=0, sampling={"sampler": "ddim", "steps": 3})
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run()
    net = yoda.load("yoda", str(tmp_path / "run" / "model.safetensors"))
    lb = {"lower_bound": 0.6}  # trained with YODA's masked input: the card keeps its masks' l
    assert net.card.sampling == {"sampler": "ddim", "steps": 3, **lb} and model_steps(as_adapter(net)) == 3
    again = cfg.replace(steps=2, sampling={"sampler": "ddpm", "steps": 2})
    Trainer(again, str(tmp_path / "run"), device="cpu", progress=False).run()  # resumes (was "differs in: sampling")
    assert yoda.load("yoda", str(tmp_path / "run" / "model.safetensors")).card.sampling == {"sampler": "ddpm",
                                                                                             "steps": 2, **lb}
    Trainer(cfg.replace(sampling={}), str(tmp_path / "plain"), device="cpu", progress=False).run()
    assert yoda.load("yoda", str(tmp_path / "plain" / "model.safetensors")).card.sampling == lb
    unmasked = cfg.replace(sampling={}, loss=dataclasses.replace(cfg.loss, mask_input=False))
    Trainer(unmasked, str(tmp_path / "unmasked"), device="cpu", progress=False).run()
    assert yoda.load("yoda", str(tmp_path / "unmasked" / "model.safetensors")).card.sampling is None
    for bad, says in (({"sampler": "DDIM"}, r": 'sampler' must be one of .*, got 'DDIM'$"),  # one message said both
                      ({"steps": 51}, r": 'steps' must be an int in \[1, 50\] \(the schedule's T\), got 51$"),
                      ({"steps": 0}, r": 'steps' must be an int in \[1, 50\] .*, got 0$"),
                      ({"eta": 0}, ": eta; known: lower_bound, sampler, steps$")):
        with pytest.raises(ValueError, match=("^unknown key\\(s\\) in sampling" if "eta" in bad else "^sampling") + says):
            tiny_config(img_folder, sampling=bad)  # T = 50
    with pytest.raises(ValueError, match="T must be a positive int"):  # it said 'sampler' must be one of ...
        tiny_config(img_folder, sampling={"steps": 2}, schedule={"kind": "linear", "T": -5})  # (as it is made)


def test_train_main_checks_data_dir_and_makes_folders_absolute(tmp_path, img_folder, monkeypatch):
    """--data-dir was ignored without a word when the config trains on a folder (even --data-dir /nonexistent); a
    --data-dir without train/ said only "image folder DIR/train not found"; a relative data.source was stored
    relative, so a resume from another working folder trained on other images (or none); config.json was
    written at the end only, so a killed or diverged run had none, though the errors point to it."""
    from yoda.training import train_main

    cfg_path = tmp_path / "tiny.json"
    monkeypatch.chdir(os.path.dirname(img_folder))
    rel = os.path.basename(img_folder)
    cfg_path.write_text(tiny_config(rel, steps=1, val_every=0).to_json())
    with pytest.raises(ValueError, match=r"--data-dir replaces the config's data sources .* this config trains on "
                                         r"the folder 'imgs': leave --data-dir out"):
        train_main(str(cfg_path), str(tmp_path / "r0"), device="cpu", progress=False, data_dir="/nonexistent")
    named = tmp_path / "named.json"
    named.write_text(json.dumps({**tiny_config(rel).to_dict(), "data": {**tiny_config(rel).to_dict()["data"],
                                                                          "source": "photos"}}))
    with pytest.raises(ValueError, match=r"--data-dir .*: no folder train/ in it .* train/ \(training images\) and "
                                         r"heldout/"):
        train_main(str(named), str(tmp_path / "r0"), device="cpu", progress=False, data_dir=img_folder)
    assert not (tmp_path / "r0").exists()
    train_main(str(cfg_path), str(tmp_path / "r1"), device="cpu", progress=False)
    saved = json.loads((tmp_path / "r1" / "config.json").read_text())
    assert saved["data"]["source"] == saved["data"]["val_source"] == os.path.abspath(img_folder)
    # a run that diverges keeps a config.json, and says what to do
    monkeypatch.setattr(Trainer, "train_step", lambda self: float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 0: training diverged; try a lower lr "
                                                 r"\(now 0.001\), a longer warmup or a smaller grad_clip \(now 1\)"):
        train_main(str(cfg_path), str(tmp_path / "r2"), device="cpu", progress=False)
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["lr"] == 1e-3


def test_a_run_folder_or_its_checkpoint_named_as_a_model_says_where_the_model_is(tmp_path, img_folder, capsys):
    """--model RUN said "model file not found" of a folder that exists; --model / --init RUN/checkpoint.pt sent the
    user to sr3:PATH / srdiff:PATH. --init default is the embedded model, as --model default is."""
    import yoda
    from yoda.cli import main
    from yoda.models.loading import DEFAULT_WEIGHTS
    from yoda.training import train_main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(tiny_config(img_folder, steps=1, val_every=0).to_json())
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    lr = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (8, 8), (90, 120, 30)).save(lr)
    assert main(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(run)]) == 2
    want = f"yoda: error: --model {run} is a folder: its model is {run / 'model.safetensors'}\n"
    assert capsys.readouterr().err == want
    assert main(["upscale", str(lr), "-o", str(tmp_path / "o.png"), "--model", str(run / "checkpoint.pt")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is a `yoda train` checkpoint (the state a run resumes from), not a model file" in err
    assert "sr3:PATH" not in err
    for kind in ("sr3", "srdiff"):  # named as an upstream checkpoint: a list of 362 mismatched keys, or "not SRDiff"
        with pytest.raises(yoda.checkpoint.CheckpointError, match=r"checkpoint.pt is a `yoda train` checkpoint \(the "
                                                                  r"state a run resumes from\), not a model file"):
            yoda.load(kind, run / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"init \(--init\): .*checkpoint.pt is a `yoda train` checkpoint"):
        train_main(str(cfg_path), str(tmp_path / "ft"), device="cpu", progress=False, init=str(run / "checkpoint.pt"))
    ft = json.loads(TrainConfig.load("default_x4").replace(steps=1, warmup=0).to_json())
    ft["data"].update(source=img_folder, val_source=img_folder, crop=32)
    (tmp_path / "ft.json").write_text(json.dumps(ft))
    s = train_main(str(tmp_path / "ft.json"), str(tmp_path / "ft2"), device="cpu", progress=False, init="default")
    assert s["steps"] == 1
    assert json.loads((tmp_path / "ft2" / "config.json").read_text())["init"] == str(DEFAULT_WEIGHTS)
    assert yoda.load("yoda", s["weights"]).card.sampling == {"sampler": "ddim", "steps": 1}
    # a config naming no sampling keeps the init's: the embedded model's DDIM 1 step are yoda's, not in its file
    # (its fine-tune had none, and sampled 1000 DDPM steps: 28.0 dB for 30.1)
    del ft["sampling"]
    (tmp_path / "ft.json").write_text(json.dumps(ft))
    s = train_main(str(tmp_path / "ft.json"), str(tmp_path / "ft3"), device="cpu", progress=False, init="default")
    assert yoda.load("yoda", s["weights"]).card.sampling == {"sampler": "ddim", "steps": 1}


def test_config_errors_met_by_a_new_user(tmp_path, img_folder, monkeypatch):
    """A misspelt attention was accepted until validation was switched on for a resume; --config FOLDER said only
    "Is a directory"."""
    with pytest.raises(ValueError, match=r"attention: unknown attention 'edges'; known: edge"):
        tiny_config(img_folder, attention="edges", val_every=0, loss={})
    with pytest.raises(ValueError, match=f"config file {tmp_path} is a folder; --config takes a JSON file"):
        TrainConfig.load(str(tmp_path))
    # `--config default_x4 --out default_x4`: the run's folder hid the installed name, and the same command could
    # not resume ("config file default_x4 is a folder")
    from yoda.training.config import CONFIGS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default_x4").mkdir()
    assert TrainConfig.load("default_x4") == TrainConfig.load(str(CONFIGS / "default_x4.json"))


def test_the_python_training_api_takes_what_a_notebook_gives(tmp_path, img_folder, monkeypatch):
    """A notebook review: train_main(Path) trained the whole run, then failed before TRAINING.md; train_main(a
    TrainConfig) was a stat() TypeError; a tuple or a numpy int in the model / schedule made a run that its own
    config.json could not resume, or that failed at the export after every step; from_dict refused numpy numbers
    the constructor takes; steps=2.7 trained 2 and minutes=NaN never ran out; Trainer kept a relative data folder
    and out relative (a resume from elsewhere trained on other images), made its folders before a bad init failed,
    gave tr.ema no card (yoda.sample took the x0 model for eps), and refused a new validation crop on resume."""
    import pathlib

    import numpy as np

    import yoda
    from yoda.training import train_main

    cfg = tiny_config(img_folder, steps=2, val_every=0)
    s = train_main(cfg, pathlib.Path(tmp_path / "p"), device="cpu", progress=False)
    assert (tmp_path / "p" / "TRAINING.md").is_file() and s["steps"] == 2
    (tmp_path / "c.json").write_text(cfg.to_json())
    assert train_main(pathlib.Path(tmp_path / "c.json"), tmp_path / "p2", device="cpu", progress=False)["steps"] == 2
    with pytest.raises(TypeError, match="config_path must be a JSON file's path, an installed config's name or a "
                                        "TrainConfig, got dict"):
        train_main(cfg.to_dict(), str(tmp_path / "p3"), device="cpu", progress=False)
    for kw, msg in (({"steps": 2.7}, "steps must be an int, got 2.7"),
                    ({"minutes": float("nan")}, r"minutes \(--minutes\) must be a number > 0 and <= 1e\+08, got nan"),
                    ({"minutes": 10**400}, r"minutes \(--minutes\) must be a number > 0 and <= 1e\+08, got 1000"),
                    ({"minutes": -1}, "minutes .* got -1")):
        with pytest.raises(ValueError, match=msg):
            train_main(cfg, str(tmp_path / "p3"), device="cpu", progress=False, **kw)
    assert not (tmp_path / "p3").exists()
    # numpy numbers and tuples in the free-form fields are kept as their JSON reads back
    odd = cfg.replace(schedule={**cfg.schedule, "T": np.int64(50), "beta_end": np.float64(0.1)},
                      model={**cfg.model, "channel_mults": tuple(cfg.model["channel_mults"])})
    assert TrainConfig.from_json(odd.to_json()) == odd and type(odd.schedule["T"]) is int
    assert TrainConfig.from_dict({**cfg.to_dict(), "batch": np.int64(2)}).batch == 2
    Trainer(odd, str(tmp_path / "odd"), device="cpu", progress=False).run(steps=1)
    assert Trainer(TrainConfig.load(str(tmp_path / "odd" / "config.json")), str(tmp_path / "odd"), device="cpu",
                   progress=False).step == 1
    # a relative data folder and out, resumed from another working folder
    monkeypatch.chdir(os.path.dirname(img_folder))
    rel = tiny_config(os.path.basename(img_folder), steps=2, val_every=0)
    tr = Trainer(rel, "relrun", device="cpu", progress=False)
    assert tr.cfg.data.source == img_folder and tr.out == str(tmp_path / "relrun")
    tr.run(steps=1)
    other = tmp_path / "elsewhere"
    (other / os.path.basename(img_folder)).mkdir(parents=True)
    shutil.copy(os.path.join(img_folder, "im0.png"), other / os.path.basename(img_folder) / "x.png")
    monkeypatch.chdir(other)
    with pytest.raises(ValueError, match=r"differs in: data.source"):
        Trainer(rel, str(tmp_path / "relrun"), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"steps must be an int >= 1 \(the total to reach\), got 2.5"):
        tr.run(steps=2.5)
    # past the config's steps with a decay, the steps trained at a learning rate of 0 without a word (and the
    # run's config.json, steps 2, was then refused by yoda train as behind the run)
    with pytest.raises(ValueError, match=r"^steps 3 is past the config's steps \(2\), where its learning rate has "
                                         r"decayed to 0 \(decay_from 1\): give the config steps=3 instead"):
        Trainer(rel.replace(decay_from=1), "decayrun", device="cpu", progress=False).run(steps=3)
    assert not os.path.exists("decayrun/checkpoint.pt")
    # without a decay, run(steps=3) past the config's 2: the run's config says 3 (its config.json said 2, which its
    # own checkpoint at step 3 is past: yoda train refused it)
    past = Trainer(rel, "pastrun", device="cpu", progress=False)
    past.run(steps=3)
    assert past.cfg.steps == 3 and TrainConfig.load("pastrun/config.json").steps == 3
    assert Trainer(TrainConfig.load("pastrun/config.json"), "pastrun", device="cpu", progress=False).step == 3
    # the validation crop may change on resume; the in-memory EMA samples as the file does
    again = cfg.replace(data=dataclasses.replace(cfg.data, val_crop=8, val_crops=1))
    Trainer(cfg, str(tmp_path / "v"), device="cpu", progress=False).run(steps=1)
    tr = Trainer(again, str(tmp_path / "v"), device="cpu", progress=False)
    assert tr.step == 1 and tr.ema.card == tr.model.card and tr.ema.card.prediction == cfg.loss.target
    lr = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tr.run()
    assert torch.equal(yoda.sample(tr.ema, lr, seed=0, progress=False, steps=2),
                       yoda.sample(yoda.load("yoda", tmp_path / "v" / "model.safetensors"), lr, seed=0, progress=False,
                                   steps=2))
    # a bad init leaves no folder; a dict or an empty out is named
    with pytest.raises(FileNotFoundError):
        Trainer(cfg.replace(init=str(tmp_path / "nope.safetensors")), str(tmp_path / "a" / "b"), device="cpu")
    assert not (tmp_path / "a").exists()
    with pytest.raises(TypeError, match="cfg must be a TrainConfig"):
        Trainer(cfg.to_dict(), str(tmp_path / "d"))
    with pytest.raises(TypeError, match="out must be the run's folder"):
        Trainer(cfg, "")


def test_the_time_column_counts_its_rows_validation(tmp_path, img_folder, monkeypatch):
    """A row's time was taken before its own validation (later rows counted it): the last row of a validated run
    said 20 s where the run took 72. Validation made to take a second here."""
    import time

    validate = Trainer.validate

    def slow(self):
        out = validate(self)
        time.sleep(1.0)
        return out

    monkeypatch.setattr(Trainer, "validate", slow)
    tr = Trainer(tiny_config(img_folder, steps=1, val_every=1), str(tmp_path / "run"), device="cpu", progress=False)
    summary = tr.run()
    row = tr.rows[-1]
    assert row["val_psnr_plain"] != "" and 1.0 <= row["time"] <= summary["seconds"]


def test_a_trainer_leaves_the_callers_generator_alone(tmp_path, img_folder):
    """Trainer() reseeded torch's global generator and a resume set it to the checkpoint's; dropout drew from it,
    so the same config and seed gave other weights when the notebook drew numbers between Trainer() and run()."""
    cfg = tiny_config(img_folder, model={**TINY_MODEL, "dropout": 0.1}, steps=3, val_every=0, ckpt_every=0)

    def weights(run_dir, draw_between):
        torch.manual_seed(123)
        want = torch.rand(3)
        torch.manual_seed(123)
        tr = Trainer(cfg, str(tmp_path / run_dir), device="cpu", progress=False)
        if draw_between:
            torch.rand(1000)
        else:
            assert torch.equal(torch.rand(3), want)  # untouched by Trainer()
            torch.manual_seed(123)
        tr.run()
        if not draw_between:
            assert torch.equal(torch.rand(3), want)  # and by run()
        return [p.detach().clone() for p in tr.ema.parameters()]

    a, b = weights("a", False), weights("b", True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_train_step_in_a_loop_of_ones_own_draws_from_the_trainer(tmp_path, img_folder):
    """Outside run(), train_step's dropout drew from the caller's generator, and the checkpoint saved the trainer's
    state, which had not moved: a resume repeated the masks of step 1."""
    cfg = tiny_config(img_folder, model={**TINY_MODEL, "dropout": 0.1}, steps=3, val_every=0)

    def two_steps(run_dir, draw):
        tr = Trainer(cfg, str(tmp_path / run_dir), device="cpu", progress=False)
        tr.train_step()
        if draw:
            torch.rand(100)
        tr.train_step()
        return tr

    a, b = two_steps("a", False), two_steps("b", True)
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
    ref = Trainer(cfg, str(tmp_path / "ref"), device="cpu", progress=False)
    ref.run(steps=2)
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), ref.model.parameters()))
    assert torch.equal(a.state_dict()["torch_rng"], ref.state_dict()["torch_rng"])


def test_a_model_trained_with_masked_input_samples_with_its_masks_lower_bound(tmp_path, img_folder):
    """A model trained on states held at the LR image by masks of l = 0.3 (loss.mask_input) was sampled with
    yoda.sample's l = 0.6 unless the user knew to pass 0.3: its card now records the l, and yoda.sample and the CLI
    take it where the call names none; a call naming one wins."""
    import yoda
    from yoda.cli_models import default_steps

    cfg = tiny_config(img_folder, steps=1, val_every=0, sampling={"sampler": "ddim", "steps": 4},
                      loss={"mask_input": True, "mask_loss": True, "lower_bound": 0.3})
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).run()
    net = yoda.load("yoda", str(tmp_path / "run" / "model.safetensors"))
    assert net.card.sampling["lower_bound"] == 0.3
    lr = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def taus(**kw):
        seen = []
        yoda.sample(net, lr, attention="gaussian", seed=0, progress=False, callback=lambda d: seen.append(d["tau"]),
                    **kw)
        return seen

    assert taus() == taus(lower_bound=0.3) != taus(lower_bound=0.6)
    a = argparse.Namespace(steps=None, sampler=None, lower_bound=None)
    default_steps(a, net)
    assert a.lower_bound == 0.3
    a = argparse.Namespace(steps=None, sampler=None, lower_bound=0.5)  # --lower-bound given
    default_steps(a, net)
    assert a.lower_bound == 0.5


def test_a_batch_with_no_active_value_moves_no_weight(tmp_path, img_folder, monkeypatch):
    """With mask_loss, a global batch none of whose pixels is active at its step (small batches, late steps) has a
    zero loss and zero gradients, yet AdamW stepped along its momentum (6.7e-3 at lr 1e-2) and the EMA moved.
    Now such a step counts and moves nothing; the other steps train as before."""
    from yoda.training import trainer as trainer_mod

    cfg = tiny_config(img_folder, batch=1, steps=12, val_every=0, ckpt_every=0,
                      loss={"mask_input": True, "mask_loss": True, "lower_bound": 0.5})
    tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
    real_maps, real_loss = tr.train_images.sample_with_maps, trainer_mod.diffusion_loss

    def zero_maps(batch, gen):  # A = 0: every pixel active while tau <= 0 (t <= T / 2), none after
        hr, A = real_maps(batch, gen)
        return hr, torch.zeros_like(A)

    fractions = []
    monkeypatch.setattr(tr.train_images, "sample_with_maps", zero_maps)
    monkeypatch.setattr(trainer_mod, "diffusion_loss", lambda *a, **k: (o := real_loss(*a, **k), fractions.append(
        o.active_fraction))[0])
    for _ in range(cfg.steps):
        before = [p.detach().clone() for p in (*tr.model.parameters(), *tr.ema.parameters())]
        tr.train_step()
        after = list((*tr.model.parameters(), *tr.ema.parameters()))
        moved = any(not torch.equal(a, b) for a, b in zip(after, before))
        assert moved == (fractions[-1] > 0), (tr.step, fractions[-1])
    assert tr.step == cfg.steps  # and an empty step came after a trained one (AdamW had momentum to move by):
    assert any(f == 0.0 and 1.0 in fractions[:i] for i, f in enumerate(fractions)), fractions
    # its zero is not logged as a loss (a row of 0 read as a perfect step): a row of such steps alone is nan
    fractions.clear()
    tr = Trainer(cfg, str(tmp_path / "logged"), device="cpu", progress=False)
    monkeypatch.setattr(tr.train_images, "sample_with_maps", zero_maps)
    tr.run()
    assert len(tr.rows) == cfg.steps and 0.0 in fractions and 1.0 in fractions
    assert all(math.isnan(r["loss"]) == (f == 0.0) for r, f in zip(tr.rows, fractions)), (tr.rows, fractions)
    assert all(r["loss"] > 0 for r in tr.rows if not math.isnan(r["loss"]))
    # TRAINING.md names the last loss there is ("last logged loss: nan" when the last row had no active pixel)
    from yoda.training.report import training_record

    def loss_line(rows):
        tr.rows = rows
        record = training_record(cfg, tr, config_path="c.json", out=str(tmp_path / "logged"), command="yoda train",
                                 weights_name="model.safetensors", start_step=0, seconds=1.0)
        return next(line for line in record.splitlines() if line.startswith(("- last logged", "- no steps")))

    rows = [{"step": 1, "loss": 0.25}, {"step": 2, "loss": math.nan}]
    assert loss_line(rows) == ("- last logged loss: 0.2500 (step 1; the steps logged after it had no active "
                               "pixel)")
    assert loss_line(rows[:1]) == "- last logged loss: 0.2500"
    assert loss_line(rows[1:]) == "- last logged loss: none (no logged step had an active pixel)"
    assert loss_line([]) == "- no steps logged"


def test_residual_training_clamps_as_the_model_samples(tmp_path, img_folder, monkeypatch):
    """SRDiff's clip_input = false (no clamp of the residual, in its sampler and upstream's img2res) was ignored in
    training: the residual was always clamped to [-1, 1], so the model learnt another target than it samples."""
    from yoda.data import make_lr
    from yoda.training import trainer as trainer_mod

    hr = torch.ones(1, 3, 16, 16)
    hr[..., 7:9, :] = -1.0  # a dark line: the bicubic of its LR misses it by more than 1 / residual_scale
    lr = make_lr(hr, 4)
    cfg = LossConfig(space="residual")
    assert space_tensors(hr, lr, cfg, 4)[0].abs().max() == 1.0
    assert space_tensors(hr, lr, cfg, 4, clip_input=False)[0].abs().max() > 1.2
    srdiff = {"kind": "srdiff", "hidden_size": 8, "dim_mults": [1, 2], "rrdb_num_block": 2, "rrdb_num_feat": 8,
              "clip_input": False}
    seen, real = [], trainer_mod.space_tensors
    monkeypatch.setattr(trainer_mod, "space_tensors", lambda *a: (seen.append(a[4:]), real(*a))[1])
    cfg = tiny_config(img_folder, model=srdiff, loss={"space": "residual"}, val_every=0)
    Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False).train_step()
    assert seen == [(False, "torch")]


def test_what_a_new_user_gets_wrong_is_named(tmp_path, img_folder, monkeypatch, capsys):
    """From a review of training from scratch: a misspelt key said only "unknown key(s) in config: batchsize" (a
    schedule's, Python's "unexpected keyword argument"); a misspelt data.source or an empty heldout/ did not say
    which config key read it; a copy of default_x4.json beside the bare name default_x4 was silently not read;
    --decay-from's error named decay_from; a residual config without its model section named an SR3 nobody
    wrote; --device cuda without a GPU left an empty --out folder; log.csv ended its lines with \\r\\n."""
    import yoda.training.config
    from yoda.cli import main

    d = json.loads(tiny_config(img_folder).to_json())
    with pytest.raises(ValueError, match=r"^unknown key\(s\) in config: batchsize \(did you mean batch\?\); known: "
                                         r"attention, batch, betas, "):
        TrainConfig.from_dict({**d, "batchsize": 4})
    with pytest.raises(ValueError, match=r"^unknown key\(s\) in loss: mask_lose \(did you mean mask_loss\?\); known:"):
        TrainConfig.from_dict({**d, "loss": {"mask_lose": True}})
    # other programs' names, which spelling does not lead to; and the file the key is in
    with pytest.raises(ValueError, match=r"^unknown key\(s\) in config: epochs \(did you mean steps\?\), "
                                         r"learning_rate \(did you mean lr\?\); known: "):
        TrainConfig.from_dict({**d, "learning_rate": 1e-3, "epochs": 4})
    (tmp_path / "zero.json").write_text(json.dumps({**d, "batch": 0}))
    with pytest.raises(ValueError, match=r"^config file .*zero\.json: batch must be >= 1, got 0$"):
        TrainConfig.load(str(tmp_path / "zero.json"))
    with pytest.raises(ValueError, match=r"^unknown key\(s\) in schedule: beta_strat \(did you mean beta_start\?\); "
                                         r"known: T, beta_end, beta_start, kind$"):
        TrainConfig.from_dict({**d, "schedule": {"kind": "linear", "T": 50, "beta_strat": 1e-3}})  # (as it is made)
    with pytest.raises(ValueError, match=r"^model.kind 'sr3' \(the default, which a config without a model section "
                                         r"gets\) is trained in the pixel space, but loss.space is 'residual'"):
        TrainConfig.from_dict({k: v for k, v in d.items() if k != "model"} | {"loss": {"space": "residual"}})
    for key, source, says in (("source", str(tmp_path / "phtos"), "; the named sources are builtin, heldout, photos"),
                              ("val_source", str(tmp_path / "empty"), "")):
        os.makedirs(tmp_path / "empty", exist_ok=True)
        cfg = tiny_config(img_folder, val_every=1, data={**d["data"], key: source})
        with pytest.raises(ValueError, match=f"^data.{key}" + (r" \(validation crops, as val_every > 0; val_every: 0 "
                                                               r"skips them\)" if key == "val_source" else "")
                           + f": .*{os.path.basename(source)}.*{re.escape(says)}"):
            Trainer(cfg, str(tmp_path / f"o_{key}"), device="cpu", progress=False)
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(yoda.training.config.CONFIGS / "default_x4.json", "default_x4.json")  # (not a 0444 install's mode)
    with pytest.raises(ValueError, match="^config 'default_x4' names both the installed .* and default_x4.json here: "
                                         "give ./default_x4.json"):
        TrainConfig.load("default_x4")
    with open("default_x4.json", "r+") as f:  # the copy made to edit, edited
        edited = f.read().replace('"batch": 8', '"batch": 2')
        f.seek(0), f.write(edited), f.truncate()
    assert TrainConfig.load("./default_x4.json").batch == TrainConfig.load("default_x4.json").batch == 2
    (tmp_path / "c.json").write_text(json.dumps({**d, "warmup": 10}))
    args = ["train", "--config", "c.json", "--out", "o", "-q"]
    assert main(args + ["--steps", "20", "--decay-from", "5", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("yoda: error: --decay-from 5: decay_from (5) must not be below warmup")
    # the options are applied together: --steps 8 --decay-from 4 beside a config's decay_from 10 (a run's
    # config.json, fine-tuned again) was refused by --steps against decay_from 10; a clash names its options
    (tmp_path / "d.json").write_text(json.dumps({**d, "steps": 20, "decay_from": 10}))
    more = ["train", "--config", "d.json", "-q", "--device", "cpu", "--minutes", "1e-9"]
    assert main(more + ["--out", "od", "--steps", "8", "--decay-from", "4"]) == 0, capsys.readouterr().err
    assert (TrainConfig.load("od/config.json").steps, TrainConfig.load("od/config.json").decay_from) == (8, 4)
    assert main(more + ["--out", "oe", "--steps", "8", "--decay-from", "0", "--warmup", "12"]) == 0
    capsys.readouterr()
    assert main(more + ["--out", "of", "--steps", "8", "--decay-from", "9", "--warmup", "2"]) == 2
    assert capsys.readouterr().err.startswith("yoda: error: --steps 8 --decay-from 9: decay_from (9) must be below "
                                              "steps (8)")
    # --val-every of a config with no validation crops was ignored without a word
    (tmp_path / "v.json").write_text(json.dumps({**d, "data": {**d["data"], "val_crops": 0}}))
    assert main(["train", "--config", "v.json", "--out", "ov", "-q", "--device", "cpu", "--val-every", "2"]) == 2
    assert capsys.readouterr().err.startswith("yoda: error: --val-every 2: this config validates on no held-out "
                                              "crops (data.val_crops 0)") and not os.path.exists("ov")
    # --warmup lowers it (applied before --decay-from); a run that ends inside its warm-up is warned of
    assert main(args + ["--steps", "20", "--warmup", "5", "--decay-from", "5", "--device", "cpu", "--minutes",
                        "1e-9"]) == 0
    assert TrainConfig.load("o/config.json").warmup == 5 and capsys.readouterr().err.count("warning") == 0
    shutil.rmtree("o")
    assert main(args + ["--steps", "4", "--device", "cpu"]) == 0
    assert ("the run ends inside its warm-up (warmup 10, steps 4): the learning rate reaches 0.0004, not lr (0.001); "
            "give --warmup below --steps") in capsys.readouterr().err
    shutil.rmtree("o")
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(args + ["--steps", "1", "--device", "cpu"]) == 0
    assert b"\r" not in (tmp_path / "o" / "log.csv").read_bytes()


def test_the_readmes_own_loop_runs_as_printed():
    """README's "your own model and loop" lines used names it never made (denoise, x0, c, A, schedule): they run
    now as printed, after the block's imports, and the loss reaches the network's weights."""
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "diffusion_loss(denoise" in b)
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# your own model and loop"))
    code = "\n".join([line for line in lines[:start] if line.startswith(("import ", "from "))] + lines[start:])
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out, net = scope["out"], scope["net"]
    assert torch.isfinite(out.loss) and out.loss > 0
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    # its map is the one yoda.sample makes of lr: min-max normalised at x0's grid after the resize (the bilinear
    # resize of the LR map peaked below 1, and masked 0.7% of pixels otherwise than sampling)
    A = scope["A"]
    assert A.shape == (4, 1, 64, 64) and A.amin(dim=(1, 2, 3)).tolist() == [0.0] * 4
    assert A.amax(dim=(1, 2, 3)).tolist() == [1.0] * 4


def test_the_readme_lists_every_config_field_with_its_default():
    """The config format had no reference: fields such as ema_decay or data.val_crop were named nowhere but in
    dumps, and a left-out field took a default no document gave. README's table lists every field of TrainConfig,
    data (DataConfig) and loss (LossConfig), each scalar with the code's default as JSON."""
    import pathlib

    from yoda.data import DataConfig

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| (.+?) \| ", text, re.M))
    for cls, prefix in ((TrainConfig, ""), (DataConfig, "data."), (LossConfig, "loss.")):
        for f in dataclasses.fields(cls):
            name = prefix + f.name
            if name in ("data", "loss"):  # sections: their fields are the rows
                continue
            assert name in rows, f"README's config table lacks {name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if not isinstance(default, dict):  # model / schedule: described, the schedule's in full below
                assert rows[name] == f"`{json.dumps(default)}`", (name, rows[name])
    assert rows["schedule"] == f"`{json.dumps(TrainConfig().schedule)}`"


def test_a_log_that_cannot_be_written_for_a_while_keeps_its_rows(tmp_path, img_folder, monkeypatch):
    """log.csv open in Excel on Windows (a deny-write lock: PermissionError) ended the training run at its next log
    step. Its rows are kept and written at the next log step that can, with one warning; the log ends whole."""
    import yoda.training.trainer as trainer_mod

    real, refused = trainer_mod.append_whole, []

    def locked(path, data):
        if len(refused) < 2:  # the second and third log steps: held by another program
            refused.append(data)
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, data)

    monkeypatch.setattr(trainer_mod, "append_whole", locked)
    with pytest.warns(UserWarning, match=r"log\.csv cannot be written now \(Permission denied: open in another "
                                         r"program\?\): its rows are kept and written at the next log step") as seen:
        tr = Trainer(tiny_config(img_folder, steps=5, ckpt_every=0, val_every=0), str(tmp_path / "run"),
                     device="cpu", progress=False)
        tr.run()
    assert sum("cannot be written now" in str(w.message) for w in seen) == 1 and len(refused) == 2
    with open(tmp_path / "run" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]


def test_the_bar_shows_the_validation_psnr(tmp_path, img_folder, capsys):
    """The bar showed the loss only: a run's validation PSNR was in log.csv and nowhere on the screen."""
    tr = Trainer(tiny_config(img_folder, steps=2, val_every=2), str(tmp_path / "r"), device="cpu", progress=True)
    tr.run()
    psnr = tr.rows[-1]["val_psnr_plain"]
    assert isinstance(psnr, float) and f"val={psnr:.2f} dB" in capsys.readouterr().err


def test_on_row_says_which_row_is_the_runs_last(tmp_path, img_folder):
    """Trainer(on_row=) gets each logged row, its total steps, and whether it is the run's last: the end, or a stop's
    (yoda train's log lines left a stopped run's last row out)."""
    seen = []
    cfg = tiny_config(img_folder, steps=4, log_every=2, val_every=0, ckpt_every=0)
    tr = Trainer(cfg, str(tmp_path / "a"), device="cpu", progress=False,
                 on_row=lambda row, total, final: seen.append((row["step"], total, final)))
    tr.run(max_seconds=0.0)  # stops after its first step (--minutes)
    assert seen == [(1, 4, True)]
    seen.clear()
    Trainer(cfg, str(tmp_path / "b"), device="cpu", progress=False,
            on_row=lambda row, total, final: seen.append((row["step"], total, final))).run()
    assert seen == [(2, 4, False), (4, 4, True)]
    # one that fails (`yoda train ... | tee log` whose tee died) is called after the step's checkpoint is saved:
    # the run resumes at that step (it was called before, and the steps since the last checkpoint were lost)

    def fails(row, total, final):
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        Trainer(cfg, str(tmp_path / "c"), device="cpu", progress=False, on_row=fails).run(max_seconds=0.0)
    assert Trainer(cfg, str(tmp_path / "c"), device="cpu", progress=False).step == 1


@pytest.mark.parametrize("state", ["float64-default", "meta-default-device", "no-grad", "inference-mode"])
def test_training_is_the_same_under_the_callers_torch_state(tmp_path, img_folder, state):
    """A notebook's torch.set_default_dtype(torch.float64) built a float64 model, whose first float32 batch failed
    in a Linear; torch.no_grad() / inference_mode around train_step gave torch's "element 0 of tensors does not
    require grad". The run trains as in a clean process: the same weights, and the caller's state left as it was."""
    import contextlib

    cfg = tiny_config(img_folder, steps=2, val_every=0)
    ref = Trainer(cfg, str(tmp_path / "ref"), device="cpu", progress=False)
    ref.run()
    ctx = {"no-grad": torch.no_grad, "inference-mode": torch.inference_mode}.get(state, contextlib.nullcontext)
    if state == "float64-default":
        torch.set_default_dtype(torch.float64)
    if state == "meta-default-device":  # (standing in for a notebook's 'cuda')
        torch.set_default_device("meta")
    try:
        with ctx():
            tr = Trainer(cfg, str(tmp_path / "run"), device="cpu", progress=False)
            tr.run()
            assert torch.get_default_dtype() == (torch.float64 if state == "float64-default" else torch.float32)
            assert torch.is_grad_enabled() == (state in ("float64-default", "meta-default-device"))
    finally:
        torch.set_default_dtype(torch.float32)
        torch.set_default_device(None)
    for (k, a), b in zip(ref.ema.state_dict().items(), tr.ema.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k


def test_a_budget_bar_counts_steps_and_a_changed_folder_names_data_dir(tmp_path, img_folder, monkeypatch):
    """Under --minutes the bar's total was the config's steps (default_x4: 1,000,000): a 79-hour ETA for a
    24-second run. A resume whose training folder differs (a rerun without --data-dir) said "differs in:
    data.source" without naming the option."""
    import tqdm as tqdm_mod

    totals = []

    class Spy(tqdm_mod.tqdm):
        def __init__(self, *a, **k):
            totals.append(k.get("total"))
            super().__init__(*a, **k)

    monkeypatch.setattr(tqdm_mod, "tqdm", Spy)
    cfg = tiny_config(img_folder, steps=3, val_every=0)
    Trainer(cfg, str(tmp_path / "a"), device="cpu", progress=False).run(max_seconds=3600)
    Trainer(cfg, str(tmp_path / "b"), device="cpu", progress=False).run()
    assert totals == [None, 3]
    other = tmp_path / "other"
    other.mkdir()
    for p in Path(img_folder).iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    moved = tiny_config(str(other), steps=3, val_every=0)
    with pytest.raises(ValueError, match=r"differs in: data\.source: .* \(the training images: yoda train "
                                         r"--data-dir names them\); resume with the run's own config\.json"):
        Trainer(moved, str(tmp_path / "b"), device="cpu", progress=False)


def test_a_rerun_over_a_log_without_a_checkpoint_says_it_starts_afresh(tmp_path, img_folder, capsys):
    """A run killed before its first checkpoint leaves log.csv rows: the rerun started at step 0 and replaced them
    without a word."""
    import json

    from yoda.cli import main

    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_config(img_folder, val_every=0).to_dict()))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    assert "holds log.csv rows" not in capsys.readouterr().err
    (out / "checkpoint.pt").unlink()  # (as a SIGKILL before the first checkpoint leaves it)
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"yoda: warning: --out {out} holds log.csv rows but no checkpoint.pt (a run stopped before its first " \
           "checkpoint): this run starts at step 0 and writes its log afresh" in err, err
