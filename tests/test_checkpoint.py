"""yoda.load / yoda.save_model (yoda/checkpoint.py): upstream checkpoint layouts, the "yoda" format, and clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import yoda
from yoda.adapters import as_adapter
from yoda.checkpoint import CheckpointError, _fold_weight_norm, save_model, srdiff_config_from_state_dict
from yoda.models import SR3Config, SR3UNet, SRDiff, SRDiffConfig
from yoda.models.sr3 import SR3_DIFFUSION_BUFFERS
from yoda.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions (tests/conftest.py)


CFG = SR3Config(inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(8,), res_blocks=1, image_size=16,
                scale=2)


def _sr3(seed=0):
    torch.manual_seed(seed)
    return SR3UNet.from_config(CFG).eval()


def _srdiff(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(hidden_size=8, dim_mults=(1, 2, 3), rrdb_num_block=3, rrdb_num_feat=8, sr_scale=4, timesteps=12)
    args.update(kw)
    return SRDiff(**args).eval()


def _bufs(sched: Schedule) -> dict:
    ab = sched.alphas_cumprod
    out = {k: torch.zeros(sched.T) for k in SR3_DIFFUSION_BUFFERS}
    out["betas"] = sched.betas.float()
    out["alphas_cumprod"] = ab.float()
    return out


def _sr3_out(net):
    torch.manual_seed(9)
    x, g = torch.randn(2, 6, 16, 16), torch.tensor([0.1, 0.9])
    with torch.no_grad():
        return net(x, g)


def _srdiff_out(m):
    torch.manual_seed(9)
    lr = torch.rand(1, 3, 4, 4) * 2 - 1
    up = torch.nn.functional.interpolate(lr, scale_factor=m.config.sr_scale, mode="bicubic")
    x = torch.randn_like(up)
    with torch.no_grad():
        return m(x, torch.tensor([7]), m.rrdb(lr, True)[1], up)


# ----------------------------------------------------------------------------------------------------------
# upstream layouts
# ----------------------------------------------------------------------------------------------------------
def test_sr3_safetensors_and_dataparallel_prefix(tmp_path):
    net = _sr3()
    p = tmp_path / "w.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
    got = yoda.load("sr3", p, config=CFG)
    assert torch.equal(_sr3_out(got), _sr3_out(net))
    assert got.scale == 2 and got.schedule == Schedule.linear(2000, 1e-6, 1e-2)
    assert yoda.load("sr3", p, config=CFG.to_dict()).scale == 2


def test_srdiff_upstream_ckpt_nesting_and_inferred_config(tmp_path):
    m = _srdiff(use_attn=True, up_input=True)
    m.denoise_fn.mid_attn.fn.g.data.fill_(0.3)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd.update(_bufs(m.schedule))
    ck = {"global_step": 1000, "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]}],
          "state_dict": {"model": sd}}
    p = tmp_path / "model_ckpt_steps_1000.ckpt"
    torch.save(ck, p, _use_new_zipfile_serialization=False)  # as upstream's save_checkpoint
    got = yoda.load("srdiff", p)
    assert got.config == m.config  # read back from the shapes and the betas buffer
    assert torch.equal(_srdiff_out(got), _srdiff_out(m))
    # the flat 'model.'-prefixed layout that upstream's load_ckpt also accepts, with an explicit config
    p2 = tmp_path / "flat.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}}, p2)
    got2 = yoda.load("srdiff", p2, config={"hidden_size": 8, "unet_dim_mults": "1|2|3", "rrdb_num_block": 3,
                                           "rrdb_num_feat": 8, "sr_scale": 4, "timesteps": 12, "use_attn": True,
                                           "up_input": True, "lr": 2e-4})
    assert torch.equal(_srdiff_out(got2), _srdiff_out(m))


def test_srdiff_yaml_config_chain(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "base.yaml").write_text("hidden_size: 64\nunet_dim_mults: 1|2|2|4\ntimesteps: 100\nlr: 0.0002\n")
    (tmp_path / "x4.yaml").write_text("base_config:\n  - ./base.yaml\nsr_scale: 4\nunet_dim_mults: 1|2|3|4\n")
    from yoda.models import load_srdiff_config

    cfg = load_srdiff_config(tmp_path / "x4.yaml")
    assert cfg == SRDiffConfig(hidden_size=64, dim_mults=(1, 2, 3, 4), timesteps=100, sr_scale=4)


def test_srdiff_linear_schedule_inferred_and_weight_norm_folded():
    m = _srdiff(beta_schedule="linear", beta_end=0.02)
    sd = dict(m.state_dict())
    sd.update(_bufs(m.schedule))
    cfg = srdiff_config_from_state_dict({k: v for k, v in sd.items() if k not in SR3_DIFFUSION_BUFFERS}, sd)
    assert cfg.beta_schedule == "linear" and cfg.timesteps == 12
    # weight_norm: w = g * v / ||v|| (norm over all dims but 0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    v = w * torch.rand(5, 1, 1, 1, dtype=torch.float64) * 3
    g = w.flatten(1).norm(dim=1).reshape(5, 1, 1, 1)
    out = _fold_weight_norm({"a.weight_g": g, "a.weight_v": v, "a.bias": torch.zeros(5)})
    assert set(out) == {"a.weight", "a.bias"} and torch.allclose(out["a.weight"], w, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
def test_wrong_kind_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        yoda.load("sr4", tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        yoda.load("sr3", tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError):
        yoda.load("dino-vits8", tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        yoda.load("srdiff", tmp_path)
    with pytest.raises(TypeError, match="path"):
        yoda.load("sr3", 123)


def test_corrupt_files(tmp_path):
    net = _sr3()
    good = tmp_path / "good.pth"
    torch.save(net.state_dict(), good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not read"):
        yoda.load("sr3", trunc, config=CFG)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError):
        yoda.load("sr3", junk, config=CFG)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(st))
    b = st.read_bytes()
    st.write_bytes(b[: len(b) - 100])
    with pytest.raises(CheckpointError, match="safetensors"):
        yoda.load("sr3", st, config=CFG)
    # weights_only refuses pickled objects: no code from a checkpoint runs
    evil = tmp_path / "evil.pth"
    torch.save({"x": Schedule.linear(3)}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        yoda.load("sr3", evil, config=CFG)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="state dict"):
        yoda.load("sr3", notdict, config=CFG)


def test_key_and_shape_errors_are_listed(tmp_path):
    sd = dict(_sr3().state_dict())
    p = tmp_path / "w.pth"
    missing = dict(sd)
    missing.pop("final_conv.block.3.weight")
    missing.pop("mid.0.attn.qkv.weight")
    torch.save(missing, p)
    with pytest.raises(CheckpointError, match=r"missing keys: 'mid.0.attn.qkv.weight', 'final_conv.block.3.weight'"):
        yoda.load("sr3", p, config=CFG)
    torch.save({**sd, "extra.weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match=r"unexpected keys: 'extra.weight'"):
        yoda.load("sr3", p, config=CFG)
    torch.save({**sd, "downs.0.weight": torch.zeros(8, 6, 5, 5)}, p)
    with pytest.raises(CheckpointError, match=r"downs.0.weight: checkpoint \(8, 6, 5, 5\) vs model \(8, 6, 3, 3\)"):
        yoda.load("sr3", p, config=CFG)
    bad = dict(sd)
    bad["downs.0.bias"] = torch.full_like(bad["downs.0.bias"], float("nan"))
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match="NaN"):
        yoda.load("sr3", p, config=CFG)
    # a checkpoint of another architecture than the default config says so and hints at config=
    with pytest.raises(CheckpointError, match="config="):
        yoda.load("sr3", p)
    with pytest.raises(TypeError, match="config"):
        yoda.load("sr3", p, config=3.5)


# ----------------------------------------------------------------------------------------------------------
# the "yoda" format
# ----------------------------------------------------------------------------------------------------------
def test_yoda_format_round_trip_sr3(tmp_path):
    cfg = SR3UNet.tiny_x4_config()
    torch.manual_seed(2)
    net = SR3UNet.from_config(cfg).eval()
    sched = Schedule.cosine(50)
    p = tmp_path / "default_x4.safetensors"
    save_model(net, p, schedule=sched, extra={"data": "div2k-crops", "steps": 10})
    got = yoda.load("yoda", p)
    assert isinstance(got, SR3UNet) and got.config == SR3Config(**{**cfg.to_dict(), "scale": None})
    assert got.schedule == sched and got.scale == 4 and got.yoda_config["extra"]["steps"] == 10
    x, g = torch.randn(1, 6, 32, 24), torch.tensor([0.4])
    with torch.no_grad():
        assert torch.equal(got(x, g), net(x, g))
    from safetensors import safe_open

    with safe_open(str(p), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "yoda-model" and meta["version"] == "1"
    d = json.loads(meta["config"])
    assert d["kind"] == "sr3" and d["args"]["channel_mults"] == [1, 2, 2, 4] and d["schedule"]["T"] == 50
    assert torch.equal(torch.tensor(d["schedule"]["betas"], dtype=torch.float64), sched.betas)  # exact floats


def test_yoda_format_keeps_the_parameterisation(tmp_path):
    net = SR3UNet.from_config(SR3UNet.tiny_x4_config()).eval()
    p = tmp_path / "x0.safetensors"
    save_model(net, p, schedule=Schedule.cosine(50), prediction="x0")
    got = yoda.load("yoda", p)
    assert got.prediction == "x0" and as_adapter(got).prediction == "x0"  # sampled as an x0 model
    save_model(net, p, schedule=Schedule.cosine(50))
    assert as_adapter(yoda.load("yoda", p)).prediction == "eps"  # SR3's own default
    with pytest.raises(ValueError, match="prediction must be"):
        save_model(net, p, schedule=Schedule.cosine(50), prediction="noise")


def test_yoda_format_round_trip_srdiff(tmp_path):
    m = _srdiff()
    p = tmp_path / "srdiff.safetensors"
    save_model(m, p)
    got = yoda.load("yoda", p)
    assert isinstance(got, SRDiff) and got.config == m.config and got.schedule == m.schedule
    assert torch.equal(_srdiff_out(got), _srdiff_out(m))


def test_yoda_format_errors_leave_nothing_behind(tmp_path, monkeypatch):
    net = _sr3()
    p = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="schedule"):
        save_model(net, p)  # no schedule attached, none given
    with pytest.raises(ValueError, match="does not describe"):
        save_model(net, p, config=SR3Config(inner_channel=8, norm_groups=4, channel_mults=(1, 2, 2), attn_res=(8,),
                                            res_blocks=1, image_size=16, scale=2), schedule=Schedule.linear(5))
    with pytest.raises(TypeError, match="SR3UNet or an SRDiff"):
        save_model(torch.nn.Linear(2, 2), p, schedule=Schedule.linear(5))
    assert not p.exists()
    save_model(net, p, schedule=Schedule.linear(5))
    before = p.read_bytes()
    um = os.umask(0)
    os.umask(um)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~um)  # the usual permissions, not mkstemp's 0600
    with pytest.raises(ValueError, match="JSON"):
        save_model(net, p, schedule=Schedule.linear(5), extra={"bad": object()})
    assert p.read_bytes() == before

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    import safetensors.torch

    with monkeypatch.context() as mp:
        mp.setattr(safetensors.torch, "save_file", disk_full)
        with pytest.raises(OSError, match="disk full"):
            save_model(net, p, schedule=Schedule.linear(7))
    assert p.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []  # no temporary file left
    with pytest.raises(ValueError, match="config must be None"):
        yoda.load("yoda", p, config=CFG)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(plain))
    with pytest.raises(CheckpointError, match="not a yoda model file"):
        yoda.load("yoda", plain)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(plain),
              metadata={"format": "yoda-model", "version": "1", "config": "{broken"})
    with pytest.raises(CheckpointError, match="malformed"):
        yoda.load("yoda", plain)


def test_dino_kinds_delegate(tmp_path, monkeypatch):
    dino = pytest.importorskip("yoda.attention.dino")
    p = tmp_path / "junk.pth"
    torch.save({"not": torch.zeros(1)}, p)
    # the attention engineer's loader is reached: it rejects a file that is not a DINO checkpoint
    with pytest.raises(Exception) as ei:
        yoda.load("dino-vits8", p)
    assert not isinstance(ei.value, (NotImplementedError, ImportError))
    with pytest.raises(TypeError, match="config"):
        yoda.load("dino-resnet50", p, config=5)
    # each kind calls its loader of yoda.attention.dino with the path and the config's keyword arguments
    seen = []
    for kind, name in (("dino-vits8", "dino_vits8"), ("dino-resnet50", "dino_resnet50")):
        monkeypatch.setattr(dino, name, lambda path, **kw: seen.append((path, kw)) or name)
        assert yoda.load(kind, p) == name and yoda.load(kind, p, config={"min_size": 64}) == name
    assert seen == [(str(p), {}), (str(p), {"min_size": 64})] * 2
