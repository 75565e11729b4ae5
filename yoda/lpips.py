"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
VGG16 variant "v0.1", from local weight files only (nothing is downloaded).

    metric = LPIPS(backbone_weights="vgg16.pth", lin_weights="lpips_vgg.pth")
    d = metric(sr, hr)        # (B, 3, H, W) in [-1, 1] each -> (B,) distances

The distance of images x0, x1 in [-1, 1]:

    z           = (x - shift) / scale,   shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    f_l         = VGG16 features of z after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3   (l = 0..4)
    n_l         = f_l / (sqrt(sum_c f_l^2) + 1e-10)            channel-wise unit length at every pixel
    d(x0, x1)   = sum_l mean_{h,w} sum_c w_{l,c} (n_l(x0) - n_l(x1))_c^2

Weight files (torch ``.pth`` read with weights_only=True, or safetensors):
    backbone_weights  torchvision's vgg16 state dict: ``features.N.weight`` / ``features.N.bias`` for the 13
                      convolutions N in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28); ``classifier.*`` keys
                      (the fully connected head) are accepted and ignored.
    lin_weights       the lpips package's ``weights/v0.1/vgg.pth``: ``linN.model.1.weight`` of shape (1, C, 1, 1)
                      for N = 0..4, C = 64, 128, 256, 512, 512 (a 1x1 convolution without bias; index 0 of
                      ``model`` is the dropout used in training).
Any other key, a missing key, a wrong shape or a NaN is a CheckpointError naming the file.
"""

from __future__ import annotations

import os
from typing import Union

import torch
from torch import nn

from .checkpoint import CheckpointError, build_checked, read_checkpoint

__all__ = ["LPIPS", "VGG16Features", "LPIPSHeads", "LPIPS_SHIFT", "LPIPS_SCALE", "VGG16_CFG", "VGG16_TAPS",
           "LPIPS_CHANNELS"]

PathLike = Union[str, os.PathLike]

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# torchvision's vgg16 "D" configuration: conv widths, "M" = 2x2 max-pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# index (in `features`) of the ReLU after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_EPS = 1e-10
_MIN_SIZE = 16  # four 2x2 pools before relu5_3: a side below 16 leaves an empty feature map


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` up to relu5_3 (the final pool is never used by LPIPS, and has no
    weights). forward(z: (B, 3, H, W)) -> [f_0 .. f_4], f_l: (B, C_l, H / 2^l, W / 2^l)."""

    def __init__(self):
        super().__init__()
        layers = []
        c_in = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU()]
                c_in = v
        # a module named `features` gives the torchvision key names features.N.weight / .bias
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> list:
        out = []
        h = z
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG16_TAPS:
                out.append(h)
                if i == VGG16_TAPS[-1]:
                    break
        return out


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        # lpips keeps Dropout at index 0 (inactive at eval); Identity keeps the key "model.1.weight"
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPSHeads(nn.Module):
    """The five 1x1 convolutions lin0..lin4 (C_l -> 1, no bias) of the lpips package's vgg.pth."""

    def __init__(self):
        super().__init__()
        for i, c in enumerate(LPIPS_CHANNELS):
            setattr(self, f"lin{i}", _Lin(c))

    def heads(self) -> list:
        return [getattr(self, f"lin{i}").model for i in range(len(LPIPS_CHANNELS))]


def _load_backbone(path: PathLike) -> VGG16Features:
    obj, _ = read_checkpoint(path)
    p = os.fspath(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a torchvision vgg16 state dict, got {type(obj).__name__}")
    # the classifier (fully connected layers) is not part of LPIPS: drop it, keep everything else so that
    # foreign keys are reported
    sd = {k: v for k, v in obj.items() if not (isinstance(k, str) and k.startswith("classifier."))}
    return build_checked(VGG16Features, sd, p, hint="backbone_weights must be torchvision's vgg16 state dict "
                         "(keys features.N.weight / features.N.bias)")  # no initialisation: no random draws


def _load_heads(path: PathLike) -> LPIPSHeads:
    obj, _ = read_checkpoint(path)
    p = os.fspath(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected the lpips linear-head state dict, got {type(obj).__name__}")
    return build_checked(LPIPSHeads, obj, p, hint="lin_weights must be the lpips package's "
                         "weights/v0.1/vgg.pth (keys lin0.model.1.weight .. lin4.model.1.weight)")


def _named(name: str, load, path: PathLike) -> nn.Module:
    """load(path), its CheckpointError naming the argument (a bad file of `yoda eval --lpips A B` said which file,
    not as what)."""
    try:
        return load(path)
    except CheckpointError as e:
        raise CheckpointError(f"LPIPS {name}: {e}") from None


def _check_path_arg(name: str, value) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")


class LPIPS(nn.Module):
    """LPIPS distance with local weights (module docstring for the equation and the file layouts).

    LPIPS(backbone_weights, lin_weights, net="vgg") -> module; module(sr, hr) with sr, hr float tensors
    (B, 3, H, W) in [-1, 1], H, W >= 16, on the module's device -> (B,) distances (0 for identical images,
    symmetric). The parameters are frozen and the module is in eval mode; gradients still flow to sr / hr.
    """

    def __init__(self, backbone_weights: PathLike, lin_weights: PathLike, net: str = "vgg"):
        super().__init__()
        if net != "vgg":
            raise ValueError(f"net must be 'vgg' (the only LPIPS backbone implemented), got {net!r}")
        _check_path_arg("backbone_weights", backbone_weights)
        _check_path_arg("lin_weights", lin_weights)
        self.net = _named("backbone_weights", _load_backbone, backbone_weights)
        self.lins = _named("lin_weights", _load_heads, lin_weights)
        self.requires_grad_(False)
        self.eval()

    def _weight(self) -> torch.Tensor:
        return self.net.features[0].weight

    def _check(self, name: str, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be (B, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] < _MIN_SIZE or x.shape[3] < _MIN_SIZE:
            raise ValueError(f"{name}: H and W must be >= {_MIN_SIZE} (VGG16 pools four times before relu5_3), "
                             f"got {tuple(x.shape[2:])}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        dev = self._weight().device
        if x.device != dev:
            raise ValueError(f"{name} is on {x.device} but the LPIPS weights are on {dev} (move one of them)")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1 - 1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"{name} must be in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        self._check("sr", sr)
        self._check("hr", hr)
        if sr.shape != hr.shape:
            raise ValueError(f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
        w = self._weight()
        dtype = w.dtype
        b = sr.shape[0]
        # shift / scale made in the compute dtype (not cast from float32), so a .double() module is exact
        shift = torch.tensor(LPIPS_SHIFT, dtype=dtype, device=w.device).view(1, 3, 1, 1)
        scale = torch.tensor(LPIPS_SCALE, dtype=dtype, device=w.device).view(1, 3, 1, 1)
        # one backbone pass over both images
        z = (torch.cat([sr, hr]).to(dtype) - shift) / scale
        total = torch.zeros(b, dtype=dtype, device=z.device)
        for f, lin in zip(self.net(z), self.lins.heads()):
            n = f / (torch.sqrt((f * f).sum(dim=1, keepdim=True)) + _EPS)
            d = (n[:b] - n[b:]) ** 2
            total = total + lin(d).mean(dim=(1, 2, 3))
        return total
