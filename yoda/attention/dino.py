"""DINO attention extractors: ViT-S/8 CLS self-attention and ResNet-50 channel-group maps.

Both load the official DINO checkpoints from a local path (no network):

- ``dino_deitsmall8_pretrain.pth``: a plain state dict whose keys are those of DINO's
  ``vision_transformer.py`` (cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1, attn.qkv,
  attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*). :class:`DinoViT` has exactly these keys.
- ``dino_resnet50_pretrain.pth``: torchvision's ``resnet50`` keys without ``fc`` (DINO replaces it by
  an identity). :class:`ResNet50` has exactly these keys (``fc`` only when asked for).

Training checkpoints (``{"teacher": {"module.backbone.<key>": ...}}``) are unwrapped as DINO's
``utils.load_pretrained_weights`` does (take the checkpoint key, drop "module." and "backbone."), and the
DINO projection head ("head.*", not part of the backbone) is dropped; what remains must then match the
model exactly (strict loading).

Input pre-processing for both (the LR may be a 16x16 face, i.e. 2x2 ViT patches):
    x = (lr + 1) / 2, resized (bicubic) so that its short side is >= min_size and its long side <=
    max_size (max_size wins where both cannot hold: an image wider than max_size / min_size keeps a short
    side below min_size), each side then rounded to the nearest multiple of the network stride (so a side
    may end up to half a stride past either limit where they are no multiples of it; the defaults, 224 and
    448, are multiples of both strides); then (x - mean) / std with the ImageNet mean/std DINO was trained with.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import CheckpointError
from .classic import aggregate, check_lr, float32_maps
from .weights import load_strict, load_state_dict

__all__ = [
    "DinoViT",
    "ResNet50",
    "DinoViTS8",
    "DinoResNet50",
    "dino_vits8",
    "dino_resnet50",
    "load_state_dict",
    "resize_for_network",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Pre-processing
# --------------------------------------------------------------------------------------------------
def _target_size(h: int, w: int, min_size: int, max_size: int, multiple: int) -> Tuple[int, int]:
    """(h, w) scaled by f = max(1, min_size / min(h, w)), then down so the long side <= max_size (max_size
    wins), each side rounded to the nearest multiple of ``multiple`` (at least one multiple): the module
    docstring says what that leaves of the two limits."""
    f = max(1.0, min_size / min(h, w))
    f = min(f, max_size / max(h, w))
    H = max(multiple, int(round(h * f / multiple)) * multiple)
    W = max(multiple, int(round(w * f / multiple)) * multiple)
    return H, W


def resize_for_network(
    lr: torch.Tensor, min_size: int, max_size: int, multiple: int
) -> torch.Tensor:
    """lr (B, 3, h, w) in [-1, 1] -> (B, 3, H, W) ImageNet-normalised input, H, W multiples of
    ``multiple``: x = ((up(lr) + 1) / 2 - mean) / std, up = bicubic (antialiased when shrinking)."""
    B, C, h, w = lr.shape
    H, W = _target_size(h, w, min_size, max_size, multiple)
    x = (lr + 1.0) * 0.5
    if (H, W) != (h, w):
        shrink = H < h or W < w
        x = F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False, antialias=shrink)
        x = x.clamp(0.0, 1.0)  # bicubic overshoot: keep the input inside the trained range
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _check_int(v, name: str, hi: int = 1 << 30) -> int:
    """A whole number in [1, hi] (numpy's integers too: the argument parsed from an array was refused), as int."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= hi:
        raise ValueError(f"{name} must be an int in [1, {hi}], got {v!r}")
    return int(v)


def _check_sizes(min_size, max_size, groups=1) -> Tuple[int, int]:
    """(min_size, max_size) checked, and ``groups``: before the weights are read (a bad size waited for them)."""
    _check_int(groups, "groups", 2048)
    min_size, max_size = _check_int(min_size, "min_size"), _check_int(max_size, "max_size")
    if max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    return min_size, max_size


# --------------------------------------------------------------------------------------------------
# DINO ViT (key names of DINO's vision_transformer.py)
# --------------------------------------------------------------------------------------------------
class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, H/p * W/p, dim)
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor):
        B, N, C = x.shape
        # (B, N, 3*C) -> 3 x (B, heads, N, C/heads), the q|k|v, head-major layout of DINO's qkv weight
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax(q k^T * scale) v
        return self.proj(y.transpose(1, 2).reshape(B, N, C))

    def cls_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Row 0 of softmax(q k^T * scale): (B, N, C) -> (B, heads, N), the CLS token's attention."""
        q, k, _ = self._qkv(x)
        logits = (q[:, :, :1] @ k.transpose(-2, -1)) * self.scale  # (B, heads, 1, N)
        return logits.softmax(dim=-1)[:, :, 0]


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DinoViT(nn.Module):
    """DINO's VisionTransformer backbone (num_classes=0): ViT-S/8 by default.

    patch 8, dim 384, depth 12, 6 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6; ``num_positions``
    = 1 + (224/8)^2 = 785 as in the released checkpoint (``img_size=224``). State-dict keys are exactly
    those of DINO's ``vision_transformer.py``.
    """

    def __init__(
        self,
        patch_size: int = 8,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        img_size: int = 224,
        eps: float = 1e-6,
        init: bool = True,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.patch_size = patch_size
        self.num_heads = num_heads
        grid = img_size // patch_size
        self.patch_embed = _PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        if not init:  # weights come from a file: skip the truncated normal (~3 s for 21M values)
            return
        # DINO's init (truncated normal, std 0.02) so that random-init models behave like real ones
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, rows: int, cols: int) -> torch.Tensor:
        """Positional embedding for a rows x cols patch grid: (1, 1 + rows*cols, dim).

        The stored sqrt(N) x sqrt(N) grid is resized bicubically as DINO does: scale factors
        ((rows + 0.1) / sqrt(N), (cols + 0.1) / sqrt(N)) -- the +0.1 guards the floor in the output
        size (DINO issue #8) -- and returned unchanged when the grid is the stored square one.
        """
        N = self.pos_embed.shape[1] - 1
        if rows * cols == N and rows == cols:
            return self.pos_embed
        n = int(math.isqrt(N))
        if n * n != N:
            raise ValueError(f"pos_embed holds {N} patch positions, not a square grid")
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, n, n, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=((rows + 0.1) / n, (cols + 0.1) / n), mode="bicubic", align_corners=False
        )
        if tuple(grid.shape[-2:]) != (rows, cols):  # pragma: no cover - the +0.1 prevents this
            raise RuntimeError(f"pos_embed interpolation gave {tuple(grid.shape[-2:])}, not {(rows, cols)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W), H, W multiples of the patch -> (B, 1 + H/p * W/p, dim) tokens (CLS first)."""
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {(H, W)} must be a multiple of the patch size {p}")
        t = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed(x)], dim=1)
        return t + self.interpolate_pos_encoding(H // p, W // p)

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """CLS-token self-attention of the last block: (B, 3, H, W) -> (B, heads, 1 + H/p * W/p)."""
        t = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            t = blk(t)
        last = self.blocks[-1]
        return last.attn.cls_attention(last.norm1(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim) normalised CLS feature (DINO's forward)."""
        t = self.prepare_tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]


# --------------------------------------------------------------------------------------------------
# ResNet-50 (key names of torchvision's resnet50; written here, torchvision is not a dependency)
# --------------------------------------------------------------------------------------------------
class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # stride on the 3x3 conv ("ResNet v1.5", as torchvision)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


class ResNet50(nn.Module):
    """torchvision-compatible ResNet-50 (layers 3-4-6-3, Bottleneck v1.5), ``fc`` only if ``with_fc``.

    ``features(x)``: (B, 3, H, W) -> layer4 output (B, 2048, ceil(H/32), ceil(W/32)).
    """

    def __init__(self, with_fc: bool = False, num_classes: int = 1000, init: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (width, n, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
            blocks = []
            for j in range(n):
                blocks.append(_Bottleneck(cin, width, stride if j == 0 else 1))
                cin = width * _Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(2048, num_classes) if with_fc else None
        for m in self.modules() if init else ():  # torchvision's init; skipped when loading a file
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))
        return f if self.fc is None else self.fc(f)


# --------------------------------------------------------------------------------------------------
# Extractors
# --------------------------------------------------------------------------------------------------
_VIT_FMT = (
    "a DINO ViT-S/8 state dict (dino_deitsmall8_pretrain.pth: keys cls_token, pos_embed, "
    "patch_embed.proj.*, blocks.0-11.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*, norm.*; or Hugging "
    "Face's facebook/dino-vits8)"
)
_RESNET_FMT = (
    "a DINO ResNet-50 state dict (dino_resnet50_pretrain.pth: torchvision resnet50 keys conv1.weight, "
    "bn1.*, layer1-4.N.{conv1-3,bn1-3,downsample.0/1}.*, optional fc.*)"
)


class _NetExtractor:
    """Shared parts: model on the input's device, eval mode, no grad, float32. The network given is taken over:
    put in eval mode with requires_grad off, and moved to each input's device (give a copy to keep training it)."""

    model: nn.Module
    multiple: int
    minmax_after_resize = True  # yoda.sample normalises its map again after the resize (DESIGN §3)
    cell_centre = 0.5  # where a map cell sits in its grid (classic.aggregate): a ViT patch's middle

    def _run_on(self, device: torch.device) -> nn.Module:
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        return self.model

    @float32_maps
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        """lr (B, 3|1, h, w) in [-1, 1] -> A (B, 1, h, w) float32 in [0, 1]; a ValueError naming the weights when the
        network's map is not finite (a file whose BatchNorm statistics overflow gave an all-NaN map)."""
        A = aggregate(self.maps(lr), tuple(lr.shape[-2:]), self.cell_centre)
        if not torch.isfinite(A).all():
            raise ValueError(f"{self!r}: the network's map of lr is not finite (NaN / Inf): its weights overflow "
                             f"on this image (a damaged file, or weights of another model?)")
        return A


class DinoViTS8(_NetExtractor):
    """DINO ViT-S/8 attention: the last block's CLS->patch self-attention, one map per head.

        maps[b, k] = softmax(q_cls,k K_k^T / sqrt(d))[1:] reshaped to the (H/8, W/8) patch grid
        A = minmax(bilinear(max_k maps[:, k]))   (6 heads, as DINO's visualize_attention.py)

    The LR is resized so its short side is >= ``min_size`` (224: DINO's training resolution) and its
    long side <= ``max_size`` (attention cost grows with the square of the token count).
    """

    multiple = 8

    def __init__(self, model: DinoViT, min_size: int = 224, max_size: int = 448, source: str = "<module>"):
        self.min_size, self.max_size = _check_sizes(min_size, max_size)
        self.model = model.eval().requires_grad_(False)
        self.multiple = model.patch_size
        self.source = source

    def head_maps(self, lr: torch.Tensor) -> torch.Tensor:
        """lr -> per-head CLS attention maps (B, heads, H/p, W/p) (not normalised)."""
        x = check_lr(lr)
        model = self._run_on(x.device)
        inp = resize_for_network(x, self.min_size, self.max_size, self.multiple)
        with torch.inference_mode():
            att = model.get_last_selfattention(inp)  # (B, heads, 1 + n)
        B, heads, _ = att.shape
        rows, cols = inp.shape[-2] // self.multiple, inp.shape[-1] // self.multiple
        return att[:, :, 1:].reshape(B, heads, rows, cols).float().clone()

    maps = head_maps

    def __repr__(self) -> str:
        return f"dino_vits8(weights={self.source!r}, min_size={self.min_size}, max_size={self.max_size})"


class DinoResNet50(_NetExtractor):
    """DINO ResNet-50 attention **(our reading**, DESIGN §3): layer4's 2048 channels split into
    ``groups`` contiguous groups of near-equal size (numpy.array_split), each group's mean activation
    one map (a "head"), MAX over the groups.

        maps[b, k] = mean_{c in group k} layer4(x)[b, c]   on the (H/32, W/32) grid

    Cell i of layer4 is centred on input pixel 32 i (conv1 and every stride-2 stage keep the centre at 2 i), not
    on 32 i + 15.5 as a patch would be: the map is resized with that centre (classic.aggregate's cell_centre).
    """

    multiple = 32
    cell_centre = 0.5 / 32

    def __init__(
        self, model: ResNet50, groups: int = 8, min_size: int = 224, max_size: int = 448, source: str = "<module>"
    ):
        self.min_size, self.max_size = _check_sizes(min_size, max_size, groups)
        self.groups = int(groups)
        self.model = model.eval().requires_grad_(False)
        self.source = source

    def group_maps(self, lr: torch.Tensor) -> torch.Tensor:
        """lr -> per-group mean layer4 activation (B, groups, H/32, W/32)."""
        x = check_lr(lr)
        model = self._run_on(x.device)
        inp = resize_for_network(x, self.min_size, self.max_size, self.multiple)
        with torch.inference_mode():
            f = model.features(inp)  # (B, 2048, H/32, W/32)
        return torch.stack([g.mean(dim=1) for g in torch.tensor_split(f, self.groups, dim=1)], dim=1).float()

    maps = group_maps

    def __repr__(self) -> str:
        return (
            f"dino_resnet50(weights={self.source!r}, groups={self.groups}, "
            f"min_size={self.min_size}, max_size={self.max_size})"
        )


# Hugging Face transformers' ViTModel names (facebook/dino-vits8, converted by transformers' convert_dino_to_pytorch)
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
_HF_BLOCK = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj", "layernorm_after": "norm2",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
_HF_QKV = ("query", "key", "value")


def from_transformers(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """DINO's key names for a transformers ViTModel / ViTForImageClassification state dict ("vit." prefix): each
    layer's query, key and value concatenated into DINO's qkv (that order), the pooler and a classifier dropped;
    other keys are kept, for the strict load to name. The weights are DINO's own, run with DINO's LayerNorm eps
    (1e-6; transformers' config says 1e-12)."""
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        k = k[len("vit."):] if k.startswith("vit.") else k
        if k.startswith(("pooler.", "classifier.")):
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", k)
        if m and m[2].startswith("attention.attention.") and m[2].split(".")[-1] in _HF_QKV:
            qkv.setdefault((int(m[1]), m[3]), {})[m[2].split(".")[-1]] = v
        elif m and m[2] in _HF_BLOCK:
            out[f"blocks.{m[1]}.{_HF_BLOCK[m[2]]}.{m[3]}"] = v
        else:
            out[_HF_TOP.get(k, k)] = v
    for (i, wb), parts in sorted(qkv.items()):
        if len(parts) != 3:
            raise ValueError(f"layer {i}'s attention has {sorted(parts)} {wb}s, not query, key and value")
        out[f"blocks.{i}.attn.qkv.{wb}"] = torch.cat([parts[n] for n in _HF_QKV])
    return out


def _other_family(sd: dict, weights, key: str, family: str, name: str) -> None:
    """A CheckpointError where the state dict has ``key`` of the other DINO network: the file and what loads it (it
    listed missing and unexpected keys, and the reader had to tell the family from them)."""
    if key in sd:
        raise CheckpointError(f"weights {os.fspath(weights)!r} are {family} ({key} ...), not this extractor's: the "
                              f"attention {name}:PATH (--attention {name}:PATH) loads it")


def dino_vits8(
    weights: str, min_size: int = 224, max_size: int = 448, checkpoint_key: Optional[str] = None
) -> DinoViTS8:
    """DINO ViT-S/8 extractor from a local checkpoint (``dino_deitsmall8_pretrain.pth`` or a
    .safetensors with the same keys, or a DINO training checkpoint, or Hugging Face's facebook/dino-vits8
    ``model.safetensors`` / ``pytorch_model.bin``: from_transformers), loaded strictly."""
    _check_sizes(min_size, max_size)
    sd = load_state_dict(weights, _VIT_FMT, checkpoint_key)
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd):
        try:
            sd = from_transformers(sd)
        except ValueError as e:  # (said without the file)
            raise CheckpointError(f"weights {os.fspath(weights)!r} (Hugging Face's facebook/dino-vits8 layout): {e}") \
                from None
    img_size = 224
    pe = sd.get("pos_embed")
    if isinstance(pe, torch.Tensor) and pe.dim() == 3:
        n = math.isqrt(max(pe.shape[1] - 1, 0))
        if n * n == pe.shape[1] - 1 and n > 0:
            img_size = n * 8  # checkpoints trained at another size keep their own grid
    _other_family(sd, weights, "conv1.weight", "a ResNet-50's", "dino-resnet50")
    model = load_strict(lambda: DinoViT(img_size=img_size, init=False), sd, os.fspath(weights), _VIT_FMT)
    return DinoViTS8(model, min_size=min_size, max_size=max_size, source=os.fspath(weights))


def dino_resnet50(
    weights: str, groups: int = 8, min_size: int = 224, max_size: int = 448, checkpoint_key: Optional[str] = None
) -> DinoResNet50:
    """DINO ResNet-50 extractor from a local checkpoint (``dino_resnet50_pretrain.pth``, torchvision
    key names, with or without ``fc``), loaded strictly."""
    _check_sizes(min_size, max_size, groups)
    sd = load_state_dict(weights, _RESNET_FMT, checkpoint_key)
    _other_family(sd, weights, "cls_token", "a ViT's", "dino-vits8")
    fc = sd.get("fc.weight")
    with_fc = isinstance(fc, torch.Tensor) and fc.dim() == 2
    n_classes = fc.shape[0] if with_fc else 1000
    model = load_strict(lambda: ResNet50(with_fc=with_fc, num_classes=n_classes, init=False), sd,
                         os.fspath(weights), _RESNET_FMT)
    return DinoResNet50(model, groups=groups, min_size=min_size, max_size=max_size, source=os.fspath(weights))
