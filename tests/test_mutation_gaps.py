"""Behaviour that random mechanical mutants of the numerical code showed no test pinned down (mutate.py at the
repository root): each test here fails on the mutant named in its docstring and passes on the code as it is."""

from __future__ import annotations

import math

import pytest
import torch

from yoda.adapters import CallableAdapter, guided_call, hr_grid, padded_lr_side
from yoda.masks import every_step_ratio, pixel_update_ratio, refine_fraction
from yoda.schedule import Schedule
from yoda.training import LossConfig
from yoda.training.loss import diffusion_loss


# --------------------------------------------------------------------------------------------------------------
# Defaults of the public API (mutants: schedule.py L105 / L113 T = 1000 -> 1001 / 999; masks.py L181 / L191 /
# L208 lower_bound = 0.6 -> 0.0 / -0.4 / 1.6). Every test passed these arguments explicitly.
# --------------------------------------------------------------------------------------------------------------
def test_schedule_constructors_default_to_the_published_1000_step_schedules():
    """Schedule.linear() is DDPM's (T 1000, betas 1e-4 .. 0.02), scaled_linear() latent diffusion's (T 1000,
    sqrt-linear 0.00085 .. 0.012), cosine() improved DDPM's (T 1000, s 0.008, max_beta 0.999): each checked
    against its formula, not against the constructor called with other arguments."""
    lin = Schedule.linear()
    assert lin.T == 1000
    assert torch.equal(lin.betas, torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64))
    sl = Schedule.scaled_linear()
    assert sl.T == 1000
    want = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sl.betas, want, rtol=0, atol=0)
    cos = Schedule.cosine()
    assert cos.T == 1000

    def f(u):
        return math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    want = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(1000)], dtype=torch.float64)
    torch.testing.assert_close(cos.betas, want, rtol=1e-12, atol=1e-15)
    assert cos.betas[-1].item() == 0.999  # the cap applies at the end


def test_mask_statistics_default_to_lower_bound_0_6():
    """pixel_update_ratio, refine_fraction and every_step_ratio use the paper's l = 0.6 when none is given (the
    value yoda.sample and the CLI use): known values for A = [0, 0.2, 0.5, 1]."""
    A = torch.tensor([0.0, 0.2, 0.5, 1.0]).view(1, 1, 2, 2)
    # min(1, A + 0.6) = 0.6, 0.8, 1, 1 -> 3.4 / 4
    assert pixel_update_ratio(A).item() == pytest.approx(0.85)
    # T = 10, every step: pixel a is refined at t with t / 10 - 0.6 <= a: 6, 8, 10, 10 of the 10 steps
    assert refine_fraction(A, range(10), 10).item() == pytest.approx(34 / 40)
    assert every_step_ratio(A, 10).item() == pytest.approx(34 / 40)
    # one visited step, the last (idx 9, t = 10): tau = 0.4, so the pixels 0.5 and 1 -> 2 of 4
    assert refine_fraction(A, [9], 10).item() == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------
# yoda/sampling/solvers.py L119: `if len(ab) >= 3` -> `>= 4` (a zero-terminal-SNR table of three steps)
# --------------------------------------------------------------------------------------------------------------
def test_a_three_step_zero_snr_table_continues_its_log_alpha_bar_spacing():
    """table_alphas_cumprod: where ab[T - 2] is already at or below AB_FLOOR, the last (zero) value is continued
    on the table's log-ab spacing, ab[T - 2]**2 / ab[T - 3], for T = 3 as for any T >= 3 (the mutant took the
    two-step fallback ab[T - 2] / 2 there)."""
    from yoda.sampling.solvers import AB_FLOOR, log_sigmas, table_alphas_cumprod

    s = Schedule.from_betas([0.5, 1.0 - 1e-9, 1.0])  # ab = 0.5, 5e-10 (<= AB_FLOOR), 0
    assert s.zero_terminal_snr and s.alphas_cumprod[1].item() <= AB_FLOOR
    ab = table_alphas_cumprod(s)
    a0, a1 = s.alphas_cumprod[0].item(), s.alphas_cumprod[1].item()
    assert ab[2].item() == pytest.approx(a1 * a1 / a0, rel=1e-12)
    # equal steps of log ab, and finite increasing sigmas
    assert math.log(ab[2].item()) - math.log(a1) == pytest.approx(math.log(a1) - math.log(a0), rel=1e-9)
    logs = log_sigmas(s)
    assert all(math.isfinite(v) for v in logs) and logs[0] < logs[1] < logs[2]


# --------------------------------------------------------------------------------------------------------------
# yoda/training/loss.py L201: `count.clamp_min(1.0)` -> `clamp_min(2.0)`
# --------------------------------------------------------------------------------------------------------------
def test_the_masked_mean_over_a_single_active_value_is_that_value():
    """mask_loss divides by the count of active values, and only a count of 0 is raised (to 1, loss 0): a
    one-channel image with one active pixel has a loss equal to that pixel's error (the mutant halved it)."""
    T = 10
    ab = Schedule.linear(T, 1e-2, 0.3).alphas_cumprod
    x0 = torch.zeros(1, 1, 4, 4)
    A = torch.zeros(1, 1, 4, 4)
    A[0, 0, 1, 2] = 1.0  # idx 7, l = 0.3: tau = 8 / 10 - 0.3 = 0.5 -> this pixel alone
    noise = torch.zeros(1, 1, 4, 4)
    err = torch.full((1, 1, 4, 4), 100.0)
    err[0, 0, 1, 2] = 3.0
    out = diffusion_loss(lambda x, i, s: noise + err, x0, x0, A, ab, LossConfig(mask_loss=True, lower_bound=0.3),
                         idx=torch.tensor([7]), sqrt_ab=torch.tensor([0.5]), noise=noise)
    assert out.active_fraction == pytest.approx(1 / 16)
    assert out.loss.item() == pytest.approx(3.0)
    l2 = diffusion_loss(lambda x, i, s: noise + err, x0, x0, A, ab,
                        LossConfig(mask_loss=True, loss="l2", lower_bound=0.3),
                        idx=torch.tensor([7]), sqrt_ab=torch.tensor([0.5]), noise=noise)
    assert l2.loss.item() == pytest.approx(9.0)


# --------------------------------------------------------------------------------------------------------------
# yoda/adapters.py L259: `scale == 1.0` -> `scale == 0.0` (guided_call's one-pass shortcut)
# --------------------------------------------------------------------------------------------------------------
def test_guidance_scale_0_is_the_unconditional_output_and_1_is_one_conditional_pass():
    """cfg_scale 0 means the unconditional branch alone (check_cfg_scale: "0: the unconditional one"), and scale 1
    the conditional one in a single pass of the batch size (the mutant returned the conditional output at 0, and
    ran two passes at 1)."""
    calls = []

    def fn(x, t, cond):
        calls.append(x.shape[0])
        return x * 0 + cond

    x, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64)
    cond, uncond = torch.full((2, 3, 4, 4), 5.0), torch.full((2, 3, 4, 4), -1.0)
    for batched in (True, False):
        calls.clear()
        assert torch.equal(guided_call(fn, x, t, cond, uncond, 0.0, batched=batched), uncond)
        calls.clear()
        assert torch.equal(guided_call(fn, x, t, cond, uncond, 1.0, batched=batched), cond)
        assert calls == [2]  # one conditional pass, batch 2, not the guided pair
        assert torch.equal(guided_call(fn, x, t, cond, uncond, 2.0, batched=batched), 2 * cond - uncond)


# --------------------------------------------------------------------------------------------------------------
# yoda/adapters.py L587: `max(1, multiple)` -> `max(2, multiple)` (hr_grid of an odd scale)
# --------------------------------------------------------------------------------------------------------------
def test_hr_grid_of_an_odd_scale_is_the_scale_itself():
    """An x3 (or x1) model with no size multiple takes any whole number of LR pixels: hr_grid's unit is the scale,
    not lcm(scale, 2), so pad=True / `yoda upscale` / the trainer's crops do not pad an odd LR side."""
    sched = Schedule.linear(10)
    for scale, multiple, want in ((3, 1, 3), (1, 1, 1), (3, 2, 6), (4, 1, 4), (3, 4, 12)):
        ad = CallableAdapter(lambda x, t, c: torch.zeros_like(x), prediction="eps", schedule=sched, scale=scale,
                             multiple=multiple)
        assert hr_grid(ad) == (want, want), (scale, multiple)
    ad3 = CallableAdapter(lambda x, t, c: torch.zeros_like(x), prediction="eps", schedule=sched, scale=3)
    unit, least = hr_grid(ad3)
    assert padded_lr_side(5, 3, unit, least) == 5  # an odd LR side stays as it is


# --------------------------------------------------------------------------------------------------------------
# yoda/sampling/prepare.py L374 / L375 (state_floor): `state_extent(hr) or grid` -> `and`; `:extent[0]` ->
# `:extent[1]`; `:extent[1]` -> `:extent[0]`; `:extent[1]` -> `:` -- the least attention the covering steps aim at
# --------------------------------------------------------------------------------------------------------------
def test_state_floor_is_the_least_latent_attention_over_the_image_not_its_padding():
    """state_floor (the least attention yoda.sample's covering steps must refine, for a latent model) is the minimum
    of the pooled map over the latents that hold the image: the padding latents to the model's multiple are left
    out (there the replicated last row / column can be lower than any latent of the image), and every image latent
    is counted (a cropped region can miss the least attended one, so that the chosen steps leave it unrefined)."""
    from yoda.models.latent import LatentAdapter
    from yoda.sampling.prepare import state_floor

    ad = LatentAdapter(lambda x: x[:, :, ::4, ::4], lambda z: z, lambda z, t, c: torch.zeros_like(z),
                       Schedule.linear(10), scale=4, latent_factor=4, latent_multiple=2)
    H, W = 12, 20  # latent grid 4 x 6 (padded to multiples of 8 HR pixels), the image on 3 x 5 of it
    assert tuple(ad.state_grid((H, W))) == (4, 6) and tuple(ad.state_extent((H, W))) == (3, 5)
    A = torch.ones(1, 1, H, W)
    A[..., H - 1, :] = 0.0  # the last HR row and column: replicated into the padding latents (pooled: 0 there)
    A[..., :, W - 1] = 0.0
    A[..., 0:4, 12:16] = 0.5  # the least attended image latent: row 0, column 3
    pooled = ad.attention_to_state(A, torch.Size((1, 1, 4, 6)))
    assert pooled[..., 3, :].max().item() == 0.0 and pooled[..., :, 5].max().item() == 0.0  # the padding
    want = pooled[..., :3, :5].min().item()
    assert want == 0.5
    assert state_floor(ad, A) == want
