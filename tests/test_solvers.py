"""The sigma-space solvers of yoda.sample (yoda.sampling.solvers): sigma schedules and the sigma <-> t mapping,
the plain solvers against diffusers' schedulers and against k-diffusion's formulas written out here in float64,
the YODA path against a float64 transcription of DESIGN.md §5b (a woken pixel's history), the plain-path identity,
tiled windows, backends, the fractional t the adapters see, errors and the CLI.

Model: SD's scaled_linear schedule (T = 1000, as DiffBIR's) as diffusers holds it (its float32 alphas_cumprod, so
that both sides start from the same table), a random 3x3 conv on 8x8 LR images at scale 2, 10 steps (the uniform
schedule then visits integer timesteps, where diffusers' linear and k-diffusion's log-sigma interpolation agree),
so the file runs in seconds on a CPU.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import yoda
import yoda_kernels as K
from yoda.adapters import CallableAdapter, PixelAdapter, upsample
from yoda.sampling import solvers as S
from yoda.schedule import Schedule

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module
    from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           HeunDiscreteScheduler)

pytestmark = pytest.mark.usefixtures("one_thread")

T, STEPS, SCALE = 1000, 10, 2
SD = dict(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _diffusers_schedule() -> Schedule:
    ac = EulerDiscreteScheduler(**SD).alphas_cumprod.double()
    return Schedule.from_betas(1 - ac / torch.cat([ac.new_ones(1), ac[:-1]]))


SCHED = _diffusers_schedule()
LOGS = np.log(np.sqrt((1 - SCHED.alphas_cumprod.numpy()) / SCHED.alphas_cumprod.numpy()))
DIFFUSERS_PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
TOL = 1e-5  # every solver's plain path against its reference (issue 14)


# ------------------------------------------------------------------------------------------------------------
# Tiny models: a bounded x0 guess tanh(conv(cat(cond, x)) * mod) from a random 3x3 conv, modulated by the timestep
# (CallableAdapter) or by SR3's noise level sqrt(ab) (PixelAdapter), returned as eps, x0 or v at the model's own
# ab (from t by log-sigma interpolation, or level**2), so that the trajectories stay bounded as a denoiser's do
# ------------------------------------------------------------------------------------------------------------
class Net(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.copy_(torch.randn(3, generator=g) * 0.1)

    def forward(self, inp, mod):
        return self.conv(inp) * mod.reshape(-1, 1, 1, 1).to(inp.dtype)


def ab_of_t(t):
    """alpha_bar at a (fractional) timestep index, float64 (B,): log sigma interpolated."""
    t = t.double().clamp(0, T - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=T - 1)
    logs = torch.from_numpy(LOGS)
    log_sigma = (1 - (t - lo)) * logs[lo] + (t - lo) * logs[hi]
    return 1 / (1 + torch.exp(2 * log_sigma))


def toy(net, prediction, x, cond, ab, mod):
    x0 = torch.tanh(net(torch.cat([cond.to(x.dtype), x], 1), mod))
    a = torch.as_tensor(ab, dtype=torch.float64).reshape(-1, 1, 1, 1)
    sa, s1a = a.sqrt().to(x.dtype), (1 - a).sqrt().to(x.dtype)
    if prediction == "x0":
        return x0
    eps = (x - sa * x0) / s1a
    return eps if prediction == "eps" else sa * eps - s1a * x0


def time_fn(net, prediction="eps"):
    """f(x, t, cond) for CallableAdapter, modulated by 0.5 + t / T (t fractional for the solvers)."""
    return lambda x, t, cond: toy(net, prediction, x, cond, ab_of_t(t), 0.5 + t.to(x.dtype) / T)


def level_net(net, prediction="eps"):
    """net(cat(up, x), level) for PixelAdapter, modulated by 0.5 + sqrt(ab)."""
    return lambda inp, level: toy(net, prediction, inp[:, 3:], inp[:, :3], level.double() ** 2, 0.5 + level)


def lr_image(B=1, h=8, w=8, seed=0):
    return torch.rand(B, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def attention_map(B=1, h=8, w=8, seed=1):
    return torch.rand(B, 1, h, w, generator=torch.Generator().manual_seed(seed))


def noises(shape, n, seed=100):
    return [torch.randn(shape, generator=torch.Generator().manual_seed(seed + k)) for k in range(n)]


def sample(model, lr, **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("progress", False)
    kw.setdefault("backend", "naive")
    xs = []
    out = yoda.sample(model, lr, callback=lambda d: xs.append(d["x"].clone()), **kw)
    return out, xs


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------------------------
# Sigma schedules and the sigma <-> t mapping
# ------------------------------------------------------------------------------------------------------------
def test_sigma_schedules_follow_the_formulas_and_diffusers():
    smin, smax = math.exp(LOGS[0]), math.exp(LOGS[-1])
    n = STEPS
    ramp = np.linspace(0, 1, n)
    karras = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7  # Karras et al. eq. 5
    expo = np.exp(np.linspace(math.log(smax), math.log(smin), n))
    t = np.linspace(T - 1, 0, n)  # k-diffusion's DiscreteSchedule.get_sigmas: uniform in t, log sigma interpolated
    lo, hi = np.floor(t).astype(int), np.ceil(t).astype(int)
    uniform = np.exp((1 - (t - lo)) * LOGS[lo] + (t - lo) * LOGS[hi])
    for kind, want in (("karras", karras), ("exponential", expo), ("uniform", uniform)):
        got = S.make_sigmas(kind, n, SCHED)
        assert len(got) == n + 1 and got[-1] == 0.0
        np.testing.assert_allclose(got[:-1], want, rtol=1e-13, atol=0)
    # diffusers' (its float32 sigmas)
    for kind, flag in (("karras", "use_karras_sigmas"), ("exponential", "use_exponential_sigmas")):
        d = EulerDiscreteScheduler(**SD, **{flag: True})
        d.set_timesteps(n)
        np.testing.assert_allclose(S.make_sigmas(kind, n, SCHED), d.sigmas.double().numpy(), rtol=3e-7, atol=0)
    # one step: sigma_max only; an explicit sequence, with or without its trailing 0
    assert S.make_sigmas("karras", 1, SCHED) == (pytest.approx(smax, rel=1e-14), 0.0)
    assert S.make_sigmas([3.0, 1.0, 0.5, 0.0], None, SCHED) == S.make_sigmas(torch.tensor([3.0, 1.0, 0.5]), 3,
                                                                             SCHED) == (3.0, 1.0, 0.5, 0.0)


def test_sigma_to_t_is_log_sigma_interpolation():
    logs = S.log_sigmas(SCHED)
    g = np.random.default_rng(0)
    sig = np.exp(g.uniform(LOGS[0] - 1, LOGS[-1] + 1, 200))
    want = np.interp(np.log(sig), LOGS, np.arange(T))  # clamped to [0, T - 1] outside the table
    got = np.array([S.sigma_to_t(float(s), logs) for s in sig])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    for idx in (0, 1, 417, T - 1):  # the discrete sigmas map to their index, and back
        assert S.sigma_to_t(math.exp(logs[idx]), logs) == pytest.approx(idx, abs=1e-9)
        assert S.t_to_sigma(float(idx), logs) == math.exp(logs[idx])
    assert S.t_to_sigma(S.sigma_to_t(0.7, logs), logs) == pytest.approx(0.7, rel=1e-12)
    # a table ending in two equal sigmas (a last beta below 2^-53) divided by zero at its largest sigma
    flat = logs[:-1] + [logs[-2]]
    assert S.sigma_to_t(math.exp(flat[-1]), flat) == T - 2 and S.sigma_to_t(math.exp(logs[5]), flat) == 5


# ------------------------------------------------------------------------------------------------------------
# float64 transcription of k-diffusion's samplers (Karras et al. 2022 Alg. 2; DPM-Solver++ (Lu et al. 2022); the
# SDE forms of k-diffusion's sampling.py), run in VP form with YODA's masks (DESIGN.md §5b): with mask None it is
# the plain solver. d2_sign: the sign of the 1/2 in the third-order term (-1: k-diffusion's phi_3; +1:
# diffusers' sde-dpmsolver++ third-order update, see DESIGN.md §5b)
# ------------------------------------------------------------------------------------------------------------
def ref_ancestral(s, sn, eta):
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up)."""
    up = min(sn, eta * math.sqrt(sn**2 * (s**2 - sn**2) / s**2))
    return math.sqrt(sn**2 - up**2), up


def ref_loop(solver, x0_of, c, sigmas, zs, *, eta=1.0, mask_of=None, d2_sign=-1.0):
    """States after each step (VP form, float64). x0_of(x_vp, sigma) -> D; zs[k]: the noise of step k - 1 (zs[0]
    the start's); mask_of(i) -> bool mask of step i or None."""
    c = c.double()

    def s_of(sig):
        return 1 / math.sqrt(1 + sig * sig)

    def keep(i, sr, lr):
        m = None if mask_of is None else mask_of(i)
        return sr if m is None else torch.where(m, sr, lr)

    s0 = s_of(sigmas[0])
    x = keep(0, zs[0].double(), s0 * c + sigmas[0] * s0 * zs[0].double())
    hist, hs, states = [], [], []
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        z = zs[i + 1].double()
        lr_next = s_of(sn) * c + sn * s_of(sn) * z
        D = keep(i, x0_of(x, s), c)  # c where inactive
        past, newer = [], D  # the history rule: a pixel inactive at an entry's step takes the next newer entry
        for j, entry in enumerate(hist):
            m = None if mask_of is None else mask_of(i - 1 - j)
            newer = entry if m is None else torch.where(m, entry, newer)
            past.append(newer)
        xk = x / s_of(s)
        h = math.log(s / sn) if sn > 0 else None
        if solver in ("euler", "heun") or (solver == "euler_a" and sn == 0):
            d = (xk - D) / s
            xk_next = xk + d * (sn - s)
            if solver == "heun" and sn > 0:
                x2 = keep(i, s_of(sn) * xk_next, lr_next)
                D2 = keep(i, x0_of(x2, sn), c)
                d2 = (x2 / s_of(sn) - D2) / sn
                xk_next = xk + (d + d2) / 2 * (sn - s)
        elif solver == "euler_a":
            down, up = ref_ancestral(s, sn, eta)
            xk_next = xk + (xk - D) / s * (down - s) + up * z
        elif solver in ("dpm_2", "dpm_2_a", "dpmpp_2s_a"):
            # k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral / sample_dpmpp_2s_ancestral (s_churn = 0)
            down, up = ref_ancestral(s, sn, 0.0 if solver == "dpm_2" else eta)
            d = (xk - D) / s
            if down == 0:
                xk_next = xk + d * (down - s)
            else:
                sm = math.exp((math.log(s) + math.log(down)) / 2)  # sigma.log().lerp(sigma_down.log(), 0.5).exp()
                if solver == "dpmpp_2s_a":
                    t, t_next = -math.log(s), -math.log(down)
                    hh = t_next - t
                    x2k = (math.exp(-(t + hh / 2)) / math.exp(-t)) * xk - math.expm1(-hh / 2) * D
                else:
                    x2k = xk + d * (sm - s)
                lr_mid = s_of(sm) * c + sm * s_of(sm) * z  # inactive pixels: the LR at sigma_mid, the step's noise
                x2 = keep(i, s_of(sm) * x2k, lr_mid)
                D2 = keep(i, x0_of(x2, sm), c)
                if solver == "dpmpp_2s_a":
                    xk_next = (down / s) * xk - math.expm1(-hh) * D2
                else:
                    xk_next = xk + (x2 / s_of(sm) - D2) / sm * (down - s)
            if sn > 0:
                xk_next = xk_next + up * z
        elif sn == 0:
            xk_next = D  # the DPM++ solvers' last step
        elif solver == "dpmpp_2m":
            if not past:
                xk_next = (sn / s) * xk - math.expm1(-h) * D
            else:
                r = hs[0] / h
                xk_next = (sn / s) * xk - math.expm1(-h) * ((1 + 1 / (2 * r)) * D - 1 / (2 * r) * past[0])
        elif solver == "dpmpp_2m_sde":
            eh = eta * h
            xk_next = sn / s * math.exp(-eh) * xk - math.expm1(-h - eh) * D
            if past:
                xk_next = xk_next - 0.5 * math.expm1(-h - eh) * (hs[0] / h) ** -1 * (D - past[0])
            xk_next = xk_next + sn * math.sqrt(-math.expm1(-2 * eh)) * z
        elif solver == "dpmpp_3m_sde":
            he = h * (eta + 1)
            xk_next = math.exp(-he) * xk - math.expm1(-he) * D
            phi2 = math.expm1(-he) / he + 1
            if len(past) >= 2:
                r0, r1 = hs[0] / h, hs[1] / h
                d10, d11 = (D - past[0]) / r0, (past[0] - past[1]) / r1
                d1 = d10 + (d10 - d11) * r0 / (r0 + r1)
                d2 = (d10 - d11) / (r0 + r1)
                phi3 = phi2 / he + d2_sign * 0.5
                xk_next = xk_next + phi2 * d1 - phi3 * d2
            elif past:
                xk_next = xk_next + phi2 * (D - past[0]) / (hs[0] / h)
            xk_next = xk_next + sn * math.sqrt(-math.expm1(-2 * h * eta)) * z
        else:
            raise AssertionError(solver)
        x = keep(i, s_of(sn) * xk_next, lr_next)
        hist.insert(0, D)
        hs.insert(0, h)
        states.append(x)
    return states


def x0_fn64(net64, prediction, up, *, by="t", clip=False):
    """x0 of the float64 model at a VP state and sigma (the model as yoda calls it: t = sigma_to_t, or sqrt(ab))."""

    def f(x, sig):
        ab = 1 / (1 + sig * sig)
        if by == "t":
            t = torch.full((x.shape[0],), float(np.interp(math.log(sig), LOGS, np.arange(T))), dtype=torch.float64)
            out = time_fn(net64, prediction)(x, t, up.double())
        else:
            level = torch.full((x.shape[0], 1), math.sqrt(ab), dtype=torch.float64)
            out = level_net(net64, prediction)(torch.cat([up.double(), x], 1), level)
        if prediction == "eps":
            x0 = (x - math.sqrt(1 - ab) * out) / math.sqrt(ab)
        elif prediction == "x0":
            x0 = out
        else:
            x0 = math.sqrt(ab) * x - math.sqrt(1 - ab) * out
        return x0.clamp(-1, 1) if clip else x0

    return f


def models(prediction, by="t", clip=False, seed=0):
    net, net64 = Net(seed), Net(seed).double()
    if by == "t":
        ad = CallableAdapter(time_fn(net, prediction), prediction=prediction, schedule=SCHED, scale=SCALE,
                             clip_x0=clip)
    else:
        ad = PixelAdapter(level_net(net, prediction), SCHED, scale=SCALE, prediction=prediction, clip_x0=clip)
    return net, net64, ad


# ------------------------------------------------------------------------------------------------------------
# Plain solvers against diffusers (lower_bound >= 1 and attention=None)
# ------------------------------------------------------------------------------------------------------------
def _k_scheduler(cls, prediction, sigmas):
    kw = dict(**SD, prediction_type=DIFFUSERS_PRED[prediction], timestep_spacing="linspace")
    if sigmas == "karras":
        kw["use_karras_sigmas"] = True
    elif sigmas == "exponential":
        kw["use_exponential_sigmas"] = True
    d = cls(**kw)
    d.set_timesteps(STEPS)
    return d


def _run_k_diffusers(d, net, prediction, up, zs, patch=None):
    """diffusers' Euler / Euler-ancestral / Heun loop in k-space (x = x_vp / s), started at x_vp = zs[0]; the
    states at the solver's steps converted back to VP form."""
    f = time_fn(net, prediction)
    x = zs[0] * (1 + d.sigmas[0].double() ** 2).sqrt().float()
    states = []
    for j, t in enumerate(d.timesteps):
        inp = d.scale_model_input(x, t)
        out = f(inp, t.reshape(1).float(), up)
        if patch is not None:
            patch(j)
        x = d.step(out, t, x).prev_sample
        if getattr(d, "state_in_first_order", True) or j == len(d.timesteps) - 1:  # Heun: after its corrector
            sig = d.sigmas[d.step_index].double().item()
            states.append((x.double() / math.sqrt(1 + sig * sig)))
    return states


SOLVER_CASES = [("euler", "karras", p) for p in ("eps", "x0", "v")] + [
    ("euler", "exponential", "eps"), ("euler", "uniform", "v"),
    ("heun", "karras", "eps"), ("heun", "karras", "x0"), ("heun", "karras", "v"),
    ("euler_a", "uniform", "eps"), ("euler_a", "uniform", "v"),
]


@pytest.mark.parametrize("solver, sigmas, prediction", SOLVER_CASES)
def test_euler_heun_match_diffusers(solver, sigmas, prediction, monkeypatch):
    """Euler, Euler ancestral and Heun in yoda (VP state, masked_combine) against diffusers' k-space schedulers on a
    model of the fractional timestep, state by state, same noise. diffusers' ancestral Euler has no Karras option
    (its uniform schedule is tested here, Karras against the float64 transcription below)."""
    cls = {"euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler,
           "euler_a": EulerAncestralDiscreteScheduler}[solver]
    d = _k_scheduler(cls, prediction, sigmas)
    net, _, ad = models(prediction)
    lr = lr_image()
    up = upsample(lr, SCALE)
    zs = noises(up.shape, STEPS + 1)
    patch = None
    if solver == "euler_a":  # diffusers draws its ancestral noise in step(): hand it zs[i + 1]
        step_noise = {}
        monkeypatch.setattr(euler_a_module, "randn_tensor", lambda *a, **k: step_noise["z"])
        patch = lambda j: step_noise.update(z=zs[j + 1])  # noqa: E731
    with torch.no_grad():
        theirs = _run_k_diffusers(d, net, prediction, up, zs, patch)
    _, ours = sample(ad, lr, sampler=solver, sigmas=sigmas, noise=zs, clip=False)
    _, ours_lb = sample(ad, lr, sampler=solver, sigmas=sigmas, noise=zs, clip=False, attention=attention_map(),
                        lower_bound=1.0)
    assert len(ours) == len(theirs) == STEPS
    assert all(torch.equal(a, b) for a, b in zip(ours, ours_lb))  # lower_bound >= 1: the plain solver, bit for bit
    e = max(err(a, b) for a, b in zip(ours, theirs))
    assert e <= TOL, e


DPM_CASES = [("dpmpp_2m", 2, "dpmsolver++", "midpoint", p) for p in ("eps", "x0", "v")] + [
    ("dpmpp_2m_sde", 2, "sde-dpmsolver++", "midpoint", p) for p in ("eps", "x0", "v")] + [
    ("dpmpp_3m_sde", 3, "dpmsolver++", "heun", p) for p in ("eps", "v")]


@pytest.mark.parametrize("solver, order, algorithm, solver_type, prediction", DPM_CASES)
def test_dpm_solvers_match_diffusers(solver, order, algorithm, solver_type, prediction):
    """DPM++ 2M / 2M SDE / 3M against diffusers' DPMSolverMultistepScheduler (Karras sigmas), state by state, same
    model and noise. 3M here with eta = 0 (diffusers' third-order ODE update; its "heun" second-order warm-up step
    is k-diffusion's), and lower_order_final off (k-diffusion does not drop the order before the last step).
    diffusers rounds the timestep it hands the model, so the model here is conditioned on sqrt(ab) (SR3's)."""
    d = DPMSolverMultistepScheduler(**SD, prediction_type=DIFFUSERS_PRED[prediction],
                                    algorithm_type=algorithm, solver_order=order, solver_type=solver_type,
                                    use_karras_sigmas=True, lower_order_final=False)
    d.set_timesteps(STEPS)
    net, _, ad = models(prediction, by="level")
    lr = lr_image()
    up = upsample(lr, SCALE)
    zs = noises(up.shape, STEPS + 1)
    f = level_net(net, prediction)
    theirs, x = [], zs[0].clone()
    with torch.no_grad():
        for i, t in enumerate(d.timesteps):
            sig = d.sigmas[i].double().item()
            level = torch.full((1, 1), 1 / math.sqrt(1 + sig * sig), dtype=torch.float64).float()
            out = f(torch.cat([up, x], 1), level)
            x = d.step(out, t, x, variance_noise=zs[i + 1]).prev_sample
            theirs.append(x)
    eta = 0.0 if solver == "dpmpp_3m_sde" else None
    _, ours = sample(ad, lr, sampler=solver, eta=eta, noise=zs, clip=False)
    e = max(err(a, b) for a, b in zip(ours, theirs))
    assert len(ours) == STEPS and e <= TOL, e


def test_3m_sde_third_order_differs_from_diffusers_by_its_sign_of_one_half():
    """DPM++(3M) SDE: yoda follows k-diffusion (phi_3 = phi_2 / h_eta - 1/2; half the exponential integrator's
    weight on its second difference, DESIGN.md §5b); diffusers' sde-dpmsolver++ third-order update adds -1/2
    where k-diffusion has +1/2. With the same noise, diffusers' loop equals the float64 transcription with the sign
    flipped, and ours the transcription as k-diffusion writes it."""
    d = DPMSolverMultistepScheduler(**SD, algorithm_type="sde-dpmsolver++", solver_order=3,
                                    solver_type="heun", use_karras_sigmas=True, lower_order_final=False)
    d.set_timesteps(STEPS)
    net, net64, ad = models("eps", by="level")
    lr = lr_image()
    up = upsample(lr, SCALE)
    zs = noises(up.shape, STEPS + 1)
    theirs, x = [], zs[0].clone()
    with torch.no_grad():
        for i, t in enumerate(d.timesteps):
            sig = d.sigmas[i].double().item()
            level = torch.full((1, 1), 1 / math.sqrt(1 + sig * sig), dtype=torch.float64).float()
            x = d.step(level_net(net)(torch.cat([up, x], 1), level), t, x, variance_noise=zs[i + 1]).prev_sample
            theirs.append(x)
        sig = S.make_sigmas("karras", STEPS, SCHED)
        x0 = x0_fn64(net64, "eps", up, by="level")
        kd = ref_loop("dpmpp_3m_sde", x0, up, sig, zs)
        flipped = ref_loop("dpmpp_3m_sde", x0, up, sig, zs, d2_sign=1.0)
    _, ours = sample(ad, lr, sampler="dpmpp_3m_sde", noise=zs, clip=False)
    # the float32 network's rounding, which oneDNN's kernels make differ by CPU, grows over these SDE steps (eta 1):
    # 1.07e-5 at step 8 of 10 on an AVX-512 Xeon (2026-12-05), under 1e-5 on the machines before: twice TOL here,
    # a hundredth of the sign's effect
    assert max(err(a, b) for a, b in zip(ours, kd)) <= 2 * TOL
    assert max(err(a, b) for a, b in zip(theirs, flipped)) <= 2 * TOL
    assert err(theirs[-1], ours[-1]) > 200 * TOL  # a real difference, not rounding


# ------------------------------------------------------------------------------------------------------------
# Plain and YODA paths against the float64 transcription
# ------------------------------------------------------------------------------------------------------------
ALL = [("euler", None), ("euler_a", 1.0), ("euler_a", 0.5), ("heun", None), ("dpmpp_2m", None),
       ("dpmpp_2m_sde", 1.0), ("dpmpp_2m_sde", 0.0), ("dpmpp_3m_sde", 1.0), ("dpmpp_3m_sde", 0.3), ("dpm_2", None),
       ("dpm_2_a", 1.0), ("dpm_2_a", 0.5), ("dpmpp_2s_a", 1.0), ("dpmpp_2s_a", 0.0),
       # eta > 1: sigma_up reaches sigma_next on some steps, sigma_down is 0 (Euler to 0; it divided by 0)
       ("dpm_2_a", 1.5), ("dpmpp_2s_a", 1.5), ("euler_a", 1.5)]


@pytest.mark.parametrize("solver, eta", ALL)
@pytest.mark.parametrize("sigmas", ["karras", "exponential"])
def test_plain_solvers_match_kdiffusion_float64(solver, eta, sigmas):
    """Every solver and eta, plain, against k-diffusion's formulas in float64 (eps model of the fractional t)."""
    net, net64, ad = models("eps")
    lr = lr_image(B=2)
    up = upsample(lr, SCALE)
    zs = noises(up.shape, STEPS + 1)
    _, ours = sample(ad, lr, sampler=solver, eta=eta, sigmas=sigmas, noise=zs, clip=False)
    with torch.no_grad():
        ref = ref_loop(solver, x0_fn64(net64, "eps", up), up, S.make_sigmas(sigmas, STEPS, SCHED), zs,
                       eta=1.0 if eta is None else eta)
    e = max(err(a, b) for a, b in zip(ours, ref))
    assert len(ours) == STEPS and e <= TOL, e


@pytest.mark.parametrize("solver, eta", ALL)
def test_yoda_solvers_match_float64_transcription(solver, eta):
    """The YODA path (masks at the fractional t, LR held at the next sigma, no history before a pixel woke up, an
    x0-clipping v-model) against the float64 transcription of DESIGN.md §5b, Philox noise of the seed."""
    net, net64, ad = models("v", clip=True, seed=2)
    lr = lr_image(B=2, seed=3)
    A = attention_map(B=2, seed=4)
    up = upsample(lr, SCALE)
    A_hr = torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear")
    lb, seed = 0.5, 77
    sig = S.make_sigmas("karras", STEPS, SCHED)
    ts = [float(np.interp(math.log(s), LOGS, np.arange(T))) for s in sig[:-1]]
    masks = [(A_hr >= torch.tensor((t + 1) / T - lb, dtype=torch.float32)).expand_as(up) for t in ts]
    assert not masks[0].all() and not masks[2].all() and masks[-1].all()  # pixels wake up along the way
    zs = [K.philox.noise(seed, k, up.shape) for k in range(STEPS + 1)]
    seen = []
    out = yoda.sample(ad, lr, sampler=solver, eta=eta, attention=A, lower_bound=lb, seed=seed, steps=STEPS,
                      progress=False, backend="naive", callback=seen.append)
    with torch.no_grad():
        ref = ref_loop(solver, x0_fn64(net64, "v", up, clip=True), up, sig, zs, eta=1.0 if eta is None else eta,
                       mask_of=lambda i: masks[i])
    e = max(err(d["x"], b) for d, b in zip(seen, ref))
    assert e <= TOL, e
    assert [d["t"] for d in seen] == pytest.approx(ts, abs=1e-9)
    assert [d["sigma"] for d in seen] == list(sig[:-1])
    assert [d["tau"] for d in seen] == pytest.approx([(t + 1) / T - lb for t in ts], abs=1e-12)
    torch.testing.assert_close(out, ref[-1].float().clamp(-1, 1), rtol=0, atol=TOL)


def test_a_woken_pixel_has_no_history_and_takes_a_first_order_step():
    """DPM++(2M) at the first step where new pixels wake up: there the update is cx x + (cd0 + cd1) D (the first
    order step, DESIGN.md §5b), not cd1 times the earlier estimate held at c (the rule before: it extrapolated from
    the jump from the LR's x0 to the model's), nor the model's estimate of the step before at a pixel it skipped."""
    net, _, ad = models("eps")
    lr, A = lr_image(), attention_map()
    seen, xs = [], []
    yoda.sample(ad, lr, sampler="dpmpp_2m", attention=A, lower_bound=0.4, seed=5, steps=STEPS, progress=False,
                backend="naive", callback=lambda d: (seen.append(d), xs.append(d["x"])))
    up = upsample(lr, SCALE).double()
    A_hr = torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear").expand_as(up)
    plan = S.plan("dpmpp_2m", S.make_sigmas("karras", STEPS, SCHED), SCHED)
    checked = 0
    for k in range(1, STEPS - 1):
        tau_prev = torch.tensor(seen[k - 1]["tau"], dtype=torch.float32)
        tau = torch.tensor(seen[k]["tau"], dtype=torch.float32)
        woke = (A_hr < tau_prev) & (A_hr >= tau)
        if not woke.any():
            continue
        cf = plan[k].coefs
        x_before, d0 = xs[k - 1].double(), seen[k]["x0_hat"].double()
        want = cf.cx * x_before + (cf.cd0 + cf.cd1) * d0
        torch.testing.assert_close(xs[k].double()[woke], want[woke], rtol=0, atol=1e-5)
        for other in (up, seen[k - 1]["x0_hat"].double()):
            assert (xs[k].double()[woke] - (cf.cx * x_before + cf.cd0 * d0 + cf.cd1 * other)[woke]).abs().max() > 1e-3
        checked += int(woke.sum())
    assert checked > 0


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m_sde"])
def test_woken_pixels_follow_the_exact_ode(solver):
    """With Gaussian data x0 ~ N(mu, s^2) per pixel the denoiser is exact, D(x, sigma) = mu + s^2 / (s^2 + sigma^2)
    (x - mu), and so is the probability-flow ODE from a pixel's state x_k when it wakes up at sigma_k: it ends at
    mu + (x_k - mu) s / sqrt(s^2 + sigma_k^2), and the solver's last step returns D at sigma_min. At 40 steps the
    pixels that woke up mid-run end within 1.5e-3 of it (measured 7.0e-4 for 2M, 4.3e-4 for 3M); with their
    history held at c they ended 4.1e-3 and 3.6e-3 away (the error of the extrapolated jump)."""
    import math

    from yoda.adapters import PixelAdapter

    sched, s_data = Schedule.scaled_linear(1000), 0.1
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    c = upsample(lr, 2).double()
    mu = (c + 0.5 * torch.randn(c.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).clamp(-1, 1)
    A = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    def net(inp, level):  # SR3's input (cond, x) and noise level sqrt(ab); x0 prediction
        ab = float(level.double()[0, 0]) ** 2
        return (mu + s_data**2 / (s_data**2 + 1 / ab - 1) * (inp[:, 3:].double() / math.sqrt(ab) - mu)).float()

    seen = []
    yoda.sample(PixelAdapter(net, sched, scale=2, prediction="x0", clip_x0=False), lr, attention=A,
                lower_bound=0.5, sampler=solver, steps=40, seed=0, progress=False, backend="naive", clip=False,
                callback=lambda d: seen.append((d["tau"], d["sigma"], d["x"].double())),
                **({"eta": 0.0} if solver == "dpmpp_3m_sde" else {}))
    Ae, f32 = A.expand_as(c), lambda v: torch.tensor(v, dtype=torch.float32)
    want = torch.full_like(c, math.nan)
    s_min = seen[-1][1]
    for k in range(1, len(seen)):
        tau, sigma, _ = seen[k]
        woke = (Ae >= f32(tau)) & (Ae < f32(seen[0][0])) & want.isnan()
        x_k = seen[k - 1][2] * math.sqrt(1 + sigma * sigma)  # the state entering step k, in sigma space
        end = mu + (x_k - mu) * s_data**2 / math.sqrt((s_data**2 + sigma * sigma) * (s_data**2 + s_min * s_min))
        want = torch.where(woke, end, want)
    woken = ~want.isnan()
    assert int(woken.sum()) > 100
    assert (seen[-1][2] - want)[woken].abs().max() < 1.5e-3


@pytest.mark.parametrize("solver", S.SOLVERS)
def test_lower_bound_ge_1_and_all_active_are_the_plain_solver(solver):
    """lower_bound >= 1 (no mask) and an all-active mask (A = 1, l = 0: the mask path, the LR branch never taken)
    give the plain solver's image bit for bit; a real mask changes it."""
    _, _, ad = models("eps")
    lr, A = lr_image(), attention_map()
    plain, _ = sample(ad, lr, sampler=solver, seed=3)
    assert torch.equal(sample(ad, lr, sampler=solver, seed=3, attention=A, lower_bound=1.0)[0], plain)
    assert torch.equal(sample(ad, lr, sampler=solver, seed=3, attention=torch.ones_like(A), lower_bound=0.0)[0],
                       plain)
    assert not torch.equal(sample(ad, lr, sampler=solver, seed=3, attention=A, lower_bound=0.4)[0], plain)


def test_x0_model_of_the_lr_returns_it():
    """An x0-model that predicts c exactly ends at c with every solver, masks or not (ODE and SDE)."""
    lr = lr_image()
    up = upsample(lr, SCALE)
    ad = CallableAdapter(lambda x, t, cond: cond, prediction="x0", schedule=SCHED, scale=SCALE)
    for solver in S.SOLVERS:
        out, _ = sample(ad, lr, sampler=solver, seed=1, attention=attention_map(), lower_bound=0.3)
        torch.testing.assert_close(out, up, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Windows, backends, noise draws
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["heun", "dpmpp_3m_sde", "euler_a", "dpm_2_a"])
def test_tiled_windows_skipping_is_exact(solver):
    """Tiled denoising with inactive windows skipped equals dense tiled denoising bit for bit: a pixel's history
    holds only estimates of steps where it was active, so what the skipped windows would have predicted never
    enters (the two-call solvers' second model call skips the same windows)."""
    _, _, ad = models("eps")
    lr = lr_image(h=8, w=12)
    yy, xx = torch.linspace(0, 1, 16).view(16, 1), torch.linspace(0, 1, 24).view(1, 24)
    A = ((1 - yy) ** 3 * xx**2).view(1, 1, 16, 24)
    calls_skip, calls_dense = [], []
    kw = dict(sampler=solver, attention=A, lower_bound=0.5, seed=2, windows=(8, 2), window_batch=1, steps=STEPS,
              progress=False, backend="naive")
    a = yoda.sample(ad, lr, callback=lambda d: calls_skip.append(d["calls"]), **kw)
    kw["windows"] = (8, 2, False)
    b = yoda.sample(ad, lr, callback=lambda d: calls_dense.append(d["calls"]), **kw)
    assert torch.equal(a, b)
    assert sum(calls_skip) < sum(calls_dense)
    per_step = 12 * (2 if solver in ("heun", "dpm_2_a") else 1)
    assert calls_dense[:-1] == [per_step] * (STEPS - 1) and calls_dense[-1] == 12  # one call at the last step


def _state_buffers(shape) -> int:
    """How many distinct buffers of the state's shape are alive (the sampler's states, estimates, history)."""
    import gc

    with warnings.catch_warnings():  # (isinstance on torch.distributed's deprecated reduce_op warns)
        warnings.simplefilter("ignore", FutureWarning)
        return len({o.untyped_storage().data_ptr() for o in gc.get_objects()
                    if type(o) is torch.Tensor and tuple(o.shape) == tuple(shape) and not o.is_meta})  # (not a
        # FakeTensor another test's torch.compile left behind: it has no data pointer)


@pytest.mark.parametrize("solver, most_at_combine, windows", [
    ("dpmpp_3m_sde", 5, None), ("dpmpp_3m_sde", 5, (8, 2)), ("dpmpp_2m", 4, None), ("heun", 4, None),
    ("dpmpp_2s_a", 4, (8, 2))])
def test_solvers_hold_no_spare_state_and_the_callback_changes_nothing(solver, most_at_combine, windows,
                                                                      monkeypatch):
    """Issue 12's memory: at a solver's combine the sampler holds x, c, D0 and the history it reads, no more
    (dpmpp_3m_sde held 8 buffers: the model output, which the loop kept through the step, and torch.where copies of
    the history where the mask had grown; without a callback they are replaced in place), and at a two-call
    solver's second model call x, c, D0 and the predictor's state (the first output was held there too). The
    image is the one a callback sees, bit for bit (with a callback the history it was shown is not touched)."""
    import gc

    _, _, ad = models("eps")
    lr = lr_image(h=8, w=12)
    yy, xx = torch.linspace(0, 1, 16).view(16, 1), torch.linspace(0, 1, 24).view(1, 24)
    A = ((1 - yy) ** 3 * xx**2).view(1, 1, 16, 24)  # the mask grows over the steps
    kw = dict(sampler=solver, attention=A, lower_bound=0.5, seed=4, steps=6, progress=False, backend="naive",
              windows=windows, window_batch=None if windows is None else 1)
    shape = (1, 3, 16, 24)
    at_combine, at_model = [], []
    combine, fn = K.MaskedOps.combine, ad.fn

    def counted_combine(self, x, denoised, *a, **k):
        at_combine.append(_state_buffers(shape))
        return combine(self, x, denoised, *a, **k)

    def counted_fn(x, t, cond):
        if windows is None:  # (with windows: at the combine only; a count at each window's call took seconds)
            at_model.append(_state_buffers(shape))
        return fn(x, t, cond)

    monkeypatch.setattr(K.MaskedOps, "combine", counted_combine)
    monkeypatch.setattr(ad, "fn", counted_fn)
    gc.collect()
    before = _state_buffers(shape)  # (a failed test's traceback can hold some)
    got = yoda.sample(ad, lr, **kw)
    at_combine, at_model = [n - before for n in at_combine], [n - before for n in at_model]
    # x, c and D0, the history entries the step reads (3M: 2, 2M: 1), or the two-call solvers' D0 and D1
    assert max(at_combine) == most_at_combine
    # at a model call: x, c, the history; a two-call solver's second call: x, c, D0 and the predictor's x2
    assert windows or max(at_model) == (4 if solver in ("heun", "dpmpp_2s_a") else most_at_combine - 1)
    seen = []
    monkeypatch.setattr(K.MaskedOps, "combine", combine)
    monkeypatch.setattr(ad, "fn", fn)
    want = yoda.sample(ad, lr, callback=lambda d: seen.append(d["x0_hat"]), **kw)
    assert torch.equal(got, want)
    if solver.startswith("dpmpp_") and solver != "dpmpp_2s_a":  # the estimates the callback was shown, untouched
        again = []
        yoda.sample(ad, lr, callback=lambda d: again.append(d["x0_hat"].clone()), **kw)
        assert all(torch.equal(a, b) for a, b in zip(seen, again))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_states_history_is_replaced_in_place_with_a_callback_too(dtype, monkeypatch):
    """A float16 / bfloat16 state's history entries are its own casts of x0_hat, never shown to a callback (it gets
    the float32 estimate), so they are replaced in place with a callback as without one: at dpmpp_3m_sde's combine
    x, c, D0 and the two earlier estimates, and the float32 x0_hat the callback is given (a copy of each entry
    where the mask grew held two more). The image and the estimates the callback saw are those without it."""
    _, _, ad = models("eps")
    fn = ad.fn
    monkeypatch.setattr(ad, "fn", lambda x, t, c: fn(x.float(), t, c.float()).to(x.dtype))  # a float32 net
    lr = lr_image(h=8, w=12).to(dtype)
    yy, xx = torch.linspace(0, 1, 16).view(16, 1), torch.linspace(0, 1, 24).view(1, 24)
    A = ((1 - yy) ** 3 * xx**2).view(1, 1, 16, 24)
    kw = dict(sampler="dpmpp_3m_sde", attention=A, lower_bound=0.5, seed=4, steps=6, progress=False,
              backend="naive")
    shape, at_combine, seen = (1, 3, 16, 24), [], []
    combine = K.MaskedOps.combine

    def counted_combine(self, x, denoised, *a, **k):
        at_combine.append(_state_buffers(shape) - len(seen))  # (the x0_hats kept so far: the test's own)
        return combine(self, x, denoised, *a, **k)

    want = yoda.sample(ad, lr, **kw)
    monkeypatch.setattr(K.MaskedOps, "combine", counted_combine)
    before = _state_buffers(shape)
    got = yoda.sample(ad, lr, callback=lambda d: seen.append(d["x0_hat"]), **kw)
    assert max(at_combine) - before == 6
    assert torch.equal(got, want) and all(s.dtype == torch.float32 for s in seen)
    again = []
    monkeypatch.setattr(K.MaskedOps, "combine", combine)
    yoda.sample(ad, lr, callback=lambda d: again.append(d["x0_hat"].clone()), **kw)
    assert all(torch.equal(a, b) for a, b in zip(seen, again))


@pytest.mark.parametrize("backend", K.available_backends("cpu"))
@pytest.mark.parametrize("solver", ["dpmpp_3m_sde", "heun", "dpmpp_2s_a"])
def test_same_seed_same_image_on_every_backend(backend, solver):
    """The YODA path of a solver on every backend against the reference (masked_combine's kernels: C++, CUDA,
    Triton, as they land; until then the reference stands in for the compiled ones)."""
    if backend == "triton" and not hasattr(torch.ops.yoda, "masked_combine_triton"):
        pytest.skip("no Triton kernel of masked_combine yet")
    _, _, ad = models("eps")
    lr, A = lr_image(h=9, w=7), attention_map(h=9, w=7)
    # 4 steps under Triton's interpreter (10 took a minute a solver): the first step, the ones with one and two
    # earlier estimates (dpmpp_3m_sde's third order) and the last, with sigma' = 0; the kernels themselves are
    # checked against the reference in test_masked_combine.py
    kw = dict(sampler=solver, attention=A, lower_bound=0.5, seed=9, steps=4 if backend == "triton" else STEPS)
    got, _ = sample(ad, lr, backend=backend, **kw)
    ref, _ = sample(ad, lr, backend="naive", **kw)
    assert torch.equal(got, ref)  # same noise bits, same float32 order (DESIGN §9): the same image


def test_noise_draws_per_step(monkeypatch):
    """One noise entry per step: the plain ODE solvers draw only the start's; the SDE and ancestral solvers every
    step's but the last (sigma' = 0); with masks the LR branch draws at every step but the last."""
    _, _, ad = models("eps")
    lr = lr_image()
    draws = []
    real = K.philox.noise
    monkeypatch.setattr(K.philox, "noise", lambda *a, **k: draws.append(a[1]) or real(*a, **k))
    for solver, want in (("dpmpp_2m", [0]), ("heun", [0]), ("dpm_2", [0]), ("dpmpp_2m_sde", list(range(STEPS))),
                         ("euler_a", list(range(STEPS))), ("dpm_2_a", list(range(STEPS))),
                         ("dpmpp_2s_a", list(range(STEPS)))):
        draws.clear()
        sample(ad, lr, sampler=solver, seed=1)
        assert sorted(set(draws)) == want, solver
    draws.clear()
    sample(ad, lr, sampler="dpmpp_2m", seed=1, attention=attention_map(), lower_bound=0.5)
    assert sorted(set(draws)) == list(range(STEPS))
    draws.clear()
    sample(ad, lr, sampler="dpmpp_2m", seed=1, eta=0.0)  # eta 0 is allowed (no noise term) for every solver
    assert draws == [0]


# ------------------------------------------------------------------------------------------------------------
# What the adapters see
# ------------------------------------------------------------------------------------------------------------
def test_adapters_get_the_fractional_t_and_the_exact_ab():
    seen = []
    net = Net()

    def f(x, t, cond):
        seen.append(t.clone())
        return time_fn(net)(x, t, cond)

    lr = lr_image()
    sample(CallableAdapter(f, prediction="eps", schedule=SCHED, scale=SCALE), lr, sampler="heun", seed=0)
    sig = S.make_sigmas("karras", STEPS, SCHED)
    ts = [float(np.interp(math.log(s), LOGS, np.arange(T))) for s in sig[:-1]]
    want = [ts[0]] + [t for t in ts[1:] for _ in (0, 1)]  # Heun: the corrector's call at sigma_next, then the step
    assert all(t.dtype == torch.float32 and t.shape == (1,) for t in seen)
    assert [t.item() for t in seen] == pytest.approx(want, abs=1e-4)
    assert any(abs(t - round(t)) > 1e-3 for t in ts)  # fractional indeed
    levels = []
    sample(PixelAdapter(lambda inp, lv: levels.append(lv.double()) or net(inp, 0.5 + lv), SCHED, scale=SCALE), lr,
           sampler="dpmpp_2m", seed=0)
    np.testing.assert_allclose([lv.item() for lv in levels], [1 / math.sqrt(1 + s * s) for s in sig[:-1]],
                               rtol=1e-7)
    # ddpm / ddim keep the int64 index
    ints = []
    sample(CallableAdapter(lambda x, t, c: ints.append(t.dtype) or torch.zeros_like(x), prediction="eps",
                           schedule=SCHED, scale=SCALE), lr, sampler="ddim", seed=0)
    assert set(ints) == {torch.int64}


def test_srdiff_adapter_keeps_a_fractional_t():
    from yoda.models import SRDiff

    torch.manual_seed(0)
    net = SRDiff(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=2, timesteps=100).eval()
    ad = net.yoda_adapter()
    got = []
    real = net.forward
    net.forward = lambda x, t, *a: got.append(t) or real(x, t, *a)
    lr = lr_image(h=4, w=4)
    with torch.no_grad():
        prep = ad.prepare(lr)
        ad.denoise(torch.zeros(1, 3, 8, 8), torch.tensor([41.25]), 0.5, prep.cond)
        ad.denoise(torch.zeros(1, 3, 8, 8), torch.tensor([41]), 0.5, prep.cond)
    assert got[0].dtype == torch.float32 and got[0].item() == 41.25
    assert got[1].dtype == torch.int64 and got[1].item() == 41


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("solver", ["dpmpp_2m_sde", "heun"])
def test_nan_model_is_stopped_with_the_fractional_t_named(bad, solver):
    """The solver lets go of the model output before the state is checked; its finite_token still names the model
    output, also where the clipped x0 of an Inf output left the state finite."""
    ad = CallableAdapter(lambda x, t, c: torch.full_like(x, bad), prediction="eps", schedule=SCHED, scale=SCALE,
                         clip_x0=True)
    with pytest.raises(FloatingPointError, match=r"the model output has NaN or Inf at step 0 \(t index 999\) of 10 "
                                                 r"steps"):
        sample(ad, lr_image(), sampler=solver, seed=0)


@pytest.mark.parametrize("solver", ["heun", "dpm_2", "dpmpp_2s_a"])
def test_an_inf_second_model_call_is_the_model_outputs_fault(solver):
    """A two-call solver's second model output is checked with the first: an Inf there, clipped in x0, went
    unnoticed (the state stayed finite), and unclipped it was blamed on the state."""
    for clip in (True, False):
        n = [0]

        def fn(x, t, c):
            n[0] += 1
            return torch.full_like(x, float("inf")) if n[0] == 2 else torch.tanh(x) * 0.1

        ad = CallableAdapter(fn, prediction="eps", schedule=SCHED, scale=SCALE, clip_x0=clip)
        with pytest.raises(FloatingPointError, match=r"the model output has NaN or Inf at step 0 \(t index 999\)"):
            sample(ad, lr_image(), sampler=solver, seed=0, steps=4)


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, match", [
    (dict(sampler="ddpm", sigmas="karras"), ValueError, "sigmas applies to the sigma-space solvers"),
    (dict(sampler="ddim", sigmas=[1.0, 0.5]), ValueError, "sigmas applies"),
    (dict(sampler="euler", spacing="leading"), ValueError, "spacing applies to sampler='ddpm'"),
    (dict(sampler="ddpm", spacing="ldm_uniform", steps=10), ValueError, "spacing='ldm_uniform' is a DDIM discret"),
    (dict(sampler="ddpm", spacing="sd_leading", steps=10), ValueError, "spacing='sd_leading' is a DDIM discret"),
    (dict(sampler="euler", eta=0.5), ValueError, "eta applies to sampler='ddim' or 'euler_a'"),
    (dict(sampler="heun", eta=1.0), ValueError, "eta applies"),
    (dict(sampler="dpmpp_2m_sde", eta=-1.0), ValueError, "eta must be >= 0"),
    (dict(sampler="euler", sigmas="linear"), ValueError, "sigmas must be one of"),
    (dict(sampler="euler", sigmas=[1.0, 2.0]), ValueError, "sigmas must be strictly decreasing"),
    (dict(sampler="euler", sigmas=[1.0, -0.5]), ValueError, "sigmas must be finite and > 0"),
    (dict(sampler="euler", sigmas=[]), ValueError, "sigmas must hold"),
    (dict(sampler="euler", sigmas=[1.0, 1e-9]), ValueError, "sigmas: 1e-09 is too small to tell from no noise"),
    (dict(sampler="euler", sigmas=3.0), TypeError, "sigmas must be None"),
    (dict(sampler="euler", sigmas=[2.0, 1.0], steps=3), ValueError, r"steps \(3\) must be None or the number"),
    # the count and the echo are of what was given (they said 3 levels of [10, 3, 1, 0], and [10.0, 0.0] of [10, 0, 0])
    (dict(sampler="euler", sigmas=[10.0, 3.0, 1.0, 0.0], steps=4), ValueError,
     r"steps \(4\) must be None or the number of noise levels > 0 among the sigmas given \(3; a trailing 0 is"),
    (dict(sampler="euler", sigmas=[10.0, 0.0, 0.0]), ValueError,
     r"sigmas must be finite and > 0 \(a trailing 0 is allowed\), got \[10.0, 0.0, 0.0\]$"),
    (dict(sampler="euler", steps=10_001), ValueError, r"steps must be in \[1, 10000\] \(noise levels of sigmas=\)"),
    (dict(sampler="euler", sigmas="diffbir", steps=T + 1), ValueError, rf"steps must be in \[1, T={T}\]"),
    (dict(sampler="lms"), ValueError, "sampler must be one of .*dpmpp_3m_sde"),
    (dict(sampler="euler", timesteps="round"), ValueError, "timesteps must be one of"),
    (dict(sampler="ddpm", timesteps="nearest"), ValueError, "timesteps applies to the sigma-space solvers"),
])
def test_bad_arguments_name_the_argument(kw, exc, match):
    _, _, ad = models("eps")
    with pytest.raises(exc, match=match):
        yoda.sample(ad, lr_image(), progress=False, **kw)


def test_zero_terminal_snr_starts_at_diffbirs_alpha_bar_floor():
    """A zero-terminal-SNR schedule (sigma(T - 1) = inf) is read with alpha_bar[T - 1] = 1e-8 (sigma ~ 1e4), as
    DiffBIR's EDM sampler starts: every named schedule starts there, the model is called at t = T - 1 with ab = 1e-8,
    and the solver samples finitely; the other table entries are the schedule's own."""
    zsnr = SCHED.rescale_zero_terminal_snr()
    assert zsnr.alphas_cumprod[-1] == 0
    ab = S.table_alphas_cumprod(zsnr)
    assert ab[-1] == S.AB_FLOOR == 1e-8 and torch.equal(ab[:-1], zsnr.alphas_cumprod[:-1])
    assert S.table_alphas_cumprod(SCHED) is SCHED.alphas_cumprod  # a finite table is untouched
    logs = S.log_sigmas(zsnr)
    smax = math.sqrt((1 - 1e-8) / 1e-8)
    assert math.exp(logs[-1]) == pytest.approx(smax, rel=1e-12) and all(b > a for a, b in zip(logs, logs[1:]))
    for kind in ("karras", "exponential", "uniform", "diffbir"):
        sig = S.make_sigmas(kind, 6, zsnr)
        assert sig[0] == pytest.approx(smax, rel=1e-12) and all(math.isfinite(v) for v in sig), kind
        for timesteps in S.TIMESTEPS:
            st = S.plan("dpmpp_3m_sde", sig, zsnr, 1.0, timesteps)[0]
            assert st.t == T - 1 and st.ab == pytest.approx(1e-8, rel=1e-12), (kind, timesteps)
    ad = CallableAdapter(time_fn(Net(), "v"), prediction="v", schedule=zsnr, scale=SCALE)
    for sampler in ("dpmpp_2m", "heun"):
        seen = []
        out = yoda.sample(ad, lr_image(), sampler=sampler, steps=4, progress=False, seed=0, callback=seen.append)
        assert torch.isfinite(out).all() and seen[0]["t"] == pytest.approx(T - 1, abs=1e-9)
        assert seen[0]["sigma"] == pytest.approx(smax, rel=1e-12)
    # explicit sigmas: 1e4 is beyond the floor's sigma by a hair and maps to T - 1 too
    seen = []
    out = yoda.sample(ad, lr_image(), sampler="dpmpp_2m", sigmas=[1e4, 3.0, 1.0, 0.1], progress=False,
                      callback=seen.append)
    assert torch.isfinite(out).all() and seen[0]["t"] == T - 1 and 0 < seen[-1]["t"] < seen[-2]["t"]
    # where alpha_bar[T - 2] is itself <= 1e-8 (a zero-SNR linear(1e-4, 2e-2): 4.2e-9) the table's log-ab spacing
    # is continued one step instead, so the sigmas stay increasing
    lin = Schedule.linear(T).rescale_zero_terminal_snr()
    a = lin.alphas_cumprod
    assert a[-2] < 1e-8
    t_ab = S.table_alphas_cumprod(lin)
    assert t_ab[-1] == pytest.approx(float(a[-2]) ** 2 / float(a[-3]), rel=1e-12) and 0 < t_ab[-1] < a[-2]
    logs = S.log_sigmas(lin)
    assert all(b > a for a, b in zip(logs, logs[1:])) and math.isfinite(logs[-1])


def test_diffbir_sigmas_are_its_edm_schedule():
    """sigmas="diffbir": DiffBIR's EDMSampler.make_schedule (numpy's linspace(T - 1, 0, steps, endpoint=False) cast
    to int, the discrete sigmas there, the first at alpha_bar = 1e-8 on every schedule), for several T and steps."""
    for TT in (7, 50, 1000):
        for sched in (Schedule.scaled_linear(TT), Schedule.scaled_linear(TT).rescale_zero_terminal_snr()):
            ab_np = sched.alphas_cumprod.numpy()
            for steps in sorted({1, 2, 3, min(7, TT), min(10, TT), TT // 3 or 1, TT}):
                idx = np.linspace(TT - 1, 0, steps, endpoint=False).astype(int)
                assert S.diffbir_indices(steps, TT) == idx.tolist(), (TT, steps)
                ab = ab_np[idx].copy()
                ab[0] = 1e-8
                want = np.append(((1 - ab) / ab) ** 0.5, 0)
                got = S.make_sigmas("diffbir", steps, sched)
                np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
                # its sigmas are table sigmas: "nearest" calls the model at exactly DiffBIR's integer timesteps
                plan = S.plan("heun", got, sched, 0.0, "nearest")
                assert [st.t for st in plan] == [TT - 1] + idx[1:].tolist()
                assert [st.t_next for st in plan] == idx[1:].tolist() + [0]
                assert all(isinstance(st.t, int) for st in plan)
    assert S.diffbir_indices(10, 1000) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


def test_nearest_timesteps_are_the_nearest_log_sigma():
    """timesteps="nearest": the index of the discrete sigma nearest in log sigma (brute force here), an int, clamped
    to [0, T - 1] outside the table; the model gets it as int64, the mask's tau is §4's at that integer t."""
    logs = S.log_sigmas(SCHED)
    g = np.random.default_rng(1)
    for sig in np.exp(g.uniform(LOGS[0] - 1, LOGS[-1] + 1, 300)):
        want = int(np.argmin(np.abs(LOGS - math.log(sig))))
        assert S.sigma_to_nearest_t(float(sig), logs) == want
    mid = math.exp((logs[10] + logs[11]) / 2)  # a tie (up to rounding) goes to one of the two neighbours
    assert S.sigma_to_nearest_t(mid, logs) in (10, 11)
    seen, ts = [], []
    net = Net()

    def f(x, t, cond):
        ts.append(t.clone())
        return time_fn(net)(x, t.double(), cond)

    ad = CallableAdapter(f, prediction="eps", schedule=SCHED, scale=SCALE)
    _, _ = sample(ad, lr_image(), sampler="dpmpp_2m", seed=0, timesteps="nearest", attention=attention_map(),
                  lower_bound=0.5)
    sig = S.make_sigmas("karras", STEPS, SCHED)
    want = [int(np.argmin(np.abs(LOGS - math.log(s)))) for s in sig[:-1]]
    assert all(t.dtype == torch.int64 for t in ts) and [int(t) for t in ts] == want
    yoda.sample(ad, lr_image(), sampler="dpmpp_2m", seed=0, timesteps="nearest", attention=attention_map(),
                lower_bound=0.5, steps=STEPS, progress=False, callback=seen.append)
    assert [d["t"] for d in seen] == want
    assert [d["tau"] for d in seen] == [(t + 1) / T - 0.5 for t in want]


def test_explicit_sigmas_equal_the_named_schedule():
    _, _, ad = models("eps")
    lr = lr_image()
    named, _ = sample(ad, lr, sampler="dpmpp_2m_sde", seed=4)
    given, _ = sample(ad, lr, sampler="dpmpp_2m_sde", seed=4, steps=None,
                      sigmas=list(S.make_sigmas("karras", STEPS, SCHED)))
    assert torch.equal(named, given)
    # DiffBIR's EDM sampler: the schedule's own sigmas at its visited indices, the first at ab = 1e-8
    idx = np.linspace(T - 1, 0, 5, endpoint=False).astype(int)
    ab = SCHED.alphas_cumprod.numpy()[idx].copy()
    ab[0] = 1e-8
    with pytest.warns(UserWarning, match=r"^sigmas: 10000 is above the model's largest sigma 14\.6146: the state "
                                         r"starts at that noise level"):
        out, xs = sample(ad, lr, sampler="dpmpp_3m_sde", seed=4, steps=None, sigmas=np.sqrt((1 - ab) / ab).tolist())
    assert len(xs) == 5 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def test_cli_names_match_the_library():
    from yoda import adapters, cli_parser

    assert adapters.model_sampler(adapters.as_adapter(lambda x, t, c: x, prediction="eps",
                                                      schedule=SCHED, scale=2)) == "ddim"
    a = cli_parser.build_parser().parse_args(["upscale", "x.png", "-o", "y.png", "--sampler", "dpmpp_3m_sde",
                                              "--sigmas", "exponential"])
    assert (a.sampler, a.sigmas, a.eta) == ("dpmpp_3m_sde", "exponential", None)


def test_cli_upscale_with_a_solver(tmp_path, tiny_model, capsys):
    from PIL import Image

    from yoda.cli import main
    from yoda.images import load_image, to_uint8

    rng = np.random.default_rng(0)
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "out.png"
    code = main(["upscale", str(src), "-o", str(out), "--model", tiny_model, "--steps", "3", "--sampler",
                 "dpmpp_2m_sde", "--sigmas", "exponential", "--attention", "edge", "-q"])
    assert code == 0, capsys.readouterr().err
    model = yoda.load("yoda", tiny_model)
    lr = load_image(str(src))
    with torch.no_grad():
        want = yoda.sample(model, lr, attention="edge", steps=3, sampler="dpmpp_2m_sde",
                           sigmas="exponential", lower_bound=0.6, seed=0, progress=False)
    diff = np.abs(np.asarray(Image.open(out)).astype(int) - to_uint8(want)[0].astype(int))
    assert diff.max() <= 1
    code = main(["upscale", str(src), "-o", str(out), "--model", tiny_model, "--sampler", "ddim", "--sigmas",
                 "karras", "-q"])
    assert code == 2 and "sigmas" in capsys.readouterr().err


def test_numpy_and_0d_tensor_scalars_are_numbers():
    """steps=np.int64(3) and eta=np.float32(0.5) (what a sweep over np.arange / np.linspace gives) were refused
    ("eta must be a float, got float32"), while seed and lower_bound took them. They give the Python number's
    image; bools and tensors with more than one value are still refused, naming the argument."""
    _, _, ad = models("eps")
    lr = lr_image()
    want = yoda.sample(ad, lr, sampler="euler_a", steps=3, eta=0.5, seed=1, progress=False)
    for steps, eta in ((np.int64(3), np.float32(0.5)), (torch.tensor(3), torch.tensor(0.5, dtype=torch.float64))):
        got = yoda.sample(ad, lr, sampler="euler_a", steps=steps, eta=eta, seed=1, progress=False)
        assert torch.equal(got, want)
    for kw, match in ((dict(steps=True), "steps must be an int or None, got bool"),
                      (dict(steps=3.0), "steps must be an int or None, got float"),
                      (dict(steps=torch.tensor(3.0)), "steps must be an int or None, got tensor"),
                      (dict(steps=torch.tensor(True)), "steps must be an int or None, got tensor"),
                      (dict(steps=torch.tensor([3])), "steps must be an int or None, got tensor"),
                      (dict(eta=True), "eta must be a float, got bool"),
                      (dict(eta=torch.tensor([0.5])), r"eta must be a float, got tensor\(\[0.5000\]\)")):
        with pytest.raises(TypeError, match=match):
            yoda.sample(ad, lr, sampler="euler_a", progress=False, **{"steps": 3, **kw})


def test_explicit_sigmas_above_the_models_top_warn():
    """sigmas=[10, 1, 0.1] on a schedule whose largest sigma is 1.32 started the state at 10 but told the model
    t = T - 1 (k-diffusion's clamp), silently; now it warns, naming both. Sigmas within the table do not."""
    import warnings

    ad = yoda.adapters.as_adapter(lambda x, t, c: torch.zeros_like(x), prediction="eps",
                                  schedule=Schedule.linear(100, 1e-4, 2e-2))
    lr = torch.zeros(1, 3, 4, 4)
    with pytest.warns(UserWarning, match=r"sigmas: 10 is above the model's largest sigma 1\.323"):
        yoda.sample(ad, lr, sampler="euler", sigmas=[10, 1, 0.1], progress=False, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yoda.sample(ad, lr, sampler="euler", sigmas=[1.3, 0.1], progress=False, seed=0)
        yoda.sample(ad, lr, sampler="euler", sigmas="karras", steps=3, progress=False, seed=0)


def test_named_continuous_sigmas_take_more_steps_than_T():
    """sigmas="karras" with steps > T was refused ("steps must be in [1, T] (the model's training steps)") while the
    same noise levels given as a list ran: a solver's karras / exponential / uniform levels are continuous, as
    k-diffusion's. DiffBIR's discrete indices (and DDPM / DDIM's timesteps) keep [1, T]."""
    sch = Schedule.linear(10)
    ad = yoda.adapters.as_adapter(lambda x, t, c: 0.5 * x, prediction="eps", schedule=sch)
    lr = torch.rand(1, 3, 4, 4) * 2 - 1
    for kind in ("karras", "exponential", "uniform"):
        listed = yoda.sample(ad, lr, sampler="dpmpp_2m", sigmas=list(S.make_sigmas(kind, 30, sch)[:-1]), seed=0,
                             progress=False)
        named = yoda.sample(ad, lr, sampler="dpmpp_2m", sigmas=kind, steps=30, seed=0, progress=False)
        assert torch.equal(named, listed), kind
    with pytest.raises(ValueError, match=r"^steps must be in \[1, T=10\] \(the model's training steps\), got 11$"):
        yoda.sample(ad, lr, sampler="euler", sigmas="diffbir", steps=11, progress=False)
    with pytest.raises(ValueError, match=r"^steps must be in \[1, 10000\] \(noise levels of sigmas=\), got 10001$"):
        yoda.sample(ad, lr, sampler="euler", sigmas="karras", steps=10001, progress=False)
    with pytest.raises(ValueError, match=r"^steps must be in \[1, T=10\]"):
        yoda.sample(ad, lr, sampler="ddim", steps=11, progress=False)
    # a one-step schedule has one noise level: it said "sigmas must be strictly decreasing" of sigmas never given
    one = yoda.adapters.as_adapter(lambda x, t, c: 0.5 * x, prediction="eps", schedule=Schedule.linear(1))
    for kind in ("karras", "exponential", "uniform"):
        with pytest.raises(ValueError, match=rf"^sigmas={kind!r}: the schedule's noise levels span 0.0100005 to "
                                             rf"0.0100005 \(T = 1\), too few to give 5 distinct ones"):
            yoda.sample(one, lr, sampler="dpmpp_3m_sde", sigmas=kind, steps=5, progress=False)
    assert yoda.sample(one, lr, sampler="euler", sigmas="karras", steps=1, progress=False).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_a_float16_state_takes_an_x0_beyond_its_range(sampler):
    """At alpha_bar 1e-8 (sigmas="diffbir") an unclipped x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) reaches ~7e4, finite in
    float32 but Inf in float16: the cast before the combine made the state NaN at step 0 and NonFiniteError blamed
    the model. It is clamped to float16's largest value (DDIM's fused step computes x0 in float32 and never cast)."""
    lr = (torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).half()
    f = lambda x, t, c: 8 * torch.tanh(3 * x + c)  # noqa: E731 (eps far from the state's own)
    ad = CallableAdapter(f, prediction="eps", schedule=Schedule.linear(1000), clip_x0=False, scale=2)
    seen = []
    half = yoda.sample(ad, lr, steps=3, sampler=sampler, sigmas="diffbir", seed=0, progress=False,
                       callback=lambda r: seen.append(r["x0_hat"].abs().max().item()))
    assert max(seen) > torch.finfo(torch.float16).max  # the case itself
    full = yoda.sample(ad, lr.float(), steps=3, sampler=sampler, sigmas="diffbir", seed=0, progress=False)
    assert half.dtype == torch.float16 and (half.float() - full).abs().max() <= 2e-3
