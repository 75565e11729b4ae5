"""Zero-terminal-SNR schedules (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"):
alpha_bar[T-1] = 0, the last beta exactly 1. The step coefficients at alpha_bar = 0 against the float64 closed
forms of the papers, and yoda.sample's DDIM / DDPM with such a schedule against diffusers' DDIMScheduler /
DDPMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing") on a toy v- / x0-prediction model.
(DiffBIR v2.1's samplers: tests/test_diffbir.py; the schedule itself: tests/test_schedule.py.)"""

import math
import warnings

import pytest
import torch

import yoda
import yoda_kernels as yk
from yoda.adapters import CallableAdapter
from yoda.schedule import Schedule

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler, DDPMScheduler

pytestmark = pytest.mark.usefixtures("one_thread")

T = 1000
BACKENDS = [b for b in yk.available_backends("cpu") if b != "triton"]


def _x0_eps(prediction, x, out, ab):
    """(x0, eps) of a model output, from x_t = sqrt(ab) x0 + sqrt(1 - ab) eps and v = sqrt(ab) eps - sqrt(1 - ab) x0
    (Salimans & Ho 2022); at ab = 0 these read x0 = -v, eps = x_t (v) and eps = x_t (x0)."""
    sa, s1 = math.sqrt(ab), math.sqrt(1 - ab)
    if prediction == "x0":
        return out, (x - sa * out) / s1
    return sa * x - s1 * out, s1 * x + sa * out


# ==========================================================================================================
# Step coefficients at alpha_bar = 0
# ==========================================================================================================
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("ddim", 0.4)])
def test_step_from_pure_noise_is_the_closed_form(backend, prediction, sampler, eta):
    """ab_t = 0: DDPM's posterior (Ho et al. eq. 7, alpha_t = ab_t / ab_prev = 0) has mean sqrt(ab_prev) x0 and
    variance 1 - ab_prev; DDIM (Song et al. eq. 12, 16) sigma = eta sqrt(1 - ab_prev). Evaluated in float64 here
    from x0 and eps, against the fused step."""
    g = torch.Generator().manual_seed(3)
    x, out, c, z = (torch.randn(2, 3, 19, 23, generator=g) for _ in range(4))
    ab_prev = 0.037  # the second visited level of a rescaled schedule is small
    coefs = yk.step_coefficients(0.0, ab_prev, prediction=prediction, sampler=sampler, eta=eta)
    assert all(math.isfinite(v) for v in coefs)
    got = yk.masked_step(x, out, c, None, coefs=coefs, noise=z, backend=backend)
    x0, eps = _x0_eps(prediction, x.double(), out.double(), 0.0)
    if prediction == "v":
        assert torch.equal(x0, -out.double()) and torch.equal(eps, x.double())
    if sampler == "ddpm":
        want = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * z.double()
    else:
        sigma = eta * math.sqrt(1 - ab_prev)
        want = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma ** 2) * eps + sigma * z.double()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    # the limit ab_t -> 0 of the general coefficients (continuous, at the rate sqrt(ab_t): nothing special at 0)
    near = yk.step_coefficients(1e-16, ab_prev, prediction=prediction, sampler=sampler, eta=eta)
    for a, b in zip(coefs, near):
        assert abs(a - b) <= 1e-6, (coefs, near)


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_at_pure_noise_and_masked_first_step(backend):
    """init_coefficients(0): x_T is the noise everywhere (the LR branch is 0 * c + 1 * z, not c); the first masked
    step holds inactive pixels at sqrt(ab_prev) c + sqrt(1 - ab_prev) z."""
    g = torch.Generator().manual_seed(5)
    c, z0, z1, out = (torch.randn(1, 3, 16, 20, generator=g) for _ in range(4))
    A = torch.rand(1, 1, 16, 20, generator=g)
    k = yk.init_coefficients(0.0)
    assert (k.la, k.lb, k.sigma) == (0.0, 1.0, 1.0)
    x = yk.masked_step(c, c, c, A, 0.5, coefs=k, noise=z0, backend=backend)
    assert torch.equal(x, z0)
    ab_prev = 0.02
    x1 = yk.masked_step(x, out, c, A, 0.5, coefs=yk.step_coefficients(0.0, ab_prev, prediction="v"), noise=z1,
                        backend=backend)
    active = (A >= 0.5).expand_as(x)
    held = math.sqrt(ab_prev) * c + math.sqrt(1 - ab_prev) * z1
    sr = math.sqrt(ab_prev) * -out + math.sqrt(1 - ab_prev) * z1
    torch.testing.assert_close(x1[~active], held[~active], rtol=0, atol=1e-6)
    torch.testing.assert_close(x1[active], sr[active], rtol=0, atol=1e-6)


def test_errors_at_zero_name_the_argument():
    with pytest.raises(ValueError, match="prediction='eps'"):
        yk.step_coefficients(0.0, 0.5, prediction="eps")
    with pytest.raises(ValueError, match="ab_prev"):
        yk.step_coefficients(0.0, 0.0, prediction="v")  # a step must end with some signal
    with pytest.raises(ValueError, match="ab_t"):
        yk.step_coefficients(-1e-9, 0.5, prediction="v")
    with pytest.raises(ValueError, match="ab_T"):
        yk.init_coefficients(-0.1)
    # yoda.sample refuses an eps model on a zero-SNR schedule before calling it, naming prediction
    calls = []
    eps_model = CallableAdapter(lambda x, t, c: calls.append(1) or torch.zeros_like(x), prediction="eps",
                                schedule=Schedule.scaled_linear(50).rescale_zero_terminal_snr())
    lr = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="prediction='eps'"):
        yoda.sample(eps_model, lr, steps=5, progress=False, seed=0)
    assert calls == []
    # ... unless the visited steps stay off alpha_bar = 0 ("leading" ends at index 40 of 50)
    assert yoda.sample(eps_model, lr, steps=5, spacing="leading", progress=False, seed=0).shape == (1, 3, 16, 16)


# ==========================================================================================================
# yoda.sample against diffusers' schedulers with rescale_betas_zero_snr=True
# ==========================================================================================================
def toy(prediction):
    """A small deterministic model of x_t, t and the condition (tame outputs for v or x0)."""
    def fn(x, t, cond):
        tf = t.float().view(-1, 1, 1, 1) / T
        h = torch.tanh(0.9 * x + 0.6 * cond - 0.4 * tf) - 0.25 * x.roll(1, dims=-1) * (1 - tf)
        return 0.8 * h if prediction == "v" else torch.tanh(h + cond)
    return fn


def _schedulers(cls, prediction, clip, **kw):
    return cls(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
               rescale_betas_zero_snr=True, prediction_type={"v": "v_prediction", "x0": "sample"}[prediction],
               timestep_spacing="trailing", clip_sample=clip, **kw)


def _yoda_states(prediction, lr, noises, clip, **kw):
    sched = Schedule.scaled_linear(T, 0.00085, 0.012).rescale_zero_terminal_snr()
    ad = CallableAdapter(toy(prediction), prediction=prediction, schedule=sched, clip_x0=clip)
    states = []
    yoda.sample(ad, lr, noise=noises, progress=False, lower_bound=1.0, callback=lambda d: states.append(d["x"]),
                **kw)
    return states, ad


@pytest.mark.parametrize("prediction, steps, eta, clip", [("v", 10, 0.0, False), ("v", 25, 0.8, False),
                                                          ("v", 50, 0.5, True), ("x0", 20, 0.0, False)])
def test_ddim_equals_diffusers_zero_snr(prediction, steps, eta, clip):
    """DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing"): the first step is at index T-1,
    alpha_bar = 0 (steps divides T, so diffusers' prev_timestep = t - T // steps is the next visited index).
    Not eta = 1: there diffusers' first step is NaN, sqrt(1 - ab_prev - std**2) of a float32 std**2 that rounds
    above 1 - ab_prev (yoda clamps the radicand at 0; eta = 1 is in test_step_from_pure_noise_is_the_closed_form)."""
    lr = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noises = torch.randn(steps + 1, 1, 3, 24, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        states, ad = _yoda_states(prediction, lr, noises, clip, steps=steps, sampler="ddim", eta=eta)
        assert ad.schedule.pairs(steps)[0][:2] == (T - 1, 0.0)
        d = _schedulers(DDIMScheduler, prediction, clip)
        d.set_timesteps(steps)
        assert d.timesteps[0] == T - 1 and d.alphas_cumprod[-1] == 0
        x, cond, ref = noises[0], yoda.adapters.upsample(lr, 4), []
        for i, t in enumerate(d.timesteps):
            out = toy(prediction)(x, torch.full((1,), int(t)), cond)
            x = d.step(out, t, x, eta=eta, variance_noise=noises[i + 1] if eta > 0 else None).prev_sample
            ref.append(x)
    err = max((a - b).abs().max().item() for a, b in zip(states, ref))
    assert all(torch.isfinite(r).all() for r in ref) and max(r.abs().max().item() for r in ref) < 10
    # diffusers builds the schedule in float32 (alpha_bar to ~1e-7 relative); yoda in float64
    assert err <= 1e-5, err


@pytest.mark.parametrize("prediction, steps", [("v", 10), ("v", 40), ("x0", 20)])
def test_ddpm_equals_diffusers_zero_snr(prediction, steps):
    """DDPMScheduler(rescale_betas_zero_snr=True, "trailing"), fixed-small variance: its noise comes from a
    generator, one draw per step; yoda gets the same draws as explicit noise."""
    lr = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(4)) * 2 - 1
    shape = (1, 3, 24, 20)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    draws = [torch.randn(shape, generator=g) for _ in range(steps)]
    with torch.no_grad():
        states, _ = _yoda_states(prediction, lr, torch.stack([x_T, *draws]), False, steps=steps, sampler="ddpm")
        d = _schedulers(DDPMScheduler, prediction, False)
        d.set_timesteps(steps)
        gen = torch.Generator().manual_seed(6)
        x, cond, ref = x_T, yoda.adapters.upsample(lr, 4), []
        for t in d.timesteps:
            out = toy(prediction)(x, torch.full((1,), int(t)), cond)
            x = d.step(out, t, x, generator=gen).prev_sample
            ref.append(x)
    assert len(states) == len(ref) == steps
    err = max((a - b).abs().max().item() for a, b in zip(states, ref))
    assert all(torch.isfinite(r).all() for r in ref) and max(r.abs().max().item() for r in ref) < 10
    assert err <= 1e-5, err


def test_schedule_from_a_diffusers_config_with_rescale_betas_zero_snr():
    from yoda.models import schedule_from_diffusers

    cfg = dict(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
               prediction_type="v_prediction", rescale_betas_zero_snr=True)
    sched, pred = schedule_from_diffusers(cfg)
    assert pred == "v" and sched.zero_terminal_snr
    assert sched == Schedule.scaled_linear(T, 0.00085, 0.012).rescale_zero_terminal_snr()
    assert not schedule_from_diffusers({**cfg, "rescale_betas_zero_snr": False})[0].zero_terminal_snr
