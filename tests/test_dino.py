"""DINO extractors: state-dict layout of the official checkpoints, strict round trips through the file
formats DINO uses, a float64 reference of the CLS attention, MAX over heads/groups, loading errors."""

import argparse
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import yoda
import yoda.attention as att
from yoda.checkpoint import CheckpointError
from yoda.attention.dino import DinoResNet50, DinoViT, DinoViTS8, ResNet50, _target_size

# ----------------------------------------------------------------------------------- expected layouts
BLOCK_KEYS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]  # fmt: skip
VIT_KEYS = (
    ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    + [f"blocks.{i}.{k}" for i in range(12) for k in BLOCK_KEYS]
    + ["norm.weight", "norm.bias"]
)
# timm/DINO ViT-S/8 backbone (no head): 21,670,272 parameters
VIT_S8_PARAMS = 21_670_272


def _bn(p):
    return [f"{p}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _resnet_keys(fc):
    keys = ["conv1.weight"] + _bn("bn1")
    for i, n in enumerate([3, 4, 6, 3]):
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            for c in (1, 2, 3):
                keys += [f"{p}.conv{c}.weight"] + _bn(f"{p}.bn{c}")
            if j == 0:
                keys += [f"{p}.downsample.0.weight"] + _bn(f"{p}.downsample.1")
    return keys + (["fc.weight", "fc.bias"] if fc else [])


# torchvision resnet50: 25,557,032 parameters with fc (2048*1000 + 1000 of them)
RESNET50_PARAMS = 25_557_032


def _lr(B=2, C=3, h=13, w=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, C, h, w, generator=g) * 2 - 1


def _randomise(model, seed):
    """Random non-default values for every parameter and buffer, so a key that failed to load shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif name.endswith(("running_mean", ".bias")) or "bn" in name or "downsample.1" in name:
                    t.copy_(0.1 * torch.randn(t.shape, generator=g) + (1.0 if name.endswith("weight") else 0.0))
                else:
                    t.copy_(t + 0.01 * torch.randn(t.shape, generator=g))
            else:
                t.fill_(7)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: 21 tokens, 64x96 px (tests/conftest.py)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _randomise(DinoViT(init=False), 1).eval()  # init=False: _randomise sets every value


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return _randomise(ResNet50(init=False), 2).eval()


@pytest.fixture(scope="module")
def vit_want(vit):
    """(lr, A) of the in-memory model: what every loaded copy must reproduce bit for bit."""
    lr = _lr(seed=9)
    return lr, DinoViTS8(vit, **VIT_KW)(lr)


@pytest.fixture(scope="module")
def resnet_want(resnet):
    lr = _lr(B=1, h=16, w=16, seed=2)
    return lr, DinoResNet50(resnet, groups=4, **RES_KW)(lr)


@pytest.fixture(scope="module")
def vit_file(vit, tmp_path_factory):
    # dino_deitsmall8_pretrain.pth is a plain state dict saved with torch.save
    p = tmp_path_factory.mktemp("dino") / "dino_deitsmall8_pretrain.pth"
    torch.save(vit.state_dict(), p)
    return str(p)


@pytest.fixture(scope="module")
def resnet_file(resnet, tmp_path_factory):
    p = tmp_path_factory.mktemp("dino") / "dino_resnet50_pretrain.pth"
    torch.save(resnet.state_dict(), p)
    return str(p)


VIT_KW = dict(min_size=32, max_size=64)  # small inputs: 4x4 .. 8x8 patches, fast on CPU
RES_KW = dict(min_size=64, max_size=128)


# ----------------------------------------------------------------------------------- layouts
def test_vit_state_dict_layout(vit):
    sd = vit.state_dict()
    assert list(sd) == VIT_KEYS
    assert sd["pos_embed"].shape == (1, 1 + 28 * 28, 384)
    assert sd["cls_token"].shape == (1, 1, 384)
    assert sd["patch_embed.proj.weight"].shape == (384, 3, 8, 8)
    assert sd["blocks.11.attn.qkv.weight"].shape == (3 * 384, 384)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * 384, 384)
    assert sum(p.numel() for p in vit.parameters()) == VIT_S8_PARAMS
    assert vit.num_heads == 6 and vit.patch_size == 8


@pytest.mark.parametrize("fc", [False, True])
def test_resnet_state_dict_layout(fc):
    m = ResNet50(with_fc=fc)
    assert list(m.state_dict()) == _resnet_keys(fc)
    n = sum(p.numel() for p in m.parameters())
    assert n == (RESNET50_PARAMS if fc else RESNET50_PARAMS - 2048 * 1000 - 1000)
    x = torch.zeros(1, 3, 64, 96)
    assert m.eval().features(x).shape == (1, 2048, 2, 3)


# ----------------------------------------------------------------------------------- float64 reference
def _ref_cls_attention(sd, x, heads=6, patch=8, eps=1e-6):
    """DINO's get_last_selfattention(x)[:, :, 0, 1:] in float64, written from the paper's equations:
    tokens = [cls; patch_embed(x)] + pos (bicubic-resized as DINO: scale (n + 0.1) / sqrt(N)); pre-norm
    blocks x += proj(softmax(q k^T / sqrt(d)) v); x += fc2(gelu(fc1(ln(x)))); last block: CLS row."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    B, _, H, W = x.shape
    r, c = H // patch, W // patch
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    pos = sd["pos_embed"]
    n = int(math.isqrt(pos.shape[1] - 1))
    if (r, c) != (n, n):
        grid = pos[0, 1:].T.reshape(1, -1, n, n)
        grid = F.interpolate(grid, scale_factor=((r + 0.1) / n, (c + 0.1) / n), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.reshape(1, -1, r * c).transpose(1, 2)], dim=1)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], dim=1) + pos
    D = t.shape[-1]
    d = D // heads
    for i in range(12):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = [qkv[..., j * D : (j + 1) * D].reshape(B, -1, heads, d).transpose(1, 2) for j in range(3)]
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, heads, N, N)
        if i == 11:
            return a[:, :, 0, 1:].reshape(B, heads, r, c)
        t = t + F.linear((a @ v).transpose(1, 2).reshape(B, -1, D), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(t, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + y


@pytest.mark.parametrize("hw, grid", [((13, 17), (4, 5)), ((16, 16), (4, 4))])
def test_vit_head_maps_match_float64_reference(vit, hw, grid):
    e = DinoViTS8(vit, **VIT_KW)
    lr = _lr(h=hw[0], w=hw[1])
    maps = e.head_maps(lr)
    assert maps.shape == (2, 6, *grid)
    # the network input as documented: bicubic to a multiple of 8, then ImageNet normalisation
    H, W = grid[0] * 8, grid[1] * 8
    x = F.interpolate((lr.double() + 1) / 2, size=(H, W), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    ref = _ref_cls_attention(vit.state_dict(), (x - mean) / std)
    # float32 through 12 blocks vs float64; attention values are ~1/N = 0.05, heads differ by >> 1e-3
    np.testing.assert_allclose(maps.numpy(), ref.numpy(), rtol=1e-3, atol=1e-6)
    assert float((ref.amax(dim=(2, 3)) - ref.amin(dim=(2, 3))).min()) > 1e-3  # the test can see a mix-up


def test_vit_max_over_heads_by_hand(vit):
    e = DinoViTS8(vit, **VIT_KW)
    lr = _lr(h=13, w=17, seed=4)
    A = e(lr)
    maps = e.head_maps(lr).double()
    m = maps[:, 0]
    for k in range(1, 6):
        m = torch.maximum(m, maps[:, k])
    r = F.interpolate(m[:, None], size=(13, 17), mode="bilinear", align_corners=False)
    lo = r.amin(dim=(1, 2, 3), keepdim=True)
    hi = r.amax(dim=(1, 2, 3), keepdim=True)
    np.testing.assert_allclose(A.numpy(), ((r - lo) / (hi - lo)).numpy(), atol=2e-6, rtol=0)
    # MAX, not mean: the mean over heads gives a different map here
    mean = F.interpolate(maps.mean(dim=1, keepdim=True), size=(13, 17), mode="bilinear", align_corners=False)
    mean = (mean - mean.amin(dim=(1, 2, 3), keepdim=True)) / (mean.amax(dim=(1, 2, 3), keepdim=True) - mean.amin(dim=(1, 2, 3), keepdim=True))
    assert float((A.double() - mean).abs().max()) > 1e-2


def test_vit_pos_embed_interpolation(vit):
    assert vit.interpolate_pos_encoding(28, 28) is vit.pos_embed  # the stored grid: untouched
    pe = vit.interpolate_pos_encoding(3, 5)
    assert pe.shape == (1, 1 + 15, 384)
    torch.testing.assert_close(pe[:, 0], vit.pos_embed[:, 0], rtol=0, atol=0)  # CLS position kept
    # a constant grid stays constant, and a grid that is constant along columns keeps that
    m = DinoViT(depth=1, init=False)
    with torch.no_grad():
        m.pos_embed.zero_()
        m.pos_embed[:, 1:] = 0.25
    torch.testing.assert_close(m.interpolate_pos_encoding(6, 9)[:, 1:], torch.full((1, 54, 384), 0.25))
    with torch.no_grad():
        rows = torch.linspace(-1, 1, 28).view(28, 1, 1).expand(28, 28, 384).reshape(1, 784, 384)
        m.pos_embed[:, 1:] = rows
    g = m.interpolate_pos_encoding(5, 7)[0, 1:].reshape(5, 7, 384)
    torch.testing.assert_close(g, g[:, :1].expand(5, 7, 384), rtol=0, atol=1e-6)
    assert bool((g[1:, 0, 0] > g[:-1, 0, 0]).all())  # ... and increasing down the rows (not transposed)


def test_target_size():
    assert _target_size(16, 16, 224, 448, 8) == (224, 224)
    assert _target_size(13, 17, 224, 448, 8) == (224, 296)  # 17 * 224/13 = 292.9 -> 296
    assert _target_size(1000, 500, 224, 448, 8) == (448, 224)  # shrunk so the long side <= 448
    assert _target_size(300, 260, 224, 448, 32) == (288, 256)  # already large: only rounded
    assert _target_size(1, 4000, 224, 448, 8) == (8, 448)  # extreme aspect: at least one patch


# ----------------------------------------------------------------------------------- round trips
def test_vit_round_trip_plain_pth(vit_want, vit_file):
    lr, want = vit_want
    e = att.get(f"dino-vits8:{vit_file}", **VIT_KW)  # the CLI's string
    assert isinstance(e, DinoViTS8) and list(e.model.state_dict()) == VIT_KEYS
    A = e(lr)
    torch.testing.assert_close(A, want, rtol=0, atol=0)
    assert A.shape == (2, 1, 13, 17) and A.dtype == torch.float32
    assert float(A.min()) == 0.0 and float(A.max()) == 1.0
    assert vit_file in repr(e) and "min_size=32" in repr(e)


def test_vit_round_trip_teacher_checkpoint_and_safetensors(vit, vit_want, tmp_path):
    lr, want = vit_want
    # DINO training checkpoint: {"teacher": MultiCropWrapper(backbone, head) under DDP}, plus extras
    sd = {f"module.backbone.{k}": v for k, v in vit.state_dict().items()}
    sd["module.head.mlp.0.weight"] = torch.zeros(8, 384)
    sd["module.head.last_layer.weight_g"] = torch.ones(16, 1)
    args = argparse.Namespace(arch="vit_small", patch_size=8)  # DINO pickles its run arguments too
    ckpt = {"teacher": sd, "student": {}, "epoch": 100, "optimizer": {"state": {}}, "args": args}
    p = tmp_path / "checkpoint.pth"
    torch.save(ckpt, p)
    torch.testing.assert_close(att.dino_vits8(str(p), **VIT_KW)(lr), want, rtol=0, atol=0)
    # the same weights as safetensors
    q = tmp_path / "dino_deitsmall8.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(q))
    torch.testing.assert_close(att.dino_vits8(str(q), **VIT_KW)(lr), want, rtol=0, atol=0)


def _transformers_layout(sd):
    """A DINO ViT state dict under Hugging Face transformers' ViTModel names (facebook/dino-vits8; the names of
    transformers' convert_dino_to_pytorch.py), q, k and v split from qkv."""
    top = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
           "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
           "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
    block = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out = {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
            continue
        _, i, rest = k.split(".", 2)
        name, wb = rest.rsplit(".", 1)
        if name == "attn.qkv":
            for part, t in zip(("query", "key", "value"), v.chunk(3)):
                out[f"encoder.layer.{i}.attention.attention.{part}.{wb}"] = t.contiguous()
        else:
            out[f"encoder.layer.{i}.{block[name]}.{wb}"] = v
    return out


def test_vit_from_transformers_layout(vit, vit_want, tmp_path):
    """Hugging Face's facebook/dino-vits8 (transformers ViTModel names) was refused with 150 missing keys; it is
    the same weights, renamed, with q, k and v apart: loaded, the maps are the in-memory model's bit for bit, as a
    ViTModel (model.safetensors) and as a ViTForImageClassification (vit. prefix, a classifier) whose pooler is
    dropped."""
    lr, want = vit_want
    hf = _transformers_layout(vit.state_dict())
    assert len(hf) == len(VIT_KEYS) + 12 * 4 and "encoder.layer.11.attention.attention.value.bias" in hf
    p = tmp_path / "model.safetensors"
    save_file(hf, str(p))
    torch.testing.assert_close(att.dino_vits8(str(p), **VIT_KW)(lr), want, rtol=0, atol=0)
    cls = {f"vit.{k}": v for k, v in hf.items()}
    cls |= {"classifier.weight": torch.zeros(10, 384), "classifier.bias": torch.zeros(10),
            "vit.pooler.dense.weight": torch.zeros(384, 384)}
    q = tmp_path / "pytorch_model.bin"
    torch.save(cls, q)
    torch.testing.assert_close(att.get(f"dino-vits8:{q}", **VIT_KW)(lr), want, rtol=0, atol=0)
    del hf["encoder.layer.3.attention.attention.key.weight"]
    save_file(hf, str(p))
    with pytest.raises(CheckpointError, match=r"model\.safetensors' \(Hugging Face's facebook/dino-vits8 layout\): layer 3's "
                                         r"attention has \['query', 'value'\] weights, not query, key"):  # (the file
        att.dino_vits8(str(p))  # was not named)


def test_prefixes_that_make_one_key_of_two_are_refused(vit, vit_want, tmp_path):
    """A flat dict with a student's (module.backbone.*) and a teacher's (backbone.*) weights loaded whichever came
    last, silently: refused, naming both keys. torch.compile's _orig_mod. prefix and an EMA wrapper load; a file
    that is not a tensor dict names its top-level keys and checkpoint_key."""
    lr, want = vit_want
    sd = vit.state_dict()
    p = tmp_path / "both.pth"
    teacher, student = ({f"{pre}{k}": v + i for k, v in sd.items()}
                        for i, pre in enumerate(("backbone.", "module.backbone.")))
    torch.save(teacher | student, p)
    with pytest.raises(ValueError, match=r"both\.pth': the keys 'backbone\.cls_token' and 'module\.backbone\."
                                         r"cls_token' are both 'cls_token' without the prefixes module\., _orig_mod\., "
                                         r"backbone\."):
        att.dino_vits8(str(p))
    torch.save({"model_ema": {f"_orig_mod.module.{k}": v for k, v in sd.items()}, "epoch": 3}, p)  # compile(DDP)
    torch.testing.assert_close(att.dino_vits8(str(p), **VIT_KW)(lr), want, rtol=0, atol=0)
    torch.save({"ema": {"weights": sd}, "epoch": 3}, p)
    with pytest.raises(ValueError, match=r"not a dict of tensors .*top-level keys: \['ema', 'epoch'\]\): "
                                         r"checkpoint_key= names the entry"):
        att.dino_vits8(str(p))


def test_a_torchscript_archive_is_refused_before_torch_load(tmp_path, monkeypatch):
    """A TorchScript file got torch's warning and its advice to retry with weights_only=False (which would run the
    archive's code): refused before torch.load reads it, as what it is, by the attention loaders and yoda.load."""
    import warnings

    from yoda.checkpoint import read_checkpoint

    net = torch.nn.Conv2d(3, 4, 1)
    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 4, 4)), str(p))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load read a TorchScript archive"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for load in (att.dino_resnet50, read_checkpoint):
            with pytest.raises(CheckpointError, match=r"scripted\.pt: it is a TorchScript archive \(torch\.jit\.save\)"
                                                      r", a program rather than weights.*state_dict"):
                load(str(p))


def test_training_checkpoints_load_from_threads_and_keep_the_users_allow_list(vit, tmp_path):
    """The argparse.Namespace of a DINO training checkpoint is allowed for its torch.load only: torch's allow-list is
    process-wide and its safe_globals context removes the entry on exit, so loads from 4 threads failed at random
    (9 of 12), and a Namespace the user had allowed was gone after any DINO load."""
    from concurrent.futures import ThreadPoolExecutor

    ckpt = {"teacher": vit.state_dict(), "args": argparse.Namespace(arch="vit_small")}
    p = tmp_path / "checkpoint.pth"
    torch.save(ckpt, p)
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: att.dino_vits8(str(p), **VIT_KW), range(12)))
    assert all(torch.equal(e.model.pos_embed, vit.pos_embed) for e in loaded)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        att.dino_vits8(str(p), **VIT_KW)
        assert argparse.Namespace in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()


def test_vit_other_grid_checkpoint(tmp_path):
    # a checkpoint trained at 32 px (4x4 grid): the model takes the file's grid; native size, no interp
    torch.manual_seed(3)
    m = _randomise(DinoViT(img_size=32, init=False), 5).eval()
    p = tmp_path / "vit32.pth"
    torch.save(m.state_dict(), p)
    e = att.dino_vits8(str(p), min_size=32, max_size=32)
    assert e.model.pos_embed.shape == (1, 17, 384)
    lr = _lr(h=16, w=16)
    x = ((F.interpolate((lr.double() + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
          - torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1))
         / torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1))  # fmt: skip
    np.testing.assert_allclose(e.head_maps(lr).numpy(), _ref_cls_attention(m.state_dict(), x).numpy(), rtol=1e-3, atol=1e-6)


def test_a_small_dino_file_cannot_declare_a_huge_net(tmp_path):
    """The classifier's rows (ResNet-50) and the position grid (ViT) are read from the file's shapes: a 1.6 KB file
    with fc.weight of shape (3e9, 0) made yoda allocate 25 TB, a pos_embed of (1, 1500^2 + 1, 0) gigabytes. The
    net is built on the meta device and checked against the file first."""
    p = tmp_path / "bomb.pth"
    torch.save({"fc.weight": torch.zeros(3_000_000_000, 0), "fc.bias": torch.zeros(0)}, p)
    with pytest.raises(CheckpointError, match=r"do not fit ResNet50: .*fc.weight: checkpoint \(3000000000, 0\) vs "
                                              r"model \(3000000000, 2048\)"):
        att.dino_resnet50(weights=str(p))
    torch.save({"pos_embed": torch.zeros(1, 1500 ** 2 + 1, 0)}, p)
    with pytest.raises(CheckpointError, match=r"do not fit DinoViT: .*pos_embed: checkpoint \(1, 2250001, 0\)"):
        att.dino_vits8(weights=str(p))


@pytest.mark.parametrize("fc", [False, True])
def test_resnet_round_trip(resnet, resnet_want, tmp_path, fc):
    sd = dict(resnet.state_dict())
    if fc:  # a torchvision-style file with the classifier: accepted, the model grows an fc
        g = torch.Generator().manual_seed(0)
        sd["fc.weight"] = torch.randn(1000, 2048, generator=g)
        sd["fc.bias"] = torch.randn(1000, generator=g)
    p = tmp_path / "r50.pth"
    torch.save(sd, p)
    e = att.dino_resnet50(weights=str(p), groups=4, **RES_KW)
    assert (e.model.fc is not None) == fc
    assert list(e.model.state_dict()) == _resnet_keys(fc)
    lr, want = resnet_want
    torch.testing.assert_close(e(lr), want, rtol=0, atol=0)
    # a file without BatchNorm's num_batches_tracked (older torchvision files): accepted, as torch accepts it
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, p)
    torch.testing.assert_close(att.dino_resnet50(weights=str(p), groups=4, **RES_KW)(lr), want, rtol=0, atol=0)


def test_resnet_teacher_checkpoint_and_get(resnet, resnet_want, tmp_path):
    sd = {f"module.backbone.{k}": v for k, v in resnet.state_dict().items()}
    sd["module.head.mlp.0.weight"] = torch.zeros(4, 2048)
    p = tmp_path / "checkpoint.pth"
    torch.save({"teacher": sd, "epoch": 3}, p)
    lr, want = resnet_want
    e = att.get(f"dino-resnet50:{p}", groups=4, **RES_KW)
    torch.testing.assert_close(e(lr), want, rtol=0, atol=0)
    assert "groups=4" in repr(e) and str(p) in repr(e)



def test_get_expands_a_home_path(resnet, resnet_want, tmp_path, monkeypatch):
    """--attention dino-resnet50:~/x.pth: the shell does not expand a ~ after the colon; get does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(dict(resnet.state_dict()), tmp_path / "r50.pth")
    lr, want = resnet_want
    torch.testing.assert_close(att.get("dino-resnet50:~/r50.pth", groups=4, **RES_KW)(lr), want, rtol=0, atol=0)


def test_resnet_groups_and_max_by_hand(resnet):
    e = DinoResNet50(resnet, groups=4, **RES_KW)
    lr = _lr(B=1, h=13, w=17, seed=6)
    # 13x17 -> short side 64: (64, 83.7) -> multiples of 32: (64, 96) -> layer4 grid (2, 3)
    x = F.interpolate((lr + 1) / 2, size=(64, 96), mode="bicubic", align_corners=False).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        f = resnet.features(x).double()
    assert f.shape == (1, 2048, 2, 3)
    groups = [f[:, 512 * k : 512 * (k + 1)].mean(dim=1) for k in range(4)]
    maps = e.group_maps(lr)
    np.testing.assert_allclose(maps.numpy(), torch.stack(groups, 1).numpy(), rtol=1e-5, atol=1e-6)
    m = groups[0]
    for g in groups[1:]:
        m = torch.maximum(m, g)
    # bilinear with layer4's cell i centred on input pixel 32 i: output pixel y reads cell (y + 0.5) n / h - 1/64
    def weights(out, n):  # (out, n) interpolation matrix, clamped at the grid's ends
        idx = np.clip((np.arange(out) + 0.5) * n / out - 1 / 64, 0, n - 1)
        lo = np.minimum(np.floor(idx).astype(int), n - 2)
        W = np.zeros((out, n))
        W[np.arange(out), lo], W[np.arange(out), lo + 1] = 1 - (idx - lo), idx - lo
        return W

    r = weights(13, 2) @ m[0].numpy() @ weights(17, 3).T
    ref = (r - r.min()) / (r.max() - r.min())
    np.testing.assert_allclose(e(lr)[0, 0].numpy(), ref, atol=5e-6, rtol=0)
    # unequal groups: 2048 = 683 + 683 + 682 (numpy.array_split)
    m3 = DinoResNet50(resnet, groups=3, **RES_KW).group_maps(lr)
    np.testing.assert_allclose(m3[:, 2].numpy(), f[:, 1366:].mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- contract
@pytest.mark.parametrize(
    "which, C, hw", [("vit", 1, (13, 17)), ("vit", 3, (1, 3)), ("resnet", 1, (13, 17)), ("resnet", 3, (1, 3))]
)
def test_contract_shape_range_grey(which, C, hw, vit, resnet):
    e = DinoViTS8(vit, **VIT_KW) if which == "vit" else DinoResNet50(resnet, **RES_KW)
    lr = _lr(B=2 if which == "vit" else 1, C=C, h=hw[0], w=hw[1])
    A = e(lr)
    assert A.shape == (lr.shape[0], 1, *hw) and A.dtype == torch.float32
    assert float(A.min()) >= 0 and float(A.max()) <= 1
    if C == 1:
        torch.testing.assert_close(A, e(lr.repeat(1, 3, 1, 1)), rtol=0, atol=0)


def test_constant_image_defined(vit):
    """A constant image still has a map, from the positional embeddings alone: the float64 CLS attention of the
    constant network input (0.6 before ImageNet normalisation), max over heads, bilinear, min-max."""
    A = DinoViTS8(vit, **VIT_KW)(torch.full((1, 3, 16, 16), 0.2))
    assert bool(torch.isfinite(A).all()) and float(A.min()) == 0.0 and float(A.max()) == 1.0
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = (torch.full((1, 3, 32, 32), 0.6, dtype=torch.float64) - mean) / std  # 16 px -> min_size 32: 4x4 patches
    m = _ref_cls_attention(vit.state_dict(), x).amax(dim=1, keepdim=True)
    r = F.interpolate(m, size=(16, 16), mode="bilinear", align_corners=False)
    ref = (r - r.min()) / (r.max() - r.min())
    # the maps span only ~3e-4 here, so min-max stretches float32's ~2e-8 error to ~7e-5; a mix-up (mean over
    # heads, a transposed grid) is off by ~0.5
    np.testing.assert_allclose(A.numpy(), ref.numpy(), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "bad, exc, msg",
    [
        (torch.zeros(3, 16, 16), ValueError, "lr must be 4-D"),
        (torch.zeros(1, 2, 16, 16), ValueError, "lr must have 1"),
        (torch.full((1, 3, 16, 16), float("nan")), ValueError, "lr contains NaN"),
        (torch.full((1, 3, 16, 16), 2.0), ValueError, r"lr values must lie in \[-1, 1\]"),
    ],
)
def test_bad_inputs(vit, resnet, bad, exc, msg):
    for e in (DinoViTS8(vit, **VIT_KW), DinoResNet50(resnet, **RES_KW)):
        with pytest.raises(exc, match=msg):
            e(bad)


def test_bad_parameters(vit, resnet):
    with pytest.raises(ValueError, match="groups"):
        DinoResNet50(resnet, groups=0)
    with pytest.raises(ValueError, match="max_size"):
        DinoViTS8(vit, min_size=64, max_size=32)
    # numpy's integers are whole numbers, as everywhere else (they were refused: "got np.int64(32)")
    e = DinoResNet50(resnet, groups=np.int64(4), min_size=np.int32(32), max_size=np.int64(64))
    assert (e.groups, e.min_size, e.max_size) == (4, 32, 64) and type(e.groups) is int
    # checked before the weights are read: a bad size waited for a large file, or was hidden by its error
    with pytest.raises(ValueError, match=r"^min_size must be an int in \[1, "):
        att.dino_vits8("/no/such/dino.pth", min_size=0)
    with pytest.raises(ValueError, match=r"^groups must be an int in \[1, 2048\], got 4.0"):
        att.dino_resnet50("/no/such/r50.pth", groups=4.0)
    with pytest.raises(ValueError, match=r"^max_size \(32\) must be >= min_size \(64\)"):
        att.dino_resnet50("/no/such/r50.pth", min_size=64, max_size=32)


# ----------------------------------------------------------------------------------- loading errors
def test_missing_file():
    with pytest.raises(FileNotFoundError, match=r"/no/such/dino\.pth.*ViT-S/8"):
        att.dino_vits8("/no/such/dino.pth")


def test_corrupt_files(tmp_path, vit):
    p = tmp_path / "broken.pth"
    p.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"broken\.pth.*neither a PyTorch checkpoint nor a safetensors file "
                                         r"\(expected a DINO ViT-S/8"):
        att.dino_vits8(str(p))
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth.*is empty"):
        att.dino_vits8(str(tmp_path / "empty.pth"))
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a file"):
        att.dino_vits8(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"weights '/dev/null' is not a regular file \(a device or a pipe"):
        att.dino_vits8("/dev/null")  # it was "weights file not found"
    zipped = tmp_path / "cut.pth"  # a torch.save zip cut short: torch's one-line reason, not its advice
    torch.save(vit.state_dict(), zipped)
    zipped.write_bytes(zipped.read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*torch\.load") as ei:
        att.dino_vits8(str(zipped))
    assert "\n" not in str(ei.value) and "weights_only=False" not in str(ei.value)
    # the format is read from the content: a safetensors file named .pth loads
    from safetensors.torch import save_file

    named_pth = tmp_path / "really_safetensors.pth"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, named_pth)
    att.dino_vits8(str(named_pth))
    q = tmp_path / "broken.safetensors"
    q.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*safetensors.*ResNet-50"):
        att.dino_resnet50(str(q))
    # a .safetensors file cut within its header's first 9 bytes: too short to tell by content, told by name (as
    # yoda.load does); it was "neither a PyTorch checkpoint nor a safetensors file"
    q.write_bytes(named_pth.read_bytes()[:5])
    with pytest.raises(CheckpointError, match=r"^cannot read weights .*broken\.safetensors' as safetensors \(corrupt or "
                                         r"truncated\?; expected a DINO ResNet-50"):
        att.dino_resnet50(str(q))
    r = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], r)
    with pytest.raises(CheckpointError, match=r"list\.pth.*list"):
        att.dino_vits8(str(r))
    # through yoda.load too: a file the extractor cannot use is a CheckpointError, as an SR model's is (it was a
    # plain ValueError)
    with pytest.raises(CheckpointError, match=r"list\.pth.*list"):
        yoda.load("dino-vits8", str(r))
    torch.save({0: torch.zeros(3), "a": torch.zeros(2)}, r)  # it was an AttributeError of str.startswith
    with pytest.raises(CheckpointError, match=r"list\.pth' are not a state dict: its keys are parameter names, "
                                              r"not int \(0; expected a DINO ViT-S/8"):
        att.get(f"dino-vits8:{r}")


def test_wrong_keys_listed(vit, tmp_path):
    sd = dict(vit.state_dict())
    sd["blocks.0.attn.in_proj.weight"] = sd.pop("blocks.0.attn.qkv.weight")
    p = tmp_path / "renamed.pth"
    torch.save(sd, p)
    with pytest.raises(CheckpointError) as ei:
        att.dino_vits8(str(p))
    msg = str(ei.value)
    assert "renamed.pth" in msg
    assert "missing keys: 'blocks.0.attn.qkv.weight'" in msg
    assert "unexpected keys: 'blocks.0.attn.in_proj.weight'" in msg


def test_wrong_model_file(resnet_file, vit_file, vit, tmp_path):
    # a ResNet file given to the ViT loader (and vice versa): said as the other network's, with what loads it (it
    # listed missing and unexpected keys, the family left to the reader)
    with pytest.raises(ValueError, match=r"^weights '.*dino_resnet50_pretrain\.pth' are a ResNet-50's \(conv1\.weight "
                                         r"\.\.\.\), not this extractor's: the attention dino-resnet50:PATH"):
        att.dino_vits8(resnet_file)
    with pytest.raises(ValueError, match=r"dino_deitsmall8_pretrain\.pth' are a ViT's \(cls_token \.\.\.\), not this "
                                         r"extractor's: the attention dino-vits8:PATH \(--attention dino-vits8:PATH\)"):
        att.get(f"dino-resnet50:{vit_file}")
    # another file's keys: a few listed, with the total
    sd = {k: v for k, v in vit.state_dict().items() if k != "cls_token"}
    torch.save(sd, tmp_path / "no_cls.pth")
    with pytest.raises(ValueError, match=r"missing keys: 'cls_token'.*a DINO ViT-S/8 state dict"):
        att.dino_vits8(str(tmp_path / "no_cls.pth"))
    # right names, wrong shapes (a ViT-S/16 patch embedding)
    sd = dict(vit.state_dict())
    sd["patch_embed.proj.weight"] = torch.zeros(384, 3, 16, 16)
    p = tmp_path / "s16.pth"
    torch.save(sd, p)
    with pytest.raises(ValueError, match=r"shape mismatches: patch_embed\.proj\.weight: checkpoint \(384, 3, 16, 16\)"):
        att.dino_vits8(str(p))


def test_a_damaged_file_is_called_corrupt_and_an_overflowing_map_names_its_weights(resnet, tmp_path):
    """One flipped byte in a state dict's pickle was reported as "pickled Python objects that are not tensors ...
    allow just those with add_safe_globals" (no class named: torch's "Unsupported operand"). A file whose
    BatchNorm variances make the network overflow gave an all-NaN map, and yoda.sample said "attention(lr)
    contains NaN or Inf", naming neither the option nor the file."""
    from yoda.checkpoint import CheckpointError

    good, flip = tmp_path / "good.pth", tmp_path / "flip.pth"

    def save_flipped(crc32: bool) -> None:  # good.pth saved with or without its records' CRC-32, one byte flipped
        torch.serialization.set_crc32_options(crc32)
        try:
            torch.save(resnet.state_dict(), good)
        finally:
            torch.serialization.set_crc32_options(True)
        data = bytearray(good.read_bytes())
        data[data.index(b"OrderedDict\nq") + len(b"OrderedDict\n")] ^= 0x5A  # the pickle's first BINPUT: a "+"
        flip.write_bytes(bytes(data))

    save_flipped(crc32=True)
    with pytest.raises(CheckpointError, match=r"flip\.pth: it is corrupt: Bad CRC-32 for file 'good/data\.pkl'"):
        att.dino_resnet50(weights=str(flip))  # the record's CRC-32 says so first
    save_flipped(crc32=False)  # a file saved without them: the pickle's own error
    with pytest.raises(ValueError, match=r"^cannot read weights .*flip\.pth.* \(expected a DINO ResNet-50 state dict.*: "
                                         r"it is corrupt, or holds objects other than tensors and plain data "
                                         r"\(Unsupported operand 43\)$") as e:
        att.dino_resnet50(weights=str(flip))
    assert "add_safe_globals" not in str(e.value) and "weights_only=False" not in str(e.value)
    sd = {k: (torch.full_like(v, 1e-30) if k.endswith("running_var") else v) for k, v in resnet.state_dict().items()}
    hot = tmp_path / "overflow.pth"
    torch.save(sd, hot)
    from yoda.sampling import prepare

    lr = _lr(B=1, h=16, w=16, seed=2)
    with pytest.raises(ValueError, match=r"^dino_resnet50\(weights='.*overflow\.pth'.*: the network's map of lr is "
                                         r"not finite"):
        prepare.resolve_attention(f"dino-resnet50:{hot}", lr, (32, 32))  # what yoda.sample(attention=NAME) calls


class NotAllowed:  # a pickled custom class: torch.load(weights_only=True) must refuse it
    pass


def test_pickled_objects_refused(tmp_path):
    """Refused, and said as yoda.load says it: the class found and the safe ways on. The DINO loaders passed on the
    first line of torch's message, which advises loading with weights_only=False (running the file's code)."""
    p = tmp_path / "obj.pth"
    torch.save({"x": NotAllowed()}, p)
    with pytest.raises(CheckpointError, match=r"obj\.pth: it holds pickled Python objects that are not tensors "
                                              r"\(test_dino\.NotAllowed\)") as e:
        att.dino_vits8(str(p))
    assert "add_safe_globals" in str(e.value) and "Re-running" not in str(e.value)
    assert "weights_only` set to `False" not in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------- upstream models
# torchvision and timm are not dependencies (they pull a CUDA torch); where they are installed (the GPU
# machine), the modules here must load their state dicts strictly and compute the same function.
def test_resnet50_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = _randomise(tv.models.resnet50(), 11).eval()
    assert list(ref.state_dict()) == _resnet_keys(True)
    m = ResNet50(with_fc=True, init=False)
    m.load_state_dict(ref.state_dict(), strict=True)
    m.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        # DINO's released layout: the torchvision model with fc = Identity
        ref.fc = torch.nn.Identity()
        sd = ref.state_dict()
        assert list(sd) == _resnet_keys(False)
        m2 = ResNet50(init=False)
        m2.load_state_dict(sd, strict=True)
        torch.testing.assert_close(m2.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_vit_matches_timm_vit_small_patch8():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0).eval()
    sd = ref.state_dict()
    assert sorted(sd) == sorted(VIT_KEYS)  # DINO's vision_transformer.py is timm's layout
    m = DinoViT(init=False)
    m.load_state_dict(sd, strict=True)
    m.eval()
    x = torch.randn(1, 3, 224, 224)  # the stored 28x28 grid: no interpolation on either side
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref.forward_features(x)[:, 0], rtol=1e-4, atol=1e-4)
        # and the CLS attention of the last block equals the float64 reference on timm's weights
        got = m.get_last_selfattention(x)[:, :, 1:].reshape(1, 6, 28, 28)
    np.testing.assert_allclose(got.numpy(), _ref_cls_attention(sd, x).numpy(), rtol=1e-3, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(vit, resnet):
    import copy

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    # TF32 convs/matmuls round to 10 mantissa bits: compare the extractors' logic, not TF32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        lr = _lr(seed=12)
        for e in (DinoViTS8(copy.deepcopy(vit), **VIT_KW), DinoResNet50(copy.deepcopy(resnet), **RES_KW)):
            want_maps = e.maps(lr)
            got_maps = e.maps(lr.cuda())
            assert got_maps.device.type == "cuda"
            torch.testing.assert_close(got_maps.cpu(), want_maps, rtol=1e-4, atol=1e-6)
            A = e(lr.cuda().half())
            assert A.device.type == "cuda" and A.dtype == torch.float32 and A.shape == (2, 1, 13, 17)
            torch.testing.assert_close(e(lr.cuda()).cpu(), e(lr), rtol=0, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_default_dtype_other_than_float32_changes_nothing(vit_file, resnet_file, dtype):
    """Under torch.set_default_dtype(float64) (notebooks) the extractors were built and loaded in float64 and failed
    on their float32 input ("Input type (float) and bias type (double) should be the same"); under bfloat16 the
    weights were rounded as they loaded. Now the same float32 map as under float32."""
    lr = _lr(B=1, h=8, w=8)
    makers = (lambda: att.dino_vits8(vit_file, **VIT_KW), lambda: att.dino_resnet50(resnet_file, **VIT_KW))
    want = [make()(lr) for make in makers]
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        got = [make()(lr) for make in makers]
    finally:
        torch.set_default_dtype(old)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and torch.equal(g, w)


def test_loading_leaves_the_global_rng_alone(vit_file, resnet_file):
    """yoda.sample(seed=None) and the user's own draws do not depend on whether an extractor or a model was loaded
    first, nor on a load in another thread meanwhile: the networks are built on the meta device and given the
    file's weights, so nothing is initialised and no number is drawn. (A fork_rng around the initialisation put
    the generator back when it ended, undoing the other thread's draws meanwhile: 163 of 300 repeated.)"""
    import threading

    import yoda
    from yoda.attention import dino

    makers = (lambda: dino.dino_vits8(vit_file, **VIT_KW), lambda: yoda.load("dino-resnet50", resnet_file),
              lambda: yoda.load("yoda", "default"))
    torch.manual_seed(0)
    want = torch.randn(4)
    for make in makers:
        torch.manual_seed(0)
        make()
        assert torch.equal(torch.randn(4), want)
    done, loads = threading.Event(), []

    def load_meanwhile():
        while not done.is_set():
            for make in makers:
                make()
                loads.append(1)

    loader = threading.Thread(target=load_meanwhile)
    loader.start()
    try:
        torch.manual_seed(123)
        got = []
        while len(loads) < 2 * len(makers):  # draws before, during and after loads
            got.append(torch.rand(1).item())
            if len(got) % 10 == 0:
                time.sleep(0.001)  # let the loader run between draws
    finally:
        done.set()
        loader.join()
    torch.manual_seed(123)
    want = [torch.rand(1).item() for _ in got]
    assert got == want


def test_resnet_map_is_centred_where_its_cells_are():
    """layer4 cell i is centred on input pixel 32 i: a dot's map peaks on the dot. Resized as patches (centre
    32 i + 15.5) it peaked 2.2 LR pixels down and right at this size (measured 18.91 for a dot at 16.5). The network
    averages (positive convolutions, identity batch norm), so its response is a blob centred on what it sees."""
    from yoda.attention.classic import _resample_cells

    # the general resampling at a patch's centre is bilinear with align_corners=False
    m = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1))
    want = F.interpolate(m, size=(19, 23), mode="bilinear", align_corners=False)
    assert torch.allclose(_resample_cells(m, (19, 23), (0.5, 0.5)), want, atol=1e-6)
    r = ResNet50(with_fc=False, init=False)
    with torch.no_grad():
        for mod in r.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.fill_(1.0 / mod.weight[0].numel())
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0), mod.bias.zero_(), mod.running_mean.zero_(), mod.running_var.fill_(1.0)
    ex = DinoResNet50(r, groups=1)
    ys = torch.arange(32, dtype=torch.float64)
    for c in (9, 16, 22):
        x = torch.full((1, 3, 32, 32), -1.0)
        x[0, :, c:c + 2, c:c + 2] = 1.0  # a 2 x 2 dot centred at c + 0.5
        w = ex(x)[0, 0].double() ** 8  # the peak's centre of mass
        cy, cx = ((w.sum(d) * ys).sum() / w.sum() for d in (1, 0))
        assert abs(cy - (c + 0.5)) < 0.3 and abs(cx - (c + 0.5)) < 0.3, (c, float(cy), float(cx))


def test_a_resnet_grid_finer_than_the_image_is_max_pooled_too():
    """A ResNet's cells (centred at 0.5 / 32) finer than the LR image were resampled without the max-pool a ViT's
    get: of a hot cell (1.0) and a warm one (0.9) at 7 -> 4 the hot one showed as 0.14 and the warm one became the
    maximum. Pooled now, whatever the centre; finer along one axis only, pooled along that one."""
    from yoda.attention.classic import aggregate

    m = torch.zeros(1, 1, 7, 7)
    m[0, 0, 5, 5], m[0, 0, 6, 6] = 1.0, 0.9
    A = aggregate(m, (4, 4), 0.5 / 32)
    assert torch.equal(A, aggregate(m, (4, 4), 0.5))  # pooled to the image's grid: each pixel its cells' max
    assert A[0, 0, 3, 3] == 1.0 and A[0, 0, 2, 2] == 1.0 and A[0, 0, 0, 0] == 0.0
    tall = torch.zeros(1, 1, 7, 2)
    tall[0, 0, 5, 1] = 1.0
    A = aggregate(tall, (4, 16), 0.5 / 32)  # rows finer than the image, columns coarser
    assert A.shape == (1, 1, 4, 16) and A[0, 0, 2:, -1].eq(1.0).all() and A[0, 0, :2].eq(0.0).all()


def test_a_dino_name_read_again_says_how_to_read_it_once(vit_file, monkeypatch):
    """yoda.sample(attention="dino-vits8:PATH") reads the weights file at every call: a loop over a folder read
    85 MB per image without a word. The second read of a name says how to make the extractor once."""
    import re
    import warnings

    from yoda.sampling import prepare

    monkeypatch.setattr(prepare, "_READ_BEFORE", set())
    lr, name = _lr(B=1, h=8, w=8, seed=3), f"dino-vits8:{vit_file}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = prepare.resolve_attention(name, lr, (16, 16))
        prepare.resolve_attention("edge", lr, (16, 16))  # no weights file: nothing to say, ever
        prepare.resolve_attention("edge", lr, (16, 16))
    with pytest.warns(UserWarning, match=rf"attention '{re.escape(name)}' reads its weights file at every "
                                         rf"yoda.sample call; make the extractor once, ex = yoda.attention.get"):
        again = prepare.resolve_attention(name, lr, (16, 16))
    assert torch.equal(first, again)


def _ref_resnet50_features(sd, x):
    """ResNet-50's layer4 features written out with F.* in float64 (torchvision's v1.5 bottleneck: the stride on the
    3x3 conv), from the state dict alone."""
    sd = {k: v.double() for k, v in sd.items() if v.is_floating_point()}
    x = x.double()

    def bn(h, p):
        return F.batch_norm(h, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-5)

    h = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for i, (n, stride) in enumerate([(3, 1), (4, 2), (6, 2), (3, 2)]):
        for j in range(n):
            p, s = f"layer{i + 1}.{j}", (stride if j == 0 else 1)
            y = F.relu(bn(F.conv2d(h, sd[p + ".conv1.weight"]), p + ".bn1"))
            y = F.relu(bn(F.conv2d(y, sd[p + ".conv2.weight"], stride=s, padding=1), p + ".bn2"))
            y = bn(F.conv2d(y, sd[p + ".conv3.weight"]), p + ".bn3")
            idt = h if j else bn(F.conv2d(h, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            h = F.relu(y + idt)
    return h


def test_resnet50_features_match_a_float64_reference():
    """The backbone against a forward written out independently: without torchvision (this machine's test set) its
    maths was checked only against itself (a bottleneck that added the shortcut after the ReLU, or dropped bn3,
    passed every test here)."""
    torch.manual_seed(0)
    m = _randomise(ResNet50(init=False), 2).eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = m.features(x).double()
    ref = _ref_resnet50_features(m.state_dict(), x)
    assert got.shape == ref.shape == (1, 2048, 2, 3)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
