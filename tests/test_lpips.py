"""yoda.lpips: LPIPS (VGG16, v0.1) from local files against a float64 reference written from the formula."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yoda.checkpoint import CheckpointError
from yoda.lpips import LPIPS, LPIPS_CHANNELS

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16 conv indices in `features`
WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_BEFORE = {5, 10, 17, 24}  # a 2x2 max-pool precedes these convolutions
TAP_AFTER = {2, 7, 14, 21, 28}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 follow these convolutions


def random_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    vgg, c_in = {}, 3
    for i, c in zip(CONVS, WIDTHS):
        # He-like scale keeps activations O(1) through 13 layers
        vgg[f"features.{i}.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * (2.0 / (9 * c_in)) ** 0.5
        vgg[f"features.{i}.bias"] = torch.randn(c, generator=g) * 0.1
        c_in = c
    vgg["classifier.0.weight"] = torch.randn(7, 5, generator=g)  # torchvision files carry the FC head too
    lin = {f"lin{n}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for n, c in enumerate(LPIPS_CHANNELS)}
    return vgg, lin


def reference(vgg, lin, x0, x1):
    """float64 LPIPS written from the paper's equation (independent of yoda.lpips)."""
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def feats(x):
        h = (x.double() - shift) / scale
        out = []
        for i in CONVS:
            if i in POOL_BEFORE:
                h = F.max_pool2d(h, 2)
            h = F.relu(F.conv2d(h, vgg[f"features.{i}.weight"].double(), vgg[f"features.{i}.bias"].double(), padding=1))
            if i in TAP_AFTER:
                out.append(h)
        return out

    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for n, (a, b) in enumerate(zip(feats(x0), feats(x1))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin[f"lin{n}.model.1.weight"].double().view(1, -1, 1, 1)
        total += (w * (na - nb) ** 2).sum(1).mean(dim=(1, 2))
    return total


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("lpips")
    vgg, lin = random_weights()
    torch.save(vgg, d / "vgg16.pth")
    torch.save(lin, d / "vgg.pth")
    save_file(vgg, str(d / "vgg16.safetensors"))
    save_file(lin, str(d / "lin.safetensors"))
    return d, vgg, lin


def images(seed, b=2, h=32, w=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_matches_float64_reference(files, fmt):
    d, vgg, lin = files
    names = ("vgg16.pth", "vgg.pth") if fmt == "pth" else ("vgg16.safetensors", "lin.safetensors")
    state = torch.get_rng_state()
    m = LPIPS(backbone_weights=d / names[0], lin_weights=str(d / names[1]))
    assert torch.equal(torch.get_rng_state(), state)  # built on the meta device: no initialisation drew numbers
    x0 = images(1)
    x1 = (x0 + 0.3 * images(2)).clamp(-1, 1)
    ref = reference(vgg, lin, x0, x1)
    got = m(x0, x1)
    assert got.shape == (2,) and got.dtype == torch.float32
    assert (ref > 1e-3).all()  # a non-trivial distance, so the comparison can fail
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
    # in float64 the module agrees with the reference to rounding
    torch.testing.assert_close(m.double()(x0.double(), x1.double()), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_default_dtype_other_than_float32_changes_nothing(files, dtype):
    """Under torch.set_default_dtype(float64) LPIPS was built in float64 (its distances computed in float64), under
    bfloat16 its weights were rounded as they loaded: it is built under torch's own defaults, as every model file
    yoda reads (checkpoint.build_checked)."""
    d, _, _ = files
    x0 = images(1)
    x1 = (x0 + 0.3 * images(2)).clamp(-1, 1)
    want = LPIPS(d / "vgg16.pth", d / "vgg.pth")(x0, x1)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        m = LPIPS(d / "vgg16.pth", d / "vgg.pth")
    finally:
        torch.set_default_dtype(old)
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    assert torch.equal(m(x0, x1), want)


def test_identity_symmetry_and_order(files):
    d, vgg, lin = files
    m = LPIPS(d / "vgg16.pth", d / "vgg.pth")
    x0, x1, x2 = images(3, b=1), images(4, b=1), images(5, b=1)
    assert m(x0, x0).item() == 0.0
    torch.testing.assert_close(m(x0, x1), m(x1, x0), rtol=1e-6, atol=0)
    near = (x0 + 0.05 * x2).clamp(-1, 1)
    assert m(x0, near).item() < m(x0, x1).item()
    # non-square sizes and batch independence
    a, b = images(6, b=3, h=16, w=24), images(7, b=3, h=16, w=24)
    torch.testing.assert_close(m(a, b)[1:2], m(a[1:2], b[1:2]), rtol=1e-5, atol=1e-7)


def test_file_errors(files, tmp_path):
    d, vgg, lin = files
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        LPIPS(tmp_path / "nope.pth", d / "vgg.pth")
    with pytest.raises(FileNotFoundError, match="missing_lin"):
        LPIPS(d / "vgg16.pth", tmp_path / "missing_lin.pth")
    # backbone and heads swapped: wrong keys, named with the path
    with pytest.raises(CheckpointError, match=r"^LPIPS backbone_weights: .*vgg\.pth.*missing keys.*features\.0\."):
        LPIPS(d / "vgg.pth", d / "vgg16.pth")
    bad = dict(lin)
    bad["lin9.model.1.weight"] = bad.pop("lin4.model.1.weight")
    torch.save(bad, tmp_path / "badlin.pth")
    with pytest.raises(CheckpointError, match=r"^LPIPS lin_weights: .*badlin\.pth.*lin4\.model\.1\.weight.*lin9"):
        LPIPS(d / "vgg16.pth", tmp_path / "badlin.pth")
    shp = dict(lin)
    shp["lin2.model.1.weight"] = torch.rand(1, 128, 1, 1)
    torch.save(shp, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape\.pth.*shape mismatches.*lin2"):
        LPIPS(d / "vgg16.pth", tmp_path / "shape.pth")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="^LPIPS backbone_weights: .*corrupt.safetensors"):
        LPIPS(tmp_path / "corrupt.safetensors", d / "vgg.pth")
    with pytest.raises(ValueError, match="net must be 'vgg'"):
        LPIPS(d / "vgg16.pth", d / "vgg.pth", net="alex")


def test_input_errors(files):
    d, _, _ = files
    m = LPIPS(d / "vgg16.pth", d / "vgg.pth")
    x = images(8, b=1)
    with pytest.raises(ValueError, match="sr must be in"):
        m(x * 2, x)
    with pytest.raises(ValueError, match=r"hr must be \(B, 3, H, W\)"):
        m(x, x[:, :1])
    with pytest.raises(ValueError, match="hr contains NaN"):
        m(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="same shape"):
        m(x, images(9, b=2))
    with pytest.raises(ValueError, match="sr: H and W must be >= 16"):
        m(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(TypeError, match="sr must be a torch.Tensor"):
        m(np.zeros((1, 3, 32, 32)), x)


def test_eval_and_cli_lpips_column(files, tmp_path, capsys):
    from PIL import Image

    from yoda.models import save_model
    from yoda.cli import main
    from yoda.evaluate import EvalSettings, evaluate, markdown_table, summarize
    from yoda.adapters import upsample
    from yoda.data import make_lr
    from yoda.images import from_uint8, to_uint8
    from yoda.models import ModelCard
    from yoda.models.sr3 import SR3Config, SR3UNet
    from yoda.schedule import Schedule

    d, vgg, lin = files
    torch.manual_seed(0)
    net = SR3UNet.from_config(SR3Config(inner_channel=8, norm_groups=4, channel_mults=(1, 2), attn_res=(),
                                        res_blocks=1, image_size=16, mid_attn=False, scale=4)).eval()
    net.card = ModelCard(Schedule.linear(20, 1e-3, 0.2), 4)
    hr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    s = EvalSettings(steps=2, lower_bounds=(0.5,), attentions=("gaussian",),
                     lpips=(d / "vgg16.pth", str(d / "vgg.pth")))
    assert s.lpips == (str(d / "vgg16.pth"), str(d / "vgg.pth"))
    rows = evaluate(net, [("a", hr)], s)
    assert [r["method"] for r in rows] == ["bicubic", "bicubic-matlab", "plain", "yoda"]
    # the bicubic row's LPIPS equals the float64 reference on the rounded bicubic image
    x_hr = from_uint8(hr)
    bic = from_uint8(to_uint8(upsample(make_lr(x_hr, 4), 4))[0])
    assert rows[0]["lpips"] == pytest.approx(float(reference(vgg, lin, bic, x_hr)[0]), rel=1e-4)
    assert all(r["lpips"] > 0 for r in rows)
    table = markdown_table(summarize(rows))
    assert "| SSIM | LPIPS | L shift |" in table.splitlines()[0] and "LPIPS omitted" not in table
    assert f"| {rows[0]['lpips']:.4f} |" in table.splitlines()[2]
    assert "LPIPS omitted" in markdown_table(summarize([{k: v for k, v in r.items() if k != "lpips"} for r in rows]))
    with pytest.raises(ValueError, match="lpips must be None or"):
        EvalSettings(lpips=("only_one.pth",))

    # CLI: --lpips BACKBONE LIN adds the column; a missing file is one "yoda: error" line naming it
    model = tmp_path / "tiny.safetensors"
    save_model(net, model, schedule=net.card.schedule)
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(hr).save(folder / "a.png")
    args = ["eval", "--images", str(folder), "--model", str(model), "--steps", "2", "--lower-bounds", "0.5",
            "--attention", "gaussian", "-q"]
    code = main(args + ["--lpips", str(d / "vgg16.safetensors"), str(d / "lin.safetensors")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| LPIPS |" in out and "LPIPS omitted" not in out
    code = main(args + ["--lpips", str(tmp_path / "no_vgg.pth"), str(d / "vgg.pth")])
    out, err = capsys.readouterr()
    assert code == 2 and "no_vgg.pth" in err
    # the two files swapped: said of --lpips and which file (it said "LPIPS backbone_weights:", yoda.lpips's words)
    code = main(args + ["--lpips", str(d / "vgg.pth"), str(d / "vgg16.pth")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"yoda: error: --lpips, its first file (torchvision's VGG16): {d / 'vgg.pth'}"), err
