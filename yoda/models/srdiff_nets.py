"""SRDiff's networks as LeiaLi/SRDiff builds them (models/diffsr_modules.py, models/commons.py), with upstream's
state-dict key names: the RRDB LR encoder (ESRGAN's RRDBNet) and the residual denoiser Unet. yoda.models.srdiff
assembles them into the model and its sampling adapter."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RRDBNet", "Unet"]


# ----------------------------------------------------------------------------------------------------------
# RRDB encoder (ESRGAN's RRDBNet, upstream key names)
# ----------------------------------------------------------------------------------------------------------
class ResidualDenseBlock_5C(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lrelu = lambda v: F.leaky_relu(v, 0.2)  # noqa: E731
        x1 = lrelu(self.conv1(x))
        x2 = lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int = 32):
        super().__init__()
        self.RDB1 = ResidualDenseBlock_5C(nf, gc)
        self.RDB2 = ResidualDenseBlock_5C(nf, gc)
        self.RDB3 = ResidualDenseBlock_5C(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """lr (B, 3, h, w) in [-1, 1] -> (SR (B, 3, 4h or 8h, ...) in [-1, 1], [nb + 1 features (B, nf, h, w)]).

    Upstream applies two x2 upconvs, three when sr_scale == 8 (``upconv3`` only exists then)."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, nb: int, gc: int = 32, sr_scale: int = 4):
        super().__init__()
        self.sr_scale = sr_scale
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.ModuleList([RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        if sr_scale == 8:
            self.upconv3 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The nb + 1 intermediate features (what ``forward(x, get_fea=True)[1]`` returns), without the
        upsampling tail that the diffusion model does not use."""
        fea_first = fea = self.conv_first((x + 1) / 2)
        feas = []
        for blk in self.RRDB_trunk:
            fea = blk(fea)
            feas.append(fea)
        feas.append(fea_first + self.trunk_conv(fea))
        return feas

    def forward(self, x: torch.Tensor, get_fea: bool = False):
        feas = self.features(x)
        fea = feas[-1]
        lrelu = lambda v: F.leaky_relu(v, 0.2)  # noqa: E731
        fea = lrelu(self.upconv1(F.interpolate(fea, scale_factor=2, mode="nearest")))
        fea = lrelu(self.upconv2(F.interpolate(fea, scale_factor=2, mode="nearest")))
        if self.sr_scale == 8:
            fea = lrelu(self.upconv3(F.interpolate(fea, scale_factor=2, mode="nearest")))
        out = self.conv_last(lrelu(self.HRconv(fea))).clamp(0, 1) * 2 - 1
        return (out, feas) if get_fea else out


# ----------------------------------------------------------------------------------------------------------
# Denoiser UNet (models/diffsr_modules.py Unet with models/commons.py blocks; gn_groups = 0 upstream)
# ----------------------------------------------------------------------------------------------------------
class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)  # x * tanh(softplus(x))


class SinusoidalPosEmb(nn.Module):
    """t (B,) -> (B, dim) float32: [sin(t w), cos(t w)], w_k = exp(-k ln(1e4) / (dim/2 - 1)). Always float32
    (a half t w would lose the phase at large t); the Unet casts it to its weights' dtype."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        w = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        arg = t.float()[:, None] * w[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class Block(nn.Module):
    """ReflectionPad(1) -> 3x3 conv -> Mish (upstream groups = 0: no GroupNorm): key block.1."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim_out, 3), Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block(dim, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.mlp(emb)[:, :, None, None]
        return self.block2(h) + self.res_conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ConvTranspose2d(dim, dim, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LinearAttention(nn.Module):
    """Linear attention (keys softmaxed over positions): out = W_o (softmax_n(k) v^T)^T q, 4 heads x 32."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        hidden = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # upstream rearrange 'b (qkv heads c) h w -> qkv b heads c (h w)'
        q, k, v = self.to_qkv(x).reshape(b, 3, self.heads, -1, h * w).unbind(1)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        return self.to_out(out.reshape(b, -1, h, w))


class Rezero(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.g = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) * self.g


class Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class Unet(nn.Module):
    """eps_hat = Unet(x_t (B, 3, H, W), t (B,), feas (list of RRDB features at (h, w)), up(lr) (B, 3, H, W)).

    H = sr_scale * h must be divisible by 2 ** (len(dim_mults) - 1)."""

    def __init__(self, dim: int, out_dim: int = 3, dim_mults: Sequence[int] = (1, 2, 4, 8), cond_dim: int = 32,
                 rrdb_num_block: int = 8, sr_scale: int = 4, use_attn: bool = False, up_input: bool = False):
        super().__init__()
        dims = [3, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        n = len(in_out)
        self.use_attn = use_attn
        self.up_input = up_input
        s = sr_scale
        # the concatenated features feas[2::3] (B, cond_dim * (nb + 1) // 3, h, w) -> (B, dim, s h, s w)
        self.cond_proj = nn.ConvTranspose2d(cond_dim * ((rrdb_num_block + 1) // 3), dim, s * 2, s, s // 2)
        self.time_pos_emb = SinusoidalPosEmb(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), Mish(), nn.Linear(dim * 4, dim))
        self.downs = nn.ModuleList([])
        self.ups = nn.ModuleList([])
        for i, (di, do) in enumerate(in_out):
            self.downs.append(nn.ModuleList([
                ResnetBlock(di, do, dim), ResnetBlock(do, do, dim),
                Downsample(do) if i < n - 1 else nn.Identity(),
            ]))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, dim)
        if use_attn:
            self.mid_attn = Residual(Rezero(LinearAttention(mid)))
        self.mid_block2 = ResnetBlock(mid, mid, dim)
        for di, do in reversed(in_out[1:]):  # every up level has an Upsample (upstream's is_last never hits)
            self.ups.append(nn.ModuleList([ResnetBlock(do * 2, di, dim), ResnetBlock(di, di, dim), Upsample(di)]))
        self.final_conv = nn.Sequential(Block(dim, dim), nn.Conv2d(dim, out_dim, 1))
        if up_input:
            self.up_proj = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(3, dim, 3))

    def project_cond(self, cond: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
        """The LR features' projection to the HR grid, added after the first down block: the same at every step.
        Reads cond[2::3] only (the other maps may be None)."""
        return self.cond_proj(torch.cat(list(cond[2::3]), 1))

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: Sequence[Optional[torch.Tensor]],
                img_lr_up: Optional[torch.Tensor], proj: Optional[torch.Tensor] = None) -> torch.Tensor:
        """proj: project_cond(cond), made once for a whole sampling run (else made here). img_lr_up is read with
        up_input only (None will do without)."""
        # the sinusoidal embedding is computed in float32 (its arguments reach t ~ 1000), then cast to the mlp's
        # dtype, so the network runs in its weights' dtype (half, bfloat16, float64); a no-op in float32
        emb = self.mlp(self.time_pos_emb(time).to(self.mlp[0].weight.dtype))
        c = self.project_cond(cond) if proj is None else proj
        skips = []
        for i, (res1, res2, down) in enumerate(self.downs):
            x = res2(res1(x, emb), emb)
            if i == 0:
                x = x + c
                if self.up_input:
                    x = x + self.up_proj(img_lr_up)
            skips.append(x)
            x = down(x)
        x = self.mid_block1(x, emb)
        if self.use_attn:
            x = self.mid_attn(x)
        x = self.mid_block2(x, emb)
        for res1, res2, up in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2(res1(x, emb), emb))
        return self.final_conv(x)
