"""yoda.load / yoda.save_model (yoda/checkpoint.py readers, yoda/models/*_load.py, yoda/models/yoda_format.py):
upstream checkpoint layouts, the "yoda" format, model cards, and clear errors."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
import os
import pickle
import re
import struct
import warnings

import pytest
import torch
from safetensors.torch import save_file

import yoda
from yoda.adapters import as_adapter
from yoda.checkpoint import CheckpointError
from yoda.models import ModelCard, SR3Config, SR3UNet, SRDiff, SRDiffConfig, save_model
from yoda.models.srdiff import srdiff_beta_schedule
from yoda.models.srdiff_load import fold_weight_norm, srdiff_config_from_state_dict
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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_betas_saved_in_half_precision_are_their_schedule(tmp_path, dtype):
    """A checkpoint saved after net.half() holds its betas in fp16 / bf16. Compared at float32's tolerance, SR3's
    1e-6 .. 1e-2 buffer "matched neither" its schedule (a false warning), and an SRDiff file's linear schedule read
    as cosine and sampled with the rounded betas."""
    from yoda.checkpoint import betas_match

    sr3 = Schedule.linear(2000, 1e-6, 1e-2)
    assert betas_match({"betas": sr3.betas.to(dtype)}, sr3)
    assert not betas_match({"betas": sr3.betas.to(dtype)}, Schedule.linear(2000, 1e-5, 1e-2))
    m = _srdiff(beta_schedule="linear", beta_end=0.02)
    p = tmp_path / "model_ckpt_steps_5.ckpt"
    torch.save({"state_dict": {"model": {k: v.to(dtype) for k, v in {**m.state_dict(), **_bufs(m.schedule)}.items()}}},
               p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = yoda.load("srdiff", p)
    assert got.config.beta_schedule == "linear" and got.card.schedule == m.schedule  # the exact betas


# ----------------------------------------------------------------------------------------------------------
# upstream layouts
# ----------------------------------------------------------------------------------------------------------
def test_sr3_safetensors_and_dataparallel_prefix(tmp_path):
    net = _sr3()
    p = tmp_path / "w.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
    got = yoda.load("sr3", p, config=CFG)
    assert torch.equal(_sr3_out(got), _sr3_out(net))
    assert got.card.scale == 2 and got.card.schedule == Schedule.linear(2000, 1e-6, 1e-2)
    assert (got.card.prediction, got.card.space) == ("eps", "pixel")
    assert got.card.config["train_schedule"] == Schedule.linear(2000, 1e-6, 1e-2).to_dict()
    assert yoda.load("sr3", p, config=CFG.to_dict()).card.scale == 2
    # torch.compile's "_orig_mod." (alone, or inside DataParallel's "module."), was "the keys differ ... pass the JSON
    # the model was trained with"; a trainer's wrapper dict was "the config declares N blocks but the file holds
    # only 1 tensors"
    for prefix in ("_orig_mod.", "module._orig_mod.", "_orig_mod.module."):
        save_file({prefix + k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
        assert torch.equal(_sr3_out(yoda.load("sr3", p, config=CFG)), _sr3_out(net))
    torch.save({"model": net.state_dict(), "ema": net.state_dict(), "step": 3}, tmp_path / "wrapped.pth")
    for kind, config in (("sr3", CFG), ("srdiff", None)):
        with pytest.raises(CheckpointError, match=r"wrapped\.pth: the weights are inside 'model', 'ema' \(a wrapper "
                                                  r"dict\): save the one you want as the file's state dict, e\.g\. "
                                                  r"torch\.save\(ckpt\['model'\], PATH\)"):
            yoda.load(kind, tmp_path / "wrapped.pth", config=config)


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
    assert got.card == ModelCard(m.schedule, 4, "eps", "residual", {"kind": "srdiff", "args": m.config.to_dict()})
    assert torch.equal(_srdiff_out(got), _srdiff_out(m))
    # the flat 'model.'-prefixed layout that upstream's load_ckpt also accepts, with an explicit config
    p2 = tmp_path / "flat.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}}, p2)
    got2 = yoda.load("srdiff", p2, config={"hidden_size": 8, "unet_dim_mults": "1|2|3", "rrdb_num_block": 3,
                                           "rrdb_num_feat": 8, "sr_scale": 4, "timesteps": 12, "use_attn": True,
                                           "up_input": True, "lr": 2e-4})
    assert torch.equal(_srdiff_out(got2), _srdiff_out(m))
    # {"state_dict": the state dict itself} (no "model." keys): it was emptied and refused as "not SRDiff"
    torch.save({"state_dict": sd}, p2)
    assert torch.equal(_srdiff_out(yoda.load("srdiff", p2)), _srdiff_out(m))


def test_a_bare_state_dict_without_betas_is_warned_of(tmp_path):
    """torch.save(model.state_dict()) of yoda's own SRDiff loaded as "srdiff" without a word, with upstream's
    default schedule, eps and MATLAB up(lr) guessed (12.9 dB instead of 26.7 for an x0 model): upstream's
    checkpoints always hold their betas, so a file without them and without a config is warned of."""
    m = _srdiff()
    p = tmp_path / "sd.pt"
    torch.save(m.state_dict(), p)
    with pytest.warns(UserWarning, match=r"sd.pt: no betas buffer and no config, so its schedule is a guess, "
                                         r"upstream's default \(cosine, T=100\), as is its prediction \(eps\)"):
        got = yoda.load("srdiff", p)
    assert torch.equal(_srdiff_out(got), _srdiff_out(m))  # the weights themselves load
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yoda.load("srdiff", p, config=m.config)  # the run's config: nothing guessed
        sd = m.state_dict()
        sd.update(_bufs(m.schedule))
        torch.save(sd, p)
        yoda.load("srdiff", p)  # upstream's layout: the betas say the schedule


def test_a_small_file_cannot_declare_a_huge_model(tmp_path):
    """SR3 and SRDiff built the net a file (or its config) declares before comparing it with the file's tensors: a
    2 KB SRDiff checkpoint of zero-element tensors, whose shapes say hidden_size 65536, made yoda allocate
    terabytes (an out-of-memory error naming --max-memory, or the OOM killer). The net is now built on the meta
    device and checked first; and a weight saved as an expanded view (stride 0: one stored value, any shape) is
    refused, since copying it into the module would allocate its full size."""
    m = _srdiff()
    sd = {**m.state_dict(), **_bufs(m.schedule)}
    H = 1 << 16
    bomb = dict(sd)
    bomb["denoise_fn.cond_proj.weight"] = torch.zeros(0, H, 8, 8)
    for i, mult in enumerate((1, 2, 3)):
        bomb[f"denoise_fn.downs.{i}.0.block1.block.1.weight"] = torch.zeros(H * mult, 0, 3, 3)
    p = tmp_path / "model_ckpt_steps_1.ckpt"
    torch.save({"state_dict": {"model": bomb}}, p)
    with pytest.raises(CheckpointError, match=r"the weights do not fit SRDiff: .*shape mismatches: "
                                              r"denoise_fn.cond_proj.weight: checkpoint \(0, 65536, 8, 8\)"):
        yoda.load("srdiff", p)
    # SR3: a config naming a net far larger than the file
    net = _sr3()
    torch.save({f"denoise_fn.{k}": v for k, v in net.state_dict().items()}, tmp_path / "I1_E1_gen.pth")
    huge = SR3Config(inner_channel=H, norm_groups=4, channel_mults=(1, 2), attn_res=(8,), res_blocks=1, image_size=16,
                     scale=4)
    with pytest.raises(CheckpointError, match=r"the weights do not fit SR3UNet: shape mismatches"):
        yoda.load("sr3", tmp_path / "I1_E1_gen.pth", config=huge)
    # an expanded weight: right shape, one stored value
    k = "denoise_fn.downs.0.0.block1.block.1.weight"
    sd[k] = torch.zeros(1).expand(sd[k].shape)
    torch.save({"state_dict": {"model": sd}}, p)
    with pytest.raises(CheckpointError, match=r"tensors whose storage is smaller than their shape \(expanded "
                                              r"views, not saved weights\): '" + k.replace(".", r"\.")):
        yoda.load("srdiff", p)
    sd[k] = sd[k].contiguous()  # the same values stored: loads
    torch.save({"state_dict": {"model": sd}}, p)
    assert torch.equal(yoda.load("srdiff", p).state_dict()[k], sd[k])
    # expanded tensors that a loader computed with before any check: weight_norm's g / v (folded in float64) and
    # the betas buffer (its length became the schedule's T): 11-12 KB files took 2.1-2.3 GB; refused on reading
    for extra in ({"denoise_fn.x.weight_g": torch.zeros(1, 1).expand(50_000_000, 1),
                   "denoise_fn.x.weight_v": torch.zeros(1, 1).expand(50_000_000, 1)},
                  {"betas": torch.full((1,), 0.01).expand(50_000_000)}):
        torch.save({"state_dict": {"model": {**sd, **extra}}}, p)
        assert p.stat().st_size < 1_000_000  # the tiny model; the expanded tensors declare 200-400 MB more
        with pytest.raises(CheckpointError, match=r"tensors whose storage is smaller than their shape"):
            yoda.load("srdiff", p)
    # schedule lengths read from config files are bounded (a 515-byte SR3 JSON asked for 1.5 GB)
    from yoda.models.sr3 import sr3_beta_schedule

    with pytest.raises(ValueError, match="n_timestep 50000000 is over 100000"):
        sr3_beta_schedule({"schedule": "linear", "n_timestep": 50_000_000})
    with pytest.raises(ValueError, match="timesteps 200000 is over 100000"):
        SRDiffConfig(timesteps=200_000)
    # and from a training config, and a model file's betas (T = 3e8 ran 34 s into 7 GB, then "out of memory")
    from yoda.training import TrainConfig

    with pytest.raises(ValueError, match=r"^schedule.T 300000000 is over 100000, the longest schedule"):
        TrainConfig(schedule={"kind": "linear", "T": 300_000_000}).make_schedule()
    with pytest.raises(ValueError, match=r"^betas: 100001 steps is over 100000"):
        Schedule.from_dict({"betas": [0.01] * 100_001})


def test_an_upstream_config_of_millions_of_blocks_and_hostile_config_files_are_refused_at_once(tmp_path):
    """The yoda format refused a config declaring more blocks than its file holds tensors; the upstream loaders built
    them (res_blocks 1000000: 92 s and 3.5 GB before a review stopped it, even on the meta device). Config files
    were read whole whatever they were (/dev/zero: 22 GB, then killed; a FIFO: a wait forever), and a thousand-deep
    nest of JSON or YAML was an internal error with a traceback."""
    from yoda.models.sr3_load import load_sr3_config
    from yoda.models.srdiff_load import load_srdiff_config
    from yoda.training import TrainConfig

    torch.save({f"denoise_fn.{k}": v for k, v in _sr3().state_dict().items()}, tmp_path / "I1_E1_gen.pth")
    deep = dataclasses.replace(CFG, res_blocks=10**6)
    with pytest.raises(CheckpointError, match=r"I1_E1_gen\.pth: the config declares 2000000 blocks but the file "
                                              r"holds only \d+ tensors"):
        yoda.load("sr3", tmp_path / "I1_E1_gen.pth", config=deep)
    m = _srdiff()
    torch.save({"state_dict": {"model": {**m.state_dict(), **_bufs(m.schedule)}}}, tmp_path / "s.ckpt")
    with pytest.raises(CheckpointError, match=r"s\.ckpt: the config declares 1000003 blocks but the file holds only"):
        yoda.load("srdiff", tmp_path / "s.ckpt", config=dataclasses.replace(m.config, rrdb_num_block=10**6))
    nest = "[" * 100_000 + "]" * 100_000
    (tmp_path / "deep.json").write_text('{"model": ' + nest + "}")
    (tmp_path / "deep.yaml").write_text("a: " + nest + "\n")
    (tmp_path / "big.json").write_bytes(b" " * (17 << 20))
    os.mkfifo(tmp_path / "fifo.json")
    for load, what in ((TrainConfig.load, "config file"), (load_sr3_config, "SR3 config"),
                       (load_srdiff_config, "SRDiff config")):
        deep_file = str(tmp_path / ("deep.yaml" if what == "SRDiff config" else "deep.json"))
        with pytest.raises(ValueError, match=f"^{what} [^:]*deep\\.(json|yaml) is nested too deeply to be a config$"):
            load(deep_file)
        with pytest.raises(ValueError, match=f"^{what} [^:]*fifo\\.json is not a regular file \\(a device or a "):
            load(str(tmp_path / "fifo.json"))
        with pytest.raises(ValueError, match=f"^{what} [^:]*big\\.json is over 16 MB; a config is a few KB"):
            load(str(tmp_path / "big.json"))


def test_a_compressed_zip_checkpoint_is_refused_before_it_is_unpacked(tmp_path):
    """torch.load inflates deflated zip records: a 1 MB file unpacked to a 1 GB tensor (1.6 GB of memory, 11 s)
    before any key was checked. torch.save stores records uncompressed, so a file whose entries expand to more
    than twice its size (+1 MB) is refused first; the same file stored is read, by every loader."""
    import zipfile

    from yoda.attention import dino_vits8
    from yoda.checkpoint import read_checkpoint

    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(1 << 20)}, plain)  # 4 MB of zeros, stored
    deflated = tmp_path / "deflated.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert deflated.stat().st_size < 100_000
    assert torch.equal(torch.load(deflated, weights_only=True)["w"], torch.zeros(1 << 20))  # torch would read it
    assert torch.equal(read_checkpoint(plain)[0]["w"], torch.zeros(1 << 20))
    message = r"deflated\.pth: its zip entries expand to \d+ bytes from \d+ on disk \(compressed records"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(deflated)
    with pytest.raises(CheckpointError, match=message):
        dino_vits8(str(deflated))


def test_a_torch_file_named_safetensors_is_read_by_its_content(tmp_path):
    """torch.save(sd, "m.safetensors"): yoda.load and the attention weights said "not a readable safetensors file
    (corrupt or truncated?)" (the name decided), and torch.load given the path reads a .safetensors name as
    safetensors whatever it holds. Files are told by content; a truncated safetensors file is still called so."""
    from yoda.attention.weights import load_state_dict
    from yoda.checkpoint import read_checkpoint

    w = torch.arange(12.0).view(3, 4)
    for legacy in (False, True):  # a zip (torch >= 1.6) and the legacy pickle
        torch.save({"w": w}, tmp_path / "m.safetensors", _use_new_zipfile_serialization=not legacy)
        assert torch.equal(read_checkpoint(tmp_path / "m.safetensors")[0]["w"], w)
        assert torch.equal(load_state_dict(str(tmp_path / "m.safetensors"))["w"], w)
    for pad in range(256):  # a safetensors file whose header length begins with 0x80, as a pickle does
        save_file({"w": w}, tmp_path / "real.safetensors", metadata={"pad": "x" * pad})
        if (tmp_path / "real.safetensors").read_bytes()[:1] == b"\x80":
            break
    assert (tmp_path / "real.safetensors").read_bytes()[:1] == b"\x80"
    for name in ("real.safetensors", "real.pth"):
        os.replace(next(tmp_path.glob("real.*")), tmp_path / name)
        assert torch.equal(read_checkpoint(tmp_path / name)[0]["w"], w)
    save_file({"w": w}, tmp_path / "plain.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "plain.safetensors").read_bytes()[:6])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors file \(corrupt or"):
        read_checkpoint(tmp_path / "cut.safetensors")


def test_a_damaged_zip_checkpoint_is_refused(tmp_path, flip_record_byte):
    """torch.load does not check the CRC-32 of torch.save's records: a byte flipped on disk loaded as a weight of 4900
    (a resumed training's loss 230x) or a NaN. Every loader refuses such a file; a file saved without CRCs
    (torch.serialization.set_crc32_options(False): every record's CRC 0) is read as before."""
    from yoda.attention import dino_vits8
    from yoda.checkpoint import read_checkpoint, zip_refusal

    w = torch.arange(1000.0)
    torch.save({"w": w, "b": torch.ones(3)}, tmp_path / "ok.pth")
    assert zip_refusal(str(tmp_path / "ok.pth")) is None
    assert torch.equal(read_checkpoint(tmp_path / "ok.pth")[0]["w"], w)
    torch.save({"w": w, "b": torch.ones(3)}, tmp_path / "bad.pth")
    flip_record_byte(tmp_path / "bad.pth", "data/0")
    assert not torch.equal(torch.load(tmp_path / "bad.pth", weights_only=True)["w"], w)  # torch reads it
    message = r"bad\.pth: it is corrupt: Bad CRC-32 for file '[^']*data/0' \(a damaged copy or disk\)$"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        dino_vits8(str(tmp_path / "bad.pth"))
    # a record's sizes in the central directory past the file's end (zipfile: EOFError), an encrypted record
    # (RuntimeError): both were CheckpointErrors before the records were read, and stay so (not internal errors);
    # zipfile's EOFError has no message: the reason is its name, not a blank (Pythons with the CVE-2024-0450 fix,
    # Debian's 3.11.2 and 3.13, raise BadZipFile "Overlapped entries" first)
    for name, field, value, reason in (("sizes.pth", slice(20, 28), None, r"it is corrupt: (EOFError|Overlapped entries.*) \(a damaged"),
                                       ("encrypted.pth", slice(8, 10), b"\x01\x00", "could not read it")):
        torch.save({"w": w}, tmp_path / name)
        data = bytearray((tmp_path / name).read_bytes())
        at = data.rfind(b"PK\x01\x02", 0, data.find(b"data/0", data.find(b"PK\x01\x02")) + 1)
        data[at + field.start:at + field.stop] = value or struct.pack("<II", len(data) + 5000, len(data) + 5000)
        (tmp_path / name).write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=rf"{name}: {reason}"):
            read_checkpoint(tmp_path / name)
    # one bit of a record's central-directory entry: "external attributes" 0x10 (MS-DOS folder) made torch's zip
    # reader give no bytes, its tensor uninitialised memory (the CRC check read the record, zipfile ignores the bit); "version
    # needed" past 6.3 was zipfile's NotImplementedError, an internal error
    for name, offset, value, reason in (("folder.pth", 38, 0x10, r"record\(s\) .*data/0.* are marked as folders"),
                                        ("version.pth", 6, 0x55, r"zip file version")):
        torch.save({"w": w}, tmp_path / name)
        data = bytearray((tmp_path / name).read_bytes())
        at = data.rfind(b"PK\x01\x02", 0, data.find(b"data/0", data.find(b"PK\x01\x02")) + 1)
        data[at + offset] |= value
        (tmp_path / name).write_bytes(bytes(data))
        if name == "folder.pth":
            assert not torch.equal(torch.load(tmp_path / name, weights_only=True)["w"], w)  # torch reads garbage
        for read in (read_checkpoint, dino_vits8):
            with pytest.raises(CheckpointError, match=rf"{name}: it is corrupt: {reason}.*\(a damaged copy or disk\)"):
                read(str(tmp_path / name))
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": w}, tmp_path / "no_crc.pth")
    finally:
        torch.serialization.set_crc32_options(True)
    assert torch.equal(read_checkpoint(tmp_path / "no_crc.pth")[0]["w"], w)


def test_srdiff_config_dict_refuses_unknown_keys(tmp_path):
    """A dict config used to skip every unknown key, so a misspelled field silently kept its default (a cosine T=100
    card for timestep=1000, beta_schedul="linear"). It takes SRDiffConfig fields and upstream's other hparams keys
    (skipped, as the YAML path skips them); any other key is refused by name."""
    m = _srdiff(beta_schedule="linear")
    p = tmp_path / "model_ckpt_steps_5.ckpt"
    torch.save({"state_dict": {"model": {**m.state_dict(), **_bufs(m.schedule)}}}, p)
    fields = dict(hidden_size=8, dim_mults=[1, 2, 3], rrdb_num_block=3, rrdb_num_feat=8, sr_scale=4)
    with pytest.raises(ValueError, match=r"SRDiffConfig: unknown key\(s\) beta_schedul \(did you mean beta_schedule\?\), "
                                         r"timestep \(did you mean timesteps\?\); known: "):
        yoda.load("srdiff", p, config={**fields, "timestep": 12, "beta_schedul": "linear"})
    got = yoda.load("srdiff", p, config={**fields, "timesteps": 12, "beta_schedule": "linear"})
    assert got.card.schedule == m.schedule and torch.equal(_srdiff_out(got), _srdiff_out(m))
    # upstream's hparams (configs/diffsr_df2k4x.yaml and its chain, set_hparams' own keys) load as before ...
    hparams = {**fields, "timesteps": 12, "beta_schedule": "linear", "unet_dim_mults": "1|2|3", "base_config":
               ["./diffsr_base.yaml", "./df2k4x.yaml"], "trainer_cls": "tasks.srdiff_df2k.SRDiffDf2k", "lr": 2e-4,
               "batch_size": 64, "max_updates": 400000, "res": True, "use_wn": False, "gn_groups": 0,
               "pred_noise": True, "binary_data_dir": "data/binary/df2k4x", "crop_size": 320, "work_dir": "",
               "exp_name": "srdiff_df2k4x", "infer": True}
    del hparams["dim_mults"]
    assert yoda.load("srdiff", p, config=hparams).card.schedule == m.schedule
    # ... but a key of neither kind is still a typo
    with pytest.raises(ValueError, match=r"unknown key\(s\) beta_schedul \(did you mean beta_schedule\?\); .* and upstream's hparams"):
        yoda.load("srdiff", p, config={**hparams, "beta_schedul": "cosine"})
    # upstream switches that change what the weights mean are refused, not sampled as yoda's model
    for key, value in (("res", False), ("use_rrdb", False)):
        with pytest.raises(ValueError, match=rf"upstream's {key}: {value!r} builds or samples a model yoda does not "):
            yoda.load("srdiff", p, config={**hparams, key: value})
    # diffsr_base.yaml's pred_noise and gn_groups are read by no upstream code (its denoiser predicts eps and has no
    # group norm whatever they say): they were refused, so such a run's config did not load
    for key, value in (("pred_noise", False), ("gn_groups", 8)):
        assert yoda.load("srdiff", p, config={**hparams, key: value}).card.schedule == m.schedule


def test_srdiff_yaml_config_chain(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "base.yaml").write_text("hidden_size: 64\nunet_dim_mults: 1|2|2|4\ntimesteps: 100\nlr: 0.0002\n")
    (tmp_path / "x4.yaml").write_text("base_config:\n  - ./base.yaml\nsr_scale: 4\nunet_dim_mults: 1|2|3|4\n")
    from yoda.models import load_srdiff_config

    cfg = load_srdiff_config(tmp_path / "x4.yaml")
    assert cfg == SRDiffConfig(hidden_size=64, dim_mults=(1, 2, 3, 4), timesteps=100, sr_scale=4)
    (tmp_path / "hr.yaml").write_text("base_config: ./x4.yaml\nres: false\n")  # diffuses the HR image: refused
    with pytest.raises(ValueError, match=r"upstream's res: False builds or samples a model yoda does not"):
        load_srdiff_config(tmp_path / "hr.yaml")
    # a run's saved checkpoints/EXP/config.yaml: every key resolved, its bases named but not next to it (upstream's
    # set_hparams skips a missing base); it failed with "config file not found: .../diffsr_base.yaml"
    run = tmp_path / "checkpoints" / "exp"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("base_config:\n  - ./diffsr_base.yaml\n  - ./df2k4x.yaml\nhidden_size: 64\n"
                                     "unet_dim_mults: 1|2|3|4\ntimesteps: 100\nsr_scale: 4\nres_rescale: 2.0\n")
    with pytest.warns(UserWarning, match=r"its base_config './diffsr_base.yaml', './df2k4x.yaml' is not next to it; "
                                         r"skipped, as upstream"):
        assert load_srdiff_config(run / "config.yaml") == cfg
    with pytest.raises(FileNotFoundError, match="SRDiff config file not found"):
        load_srdiff_config(run / "nope.yaml")
    # SR3's JSON is YAML too: it was read as every default, and the weights took the blame (242 missing keys)
    (tmp_path / "sr3.json").write_text('{"name": "sr_sr3", "phase": "val", "model": {"which_model_G": "sr3"}}')
    with pytest.raises(ValueError, match=r"sr3\.json sets none of SRDiff's settings \(model, name, phase\): is it "
                                         r"another model's config \(SR3's JSON\)\?"):
        load_srdiff_config(tmp_path / "sr3.json")


def test_config_files_name_the_file_and_the_key_of_a_bad_value(tmp_path):
    """An SRDiff YAML's bad value was said without the file ("SRDiffConfig.hidden_size must be a positive int"); a
    misspelt key that changes no shape (res_rescal) was skipped without a word; an SR3 JSON's bad value was "bad
    model.unet entry" of any key (image_size is model.diffusion's), "1|2" was read letter by letter, attn_res
    [16.5] was taken as 16 and "16" as (1, 6)."""
    pytest.importorskip("yaml")
    from yoda.models import load_srdiff_config
    from yoda.models.sr3_load import load_sr3_config

    (tmp_path / "e.yaml").write_text("hidden_size: abc\nsr_scale: 4\n")
    with pytest.raises(ValueError, match=r"^SRDiff config .*e\.yaml: SRDiffConfig\.hidden_size must be a positive "
                                         r"int, got str$"):
        load_srdiff_config(tmp_path / "e.yaml")
    (tmp_path / "t.yaml").write_text("hidden_size: 16\nsr_scale: 4\nres_rescal: 1.0\nlr: 0.0002\n")
    with pytest.warns(UserWarning, match=r"t\.yaml: keys neither SRDiff's settings nor upstream's other hparams are "
                                         r"left unused, their defaults stand: res_rescal \(did you mean res_rescale\?\)"):
        assert load_srdiff_config(tmp_path / "t.yaml").res_rescale == 2.0
    opt = {"model": {"which_model_G": "sr3", "unet": {"inner_channel": 8, "norm_groups": 8, "channel_multiplier": [1, 2],
                                                       "attn_res": [8], "res_blocks": 1},
                     "beta_schedule": {p: {"schedule": "linear", "n_timestep": 10, "linear_start": 1e-4,
                                           "linear_end": 2e-2} for p in ("train", "val")},
                     "diffusion": {"image_size": 16, "conditional": True}}}
    assert load_sr3_config(opt)[0].attn_res == (8,)
    for section, key, value, said in (
            ("unet", "inner_channel", "abc", "model.unet.inner_channel must be a positive int, got str"),
            ("diffusion", "image_size", "big", "model.diffusion.image_size must be a positive int, got str"),
            ("unet", "channel_multiplier", "1|2", "model.unet.channel_multiplier must be a list of positive ints, "
                                                  "got '1|2'"),
            ("unet", "attn_res", [16.5], "model.unet.attn_res must be a list of positive ints, got float"),
            ("unet", "attn_res", "16", "model.unet.attn_res must be a list of positive ints, got '16'"),
            ("unet", "dropout", "x", "model.unet.dropout must be a float, got str"),
            ("unet", "norm_groups", 3, "model.unet: inner_channel * channel_mult = 8 is not divisible by norm_groups")):
        bad = json.loads(json.dumps(opt))
        bad["model"][section][key] = value
        with pytest.raises(ValueError, match=rf"^SR3 config config dict: {re.escape(said)}"):
            load_sr3_config(bad)


def test_srdiff_yaml_base_config_fan_out_is_bounded(tmp_path):
    """Only the chain's depth was capped: 16 files each naming the next one four times read 4^15 files (68 KB on
    disk, minutes of work). More than 64 files read is refused, and base_config must be names."""
    pytest.importorskip("yaml")
    from yoda.models import load_srdiff_config

    for i in range(16):
        nxt = f"./d{i + 1}.yaml"
        (tmp_path / f"d{i}.yaml").write_text(f"base_config: [{nxt}, {nxt}, {nxt}, {nxt}]\nhidden_size: 8\n")
    (tmp_path / "d16.yaml").write_text("hidden_size: 8\n")
    with pytest.raises(ValueError, match="its base_config chains read more than 64 files"):
        load_srdiff_config(tmp_path / "d0.yaml")
    (tmp_path / "ok.yaml").write_text("base_config: [./d15.yaml, ./d15.yaml]\n")  # 1 + 2 * (1 + 4) = 11 files
    assert load_srdiff_config(tmp_path / "ok.yaml").hidden_size == 8
    (tmp_path / "num.yaml").write_text("base_config: 5\n")
    with pytest.raises(ValueError, match="base_config must be a file name or a list of them, got 5"):
        load_srdiff_config(tmp_path / "num.yaml")
    (tmp_path / "self.yaml").write_text("base_config: ./self.yaml\n")  # a cycle: named once, not ./././.../self.yaml
    with pytest.raises(ValueError, match=rf"^SRDiff config {tmp_path / 'self.yaml'}: base_config chain too deep \(a "
                                         rf"cycle\? at {tmp_path / 'self.yaml'}\)$"):
        load_srdiff_config(tmp_path / "self.yaml")


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
    out = fold_weight_norm({"a.weight_g": g, "a.weight_v": v, "a.bias": torch.zeros(5)})
    assert set(out) == {"a.weight", "a.bias"} and torch.allclose(out["a.weight"], w, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------
def test_wrong_kind_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        yoda.load("sr4", tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        yoda.load("sr3", tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match=r"checkpoint file not found: .*x\.pth"):
        yoda.load("dino-vits8", tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="is a folder, not a file$"):
        yoda.load("srdiff", tmp_path)
    # a symbolic link to nothing says so, as an image does (it was "not found" of a path that is there, as a link)
    (tmp_path / "link.pth").symlink_to(tmp_path / "moved.pth")
    for kind in ("sr3", "dino-vits8"):
        with pytest.raises(FileNotFoundError, match=r"not found: .*link\.pth \(a broken link to .*moved\.pth\)$"):
            yoda.load(kind, tmp_path / "link.pth")
    with pytest.raises(FileNotFoundError, match=r"not found: .*link\.pth' \(a broken link to .*moved\.pth\) "):
        yoda.attention.dino_resnet50(tmp_path / "link.pth")
    # a training run's folder names its model; a path given as the kind says that the kind comes first
    save_model(_sr3(), tmp_path / "model.safetensors", schedule=Schedule.linear(5))
    with pytest.raises(CheckpointError, match=r"is a folder, not a file: its model is .*model\.safetensors$"):
        yoda.load("yoda", tmp_path)
    with pytest.raises(ValueError, match=r"got '.*model\.safetensors': that is a path; yoda\.load\('yoda', '"):
        yoda.load(str(tmp_path / "model.safetensors"))
    # a run's folder, or its checkpoint, given as the kind: the hint names the run's model file, which loads (it
    # named the folder or checkpoint, which then failed a second time)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    for given in (tmp_path, tmp_path / "checkpoint.pt"):
        with pytest.raises(ValueError, match=rf"that is a path; yoda\.load\('yoda', "
                                             rf"'{re.escape(str(tmp_path / 'model.safetensors'))}'\) loads"):
            yoda.load(str(given))
    with pytest.raises(TypeError, match="path"):
        yoda.load("sr3", 123)
    # a binary file given as the SR3 config: named (the codec's words named no file)
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"^SR3 config .*c\.png is not UTF-8 text \(byte 0\); a config is a text "):
        yoda.load("sr3", tmp_path / "checkpoint.pt", config=str(tmp_path / "c.png"))


def test_corrupt_files(tmp_path, monkeypatch):
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
    with pytest.raises(CheckpointError, match=r"junk\.bin is not a PyTorch or safetensors checkpoint \(it starts "
                                              r"with b'\\x00\\x01garbag'\)"):
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
    with pytest.raises(CheckpointError, match="pickled Python objects") as e:
        yoda.load("sr3", evil, config=CFG)
    msg = str(e.value)  # names what it found and the safe ways on, never "load it with weights_only=False"
    assert "evil.pth" in msg and "yoda.schedule.Schedule" in msg and "add_safe_globals" in msg
    assert "weights_only` set to `False" not in msg and "Re-running" not in msg and "\n" not in msg
    # a plain pickle (pickle.dump, not torch.save) of a foreign class keeps the pickle message, with the class
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"x": datetime.date(2020, 1, 1)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"plain\.pkl: it holds pickled Python objects that are not tensors "
                                              r"\(datetime\.date\)"):
        yoda.load("sr3", tmp_path / "plain.pkl", config=CFG)
    # a git-LFS pointer where the weights belong (a clone made without git-lfs): "header too large", "it starts with
    # b'version '"; and a path with ~ from Python (the shell expands it): "not found"
    from yoda.attention import dino_vits8

    for name in ("lfs.safetensors", "lfs.pth"):
        (tmp_path / name).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 +
                                     "\nsize 123456\n")
        with pytest.raises(CheckpointError, match=rf"{name} is a git-LFS pointer, not the weights: fetch them"):
            yoda.load("sr3", tmp_path / name, config=CFG)
        with pytest.raises(ValueError, match=rf"{name} is a git-LFS pointer"):
            dino_vits8(str(tmp_path / name))
    monkeypatch.setenv("HOME", str(tmp_path))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "home.safetensors"))
    assert torch.equal(yoda.load("sr3", "~/home.safetensors", config=CFG).state_dict()["downs.0.weight"],
                       net.state_dict()["downs.0.weight"])
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(CheckpointError, match="state dict"):
        yoda.load("sr3", notdict, config=CFG)


def test_a_file_that_is_no_checkpoint_says_so(tmp_path):
    """A PNG (or any file that is neither a zip archive nor a pickle) used to get torch's pickle refusal, "it holds
    pickled Python objects that are not tensors ... allow just those [named classes]": it holds no pickle."""
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "some.png")
    with pytest.raises(CheckpointError, match=r"some\.png is not a PyTorch or safetensors checkpoint \(it starts with "
                                              r"b'\\x89PNG\\r\\n\\x1a\\n'\)$") as e:
        yoda.load("srdiff", tmp_path / "some.png")
    assert "pickled" not in str(e.value) and "add_safe_globals" not in str(e.value)
    (tmp_path / "notes.ckpt").write_text("hello, world")
    with pytest.raises(CheckpointError, match=r"notes\.ckpt is not a PyTorch .* \(it starts with b'hello, w'\)$"):
        yoda.load("srdiff", tmp_path / "notes.ckpt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth is not a PyTorch or safetensors checkpoint \(it is empty\)"):
        yoda.load("sr3", tmp_path / "empty.pth", config=CFG)


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
    # weights that fit but hold NaN are corrupt: no config can help, so no advice to pass one
    with pytest.raises(CheckpointError) as e:
        yoda.load("sr3", p, config=CFG)
    assert str(e.value) == (f"{p}: the weights are corrupt: tensors with NaN/Inf: 'downs.0.bias' (a damaged file or "
                            "a diverged training run; use another checkpoint)")
    # a layout problem next to the NaN keeps the hint and still names the NaN tensor
    bad.pop("final_conv.block.3.weight")
    torch.save(bad, p)
    with pytest.raises(CheckpointError, match=r"do not fit SR3UNet: missing keys: 'final_conv\.block\.3\.weight' \| "
                                              r"tensors with NaN/Inf: 'downs\.0\.bias'\. For SR3 pass the JSON"):
        yoda.load("sr3", p, config=CFG)
    m = _srdiff()
    sd = {**m.state_dict(), **_bufs(m.schedule)}
    sd["rrdb.conv_first.weight"] = sd["rrdb.conv_first.weight"].clone().index_fill_(0, torch.tensor([1]),
                                                                                  float("inf"))
    torch.save({"state_dict": {"model": sd}}, p)
    with pytest.raises(CheckpointError) as e:
        yoda.load("srdiff", p)
    assert str(e.value) == (f"{p}: the weights are corrupt: tensors with NaN/Inf: 'rrdb.conv_first.weight' (a damaged "
                            "file or a diverged training run; use another checkpoint)")
    with pytest.raises(TypeError, match="config"):
        yoda.load("sr3", p, config=3.5)
    # integer weights were cast into the float parameters by load_state_dict and loaded without a word
    sd = dict(_sr3().state_dict())
    sd["downs.0.bias"] = sd["downs.0.bias"].long()
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"do not fit SR3UNet: integer / bool / complex tensors for floating "
                                              r"weights: 'downs\.0\.bias'"):
        yoda.load("sr3", p, config=CFG)


# ----------------------------------------------------------------------------------------------------------
# the "yoda" format
# ----------------------------------------------------------------------------------------------------------
def test_save_model_writes_strict_json_and_refuses_what_would_load_as_other_data(tmp_path):
    """extra: a NaN was written as a NaN token (not JSON), {1: 2} loaded as {'1': 2}, {1: 'a', '1': 'b'} as one
    key, a list or a str was taken as extra and a circle was a bare ValueError; nothing is written for any."""
    net, p = _sr3(), tmp_path / "m.safetensors"
    for bad, err, match in (({"a": float("nan")}, ValueError, "JSON-serialisable"), ({1: 2}, TypeError,
                            r"^extra: keys must be strings \(JSON's\), got 1$"), ({"x": [{None: 1}]}, TypeError,
                            r"^extra\['x'\]\[0\]: keys must be strings"), ([1], TypeError,
                            "^extra must be a dict"), ("s", TypeError, "^extra must be a dict")):
        with pytest.raises(err, match=match):
            save_model(net, p, schedule=Schedule.linear(5), extra=bad)
    circle: dict = {}
    circle["self"] = circle
    with pytest.raises(ValueError, match="JSON-serialisable.*Circular"):
        save_model(net, p, schedule=Schedule.linear(5), extra=circle)
    assert not p.exists()
    # numpy scalars, as a training script holds them, are numbers (they were "not JSON serializable")
    import numpy as np

    save_model(net, p, schedule=Schedule.linear(5), scale=np.int64(4), extra={"n": np.int64(3), "f": np.float32(0.5),
                                                                            "b": np.bool_(True)},
               sampling={"steps": np.int64(2)})
    card = yoda.load("yoda", p).card
    assert card.config["extra"] == {"n": 3, "f": 0.5, "b": True} and card.scale == 4 and card.sampling["steps"] == 2
    assert type(card.sampling["steps"]) is int


def test_numpy_and_tensor_integers_are_ints_in_cards_and_configs(tmp_path):
    """ModelCard(scale=np.int64(4)), sampling={"steps": np.int64(2)}, SR3Config / SRDiffConfig fields and
    load_image(max_pixels=) refused numpy ints that yoda.sample takes; SR3Config(scale=4.0) was stored as 4.0."""
    import numpy as np

    card = ModelCard(Schedule.linear(10), np.int64(4), sampling={"steps": np.int32(2)})
    assert type(card.scale) is int and type(card.sampling["steps"]) is int and card.scale == 4
    assert ModelCard(Schedule.linear(10), torch.tensor(4)).scale == 4
    with pytest.raises(TypeError, match="^ModelCard.scale must be a positive int, got float"):
        ModelCard(Schedule.linear(10), 4.0)
    cfg = SR3Config(inner_channel=np.int64(32), res_blocks=np.int16(1), scale=np.int64(4))
    assert (type(cfg.inner_channel), type(cfg.res_blocks), type(cfg.scale)) == (int, int, int)
    assert SR3Config(scale=4.0).scale == 4 and type(SR3Config(scale=4.0, res_blocks=2.0).res_blocks) is int  # files
    assert SR3Config(scale=np.float32(4.0)).scale == SR3Config(scale=np.array(4.0)).scale == 4
    with pytest.raises(ValueError, match="^SR3Config.scale must be a positive int or None, got float"):  # written
        SR3Config(scale=4.5)  # before hold 4.0, and JSON writers may write 4 so
    d = SRDiffConfig(hidden_size=np.int64(8), sr_scale=np.int64(4), rrdb_num_block=np.int64(2))
    assert (type(d.hidden_size), type(d.sr_scale), type(d.rrdb_num_block)) == (int, int, int)
    with pytest.raises(ValueError, match="^SRDiffConfig.hidden_size must be a positive int, got str"):
        SRDiffConfig(hidden_size="8")  # a config file's: a ValueError, which its loaders name the file in
    with pytest.raises(ValueError, match="^SRDiffConfig.sr_scale must be 2, 4 or 8, got 3"):
        SRDiffConfig(sr_scale=np.int64(3))
    with pytest.raises(ValueError, match="^cfg_scale must be a finite float >= 0, got -1.0"):
        yoda.adapters.check_cfg_scale(np.float32(-1))
    assert yoda.adapters.check_cfg_scale(np.float32(1.5)) == 1.5
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert yoda.load_image(tmp_path / "a.png", max_pixels=np.int64(16)).shape == (1, 3, 4, 4)
    with pytest.raises(yoda.images.DataError, match="pixels"):
        yoda.load_image(tmp_path / "a.png", max_pixels=np.int64(15))


def test_yoda_format_round_trip_sr3(tmp_path):
    cfg = SR3UNet.tiny_x4_config()
    torch.manual_seed(2)
    net = SR3UNet.from_config(cfg).eval()
    sched = Schedule.cosine(50)
    p = tmp_path / "default_x4.safetensors"
    save_model(net, p, schedule=sched, extra={"data": "div2k-crops", "steps": 10})
    got = yoda.load("yoda", p)
    assert isinstance(got, SR3UNet) and got.config == cfg
    assert got.card.schedule == sched and got.card.scale == 4 and got.card.config["extra"]["steps"] == 10
    assert (got.card.prediction, got.card.space) == ("eps", "pixel")
    # saved again (a card edited, a copy), it keeps its extra (the training config: it was dropped)
    save_model(got, tmp_path / "again.safetensors")
    assert yoda.load("yoda", tmp_path / "again.safetensors").card.config["extra"] == {"data": "div2k-crops", "steps": 10}
    save_model(got, tmp_path / "again.safetensors", extra={"note": "mine"})  # given: it wins
    assert yoda.load("yoda", tmp_path / "again.safetensors").card.config["extra"] == {"note": "mine"}
    for theirs in ("trained on DIV2K", [1, 2], {"best": math.nan}):  # another tool's extra, which yoda reads but
        got.card = dataclasses.replace(got.card, config={**got.card.config, "extra": theirs})  # cannot write: dropped
        save_model(got, tmp_path / "again.safetensors")  # (it was refused, naming an extra the caller never gave)
        assert "extra" not in yoda.load("yoda", tmp_path / "again.safetensors").card.config
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


def test_save_model_under_a_pickle_name_says_what_it_wrote(tmp_path):
    """save_model(net, "model.pt") wrote safetensors under a pickle's name without a word: torch.load of it failed
    with "invalid load key". It warns now, naming the file, and writes the file as before (yoda.load reads it)."""
    net = SR3UNet.from_config(SR3UNet.tiny_x4_config()).eval()
    for name in ("model.pt", "model.PTH", "m.ckpt", "m.bin"):
        with pytest.warns(UserWarning, match=rf"^path: {re.escape(name)} is written as safetensors \(the yoda "
                                             r"format\), which torch.load does not read; yoda.load does"):
            save_model(net, tmp_path / name, schedule=Schedule.linear(10))
        assert isinstance(yoda.load("yoda", tmp_path / name), SR3UNet)


def test_yoda_format_refuses_a_damaged_file_by_its_sha256(tmp_path):
    """safetensors keeps no checksum: of 150 random byte flips in a yoda file's tensors, 116 loaded a different
    model, and a bit of the header's config changed a beta of the schedule, all without a word. save_model records
    the sha256 of the tensors and the config; a file that differs is refused as corrupt. A file written before
    (no "sha256") loads as it did, and the digest does not depend on the writer's layout."""
    from safetensors import safe_open
    from safetensors.torch import load, save

    from yoda.models.yoda_format import content_digest

    torch.manual_seed(2)
    net = SR3UNet.from_config(SR3UNet.tiny_x4_config()).eval()
    p = tmp_path / "m.safetensors"
    save_model(net, p, schedule=Schedule.linear(50))
    good = p.read_bytes()
    with safe_open(str(p), "pt") as fh:
        meta = fh.metadata()
    tensors = load(good)
    assert meta["sha256"] == content_digest(tensors, meta["config"]) == content_digest(
        dict(reversed(list(tensors.items()))), meta["config"])
    n = int.from_bytes(good[:8], "little")
    beta = good.index(b"0.00", good.index(b"betas"))  # a digit of the first beta
    for at in (len(good) - 100, 8 + n + 3, beta + 3):  # the last tensor, the first one, the schedule
        bad = bytearray(good)
        bad[at] ^= 0x04
        p.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"m\.safetensors: it is corrupt: its tensors or config differ "
                                                  r"from what was saved \(sha256 [0-9a-f]{16}\.\.\.; a damaged"):
            yoda.load("yoda", p)
    old = {k: v for k, v in meta.items() if k != "sha256"}  # a file from before: no digest, read as before
    p.write_bytes(save(tensors, metadata=old))
    x, g = torch.randn(1, 6, 16, 16), torch.tensor([0.4])
    with torch.no_grad():
        assert torch.equal(yoda.load("yoda", p)(x, g), net(x, g))


def test_yoda_format_keeps_the_parameterisation(tmp_path):
    net = SR3UNet.from_config(SR3UNet.tiny_x4_config()).eval()
    p = tmp_path / "x0.safetensors"
    save_model(net, p, schedule=Schedule.cosine(50), prediction="x0")
    got = yoda.load("yoda", p)
    assert got.card.prediction == "x0" and as_adapter(got).prediction == "x0"  # sampled as an x0 model
    save_model(net, p, schedule=Schedule.cosine(50))
    assert as_adapter(yoda.load("yoda", p)).prediction == "eps"  # SR3's own default
    with pytest.raises(ValueError, match="prediction must be"):
        save_model(net, p, schedule=Schedule.cosine(50), prediction="noise")


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_yoda_format_srdiff_parameterisation_reaches_its_adapter(tmp_path, prediction):
    """A residual (SRDiff) model trained to predict x0 or v is sampled as one: its adapter once said "eps"
    whatever the file recorded, and every x0/v model sampled as noise."""
    from yoda.models import SRDiff

    net = SRDiff(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=2, rrdb_num_feat=8).eval()
    p = tmp_path / "r.safetensors"
    save_model(net, p, schedule=Schedule.linear(20), prediction=prediction)
    assert as_adapter(yoda.load("yoda", p)).prediction == prediction
    save_model(net, p, schedule=Schedule.linear(20))
    assert as_adapter(yoda.load("yoda", p)).prediction == "eps"  # SRDiff's own default


def test_yoda_format_round_trip_srdiff(tmp_path):
    m = _srdiff()
    p = tmp_path / "srdiff.safetensors"
    save_model(m, p)
    got = yoda.load("yoda", p)
    assert isinstance(got, SRDiff) and got.config == m.config and got.card.schedule == m.schedule
    assert (got.card.scale, got.card.space) == (4, "residual")
    assert torch.equal(_srdiff_out(got), _srdiff_out(m))


def test_srdiff_schedule_is_the_cards(tmp_path):
    """A yoda-trained SRDiff keeps SRDiffConfig's upstream schedule fields at their defaults (cosine, T=100) and
    samples with its card's schedule: ``net.schedule`` said cosine T=100 for the embedded model, whose card (what
    sampling uses) is linear T=1000. It is now the card's schedule whenever a card is set."""
    m = _srdiff()
    assert m.card is None and m.schedule == srdiff_beta_schedule(m.config)  # no card: upstream's, from the config
    p = tmp_path / "m.safetensors"
    save_model(m, p, schedule=Schedule.linear(20))
    got = yoda.load("yoda", p)
    assert got.config.timesteps == 12 and got.schedule == got.card.schedule == Schedule.linear(20)
    assert as_adapter(got).schedule == Schedule.linear(20)
    got.card = None
    assert got.schedule == srdiff_beta_schedule(got.config)
    net = yoda.load("yoda", "default")
    assert (net.config.timesteps, net.config.beta_schedule) == (100, "cosine")  # upstream's fields, unused
    assert net.schedule == net.card.schedule == as_adapter(net).schedule and net.schedule.T == 1000
    assert torch.equal(net.schedule.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    # the embedded model samples in its weights' dtype too (float32 embedding cast to the mlp's dtype)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = yoda.sample(net, lr, steps=1, sampler="ddim", seed=0, progress=False)
    d = yoda.sample(net.double(), lr.double(), steps=1, sampler="ddim", seed=0, progress=False)
    # float32 rounding only: an x0 model, so no 1 / sqrt(alpha_bar) amplification; seeds 0..4 measured up to 5.1e-7
    assert d.dtype == torch.float64 and (a.double() - d).abs().max() < 1e-5


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
    # weights yoda.load would refuse as corrupt (a diverged run) are not written; nor weights never loaded
    bad = _sr3()
    with torch.no_grad():
        bad.downs[0].bias[1] = float("inf")
    with pytest.raises(ValueError, match=r"^model: tensors with NaN/Inf: 'downs\.0\.bias' \(a diverged"):
        save_model(bad, p, schedule=Schedule.linear(5))
    with pytest.raises(ValueError, match="meta device"):
        save_model(_sr3().to("meta"), p, schedule=Schedule.linear(5))
    assert not p.exists()
    save_model(net, p, schedule=Schedule.linear(5))
    before = p.read_bytes()
    um = os.umask(0)
    os.umask(um)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~um)  # the usual permissions, not mkstemp's 0600
    with pytest.raises(ValueError, match="JSON"):
        save_model(net, p, schedule=Schedule.linear(5), extra={"bad": object()})
    assert p.read_bytes() == before

    class Full(io.FileIO):  # the disk fills after 7 bytes
        def write(self, b):
            super().write(bytes(b)[:7])
            raise OSError(28, "No space left on device")

    import yoda._io

    with monkeypatch.context() as mp:
        mp.setattr(yoda._io, "open", lambda f, mode: Full(f, "w"), raising=False)
        with pytest.raises(OSError, match=f"^\\[Errno 28\\] cannot write {p}: No space left on device$"):
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
    # each kind reaches its own loader of yoda.attention.dino, which rejects a file that is not its checkpoint
    with pytest.raises(CheckpointError, match=r"junk\.pth.*do not fit DinoViT: missing keys: 'cls_token'"):
        yoda.load("dino-vits8", p)
    with pytest.raises(CheckpointError, match=r"junk\.pth.*do not fit ResNet50: missing keys: 'conv1\.weight'"):
        yoda.load("dino-resnet50", p)
    with pytest.raises(TypeError, match="config"):
        yoda.load("dino-resnet50", p, config=5)
    # each kind calls its loader with the path and the config's keyword arguments
    seen = []
    for kind, name in (("dino-vits8", "dino_vits8"), ("dino-resnet50", "dino_resnet50")):
        monkeypatch.setattr(dino, name, lambda path, _name=name, **kw: seen.append((_name, path, kw)) or _name)
        assert yoda.load(kind, p) == name and yoda.load(kind, p, config={"min_size": 64}) == name
    assert seen == [(n, str(p), kw) for n in ("dino_vits8", "dino_resnet50") for kw in ({}, {"min_size": 64})]


# ----------------------------------------------------------------------------------------------------------
# tampered "yoda" metadata: refused from shapes, before anything is allocated
# ----------------------------------------------------------------------------------------------------------
def _tamper(src, dst, **change):
    """Copy of the yoda model file ``src`` with ``change`` applied to its metadata config (``args`` merged)."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    cfg = json.loads(meta["config"])
    cfg["args"].update(change.pop("args", {}))
    cfg.update(change)
    save_file(tensors, str(dst), metadata=_signed(meta, tensors, cfg))
    return dst


def _signed(meta: dict, tensors: dict, cfg: dict) -> dict:
    """A yoda file's metadata with the config ``cfg`` and its sha256 made again, as someone editing the file on
    purpose would: the checks after the digest's are what the tests that edit a config test."""
    from yoda.models.yoda_format import content_digest

    text = json.dumps(cfg)
    return {**meta, "config": text, "sha256": content_digest(tensors, text)}


def test_tampered_architecture_is_refused_before_building(tmp_path, monkeypatch):
    import yoda.models.yoda_format as ck

    p = tmp_path / "m.safetensors"
    save_model(_sr3(), p, schedule=Schedule.linear(5))
    wide = _tamper(p, tmp_path / "wide.safetensors", args={"inner_channel": 1024})
    built = []
    real_build = ck.build_model

    def build(kind, args):  # a real (non-meta) build of the tampered 1024-wide net would take ~11 GB
        device = torch.empty(0).device.type
        built.append(device)
        assert device == "meta" or args["inner_channel"] == 8, "built the declared network for real"
        return real_build(kind, args)

    monkeypatch.setattr(ck, "build_model", build)
    with pytest.raises(CheckpointError, match=r"wide\.safetensors: the weights do not fit SR3UNet: .*shape "
                                              r"mismatches: .*checkpoint \(8, 6, 3, 3\) vs model \(1024, 6, 3, 3\)"):
        yoda.load("yoda", wide)
    assert built == ["meta"]
    got = yoda.load("yoda", p)  # the honest file: built once, on meta, checked there and given the file's weights
    assert built == ["meta", "meta"] and torch.equal(_sr3_out(got), _sr3_out(_sr3()))
    # a depth no file of this size can hold is refused from the counts alone, without any build
    deep = _tamper(p, tmp_path / "deep.safetensors", args={"res_blocks": 10**7})
    with pytest.raises(CheckpointError, match=r"deep\.safetensors: the yoda config declares 20000000 blocks but "
                                              r"the file holds only \d+ tensors"):
        yoda.load("yoda", deep)
    assert built == ["meta", "meta"]


def test_tampered_scale_and_kind_name_the_file(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(_sr3(), p, schedule=Schedule.linear(5))
    for change, match in (({"scale": "x"}, r"scale must be a positive int, got 'x'"),
                          ({"scale": 0}, "scale must be a positive int"),
                          ({"kind": "gan"}, "unknown model kind 'gan'"),
                          ({"args": {"inner_channel": -3}}, "inner_channel must be a positive int"),
                          # channels of 10**12 overflow torch's storage size even on meta (a RuntimeError)
                          ({"args": {"inner_channel": 10**12}}, "do not build a 'sr3' model: .*overflow")):
        bad = _tamper(p, tmp_path / "bad.safetensors", **change)
        with pytest.raises(CheckpointError, match=r"bad\.safetensors: .*" + match):
            yoda.load("yoda", bad)


def test_tampered_srdiff_timesteps_refused_before_building(tmp_path):
    p = tmp_path / "s.safetensors"
    save_model(_srdiff(), p)
    bad = _tamper(p, tmp_path / "t.safetensors", args={"timesteps": 50_000})  # longer than any real schedule
    with pytest.raises(CheckpointError, match=r"t\.safetensors: the yoda config declares timesteps=50000, but "
                                              r"the file's schedule has T=12"):
        yoda.load("yoda", bad)
    bad = _tamper(p, tmp_path / "u.safetensors", args={"timesteps": 10**9})  # 8 GB of betas if built
    with pytest.raises(CheckpointError, match=r"u\.safetensors: the yoda config's args do not build a 'srdiff' model: "
                                              r"SRDiffConfig.timesteps 1000000000 is over 100000"):
        yoda.load("yoda", bad)


def test_default_names_the_embedded_model_and_cards_print_short():
    """yoda.load("yoda", "default") is the embedded model (it was a FileNotFoundError), the file the CLI's --model
    default loads; its card printed ~23 kB of betas (the config holds the schedule), now one short line."""
    from pathlib import Path

    path = Path(yoda.__file__).resolve().parent / "weights" / "default_x4.safetensors"  # the CLI's DEFAULT_WEIGHTS
    net, ref = yoda.load("yoda", "default"), yoda.load("yoda", str(path))
    bare = yoda.load()  # what a notebook tries first
    assert bare.card == ref.card and all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(),
                                                                            ref.state_dict().values()))
    assert net.card == ref.card and net.card.scale == 4 and net.card.schedule.T == 1000
    sd, sd_ref = net.state_dict(), ref.state_dict()
    assert sd.keys() == sd_ref.keys() and all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    r = repr(net.card)
    assert r == ("ModelCard(schedule=Schedule(T=1000, betas=[0.0001 .. 0.02]), scale=4, prediction='x0', "
                 "space='residual', config=<srdiff config with keys kind, args, schedule, scale, prediction, extra>, "
                 "sampling={'sampler': 'ddim', 'steps': 1})")
    assert str(net.card) == r and len(r) < 240 and len(repr(dict(net.card.config))) > 20000
    assert repr(ModelCard(Schedule.linear(7), 2)) == ("ModelCard(schedule=Schedule(T=7, betas=[0.0001 .. 0.02]), "
                                                       "scale=2, prediction='eps', space='pixel', config=None)")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: default$"):  # "default" names the
        yoda.load("srdiff", "default")  # embedded model for kind "yoda" only
    from yoda.models.loading import DEFAULT_WEIGHTS

    assert DEFAULT_WEIGHTS == path


def test_files_without_prediction_and_the_embedded_model_load_with_a_card(tmp_path):
    """Files written before "prediction" was recorded load as eps models; the shipped default model loads with
    the card its metadata declares."""
    p = tmp_path / "m.safetensors"
    save_model(_sr3(), p, schedule=Schedule.linear(5), prediction="v")
    old = _tamper(p, tmp_path / "old.safetensors")
    from safetensors import safe_open

    with safe_open(str(old), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    cfg = json.loads(meta["config"])
    del cfg["prediction"]
    save_file(tensors, str(old), metadata=_signed(meta, tensors, cfg))
    got = yoda.load("yoda", old)
    assert got.card == ModelCard(Schedule.linear(5), 2, "eps", "pixel", cfg) and as_adapter(got).prediction == "eps"
    default = os.path.join(os.path.dirname(yoda.__file__), "weights", "default_x4.safetensors")
    if os.path.exists(default):
        net = yoda.load("yoda", default)
        with safe_open(default, "pt") as fh:
            declared = json.loads(fh.metadata()["config"])
        assert net.card.scale == declared["scale"] == 4
        assert net.card.schedule == Schedule.from_dict(declared["schedule"])
        assert as_adapter(net).prediction == declared.get("prediction", "eps")


def test_sample_takes_the_models_sampling_defaults(tmp_path):
    """yoda.sample(net, lr) with the embedded model ran DDPM over its T = 1000 steps: 50 s for a 32² crop, below
    bicubic (23.6 against 24.2 dB), where its own sampler (DDIM, 1 step, the CLI's default) gives 26.7 dB in 0.1 s.
    Its card now carries how it samples (DEFAULT_SAMPLING, also for a byte-identical copy), and yoda.sample takes
    the card's sampler and steps where the call leaves them out; what the call gives wins."""
    from yoda.models.loading import DEFAULT_SAMPLING, DEFAULT_WEIGHTS

    assert DEFAULT_SAMPLING == {"sampler": "ddim", "steps": 1}
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    net = yoda.load("yoda", copy)
    assert net.card.sampling == DEFAULT_SAMPLING and as_adapter(net).sampling_defaults == DEFAULT_SAMPLING
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(1, 3, 8, 8, generator=g) * 2 - 1
    seen = []

    def run(**kw):
        return yoda.sample(net, lr, seed=0, progress=False, callback=lambda d: seen.append(d["t"]), **kw)

    assert torch.equal(run(), run(sampler="ddim", steps=1)) and seen == [999, 999]
    two = run(steps=2)  # the model's sampler: DDIM (DDPM's second step draws noise; at one step they are equal)
    assert torch.equal(two, run(sampler="ddim", steps=2)) and not torch.equal(two, run(sampler="ddpm", steps=2))
    seen.clear()
    run(steps=2)  # the model's sampler, the call's steps
    run(sampler="ddpm")  # the call's sampler, the model's steps
    assert seen == [999, 499, 999]
    # saved again, the file keeps how the model samples (save_model dropped it: the copy ran DDPM over T = 1000)
    other = tmp_path / "other.safetensors"
    save_model(net, other)
    assert yoda.load("yoda", other).card.sampling == DEFAULT_SAMPLING
    save_model(net, other, sampling={"sampler": "ddpm", "steps": 3})
    assert yoda.load("yoda", other).card.sampling == {"sampler": "ddpm", "steps": 3}
    with pytest.raises(ValueError, match="ModelCard.sampling"):
        save_model(net, tmp_path / "bad.safetensors", sampling={"steps": 0})
    assert not (tmp_path / "bad.safetensors").exists()
    from safetensors import safe_open

    with safe_open(str(other), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    cfg = json.loads(meta["config"])
    save_file(tensors, str(tmp_path / "bad.safetensors"),
              metadata=_signed(meta, tensors, {**cfg, "sampling": {"steps": "two"}}))
    with pytest.raises(yoda.checkpoint.CheckpointError, match=r"bad\.safetensors: the yoda config in the metadata is "
                                                              r"malformed: ValueError: ModelCard.sampling"):
        yoda.load("yoda", tmp_path / "bad.safetensors")
    # a key edited by hand with a typo was ignored ("predicton": "x0" sampled an x0 model as eps)
    typo = {k: v for k, v in cfg.items() if k != "prediction"} | {"predicton": "x0"}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=_signed(meta, tensors, typo))
    with pytest.raises(yoda.checkpoint.CheckpointError, match=r"malformed: ValueError: unknown key\(s\) \['predicton'\] "
                                                              r"\(the keys are .*; data of one's own goes in 'extra'\)"):
        yoda.load("yoda", tmp_path / "bad.safetensors")
    # an SR3 file whose scale contradicts its args' loaded at the top-level scale (an SRDiff one was refused)
    small = _sr3()
    save_model(small, tmp_path / "sr3.safetensors", schedule=Schedule.linear(5))
    with safe_open(str(tmp_path / "sr3.safetensors"), "pt") as fh:
        meta3, tensors3 = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    cfg3 = json.loads(meta3["config"])
    save_file(tensors3, str(tmp_path / "bad.safetensors"),
              metadata=_signed(meta3, tensors3, {**cfg3, "scale": cfg3["scale"] + 1}))
    with pytest.raises(yoda.checkpoint.CheckpointError, match=rf"malformed: ValueError: scale {cfg3['scale'] + 1} "
                                                              rf"differs from the SR3 args' scale {cfg3['scale']}"):
        yoda.load("yoda", tmp_path / "bad.safetensors")
    # a model whose card has no sampling: yoda.sample's own defaults
    net.card = dataclasses.replace(net.card, sampling=None)
    save_model(net, other)
    plain = yoda.load("yoda", other)
    assert plain.card.sampling is None and as_adapter(plain).sampling_defaults == {}
    seen.clear()
    yoda.sample(plain, lr, seed=0, progress=False, callback=lambda d: seen.append(d["t"]), lower_bound=1.0,
                sigmas=[3.0, 1.0], sampler="euler")  # a sequence of sigmas still sets the count
    assert len(seen) == 2
    sr3 = _sr3()
    sr3.card = ModelCard(Schedule.linear(5), 2, sampling={"steps": 2})
    seen.clear()
    yoda.sample(sr3.eval(), torch.zeros(1, 3, 4, 4), seed=0, progress=False, callback=lambda d: seen.append(d["t"]))
    assert seen == [4, 1]  # DDPM (yoda.sample's), 2 steps (the card's), trailing
    # yoda_adapter(schedule=) in place of the card's: the card's steps where they fit its T, else every step of T
    # (they were refused as "steps must be in [1, T=...]" of steps the call never gave)
    for net in (sr3, _srdiff()):
        net.card = ModelCard(Schedule.linear(20), 4 if net is not sr3 else 2, prediction="x0",
                             space="residual" if net is not sr3 else "pixel", sampling={"sampler": "ddim", "steps": 6})
        for T, want in ((5, 5), (6, 6), (12, 6)):
            ad = net.yoda_adapter(schedule=Schedule.linear(T))
            seen.clear()
            yoda.sample(ad, torch.zeros(1, 3, 4, 4), seed=0, progress=False, callback=lambda d: seen.append(d["t"]))
            assert len(seen) == want and dict(ad.sampling_defaults)["sampler"] == "ddim"
        assert dict(net.yoda_adapter().sampling_defaults) == {"sampler": "ddim", "steps": 6}
    for bad in ({"steps": 0}, {"sampler": 3}, {"eta": 0}, ["steps"]):
        with pytest.raises(ValueError, match="ModelCard.sampling"):
            ModelCard(Schedule.linear(5), 2, sampling=bad)


def test_sample_with_attention_raises_the_models_steps_until_every_pixel_is_refined():
    """yoda.sample(net, lr, attention="edge") with the embedded model took its card's 1 step: at lower_bound 0.6
    only A >= 0.4 was refined (13 % of an astronaut crop, 0.8 dB below 2 steps, a seam where the refined pixels
    began), where the CLI takes 2 steps. The model's own steps are now raised as the CLI raises them (the fewest
    whose last step refines every pixel); steps the call gives are kept, and plain sampling keeps the card's."""
    net = yoda.load("yoda", "default")
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def steps(**kw):
        seen = []
        out = yoda.sample(net, lr, progress=False, **{"seed": 0, **kw},
                          callback=lambda d: seen.append((d["t"], float(d["active_fraction"][0]))))
        return out, seen

    sr, seen = steps(attention="edge")
    assert [t for t, _ in seen] == [999, 499] and seen[0][1] < 1 and seen[-1][1] == 1.0
    assert torch.equal(sr, steps(attention="edge", steps=2)[0])
    with pytest.warns(yoda.UnrefinedWarning, match=r"at steps=1 with lower_bound 0.6, pixels whose attention is below "
                      r"0.4 keep "
                                         r"the LR image .*; steps=2 refines every pixel"):
        assert [t for t, _ in steps(attention="edge", steps=1)[1]] == [999]  # given: kept, and said
    assert [t for t, _ in steps()[1]] == [999]  # plain: the card's one step
    assert len(steps(attention="edge", lower_bound=0.1)[1]) == 10  # the last tau, 1/n - 0.1, is <= 0 from n = 10
    assert len(steps(attention="edge", lower_bound=1.0)[1]) == 1  # every pixel at every step already
    # no count up to 50 covers l = 0.01 (it takes 100): the card's step is kept, and it is said (it was silent)
    with pytest.warns(yoda.UnrefinedWarning, match=r"^attention: at the model's 1 step\(s\) with lower_bound 0.01, "
                      r"pixels "
                                         r"whose attention is below 0.99 keep the LR image, and no step count up to "
                                         r"50 refines every pixel: give steps= or a larger lower_bound$"):
        assert [t for t, _ in steps(attention="edge", lower_bound=0.01)[1]] == [999]
    # seed=None: one draw from torch's generator, as with steps given (the raised run drew twice: another image)
    torch.manual_seed(5)
    a = steps(attention="edge", seed=None)[0]
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(a, steps(attention="edge", steps=2, seed=None)[0]) and torch.equal(torch.rand(1), after)
    torch.manual_seed(5)
    assert torch.equal(a, steps(attention="edge", seed=int(torch.randint(0, 2**32, (1,)).item()))[0])
    # explicit noise gives the count, as the docstring says (steps + 1 entries for the model's 1 step), and it is
    # said with the fix of a count the call fixes
    noise = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    with pytest.warns(yoda.UnrefinedWarning, match=r"^yoda\.sample: at steps=1 with lower_bound 0\.6, pixels whose "
                      r"attention is below 0\.4 keep the LR image .*; more steps or a larger lower_bound refine"):
        assert [t for t, _ in steps(attention="edge", noise=noise)[1]] == [999]
    # down to the least attended pixel: a flat map (a flat image's edge map, all ones) is refined everywhere at the
    # card's step, which is plain sampling (it took 2 steps: another image); a floor of 0.5 needs l >= 0.5 at t/T
    plain, _ = steps()
    flat = torch.zeros(1, 3, 8, 8)
    assert [t for t, _ in steps(attention=torch.ones(1, 1, 32, 32))[1]] == [999]
    assert torch.equal(steps(attention=torch.ones(1, 1, 32, 32))[0], plain)
    assert [t for t, _ in steps(attention=torch.full((1, 1, 32, 32), 0.5), lower_bound=0.4)[1]] == [999, 499]
    # compared in float32, as the masks compare: tau = 1 - 0.55 is 0.44999999999999996 in float64, float32(0.45)
    # after rounding, so the floor 0.45 is covered at the card's step (a float64 comparison took 2 steps)
    floor = torch.full((1, 1, 32, 32), 0.45)
    floor[..., 0, 0] = 1.0
    assert steps(attention=floor, lower_bound=0.55)[1] == [(999, 1.0)]
    assert torch.equal(yoda.sample(net, flat, attention="edge", seed=0, progress=False),
                       yoda.sample(net, flat, seed=0, progress=False))


@pytest.mark.parametrize("kind", ["srdiff", "sr3"])
def test_a_yoda_file_read_as_an_upstream_kind_is_refused(kind, tmp_path, capsys):
    """yoda.load("srdiff", the embedded model's file) loaded it as an upstream eps model with upstream's cosine
    T=100 schedule (12.8 dB instead of 25.9 on a crop), without a word; --model srdiff:FILE did the same."""
    from yoda.cli import main
    from yoda.models.loading import DEFAULT_WEIGHTS
    from yoda.models.yoda_format import FORMAT

    assert FORMAT == "yoda-model"
    with pytest.raises(yoda.checkpoint.CheckpointError,
                       match=rf"is a yoda model file .* not an upstream {kind} checkpoint: load it with "
                             r"yoda.load\('yoda', path\)"):
        yoda.load(kind, DEFAULT_WEIGHTS)
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o.png"), "--model",
                 f"{kind}:{DEFAULT_WEIGHTS}"]) == 2
    assert "is a yoda model file" in capsys.readouterr().err


@pytest.mark.parametrize("kw", [dict(beta_schedule="linear", beta_end=0.05), dict(beta_schedule="cosine", beta_s=0.02)])
def test_srdiff_other_schedules_are_the_checkpoints_betas(tmp_path, kw):
    """A checkpoint trained with a beta_end or beta_s other than upstream's defaults was sampled with the guessed
    cosine / 0.008 schedule (betas off by up to 0.7: a new user's full DDPM run differed by 0.97), with a warning
    that blamed "the config's" schedule. Without a config, the checkpoint's own betas are the schedule."""
    m = _srdiff(**kw)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd.update(_bufs(m.schedule))
    p = tmp_path / "model_ckpt_steps_10.ckpt"
    torch.save({"global_step": 10, "state_dict": {"model": sd}}, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = yoda.load("srdiff", p)
    assert got.card.schedule.T == 12
    torch.testing.assert_close(got.card.schedule.alphas_cumprod, m.schedule.alphas_cumprod, rtol=0, atol=1e-7)
    assert not torch.allclose(got.card.schedule.betas, srdiff_beta_schedule(got.config).betas)  # not the guess
    sd["betas"] = sd["betas"].clone()
    sd["betas"][3] = 0.0  # a corrupt buffer: an error naming the file, not Schedule's own
    torch.save({"global_step": 10, "state_dict": {"model": sd}}, p)
    with pytest.raises(CheckpointError, match="model_ckpt_steps_10.ckpt: its betas buffer is not a schedule"):
        yoda.load("srdiff", p)


def test_srdiff_samples_with_the_checkpoints_betas_whatever_the_config_says(tmp_path):
    """Upstream loads its schedule buffers strictly, so it samples with the checkpoint's betas; a config of only
    architecture fields (cosine T=100 by default) or of another schedule gave the config's schedule, with a
    warning, and a config of another T loaded (upstream's load fails)."""
    m = _srdiff(beta_schedule="cosine")
    p = tmp_path / "model_ckpt_steps_5.ckpt"
    torch.save({"state_dict": {"model": {**m.state_dict(), **_bufs(m.schedule)}}}, p)
    arch = dict(hidden_size=8, dim_mults=[1, 2, 3], rrdb_num_block=3, rrdb_num_feat=8, sr_scale=4)
    assert yoda.load("srdiff", p, config={**arch, "timesteps": 12}).card.schedule == m.schedule
    with pytest.warns(UserWarning, match=r"the checkpoint's betas differ from the config's linear schedule \(T=12\); "
                                         r"sampling uses the checkpoint's, as upstream does"):
        got = yoda.load("srdiff", p, config={**arch, "timesteps": 12, "beta_schedule": "linear"})
    assert torch.equal(got.card.schedule.betas, m.schedule.betas.float().double())  # the buffer's, as it holds them
    for config in (arch, {**arch, "timesteps": 100}):  # the default T is 100
        with pytest.raises(CheckpointError, match=rf"{p}: its betas buffer has shape \(12,\), but the config says "
                                                  r"timesteps: 100 \(upstream would not load it either\)"):
            yoda.load("srdiff", p, config=config)


def test_the_wrong_kind_of_file_is_named_with_what_to_do(tmp_path):
    """An SR3 *_gen.pth or an RRDB pretraining checkpoint read as SRDiff said "SRDiff weights lack
    'denoise_fn.cond_proj.weight' ... (pass its config ...)", naming no file; SR3's *_opt.pth read as SR3 asked for
    the JSON; an upstream checkpoint read as a yoda file gave no hint of sr3: / srdiff:."""
    net = SR3UNet.from_config(SR3Config(inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                                        res_blocks=1, image_size=16, mid_attn=False, scale=4))
    gen, opt, rrdb = tmp_path / "I1_E1_gen.pth", tmp_path / "I1_E1_opt.pth", tmp_path / "rrdb.ckpt"
    torch.save(net.state_dict(), gen)
    torch.save({"epoch": 1, "iter": 10, "scheduler": None, "optimizer": {"state": {}, "param_groups": []}}, opt)
    torch.save({"state_dict": {"model": _srdiff().rrdb.state_dict()}}, rrdb)
    for f in (gen, rrdb):
        with pytest.raises(CheckpointError, match=rf"{f}: not an SRDiff checkpoint: it has no 'denoise_fn\.\*' "):
            yoda.load("srdiff", f)
    with pytest.raises(CheckpointError, match=rf"{opt} is SR3's training state \(\*_opt\.pth: epoch, iter, optimizer"
                                              r"\), not its weights; load the \*_gen\.pth saved next to it"):
        yoda.load("sr3", opt)
    with pytest.raises(CheckpointError, match=r"not a yoda model file .* loads as sr3:PATH / srdiff:PATH"):
        yoda.load("yoda", gen)


def test_a_safetensors_file_named_pth_is_read_by_its_content(tmp_path):
    """The format is told by the bytes, not the suffix: safetensors weights named *.pth load."""
    net = _sr3()
    p = tmp_path / "w.pth"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(p))
    assert torch.equal(_sr3_out(yoda.load("sr3", p, config=CFG)), _sr3_out(net))


def test_betas_half_a_percent_off_the_config_are_warned_of(tmp_path):
    """An SR3 betas buffer is compared with the JSON config's schedules at float32 resolution: 0.5 % off warns,
    and the JSON's val schedule samples. An SR3Config (or a dict of its fields) gives no schedule: the buffer's
    samples, without a word (it took the 16->128 config's T = 2000 schedule, whatever the file held)."""
    net = _sr3()
    json_cfg = {"model": {"unet": {"inner_channel": 8, "norm_groups": 4, "channel_multiplier": [1, 2],
                                   "attn_res": [8], "res_blocks": 1},
                          "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6,
                                                      "linear_end": 1e-2},
                                            "val": {"schedule": "linear", "n_timestep": 100}},
                          "diffusion": {"image_size": 16}},
                "datasets": {"val": {"l_resolution": 8, "r_resolution": 16}}}
    p = tmp_path / "w.pth"
    off = Schedule.linear(2000, 1e-6, 1.005e-2)
    torch.save({**net.state_dict(), **_bufs(off)}, p)
    with pytest.warns(UserWarning, match="matches neither"):
        assert yoda.load("sr3", p, config=json_cfg).card.schedule.T == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cfg in (CFG, CFG.to_dict()):
            got = yoda.load("sr3", p, config=cfg).card.schedule
            assert torch.equal(got.betas, off.betas.float().double())
    torch.save({**net.state_dict(), **_bufs(Schedule.linear(2000, 1e-6, 1e-2))}, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert yoda.load("sr3", p, config=json_cfg).card.schedule.T == 100
        assert yoda.load("sr3", p, config=CFG).card.schedule == Schedule.linear(2000, 1e-6, 1e-2)  # (16->128's)


def test_sr3_scale_where_its_config_gives_none(tmp_path):
    """A JSON without datasets (or an SR3Config without scale) could not be loaded at all: the CLI's --scale was
    only checked against the model. yoda.load's scale= (the CLI passes --scale) fills it; another than the
    config's is refused; other kinds take none."""
    net = _sr3()
    p = tmp_path / "w_gen.pth"
    torch.save(net.state_dict(), p)
    bare = dataclasses.replace(CFG, scale=None)
    with pytest.raises(CheckpointError, match=r"gives no scale: give SR3Config\(scale=...\), or yoda.load's scale="):
        yoda.load("sr3", p, config=bare)
    with pytest.raises(CheckpointError, match=r"gives no scale: give a 'scale' entry of the config dict"):
        yoda.load("sr3", p, config={k: v for k, v in CFG.to_dict().items() if k != "scale"})
    assert yoda.load("sr3", p, config=bare, scale=2).card.scale == 2
    with pytest.raises(ValueError, match=r"scale 4 \(yoda.load's scale=, the CLI's --scale\) does not match the SR3 "
                                         r"config's scale 2"):
        yoda.load("sr3", p, config=CFG, scale=4)
    with pytest.raises(ValueError, match="scale= is for kind 'sr3'"):
        yoda.load("yoda", "default", scale=4)


def test_a_lightning_checkpoint_that_is_not_srdiff_is_not_called_srdiff(tmp_path):
    """{'state_dict': {'model': ...}} without SRDiff's rrdb.* weights: the sr3 loader said "an SRDiff checkpoint,
    load it as kind 'srdiff'", and the srdiff loader then said it was not one."""
    p = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}}, p)
    with pytest.raises(CheckpointError) as e:
        yoda.load("sr3", p, config=CFG)
    assert "SRDiff" not in str(e.value)
    m = _srdiff()
    torch.save({"state_dict": {"model": {**m.state_dict(), **_bufs(m.schedule)}}}, p)
    with pytest.raises(CheckpointError, match="an SRDiff checkpoint .* load it as kind 'srdiff'"):
        yoda.load("sr3", p, config=CFG)


def test_the_same_model_saved_twice_gives_the_same_bytes(tmp_path):
    """safetensors writes the metadata in a hash map's order: one model saved 8 times gave 5 different sha256,
    so same seed, same weights, other files (and init's recorded hash) told nothing."""
    net = yoda.load()
    digests = set()
    for i in range(6):
        save_model(net, tmp_path / f"m{i}.safetensors")
        digests.add((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(digests) == 1
    back = yoda.load("yoda", tmp_path / "m0.safetensors")
    assert (back.card.sampling, back.card.schedule) == (net.card.sampling, net.card.schedule) and all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                                            net.state_dict().values()))
    assert len(next(iter(digests))[8:8 + int.from_bytes(next(iter(digests))[:8], "little")]) % 8 == 0


def test_an_upstream_checkpoint_loaded_as_the_other_kind_says_which_it_is(tmp_path):
    """SR3's *_gen.pth loaded as srdiff asked for "its config" (its weights lack 'denoise_fn.cond_proj.weight'),
    and SRDiff's model_ckpt_steps_*.ckpt loaded as sr3 had "unexpected keys: 'model'" and asked for SR3's JSON:
    both asked for the wrong fix. Each now names the kind the file is."""
    net, m = _sr3(), _srdiff()
    sr3_file, srdiff_file = tmp_path / "I1_E1_gen.pth", tmp_path / "model_ckpt_steps_1.ckpt"
    torch.save({f"denoise_fn.{k}": v for k, v in net.state_dict().items()}, sr3_file)
    torch.save({"state_dict": {"model": {**m.state_dict(), **_bufs(m.schedule)}}}, srdiff_file)
    flat = tmp_path / "flat.ckpt"  # the 'model.'-prefixed layout upstream's load_ckpt also reads
    torch.save({"state_dict": {"model." + k: v for k, v in m.state_dict().items()}}, flat)
    with pytest.raises(CheckpointError, match=r"I1_E1_gen.pth: an SR3 checkpoint .* load it as kind 'sr3'"):
        yoda.load("srdiff", sr3_file)
    for p in (srdiff_file, flat):
        with pytest.raises(CheckpointError, match=rf"{p.name}: an SRDiff checkpoint .* load it as kind 'srdiff'"):
            yoda.load("sr3", p)
    assert torch.equal(_sr3_out(yoda.load("sr3", sr3_file, config=CFG)), _sr3_out(net))  # each loads as its kind
    assert torch.equal(_srdiff_out(yoda.load("srdiff", srdiff_file)), _srdiff_out(m))


def test_materialise_gives_the_meta_model_own_float32_copies_and_names_what_no_file_holds():
    """Loaders build on the meta device and hand the file's tensors over (checkpoint.materialise) instead of
    initialising a network and copying into it: the result must be what that copy gave, float32 parameters from a
    float16 file, contiguous, and not sharing memory with the file's tensors; a tensor made in __init__ that is no
    parameter or buffer (so in no file) stays on the meta device and is named, not silently left empty."""
    from yoda.checkpoint import build_checked

    src = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = {k: v.half() for k, v in src.state_dict().items() if v.is_floating_point()}
    sd["0.weight"] = sd["0.weight"].permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # a non-contiguous view
    sd["1.num_batches_tracked"] = torch.tensor(5)
    state = torch.get_rng_state()
    got = build_checked(lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), sd, "f")
    assert torch.equal(torch.get_rng_state(), state)  # nothing initialised, nothing drawn
    want = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    want.load_state_dict(sd)  # what loading into an initialised network gives
    for (k, a), b in zip(got.state_dict().items(), want.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b) and a.is_contiguous() and a.device.type == "cpu", k
    assert all(p.requires_grad for p in got.parameters())
    sd["0.bias"].fill_(7)
    assert not torch.equal(got[0].bias, sd["0.bias"].float())  # own copies
    assert int(got[1].num_batches_tracked) == 5

    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.table = torch.arange(4.0)  # neither a parameter nor a buffer

    lin = torch.nn.Linear(2, 2).state_dict()
    with pytest.raises(RuntimeError, match=r"^Cached: 'table' stayed on the meta device; make them persistent buffers"):
        build_checked(Cached, {f"lin.{k}": v for k, v in lin.items()}, "f")


def test_adapters_with_sampling_defaults_copy_and_pickle():
    """copy.deepcopy / pickle of the embedded model's adapter (and of every carded SR3 / SRDiff model's, and a
    LatentAdapter given sampling=) failed with "cannot pickle 'mappingproxy' object" (a spawned DataLoader worker,
    a process pool); the defaults stay read-only."""
    import copy

    from yoda.models import LatentAdapter

    lat = LatentAdapter(_identity, _identity, _latent_denoise, Schedule.linear(10), sampling={"steps": 2})
    for ad in (yoda.load().yoda_adapter(), lat):
        for twin in (copy.deepcopy(ad), pickle.loads(pickle.dumps(ad))):
            assert dict(twin.sampling_defaults) == dict(ad.sampling_defaults) and ad.sampling_defaults
            with pytest.raises(TypeError):
                twin.sampling_defaults["steps"] = 3
        d = ad.sampling_defaults  # what MappingProxyType also gave: dicts from |, copy(); reversed
        assert d | {"steps": 3} == {**d, "steps": 3} and {"steps": 3, "x": 1} | d == {"steps": 3, "x": 1, **d}
        assert d.copy() == dict(d) and type(d.copy()) is dict and list(reversed(d)) == list(d)[::-1]


def _latent_denoise(z, t, c):  # (module level: pickled by name)
    return z


def _identity(x):
    return x


# ----------------------------------------------------------------------------------------------------------
# a model in its deployment forms: an EMA's AveragedModel, another trainer's dict, torch.export, wrappers
# ----------------------------------------------------------------------------------------------------------
def test_an_averaged_models_state_dict_loads(tmp_path):
    """torch.optim.swa_utils.AveragedModel(net).state_dict() (an EMA: "n_averaged" beside "module.*" weights) kept
    its prefix, so SR3 listed every key as missing and blamed the config, and SRDiff said "not an SRDiff checkpoint"."""
    from torch.optim.swa_utils import AveragedModel

    from yoda.checkpoint import as_state_dict

    net, m = _sr3(), _srdiff()
    torch.save(AveragedModel(net).state_dict(), tmp_path / "sr3_ema.pth")
    torch.save(AveragedModel(m).state_dict(), tmp_path / "srdiff_ema.pth")
    assert torch.equal(_sr3_out(yoda.load("sr3", tmp_path / "sr3_ema.pth", config=CFG)), _sr3_out(net))
    assert torch.equal(_srdiff_out(yoda.load("srdiff", tmp_path / "srdiff_ema.pth", config=m.config)),
                       _srdiff_out(m))
    n = torch.tensor(3)
    assert as_state_dict({"n_averaged": n, "weight": n}, "f") == {"n_averaged": n, "weight": n}  # no EMA's: kept


def test_a_dict_of_weights_and_optimizer_is_no_sr3_opt_file(tmp_path):
    """{"model": weights, "optimizer": ..., "epoch": 5} read as SR3 was called SR3's training state (*_opt.pth),
    not weights, though the weights were under "model": it says so, as SRDiff does."""
    sd = _sr3().state_dict()
    p = tmp_path / "c.pth"
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 5}, p)
    for kind, config in (("sr3", CFG), ("srdiff", None)):
        with pytest.raises(CheckpointError, match=r"c\.pth: the weights are inside 'model' \(a wrapper dict\): save "
                                                  r"the one you want as the file's state dict"):
            yoda.load(kind, p, config=config)


def test_only_the_trainers_checkpoint_is_called_a_yoda_train_checkpoint(tmp_path):
    """Any {model, ema, step, config} (another trainer's) was called a `yoda train` checkpoint, "the run's model is the
    .safetensors file next to it": one needs a key only yoda's trainer writes (its generator state, "gen")."""
    sd = _sr3().state_dict()
    other = {"model": sd, "ema": sd, "step": 100, "config": {"lr": 1e-4}, "opt": {}}
    torch.save(other, tmp_path / "mine.pt")
    torch.save({**other, "gen": torch.Generator().get_state()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"mine\.pt: the weights are inside 'model', 'ema' \(a wrapper dict\)"):
        yoda.load("sr3", tmp_path / "mine.pt", config=CFG)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is a `yoda train` checkpoint \(the state a run resumes "
                                              r"from\), not a model file"):
        yoda.load("sr3", tmp_path / "checkpoint.pt", config=CFG)


def test_a_torch_export_archive_is_named_with_the_way_to_its_weights(tmp_path):
    """A torch.export.save'd program (.pt2) read as weights was "corrupt or truncated" (torch.load found no
    data.pkl): it is named, with the way to its state dict."""
    net = torch.nn.Conv2d(3, 3, 1)
    p = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 4, 4),)), p)
    for kind, config in (("sr3", CFG), ("srdiff", None), ("yoda", None)):
        with pytest.raises(CheckpointError, match=r"net\.pt2: it is a torch\.export program \(torch\.export\.save, a "
                                                  r"\.pt2 archive\), not weights, .* if the file is trusted, save its "
                                                  r"weights with torch\.save\(torch\.export\.load\(PATH\)\.module\(\)"
                                                  r"\.state_dict\(\), \.\.\.\)"):
            yoda.load(kind, p, config=config)


def test_save_model_writes_the_model_inside_its_wrappers(tmp_path):
    """yoda.sample opened DataParallel / an EMA's AveragedModel / torch.compile around a model, save_model refused
    them ("model must be an SR3UNet or an SRDiff, got DataParallel"), naming no way on."""
    from torch.optim.swa_utils import AveragedModel

    net = _sr3()
    DP = torch.nn.DataParallel
    for i, wrap in enumerate((DP(net), AveragedModel(net), torch.compile(net, backend="eager"),
                              DP(AveragedModel(net)), torch.compile(DP(net), backend="eager"))):
        save_model(wrap, tmp_path / f"m{i}.safetensors", schedule=Schedule.linear(5))
        assert torch.equal(_sr3_out(yoda.load("yoda", tmp_path / f"m{i}.safetensors")), _sr3_out(net)), wrap
    with pytest.raises(TypeError, match=r"^model must be an SR3UNet or an SRDiff \(or DataParallel, "
                                        r"DistributedDataParallel, an EMA's AveragedModel or torch\.compile around "
                                        r"one\), got Sequential$"):
        save_model(torch.nn.Sequential(net), tmp_path / "s.safetensors", schedule=Schedule.linear(5))
