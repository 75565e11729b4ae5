"""yoda.models: SR3UNet / SRDiff / latent adapters against upstream facts, and end-to-end YODA sampling.

Upstream facts used as references (read from the upstream files, not from our code):
- SR3 (Janspiry/Image-Super-Resolution-via-Iterative-Refinement, model/sr3_modules/unet.py, diffusion.py)
- SRDiff (LeiaLi/SRDiff, models/diffsr_modules.py, models/commons.py, models/diffusion.py)
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yoda.adapters import Prepared, upsample
from yoda.models import (LatentAdapter, ModelCard, SR3Config, SR3UNet, SRDiff, SRDiffConfig, load_sr3_config,
                         sr3_beta_schedule, srdiff_beta_schedule)
from yoda.models.sr3 import SR3_16_128, SR3_64_512, PositionalEncoding, SelfAttention
from yoda.models.srdiff_nets import LinearAttention, RRDBNet, SinusoidalPosEmb, Unet
from yoda.sampling import sample
from yoda.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convolutions (tests/conftest.py)


def _lr(B=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, h, w, generator=g) * 2 - 1


def _tiny_sr3(attn=True, seed=0):
    torch.manual_seed(seed)
    net = SR3UNet(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                  attn_res=(8,) if attn else (), res_blocks=1, image_size=16, mid_attn=attn).eval()
    return net


def _tiny_srdiff(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=2, timesteps=10)
    args.update(kw)
    m = SRDiff(**args).eval()
    # upstream zero-initialises Rezero's g; a non-zero g makes the attention path count in the tests
    if m.config.use_attn:
        m.denoise_fn.mid_attn.fn.g.data.fill_(0.5)
    return m


# ==========================================================================================================
# SR3
# ==========================================================================================================
# Keys of one ResnetBlocWithAttn with attention and dim != dim_out, from upstream unet.py:
#   ResnetBlock: noise_func (FeatureWiseAffine -> noise_func = Sequential(Linear)), block1/block2 = Block
#   (Sequential(GroupNorm, Swish, Dropout|Identity, Conv2d) -> indices 0 and 3), res_conv (1x1 conv);
#   SelfAttention: norm (GroupNorm), qkv (1x1 conv, bias=False), out (1x1 conv).
UPSTREAM_BLOCK_KEYS = [
    "res_block.noise_func.noise_func.0.weight", "res_block.noise_func.noise_func.0.bias",
    "res_block.block1.block.0.weight", "res_block.block1.block.0.bias",
    "res_block.block1.block.3.weight", "res_block.block1.block.3.bias",
    "res_block.block2.block.0.weight", "res_block.block2.block.0.bias",
    "res_block.block2.block.3.weight", "res_block.block2.block.3.bias",
    "res_block.res_conv.weight", "res_block.res_conv.bias",
    "attn.norm.weight", "attn.norm.bias", "attn.qkv.weight", "attn.out.weight", "attn.out.bias",
]


def test_sr3_16_128_keys_match_upstream():
    with torch.device("meta"):
        net = SR3UNet.from_config(SR3_16_128)
    sd = net.state_dict()
    # downs: [conv] + 5 levels x (2 blocks [+ Downsample]) -> downs.10/11 are level 3 (res 16: attention)
    assert sorted(k[len("downs.10."):] for k in sd if k.startswith("downs.10.")) == sorted(UPSTREAM_BLOCK_KEYS)
    attn = sorted(k[: -len(".attn.qkv.weight")] for k in sd if k.endswith(".attn.qkv.weight"))
    assert attn == ["downs.10", "downs.11", "mid.0", "ups.4", "ups.5", "ups.6"]
    shapes = {
        "noise_level_mlp.1.weight": (256, 64), "noise_level_mlp.3.weight": (64, 256),
        "downs.0.weight": (64, 6, 3, 3), "downs.3.conv.weight": (64, 64, 3, 3),
        "downs.10.attn.qkv.weight": (1536, 512, 1, 1), "downs.10.res_block.res_conv.weight": (512, 256, 1, 1),
        "mid.0.attn.out.weight": (512, 512, 1, 1), "mid.1.res_block.block2.block.3.weight": (512, 512, 3, 3),
        "ups.0.res_block.res_conv.weight": (512, 1024, 1, 1), "ups.3.conv.weight": (512, 512, 3, 3),
        "ups.18.res_block.block1.block.0.weight": (128,), "final_conv.block.3.weight": (3, 64, 3, 3),
        "final_conv.block.0.weight": (64,),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    # 27 ResnetBlocks x 10 keys + 18 res_conv x 2 + 6 attentions x 5 + mlp 4 + conv in 2 + 4 down + 4 up
    # convs x 2 each + final 4 = 362 (res_conv: 3 in downs where channels grow, all 15 in ups)
    assert len(sd) == 27 * 10 + 18 * 2 + 6 * 5 + 4 + 2 + 8 + 8 + 4 == 362
    assert "mid.1.attn.qkv.weight" not in sd and "downs.9.attn.qkv.weight" not in sd
    with torch.device("meta"):
        big = SR3UNet.from_config(SR3_64_512)
    sd = big.state_dict()
    assert not any(k.startswith(("downs.", "ups.")) and ".attn." in k for k in sd)  # attn_res = []
    assert tuple(sd["mid.0.attn.norm.weight"].shape) == (1024,)  # 64 * 16, norm_groups 16 still divides


def test_positional_encoding_known_values():
    pe = PositionalEncoding(4)
    g = torch.tensor([0.5, 0.9], dtype=torch.float64)
    # w_k = exp(-ln(1e4) * k / 2), k = 0, 1 -> 1, 1e-2
    want = torch.stack([torch.sin(g), torch.sin(g * 1e-2), torch.cos(g), torch.cos(g * 1e-2)], dim=1)
    assert torch.allclose(pe(g), want, rtol=0, atol=1e-15)


def test_sr3_self_attention_matches_upstream_einsum():
    torch.manual_seed(1)
    m = SelfAttention(8, norm_groups=4)
    x = torch.randn(2, 8, 5, 7)
    B, C, H, W = x.shape
    # upstream forward, verbatim math
    qkv = m.qkv(m.norm(x)).view(B, 1, 3 * C, H, W)
    q, k, v = qkv.chunk(3, dim=2)
    att = torch.einsum("bnchw, bncyx -> bnhwyx", q, k) / math.sqrt(C)
    att = torch.softmax(att.reshape(B, 1, H, W, -1), -1).view(B, 1, H, W, H, W)
    ref = m.out(torch.einsum("bnhwyx, bncyx -> bnchw", att, v).reshape(B, C, H, W)) + x
    assert torch.allclose(m(x), ref, atol=1e-5, rtol=0)


def test_sr3_noise_level_shapes_and_errors():
    net = _tiny_sr3()
    x = torch.randn(2, 6, 16, 16)
    g = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        a, b = net(x, g), net(x, g[:, None])
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="noise_level"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(2, 5, 16, 16), g)
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(2, 6, 15, 16), g)
    with pytest.raises(ValueError, match="norm_groups"):
        SR3Config(inner_channel=10, norm_groups=4, channel_mults=(1,))


def test_sr3_tiny_default_is_fully_convolutional():
    cfg = SR3UNet.tiny_x4_config()
    net = SR3UNet.from_config(cfg).eval()
    n = sum(p.numel() for p in net.parameters())
    assert 1_000_000 <= n <= 4_000_000
    with pytest.raises(TypeError, match=r"^SR3UNet takes the config's fields as arguments; build one of an "
                                        r"SR3Config with SR3UNet.from_config\(cfg\)"):
        SR3UNet(cfg)  # (it said "SR3Config.in_channel must be a positive int")
    assert not any(isinstance(m, SelfAttention) for m in net.modules())
    assert net.scale == 4 and net.multiple == 8
    with torch.no_grad():
        for H, W in ((24, 40), (64, 64), (8, 56)):
            assert net(torch.randn(1, 6, H, W), torch.rand(1)).shape == (1, 3, H, W)


SR3_JSON = """{
    "name": "sr_ffhq", // comment with "quotes" and // slashes
    "path": {"log": "http://not-a-comment", "resume_state": null
        // "resume_state": "experiments/x"
    },
    "datasets": {
        "train": {"l_resolution": 4, /* block */ "r_resolution": 16, "batch_size": 4},
        "val": {"l_resolution": 4, "r_resolution": 16}
    },
    "model": {
        "which_model_G": "sr3",
        "unet": {
            "in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
            "channel_multiplier": [1, 2, // 8,
                // 16,
                2],
            "attn_res": [ 8 ],
            "res_blocks": 1,
            "dropout": 0.1
        },
        "beta_schedule": {
            "train": {"schedule": "linear", "n_timestep": 12, "linear_start": 1e-4, "linear_end": 0.2},
            "val": {"schedule": "quad", "n_timestep": 10, "linear_start": 1e-4, "linear_end": 0.2}
        },
        "diffusion": {"image_size": 16, "channels": 3, "conditional": true}
    }
}"""


_GOOD_SR3 = {"model": {"unet": {"inner_channel": 8, "norm_groups": 4, "channel_multiplier": [1, 2], "attn_res": [],
                                 "res_blocks": 1},
                        "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 10},
                                          "val": {"schedule": "linear", "n_timestep": 10}},
                        "diffusion": {"image_size": 16}},
              "datasets": {"val": {"l_resolution": 4, "r_resolution": 16}}}


@pytest.mark.parametrize("where, value, message", [
    (("datasets",), [1], "datasets must be a JSON object, got list"),
    (("model", "diffusion"), [1], "diffusion must be a JSON object, got list"),
    (("model", "unet"), [1], "unet must be a JSON object, got list"),
    (("model", "beta_schedule"), ["train", "val"], "beta_schedule must be a JSON object, got list"),
    (("model", "beta_schedule", "train"), "linear", "model.beta_schedule.train: beta_schedule entry must be a dict"),
    (("model", "beta_schedule", "train", "linear_start"), [1],
     "model.beta_schedule.train: beta_schedule entry's linear_start / linear_end must be numbers"),
    (("model", "beta_schedule", "val", "n_timestep"), "abc",
     "SR3 config config dict: model.beta_schedule.val: beta_schedule entry needs an int 'n_timestep'"),
    (("datasets", "val", "l_resolution"), None, "l_resolution / r_resolution must be ints, got None"),
], ids=["datasets", "diffusion", "unet", "schedule", "train-entry", "linear_start", "n_timestep", "l_resolution"])
def test_load_sr3_config_names_a_section_of_the_wrong_type(where, value, message):
    """A config whose sections had the wrong JSON type (a list for an object, null for a number) failed with
    AttributeError / TypeError: the CLI's "internal error (a bug in yoda)" and a traceback, not a config error. A
    bad value in a schedule entry named neither the file nor the entry."""
    cfg = copy.deepcopy(_GOOD_SR3)
    load_sr3_config(cfg)  # the good one loads
    d = cfg
    for k in where[:-1]:
        d = d[k]
    d[where[-1]] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        load_sr3_config(cfg)
    assert SR3Config(attn_res=np.int64(8)).attn_res == (8,)  # a numpy int is an int, as a Python one


def test_srdiff_config_takes_yaml_numbers_and_refuses_other_types():
    """PyYAML reads 8e-3 (no dot) as the str '8e-3': SRDiffConfig kept it and the schedule failed with a TypeError
    (tensor + str); a null res_rescale, dim_mults 2 and a quoted 'false' were TypeErrors or silently truthy."""
    yaml = pytest.importorskip("yaml")
    d = yaml.safe_load("beta_s: 8e-3\nbeta_end: 2e-2\nres_rescale: 2\n")
    assert d["beta_s"] == "8e-3"  # what PyYAML gives
    cfg = SRDiffConfig.from_dict(d)
    assert (cfg.beta_s, cfg.beta_end, cfg.res_rescale) == (0.008, 0.02, 2.0) and type(cfg.res_rescale) is float
    ref = SRDiffConfig(timesteps=10)
    assert torch.equal(srdiff_beta_schedule(SRDiffConfig(timesteps=10, beta_s="8e-3")).betas,
                       srdiff_beta_schedule(ref).betas)
    for kw, message in [({"res_rescale": None}, "res_rescale must be a finite number, got None"),
                        ({"beta_end": "x"}, "beta_end must be a finite number"),
                        ({"beta_s": float("inf")}, "beta_s must be a finite number"),
                        ({"beta_s": True}, "beta_s must be a finite number"),
                        ({"dim_mults": 2}, "dim_mults must be ints"),
                        ({"dim_mults": None}, "dim_mults must be ints"),
                        ({"dim_mults": "1|x"}, "dim_mults must be ints"),
                        ({"clip_input": "false"}, "clip_input must be true or false, got 'false'"),
                        ({"clip_denoised": 0}, "clip_denoised must be true or false")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            SRDiffConfig(**kw)


def test_load_sr3_config_with_comments(tmp_path):
    p = tmp_path / "sr3.json"
    p.write_text(SR3_JSON)
    cfg, tr, va = load_sr3_config(p)
    assert cfg == SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2, 2),
                            attn_res=(8,), res_blocks=1, dropout=0.1, image_size=16, scale=4)
    assert torch.equal(tr.betas, torch.linspace(1e-4, 0.2, 12, dtype=torch.float64))
    want = np.linspace(1e-4 ** 0.5, 0.2 ** 0.5, 10, dtype=np.float64) ** 2  # upstream "quad"
    assert np.allclose(va.betas.numpy(), want, rtol=1e-15, atol=0)
    # upstream's released configs: norm_groups absent -> 32
    cfg2, _, _ = load_sr3_config({"model": {"unet": {"inner_channel": 64, "channel_multiplier": [1, 2, 4, 8, 8],
                                                     "attn_res": [16], "res_blocks": 2, "dropout": 0.2},
                                            "beta_schedule": {"train": {"schedule": "linear", "n_timestep": 2000,
                                                                        "linear_start": 1e-6, "linear_end": 1e-2},
                                                              "val": {"schedule": "linear", "n_timestep": 2000,
                                                                      "linear_start": 1e-6, "linear_end": 1e-2}},
                                            "diffusion": {"image_size": 128}},
                                  "datasets": {"val": {"l_resolution": 16, "r_resolution": 128}}})
    assert cfg2 == SR3_16_128
    # the repository's other generator ("which_model_G": "ddpm") was refused for its keys, with a hint to pass the
    # JSON that had been passed
    ddpm = {"model": {"which_model_G": "ddpm", "unet": {}, "beta_schedule": {}}}
    with pytest.raises(ValueError, match="model.which_model_G is 'ddpm'; yoda loads the 'sr3' network"):
        load_sr3_config(ddpm)
    # the repository's unconditional config (config/sample_sr3_128.json) loaded as scale 8 and failed at sampling
    uncond = {"model": {"unet": {"in_channel": 3}, "beta_schedule": {}, "diffusion": {"conditional": False}},
              "datasets": {"val": {"l_resolution": 16, "r_resolution": 128}}}
    with pytest.raises(ValueError, match="model.diffusion.conditional is false, an unconditional generator"):
        load_sr3_config(uncond)
    with pytest.raises(FileNotFoundError, match=r"SR3 config file not found: .*nope\.json"):
        load_sr3_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{ not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_sr3_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="schedule"):
        sr3_beta_schedule({"schedule": "jsd", "n_timestep": 10})


def _sr3_upstream_ckpt(net: SR3UNet, sched: Schedule) -> dict:
    """GaussianDiffusion.state_dict() as upstream saves it: denoise_fn.* + float32 schedule buffers."""
    b = sched.betas.numpy()
    ab = np.cumprod(1 - b)
    abp = np.append(1.0, ab[:-1])
    pv = b * (1 - abp) / (1 - ab)
    bufs = {
        "betas": b, "alphas_cumprod": ab, "alphas_cumprod_prev": abp, "sqrt_alphas_cumprod": np.sqrt(ab),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ab), "log_one_minus_alphas_cumprod": np.log(1 - ab),
        "sqrt_recip_alphas_cumprod": np.sqrt(1 / ab), "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ab - 1),
        "posterior_variance": pv, "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
        "posterior_mean_coef1": b * np.sqrt(abp) / (1 - ab),
        "posterior_mean_coef2": (1 - abp) * np.sqrt(1 - b) / (1 - ab),
    }
    sd = {k: torch.tensor(v, dtype=torch.float32) for k, v in bufs.items()}
    sd.update({"denoise_fn." + k: v.clone() for k, v in net.state_dict().items()})
    return sd


def test_sr3_upstream_checkpoint_round_trip(tmp_path):
    import yoda

    p = tmp_path / "sr3.json"
    p.write_text(SR3_JSON)
    cfg, tr, va = load_sr3_config(p)
    torch.manual_seed(3)
    net = SR3UNet.from_config(cfg).eval()
    ck = tmp_path / "I100_E1_gen.pth"
    torch.save(_sr3_upstream_ckpt(net, tr), ck)
    got = yoda.load("sr3", ck, config=p)
    assert isinstance(got, SR3UNet) and not got.training
    assert got.card.schedule == va and got.card.scale == 4
    x, g = torch.randn(2, 6, 16, 16), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        assert torch.equal(got(x, g), net(x, g))


def test_sr3_adapter_is_a_pixel_adapter():
    from yoda.adapters import PixelAdapter
    from yoda.models import SR3Adapter

    net = _tiny_sr3(attn=False)
    sched = Schedule.linear(10, 1e-3, 0.2)
    with pytest.raises(ValueError, match=r"schedule: this SR3 net has no ModelCard.*net.yoda_adapter\(schedule="):
        net.yoda_adapter(scale=2)
    net.card = ModelCard(sched, 2)
    ad = net.yoda_adapter()
    assert isinstance(ad, SR3Adapter) and isinstance(ad, PixelAdapter)
    assert (ad.schedule, ad.scale, ad.multiple, ad.prediction, ad.clip_x0) == (sched, 2, 2, "eps", True)
    assert net.yoda_adapter(scale=4, clip_x0=False).scale == 4 and not net.yoda_adapter(clip_x0=False).clip_x0
    # the card is handed to the adapter; what is given to yoda_adapter takes precedence
    net.card = ModelCard(sched, 2, prediction="v")
    assert net.yoda_adapter().prediction == "v" and net.yoda_adapter(prediction="x0").prediction == "x0"
    assert net.yoda_adapter(card=ModelCard(Schedule.cosine(7), 3)).schedule == Schedule.cosine(7)
    with pytest.raises(ValueError, match="pixel space"):
        net.yoda_adapter(card=ModelCard(sched, 2, space="residual"))
    # a grey SR3 model was taken and then refused every lr ("lr must be (B, 1, h, w), got (1, 3, 8, 8)" for a
    # (1, 1, 8, 8) one too: yoda.sample repeats grey to RGB)
    grey = SR3UNet(in_channel=2, out_channel=1, inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                   res_blocks=1, image_size=16)
    with pytest.raises(ValueError, match=r"^net: yoda samples RGB SR3 models \(out_channel 3, in_channel 6\); this "
                                         r"one has out_channel 1$"):
        grey.yoda_adapter(schedule=sched, scale=2)
    net.card = ModelCard(sched, 2)
    lr = _lr(2, 8, 8)
    pr = ad.prepare(lr)
    assert torch.equal(pr.c, upsample(lr, 2)) and torch.equal(pr.cond, pr.c)
    assert torch.equal(ad.crop_cond(pr.cond, slice(2, 6), slice(4, 8)), pr.cond[..., 2:6, 4:8])
    x = torch.randn(2, 3, 16, 16)
    ab = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with torch.no_grad():
        want = net(torch.cat([pr.cond, x], 1), ab.sqrt().float())  # one noise level per batch element
        assert torch.equal(ad.denoise(x, torch.tensor([3, 1]), ab, pr.cond), want)
        plain = PixelAdapter(net, sched, scale=2)  # a scalar ab_t: the same call as the generic adapter
        assert torch.equal(ad.denoise(x, torch.full((2,), 5), 0.3, pr.cond),
                           plain.denoise(x, torch.full((2,), 5), 0.3, pr.cond))
        # the net runs in its parameters' dtype; the output comes back in the state's
        x16 = x.half()
        ref = ad.denoise(x16.float(), torch.full((2,), 5), 0.3, pr.cond)  # x16 -> float32 is exact
        assert torch.equal(ad.denoise(x16, torch.full((2,), 5), 0.3, pr.cond), ref.half())
        net_bf = copy.deepcopy(net).to(torch.bfloat16)
        g = torch.full((2,), math.sqrt(0.3), dtype=torch.float64).to(torch.bfloat16)
        want_bf = net_bf(torch.cat([pr.cond, x], 1).to(torch.bfloat16), g).float()
        got_bf = SR3Adapter(net_bf, sched, 2).denoise(x, torch.full((2,), 5), 0.3, pr.cond)
        assert got_bf.dtype == torch.float32 and torch.equal(got_bf, want_bf)
    with pytest.raises(ValueError, match=r"lr must be \(B, 3, h, w\)"):
        ad.prepare(torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError, match="net must be an SR3UNet"):
        SR3Adapter(torch.nn.Conv2d(6, 3, 1), sched, 2)


# ==========================================================================================================
# SRDiff
# ==========================================================================================================
def test_srdiff_cosine_schedule_matches_upstream_formula():
    cfg = SRDiffConfig()
    s = srdiff_beta_schedule(cfg)
    # upstream cosine_beta_schedule, in numpy float64
    steps = 101
    x = np.linspace(0, steps, steps)
    ac = np.cos(((x / steps) + 0.008) / (1 + 0.008) * np.pi * 0.5) ** 2
    ac = ac / ac[0]
    want = np.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
    assert s.T == 100 and np.allclose(s.betas.numpy(), want, rtol=1e-12, atol=0)  # (numpy < 1.25's cos: 3.5e-13)
    assert s.betas[-1].item() == 0.999  # the last beta hits the clip
    lin = srdiff_beta_schedule(SRDiffConfig(beta_schedule="linear", timesteps=50, beta_end=0.02))
    want = np.linspace(1e-4, 0.02, 50)
    want[-1] = 0.999
    assert np.allclose(lin.betas.numpy(), want, rtol=1e-15, atol=0)


def test_srdiff_embeddings_and_attention_known_math():
    e = SinusoidalPosEmb(8)(torch.tensor([3]))
    w = np.exp(-np.arange(4) * np.log(10000) / 3)
    assert np.allclose(e.numpy()[0], np.concatenate([np.sin(3 * w), np.cos(3 * w)]), atol=1e-6)
    torch.manual_seed(0)
    la = LinearAttention(16, heads=2, dim_head=4)
    x = torch.randn(2, 16, 3, 5)
    qkv = la.to_qkv(x).reshape(2, 3 * 2 * 4, 15)
    out = []
    for h in range(2):  # channel layout (qkv heads c), as upstream's rearrange
        q, k, v = (qkv[:, (i * 2 + h) * 4:(i * 2 + h + 1) * 4] for i in range(3))
        ctx = k.softmax(-1) @ v.transpose(1, 2)  # (b, d, e)
        out.append(ctx.transpose(1, 2) @ q)  # (b, e, n)
    ref = la.to_out(torch.cat(out, 1).reshape(2, 8, 3, 5))
    assert torch.allclose(la(x), ref, atol=1e-5, rtol=0)


def test_srdiff_runs_in_its_weights_dtype():
    """SRDiff in float64 / bfloat16 crashed ("mat1 and mat2 must have the same dtype"): the float32 time embedding
    met the mlp in the weights' dtype. It is still computed in float32, then cast to the mlp's dtype."""
    m = _tiny_srdiff(use_attn=True, up_input=True)
    lr = _lr(1, 8, 8)
    t = torch.tensor([7, 999])
    half = 8 // 2  # upstream SinusoidalPosEmb.forward (models/commons.py), on int64 t
    w = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    want = torch.cat(((t[:, None] * w[None, :]).sin(), (t[:, None] * w[None, :]).cos()), dim=-1)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        net = copy.deepcopy(m).to(dtype)
        seen = []
        net.denoise_fn.mlp.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        x = torch.randn(2, 3, 16, 16, dtype=dtype)
        with torch.no_grad():
            out = net(x, t, net.rrdb.features(torch.cat([lr, lr]).to(dtype)), x)
        # float32: upstream's embedding bit for bit (the cast is a no-op, so the float32 forward is unchanged)
        assert out.dtype == dtype and seen[0].dtype == dtype and torch.equal(seen[0], want.to(dtype))
    a = sample(m, lr, attention="edge", steps=3, sampler="ddim", seed=4, progress=False)
    d = sample(copy.deepcopy(m).double(), lr.double(), attention="edge", steps=3, sampler="ddim", seed=4,
               progress=False)
    b = sample(copy.deepcopy(m).bfloat16(), lr, attention="edge", steps=3, sampler="ddim", seed=4, progress=False)
    # float64 is the reference of the float32 run: the eps of the two nets differ by ~1e-7 (float32 rounding),
    # DDIM's x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) amplifies that by 1 / sqrt(ab) ~ 30 at the first step; over
    # seeds 0..5 measured up to 3.8e-6, so 1e-4. bfloat16 (8-bit mantissa) measured up to 0.09 (seeds 0..5).
    assert d.dtype == torch.float64 and (a.double() - d).abs().max() < 1e-4
    assert b.dtype == torch.float32 and torch.isfinite(b).all() and (a - b).abs().max() < 0.25


def test_rrdb_features_and_scales():
    torch.manual_seed(0)
    r = RRDBNet(3, 3, 8, 5, 4, sr_scale=4)
    x = torch.rand(1, 3, 6, 7) * 2 - 1
    out, feas = r(x, get_fea=True)
    assert out.shape == (1, 3, 24, 28) and out.min() >= -1 and out.max() <= 1
    assert len(feas) == 6 and all(f.shape == (1, 8, 6, 7) for f in feas)
    assert all(torch.equal(a, b) for a, b in zip(feas, r.features(x)))
    assert "upconv3.weight" not in r.state_dict()
    assert "upconv3.weight" in RRDBNet(3, 3, 8, 2, 4, sr_scale=8).state_dict()
    # the UNet takes feas[2::3]: (nb + 1) // 3 maps -> cond_proj input channels
    m = SRDiff(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=5, rrdb_num_feat=8, sr_scale=4)
    assert m.denoise_fn.cond_proj.weight.shape == (8 * 2, 8, 8, 8)


def test_srdiff_keys_follow_upstream_layout():
    m = SRDiff(hidden_size=8, dim_mults=(1, 2, 3), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=4, use_attn=True,
               up_input=True)
    sd = m.state_dict()
    for k in ["denoise_fn.cond_proj.weight", "denoise_fn.mlp.0.weight", "denoise_fn.mlp.2.weight",
              "denoise_fn.downs.0.0.mlp.1.weight", "denoise_fn.downs.0.0.block1.block.1.weight",
              "denoise_fn.downs.0.0.res_conv.weight", "denoise_fn.downs.0.2.conv.1.weight",
              "denoise_fn.mid_block1.block2.block.1.bias", "denoise_fn.mid_attn.fn.g",
              "denoise_fn.mid_attn.fn.fn.to_qkv.weight", "denoise_fn.mid_attn.fn.fn.to_out.bias",
              "denoise_fn.ups.0.0.block1.block.1.weight", "denoise_fn.ups.1.2.conv.0.weight",
              "denoise_fn.final_conv.0.block.1.weight", "denoise_fn.final_conv.1.weight",
              "denoise_fn.up_proj.1.weight", "rrdb.conv_first.weight", "rrdb.RRDB_trunk.1.RDB3.conv5.weight",
              "rrdb.trunk_conv.bias", "rrdb.upconv2.weight", "rrdb.HRconv.weight", "rrdb.conv_last.bias"]:
        assert k in sd, k
    assert "denoise_fn.downs.2.2.conv.1.weight" not in sd  # last level: Identity
    assert sd["denoise_fn.ups.0.0.block1.block.1.weight"].shape == (16, 48, 3, 3)  # cat(24, 24) -> 16
    assert sd["rrdb.RRDB_trunk.0.RDB1.conv5.weight"].shape == (8, 8 + 4 * 4, 3, 3)  # gc = nf // 2


def test_srdiff_adapter_spaces():
    m = _tiny_srdiff()
    ad = m.yoda_adapter()
    assert ad.prediction == "eps" and ad.clip_x0 and ad.scale == 2 and ad.schedule == m.schedule
    # a card (a model trained here to predict v) is handed to the adapter; it must agree with the config's scale
    m.card = ModelCard(Schedule.cosine(9), 2, prediction="v", space="residual")
    assert (m.yoda_adapter().prediction, m.yoda_adapter().schedule) == ("v", Schedule.cosine(9))
    assert m.yoda_adapter(prediction="x0").prediction == "x0"
    with pytest.raises(ValueError, match="residual space at scale 2"):
        m.yoda_adapter(card=ModelCard(m.schedule, 4, space="residual"))
    m.card = None
    lr = _lr(2, 4, 6)
    with torch.no_grad():
        pr = ad.prepare(lr)
    up = upsample(lr, 2)
    # the UNet reads no up(lr) (up_input off): cond holds none, decode makes it again, bit for bit; of the RRDB's
    # maps it holds those the UNet reads (feas[2::3]), the others are None
    assert torch.equal(pr.c, torch.zeros_like(up)) and pr.cond.up is None
    with torch.no_grad():
        feas = m.rrdb.features(lr)
    assert len(pr.cond.feas) == len(feas) == m.config.rrdb_num_block + 1
    assert all(torch.equal(a, b) if k % 3 == 2 else a is None for k, (a, b) in enumerate(zip(pr.cond.feas, feas)))
    class ReadsAll(Unet):  # a user's variant of upstream's Unet: handed every map and up(lr), as before
        def forward(self, x, time, cond, img_lr_up, proj=None):
            assert all(f is not None for f in cond) and img_lr_up is not None
            return super().forward(x, time, cond, img_lr_up, proj)

    m_all = _tiny_srdiff()
    m_all.denoise_fn.__class__ = ReadsAll
    with torch.no_grad():
        c_all = m_all.yoda_adapter().prepare(lr).cond
        assert torch.equal(c_all.up, up) and all(f is not None for f in c_all.feas)
        m_all.yoda_adapter().denoise(torch.randn_like(up), torch.tensor([3, 3]), 0.5, c_all)
    m5 = _tiny_srdiff(rrdb_num_block=5)  # six maps, the UNet reads two (2 and 5): the same output as from all six
    with torch.no_grad():
        c5, all5 = m5.yoda_adapter().prepare(lr).cond, m5.rrdb.features(lr)
        assert [f is not None for f in c5.feas] == [False, False, True, False, False, True]
        xt, t5 = torch.randn_like(up), torch.tensor([3, 3])
        assert torch.equal(m5.yoda_adapter().denoise(xt, t5, 0.5, c5), m5(xt, t5, all5, up))
    m_up = _tiny_srdiff(up_input=True)
    with torch.no_grad():
        assert torch.equal(m_up.yoda_adapter().prepare(lr).cond.up, up)
    held = pr.cond._replace(up=up)
    x_any = torch.randn_like(up)
    assert torch.equal(ad.decode(x_any, lr, pr.cond), ad.decode(x_any, lr, held))
    hr = (up + 0.3 * torch.randn_like(up)).clamp(-1, 1)
    x0 = ((hr - up) * 2).clamp(-1, 1)  # (yoda.training.loss.space_tensors)
    # decode = clamp(up + clamp(x0) / 2): inverse of the residual encoding where it was not clipped
    ok = ((hr - up).abs() * 2 <= 1)
    dec = ad.decode(x0, lr, pr.cond)
    assert torch.allclose(dec[ok], hr[ok], atol=1e-6)
    assert torch.equal(ad.decode(torch.full_like(up, 5.0), lr, pr.cond), (up + 0.5).clamp(-1, 1))
    raw = m.yoda_adapter(clip_input=False)
    assert torch.equal(raw.decode(torch.full_like(up, 5.0), lr, pr.cond), (up + 2.5).clamp(-1, 1))
    t = torch.tensor([3, 3])
    with torch.no_grad():
        assert torch.equal(ad.denoise(x0, t, 0.5, pr.cond), m(x0, t, m.rrdb(lr, True)[1], up))


def test_srdiff_crop_cond_for_tiles():
    m = _tiny_srdiff()
    ad = m.yoda_adapter()
    lr = _lr(1, 6, 8)
    with torch.no_grad():
        cond = ad.prepare(lr).cond
    sub = ad.crop_cond(cond, slice(4, 12), slice(2, 10))
    assert cond.up is None and sub.up is None  # (up_input off: the UNet reads none)
    m_up = _tiny_srdiff(up_input=True)
    with torch.no_grad():
        cond_up = m_up.yoda_adapter().prepare(lr).cond
    assert torch.equal(m_up.yoda_adapter().crop_cond(cond_up, slice(4, 12), slice(2, 10)).up,
                       cond_up.up[..., 4:12, 2:10])
    assert all(a is b is None or torch.equal(a, b[..., 2:6, 1:5]) for a, b in zip(sub.feas, cond.feas))
    assert sum(a is not None for a in sub.feas) == len(cond.feas[2::3])
    with pytest.raises(ValueError, match="multiples of the scale"):
        ad.crop_cond(cond, slice(3, 11), slice(2, 10))
    with pytest.raises(TypeError, match="unexpected keyword argument 'scale'"):
        m.yoda_adapter(scale=4)  # SRDiff's scale is its config's sr_scale


# ==========================================================================================================
# Latent
# ==========================================================================================================
class TinyLatent(torch.nn.Module):
    """A random conv VAE (f = 8, 4 latent channels) and a small conv denoiser on cat(z_t, c)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.enc = torch.nn.Conv2d(3, 4, 8, 8)
        self.dec = torch.nn.ConvTranspose2d(4, 3, 8, 8)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(8 + 1, 16, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(16, 4, 3, padding=1))

    def denoise(self, z, t, c):
        tt = (t.float() / 10)[:, None, None, None].expand(-1, 1, *z.shape[-2:])
        return self.net(torch.cat([z, c, tt], 1))

    def adapter(self, **kw):
        return LatentAdapter(self.enc, lambda z: torch.tanh(self.dec(z)), self.denoise, Schedule.linear(10, 1e-3, 0.2),
                             scale=2, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_lr_with_float32_latent_modules_names_lr(dtype):
    """A float16 / bfloat16 lr with a latent model whose float32 callables do not cast stopped in torch's "Input type
    (c10::Half) and bias type (float) should be the same", naming neither lr nor its dtype (a review). Where the
    callables cast (or the modules are the lr's dtype) nothing changes; with no modules given, torch's error stays."""
    tl = TinyLatent()
    lr = (torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
    name = str(dtype).replace("torch.", "")
    with pytest.raises(TypeError, match=rf"^lr is {name} \(the state's dtype\) but the model's modules are float32, and "
                                        r"its encode failed on it without casting \(Input type"):
        sample(tl.adapter(modules=(tl,)), lr, steps=2, seed=0, sampler="ddim", progress=False)
    with pytest.raises(RuntimeError, match="should be the same"):
        sample(tl.adapter(), lr, steps=2, seed=0, sampler="ddim", progress=False)

    def oom(x):  # an encode that runs out of memory on the half lr: that is what it says, not a dtype
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError):
        sample(LatentAdapter(oom, tl.dec, tl.denoise, Schedule.linear(10, 1e-3, 0.2), scale=2, modules=(tl,)), lr,
               steps=2, seed=0, sampler="ddim", progress=False)
    enc, dec = (lambda x: tl.enc(x.float()).to(x.dtype)), (lambda z: torch.tanh(tl.dec(z.float())).to(z.dtype))
    casting = LatentAdapter(enc, dec, lambda z, t, c: tl.denoise(z.float(), t, c.float()).to(z.dtype),
                            Schedule.linear(10, 1e-3, 0.2), scale=2, modules=(tl,))
    out = sample(casting, lr, steps=2, seed=0, sampler="ddim", progress=False)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    # a callable that casts in encode only: denoise's failure is said the same way
    half_way = LatentAdapter(enc, dec, lambda z, t, c: tl.net(torch.cat([z, c, z[:, :1]], 1)),
                             Schedule.linear(10, 1e-3, 0.2), scale=2, modules=(tl,))
    with pytest.raises(TypeError, match=rf"^lr is {name} .* its denoise failed on it without casting"):
        sample(half_way, lr, steps=2, seed=0, sampler="ddim", progress=False)


def test_a_latent_models_int_window_keeps_a_quarter_overlap():
    """windows=W takes the CLI's overlap on an HR model's grid (an SRDiff model's windows must lie on the LR grid);
    a latent window may start anywhere, so W // 4 is kept there (it was rounded to the latent multiple)."""
    tl = TinyLatent()
    lr = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1  # latents 28 x 28
    ad = tl.adapter(latent_multiple=4)
    import yoda

    with torch.no_grad():
        got = yoda.sample(ad, lr, windows=12, steps=2, seed=0, progress=False)
        assert torch.equal(got, yoda.sample(ad, lr, windows=(12, 3), steps=2, seed=0, progress=False))
        assert not torch.equal(got, yoda.sample(ad, lr, windows=(12, 4), steps=2, seed=0, progress=False))


def test_a_latent_models_own_steps_cover_the_latent_map_it_masks_with():
    """yoda.sample raises a model's own steps to the fewest whose last refines every pixel: for a latent model it
    counted down to the least value of the HR map, not of the max-pooled latent map the masks compare (higher), and a
    model whose one step already refined every latent was given two (a review, 2026-12-06)."""
    import yoda

    tl = TinyLatent()
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # HR 16 x 16, latents 2 x 2
    A = torch.zeros(1, 1, 8, 8)
    A[..., ::2, ::2] = 1.0  # at HR, bilinear: near 0 between the ones, but every 8 x 8 cell holds a 1
    ad = tl.adapter(sampling={"sampler": "ddim", "steps": 1})
    seen = []
    with torch.no_grad():
        yoda.sample(ad, lr, attention=A, seed=0, progress=False, callback=lambda d: seen.append(d["active_fraction"]))
    assert len(seen) == 1 and seen[0].tolist() == [1.0]  # the model's one step, and it refined every latent
    A[..., 4:, 4:] = 0.0  # one latent cell of the image now holds no attention: 1 step leaves it, 2 refine it
    seen.clear()
    with torch.no_grad():
        yoda.sample(ad, lr, attention=A, seed=0, progress=False, callback=lambda d: seen.append(d["active_fraction"]))
    assert [s.tolist() for s in seen] == [[0.75], [1.0]]

    class Mine(LatentAdapter):  # an attention_to_state of one's own may need what prepare keeps: not asked before it
        def prepare(self, lr):
            self.kept = True
            return super().prepare(lr)

        def attention_to_state(self, A, shape):
            assert self.kept, "asked before prepare"
            return super().attention_to_state(A, shape)

    mine = Mine(tl.enc, lambda z: torch.tanh(tl.dec(z)), tl.denoise, Schedule.linear(10, 1e-3, 0.2), scale=2,
                sampling={"sampler": "ddim", "steps": 1})
    mine.kept = False
    A[..., ::2, ::2] = 1.0
    seen.clear()
    with torch.no_grad():  # the HR map's floor for it (the conservative count: two steps)
        yoda.sample(mine, lr, attention=A, seed=0, progress=False, callback=lambda d: seen.append(d["active_fraction"]))
    assert [s.tolist() for s in seen] == [[1.0], [1.0]]


def test_a_latent_window_reads_its_own_latents():
    """LatentAdapter.crop_cond of a window offset in both axes is the same slice of c (a crop from column 0 passed
    every windows test: their stand-in networks differ tiled anyway)."""
    tl = TinyLatent()
    ad = tl.adapter()
    with torch.no_grad():
        cond = ad.prepare(torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1).cond
    got = ad.crop_cond(cond, slice(2, 6), slice(3, 7))
    assert torch.equal(got.c, cond.c[..., 2:6, 3:7]) and got.size == cond.size


def test_pixel_and_residual_adapters_state_grid_is_the_hr_grid():
    """SR3, SRDiff and a callable's state is up(lr)'s grid (state_grid, which yoda.sample checks windows= on before
    prepare runs an SRDiff's RRDB); an adapter that does not say (the base class) gets None: checked after."""
    from yoda.adapters import Adapter, CallableAdapter

    sched = Schedule.linear(10)
    ads = (_tiny_sr3().yoda_adapter(sched, scale=2), _tiny_srdiff().yoda_adapter(),
           CallableAdapter(lambda x, t, c: x, prediction="eps", schedule=sched, scale=2, space="residual"))
    for ad in ads:
        with torch.no_grad():
            assert ad.state_grid((16, 24)) == tuple(ad.prepare(_lr(1, 8, 12)).c.shape[-2:]) == (16, 24)
    assert Adapter().state_grid((16, 24)) is None
    # state_extent: the grid, all of it, unless the adapter pads (its own image_extent): then unknown before prepare
    # (a default overlap taken from the whole grid there disagreed with the image's part after prepare)
    assert ads[0].state_extent((16, 24)) == (16, 24) and Adapter().state_extent((16, 24)) is None

    class Pads(type(ads[0])):
        def image_extent(self, cond, shape):
            return int(shape[-2]) - 2, int(shape[-1])

    padded = copy.copy(ads[0])
    padded.__class__ = Pads
    assert padded.state_grid((16, 24)) == (16, 24) and padded.state_extent((16, 24)) is None


def test_a_bad_window_is_refused_before_the_encoder_runs():
    """A latent model's windows were checked against the latent grid only after adapter.prepare (stage 1 and the
    VAE encode, the slow part of a DiffBIR call): now state_grid tells the grid first. It is prepare's own, for
    sizes that pad, and a window wider than the grid is still taken whatever its multiple."""
    tl = TinyLatent()
    encoded = []
    enc = lambda x: encoded.append(x.shape) or tl.enc(x)  # noqa: E731
    for m, (h, w) in ((1, (10, 12)), (2, (4, 20)), (4, (56, 56)), (3, (9, 31))):
        ad = LatentAdapter(enc, tl.dec, tl.denoise, Schedule.linear(10), scale=2, latent_multiple=m)
        with torch.no_grad():
            assert ad.state_grid((2 * h, 2 * w)) == tuple(ad.prepare(_lr(1, h, w)).c.shape[-2:])
    ad = LatentAdapter(enc, tl.dec, tl.denoise, Schedule.linear(10), scale=2, latent_multiple=4)
    encoded.clear()
    with pytest.raises(ValueError, match=r"^windows: the window 6 must be a multiple of 4, the model's size "
                                         r"multiple on the state grid \(16, 16\)"):
        sample(ad, _lr(1, 64, 64), windows=(6, 2), steps=1, progress=False)
    assert encoded == []
    with torch.no_grad():
        sample(ad, _lr(1, 8, 8), windows=(6, 2), steps=1, progress=False)  # a 4 x 4 grid: one window, any size
    assert len(encoded) == 1


def test_a_window_that_covers_the_latents_of_the_image_is_taken_whatever_its_multiple():
    """Before prepare, windows were checked against the padded latent grid: a window as large as the image's latents
    (5 x 13 of a 8 x 16 grid, latent_multiple 4) was refused as no multiple of 4, though it is one call on the
    whole state (state_extent tells the image's latents before prepare now). The overlap is held to the sides that
    tile the image, and its default is a quarter of the shorter of those: a window as high as a thin image tiles
    along its width only (an overlap of 6 at height 5 was refused, and the default took 5 // 4 = 1)."""
    tl = TinyLatent()
    encoded = []
    enc = lambda x: encoded.append(x.shape) or tl.enc(x)  # noqa: E731
    ad = LatentAdapter(enc, tl.dec, tl.denoise, Schedule.linear(10), scale=2, latent_multiple=4)
    lr = _lr(1, 20, 52)  # HR 40 x 104: latents 5 x 13 of the grid 8 x 16
    assert ad.state_extent((40, 104)) == (5, 13) and ad.state_grid((40, 104)) == (8, 16)
    calls = []
    with torch.no_grad():
        want = sample(ad, lr, steps=2, seed=0, progress=False)
        got = sample(ad, lr, windows=((5, 13), 2), steps=2, seed=0, progress=False,
                     callback=lambda d: calls.append(d["calls"]))
        assert torch.equal(got, want) and calls == [1, 1]
        thin = sample(ad, lr, windows=((5, 8), None), steps=2, seed=0, progress=False)
        assert torch.equal(thin, sample(ad, lr, windows=((5, 8), 2), steps=2, seed=0, progress=False))
        assert not torch.equal(thin, sample(ad, lr, windows=((5, 8), 1), steps=2, seed=0, progress=False))
        sample(ad, lr, windows=((5, 8), 6), steps=1, progress=False)  # 6 >= 5, but the height spans the grid
    encoded.clear()
    for bad, text in ((((5, 6), 2), "the window 6 must be a multiple of 4"),
                      (((8, 4), 4), r"the overlap 4 must be less than the window's side 4, along which it tiles the "
                                    r"state grid \(8, 16\), got windows=\(\(8, 4\), 4\)")):
        with pytest.raises(ValueError, match=f"^windows: {text}"):
            sample(ad, lr, windows=bad, steps=1, progress=False)
    assert encoded == []  # both before the encoder ran


def test_latent_adapter_prepare_decode_and_pooling():
    tl = TinyLatent()
    ad = tl.adapter()
    lr = _lr(1, 10, 12)  # HR 20 x 24: padded to 24 x 24 for the VAE
    with torch.no_grad():
        pr = ad.prepare(lr)
        up = upsample(lr, 2)
        want = tl.enc(F.pad(up, (0, 0, 0, 4), mode="replicate"))
        assert torch.equal(pr.c, want) and pr.c.shape == (1, 4, 3, 3)
        out = ad.decode(pr.c, lr, pr.cond)
        assert out.shape == (1, 3, 20, 24)
    assert ad.image_extent(pr.cond, pr.c.shape) == (3, 3) and ad.latent_factor == 8  # 20 x 24: 2.5 x 3 latents
    big = tl.adapter(latent_multiple=2).prepare(_lr(1, 4, 20))  # HR 8 x 40: padded to 16 x 48, 2 x 6 latents
    assert big.c.shape[-2:] == (2, 6) and tl.adapter().image_extent(big.cond, big.c.shape) == (1, 5)
    A = torch.rand(1, 1, 20, 24)
    Am = ad.attention_to_state(A, pr.c.shape)
    Aa = tl.adapter(pool="area").attention_to_state(A, pr.c.shape)
    for i in range(3):
        for j in range(3):
            cell = A[..., 8 * i:8 * i + 8, 8 * j:8 * j + 8]
            assert Am[0, 0, i, j] == cell.max()  # replicate padding never raises the maximum
            if i < 2:
                assert torch.isclose(Aa[0, 0, i, j], cell.mean(), atol=1e-6)
    stage = tl.adapter(stage1=lambda x: -x)
    with torch.no_grad():
        assert torch.equal(stage.prepare(lr).c, tl.enc(F.pad(-up, (0, 0, 0, 4), mode="replicate")))
    with pytest.raises(ValueError, match="^stage1 returned NaN or Inf values$"):  # it was the denoiser's, at step 0
        sample(tl.adapter(stage1=lambda x: x * float("nan")), lr, steps=2, progress=False)
    with pytest.raises(ValueError, match="pool"):
        tl.adapter(pool="median")
    bad = LatentAdapter(lambda x: x[..., ::4, ::4], tl.dec, tl.denoise, Schedule.linear(10), scale=2)
    with pytest.raises(ValueError, match="encode must return"):
        bad.prepare(lr)
    # decode's output was cropped without a check: a decoder returning the latent itself gave a (1, 3, 12, 16)
    # "SR" of a 24x32 LR at scale 4 without any error
    enc = lambda x: F.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]  # noqa: E731
    lr = _lr(1, 24, 32)
    for dec, got in ((lambda z: z[:, :3], r"\(1, 3, 12, 16\) torch.float32"),
                     (lambda z: tl.dec(z).to(torch.int64), r"\(1, 3, 96, 128\) torch.int64"),
                     (lambda z: None, "NoneType")):
        ad = LatentAdapter(enc, dec, lambda z, t, c: torch.zeros_like(z), Schedule.linear(10))
        with pytest.raises(ValueError, match=r"decode must return a floating tensor of shape \(1, 3, 96, 128\) "
                                             r"for the latent \(1, 4, 12, 16\) and latent_factor 8, got " + got):
            sample(ad, lr, steps=2, progress=False)


# ==========================================================================================================
# End to end through yoda.sample
# ==========================================================================================================
def _ddpm_reference(denoise, c_shape, sched: Schedule, noise, clip: bool):
    """Upstream p_sample_loop (SR3 / SRDiff): x_T = noise[0]; x0 = sqrt(1/ab) x - sqrt(1/ab - 1) eps,
    clamp, posterior mean + exp(0.5 log var) z (no noise at idx 0), in float64 coefficients."""
    b = sched.betas
    ab = torch.cumprod(1 - b, 0)
    abp = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    x = noise[0].clone()
    T = sched.T
    for i, idx in enumerate(reversed(range(T))):
        eps = denoise(x, idx)
        x0 = math.sqrt(1 / ab[idx]) * x - math.sqrt(1 / ab[idx] - 1) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        c1 = float(b[idx] * abp[idx].sqrt() / (1 - ab[idx]))
        c2 = float((1 - abp[idx]) * (1 - b[idx]).sqrt() / (1 - ab[idx]))
        var = float(b[idx] * (1 - abp[idx]) / (1 - ab[idx]))
        x = c1 * x0 + c2 * x
        if idx > 0:
            x = x + math.exp(0.5 * math.log(max(var, 1e-20))) * noise[i + 1]
    return x


def _noise(shape, n, seed=11):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_sample_sr3_matches_upstream_loop_and_yoda_holds_lr():
    net = _tiny_sr3()
    net.card = ModelCard(Schedule.linear(10, 1e-3, 0.2), 2)
    lr = _lr(1, 8, 8)
    up = upsample(lr, 2)
    noise = _noise(up.shape, 11)
    plain = sample(net, lr, attention=None, noise=noise, progress=False)
    lb1 = sample(net, lr, attention="edge", lower_bound=1.0, noise=noise, progress=False)
    assert torch.equal(plain, lb1)

    def den(x, idx):
        with torch.no_grad():
            g = torch.full((1,), math.sqrt(net.card.schedule.alpha_bar(idx)))
            return net(torch.cat([up, x], 1), g)

    ref = _ddpm_reference(den, up.shape, net.card.schedule, noise, clip=True).clamp(-1, 1)
    assert (plain - ref).abs().max() < 1e-4

    # YODA: a region with A = 0 is held at sqrt(ab_prev) up(lr) + sqrt(1 - ab_prev) z while tau > 0
    A = torch.zeros(1, 1, 16, 16)
    A[..., :8, :] = 1.0
    seen = []

    def cb(d):
        idx = d["t"]
        if (idx + 1) / 10 - 0.6 > 0 and d["i"] + 1 < 10:
            ab_prev = net.card.schedule.alpha_bar(idx - 1)
            held = math.sqrt(ab_prev) * up + math.sqrt(1 - ab_prev) * noise[d["i"] + 1]
            seen.append((d["x"][..., 8:, :] - held[..., 8:, :]).abs().max().item())

    yo = sample(net, lr, attention=A, lower_bound=0.6, noise=noise, progress=False, callback=cb)
    assert len(seen) == 4 and max(seen) < 1e-5
    assert not torch.equal(yo, plain) and torch.isfinite(yo).all()


def test_sample_srdiff_matches_upstream_loop():
    m = _tiny_srdiff(use_attn=True, up_input=True)
    lr = _lr(1, 6, 8)
    up = upsample(lr, 2)
    noise = _noise(up.shape, 11)
    plain = sample(m, lr, attention=None, noise=noise, progress=False)
    assert torch.equal(plain, sample(m, lr, attention="edge", lower_bound=1.5, noise=noise, progress=False))
    with torch.no_grad():
        feas = m.rrdb(lr, True)[1]
        x = _ddpm_reference(lambda x, idx: m(x, torch.tensor([idx]), feas, up), up.shape, m.schedule, noise, True)
    ref = (up + x.clamp(-1, 1) / 2).clamp(-1, 1)  # res2img with clip_input
    assert (plain - ref).abs().max() < 1e-4
    # residual space: the held (inactive) state is noised zeros, c = 0
    A = torch.zeros(1, 1, 12, 16)
    A[..., :, :8] = 1.0
    seen = []

    def cb(d):
        if (d["t"] + 1) / 10 - 0.6 > 0:
            ab_prev = m.schedule.alpha_bar(d["t"] - 1)
            held = math.sqrt(1 - ab_prev) * noise[d["i"] + 1]
            seen.append((d["x"][..., 8:] - held[..., 8:]).abs().max().item())

    sample(m, lr, attention=A, noise=noise, progress=False, callback=cb)
    assert len(seen) == 4 and max(seen) < 1e-5
    # the features' projection is made once a call, not at every step (2-8% of each UNet call), with the same bits
    calls = []  # the output sides of each projection
    hook = m.denoise_fn.cond_proj.register_forward_hook(lambda mod, i, out: calls.append(tuple(out.shape[-2:])))
    try:
        once = sample(m, lr, attention=None, noise=noise, progress=False)
        ad = m.yoda_adapter()
        prepare = ad.prepare
        ad.prepare = lambda x: Prepared((p := prepare(x)).c, p.cond._replace(proj=None))  # each step makes its own
        every = sample(ad, lr, attention=None, noise=noise, progress=False)
        assert calls == [(12, 16)] * (1 + 10)
        # in windows, each window projects its own crop: the whole image's is never made (it held a 16-channel
        # state-sized map through the run, 1 GiB at 4096²)
        calls.clear()
        sample(m, lr, attention=None, seed=0, progress=False, windows=(8, 4), steps=1)
        assert calls and (12, 16) not in calls
    finally:
        hook.remove()
    assert torch.equal(once, plain) and torch.equal(every, plain)
    ad = m.yoda_adapter()  # with gradients on (guidance through the model), each call projects afresh: a cached
    with torch.no_grad():  # projection's graph was backpropagated twice
        cond = ad.prepare(lr).cond
    x = torch.randn(1, 3, 12, 16, requires_grad=True)
    for _ in range(2):
        ad.denoise(x, torch.tensor([3]), 0.5, cond).sum().backward()
    assert cond.proj == [] and x.grad is not None
    with torch.no_grad():  # two prepared conds stacked (the API, not yoda's windows) share no cache with them
        two = ad.stack_conds([cond, cond])
        ad.denoise(torch.cat([x, x]).detach(), torch.tensor([3, 3]), 0.5, two)
        assert two.proj is None and cond.proj == [] and ad.denoise(x.detach(), torch.tensor([3]), 0.5, cond).shape[0] == 1


def test_sample_latent_matches_reference_loop():
    tl = TinyLatent()
    ad = tl.adapter()
    lr = _lr(1, 8, 8)  # HR 16 x 16 -> latent 2 x 2
    with torch.no_grad():
        c = ad.prepare(lr).c
    noise = _noise(c.shape, 11)
    plain = sample(ad, lr, attention=None, noise=noise, progress=False)
    assert torch.equal(plain, sample(ad, lr, attention="edge", lower_bound=1.0, noise=noise, progress=False))
    with torch.no_grad():
        z = _ddpm_reference(lambda x, idx: tl.denoise(x, torch.tensor([idx]), c), c.shape, ad.schedule, noise, False)
        ref = torch.tanh(tl.dec(z)).clamp(-1, 1)
    assert (plain - ref).abs().max() < 1e-4
    # A on the latent grid: max pooling -> one active latent pixel column when A is 1 on HR columns 0..1
    A = torch.zeros(1, 1, 16, 16)
    A[..., :, :2] = 1.0
    seen = []

    def cb(d):
        if (d["t"] + 1) / 10 - 0.6 > 0:
            ab_prev = ad.schedule.alpha_bar(d["t"] - 1)
            held = math.sqrt(ab_prev) * c + math.sqrt(1 - ab_prev) * noise[d["i"] + 1]
            seen.append(((d["x"] - held)[..., 1:].abs().max().item(), (d["x"] - held)[..., :1].abs().max().item()))

    sample(ad, lr, attention=A, noise=noise, progress=False, callback=cb)
    assert len(seen) == 4 and max(s[0] for s in seen) < 1e-5 and min(s[1] for s in seen) > 1e-3


# ==========================================================================================================
# diffusers (optional)
# ==========================================================================================================
@pytest.mark.filterwarnings("ignore:scheduler_config names no scheduler class")  # (a bare dict: not the point)
def test_from_diffusers_tiny():
    diffusers = pytest.importorskip("diffusers")
    from yoda.models import from_diffusers, schedule_from_diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=4, layers_per_block=1).eval()
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=4).eval()
    cfg = {"num_train_timesteps": 10, "beta_start": 1e-3, "beta_end": 0.02, "beta_schedule": "scaled_linear",
           "prediction_type": "v_prediction"}
    ad = from_diffusers(unet, vae, cfg, scale=2)
    assert ad.prediction == "v" and ad.latent_factor == 2 and ad.latent_multiple == 2
    assert ad.schedule == Schedule.scaled_linear(10, 1e-3, 0.02)
    assert schedule_from_diffusers({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 7})[0] == \
        Schedule.cosine(7)
    lr = _lr(1, 5, 6)  # HR 10 x 12 -> padded to 12 x 12 -> latent 6 x 6
    with torch.no_grad():
        pr = ad.prepare(lr)
        want = vae.encode(F.pad(upsample(lr, 2), (0, 0, 0, 2), mode="replicate")).latent_dist.mode()
        assert torch.allclose(pr.c, want * vae.config.scaling_factor, atol=1e-6)
        z = torch.randn_like(pr.c)
        t = torch.tensor([4])
        assert torch.equal(ad.denoise(z, t, 0.5, pr.cond), unet(torch.cat([z, pr.c], 1), t).sample)
    if sample is not None:
        noise = _noise(pr.c.shape, 4)
        a = sample(ad, lr, attention=None, steps=3, noise=noise, progress=False)
        b = sample(ad, lr, attention="edge", steps=3, lower_bound=1.0, noise=noise, progress=False)
        assert a.shape == (1, 3, 10, 12) and torch.equal(a, b)
    with pytest.raises(ValueError, match="in_channels"):
        from_diffusers(diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                             down_block_types=("DownBlock2D", "DownBlock2D"),
                                             up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                             norm_num_groups=4), vae, cfg)


def _tiny_diffusers(diffusers, **vae_kw):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  latent_channels=4, norm_num_groups=4, layers_per_block=1, **vae_kw).eval()
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=4).eval()
    return unet, vae


@pytest.mark.filterwarnings("ignore:scheduler_config names no scheduler class")  # (a bare dict: not the point)
def test_from_diffusers_sample_latent_is_seeded():
    """sample_latent drew c from torch's global RNG: the same seed gave another image at every call (0.061 apart)
    and moved the user's RNG. Now the draw is latent_seed's, the same as diffusers' own sample(generator=...)."""
    diffusers = pytest.importorskip("diffusers")
    from yoda.models import from_diffusers

    unet, vae = _tiny_diffusers(diffusers)
    cfg = {"num_train_timesteps": 10, "beta_start": 1e-3, "beta_end": 0.02}
    lr = _lr(1, 4, 4)
    runs = [sample(from_diffusers(unet, vae, cfg, scale=2, sample_latent=True, latent_seed=s), lr, steps=2,
                   seed=0, progress=False) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    up = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bicubic").clamp(-1, 1)
    encode = from_diffusers(unet, vae, cfg, scale=2, sample_latent=True, latent_seed=5)._encode
    state = torch.get_rng_state()
    want = vae.encode(up).latent_dist.sample(generator=torch.Generator().manual_seed(5)) * vae.config.scaling_factor
    assert torch.equal(encode(up), want) and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(TypeError, match="latent_seed must be an int"):
        from_diffusers(unet, vae, cfg, latent_seed=0.5)
    with pytest.raises(ValueError, match=r"latent_seed must be in \[0, 2\*\*64 - 1\]"):
        from_diffusers(unet, vae, cfg, latent_seed=2**64)
    assert torch.equal(runs[0], sample(from_diffusers(unet, vae, cfg, scale=2, sample_latent=True,
                                                      latent_seed=np.int64(0)), lr, steps=2, seed=0, progress=False))


@pytest.mark.filterwarnings("ignore:scheduler_config names no scheduler class")  # (a bare dict: not the point)
def test_from_diffusers_half_precision_weights_and_device():
    """fp16 / bf16 diffusers weights crashed on the float32 state (a raw "Input type (float) and bias type"
    error); the adapter had no device, so an lr on another device was not refused up front."""
    diffusers = pytest.importorskip("diffusers")
    from yoda.models import from_diffusers

    unet, vae = _tiny_diffusers(diffusers)
    cfg = {"num_train_timesteps": 10, "beta_start": 1e-3, "beta_end": 0.02, "prediction_type": "epsilon"}
    lr = _lr(1, 4, 4)
    noise = _noise((1, 4, 4, 4), 3)
    ref = from_diffusers(unet, vae, cfg, scale=2)
    assert ref.device() == torch.device("cpu")
    # a UNet moved without its VAE failed deep in torch ("Tensor on device meta is not on the expected device")
    apart = from_diffusers(unet, copy.deepcopy(vae).to("meta"), cfg, scale=2)
    with pytest.raises(ValueError, match=r"^the model's modules are on different devices \(UNet2DModel on cpu, "
                                         r"AutoencoderKL on meta\): move them to one$"):
        sample(apart, lr, steps=2, progress=False)
    a = sample(ref, lr, attention="edge", steps=2, sampler="ddim", noise=noise, progress=False)
    for dt, tol in ((torch.bfloat16, 0.04), (torch.float16, 0.006)):  # measured 0.011 and 0.0018
        half = from_diffusers(copy.deepcopy(unet).to(dt), copy.deepcopy(vae).to(dt), cfg, scale=2)
        b = sample(half, lr, attention="edge", steps=2, sampler="ddim", noise=noise, progress=False)
        assert b.dtype == torch.float32 and (a - b).abs().max() < tol, dt
    # an fp16 VAE with force_upcast (SD's, SDXL's) runs in float32 for the call, as the pipelines upcast it
    up_vae = copy.deepcopy(vae).to(torch.float16)
    up_vae.register_to_config(force_upcast=True)
    ad = from_diffusers(unet, up_vae, cfg, scale=2)
    with torch.no_grad():
        c = ad.prepare(lr).c
        want = from_diffusers(unet, copy.deepcopy(up_vae).to(torch.float32), cfg, scale=2).prepare(lr).c
    assert up_vae.dtype == torch.float16 and torch.equal(c, want)
    # yoda.sample casts it in its inference mode: the weights stayed inference tensors, so the caller's VAE could
    # no longer take a gradient or requires_grad_ (a perceptual loss, a fine-tune after sampling)
    import logging

    logged = []  # diffusers' Module.to logged "should be kept in float32" at every cast: four times a call
    handler = logging.Handler()
    handler.emit = logged.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        sample(ad, lr, steps=2, sampler="ddim", noise=noise, progress=False)
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert [r.getMessage() for r in logged] == []
    assert up_vae.dtype == torch.float16 and not any(p.is_inference() for p in up_vae.parameters())
    up_vae.requires_grad_(True)
    x = lr.repeat_interleave(2, -1).repeat_interleave(2, -2).half().requires_grad_(True)
    up_vae.encode(x).latent_dist.mean.float().sum().backward()
    assert x.grad is not None and up_vae.encoder.conv_in.weight.grad is not None


def test_vae_upcast_is_shared_by_threads():
    """Two threads decoding with one fp16 VAE with force_upcast: the second one in found it float32, skipped the
    upcast, and the first one out cast it back to fp16 under it ("Input type (float) and bias type (c10::Half)")."""
    import threading
    import time
    from types import SimpleNamespace

    from yoda.models.latent import vae_upcast

    class SlowVAE(torch.nn.Module):
        config = SimpleNamespace(force_upcast=True)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 3, 1).half()

        @property
        def dtype(self):
            return self.conv.weight.dtype

        def decode(self, z, wait):
            time.sleep(wait)  # the other thread enters or leaves meanwhile
            return self.conv(z.to(self.dtype))

    vae, z = SlowVAE(), torch.randn(1, 4, 2, 2)
    errors, dtypes = [], []

    def run(wait):
        try:
            with vae_upcast(vae):
                dtypes.append(vae.decode(z, wait).dtype)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in (0.2, 0.4)]  # the first one in leaves first
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()
    for t in threads:
        t.join()
    assert errors == [] and dtypes == [torch.float32, torch.float32]
    assert vae.dtype == torch.float16  # back once the last one left


# its EulerDiscreteScheduler config gets a sampler note (test_from_diffusers_samples_as_its_scheduler_config_says)
@pytest.mark.filterwarnings("ignore:scheduler_config. a EulerDiscreteScheduler names no default sampler:UserWarning")
@pytest.mark.filterwarnings("ignore:scheduler_config names no scheduler class")  # (a bare dict: not the point)
def test_from_diffusers_takes_or_refuses_every_sampling_key():
    """Sampling-relevant config keys were dropped: clip_sample (diffusers DDPM's default; the final latent differed
    by 2.9), the VAE's shift_factor and latents_mean / std, an EDM or flow-matching scheduler read as linear betas,
    thresholding, a bogus timestep_spacing, trained_betas of another length; a scheduler object gave KeyError."""
    diffusers = pytest.importorskip("diffusers")
    from yoda.models import from_diffusers, schedule_from_diffusers

    unet, vae = _tiny_diffusers(diffusers)
    cfg = {"num_train_timesteps": 10, "beta_start": 1e-3, "beta_end": 0.02}
    assert from_diffusers(unet, vae, dict(cfg, clip_sample=True), scale=2).clip_x0
    assert not from_diffusers(unet, vae, dict(cfg, clip_sample=False), scale=2).clip_x0
    # a config without the key reads as diffusers reads it: DDPM / DDIM (and a dict naming no class) clip
    for name in ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", None):
        named = dict(cfg, _class_name=name) if name else dict(cfg)
        want = getattr(diffusers, name or "DDPMScheduler").from_config(named).config.get("clip_sample", False)
        assert from_diffusers(unet, vae, named, scale=2).clip_x0 == want == (name != "EulerDiscreteScheduler")
    # every scheduler class of the installed diffusers: its own clip_sample default, or no clipping without one
    from yoda.models.latent import clip_sample_of

    for name in (n for n in dir(diffusers) if n.endswith("Scheduler")):
        try:
            param = inspect.signature(getattr(diffusers, name).__init__).parameters.get("clip_sample")
        except (TypeError, ValueError, ImportError, AttributeError):  # a dummy object of a missing backend
            continue
        assert clip_sample_of({"_class_name": name}) == bool(param is not None and param.default), name
    ddim = diffusers.DDIMScheduler(**cfg)
    assert from_diffusers(unet, vae, ddim, scale=2).schedule == from_diffusers(unet, vae, ddim.config, scale=2).schedule
    lr = _lr(1, 4, 4)
    with torch.no_grad():
        base = from_diffusers(unet, vae, cfg, scale=2).prepare(lr).c
        _, shifted = _tiny_diffusers(diffusers, shift_factor=0.3)
        c = from_diffusers(unet, shifted, cfg, scale=2).prepare(lr).c
        sf = vae.config.scaling_factor
        torch.testing.assert_close(c, (base / sf - 0.3) * sf)  # (z - shift) * sf
        _, normed = _tiny_diffusers(diffusers, latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[1.0, 2.0, 3.0, 4.0])
        ad = from_diffusers(unet, normed, cfg, scale=2)
        c = ad.prepare(lr).c
        mean = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
        std = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
        torch.testing.assert_close(c, (base / sf - mean) * sf / std)
        z = torch.randn_like(c)  # decode inverts it: vae.decode(z * std / sf + mean)
        torch.testing.assert_close(ad._decode(z), normed.decode(z * std / sf + mean).sample)
    for bad, message in [
        (dict(cfg, _class_name="EDMEulerScheduler", sigma_data=0.5), "not a discrete DDPM-family schedule"),
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 10, "shift": 3.0},
         "FlowMatchEulerDiscreteScheduler is not a discrete DDPM-family"),
        (dict(cfg, thresholding=True), "thresholding=True"),
        (dict(cfg, clip_sample=True, clip_sample_range=2.0), "clip_sample_range 2.0"),
        (dict(cfg, timestep_spacing="bogus"), "timestep_spacing 'bogus'"),
        (dict(cfg, trained_betas=[0.01] * 4), "trained_betas has 4 values but num_train_timesteps is 10"),
    ]:
        with pytest.raises(ValueError, match=message):
            schedule_from_diffusers(bad)
    with pytest.raises(ValueError, match="not a discrete DDPM-family"):
        schedule_from_diffusers(diffusers.ScoreSdeVeScheduler().config)  # no _class_name: known by its keys
    # DPM-Solver / UniPC configs carry use_dynamic_shifting=False and must load (the usual from_config workflow)
    for cls in (diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler,
                diffusers.EulerDiscreteScheduler, diffusers.PNDMScheduler):
        assert schedule_from_diffusers(cls(**cfg).config)[0] == Schedule.linear(10, 1e-3, 0.02), cls.__name__
    with pytest.warns(UserWarning, match="variance_type 'fixed_large' is not yoda's"):
        schedule_from_diffusers(dict(cfg, variance_type="fixed_large"))
    with pytest.raises(TypeError, match="scheduler_config must be a diffusers scheduler's config"):
        from_diffusers(unet, vae, None, scale=2)
    # a module (or its config) in the scheduler's place: the VAE was read as a linear T = 1000 eps schedule, the
    # UNet failed in int(None)
    for wrong, got in ((vae, "AutoencoderKL"), (unet, "UNet2DModel"),
                       (vae.config, r"the config of a model \(it has block_out_channels\)"),
                       (dict(unet.config, _class_name="UNet2DModel"),
                        r"the config of UNet2DModel \(it has block_out_channels\)")):
        with pytest.raises(TypeError, match=r"^scheduler_config must be a diffusers scheduler's config "
                                            rf"\(scheduler.config\), the scheduler, its JSON file or a dict, got {got}$"):
            from_diffusers(unet, vae, wrong, scale=2)

    class MyDDIM(diffusers.DDIMScheduler):  # a subclass of a scheduler is one, whatever its name
        pass

    assert schedule_from_diffusers(MyDDIM(**cfg))[0] == schedule_from_diffusers(cfg)[0]
    for T in (None, 10.0, "10"):
        with pytest.raises(TypeError, match="^scheduler_config: num_train_timesteps must be an int, got "):
            schedule_from_diffusers(dict(cfg, num_train_timesteps=T))
    grey = diffusers.AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8,), latent_channels=4,
                                   norm_num_groups=4, layers_per_block=1)
    with pytest.raises(ValueError, match="vae: in_channels and out_channels must be 3"):
        from_diffusers(unet, grey, cfg, scale=2)


def test_sample_half_precision_state_with_float32_weights():
    net = _tiny_sr3(attn=False)
    net.card = ModelCard(Schedule.linear(10, 1e-3, 0.2), 2)
    lr = _lr(1, 8, 8)
    a = sample(net, lr, attention=None, steps=3, seed=4, progress=False)
    b = sample(net, lr.to(torch.bfloat16), attention=None, steps=3, seed=4, progress=False)
    h = sample(net, lr.to(torch.float16), attention=None, steps=3, seed=4, progress=False)
    # the state is rounded to the lr dtype every step: a few ulps of |x| <= 1 (bf16 ulp 2^-7, fp16 2^-10);
    # over seeds 0..7 measured up to 0.0103 / 0.0011
    assert b.dtype == torch.bfloat16 and (a - b.float()).abs().max() < 4 * 2 ** -7
    assert h.dtype == torch.float16 and (a - h.float()).abs().max() < 4 * 2 ** -10
    # SRDiff (residual space, YODA masks from the edge map) against its float32 run on the same LR values: its
    # state starts at |x_T| up to ~4 (ulps twice as large), so 8 ulps; over seeds 0..9 measured up to 6.0 ulps
    # (bf16) and 4.5 (fp16)
    m = _tiny_srdiff()
    for dtype, ulp in ((torch.bfloat16, 2**-7), (torch.float16, 2**-10)):
        lr_d = lr.to(dtype)
        c = sample(m, lr_d, attention="edge", steps=3, seed=4, progress=False)
        want = sample(m, lr_d.float(), attention="edge", steps=3, seed=4, progress=False)
        assert c.dtype == dtype and (c.float() - want).abs().max() < 8 * ulp


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
def test_a_config_without_betas_takes_diffusers_defaults():
    diffusers = pytest.importorskip("diffusers")
    from yoda.models.latent import schedule_from_diffusers

    sched, pred = schedule_from_diffusers({"num_train_timesteps": 1000})
    d = diffusers.DDPMScheduler()  # its registered defaults: linear, beta_start 1e-4, beta_end 0.02, epsilon
    np.testing.assert_allclose(sched.betas.numpy(), d.betas.double().numpy(), rtol=1e-6, atol=0)
    assert pred == "eps"


def test_diffusers_sample_prediction_is_x0():
    from yoda.models.latent import schedule_from_diffusers
    for name, want in (("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")):  # diffusers' three names
        assert schedule_from_diffusers({"num_train_timesteps": 10, "prediction_type": name})[1] == want


def test_a_saved_scheduler_config_is_read_from_its_path(tmp_path):
    """README says "pass the scheduler, or a saved / loaded config", but the path of a saved scheduler_config.json
    was a TypeError: it (or the folder holding it, a pipeline's scheduler/) reads as the scheduler does; a missing,
    broken or non-object file is named."""
    diffusers = pytest.importorskip("diffusers")
    from yoda.models.latent import sampling_from_diffusers, scheduler_config_dict

    sched = diffusers.DDIMScheduler(num_train_timesteps=20, steps_offset=1, set_alpha_to_one=False)
    sched.save_config(tmp_path / "scheduler")
    want = scheduler_config_dict(sched)
    assert want["_class_name"] == "DDIMScheduler"
    for p in (tmp_path / "scheduler" / "scheduler_config.json", str(tmp_path / "scheduler")):
        got = scheduler_config_dict(p)
        assert {k: v for k, v in got.items() if not k.startswith("_") or k == "_class_name"} == \
            {k: v for k, v in want.items() if not k.startswith("_") or k == "_class_name"}  # (_diffusers_version ...)
        assert sampling_from_diffusers(p) == sampling_from_diffusers(sched) == {"sampler": "ddim", "steps": 19,
                                                                                "spacing": "sd_leading"}
    with pytest.raises(FileNotFoundError, match=r"scheduler_config: scheduler config file not found: .*nope\.json"):
        scheduler_config_dict(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{\"num_train_timesteps\": 20,")
    with pytest.raises(ValueError, match=r"scheduler_config: .*bad\.json is not valid JSON"):
        scheduler_config_dict(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json holds a JSON list, not a scheduler config"):
        scheduler_config_dict(str(tmp_path / "list.json"))


def test_from_diffusers_samples_as_its_scheduler_config_says():
    """A call naming no sampler or spacing sampled a diffusers model with yoda's defaults (DDPM, "trailing") whatever
    its scheduler config said: now the config's class gives the sampler and its timestep_spacing the spacing
    (Stable Diffusion's DDIM: "sd_leading"); what a call names wins, and a config stating nothing changes nothing."""
    diffusers = pytest.importorskip("diffusers")
    from yoda.models import from_diffusers
    from yoda.models.latent import sampling_from_diffusers

    cfg = {"num_train_timesteps": 20, "beta_start": 1e-3, "beta_end": 0.02}
    sd = diffusers.DDIMScheduler(**cfg, steps_offset=1, set_alpha_to_one=False)
    sd_ddim = {"_class_name": "DDIMScheduler", **sd.config}  # as its scheduler_config.json reads
    want = {"sampler": "ddim", "steps": 19, "spacing": "sd_leading"}  # the pipelines' 50 steps, at most T - 1 here
    assert sampling_from_diffusers(sd) == sampling_from_diffusers(sd_ddim) == want
    # a bare config names no class (DDIMScheduler(...).config): DDPM, said (it sampled every step of T unsaid)
    bare = r"^scheduler_config names no scheduler class .*samples with DDPM over every step of T; pass the scheduler"
    with pytest.warns(UserWarning, match=bare):
        assert sampling_from_diffusers(dict(sd.config)) == {"spacing": "leading"}
    with pytest.warns(UserWarning, match=r"^scheduler_config names no .*samples with DDPM; pass"):  # steps given
        assert sampling_from_diffusers(dict(sd.config), 7) == {"steps": 7, "spacing": "leading"}
    assert sampling_from_diffusers(diffusers.DDIMScheduler(**cfg)) == {"sampler": "ddim", "steps": 20,
                                                                       "spacing": "leading"}
    assert sampling_from_diffusers(diffusers.DDPMScheduler(**cfg, timestep_spacing="trailing")) == {
        "sampler": "ddpm", "spacing": "trailing"}
    # another class names no sampler: a call naming none samples with DDPM, said with yoda's counterpart
    with pytest.warns(UserWarning, match=r"^scheduler_config: a EulerDiscreteScheduler names no default sampler of "
                                         r"yoda's: a call naming no sampler= samples with DDPM; its counterpart is "
                                         r"sampler='euler'"):
        assert sampling_from_diffusers(diffusers.EulerDiscreteScheduler(**cfg, timestep_spacing="linspace")) == {
            "spacing": "linspace"}
    with pytest.warns(UserWarning, match=bare):
        assert sampling_from_diffusers(cfg) == {}
    # an older saved config states none of timestep_spacing / steps_offset / set_alpha_to_one: diffusers' defaults
    old_sd = {"_class_name": "DDIMScheduler", **cfg, "steps_offset": 1, "set_alpha_to_one": False}
    assert sampling_from_diffusers(old_sd) == want
    assert sampling_from_diffusers({"_class_name": "DDPMScheduler", **cfg}) == {"sampler": "ddpm", "spacing": "leading"}
    assert sampling_from_diffusers({"_class_name": "DDIMScheduler", **cfg, "steps_offset": None}) == {
        "sampler": "ddim", "steps": 20, "spacing": "leading"}
    unet, vae = _tiny_diffusers(diffusers)
    # a scheduler object is read with its class, as its saved config: Euler does not clip x0 (it was clipped)
    with pytest.warns(UserWarning, match="a EulerDiscreteScheduler names no default sampler"):
        assert not from_diffusers(unet, vae, diffusers.EulerDiscreteScheduler(**cfg), scale=2).clip_x0
    lr = _lr(1, 4, 4)
    ad = from_diffusers(unet, vae, sd_ddim, scale=2)
    assert dict(ad.sampling_defaults) == want
    with torch.no_grad():
        got = sample(ad, lr, steps=4, seed=3, progress=False)
        assert torch.equal(got, sample(ad, lr, steps=4, seed=3, sampler="ddim", spacing="sd_leading", progress=False))
        assert not torch.equal(got, sample(ad, lr, steps=4, seed=3, sampler="ddim", spacing="trailing",
                                           progress=False))
        # DDPM named by the call on SD's DDIM config: what DDPMScheduler.from_config makes of it, "leading" with
        # steps_offset 1 (it was "leading": 900, 800, ... where diffusers visits 901, 801, ...)
        with pytest.warns(UserWarning, match=bare):
            plain = from_diffusers(unet, vae, cfg, scale=2)
        assert not plain.sampling_defaults
        torch.testing.assert_close(sample(ad, lr, steps=4, seed=3, sampler="ddpm", progress=False),
                                   sample(plain, lr, steps=4, seed=3, sampler="ddpm", spacing="leading_offset",
                                          progress=False), rtol=0, atol=0)
    # defaults that could never apply are refused where they are given
    from yoda.models.latent import LatentAdapter

    for bad in ({"sampler": "ddpm", "spacing": "sd_leading"}, {"sampler": "euler", "spacing": "leading"},
                {"spacing": "bogus"}, {"steps": 21}):
        with pytest.raises(ValueError, match="sampling"):
            LatentAdapter(lambda x: x, lambda z: z, lambda z, t, c: z, plain.schedule, sampling=bad)


def test_load_sr3_config_warns_of_keys_sr3_does_not_read():
    """A misspelt model.unet key (norm_group for norm_groups) changes no weight's shape, so strict loading let the
    default 32 groups stand without a word, and the model's output was wrong. Unknown keys are now warned of."""
    cfg = copy.deepcopy(_GOOD_SR3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_sr3_config(cfg)[0].norm_groups == 4  # SR3's own keys: no warning
    cfg["model"]["unet"]["norm_group"] = cfg["model"]["unet"].pop("norm_groups")
    cfg["model"]["unet"]["inner_channel"] = 32  # so that the default 32 groups divide its channels
    cfg["model"]["diffusion"]["imagesize"] = 16
    with pytest.warns(UserWarning, match=r"'model.unet.norm_group', 'model.diffusion.imagesize' unknown to SR3 "
                                         r"\(a misspelling\? model.unet takes in_channel, .*norm_groups"):
        assert load_sr3_config(cfg)[0].norm_groups == 32


def test_the_spacing_a_diffusers_config_names_visits_its_scheduler_s_timesteps():
    """Only Stable Diffusion's DDIM config (leading, steps_offset 1, no alpha-to-one) was followed: DDPM on that
    config, DDIM with alpha-to-one and offset 1, and DDIM trailing without alpha-to-one (zero-SNR recipes) fell back
    to plain "leading" / "trailing" (final latents 3e-2 to 7e-2 off diffusers'). Each visits what diffusers'
    scheduler visits now, down to the alpha_bar its last step ends at (diffusers' DDIM steps to t - T // steps:
    where that index is >= 0, its last step ends at alpha_bar there, README's documented difference; else at
    final_alpha_cumprod, which set_alpha_to_one chooses)."""
    diffusers = pytest.importorskip("diffusers")
    from yoda.models.latent import sampling_from_diffusers, schedule_from_diffusers

    base = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    seen = set()
    for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
        for spacing in ("leading", "trailing", "linspace"):
            for offset in (0, 1):
                for one in (True, False):
                    kw = dict(base, timestep_spacing=spacing, steps_offset=offset)
                    if cls is diffusers.DDIMScheduler:
                        kw["set_alpha_to_one"] = one
                    elif not one:
                        continue
                    sched = cls(**kw)
                    with warnings.catch_warnings(record=True) as w:
                        warnings.simplefilter("always")
                        defaults = sampling_from_diffusers(sched)
                    if not one and (spacing == "linspace" or (spacing, offset) == ("leading", 0)):  # none of yoda's
                        assert len(w) == 1 and "no spacing of yoda's follows" in str(w[0].message)
                        continue
                    assert not w, [str(x.message) for x in w]
                    schedule, _ = schedule_from_diffusers(sched)
                    for steps in (7, 10, 50, 600):
                        sched.set_timesteps(steps)
                        pairs = schedule.pairs(steps, defaults["spacing"])
                        assert [p[0] for p in pairs] == sched.timesteps.tolist(), (cls.__name__, kw, steps)
                        ddim = cls is diffusers.DDIMScheduler
                        if ddim and pairs[-1][0] - 1000 // steps >= 0:  # trailing at 7 steps, leading_offset at 600
                            continue
                        final = float(sched.final_alpha_cumprod) if ddim else 1.0
                        assert pairs[-1][2] == pytest.approx(final, rel=1e-6), (cls.__name__, kw, steps)
                    seen.add(defaults["spacing"])
    assert seen == {"leading", "leading_offset", "sd_leading", "trailing", "sd_trailing", "linspace"}
