"""yoda.models.diffbir.DiffBIRAdapter and classifier-free guidance in the adapter contract.

DiffBIR cannot run here (no weights, heavy dependencies), so a small stand-in has the methods and attributes of
DiffBIR's ControlLDM (prepare_condition, forward(x_t, t, cond), vae_encode / vae_decode, scale_factor,
control_scales) and Diffusion (betas, parameterization). The reference loops below re-implement, from DiffBIR's
diffbir/sampler/spaced_sampler.py, ddim_sampler.py and sampler.py (XPixelGroup/DiffBIR at 3f8b530), how its
SpacedSampler and DDIMSampler respace, guide and step: coefficients computed in float64 numpy and kept as float32
buffers, the state in float32, x_T and the per-step noise given; and from its edm_sampler.py and k_diffusion.py how
its EDMSampler builds its sigmas, maps them to t, guides the denoised estimate and runs k-diffusion's solvers.
"""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import yoda
from yoda.adapters import (CallableAdapter, apply_cfg_scale, cfg_combine, guided_call, stack_along_batch,
                           upsample)
from yoda.models.diffbir import DiffBIRAdapter as _DiffBIRAdapter, diffbir_cfg_scale
from yoda.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")

T = 1000
POS, NEG = "sharp photo, fine detail", "blurry, lowres"


# ==========================================================================================================
# Stand-ins with DiffBIR's interface
# ==========================================================================================================
class StandInDiffusion:
    """DiffBIR's Diffusion as the samplers read it: betas (numpy float64, its "linear" schedule, i.e. linear in
    sqrt(beta)) and parameterization; zero_snr=True as v2.1's configs/inference/diffusion_v2.1.yaml (with "v")."""

    def __init__(self, parameterization="eps", timesteps=T, linear_start=0.00085, linear_end=0.012, zero_snr=False):
        self.num_timesteps = timesteps
        self.parameterization = parameterization
        self.betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=np.float64) ** 2
        if zero_snr:
            self.betas = zero_snr_betas(self.betas)


def zero_snr_betas(betas):
    """Lin et al. 2024, Algorithm 1 in float64 (DiffBIR's enforce_zero_terminal_snr): shift sqrt(alpha_bar) so that
    its last value is 0, scale it so that its first is kept, and read the betas back; the last beta is exactly 1."""
    s = np.sqrt(np.cumprod(1.0 - betas))
    s = (s - s[-1]) * (s[0] / (s[0] - s[-1]))
    ab = s * s
    return 1.0 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])


class StandInControlLDM(torch.nn.Module):
    """ControlLDM's interface on tiny conv nets: a VAE with f = 8 and 4 latent channels (scale_factor 0.18215), a
    text encoder (a fixed table over characters), and a denoiser that predicts roughly the right eps / v for a
    clean latent tanh(conv(c_img)) plus a small learned-looking term in x_t, c_img, t and the text, so that cond
    and uncond differ and sampling stays O(1)."""

    def __init__(self, diffusion, seed=0, width=8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = torch.nn.Conv2d(3, 8, 8, 8)  # mean and logvar, like DiagonalGaussianDistribution's moments
        self.dec = torch.nn.Conv2d(4, 3 * 64, 1)
        self.clean = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.inp = torch.nn.Conv2d(8, width, 3, padding=1)
        self.out = torch.nn.Conv2d(width, 4, 3, padding=1)
        self.txt = torch.nn.Linear(6, width)
        self.tproj = torch.nn.Linear(4, width)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.table = torch.randn(128, 6, generator=g)
        ab = np.cumprod(1.0 - diffusion.betas)
        self.register_buffer("sab", torch.tensor(np.sqrt(ab), dtype=torch.float32))
        self.register_buffer("s1ab", torch.tensor(np.sqrt(1 - ab), dtype=torch.float32))
        self.parameterization = diffusion.parameterization
        self.scale_factor = 0.18215
        self.control_scales = [1.0] * 13
        self.calls = []  # (batch size, prompts' first token) of every forward
        self.eval()  # as DiffBIR's inference.py leaves it (yoda.sample warns about a network in training mode)

    def vae_encode(self, image, sample=True, tiled=False, tile_size=-1):
        mean, logvar = self.enc(image).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        return z * self.scale_factor

    def vae_decode(self, z, tiled=False, tile_size=-1):
        return torch.tanh(F.pixel_shuffle(self.dec(z / self.scale_factor), 8))

    def encode_text(self, txt):
        return torch.stack([self.table[[ord(ch) % 128 for ch in s or " "]].mean(0, keepdim=True) for s in txt])

    def prepare_condition(self, cond_img, txt, tiled=False, tile_size=-1):
        return dict(c_txt=self.encode_text(txt),
                    c_img=self.vae_encode(cond_img * 2 - 1, sample=False, tiled=tiled, tile_size=tile_size))

    def forward(self, x_noisy, t, cond):
        self.calls.append(x_noisy.shape[0])
        c_img, c_txt = cond["c_img"], cond["c_txt"]
        x0 = torch.tanh(self.clean(c_img))
        sa, s1a = self.sab[t].view(-1, 1, 1, 1), self.s1ab[t].view(-1, 1, 1, 1)
        eps = (x_noisy - sa * x0) / s1a
        tf = t.float()[:, None] / T
        temb = self.tproj(torch.cat([torch.sin(3 * tf), torch.cos(3 * tf), tf, tf * tf], 1))
        h = self.inp(torch.cat([x_noisy, c_img * self.control_scales[0]], 1))
        h = torch.tanh(h + temb[:, :, None, None] + self.txt(c_txt.mean(1))[:, :, None, None])
        eps = eps + 0.1 * self.out(h)
        if self.parameterization == "eps":
            return eps
        return sa * eps - s1a * x0  # v


def DiffBIRAdapter(*args, **kw):
    """The adapter without DiffBIR's enlargement of small images (enlarge_to=None), so that the loops are compared at
    the stand-ins' small sizes; test_small_images_are_sampled_enlarged covers the enlargement."""
    kw.setdefault("enlarge_to", None)
    return _DiffBIRAdapter(*args, **kw)


def stage1(lq):
    """A stand-in stage-1 "cleaner": [0, 1] LR -> [0, 1] image at the SR size (x4)."""
    return (F.interpolate(lq, scale_factor=4, mode="bilinear", align_corners=False) ** 1.1).clamp(0, 1)


def _lr(B=2, h=6, w=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, h, w, generator=g) * 2 - 1


def _diffbir_conds(cldm, lr, guided):
    """DiffBIR's Pipeline.apply_cldm steps 1-2: the cleaned image zero-padded to multiples of 64, cond / uncond from
    prepare_condition with the prompts, c_img zero-padded to multiples of 8."""
    img = stage1((lr + 1) / 2)
    ph, pw = (-img.shape[-2]) % 64, (-img.shape[-1]) % 64
    img = F.pad(img, (0, pw, 0, ph), value=0.0)
    B = lr.shape[0]
    cond = cldm.prepare_condition(img, [POS] * B)
    uncond = cldm.prepare_condition(img, [NEG] * B) if guided else None
    return cond, uncond


# ==========================================================================================================
# DiffBIR's two samplers, re-implemented from its code (see the module docstring)
# ==========================================================================================================
def ref_space_timesteps(num_timesteps, count):
    """guided-diffusion's space_timesteps(num_timesteps, str(count)) for one section (DiffBIR's SpacedSampler)."""
    stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return set(taken)


def _f32(v):
    return torch.tensor(np.asarray(v, dtype=np.float64), dtype=torch.float32)


def _ref_output(model, x, model_t, cond, uncond, w, batched):
    if uncond is None or w == 1.0:
        return model(x, model_t, cond)
    if batched:  # DDIMSampler: one call on the doubled batch, cond first
        both = model(torch.cat([x] * 2), torch.cat([model_t] * 2), {k: torch.cat([cond[k], uncond[k]]) for k in cond})
        c, u = both.chunk(2)
    else:  # SpacedSampler.apply_model: two calls
        c, u = model(x, model_t, cond), model(x, model_t, uncond)
    return u + w * (c - u)


def ref_spaced_sampler(model, betas, parameterization, rescale_cfg, steps, noises, cond, uncond, cfg_scale):
    used = ref_space_timesteps(len(betas), steps)
    train_ab = np.cumprod(1.0 - betas, axis=0)
    new_betas, last = [], 1.0
    for i, a in enumerate(train_ab):
        if i in used:
            new_betas.append(1 - a / last)
            last = a
    timesteps = sorted(used)
    b = np.array(new_betas, dtype=np.float64)
    alphas = 1.0 - b
    ab = np.cumprod(alphas)
    ab_prev = np.append(1.0, ab[:-1])
    with np.errstate(divide="ignore"):  # zero terminal SNR: 1 / ab[-1] = inf, as in DiffBIR (used for eps only)
        recip, recipm1 = _f32(np.sqrt(1.0 / ab)), _f32(np.sqrt(1.0 / ab - 1))
    sab, s1ab = _f32(np.sqrt(ab)), _f32(np.sqrt(1 - ab))
    var = _f32(b * (1.0 - ab_prev) / (1.0 - ab))
    coef1, coef2 = _f32(b * np.sqrt(ab_prev) / (1.0 - ab)), _f32((1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab))
    x, states = noises[0], []
    B, n = x.shape[0], len(timesteps)
    for i, step in enumerate(reversed(timesteps)):
        k = n - i - 1
        model_t = torch.full((B,), step, dtype=torch.long)
        w = diffbir_scale_by_hand(cfg_scale, step, rescale_cfg)
        out = _ref_output(model, x, model_t, cond, uncond, w, batched=False)
        x0 = recip[k] * x - recipm1[k] * out if parameterization == "eps" else sab[k] * x - s1ab[k] * out
        mean = coef1[k] * x0 + coef2[k] * x
        x = mean + float(k != 0) * torch.sqrt(var[k]) * noises[i + 1]
        states.append(x)
    return states


def ref_ddim_sampler(model, betas, parameterization, rescale_cfg, steps, noises, cond, uncond, cfg_scale, eta=0.0,
                     limit_at_zero=False):
    """limit_at_zero: where a_t = 0 (zero terminal SNR) take x0 = -v, the limit of DiffBIR's (x - sqrt(1 - a) e_t) /
    sqrt(a), which is 0 / 0 = NaN there."""
    train_ab = np.cumprod(1.0 - betas, axis=0)
    ts = np.asarray(list(range(0, len(betas), len(betas) // steps))) + 1
    a = train_ab[ts]
    a_prev = np.asarray([train_ab[0]] + train_ab[ts[:-1]].tolist())
    sig = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    a32, sa32, ap32, s1a32, sig32 = _f32(a), _f32(np.sqrt(a)), _f32(a_prev), _f32(np.sqrt(1.0 - a)), _f32(sig)
    x, states = noises[0], []
    B, n = x.shape[0], len(ts)
    assert len(noises) == n + 1
    for i, step in enumerate(np.flip(ts)):
        k = n - i - 1
        model_t = torch.full((B,), int(step), dtype=torch.long)
        w = diffbir_scale_by_hand(cfg_scale, int(step), rescale_cfg)
        out = _ref_output(model, x, model_t, cond, uncond, w, batched=True)
        e_t = out if parameterization == "eps" else sa32[k] * out + s1a32[k] * x
        x0 = (x - s1a32[k] * e_t) / a32[k].sqrt()
        if limit_at_zero and a32[k] == 0:
            x0 = -out
        dir_xt = (1.0 - ap32[k] - sig32[k] ** 2).sqrt() * e_t
        x = ap32[k].sqrt() * x0 + dir_xt + sig32[k] * noises[i + 1]
        states.append(x)
    return states


def diffbir_scale_by_hand(cfg_scale, t, rescale_cfg):
    """Sampler.get_cfg_scale, written out."""
    if not (rescale_cfg and cfg_scale > 1):
        return cfg_scale
    ramp = (1 - math.cos(math.pi * ((1000 - t) / 1000) ** 5.0)) / 2
    return 1 + cfg_scale * ramp


def _run_yoda(adapter, lr, noises, **kw):
    """yoda.sample with the state after every step captured (the callback's x) -> (states, image)."""
    states = []
    sr = yoda.sample(adapter, lr, noise=noises, progress=False, callback=lambda d: states.append(d["x"].clone()), **kw)
    return states, sr


def _max_diff(states, ref):
    """The largest difference over the whole trajectory (every step's state)."""
    assert len(states) == len(ref)
    return max((a - b).abs().max().item() for a, b in zip(states, ref))


def _noises(n, shape, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g)


# ==========================================================================================================
# With lower_bound >= 1 yoda.sample is DiffBIR's SpacedSampler / DDIMSampler
# ==========================================================================================================
@pytest.mark.parametrize("parameterization,zero_snr", [("eps", False), ("v", False), ("v", True)],
                         ids=["eps", "v", "v2.1-zero-snr"])
@pytest.mark.parametrize("cfg_scale,rescale_cfg,steps", [(1.0, False, 7), (4.0, False, 21), (4.0, True, 12)])
def test_plain_equals_diffbir_spaced_sampler(parameterization, zero_snr, cfg_scale, rescale_cfg, steps):
    diffusion = StandInDiffusion(parameterization, zero_snr=zero_snr)
    cldm = StandInControlLDM(diffusion)
    lr = _lr()
    guided = cfg_scale != 1.0
    cond, uncond = _diffbir_conds(cldm, lr, guided)
    noises = _noises(steps + 1, cond["c_img"].shape)
    with torch.no_grad():
        ref = ref_spaced_sampler(cldm, diffusion.betas, parameterization, rescale_cfg, steps, noises, cond, uncond,
                                 cfg_scale)
        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=cfg_scale, rescale_cfg=rescale_cfg,
                            pos_prompt=POS, neg_prompt=NEG)
        # v2.1: the first step (index T - 1) starts from alpha_bar = 0
        assert (ad.schedule.pairs(steps, "idpm")[0][:2] == (T - 1, 0.0)) == zero_snr
        A = torch.rand(2, 1, 24, 40)
        for attention, lb in ((None, 0.6), (A, 1.0)):
            zs, sr = _run_yoda(ad, lr, noises, steps=steps, sampler="ddpm", spacing="idpm", attention=attention,
                               lower_bound=lb)
            assert _max_diff(zs, ref) <= 1e-5, (attention is None, _max_diff(zs, ref))
            want = cldm.vae_decode(ref[-1])[..., :24, :40].clamp(-1, 1)
            assert sr.shape == (2, 3, 24, 40)
            assert (sr - want).abs().max().item() <= 1e-5
    assert max(r.abs().max() for r in ref) < 10  # the stand-in samples something tame: the tolerance means something


@pytest.mark.parametrize("parameterization,zero_snr", [("eps", False), ("v", False), ("v", True)],
                         ids=["eps", "v", "v2.1-zero-snr"])
@pytest.mark.parametrize("cfg_scale,rescale_cfg,steps", [(1.0, False, 10), (6.0, False, 30), (3.0, True, 8)])
def test_plain_equals_diffbir_ddim_sampler(parameterization, zero_snr, cfg_scale, rescale_cfg, steps):
    diffusion = StandInDiffusion(parameterization, zero_snr=zero_snr)
    cldm = StandInControlLDM(diffusion, seed=1)
    lr = _lr(B=1, h=16, w=17)  # SR 64 x 68 -> padded 64 x 128: latent 8 x 16
    cond, uncond = _diffbir_conds(cldm, lr, cfg_scale != 1.0)
    n = len(range(0, T, T // steps))  # 31 for steps = 30: LDM's discretisation takes one more
    assert n == steps + (steps == 30)
    noises = _noises(n + 1, cond["c_img"].shape, seed=3)
    with torch.no_grad():
        ref = ref_ddim_sampler(cldm, diffusion.betas, parameterization, rescale_cfg, steps, noises, cond, uncond,
                               cfg_scale)
        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=cfg_scale, rescale_cfg=rescale_cfg,
                            pos_prompt=POS, neg_prompt=NEG)
        zs, sr = _run_yoda(ad, lr, noises, steps=steps, sampler="ddim", spacing="ldm_uniform", lower_bound=1.0,
                           attention=torch.rand(1, 1, 64, 68))
    assert _max_diff(zs, ref) <= 1e-5, _max_diff(zs, ref)
    assert max(r.abs().max() for r in ref) < 10
    # yoda's own spacing would not be DiffBIR's sampler: the comparison above is not vacuous
    with torch.no_grad():
        z2, _ = _run_yoda(ad, lr, noises[:steps + 1], steps=steps, sampler="ddim", lower_bound=1.0)
    assert (z2[-1] - ref[-1]).abs().max().item() > 1e-3


def test_zero_snr_ddim_sampler_through_pure_noise():
    """DiffBIR v2.1 with its DDIMSampler visits index T - 1 (alpha_bar = 0) when T // steps = 2 (334 <= steps <= 500
    for T = 1000). Its x0 = (x - sqrt(1 - a) e_t) / sqrt(a) is 0 / 0 there: NaN. yoda takes the finite v step (x0 =
    -v, eps = x_t); from the second step on both are DiffBIR's DDIM, compared over the whole trajectory (500 steps
    of float32 rounding: measured <= 7.1e-6, the first step 2.4e-7)."""
    diffusion = StandInDiffusion("v", zero_snr=True)
    cldm = StandInControlLDM(diffusion, seed=4)
    lr = _lr(B=1, h=8, w=8)
    steps = 400
    cond, uncond = _diffbir_conds(cldm, lr, False)
    n = len(range(0, T, T // steps))
    assert n == 500
    noises = _noises(n + 1, cond["c_img"].shape, seed=5)
    with torch.no_grad():
        literal = ref_ddim_sampler(cldm, diffusion.betas, "v", False, steps, noises, cond, uncond, 1.0)
        assert torch.isnan(literal[0]).all()  # DiffBIR's own step at alpha_bar = 0
        ref = ref_ddim_sampler(cldm, diffusion.betas, "v", False, steps, noises, cond, uncond, 1.0,
                               limit_at_zero=True)
        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, pos_prompt=POS)
        assert ad.schedule.pairs(steps, "ldm_uniform")[0][:2] == (T - 1, 0.0)
        zs, _ = _run_yoda(ad, lr, noises, steps=steps, sampler="ddim", spacing="ldm_uniform", lower_bound=1.0)
    assert all(torch.isfinite(r).all() for r in ref) and max(r.abs().max() for r in ref) < 10
    assert _max_diff(zs, ref) <= 1e-5, _max_diff(zs, ref)


def test_spacings_are_diffbirs():
    """"idpm" is space_timesteps (float sum, Python round), "ldm_uniform" make_ddim_timesteps("uniform") with
    alphas_prev starting at alpha_bar[0]; they differ from yoda's other spacings where it matters."""
    for TT in (7, 50, 1000):
        s = Schedule.linear(TT)
        for steps in range(1, TT + 1):
            assert s.respace(steps, "idpm") == sorted(ref_space_timesteps(TT, steps), reverse=True), (TT, steps)
    s = Schedule.scaled_linear(T)
    assert s.respace(21, "idpm") != s.respace(21, "linspace")  # 499 vs 500: the float sum decides the tie
    for steps in (1, 10, 30, 50, 200, 499):
        ts = np.asarray(list(range(0, T, T // steps))) + 1
        assert s.respace(steps, "ldm_uniform") == ts[::-1].tolist()
        pairs = s.pairs(steps, "ldm_uniform")
        ab = np.cumprod(1.0 - s.betas.numpy())
        assert [p[1] for p in pairs] == ab[ts[::-1]].tolist()
        assert [p[2] for p in pairs] == ab[ts[::-1][1:]].tolist() + [ab[0]]
    assert s.pairs(10, "idpm")[-1][2] == 1.0
    for steps in (333, 1000):  # range(0, T, T // steps) + 1 reaches T: DiffBIR's IndexError, an error here
        with pytest.raises(ValueError, match="steps"):
            s.respace(steps, "ldm_uniform")


# ==========================================================================================================
# YODA masking with the adapter
# ==========================================================================================================
@pytest.mark.parametrize("zero_snr", [False, True])
def test_yoda_masking_holds_inactive_latents_at_the_noised_condition(zero_snr):
    diffusion = StandInDiffusion("v", zero_snr=zero_snr)
    cldm = StandInControlLDM(diffusion, seed=2)
    lr = _lr()
    steps = 10
    cond, _ = _diffbir_conds(cldm, lr, False)
    c = cond["c_img"]
    noises = _noises(steps + 1, c.shape, seed=11)
    ramp = torch.linspace(0, 1, 40).view(1, 1, 1, 40).expand(2, 1, 24, 40).clone()
    ramp[1] = ramp[1].flip(-1)
    # the latent grid by hand: replicate-pad to 64 x 64, the max of each 8 x 8 cell
    Ap = F.pad(ramp, (0, 24, 0, 40), mode="replicate")
    A_lat = Ap.view(2, 1, 8, 8, 8, 8).amax(dim=(3, 5))
    ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=3.0, pos_prompt=POS, neg_prompt=NEG)
    assert torch.equal(ad.attention_to_state(ramp, c.shape), A_lat)
    log = []
    with torch.no_grad():
        yoda.sample(ad, lr, attention=ramp, steps=steps, sampler="ddpm", spacing="idpm", lower_bound=0.6,
                    noise=noises, progress=False,
                    callback=lambda d: log.append((d["tau"], d["x"].clone(), d["active_fraction"])))
    pairs = ad.schedule.pairs(steps, "idpm")
    partial = 0
    for i, ((tau, x, fraction), (_, _, ab_prev)) in enumerate(zip(log, pairs)):
        active = A_lat >= torch.tensor(tau, dtype=torch.float32)
        # of the 3 x 5 latents that cover the 24 x 40 image: the padding's (replicated attention) counted too
        assert torch.equal(fraction, active[..., :3, :5].float().mean(dim=(1, 2, 3))), i
        held = math.sqrt(ab_prev) * c + math.sqrt(1 - ab_prev) * noises[i + 1]
        inactive = ~active.expand_as(x)
        assert torch.allclose(x[inactive], held[inactive], atol=1e-6), i
        if active.any():
            assert (x[~inactive] - held[~inactive]).abs().min() > 1e-5  # every active latent was refined
        partial += bool(inactive.any() and (~inactive).any())
    assert partial >= 3


# ==========================================================================================================
# Classifier-free guidance
# ==========================================================================================================
def test_cfg_combine_by_hand_and_against_diffusers():
    c = torch.tensor([[2.0, 4.0, -1.0, 0.5]])
    u = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(cfg_combine(c, u, 3.0), torch.tensor([[4.0, 10.0, -5.0, -0.5]]))  # u + 3 (c - u)
    assert torch.equal(cfg_combine(c, u, 1.0), c) and torch.equal(cfg_combine(c, u, 0.0), u)
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    out = cfg_combine(c, u, 5.0, rescale=0.7)
    cfg = (u + 5.0 * (c - u)).double().numpy().reshape(3, -1)
    ratio = c.double().numpy().reshape(3, -1).std(1, ddof=1) / cfg.std(1, ddof=1)
    want = 0.7 * cfg * ratio[:, None] + 0.3 * cfg
    np.testing.assert_allclose(out.double().numpy().reshape(3, -1), want, rtol=1e-5, atol=1e-5)
    guider = pytest.importorskip("diffusers.guiders.guider_utils")
    ref = guider.rescale_noise_cfg(u + 5.0 * (c - u), c, guidance_rescale=0.7)
    assert torch.allclose(out, ref, atol=1e-6)


def test_guided_call_batched_and_two_passes():
    def fn(x, t, cond):
        return x * cond["k"] + t.view(-1, 1).float()

    x, t = torch.randn(2, 3), torch.tensor([4, 4])
    cond, uncond = {"k": torch.tensor([[2.0], [3.0]])}, {"k": torch.tensor([[0.5], [-1.0]])}
    want = fn(x, t, uncond) + 2.5 * (fn(x, t, cond) - fn(x, t, uncond))
    assert torch.allclose(guided_call(fn, x, t, cond, uncond, 2.5), want)
    assert torch.allclose(guided_call(fn, x, t, cond, uncond, 2.5, batched=False), want)
    assert torch.equal(guided_call(fn, x, t, cond, uncond, 1.0), fn(x, t, cond))
    assert torch.equal(guided_call(fn, x, t, cond, None, 2.5), fn(x, t, cond))
    with pytest.raises(ValueError, match="batched"):
        guided_call(lambda x, t, c: x[:2], x, t, cond, uncond, 2.0)
    stacked = stack_along_batch([{"a": torch.ones(1, 2), "n": 3}, {"a": torch.zeros(1, 2), "n": 3}])
    assert stacked["n"] == 3 and torch.equal(stacked["a"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_adapter_denoise_guides_by_hand():
    diffusion = StandInDiffusion("eps")
    cldm = StandInControlLDM(diffusion)
    lr = _lr(B=1)
    with torch.no_grad():
        for batched in (True, False):
            ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=4.0, pos_prompt=POS, neg_prompt=NEG,
                                cfg_batch=batched)
            pr = ad.prepare(lr)
            x, t = torch.randn_like(pr.c), torch.full((1,), 500, dtype=torch.long)
            c, u = cldm(x, t, pr.cond.cond), cldm(x, t, pr.cond.uncond)
            assert (c - u).abs().max() > 1e-3  # the prompts make a difference
            cldm.calls.clear()
            out = ad.denoise(x, t, 0.5, pr.cond)
            assert cldm.calls == ([2] if batched else [1, 1])
            assert torch.allclose(out, u + 4.0 * (c - u), atol=1e-6)
        # DiffBIR's rescale_cfg ramp at t = 500: 1 + 4 (1 - cos(pi 0.5^5)) / 2
        w = 1 + 4.0 * (1 - math.cos(math.pi * 0.5 ** 5)) / 2
        assert diffbir_cfg_scale(4.0, 500, True) == pytest.approx(w, rel=1e-15)
        ramped = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=4.0, rescale_cfg=True, pos_prompt=POS,
                                neg_prompt=NEG)
        assert torch.allclose(ramped.denoise(x, t, 0.5, pr.cond), u + w * (c - u), atol=1e-6)
        # phi rescale on top
        phi = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=4.0, guidance_rescale=0.5, pos_prompt=POS,
                             neg_prompt=NEG)
        assert torch.allclose(phi.denoise(x, t, 0.5, pr.cond), cfg_combine(c, u, 4.0, 0.5), atol=1e-6)
        # no guidance: no uncond, one pass of batch B
        plain = DiffBIRAdapter(cldm, diffusion, stage1=stage1, pos_prompt=POS)
        pp = plain.prepare(lr)
        assert pp.cond.uncond is None
        cldm.calls.clear()
        assert torch.equal(plain.denoise(x, t, 0.5, pp.cond), c) and cldm.calls == [1]
        # strength: the ControlNet scales during the call, restored after
        seen = []
        strong = DiffBIRAdapter(cldm, diffusion, stage1=stage1, strength=0.5)
        orig = cldm.forward
        cldm.forward = lambda *a: (seen.append(list(cldm.control_scales)), orig(*a))[1]
        try:
            strong.denoise(x, t, 0.5, pp.cond)
        finally:
            del cldm.forward
        assert seen == [[0.5] * 13] and cldm.control_scales == [1.0] * 13


def test_sample_cfg_scale_is_forwarded_or_refused():
    diffusion = StandInDiffusion("v")
    cldm = StandInControlLDM(diffusion)
    lr = _lr(B=1)
    ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, pos_prompt=POS, neg_prompt=NEG)
    kw = dict(steps=4, sampler="ddim", seed=3, progress=False, attention="edge")
    with torch.no_grad():
        a = yoda.sample(ad, lr, cfg_scale=5.0, **kw)
        b = yoda.sample(DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=5.0, pos_prompt=POS,
                                       neg_prompt=NEG), lr, **kw)
        plain = yoda.sample(ad, lr, **kw)
    assert torch.equal(a, b) and not torch.equal(a, plain)
    assert ad.cfg_scale == 1.0  # the user's adapter is not changed
    assert apply_cfg_scale(ad, None) is ad and apply_cfg_scale(ad, 2).cfg_scale == 2.0
    other = CallableAdapter(lambda x, t, c: torch.zeros_like(x), prediction="eps", schedule=Schedule.linear(10))
    with pytest.raises(ValueError, match="cfg_scale=2.0: CallableAdapter has no unconditional branch"):
        yoda.sample(other, lr, cfg_scale=2.0, progress=False)
    for bad, err in ((-1.0, ValueError), (float("nan"), ValueError), ("6", TypeError), (True, TypeError)):
        with pytest.raises(err, match="cfg_scale"):
            yoda.sample(ad, lr, cfg_scale=bad, progress=False)


# ==========================================================================================================
# Prepare, decode, windows, errors
def test_small_images_are_sampled_enlarged():
    """DiffBIR's Pipeline.run with a stage-1 image whose shorter side is below 512: resize_short_edge_to (bicubic,
    antialias) before apply_cldm, then wavelet_reconstruction against the enlarged image and a resize back to the
    output size. Here enlarge_to 48 on a 24 x 40 SR image: sampled at 48 x 80 (padded 64 x 128, latent 8 x 16)."""
    diffusion = StandInDiffusion("v")
    cldm = StandInControlLDM(diffusion, seed=2)
    lr, steps = _lr(), 5
    fix = lambda sr01, ref01: (sr01 + ref01) / 2  # noqa: E731 (a stand-in colour fix that uses its reference)
    with torch.no_grad():
        big = F.interpolate(stage1((lr + 1) / 2), size=(48, 80), mode="bicubic", antialias=True)
        padded = F.pad(big, (0, 128 - 80, 0, 64 - 48))
        cond, uncond = (cldm.prepare_condition(padded, [p] * 2) for p in (POS, NEG))
        noises = _noises(steps + 1, cond["c_img"].shape, seed=9)
        ref = ref_ddim_sampler(cldm, diffusion.betas, "v", False, steps, noises, cond, uncond, 3.0)
        want = F.interpolate(fix((cldm.vae_decode(ref[-1])[..., :48, :80] + 1) / 2, big), size=(24, 40),
                             mode="bicubic", antialias=True) * 2 - 1
        ad = _DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=3.0, pos_prompt=POS, neg_prompt=NEG,
                             color_fix=fix, enlarge_to=48)
        zs, sr = _run_yoda(ad, lr, noises, steps=steps, sampler="ddim", spacing="ldm_uniform", lower_bound=1.0)
        assert _max_diff(zs, ref) <= 1e-5 and sr.shape == (2, 3, 24, 40)
        assert (sr - want.clamp(-1, 1)).abs().max().item() <= 1e-5
        # the attention map follows the image: resized to 48 x 80, padded, max-pooled over the 8 x 8 cells
        A = torch.rand(2, 1, 24, 40, generator=torch.Generator().manual_seed(3))
        A_big = F.pad(F.interpolate(A, size=(48, 80), mode="bilinear", align_corners=False), (0, 48, 0, 16),
                      mode="replicate")
        assert torch.equal(ad.attention_to_state(A, cond["c_img"].shape), F.max_pool2d(A_big, 8))
        masked = yoda.sample(ad, lr, noise=noises, sampler="ddim", spacing="ldm_uniform", steps=steps,
                             attention=A, lower_bound=0.5, progress=False)
        assert masked.shape == (2, 3, 24, 40) and (masked - sr).abs().max().item() > 1e-3
        # at or above enlarge_to nothing is resized: enlarge_to 24 is enlarge_to None
        same = _DiffBIRAdapter(cldm, diffusion, stage1=stage1, enlarge_to=24).prepare(lr)
        assert same.cond.work_size == same.cond.size == (24, 40)
        assert torch.equal(same.c, DiffBIRAdapter(cldm, diffusion, stage1=stage1).prepare(lr).c)
    assert _DiffBIRAdapter(cldm, diffusion).enlarge_to == 512  # DiffBIR's
    for bad in (0, -8, 1.5, True, "512"):
        with pytest.raises(ValueError, match="enlarge_to"):
            _DiffBIRAdapter(cldm, diffusion, enlarge_to=bad)


# ==========================================================================================================
def test_state_grid_is_prepares_and_bad_windows_fail_before_stage_1():
    """state_grid, from which yoda.sample checks windows= before the stage-1 model and the VAE run, is the grid
    prepare makes: enlarged, padded to pad_multiple (64, or 8 with a tiled encoder), then to latent_multiple; and
    state_extent is the image's part of it that image_extent tells after prepare."""
    diffusion = StandInDiffusion("eps")
    cldm = StandInControlLDM(diffusion)
    for kw in (dict(), dict(enlarge_to=48), dict(enlarge_to=48, latent_multiple=3), dict(pad_multiple=8),
               dict(encoder_tile=16, latent_multiple=4)):
        for h, w in ((6, 10), (5, 5), (13, 4), (16, 24)):
            ad = _DiffBIRAdapter(cldm, diffusion, **{"enlarge_to": None, **kw})
            with torch.no_grad():
                pr = ad.prepare(_lr(1, h, w))
            assert ad.state_grid((4 * h, 4 * w)) == tuple(pr.c.shape[-2:]), (kw, h, w)
            # the latents of the work size, the rest padding (image_extent's formula before it called state_extent)
            want = tuple(-(-n // ad.latent_factor) for n in pr.cond.work_size)
            assert ad.state_extent((4 * h, 4 * w)) == ad.image_extent(pr.cond, pr.c.shape) == want, (kw, h, w)
    calls = []
    ad = _DiffBIRAdapter(cldm, diffusion, stage1=lambda lq: calls.append(lq) or stage1(lq))  # 512 x 512: 64 x 64
    with pytest.raises(ValueError, match=r"^windows: the window 20 must be a multiple of 8, the model's size "
                                         r"multiple on the state grid \(64, 64\)"):
        yoda.sample(ad, _lr(1, 4, 4), windows=(20, 8), progress=False)
    assert calls == []



def test_sides_the_unet_cannot_take_fail_before_stage_1():
    """DiffBIR's UNet (ldm's UNetModel) halves the latent len(channel_mult) - 1 times and fails on other sides with
    a bare size mismatch. README's recipe for DiffBIR's tiled mode (pad_multiple=8, latent_multiple=1) leaves such
    a side wherever a window spans the grid, or with no windows: a ValueError before the stage-1 model runs. The
    stand-in denoiser takes any side, so the same calls ran before the check and still do without channel_mult."""
    diffusion = StandInDiffusion("eps")
    cldm = StandInControlLDM(diffusion)
    calls = []
    kw = dict(stage1=lambda lq: calls.append(lq) or stage1(lq), pad_multiple=8, latent_multiple=1)
    lr = _lr(1, 17, 25)  # SR 68 x 100, padded to 72 x 104: latents 9 x 13
    cldm.unet = torch.nn.Module()
    cldm.unet.channel_mult = (1, 2, 4, 4)  # SD 2.1's: multiples of 8
    ad = DiffBIRAdapter(cldm, diffusion, **kw)
    assert ad.denoiser_multiple == 8 and ad.state_grid((68, 100)) == (9, 13)
    spans = r"sends a whole side of {} latents of the state grid \(9, 13\) through DiffBIRAdapter's denoiser"
    for windows, side, start in ((None, 9, "^sampling without windows "), ((16, 8), 9, r"^windows: windows=\(16, 8\) "),
                                 (((8, 16), 4), 13, r"^windows: windows=\(\(8, 16\), 4\) ")):
        with pytest.raises(ValueError, match=start + spans.format(side) + r", which takes only multiples of 8"):
            yoda.sample(ad, lr, windows=windows, sampler="ddim", steps=1, progress=False)
    with pytest.raises(ValueError, match=r"^windows: the window 4 must be a multiple of 8"):
        yoda.sample(ad, lr, windows=(4, 2), sampler="ddim", steps=1, progress=False)
    assert calls == []
    sr = yoda.sample(ad, lr, windows=(8, 4), sampler="ddim", steps=1, seed=0, progress=False)  # tiles both axes
    assert sr.shape == (1, 3, 68, 100) and len(calls) == 1
    # the defaults pad the latent to 8: no windows, one window over all
    ad8 = DiffBIRAdapter(cldm, diffusion, stage1=stage1, pad_multiple=8)
    assert ad8.state_grid((68, 100)) == (16, 16)
    whole = yoda.sample(ad8, lr, sampler="ddim", steps=1, seed=0, progress=False)
    torch.testing.assert_close(yoda.sample(ad8, lr, windows=(16, 8), sampler="ddim", steps=1, seed=0, progress=False),
                               whole, rtol=0, atol=0)
    del cldm.unet
    assert DiffBIRAdapter(cldm, diffusion, **kw).denoiser_multiple == 1

def test_prepare_decode_color_fix_and_condition_sources():
    diffusion = StandInDiffusion("eps")
    cldm = StandInControlLDM(diffusion)
    lr = _lr(B=2)
    with torch.no_grad():
        img = stage1((lr + 1) / 2)
        by_tensor = DiffBIRAdapter(cldm, diffusion, stage1=img).prepare(lr)
        by_call = DiffBIRAdapter(cldm, diffusion, stage1=stage1).prepare(lr)
        cond, _ = _diffbir_conds(cldm, lr, False)
        assert torch.equal(by_call.c, cond["c_img"]) and torch.equal(by_tensor.c, cond["c_img"])
        assert by_call.c.shape == (2, 4, 8, 8) and by_call.cond.size == (24, 40)
        bicubic = DiffBIRAdapter(cldm, diffusion).prepare(lr)
        up01 = F.pad((upsample(lr, 4) + 1) / 2, (0, 24, 0, 40))
        assert torch.equal(bicubic.c, cldm.vae_encode(up01 * 2 - 1, sample=False))
        seen = []

        def fix(sr01, ref01):
            seen.append(ref01)
            return ref01

        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, color_fix=fix)
        pr = ad.prepare(lr)
        out = ad.decode(pr.c, lr, pr.cond)
        assert torch.allclose(out, img * 2 - 1, atol=1e-6) and torch.equal(seen[0], img)
    with pytest.raises(ValueError, match="stage1"):
        DiffBIRAdapter(cldm, diffusion, stage1=img[..., :20, :]).prepare(lr)
    with pytest.raises(ValueError, match=r"stage1\(lq\)"):
        DiffBIRAdapter(cldm, diffusion, stage1=lambda lq: lq).prepare(lr)
    # a stage 1 of the [-1, 1] convention (LatentAdapter's) ran on without a word, its image 0.25 off
    for bad, src in ((lambda lq: stage1(lq) * 2 - 1, r"stage1\(lq\)"), (img * 255, "stage1")):
        got = bad * 1 if isinstance(bad, torch.Tensor) else bad((lr + 1) / 2)
        lo, hi = got.min().item(), got.max().item()
        with pytest.raises(ValueError, match=f"^{src} must be in \\[0, 1\\] \\(DiffBIR's convention\\), got values "
                                             f"in \\[{lo:.3g}, {hi:.3g}\\]: a \\[-1, 1\\] image becomes"):
            DiffBIRAdapter(cldm, diffusion, stage1=bad).prepare(lr)
    # a bicubic resize of a [0, 1] image overshoots by up to ~0.19 (its kernel's lobes): kept
    bicubic = lambda lq: F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)  # noqa: E731
    lines = torch.zeros(2, 3, 6, 10)
    lines[..., 2:4, :] = 1.0  # bright 2-px lines: -0.11 to 1.18 after the resize
    lo, hi = bicubic(lines).min(), bicubic(lines).max()
    assert lo < -0.1 and hi > 1.1
    over = DiffBIRAdapter(cldm, diffusion, stage1=lambda lq: bicubic(lines)).prepare(lr)
    assert over.c.shape == by_call.c.shape


def test_windows_batch_conds_with_guidance():
    diffusion = StandInDiffusion("v")
    cldm = StandInControlLDM(diffusion)
    lr = _lr(B=1, h=16, w=16)  # latent 8 x 8
    # latent windows of 4 (the stand-in UNet takes any size; DiffBIR's, latent_multiple 8, would need 8)
    ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=3.0, pos_prompt=POS, neg_prompt=NEG,
                        latent_multiple=4)
    kw = dict(steps=3, sampler="ddim", seed=1, progress=False, attention="edge", windows=(4, 2))
    with torch.no_grad():
        one = yoda.sample(ad, lr, window_batch=1, **kw)
        cldm.calls.clear()
        batched = yoda.sample(ad, lr, window_batch=9, **kw)
    assert max(cldm.calls) > 2  # several windows (each doubled for cond / uncond) in one call
    assert (one - batched).abs().max() <= 1e-5


def test_missing_methods_and_attributes_are_named():
    diffusion = StandInDiffusion("eps")
    cldm = StandInControlLDM(diffusion)

    class NoPrepare:
        def __call__(self, x, t, c):
            return x

        def vae_decode(self, z):
            return z

    class NoDecode(NoPrepare):
        vae_decode = None

        def prepare_condition(self, img, txt):
            return {}

    class NoBetas:
        parameterization = "eps"

    class NoParam:
        betas = diffusion.betas

    with pytest.raises(TypeError, match="prepare_condition"):
        DiffBIRAdapter(NoPrepare(), diffusion)
    with pytest.raises(TypeError, match="vae_decode"):
        DiffBIRAdapter(NoDecode(), diffusion)
    with pytest.raises(TypeError, match=r"cldm must be callable"):
        DiffBIRAdapter(object(), diffusion)
    with pytest.raises(TypeError, match="betas"):
        DiffBIRAdapter(cldm, NoBetas())
    with pytest.raises(TypeError, match="parameterization"):
        DiffBIRAdapter(cldm, NoParam())
    assert DiffBIRAdapter(cldm, NoParam(), prediction="v").prediction == "v"
    bad = StandInDiffusion("eps")
    bad.parameterization = "score"
    with pytest.raises(ValueError, match="parameterization"):
        DiffBIRAdapter(cldm, bad)
    zsnr = StandInDiffusion("v", zero_snr=True)
    assert zsnr.betas[-1] == 1.0  # DiffBIR's enforce_zero_terminal_snr ends the betas at exactly 1
    ad = DiffBIRAdapter(cldm, zsnr)  # v2.1: accepted, the schedule is yoda's own rescale of v2's
    assert ad.schedule.zero_terminal_snr and ad.prediction == "v"
    want = Schedule.from_betas(diffusion.betas).rescale_zero_terminal_snr()
    assert torch.allclose(ad.schedule.betas, want.betas, rtol=1e-12, atol=1e-15)
    eps_zsnr = DiffBIRAdapter(cldm, zsnr, prediction="eps")  # an eps model cannot start from pure noise
    with pytest.raises(ValueError, match="prediction='eps'"):
        yoda.sample(eps_zsnr, _lr(B=1), steps=5, sampler="ddpm", spacing="idpm", progress=False)
    bad_betas = StandInDiffusion("v")
    bad_betas.betas = bad_betas.betas.copy()
    bad_betas.betas[500] = 1.0  # a beta of 1 before the last
    with pytest.raises(ValueError, match="diffusion.betas"):
        DiffBIRAdapter(cldm, bad_betas)
    with pytest.raises(TypeError, match="control_scales"):
        DiffBIRAdapter(_NoScales(), diffusion, strength=0.5)
    for kw, match in (({"cfg_scale": -2.0}, "cfg_scale"), ({"guidance_rescale": 1.5}, "guidance_rescale"),
                      ({"pad_multiple": 12}, "pad_multiple"), ({"decoder_tile": 100}, "decoder_tile"),
                      ({"stage1": "img.png"}, "stage1"), ({"pos_prompt": 3}, "pos_prompt"),
                      ({"rescale_cfg": 1}, "rescale_cfg")):
        with pytest.raises((TypeError, ValueError), match=match):
            DiffBIRAdapter(cldm, diffusion, **kw)


class _NoScales:
    def __call__(self, x, t, c):
        return x

    def prepare_condition(self, img, txt, tiled=False, tile_size=-1):
        return {}

    def vae_decode(self, z, tiled=False, tile_size=-1):
        return z


# ==========================================================================================================
# DiffBIR's EDM samplers (its default: edm_dpm++_3m_sde, 10 steps, cfg_scale 6) are the sigma-space solvers
# ==========================================================================================================
def ref_edm_schedule(betas, steps):
    """DiffBIR's EDMSampler.make_schedule: the training alpha_bar at linspace(T - 1, 0, steps, endpoint=False) cast
    to int, the first forced to 1e-8, sigma = sqrt((1 - ab) / ab) with 0 appended, kept as float32 buffers (the
    timesteps, with 0 appended, as int64)."""
    train_ab = np.cumprod(1.0 - betas, axis=0)
    ts = np.linspace(len(betas) - 1, 0, steps, endpoint=False).astype(int)
    ab = train_ab[ts].copy()
    ab[0] = 1e-8
    sig = np.append(((1 - ab) / ab) ** 0.5, 0)
    return torch.tensor(sig, dtype=torch.float32), torch.tensor(np.append(ts, 0), dtype=torch.long)


def ref_edm_denoiser(model, parameterization, sigmas, timesteps, cond, uncond, cfg_scale, rescale_cfg, log=None):
    """DiffBIR's EDMSampler.convert_to_denoiser: D(x_k, sigma) from the model's eps or v at c_in x_k, its t the
    timestep of the nearest of the visited sigmas, guided on D with two calls (cond, uncond)."""
    def denoiser(x, sigma):
        if parameterization == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip, c_out = 1.0 / (sigma ** 2 + 1.0), -sigma / (sigma ** 2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma ** 2 + 1.0) ** 0.5
        t = timesteps[(sigma - sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)]
        if log is not None:
            log.append(t.clone())
        w = diffbir_scale_by_hand(cfg_scale, t[0].item(), rescale_cfg)
        c_in, c_out, c_skip = (v.view(-1, 1, 1, 1) for v in (c_in, c_out, c_skip))
        inp = (x * c_in).float()  # the model in float32 (the solver's arithmetic may be float64, see ref_edm_sampler)
        d_cond = model(inp, t, cond).to(x.dtype) * c_out + x * c_skip
        if uncond is None or cfg_scale == 1.0:
            return d_cond
        d_uncond = model(inp, t, uncond).to(x.dtype) * c_out + x * c_skip
        return d_uncond + w * (d_cond - d_uncond)
    return denoiser


def ref_k_ancestral(s, sn, eta):
    """k-diffusion's get_ancestral_step on torch scalars: (sigma_down, sigma_up)."""
    up = min(sn, eta * (sn ** 2 * (s ** 2 - sn ** 2) / s ** 2) ** 0.5)
    return (sn ** 2 - up ** 2) ** 0.5, up


def ref_k_solver(solver, denoiser, x, sigmas, noises, eta=1.0, s_noise=1.0):
    """k-diffusion's sample_euler / _euler_ancestral / _heun / _dpmpp_2m / _dpmpp_2m_sde (midpoint) / _dpmpp_3m_sde
    / _dpm_2 / _dpm_2_ancestral / _dpmpp_2s_ancestral loops as DiffBIR's diffbir/sampler/k_diffusion.py has them
    (s_churn 0), float32 torch scalars, its noise sampler handing out noises[i + 1] at step i. Returns the state
    (k-space) after every step."""
    states, old, hs = [], [], []
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        z = noises[i + 1]
        D = denoiser(x, s * ones)
        h = (-sn.log()) - (-s.log()) if sn > 0 else None
        if solver in ("euler", "heun"):
            d = (x - D) / s
            x_next = x + d * (sn - s)
            if solver == "heun" and sn > 0:
                d2 = (x_next - denoiser(x_next, sn * ones)) / sn
                x_next = x + (d + d2) / 2 * (sn - s)
        elif solver == "euler_a":
            down, up = ref_k_ancestral(s, sn, eta)
            x_next = x + (x - D) / s * (down - s)
            if sn > 0:
                x_next = x_next + z * s_noise * up
        elif solver in ("dpm_2", "dpm_2_a", "dpmpp_2s_a"):
            down, up = (sn, 0.0) if solver == "dpm_2" else ref_k_ancestral(s, sn, eta)
            d = (x - D) / s
            if down == 0:
                x_next = x + d * (down - s)
            elif solver == "dpmpp_2s_a":
                t, t_next = -s.log(), -down.log()
                hh = t_next - t
                s_mid = t + 0.5 * hh
                x2 = (s_mid.neg().exp() / t.neg().exp()) * x - (-hh * 0.5).expm1() * D
                D2 = denoiser(x2, s_mid.neg().exp() * ones)
                x_next = (t_next.neg().exp() / t.neg().exp()) * x - (-hh).expm1() * D2
            else:
                sm = s.log().lerp(down.log(), 0.5).exp()
                x2 = x + d * (sm - s)
                d2 = (x2 - denoiser(x2, sm * ones)) / sm
                x_next = x + d2 * (down - s)
            if solver != "dpm_2" and sn > 0:
                x_next = x_next + z * s_noise * up
        elif sn == 0:
            x_next = D  # the DPM++ solvers' denoising step
        elif solver == "dpmpp_2m":
            Dd = D
            if old:
                r = hs[0] / h
                Dd = (1 + 1 / (2 * r)) * D - (1 / (2 * r)) * old[0]
            x_next = (sn / s) * x - (-h).expm1() * Dd
        elif solver == "dpmpp_2m_sde":
            eh = eta * h
            x_next = sn / s * (-eh).exp() * x + (-h - eh).expm1().neg() * D
            if old:
                x_next = x_next + 0.5 * (-h - eh).expm1().neg() * (1 / (hs[0] / h)) * (D - old[0])
            x_next = x_next + z * sn * (-2 * eh).expm1().neg().sqrt() * s_noise
        elif solver == "dpmpp_3m_sde":
            he = h * (eta + 1)
            x_next = torch.exp(-he) * x + (-he).expm1().neg() * D
            phi2 = he.neg().expm1() / he + 1
            if len(old) >= 2:
                r0, r1 = hs[0] / h, hs[1] / h
                d10, d11 = (D - old[0]) / r0, (old[0] - old[1]) / r1
                d1 = d10 + (d10 - d11) * r0 / (r0 + r1)
                d2 = (d10 - d11) / (r0 + r1)
                x_next = x_next + phi2 * d1 - (phi2 / he - 0.5) * d2
            elif old:
                x_next = x_next + phi2 * (D - old[0]) / (hs[0] / h)
            x_next = x_next + z * sn * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        else:
            raise AssertionError(solver)
        x = x_next
        old.insert(0, D)
        hs.insert(0, h)
        states.append(x)
    return states


def ref_edm_sampler(model, betas, parameterization, solver, steps, noises, cond, uncond, cfg_scale,
                    rescale_cfg=False, eta=1.0, log=None, dtype=torch.float32):
    """DiffBIR's EDMSampler.sample (untiled): x = x_T sqrt(1 + sigma_0**2), the k-diffusion solver over its sigmas.
    Returns the states after every step in VP form (x_k / sqrt(1 + sigma_next**2), float64), as yoda's callback.
    dtype: of the solver's arithmetic (DiffBIR's: float32; float64 keeps its float32 sigmas and model but not the
    rounding of its k-space state, ~1e4 at the start)."""
    sigmas, timesteps = ref_edm_schedule(betas, steps)
    sigmas, noises = sigmas.to(dtype), [z.to(dtype) for z in noises]
    den = ref_edm_denoiser(model, parameterization, sigmas, timesteps, cond, uncond, cfg_scale, rescale_cfg, log)
    x = noises[0] * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    ks = ref_k_solver(solver, den, x, sigmas, noises, eta=eta)
    return [k.double() / math.sqrt(1.0 + float(sn) ** 2) for k, sn in zip(ks, sigmas[1:].double())]


def _edm_setup(parameterization, zero_snr, seed=0, B=2):
    diffusion = StandInDiffusion(parameterization, zero_snr=zero_snr)
    return diffusion, StandInControlLDM(diffusion, seed=seed), _lr(B=B)


@pytest.mark.parametrize("parameterization,zero_snr,cfg_scale,rescale_cfg", [
    ("v", True, 6.0, False), ("v", True, 1.0, False), ("v", True, 4.0, True), ("v", False, 6.0, False)],
    ids=["v2.1-cfg6", "v2.1-nocfg", "v2.1-rescale_cfg", "v-nonzero-snr"])
def test_default_call_is_diffbirs_default_edm_sampler(parameterization, zero_snr, cfg_scale, rescale_cfg):
    """yoda.sample(DiffBIRAdapter(...), lr, sampler="dpmpp_3m_sde", steps=10, cfg_scale=w) with no sigmas= or
    timesteps= equals DiffBIR's edm_dpm++_3m_sde (eta 1, s_noise 1) over the whole trajectory, same noise: the
    adapter's defaults sigmas="diffbir" (the first step at alpha_bar 1e-8, sigma 1e4) and timesteps="nearest"
    (the ControlLDM called at int64 t = 999, 899, ..., 99, DiffBIR's nearest visited sigma)."""
    diffusion, cldm, lr = _edm_setup(parameterization, zero_snr)
    steps = 10
    cond, uncond = _diffbir_conds(cldm, lr, cfg_scale != 1.0)
    noises = _noises(steps + 1, cond["c_img"].shape, seed=13)
    ref_ts, seen_ts = [], []
    with torch.no_grad():
        ref = ref_edm_sampler(cldm, diffusion.betas, parameterization, "dpmpp_3m_sde", steps, noises, cond, uncond,
                              cfg_scale, rescale_cfg, log=ref_ts)
        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, rescale_cfg=rescale_cfg, pos_prompt=POS, neg_prompt=NEG)
        forward = cldm.forward
        cldm.forward = lambda x, t, c: (seen_ts.append(t.clone()), forward(x, t, c))[1]
        try:
            zs, sr = _run_yoda(ad, lr, noises, sampler="dpmpp_3m_sde", steps=steps, cfg_scale=cfg_scale)
        finally:
            del cldm.forward
    err = _max_diff(zs, ref)
    assert err <= 1e-5, err
    assert (sr - cldm.vae_decode(ref[-1].float())[..., :24, :40].clamp(-1, 1)).abs().max().item() <= 1e-5
    assert max(r.abs().max() for r in ref) < 10 and ref[-1].abs().max() > 0.1
    want_t = [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert [int(t[0]) for t in ref_ts] == want_t
    # one call per step, batched (cond, uncond) where the scale is not 1 (rescale_cfg's ramp is 1 at t = 999)
    assert all(t.dtype == torch.int64 and t.shape[0] in ((2,) if cfg_scale == 1.0 else (2, 4)) for t in seen_ts)
    assert [int(t[0]) for t in seen_ts] == want_t
    # the comparison is not vacuous: k-diffusion's own mapping (interpolated float t) or Karras sigmas differ
    with torch.no_grad():
        rounded = _RoundingCLDM(cldm)
        ad_interp = DiffBIRAdapter(rounded, diffusion, stage1=stage1, rescale_cfg=rescale_cfg, pos_prompt=POS,
                                   neg_prompt=NEG, timesteps="interpolate")
        zi, _ = _run_yoda(ad_interp, lr, noises, sampler="dpmpp_3m_sde", steps=steps, cfg_scale=cfg_scale)
        zk, _ = _run_yoda(ad, lr, noises, sampler="dpmpp_3m_sde", steps=steps, cfg_scale=cfg_scale, sigmas="karras")
    assert all(t.dtype == torch.float32 for t in rounded.seen)
    assert [round(float(t[0])) for t in rounded.seen] == want_t  # the table sigmas: integer t up to float rounding
    assert _max_diff(zi, ref) <= 1e-5
    assert (zk[-1] - ref[-1]).abs().max().item() > 1e-3


class _RoundingCLDM(torch.nn.Module):
    """The stand-in indexes its tables by t: this wrapper records the t it gets (float32 with
    timesteps="interpolate", as DiffBIR's ControlLDM's sinusoidal embedding accepts) and hands it on rounded."""

    def __init__(self, cldm):
        super().__init__()
        self.cldm, self.seen = cldm, []
        self.prepare_condition, self.vae_decode = cldm.prepare_condition, cldm.vae_decode
        self.eval()

    def forward(self, x, t, cond):
        self.seen.append(t.clone())
        return self.cldm(x, t.round().long(), cond)


@pytest.mark.parametrize("solver", ["euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_2",
                                    "dpm_2_a", "dpmpp_2s_a"])
def test_every_solver_is_diffbirs_edm_solver(solver):
    """Each of yoda's solvers against DiffBIR's edm_<solver> (v2.1, cfg 3, two calls, 10 steps; euler_a and the SDE
    solvers with eta 0.5 so that eta reaches the noise term), plain, same noise. DiffBIR runs k-diffusion's loops on
    a float32 k-space state of size ~1e4 at its first sigma: its Euler-type updates x + d (sigma' - sigma) lose
    ~1e-4 there (Heun's corrector, which weighs its two estimates by ~15 each, ~4e-2: see the float32 vs float64
    references below), the DPM++ updates (weights exp(-h) x, bounded) do not. yoda's VP state with float64
    coefficients has neither cancellation, so it is held to the reference's solver arithmetic in float64 (its
    sigmas, timesteps and the float32 model as DiffBIR's), and to the literal float32 loop for the DPM++ solvers."""
    diffusion, cldm, lr = _edm_setup("v", True, seed=3, B=1)
    steps, eta = 10, (0.5 if solver in ("euler_a", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_2_a", "dpmpp_2s_a") else None)
    cond, uncond = _diffbir_conds(cldm, lr, True)
    noises = _noises(steps + 1, cond["c_img"].shape, seed=17)
    args = (cldm, diffusion.betas, "v", solver, steps, noises, cond, uncond, 3.0)
    with torch.no_grad():
        ref32 = ref_edm_sampler(*args, eta=1.0 if eta is None else eta)
        ref64 = ref_edm_sampler(*args, eta=1.0 if eta is None else eta, dtype=torch.float64)
        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, pos_prompt=POS, neg_prompt=NEG, cfg_batch=False)
        zs, _ = _run_yoda(ad, lr, noises, sampler=solver, steps=steps, eta=eta, cfg_scale=3.0,
                          attention=torch.rand(1, 1, 24, 40), lower_bound=1.0)
    err64, err32 = _max_diff(zs, ref64), _max_diff(zs, ref32)
    assert err64 <= 1e-5, err64
    if solver.startswith("dpmpp"):
        assert err32 <= 1e-5, err32
    else:  # DiffBIR's own float32 rounding, not a difference of method
        assert _max_diff(ref32, ref64) > 1e-5 and err32 <= 2 * _max_diff(ref32, ref64)
    assert max(r.abs().max() for r in ref64) < 10
    if solver in ("dpm_2", "dpm_2_a", "dpmpp_2s_a"):  # the midpoint call at the nearest visited sigma's t matters
        with torch.no_grad():
            zn, _ = _run_yoda(ad, lr, noises, sampler=solver, steps=steps, eta=eta, cfg_scale=3.0, timesteps="nearest")
        assert _max_diff(zn, ref64) > 1e-3


def test_yoda_masking_under_diffbirs_edm_sampler():
    """DiffBIR's default sampler with YODA masks: at the start and after every step an inactive latent is the
    encoded condition noised to that sigma, sqrt(ab) c + sqrt(1 - ab) z with ab = 1 / (1 + sigma**2) (the start at
    ab = 1e-8); tau is §4's at the integer t the ControlLDM gets; active latents are refined."""
    diffusion, cldm, lr = _edm_setup("v", True, seed=5)
    steps = 10
    cond, _ = _diffbir_conds(cldm, lr, False)
    c = cond["c_img"]
    noises = _noises(steps + 1, c.shape, seed=19)
    ramp = torch.linspace(0, 1, 40).view(1, 1, 1, 40).expand(2, 1, 24, 40).clone()
    ramp[1] = ramp[1].flip(-1)
    ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, pos_prompt=POS, neg_prompt=NEG)
    A_lat = ad.attention_to_state(ramp, c.shape)
    log, inputs = [], []
    forward = cldm.forward
    cldm.forward = lambda x, t, cnd: (inputs.append((x[:2].clone(), int(t[0]))), forward(x, t, cnd))[1]
    try:
        with torch.no_grad():
            yoda.sample(ad, lr, attention=ramp, sampler="dpmpp_3m_sde", steps=steps, cfg_scale=6.0, lower_bound=0.6,
                        noise=noises, progress=False, callback=lambda d: log.append(d))
    finally:
        del cldm.forward
    sigmas, ts = ref_edm_schedule(diffusion.betas, steps)
    sig = sigmas.double().tolist()
    assert [d["t"] for d in log] == ts[:-1].tolist() and [inp[1] for inp in inputs] == ts[:-1].tolist()
    assert [d["sigma"] for d in log] == pytest.approx(sig[:-1], rel=1e-6)
    assert [d["tau"] for d in log] == pytest.approx([(t + 1) / T - 0.6 for t in ts[:-1].tolist()], abs=1e-12)
    start = inputs[0][0]
    m0 = (A_lat >= torch.tensor(log[0]["tau"], dtype=torch.float32)).expand_as(start)
    held0 = math.sqrt(1e-8) * c + math.sqrt(1 - 1e-8) * noises[0]
    assert not m0.all() and torch.allclose(start[~m0], held0[~m0], atol=1e-6)
    assert torch.equal(start[m0], noises[0][m0])
    partial = 0
    for i, d in enumerate(log):
        x = d["x"]
        active = (A_lat >= torch.tensor(d["tau"], dtype=torch.float32)).expand_as(x)
        ab = 1.0 / (1.0 + sig[i + 1] ** 2)
        held = math.sqrt(ab) * c + math.sqrt(1 - ab) * noises[i + 1]
        assert torch.allclose(x[~active], held[~active], atol=1e-6), i
        if active.any():
            assert (x[active] - held[active]).abs().min() > 1e-6, i
        partial += bool((~active).any() and active.any())
        if i + 1 < len(inputs):  # the next model input is this state
            assert torch.equal(inputs[i + 1][0], x)
    assert partial >= 3 and log[-1]["active_fraction"].min() == 1.0


def test_solver_defaults_and_errors():
    diffusion, cldm, lr = _edm_setup("v", True, B=1)
    ad = DiffBIRAdapter(cldm, diffusion)
    assert (ad.solver_sigmas, ad.solver_timesteps) == ("diffbir", "visited")
    assert apply_cfg_scale(ad, 6.0).solver_sigmas == "diffbir"  # kept by with_cfg_scale's copy
    for kw, match in (({"sigmas": "linear"}, "sigmas must be one of"), ({"sigmas": [1.0, 0.5]}, "sigmas"),
                      ({"timesteps": "round"}, "timesteps must be one of")):
        with pytest.raises(ValueError, match=match):
            DiffBIRAdapter(cldm, diffusion, **kw)
    with pytest.raises(ValueError, match="timesteps must be one of"):
        yoda.sample(ad, lr, sampler="euler", steps=2, timesteps="floor", progress=False)
    with pytest.raises(ValueError, match="timesteps applies to the sigma-space solvers"):
        yoda.sample(ad, lr, sampler="ddim", steps=2, timesteps="nearest", progress=False)
    # yoda.sample's own arguments win over the adapter's defaults
    seen = []
    with torch.no_grad():
        yoda.sample(ad, lr, sampler="euler", steps=3, sigmas=[1e4, 14.0, 1.0], seed=0, progress=False,
                    callback=lambda d: seen.append(d["t"]))
    assert seen == [999, ad_nearest(ad, 14.0), ad_nearest(ad, 1.0)] and all(isinstance(t, int) for t in seen)


def ad_nearest(ad, sigma):
    """The index of the discrete sigma nearest to ``sigma`` in log sigma, by brute force."""
    ab = ad.schedule.alphas_cumprod.numpy()
    with np.errstate(divide="ignore"):
        logs = 0.5 * np.log((1 - ab) / ab)
    return int(np.argmin(np.abs(logs - math.log(sigma))))


def _diffbir_recording():
    """(a StandInControlLDM that records its VAE encode / decode calls, its v-prediction diffusion)."""
    class Recording(StandInControlLDM):
        def prepare_condition(self, cond_img, txt, tiled=False, tile_size=-1):
            self.enc_calls.append((tuple(cond_img.shape[-2:]), tiled, tile_size))
            return super().prepare_condition(cond_img, txt, tiled, tile_size)

        def vae_decode(self, z, tiled=False, tile_size=-1):
            self.dec_calls.append((tuple(z.shape[-2:]), tiled, tile_size))
            return super().vae_decode(z, tiled, tile_size)

    diffusion = StandInDiffusion("v")
    cldm = Recording(diffusion, seed=2).eval()
    cldm.enc_calls, cldm.dec_calls = [], []
    return cldm, diffusion


def test_tiled_vae_follows_diffbirs_pipeline():
    """With a tiled VAE encoder DiffBIR pads the condition image to multiples of 8, not 64, and encodes an image
    smaller than the tile whole; its decoder decodes a latent smaller than the tile whole (Pipeline.apply_cldm).
    yoda padded to 64 and tiled whatever the size, so c_img differed for every size not a multiple of 64."""
    lr = _lr(B=1, h=13, w=17)  # HR 52x68: padded to 56x72 (multiples of 8), latent 7x9
    for enc, dec, want_enc, want_dec in ((256, 64, ((56, 72), False, -1), ((7, 9), False, -1)),
                                         (48, 48, ((56, 72), True, 48), ((7, 9), True, 6)),
                                         (None, None, ((64, 128), False, -1), ((8, 16), False, -1))):
        cldm, diffusion = _diffbir_recording()
        ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, encoder_tile=enc, decoder_tile=dec)
        with torch.no_grad():
            sr = yoda.sample(ad, lr, steps=2, sampler="ddim", seed=0, progress=False)
        assert cldm.enc_calls == [want_enc] and cldm.dec_calls == [want_dec], (enc, dec)
        assert sr.shape[-2:] == (52, 68)
    assert DiffBIRAdapter(cldm, diffusion, encoder_tile=64, pad_multiple=64).pad_multiple == 64  # as given


def test_half_precision_lr_runs_the_vae_in_its_own_dtype():
    """A fp16 / bf16 lr crashed in prepare ("Input type (c10::Half) and bias type (float) should be the same"): the
    stage-1 image went to the VAE in lr's dtype, and decode passed it the state's. DiffBIR keeps its VAE in
    float32 (ControlLDM.cast_dtype casts the UNet and the ControlNet only). The VAE gets its weights' dtype
    (cldm.vae's; else the cldm's), whatever lr's."""

    class Recording(StandInControlLDM):
        def __init__(self, diffusion, vae_dtype=None):
            super().__init__(diffusion)
            if vae_dtype is not None:  # DiffBIR's ControlLDM.vae, in a dtype of its own
                self.vae = torch.nn.Linear(1, 1).to(vae_dtype)
            self.seen = []

        def vae_encode(self, image, *a, **k):
            self.seen.append(image.dtype)
            return super().vae_encode(image.float(), *a, **k)

        def vae_decode(self, z, *a, **k):
            self.seen.append(z.dtype)
            return super().vae_decode(z.float(), *a, **k)

    d = StandInDiffusion("eps")
    lr = _lr(B=1, h=7, w=11)
    for s1 in (stage1, None):  # without a stage 1 (the default) the bicubic image went to the VAE in lr's dtype
        ref = yoda.sample(DiffBIRAdapter(Recording(d).eval(), d, stage1=s1), lr, sampler="ddpm", steps=2, seed=0,
                          progress=False, attention="edge")
        for lr_dtype, vae_dtype, tol in ((torch.float16, None, 0.03), (torch.bfloat16, None, 0.15),
                                         (torch.float16, torch.float32, 0.03), (torch.float32, torch.bfloat16, 0.15)):
            cldm = Recording(d, vae_dtype).eval()
            sr = yoda.sample(DiffBIRAdapter(cldm, d, stage1=s1), lr.to(lr_dtype), sampler="ddpm", steps=2, seed=0,
                             progress=False, attention="edge")
            assert cldm.seen == [vae_dtype or torch.float32] * 2, (s1, lr_dtype, vae_dtype, cldm.seen)  # enc, dec
            assert sr.dtype == lr_dtype and (sr.float() - ref).abs().max() < tol, (s1, lr_dtype, vae_dtype)


def test_a_stage1_network_runs_in_its_own_dtype_whatever_lr_s():
    """A fp16 / bf16 lr crashed in a stage-1 network with float32 weights (DiffBIR keeps SwinIR in float32): stage 1
    was called on lq in the state's dtype ("Input type (c10::Half) and bias type (float) should be the same"). It
    gets float32, or a module's own weights' dtype."""

    class Cleaner(torch.nn.Module):  # a 1x1 convolution near identity, then x4, as the README's SwinIR stage 1
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.eye(3)[..., None, None] * 0.9)
                self.conv.bias.fill_(0.05)
            self.seen = []

        def forward(self, lq):
            self.seen.append(lq.dtype)
            return stage1(self.conv(lq))

    d = StandInDiffusion("eps")
    lr = _lr(B=1, h=7, w=11)
    kw = dict(sampler="ddpm", steps=2, seed=0, progress=False)
    net = Cleaner()
    ref = yoda.sample(DiffBIRAdapter(StandInControlLDM(d).eval(), d, stage1=net), lr, **kw)
    for lr_dtype, tol in ((torch.float16, 0.03), (torch.bfloat16, 0.15)):
        for s1, want in ((net, torch.float32), (lambda lq: net(lq), torch.float32), (Cleaner().to(lr_dtype), lr_dtype)):
            seen = s1.seen if isinstance(s1, Cleaner) else net.seen
            seen.clear()
            sr = yoda.sample(DiffBIRAdapter(StandInControlLDM(d).eval(), d, stage1=s1), lr.to(lr_dtype), **kw)
            assert seen == [want] and sr.dtype == lr_dtype, (lr_dtype, s1, seen)
            if want == torch.float32:
                assert (sr.float() - ref).abs().max() < tol


def test_the_adapter_samples_as_diffbirs_inference_by_default():
    """yoda.sample(adapter, lr) ran DDPM over all 1000 steps (no sampling defaults): DiffBIR's inference.py runs
    edm_dpm++_3m_sde for 10 steps."""
    d = StandInDiffusion("v")
    ad = DiffBIRAdapter(StandInControlLDM(d).eval(), d, stage1=stage1)
    lr = _lr(B=1)
    calls = []
    got = yoda.sample(ad, lr, seed=0, progress=False, callback=lambda info: calls.append(info["i"]))
    want = yoda.sample(ad, lr, sampler="dpmpp_3m_sde", steps=10, sigmas="diffbir", seed=0, progress=False)
    assert calls == list(range(10)) and torch.equal(got, want)
    with pytest.raises(ValueError, match=r"^spacing='idpm' is for sampler='ddpm' / 'ddim'; this model samples with "
                                         r"'dpmpp_3m_sde' where the call names none"):
        yoda.sample(ad, lr, spacing="idpm", steps=2, progress=False)


def test_guidance_with_equal_prompts_is_warned_of():
    """The adapter's prompts both default to "", so cfg_scale 6 gave the cfg_scale 1 image at twice the cost
    (the docs called it DiffBIR's default sampler, whose prompts differ)."""
    d = StandInDiffusion("eps")
    lr = _lr(B=1)
    kw = dict(sampler="ddpm", steps=2, seed=0, progress=False)
    ad = DiffBIRAdapter(StandInControlLDM(d).eval(), d, stage1=stage1)
    with pytest.warns(UserWarning, match=r"cfg_scale 6 has no effect: pos_prompt and neg_prompt are the same \(''\)"):
        guided = yoda.sample(ad, lr, cfg_scale=6.0, **kw)
    assert (guided - yoda.sample(ad, lr, **kw)).abs().max() < 1e-4  # what the warning is about
    ad = DiffBIRAdapter(StandInControlLDM(d).eval(), d, stage1=stage1, pos_prompt="a photo", neg_prompt="blurry")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guided = yoda.sample(ad, lr, cfg_scale=6.0, **kw)
    assert (guided - yoda.sample(ad, lr, **kw)).abs().max() > 1e-2


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
def test_a_latent_exactly_the_decoder_tile_is_decoded_tiled():
    """DiffBIR's Pipeline.apply_cldm decodes whole only a latent smaller than vae_decoder_tile_size // 8 in a side;
    one exactly that size is tiled."""
    cldm, diffusion = _diffbir_recording()
    lr = _lr(B=1, h=13, w=17)  # HR 52x68 -> padded 56x72 -> latent 7x9
    ad = _DiffBIRAdapter(cldm, diffusion, stage1=stage1, encoder_tile=56, decoder_tile=56, enlarge_to=None)
    with torch.no_grad():
        yoda.sample(ad, lr, steps=1, sampler="ddim", seed=0, progress=False)
    assert cldm.enc_calls == [((56, 72), True, 56)] and cldm.dec_calls == [((7, 9), True, 7)]


def test_enlarged_work_size_truncates_like_diffbirs_resize_short_edge_to():
    """DiffBIR: new_h, new_w = size, int(w * (size / h)) for h < w: 52x68 -> 512 x int(669.54) = 669."""
    cldm, diffusion = _diffbir_recording()
    ad = _DiffBIRAdapter(cldm, diffusion, stage1=stage1)
    with torch.no_grad():
        cond = ad.prepare(_lr(B=1, h=13, w=17)).cond
    assert cond.work_size == (512, int(68 * (512 / 52))) == (512, 669)
    # a square one is made square: 196 * (512 / 196) truncates to 511, which DiffBIR's h == w case never does
    with torch.no_grad():
        cond = ad.prepare(_lr(B=1, h=49, w=49)).cond
    assert cond.work_size == (512, 512) and int(196 * (512 / 196)) == 511


def test_a_window_reads_its_own_c_img():
    """crop_cond of a window offset in both axes is the same slice of c_img, c_txt passed through (batch 1 and 9
    of the windows agreed with a crop from column 0 as well)."""
    diffusion = StandInDiffusion("v")
    cldm = StandInControlLDM(diffusion)
    ad = DiffBIRAdapter(cldm, diffusion, stage1=stage1, cfg_scale=3.0, pos_prompt=POS, neg_prompt=NEG,
                        latent_multiple=4)
    with torch.no_grad():
        cond = ad.prepare(_lr(B=1, h=16, w=16)).cond
    got = ad.crop_cond(cond, slice(2, 6), slice(3, 7))
    for k in ("cond", "uncond"):
        assert torch.equal(getattr(got, k)["c_img"], getattr(cond, k)["c_img"][..., 2:6, 3:7])
        assert getattr(got, k)["c_txt"] is getattr(cond, k)["c_txt"]
