"""yoda.sample and yoda.adapters: step math against diffusers, the YODA loop against an independent float64 loop,
the plain-sampler identity, masks, noise/seed conventions, attention forms, tiled denoising and bad inputs.

Sizes are tiny (LR 1x3x8x8, scale 2, T = 50, 5 steps) so the whole file runs in seconds on a CPU.
"""

import dataclasses
import math
import sys
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import yoda
import yoda_kernels as K
from yoda.adapters import Adapter, CallableAdapter, PixelAdapter, Prepared, as_adapter, upsample
from yoda.masks import active_fraction, mask_at
from yoda.schedule import Schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # small forwards: two threads spin against each other

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler, DDPMScheduler

EPS32 = 2.0**-24
T, STEPS, SCALE = 50, 5, 2
SCHED = Schedule.linear(T, 1e-4, 2e-2)
DIFFUSERS_PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SAMPLERS = [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)]
# Largest amplification of a float32 rounding by a step's coefficients over the visited indices: x0 from eps
# divides by sqrt(ab), eps from x0 by sqrt(1 - ab) (about 7 at idx 9 of this schedule)
AMP = max(1 / math.sqrt(min(a, 1 - a)) for a in SCHED.alphas_cumprod[SCHED.respace(STEPS)].tolist())


# ------------------------------------------------------------------------------------------------------------
# Tiny models
# ------------------------------------------------------------------------------------------------------------
class SR3Net(torch.nn.Module):
    """net(cat(up(lr), x_t), noise_level) -> eps: a random 3x3 conv, modulated by the noise level."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.copy_(torch.randn(3, generator=g) * 0.1)

    def forward(self, inp, level):
        assert level.shape == (inp.shape[0], 1)
        return self.conv(inp) * (0.5 + level.view(-1, 1, 1, 1))


def make_fn(net: SR3Net):
    """f(x_t, t, cond) for CallableAdapter built on the same conv, modulated by the integer index."""

    def f(x, t, cond):
        return net.conv(torch.cat([cond, x], dim=1)) * (1.0 + t.to(x.dtype).view(-1, 1, 1, 1) / T)

    return f


def lr_image(B=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, h, w, generator=g) * 2 - 1


def attention_map(B=1, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, h, w, generator=g)


# ------------------------------------------------------------------------------------------------------------
# Independent float64 references (DDPM: Ho et al. eq. 6-7; DDIM: Song et al. eq. 12; YODA: DESIGN.md §5)
# ------------------------------------------------------------------------------------------------------------
def ref_step(x, out, a, ap, prediction, sampler, eta, clip, z):
    """x_prev of the plain sampler in float64 for the respaced pair (a = ab_t, ap = ab_prev)."""
    x, out, z = x.double(), out.double(), z.double()
    if prediction == "eps":
        x0, eps = (x - math.sqrt(1 - a) * out) / math.sqrt(a), out
    elif prediction == "x0":
        x0, eps = out, (x - math.sqrt(a) * out) / math.sqrt(1 - a)
    else:
        x0, eps = math.sqrt(a) * x - math.sqrt(1 - a) * out, math.sqrt(a) * out + math.sqrt(1 - a) * x
    if clip:
        x0 = x0.clamp(-1, 1)
    if sampler == "ddpm":
        beta = 1 - a / ap
        mean = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - ap) / (1 - a) * x
        return mean + (math.sqrt((1 - ap) / (1 - a) * beta) * z if ap < 1 else 0)
    sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    return math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma**2) * eps + sigma * z


def ref_yoda_loop(model64, c, A, idxs, lower_bound, prediction, sampler, eta, clip, noises):
    """The YODA sampler written out in float64. model64(x, idx) -> output. Returns the list of states."""
    ab = SCHED.alphas_cumprod.tolist()
    c = c.double()

    def mask(idx):
        if A is None:
            return torch.ones_like(c, dtype=torch.bool)
        tau = torch.tensor((idx + 1) / T - lower_bound, dtype=torch.float32)
        return (A.float() >= tau).expand_as(c)

    a0 = ab[idxs[0]]
    z = noises[0].double()
    x = torch.where(mask(idxs[0]), z, math.sqrt(a0) * c + math.sqrt(1 - a0) * z)
    states = []
    for i, idx in enumerate(idxs):
        a, ap = ab[idx], (ab[idxs[i + 1]] if i + 1 < len(idxs) else 1.0)
        z = noises[i + 1].double()
        sr = ref_step(x, model64(x, idx), a, ap, prediction, sampler, eta, clip, z)
        x = torch.where(mask(idx), sr, math.sqrt(ap) * c + math.sqrt(1 - ap) * z)
        states.append(x)
    return states


def philox_noises(seed, shape, n):
    return [K.philox.noise(seed, k, shape) for k in range(n)]


def run(model, lr, **kw):
    kw.setdefault("steps", STEPS)
    kw.setdefault("progress", False)
    kw.setdefault("backend", "naive")
    return yoda.sample(model, lr, **kw)


def trajectory(model, lr, **kw):
    xs = []
    out = run(model, lr, callback=lambda d: xs.append(d["x"].clone()), **kw)
    return out, xs


# ------------------------------------------------------------------------------------------------------------
# Step math against diffusers
# ------------------------------------------------------------------------------------------------------------
def _diffusers_scheduler(prediction, sampler, clip, spacing):
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2,
              prediction_type=DIFFUSERS_PRED[prediction], clip_sample=clip, timestep_spacing=spacing)
    d = DDPMScheduler(**kw) if sampler == "ddpm" else DDIMScheduler(**kw)
    d.set_timesteps(STEPS)
    assert d.timesteps.tolist() == SCHED.respace(STEPS, spacing)
    return d


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("sampler, eta", SAMPLERS, ids=["ddpm", "ddim0", "ddim1"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_step_matches_diffusers(spacing, prediction, sampler, eta, clip):
    """Every (t, t_prev) pair of a 5-step schedule: same model output and noise -> same x_prev.

    Tolerance as flash-attention's tests: our float32 step must be as close to the float64 formula as
    diffusers' float32 step is (x2), plus a few float32 roundings of the largest term."""
    d = _diffusers_scheduler(prediction, sampler, clip, spacing)
    idxs = d.timesteps.tolist()
    ab = SCHED.alphas_cumprod.tolist()
    shape = (2, 3, 5, 7)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(idxs):
        x, out = torch.randn(shape, generator=g) * 1.5, torch.randn(shape, generator=g)
        z = torch.randn(shape, generator=torch.Generator().manual_seed(100 + i))  # what diffusers' DDPM draws
        a, ap = ab[t], (ab[idxs[i + 1]] if i + 1 < len(idxs) else 1.0)
        ours = K.masked_step(x, out, torch.zeros(shape), None, 0.0, ab_t=a, ab_prev=ap, prediction=prediction,
                             sampler=sampler, eta=eta, clip=clip, noise=z, backend="naive")
        if sampler == "ddpm":
            theirs = d.step(out, t, x, generator=torch.Generator().manual_seed(100 + i)).prev_sample
        else:
            theirs = d.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        ref = ref_step(x, out, a, ap, prediction, sampler, eta, clip, z)
        scale = max(1.0, ref.abs().max().item()) / math.sqrt(min(a, 1 - a))  # largest coefficient * |term|
        err_ours = (ours.double() - ref).abs().max().item()
        err_theirs = (theirs.double() - ref).abs().max().item()
        assert err_ours <= 2 * err_theirs + 8 * EPS32 * scale, (i, t, err_ours, err_theirs)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2 * err_theirs + 16 * EPS32 * scale)


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("sampler, eta", SAMPLERS, ids=["ddpm", "ddim0", "ddim1"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_sample_loop_matches_diffusers(prediction, sampler, eta, clip):
    """yoda.sample without attention == a diffusers scheduler loop, state by state, same model and noise."""
    spacing = "trailing"
    d = _diffusers_scheduler(prediction, sampler, clip, spacing)
    net = SR3Net()
    f = make_fn(net)
    lr = lr_image()
    up = upsample(lr, SCALE)
    shape = up.shape
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(100 + k)) for k in range(STEPS + 1)]
    theirs = []
    with torch.no_grad():
        x = noise[0].clone()  # init_noise_sigma = 1
        for i, t in enumerate(d.timesteps):
            out = f(x, torch.full((1,), int(t)), up)
            if sampler == "ddpm":
                x = d.step(out, t, x, generator=torch.Generator().manual_seed(100 + i + 1)).prev_sample
            else:
                x = d.step(out, t, x, eta=eta, variance_noise=noise[i + 1]).prev_sample
            theirs.append(x)
    adapter = CallableAdapter(f, prediction=prediction, schedule=SCHED, scale=SCALE, clip_x0=clip)
    sr, ours = trajectory(adapter, lr, sampler=sampler, eta=eta, noise=noise, spacing=spacing)
    assert len(ours) == STEPS
    for a, b in zip(ours, theirs):
        # a few float32 roundings per step on each side, amplified by <= AMP, over 5 steps
        torch.testing.assert_close(a, b, rtol=0, atol=64 * EPS32 * AMP * max(1.0, b.abs().max().item()))
    torch.testing.assert_close(sr, theirs[-1].clamp(-1, 1), rtol=0, atol=64 * EPS32 * AMP)


# ------------------------------------------------------------------------------------------------------------
# The YODA loop against the float64 reference
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, eta", SAMPLERS, ids=["ddpm", "ddim0", "ddim1"])
@pytest.mark.parametrize("kind", ["pixel", "callable"])
@pytest.mark.parametrize("masked", [True, False], ids=["yoda", "plain"])
def test_sample_matches_float64_loop(kind, sampler, eta, masked):
    """End to end with a tiny random conv eps-model, Philox noise from the seed (start: step 0, loop step i:
    step i + 1), masks at tau = (idx + 1) / T - l; compared with the loop written out in float64."""
    net = SR3Net(seed=3)
    net64 = SR3Net(seed=3).double()
    lr = lr_image(B=2, seed=4)
    A = attention_map(B=2, seed=5) if masked else None
    up = upsample(lr, SCALE)
    if kind == "pixel":
        model = PixelAdapter(net, SCHED, scale=SCALE)
        ab = SCHED.alphas_cumprod.tolist()

        def model64(x, idx):
            level = torch.full((x.shape[0], 1), math.sqrt(ab[idx]), dtype=torch.float64)
            return net64(torch.cat([up.double(), x], dim=1), level)
    else:
        model = CallableAdapter(make_fn(net), prediction="eps", schedule=SCHED, scale=SCALE)
        f64 = make_fn(net64)

        def model64(x, idx):
            return f64(x, torch.full((x.shape[0],), idx), up.double())

    seed = 1234
    lb = 0.75  # keeps some pixels inactive for three of the five steps (tau = 0.25, 0.05, ...)
    sr, ours = trajectory(model, lr, attention=A, sampler=sampler, eta=eta, seed=seed, lower_bound=lb)
    A_hr = None if A is None else torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear")
    with torch.no_grad():
        ref = ref_yoda_loop(model64, up, A_hr, SCHED.respace(STEPS), lb, "eps", sampler, eta, True,
                            philox_noises(seed, up.shape, STEPS + 1))
    for a, b in zip(ours, ref):
        # the float32 path differs from float64 by roundings of the step (a few eps * |x| * AMP) and of the
        # model, propagated through 5 steps: the same bound as against diffusers' float32 loop
        torch.testing.assert_close(a.double(), b, rtol=0, atol=64 * EPS32 * AMP * max(1.0, b.abs().max().item()))
    torch.testing.assert_close(sr.double(), ref[-1].clamp(-1, 1), rtol=0, atol=64 * EPS32 * AMP)
    if masked:
        # the reference's masks are not all-true at the first steps: the comparison tested the mask path
        assert not mask_at(A_hr, SCHED.respace(STEPS)[0] + 1, T, lb).all()


# ------------------------------------------------------------------------------------------------------------
# Plain-sampler identity and masks
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, eta", SAMPLERS, ids=["ddpm", "ddim0", "ddim1"])
def test_lower_bound_ge_1_is_the_plain_sampler_bit_for_bit(sampler, eta):
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(), attention_map()
    plain = run(model, lr, sampler=sampler, eta=eta, seed=7)
    for lb in (1.0, 2.5):
        assert torch.equal(run(model, lr, attention=A, lower_bound=lb, sampler=sampler, eta=eta, seed=7), plain)
    # the mask path itself is exact when every pixel is active: A = 1 and l = 0 gives tau <= 1 everywhere
    ones = torch.ones_like(A)
    assert torch.equal(run(model, lr, attention=ones, lower_bound=0.0, sampler=sampler, eta=eta, seed=7), plain)
    # and a real mask changes the image
    assert not torch.equal(run(model, lr, attention=A, lower_bound=0.6, sampler=sampler, eta=eta, seed=7), plain)


def test_inactive_pixels_hold_the_noised_lr_and_masks_grow():
    """Each step: pixels with A < tau are exactly sqrt(ab_prev) c + sqrt(1 - ab_prev) z (float32), the
    active set only grows, and the callback's active_fraction is that of yoda.masks."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(B=2), attention_map(B=2)
    c = upsample(lr, SCALE)
    A_hr = torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear")
    noise = torch.randn(STEPS + 1, *c.shape, generator=torch.Generator().manual_seed(3))
    seen = []
    run(model, lr, attention=A, noise=noise, callback=seen.append)
    idxs = SCHED.respace(STEPS)
    ab = SCHED.alphas_cumprod.tolist()
    prev_mask = torch.zeros_like(A_hr, dtype=torch.bool)
    assert [d["i"] for d in seen] == list(range(STEPS)) and [d["t"] for d in seen] == idxs
    for d in seen:
        i, idx = d["i"], d["t"]
        assert d["tau"] == pytest.approx((idx + 1) / T - 0.6)
        m = mask_at(A_hr, idx + 1, T, 0.6)
        assert (m | ~prev_mask).all()
        prev_mask = m
        torch.testing.assert_close(d["active_fraction"], active_fraction(A_hr, d["tau"]), rtol=0, atol=0)
        ap = ab[idxs[i + 1]] if i + 1 < STEPS else 1.0
        lr_branch = (torch.tensor(math.sqrt(ap), dtype=torch.float32) * c
                     + torch.tensor(math.sqrt(1 - ap), dtype=torch.float32) * noise[i + 1])
        inactive = ~m.expand_as(c)
        assert torch.equal(d["x"][inactive], lr_branch[inactive])
    fr = [d["active_fraction"].mean().item() for d in seen]
    assert fr == sorted(fr) and fr[0] < 0.9 and fr[-1] == 1.0


@pytest.mark.parametrize("spacing", ["sd_trailing", "trailing"])
def test_never_refined_pixels_end_at_the_lr_image(spacing):
    """A spacing whose last step ends at ab[0] (not 1) took the held pixels to sqrt(ab[0]) c + sqrt(1 - ab[0]) z
    with a fresh draw z at the last step (0.07 off c on the embedded schedule of this test, the noise entry's
    pattern); DESIGN §4 says they end at the LR image, as they do under "trailing". The refined pixels are not
    touched. Also: a caller's step count that leaves pixels at the LR image is warned of (with no count to try:
    explicit noise fixes it)."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    lr = lr_image()
    c = upsample(lr, SCALE)
    A = torch.zeros(1, 1, *lr.shape[-2:])
    A[..., lr.shape[-1] // 2:] = 1.0
    noise = torch.randn(STEPS + 1, *c.shape, generator=torch.Generator().manual_seed(5))
    with pytest.warns(UserWarning, match=r"at steps=5 with lower_bound 0.05, pixels whose attention is below 0\.\d+ keep "
                      r"the LR image \(the last step's threshold\); more steps or a larger lower_bound refine"):
        out = run(model, lr, attention=A, lower_bound=0.05, noise=noise, sampler="ddim", spacing=spacing)
    held = (torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear") == 0).expand_as(c)
    assert held.float().mean() > 0.3 and torch.equal(out[held], c[held])
    plain = run(model, lr, noise=noise, sampler="ddim", spacing=spacing)
    assert not torch.equal(out, plain)
    with warnings.catch_warnings():  # every pixel refined by the last step: nothing to say
        warnings.simplefilter("error")
        run(model, lr, attention=A, lower_bound=0.6, noise=noise, sampler="ddim", spacing=spacing)


def test_the_unrefined_warning_quotes_the_callers_count_and_never_fails_the_call():
    """The count the warning suggests was searched by making a spec of every count up to 50, and "ldm_uniform"
    refuses some (past T): yoda.sample(steps=2, spacing="ldm_uniform", lower_bound=0) raised, where it sampled
    before the warning. It quoted the steps visited (ldm_uniform visits more), and said nothing for explicit
    noise alone where the same call with steps= warned."""
    model = PixelAdapter(SR3Net().eval(), Schedule.linear(100, 1e-4, 2e-2), scale=SCALE)
    lr, A = lr_image(), attention_map().clone()
    A[..., : A.shape[-1] // 2] = 0.0
    for steps, lb in ((2, 0.0), (40, 0.001)):
        with pytest.warns(UserWarning, match=rf"at steps={steps} with lower_bound {lb:g}, pixels whose attention is "
                                             r"below 0\.0\d+ keep the LR image .*; a larger lower_bound refines"):
            run(model, lr, attention=A, lower_bound=lb, sampler="ddim", steps=steps, spacing="ldm_uniform")
    noise = list(torch.randn(6, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    for kw in (dict(), dict(steps=5)):
        with pytest.warns(UserWarning, match=r"at steps=5 with lower_bound 0.1, .*; more steps or a larger lower_b"):
            yoda.sample(model, lr, attention=A, lower_bound=0.1, sampler="ddim", noise=noise, progress=False, **kw)
    with pytest.warns(yoda.UnrefinedWarning, match=r"at steps=3 with lower_bound 0.1, .*; steps=10 refines every pix"):
        run(model, lr, attention=A, lower_bound=0.1, sampler="ddim", steps=3)
    with warnings.catch_warnings():  # its own category: a caller who chose the count silences it, and only it
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", yoda.UnrefinedWarning)
        run(model, lr, attention=A, lower_bound=0.1, sampler="ddim", steps=3)


def test_the_unrefined_warning_counts_from_the_maps_least_attention():
    """A map whose least attention is 0.3 (the caller's own, not min-max normalised) is refined everywhere once the
    last tau reaches 0.3; the warning searched for tau = 0 and said "a larger lower_bound refines every pixel" where
    a few more steps did. The count it names refines every pixel, and one fewer does not."""
    model = PixelAdapter(SR3Net().eval(), Schedule.linear(100, 1e-4, 2e-2), scale=SCALE)
    lr, A = lr_image(), 0.3 + 0.7 * attention_map()
    with pytest.warns(yoda.UnrefinedWarning, match=r"at steps=1 with lower_bound 0.01, .*; steps=(\d+) refines") as w:
        run(model, lr, attention=A, lower_bound=0.01, sampler="ddim", steps=1)
    n = int(re.search(r"steps=(\d+) refines", str(w[0].message))[1])
    last = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(model, lr, attention=A, lower_bound=0.01, sampler="ddim", steps=n, callback=lambda d: last.update(d))
    assert float(last["active_fraction"].min()) == 1.0
    with pytest.warns(yoda.UnrefinedWarning, match=rf"at steps={n - 1} with lower_bound 0.01, .*; steps={n} refines"):
        run(model, lr, attention=A, lower_bound=0.01, sampler="ddim", steps=n - 1)


def test_seed_none_draws_only_for_a_call_that_samples_with_it():
    """seed=None drew from torch's generator first thing, so a call refused for a bad argument, or one whose
    explicit noise= made the seed unused, still moved the user's random stream. It draws once the arguments are
    known good, and not at all with explicit noise; torch.manual_seed still reproduces the image."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    with pytest.raises(ValueError, match="sampler"):
        run(model, lr_image(), sampler="lms")
    # refused in prepare, after the spec was made: a window off the model's grid, a map of another batch (a
    # rejected request of a service moved the stream that its torch.manual_seed workflow relies on)
    srdiff = yoda.load("yoda", "default")
    with pytest.raises(ValueError, match="windows"):
        yoda.sample(srdiff, lr_image(h=8, w=8), attention="edge", windows=7, progress=False)
    with pytest.raises(ValueError, match="attention"):
        run(model, lr_image(), attention=torch.zeros(3, 1, 16, 16), steps=2)
    run(model, lr_image(), noise=[torch.zeros(1, 3, 16, 16)] * (STEPS + 1))
    assert torch.equal(torch.rand(4), want)
    torch.manual_seed(3)
    a = run(model, lr_image())
    torch.manual_seed(3)
    assert torch.equal(run(model, lr_image()), a) and not torch.equal(torch.rand(4), want)  # one draw: it moved


def test_explicit_noise_gives_the_step_count():
    """The docstring and README say explicit noise= gives the count where the call gives no steps; it did not:
    the embedded model with attention took its card's 1 step, refused noise of 3 entries ("must have 2"), and
    with 2 entries left a quarter of the pixels at the LR image. A model without steps of its own asked for T + 1."""
    net = yoda.load("yoda", "default")
    lr = lr_image(h=8, w=8)
    noise = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    seen = []
    got = yoda.sample(net, lr, attention="edge", noise=noise, progress=False, callback=seen.append)
    assert len(seen) == 3 and seen[-1]["active_fraction"].min() == 1.0
    assert torch.equal(got, yoda.sample(net, lr, attention="edge", noise=noise, steps=3, progress=False))
    f = CallableAdapter(lambda x, t, c: torch.zeros_like(x), prediction="eps", schedule=SCHED, scale=SCALE)
    assert run(f, lr_image(), noise=torch.randn(5, 1, 3, 16, 16), steps=None).shape == (1, 3, 16, 16)  # 4 steps


@pytest.mark.parametrize("sampler, key", [("ddim", "x"), ("dpmpp_2m", "x0_hat")])
def test_a_callback_cannot_change_the_image_in_place(sampler, key):
    """The docstring says an in-place op on the report's tensors is an error; the callback ran inside the loop's
    inference mode, where it is not: d["x"].mul_(0) changed the image by up to 0.96, and a solver's
    d["x0_hat"], its history, by 0.70. The callback now runs outside it."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    with pytest.raises(RuntimeError, match="[Ii]nplace update to inference tensor outside InferenceMode"):
        run(model, lr_image(), sampler=sampler, seed=0, callback=lambda d: d[key].mul_(0))
    kept, conv = [], torch.nn.Conv2d(3, 3, 1)  # a module with weights, as a decoder has: under no_grad, as documented
    run(model, lr_image(), sampler=sampler, seed=0,
        callback=lambda d: kept.append((d[key].clone().mul_(2), conv(d[key]))))
    assert len(kept) == STEPS  # a clone may be changed


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_callback_x0_hat_and_last_step(sampler):
    """d["x0_hat"] at every step is x0 of the model output in float64 (v-prediction: x0 = sqrt(ab) x - sqrt(1 - ab)
    v, clipped), from the state before the step; DDPM's last step with every pixel active returns x0_hat itself
    (coefficients 1 and 0)."""
    net, net64 = SR3Net(seed=2), SR3Net(seed=2).double()
    f64 = make_fn(net64)
    lr = lr_image(seed=6)
    up = upsample(lr, SCALE).double()
    model = CallableAdapter(make_fn(net), prediction="v", schedule=SCHED, scale=SCALE)
    seen = []
    sr = run(model, lr, seed=5, sampler=sampler, callback=seen.append)
    ab = SCHED.alphas_cumprod.tolist()
    x = K.philox.noise(5, 0, up.shape).double()  # attention=None: x_T is the step-0 noise itself
    assert [d["t"] for d in seen] == SCHED.respace(STEPS)
    clipped = 0
    for d in seen:
        a = ab[d["t"]]
        with torch.no_grad():
            v = f64(x, torch.full((1,), d["t"]), up)
        x0 = math.sqrt(a) * x - math.sqrt(1 - a) * v
        # float32 model and coefficients vs float64: a few roundings of terms <= ~AMP
        torch.testing.assert_close(d["x0_hat"].double(), x0.clamp(-1, 1), rtol=0, atol=16 * EPS32 * AMP)
        clipped += int((x0.abs() > 1).sum())
        x = d["x"].double()
    assert clipped > 0  # the clip was in play
    last = seen[-1]
    assert set(last) == {"i", "t", "tau", "x", "x0_hat", "active_fraction", "calls", "batches"}
    if sampler == "ddpm":
        torch.testing.assert_close(last["x"], last["x0_hat"], rtol=0, atol=4 * EPS32)
    assert torch.equal(sr, last["x"].clamp(-1, 1))
    assert last["calls"] == 1 and torch.equal(last["active_fraction"], torch.ones(1))


@pytest.mark.parametrize("space", ["pixel", "residual"])
def test_known_value_x0_model_returns_its_target(space):
    """An x0-model that predicts the clean state exactly ends there whatever the noise: up(lr) in pixel
    space, a zero residual (decoded to up(lr)) in SRDiff's residual space."""
    lr = lr_image()
    up = upsample(lr, SCALE)

    def f(x, t, cond):
        return cond if space == "pixel" else torch.zeros_like(x)

    model = CallableAdapter(f, prediction="x0", schedule=SCHED, scale=SCALE, space=space)
    for sampler, eta in SAMPLERS:
        sr = run(model, lr, sampler=sampler, eta=eta, seed=11, attention=attention_map())
        torch.testing.assert_close(sr, up, rtol=0, atol=4 * EPS32)


# ------------------------------------------------------------------------------------------------------------
# Seeds, backends, dtypes
# ------------------------------------------------------------------------------------------------------------
def test_seed_reproducibility():
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(), attention_map()
    a = run(model, lr, attention=A, seed=42)
    assert torch.equal(a, run(model, lr, attention=A, seed=42))
    assert not torch.equal(a, run(model, lr, attention=A, seed=43))
    torch.manual_seed(0)
    b = run(model, lr, attention=A)
    torch.manual_seed(0)
    assert torch.equal(b, run(model, lr, attention=A))
    # seed=None draws from torch's default generator: the same seed an explicit call would use
    torch.manual_seed(0)
    drawn = int(torch.randint(0, 2**32, (1,), dtype=torch.int64).item())
    assert torch.equal(b, run(model, lr, attention=A, seed=drawn))


@pytest.mark.parametrize("backend", K.available_backends("cpu"))
def test_same_seed_same_image_on_every_backend(backend):
    """Every backend, the reference included, against the YODA loop written out in float64 with the Philox noise
    of the seed; the fused backends also against the reference."""
    net, net64 = SR3Net(), SR3Net().double()
    model = PixelAdapter(net, SCHED, scale=SCALE)
    lr, A = lr_image(h=9, w=7), attention_map(h=9, w=7)  # odd sizes: ragged kernel tiles
    up = upsample(lr, SCALE).double()
    got = run(model, lr, attention=A, seed=9, backend=backend, sampler="ddim", eta=1.0)
    ab = SCHED.alphas_cumprod.tolist()

    def model64(x, idx):
        level = torch.full((x.shape[0], 1), math.sqrt(ab[idx]), dtype=torch.float64)
        return net64(torch.cat([up, x], dim=1), level)

    A_hr = torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear")
    with torch.no_grad():
        ref64 = ref_yoda_loop(model64, up, A_hr, SCHED.respace(STEPS), 0.6, "eps", "ddim", 1.0, True,
                              philox_noises(9, up.shape, STEPS + 1))[-1].clamp(-1, 1)
    assert not mask_at(A_hr, SCHED.respace(STEPS)[0] + 1, T, 0.6).all()  # the masks were in play
    # float32 vs float64 as in test_sample_matches_float64_loop, plus the backends' normals (within ~1e-6 of
    # the reference's, DESIGN §9) carried through 5 steps of a contraction
    torch.testing.assert_close(got.double(), ref64, rtol=0, atol=64 * EPS32 * AMP + 1e-5)
    if backend != "naive":
        ref = run(model, lr, attention=A, seed=9, backend="naive", sampler="ddim", eta=1.0)
        assert torch.equal(got, ref)  # same noise bits, same float32 order (DESIGN §9): the same image


def test_dtype_device_and_grey_input():
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image()
    out32 = run(model, lr, seed=1)
    assert out32.dtype == torch.float32 and out32.shape == (1, 3, 16, 16) and out32.device == lr.device
    assert out32.min() >= -1 and out32.max() <= 1
    out64 = run(model, lr.double(), seed=1)  # float64 lr: the state runs in float32, the result is float64
    assert out64.dtype == torch.float64 and torch.equal(out64, out32.double())
    grey = lr[:, :1]
    assert torch.equal(run(model, grey, seed=1), run(model, grey.expand(1, 3, 8, 8).contiguous(), seed=1))


def test_a_channels_last_lr_samples_as_a_contiguous_one():
    """yoda.from_uint8 (and load_image) returned a permuted view, channels-last, and sample passed that layout to
    the network, whose convolutions round otherwise in it (1e-4 apart after 3 heun steps on the embedded model):
    the image depended on where lr came from. from_uint8 returns a contiguous tensor, and sample makes lr
    contiguous (channels_last=True is the layout's opt-in)."""
    seen = []

    class Spy(PixelAdapter):
        def prepare(self, lr):  # what the model's own parts (an RRDB, an encoder) are given
            seen.append(lr.is_contiguous())
            return super().prepare(lr)

    u8 = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    lr = yoda.from_uint8(u8)
    assert lr.is_contiguous() and torch.equal(lr, yoda.from_uint8(u8).contiguous())
    cl = lr.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    model = Spy(SR3Net().eval(), SCHED, scale=SCALE)
    assert torch.equal(run(model, cl, seed=2, sampler="heun", steps=3), run(model, lr, seed=2, sampler="heun",
                                                                               steps=3))
    assert seen == [True, True]


# ------------------------------------------------------------------------------------------------------------
# Attention forms
# ------------------------------------------------------------------------------------------------------------
def test_attention_forms_agree(monkeypatch):
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(B=2), attention_map(B=2)
    ref = run(model, lr, attention=A, seed=3)
    A_hr = torch.nn.functional.interpolate(A, scale_factor=SCALE, mode="bilinear", align_corners=False)
    assert torch.equal(run(model, lr, attention=A_hr, seed=3), ref)  # any resolution
    assert torch.equal(run(model, lr, attention=A[:, 0], seed=3), ref)  # (B, h, w)
    calls = []

    def extractor(x):
        calls.append(x.shape)
        return A

    # a user's callable is taken as it is, like a tensor: resized, clamped; its values may mean something (a
    # calibrated saliency, a constant: an all-zero map from a callable became all ones)
    assert torch.equal(run(model, lr, attention=extractor, seed=3), ref)
    assert calls == [(2, 3, 8, 8)]
    zeros = lambda x: torch.zeros(2, 1, 8, 8)  # noqa: E731
    assert torch.equal(run(model, lr, attention=zeros, seed=3), run(model, lr, attention=torch.zeros(2, 1, 8, 8),
                                                                     seed=3))
    # yoda's own extractors (by name, or what yoda.attention.get returns) are min-max normalised again after the
    # resize (DESIGN §3): upsampling pulls the peak below 1
    from yoda.attention import minmax_normalize

    ref_x = run(model, lr, attention=minmax_normalize(A_hr), seed=3)
    assert not torch.equal(ref_x, ref)
    extractor.minmax_after_resize = True
    assert torch.equal(run(model, lr, attention=extractor, seed=3), ref_x)
    monkeypatch.setattr(yoda.attention, "get", lambda name: {"mine": extractor}[name])
    assert torch.equal(run(model, lr, attention="mine", seed=3), ref_x)
    extractor.minmax_after_resize = False
    assert torch.equal(run(model, lr, attention="mine", seed=3), ref_x)  # by name: always yoda's rule
    # one map for the whole batch is broadcast
    one = run(model, lr, attention=A[:1], seed=3)
    assert torch.equal(one, run(model, lr, attention=A[:1].expand(2, 1, 8, 8), seed=3))
    # lower_bound >= 1 never calls the extractor
    calls.clear()
    run(model, lr, attention=extractor, lower_bound=1.0, seed=3)
    assert calls == []


# ------------------------------------------------------------------------------------------------------------
# Adapters
# ------------------------------------------------------------------------------------------------------------
def test_as_adapter_dispatch():
    a = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    assert as_adapter(a) is a
    with pytest.raises(TypeError, match="already an Adapter"):
        as_adapter(a, prediction="eps")

    class WithMethod:
        def yoda_adapter(self, **kw):
            return PixelAdapter(SR3Net(), SCHED, scale=kw.get("scale", 4))

    assert as_adapter(WithMethod(), scale=2).scale == 2
    # numpy ints, as ModelCard and save_model take them ("scale must be a positive int, got np.int64(4)")
    for ad in (as_adapter(lambda x, t, c: x, prediction="eps", schedule=SCHED, scale=np.int64(2), multiple=np.int32(2)),
               PixelAdapter(SR3Net(), SCHED, scale=np.int64(SCALE))):
        assert type(ad.scale) is int and type(ad.multiple) is int

    class Bad:
        def yoda_adapter(self):
            return object()

    with pytest.raises(TypeError, match="must return a yoda.adapters.Adapter"):
        as_adapter(Bad())
    f = make_fn(SR3Net())
    assert isinstance(as_adapter(f, prediction="v", schedule=SCHED, scale=2), CallableAdapter)
    with pytest.raises(TypeError, match="prediction.*schedule|missing: prediction, schedule"):
        as_adapter(f)
    with pytest.raises(TypeError, match="missing: schedule"):
        as_adapter(f, prediction="eps")
    with pytest.raises(TypeError, match="model must be"):
        as_adapter(42)
    with pytest.raises(TypeError, match="model must be"):
        yoda.sample(42, lr_image())
    with pytest.raises(ValueError, match="prediction"):
        CallableAdapter(f, prediction="score", schedule=SCHED)
    with pytest.raises(TypeError, match="schedule"):
        PixelAdapter(SR3Net(), schedule=[0.1, 0.2])
    with pytest.raises(ValueError, match="space"):
        CallableAdapter(f, prediction="eps", schedule=SCHED, space="latent")


def test_pixel_adapter_calls_net_with_sr3_conditioning():
    seen = {}

    def net(inp, level):
        seen["inp"], seen["level"] = inp, level
        return torch.zeros_like(inp[:, 3:])

    a = PixelAdapter(net, SCHED, scale=SCALE)
    lr = lr_image(B=2)
    prep = a.prepare(lr)
    x = torch.randn(2, 3, 16, 16)
    a.denoise(x, torch.full((2,), 7), SCHED.alpha_bar(7), prep.cond)
    assert torch.equal(seen["inp"][:, :3], upsample(lr, SCALE)) and torch.equal(seen["inp"][:, 3:], x)
    assert seen["level"].shape == (2, 1)
    assert seen["level"][0, 0].item() == pytest.approx(SCHED.noise_level(7), rel=1e-7)


# ------------------------------------------------------------------------------------------------------------
# Tiled denoising
# ------------------------------------------------------------------------------------------------------------
# the 1-step calls (about seams) leave the map's unattended pixels unrefined, and say so: beside the point
@pytest.mark.filterwarnings("ignore:yoda.sample. at steps=1 with lower_bound 0.6:yoda.UnrefinedWarning")
def test_tiled_skipping_is_exact_and_saves_calls():
    """A non-square state (16 x 24) with an asymmetric map (largest in the top-right corner, falling off
    differently along rows and columns): each step calls the denoiser on exactly the windows whose maximum of
    A is >= tau (counted here from the window origins written out by hand), and the image equals dense tiled
    sampling."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image(h=8, w=12)
    yy = torch.linspace(0, 1, 16).view(16, 1)
    xx = torch.linspace(0, 1, 24).view(1, 24)
    A = ((1 - yy) ** 3 * xx**2).view(1, 1, 16, 24)  # HR-size A: used as given (no resize)
    taus, calls_skip, calls_dense = [], [], []

    def cb(d):
        taus.append(d["tau"])
        calls_skip.append(d["calls"])

    a = run(model, lr, attention=A, seed=2, windows=(8, 2), window_batch=1, callback=cb)
    b = run(model, lr, attention=A, seed=2, windows=(8, 2, False), window_batch=1,
            callback=lambda d: calls_dense.append(d["calls"]))
    assert torch.equal(a, b)
    # window 8, stride 6, the last window flush with the end: rows 0, 6, 8; columns 0, 6, 12, 16
    origins = [(y, x) for y in (0, 6, 8) for x in (0, 6, 12, 16)]
    assert calls_dense == [len(origins)] * STEPS
    want = [sum(float(A[..., y : y + 8, x : x + 8].max()) >= torch.tensor(tau, dtype=torch.float32).item()
                for y, x in origins) for tau in taus]
    assert calls_skip == want
    assert want[0] < want[1] < want[-1] == len(origins)  # the map makes the windows wake up one step at a time
    # a window that covers the state is the dense call itself (no blend: its w * out / w changed 1 ulp in 10%)
    full = run(model, lr, attention=A, seed=2, windows=(32, 0))
    assert torch.equal(full, run(model, lr, attention=A, seed=2))
    # windows that tile without overlapping leave seams: warned once a call (in Python only the CLI's --tiles W,0
    # said so); a window that covers the state, or an overlap, is not
    with pytest.warns(UserWarning, match=r"^windows=\(8, 0\): windows that do not overlap leave seams") as seen:
        run(model, lr, attention=A, seed=2, windows=(8, 0), steps=1)
    assert len([w for w in seen if "seams" in str(w.message)]) == 1 and seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "windows=")
        run(model, lr, attention=A, seed=2, windows=(32, 0), steps=1)
        run(model, lr, attention=A, seed=2, windows=8, steps=1)


def _asym_A(H, W):
    """An asymmetric map on a non-square grid: largest in the top-right corner, falling off differently along
    rows and columns, so the windows wake up a few at a time."""
    yy = torch.linspace(0, 1, H).view(H, 1)
    xx = torch.linspace(0, 1, W).view(1, W)
    return ((1 - yy) ** 3 * xx**2).view(1, 1, H, W)


def test_window_skipping_looks_at_every_image_of_the_batch():
    """A window is denoised when any image of the batch has an active pixel in it (images 0 and 1 with mirrored
    maps: skipping by image 0's map alone would leave image 1's active windows with no prediction)."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image(B=2, h=8, w=12)
    A0 = _asym_A(16, 24)
    A = torch.cat([A0, A0.flip(-1)])
    a = run(model, lr, attention=A, seed=2, windows=(8, 2), window_batch=1)
    assert torch.equal(a, run(model, lr, attention=A, seed=2, windows=(8, 2, False), window_batch=1))


def test_a_window_whose_maximum_is_tau_is_active():
    """The kernels' rule is A >= tau: a window whose largest A equals a step's tau exactly must be denoised then."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image(h=8, w=12)
    taus = []
    run(model, lr, attention=_asym_A(16, 24), seed=2, callback=lambda d: taus.append(d["tau"]))
    A = torch.zeros(1, 1, 16, 24)
    A[..., :, 16:] = 1.0
    A[..., 0:4, 0:4] = torch.tensor(taus[2], dtype=torch.float32)  # the top-left window's maximum, at step 2
    a = run(model, lr, attention=A, seed=2, windows=(8, 2), window_batch=1)
    assert torch.equal(a, run(model, lr, attention=A, seed=2, windows=(8, 2, False), window_batch=1))


def test_window_blend_weights_are_gaussians_of_a_quarter_window():
    """Overlapping windows blend with Gaussian weights of sigma = window / 4 centred on each window: windows of 8
    at x = 0 and 6 on a 14-wide grid, the first predicting 1 and the second 2; pixel 6 is the first's 7th pixel
    and the second's 1st."""
    from yoda.sampling.tiles import Tiler

    class Counting:
        calls = 0

        def crop_cond(self, cond, ys, xs):
            return None

        def denoise(self, x, t, ab, cond):
            Counting.calls += 1
            return torch.full_like(x, float(Counting.calls))

    tiler = Tiler(torch.Size([1, 1, 1, 14]), 8, 2, False, None, "cpu", batch=1)
    out, _ = tiler.denoise(Counting(), torch.zeros(1, 1, 1, 14), torch.zeros(1), 0.5, None, 0.0)
    g = lambda k: math.exp(-0.5 * ((k - 3.5) / 2.0) ** 2)  # noqa: E731
    assert out[0, 0, 0, 6].item() == pytest.approx((1 * g(6) + 2 * g(0)) / (g(6) + g(0)), rel=1e-6)
    assert out[0, 0, 0, 0].item() == 1.0 and out[0, 0, 0, 13].item() == 2.0


def test_rectangular_windows_lay_and_blend_each_axis_by_its_own_side():
    """windows=((H, W), O): windows of H rows and W columns (yoda upscale's automatic windows: a wide image in
    squares overlapped along its short side, 2.3 times its pixels at 800 x 6000). Each axis is laid with
    window_starts of its own side and blended with a Gaussian of a quarter of it; batching changes nothing."""
    from yoda.sampling.spec import Windows, check_windows
    from yoda.sampling.tiles import Tiler, window_starts

    assert check_windows(((8, 16), 2)) == Windows((8, 16), 2, True, None) and check_windows(8).size == (8, 8)
    assert check_windows(((8, 16), 2)).typed() == "windows=((8, 16), 2)" and check_windows(8).typed() == "windows=8"
    # a pair with the default overlap (a quarter of the shorter side, as windows=W): it was refused
    assert check_windows(((8, 16), None)) == Windows((8, 16), None, True, None)
    assert check_windows(((8, 16), None)).typed() == "windows=((8, 16), None)"
    # (an overlap of 8 may pass here: held to the sides that tile the image, where its size is known, in prepare)
    for bad, err in ((((8, 16), 16), ValueError), (((0, 16), 0), ValueError), (((8, 16, 4), 2), TypeError),
                     (((8, 1.5), 2), TypeError)):
        with pytest.raises(err, match="windows must"):
            check_windows(bad)

    class Numbered:  # window k predicts k + 1 everywhere
        def __init__(self):
            self.calls = 0

        def crop_cond(self, cond, ys, xs):
            return None

        def stack_conds(self, conds):
            return None

        def denoise(self, x, t, ab, cond):
            out = torch.stack([torch.full_like(x[k], float(self.calls + k + 1)) for k in range(x.shape[0])])
            self.calls += x.shape[0]
            return out

    H, W, (wh, ww), O = 10, 20, (6, 12), 2
    ys, xs = window_starts(H, wh, O), window_starts(W, ww, O)
    assert (ys, xs) == ([0, 4], [0, 8])
    g = lambda k, n: math.exp(-0.5 * ((k - (n - 1) / 2) / (n / 4)) ** 2)  # noqa: E731
    want = torch.zeros(H, W, dtype=torch.float64)
    total = torch.zeros(H, W, dtype=torch.float64)
    for k, (y, x) in enumerate((y, x) for y in ys for x in xs):
        for i in range(wh):
            for j in range(ww):
                wgt = g(i, wh) * g(j, ww)
                want[y + i, x + j] += wgt * (k + 1)
                total[y + i, x + j] += wgt
    for batch in (1, 3):
        tiler = Tiler(torch.Size([1, 1, H, W]), (wh, ww), O, False, None, "cpu", batch=batch)
        out, n = tiler.denoise(Numbered(), torch.zeros(1, 1, H, W), torch.zeros(1), 0.5, None, 0.0)
        assert n == 4 and tiler.last_batches == -(-4 // batch)
        torch.testing.assert_close(out[0, 0].double(), want / total, rtol=0, atol=2e-6)
    # through yoda.sample: the rectangle's sides each checked against the model's multiple
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(h=8, w=12), _asym_A(16, 24)
    with torch.backends.mkldnn.flags(enabled=False):
        one = run(model, lr, attention=A, seed=2, windows=((8, 12), 2), window_batch=1)
        assert torch.equal(run(model, lr, attention=A, seed=2, windows=((8, 12), 2), window_batch=4), one)
    assert not torch.equal(one, run(model, lr, attention=A, seed=2, windows=(8, 2)))
    # each side narrower than the image is checked against the model's grid, and named (the embedded model: 8)
    net = yoda.load("yoda", "default")
    for windows, side in ((((36, 64), 16), 36), (((24, 60), 16), 60)):
        with pytest.raises(ValueError, match=rf"^windows: the window {side} must be a multiple of 8"):
            yoda.sample(net, lr_image(h=16, w=16), windows=windows, progress=False)
    lr16 = lr_image(h=16, w=16)
    assert torch.equal(yoda.sample(net, lr16, windows=((32, 48), None), seed=1, progress=False),
                       yoda.sample(net, lr16, windows=((32, 48), 8), seed=1, progress=False))  # 32 // 4 on the grid


def _tiny_unet_adapter(kind):
    """A tiny SR3UNet (with attention) or SRDiff (scale 2) adapter; its forward runs batch element by batch
    element, so the model itself is batch-invariant and what is tested is the window batching alone (oneDNN
    convolutions and BLAS matmuls round differently at different batch sizes)."""
    from yoda.models import SR3UNet, SRDiff

    torch.manual_seed(0)
    if kind == "sr3":
        net = SR3UNet(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                      attn_res=(4,), res_blocks=1, image_size=8, mid_attn=True).eval()
        ad = net.yoda_adapter(scale=SCALE, schedule=SCHED)
    else:
        net = SRDiff(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=SCALE,
                     timesteps=T).eval()
        ad = net.yoda_adapter()
    seen = []
    forward = net.forward

    def per_element(x, *args):
        seen.append(x.shape[0])
        parts = []
        for k in range(x.shape[0]):
            parts.append(forward(x[k:k + 1], *[[f if f is None else f[k:k + 1] for f in a] if isinstance(a, list)
                                                else a if a is None else a[k:k + 1] for a in args]))
        return torch.cat(parts)

    net.forward = per_element
    return ad, seen


@pytest.mark.parametrize("kind", ["sr3", "srdiff"])
def test_window_batches_equal_one_window_per_call(kind):
    """Windows sent through the model in batches (crop_cond per window, stack_conds along the batch dim, outputs
    split back and blended in window order) give the bit-identical image of one call per window, with skipping,
    on a non-square state with an asymmetric map; SRDiff's windows lie on the LR grid (origins multiples of the
    scale) and its LR features are cropped and stacked with them. The batch count is ceil(windows / batch)."""
    ad, seen = _tiny_unet_adapter(kind)
    lr = lr_image(B=2, h=8, w=12)
    A = _asym_A(16, 24)
    kw = dict(attention=A, seed=5, windows=(8, 4), sampler="ddim", eta=1.0)
    one = run(ad, lr, window_batch=1, **kw)
    assert set(seen) == {2}  # B = 2 elements per window, one window per call
    for batch in (2, 4, None):
        seen.clear()
        calls, batches = [], []
        got = run(ad, lr, window_batch=batch,
                  callback=lambda d: (calls.append(d["calls"]), batches.append(d["batches"])), **kw)
        assert torch.equal(got, one), (kind, batch)
        n = batch if batch is not None else 10**9
        assert batches == [-(-c // n) for c in calls] and calls[0] < calls[-1] == 15
        assert sum(seen) == 2 * sum(calls) and max(seen) == 2 * min(n, 15)


def test_window_batches_with_a_batch_invariant_model_are_bit_identical():
    """With a model whose forward is batch-invariant as it is (a plain convolution, oneDNN off), batching the
    windows changes nothing at all; with oneDNN on, it stays within float rounding of the model."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(h=8, w=12), _asym_A(16, 24)
    with torch.backends.mkldnn.flags(enabled=False):
        one = run(model, lr, attention=A, seed=2, windows=(8, 2), window_batch=1)
        assert torch.equal(run(model, lr, attention=A, seed=2, windows=(8, 2), window_batch=5), one)
    torch.testing.assert_close(run(model, lr, attention=A, seed=2, windows=(8, 2)), one, rtol=0, atol=1e-5)


def test_window_knobs_names_and_default_batch():
    """kernel_tile= and windows= are the names; tile= and tiles= are deprecated aliases (same image, a
    DeprecationWarning; both names at once: TypeError). The default window batch follows the memory budget."""
    from yoda.sampling.tiles import ACTIVATION_BYTES_PER_ELEMENT, default_window_batch

    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr, A = lr_image(h=8, w=12), _asym_A(16, 24)
    new = run(model, lr, attention=A, seed=2, windows=(8, 2), kernel_tile=8)
    with pytest.warns(DeprecationWarning, match="tiles= is deprecated"):
        with pytest.warns(DeprecationWarning, match="tile= is deprecated"):
            old = run(model, lr, attention=A, seed=2, tiles=(8, 2), tile=8)
    assert torch.equal(new, old)
    with pytest.raises(TypeError, match="not both"):
        run(model, lr, attention=A, windows=8, tiles=8)
    with pytest.raises(ValueError, match="window_batch applies"):
        run(model, lr, attention=A, window_batch=2)
    with pytest.raises(ValueError, match="window_batch must be >= 1"):
        run(model, lr, attention=A, windows=8, window_batch=0)
    assert default_window_batch(1, 3, 64, 64, budget=3 * 64 * 64 * ACTIVATION_BYTES_PER_ELEMENT * 5 + 1) == 5
    assert default_window_batch(4, 3, 512, 512, budget=1) == 1


# windows=(4, 0) tile without overlap, and say so (asserted in test_tiled_skipping_is_exact_and_saves_calls)
@pytest.mark.filterwarnings(r"ignore:windows=\(4, 0\). windows that do not overlap leave seams:UserWarning")
def test_default_window_batch_follows_the_adapters_activation_scale():
    """The default window batch budgeted every model as a pixel-space UNet per state element, so a latent model
    (an element stands for latent_factor ** 2 pixels of a far wider network) got 64 windows a call, 128 with
    guidance. adapter.activation_scale scales the estimate; yoda.sample's tiler uses it."""
    from yoda.models import DiffBIRAdapter
    from yoda.models.latent import LatentAdapter
    from yoda.sampling.tiles import ACTIVATION_BYTES_PER_ELEMENT, WINDOW_BATCH_BYTES, default_window_batch
    from test_diffbir import StandInControlLDM, StandInDiffusion

    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image(h=8, w=12)  # HR 16x24: 24 windows of 4x4
    per_window = 3 * 4 * 4 * ACTIVATION_BYTES_PER_ELEMENT
    passes = []
    run(model, lr, seed=2, windows=(4, 0), steps=1, callback=lambda d: passes.append(d["batches"]))
    model.activation_scale = WINDOW_BATCH_BYTES // (5 * per_window)  # 5 windows a call
    run(model, lr, seed=2, windows=(4, 0), steps=1, callback=lambda d: passes.append(d["batches"]))
    assert passes == [1, 5]
    assert default_window_batch(1, 3, 4, 4, activation_scale=model.activation_scale) == 5
    assert Adapter.activation_scale == 1
    ident = lambda *a: a[0]  # noqa: E731
    assert LatentAdapter(ident, ident, ident, SCHED, latent_factor=8).activation_scale == 64
    d = StandInDiffusion("eps")
    assert DiffBIRAdapter(StandInControlLDM(d), d).activation_scale == 64
    assert DiffBIRAdapter(StandInControlLDM(d), d, cfg_scale=4.0).activation_scale == 128
    assert DiffBIRAdapter(StandInControlLDM(d), d, cfg_scale=4.0, cfg_batch=False).activation_scale == 64  # 2 calls


def test_stack_conds_default():
    """Adapter.stack_conds concatenates tensors along dim 0 through tuples, lists and NamedTuples, keeps equal
    plain values and 0-d tensors, and refuses what it cannot stack."""
    from yoda.models.srdiff import SRDiffCond

    a = SRDiffCond([torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)], torch.full((1, 3, 6, 6), 2.0))
    b = SRDiffCond([torch.full((1, 2, 3, 3), 3.0), torch.ones(1, 2, 3, 3)], torch.ones(1, 3, 6, 6))
    s = Adapter().stack_conds([a, b])
    assert isinstance(s, SRDiffCond) and isinstance(s.feas, list)
    assert torch.equal(s.feas[0], torch.cat([a.feas[0], b.feas[0]])) and torch.equal(s.up, torch.cat([a.up, b.up]))
    t = Adapter().stack_conds([(torch.ones(1, 1), (4, 5)), (torch.zeros(1, 1), (4, 5))])
    assert torch.equal(t[0], torch.tensor([[1.0], [0.0]])) and t[1] == (4, 5)
    with pytest.raises(NotImplementedError):
        Adapter().stack_conds([(torch.ones(1), (4, 5)), (torch.ones(1), (4, 6))])
    with pytest.raises(NotImplementedError):
        Adapter().stack_conds([object(), object()])
    # a 0-d tensor (a scale in the cond) has no batch dim: torch.cat raised a RuntimeError, which the tiler does not
    # take as "denoise the windows one at a time", so the default window batch failed where window_batch=1 ran
    u = Adapter().stack_conds([(torch.ones(1, 1), torch.tensor(1.5)), (torch.zeros(1, 1), torch.tensor(1.5))])
    assert torch.equal(u[1], torch.tensor(1.5)) and u[0].shape == (2, 1)
    with pytest.raises(NotImplementedError, match="0-d tensor"):
        Adapter().stack_conds([(torch.ones(1), torch.tensor(1.5)), (torch.ones(1), torch.tensor(2.0))])


# ------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lr, kw, err, match",
    [
        (torch.zeros(3, 8, 8), {}, ValueError,
         r"^lr must be 4-D .*got shape \(3, 8, 8\); one image\? lr\[None\] makes a batch of it$"),
        # an array's channels-last order, as a tensor: the fix said (it was the bare shape error)
        (torch.zeros(8, 8, 3), {}, ValueError,
         r"got shape \(8, 8, 3\); channels last\? lr\.permute\(2, 0, 1\)\[None\] puts them first$"),
        (torch.zeros(2, 8, 8, 3), {}, ValueError, r"^lr must have 1 \(grey\) or 3 \(RGB\) channels, got 8 \(shape "
                                                  r"\(2, 8, 8, 3\)\); channels last\? lr\.permute\(0, 3, 1, 2\) puts "
                                                  r"them first$"),
        (torch.zeros(8, 8), {}, ValueError, r"^lr must be 4-D .*got shape \(8, 8\)$"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int64), {}, TypeError, "lr must be a float"),
        (torch.zeros(1, 2, 8, 8), {}, ValueError, r"lr must have 1 \(grey\) or 3 \(RGB\) channels"),
        (torch.full((1, 3, 8, 8), 1.5), {}, ValueError, r"lr values must lie in \[-1, 1\]"),
        (torch.rand(1, 3, 8, 8) * 255, {}, ValueError, r"lr values"),
        (torch.full((1, 3, 8, 8), float("nan")), {}, ValueError, "lr contains NaN"),
        (torch.zeros(1, 3, 7, 8), {}, ValueError, r"lr of 8x7 \(width x height\) gives an HR image of 16x14 "),
        (None, {"steps": T + 1}, ValueError, r"steps must be in \[1, T=50\]"),
        (None, {"steps": 0}, ValueError, "steps"),
        (None, {"steps": 2.0}, TypeError, "steps"),
        (None, {"sampler": "lms"}, ValueError, "sampler"),
        (None, {"sampler": "ddim", "eta": -1.0}, ValueError, "eta"),
        (None, {"eta": 0.5}, ValueError, "eta applies to sampler='ddim'"),
        (None, {"lower_bound": float("nan")}, ValueError, "lower_bound"),
        (None, {"lower_bound": -0.1}, ValueError, "lower_bound"),
        (None, {"seed": -1}, ValueError, "seed"),
        (None, {"seed": 2**32}, ValueError, "seed"),
        (None, {"noise": [torch.zeros(1, 3, 16, 16)] * STEPS}, ValueError,
         rf"noise must have {STEPS + 1} entries \(one for the start and one for each of the {STEPS} visited"),
        (None, {"noise": torch.zeros(STEPS + 1, 1, 3, 8, 8)}, ValueError,
         r"noise\[0\] must be a tensor of the state's"),
        (None, {"noise": torch.zeros(STEPS, 1, 3, 16, 16)}, ValueError, rf"noise must have {STEPS + 1} entries along"),
        (None, {"attention": torch.rand(1, 2, 8, 8)}, ValueError, "attention must be"),
        (None, {"attention": torch.rand(1, 1, 8, 8) + 1}, ValueError, r"attention values must be in \[0, 1\]"),
        (None, {"attention": torch.full((1, 1, 8, 8), float("nan"))}, ValueError, "attention contains NaN"),
        (None, {"attention": torch.rand(1, 1, 8, 8).index_fill_(3, torch.tensor([2]), float("inf"))}, ValueError,
         "attention contains NaN or Inf"),
        (None, {"attention": torch.rand(1, 1, 8, 8).index_fill_(2, torch.tensor([5]), float("nan"))}, ValueError,
         "attention contains NaN or Inf"),
        # checked when lower_bound >= 1 leaves it unused too (a NaN map passed silently)
        (None, {"attention": torch.full((1, 1, 8, 8), float("nan")), "lower_bound": 1.0}, ValueError,
         "attention contains NaN"),
        (None, {"attention": torch.rand(1, 1, 8, 8) + 1, "lower_bound": 2.0}, ValueError, "attention values"),
        (None, {"attention": 3.0}, TypeError, "attention must be"),
        (None, {"attention": lambda x: "no"}, TypeError, r"attention\(lr\) must return a tensor"),
        (None, {"backend": "gpu"}, ValueError, "backend"),
        (None, {"kernel_tile": 12}, ValueError, "tile"),
        (None, {"windows": (8, 8)}, ValueError, "windows"),
        (None, {"clip": 1}, TypeError, "clip"),
        (None, {"spacing": "odd"}, ValueError, "spacing"),
        # an adversarial review: an OverflowError, torch's NotImplementedError for a meta / sparse tensor
        (None, {"lower_bound": 10**400}, ValueError, "lower_bound must be a finite float >= 0, got inf"),
        (None, {"eta": 10**400, "sampler": "ddim"}, ValueError, "eta must be finite, got inf"),
        (None, {"sampler": "euler", "sigmas": [10**400]}, ValueError, r"sigmas must be finite and > 0"),
        (None, {"sampler": "euler", "sigmas": torch.tensor([2.0, 1.0], device="meta")}, ValueError,
         "sigmas is a tensor on the meta device"),
        (None, {"attention": torch.rand(1, 1, 8, 8).to_sparse()}, TypeError,
         r"attention must be a dense tensor, got layout torch.sparse_coo"),
    ],
)
def test_bad_inputs(lr, kw, err, match):
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE, multiple=4)
    with pytest.raises(err, match=match):
        run(model, lr_image() if lr is None else lr, **kw)


def test_numpy_bool_clip_is_a_bool():
    """clip=np.bool_(True) (a comparison's result) was refused as "clip must be None or a bool, got bool"; the
    kernels take it: so does yoda.sample, the same image as clip=True."""
    import numpy as np

    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE, multiple=4)
    assert torch.equal(run(model, lr_image(), clip=np.bool_(True), seed=3), run(model, lr_image(), clip=True, seed=3))


@pytest.mark.parametrize("kw, match", [
    ({"attention": torch.full((1, 1, 8, 8), float("nan"))}, "attention contains NaN"),
    ({"attention": "edgy"}, "edgy"),
    ({"attention": lambda x: "no"}, r"attention\(lr\) must return a tensor"),
    ({"noise": [torch.zeros(1, 3, 16, 16)] * STEPS}, rf"noise must have {STEPS + 1} entries"),
    ({"noise": 1.0}, "noise must be a tensor or a sequence"),
])
def test_bad_arguments_are_refused_before_the_model_prepares(kw, match):
    """Attention maps, names and extractors and the noise's type and count were checked after adapter.prepare,
    which may be the heavy part (SRDiff's RRDB, a VAE encode, DiffBIR's stage 1)."""
    prepared = []

    class Counting(PixelAdapter):
        def prepare(self, lr):
            prepared.append(1)
            return super().prepare(lr)

    with pytest.raises((ValueError, TypeError), match=match):
        run(Counting(SR3Net(), SCHED, scale=SCALE, multiple=4), lr_image(), lower_bound=0.5, **kw)
    assert prepared == []


def test_model_returning_wrong_shape():
    model = CallableAdapter(lambda x, t, c: x[:, :2], prediction="eps", schedule=SCHED, scale=SCALE)
    with pytest.raises(ValueError, match="fn returned shape"):
        run(model, lr_image())
    for out, hint in (((1,), r"tuple; return its tensor \(out\[0\]\)"), ({"sample": 1}, r"dict; return its tensor "
                      r"\(out\['sample'\]\)"), (SimpleNamespace(sample=1), r"SimpleNamespace; return its tensor "
                      r"\(out\.sample, as of diffusers' outputs\)")):  # (a diffusers UNet's output, its tuple form)
        model = CallableAdapter(lambda x, t, c, out=out: out, prediction="eps", schedule=SCHED, scale=SCALE)
        with pytest.raises(TypeError, match=rf"^fn must return a tensor, got {hint}$"):
            run(model, lr_image())
    model = CallableAdapter(lambda x, t, c: torch.empty_like(x, device="meta"), prediction="eps", schedule=SCHED,
                            scale=SCALE)
    with pytest.raises(ValueError, match=r"^fn returned a tensor on meta, the state is on cpu$"):
        run(model, lr_image(), sampler="euler")  # (a solver ran its whole step on it, then Tensor.item() failed)
    for bad in (lambda x: x.to(torch.complex64), lambda x: x.round().long()):  # cast silently before
        model = CallableAdapter(lambda x, t, c: bad(x), prediction="eps", schedule=SCHED, scale=SCALE)
        with pytest.raises(TypeError, match=r"^fn must return a real floating tensor, got torch\.(complex64|int64)$"):
            run(model, lr_image())

    class NoPrepare(Adapter):
        schedule, scale = SCHED, SCALE

        def prepare(self, lr):
            return Prepared(c="nope", cond=None)

    with pytest.raises(TypeError, match="prepare must return c"):
        run(NoPrepare(), lr_image())


def test_a_uint8_lr_is_told_how_to_convert():
    """A uint8 tensor (torchvision's read_image, batched) was refused without the conversion the other refusals
    name."""
    with pytest.raises(TypeError, match=r"got torch.uint8: lr.float\(\) / 127.5 - 1 makes 8-bit values \[-1, 1\]"):
        yoda.sample(PixelAdapter(SR3Net(), SCHED, scale=SCALE), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"got torch.int64$"):
        yoda.sample(PixelAdapter(SR3Net(), SCHED, scale=SCALE), torch.zeros(1, 3, 8, 8, dtype=torch.int64))


def test_progress_bar(capsys):
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    run(model, lr_image(), seed=0, progress=True)
    assert "yoda.sample" in capsys.readouterr().err
    run(model, lr_image(), seed=0, progress=False)
    assert "yoda.sample" not in capsys.readouterr().err
    run(model, lr_image(), seed=0, progress=True, steps=1)  # one step: no bar (each image of a folder flashed 0/1)
    assert "yoda.sample" not in capsys.readouterr().err
    # in windows, a bar over each step's denoiser calls too (one step of hundreds of windows sat at 0/1)
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    tiled = run(model, lr_image(), seed=0, progress=True, windows=(8, 4), window_batch=2)
    err = capsys.readouterr().err
    assert "windows: " in err and "/5 [" in err  # 9 windows of 8 over the 16² state, 2 per call: 5 calls
    assert torch.equal(tiled, run(model, lr_image(), seed=0, progress=False, windows=(8, 4), window_batch=2))
    assert "windows" not in capsys.readouterr().err


def test_model_and_lr_on_different_devices_is_a_clear_error(monkeypatch):
    """A model on meta (weights not loaded) was told "lr is on cpu but the model is on meta: move one of them",
    and an lr on meta was then refused in turn: it is told what it is."""
    model = PixelAdapter(SR3Net().to("meta"), SCHED, scale=SCALE)
    with pytest.raises(ValueError, match=r"^the model's weights are on the meta device \(made without their "
                                         r"values\): load them first"):
        yoda.sample(model, torch.zeros(1, 3, 4, 4), steps=2, progress=False)
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    monkeypatch.setattr(model, "device", lambda: torch.device("cuda", 1))  # checked before anything runs there
    with pytest.raises(ValueError, match=r"^lr is on cpu but the model is on cuda:1: move one of them$"):
        yoda.sample(model, torch.zeros(1, 3, 4, 4), steps=2, progress=False)


def test_mps_is_refused_by_name(monkeypatch):
    """An lr or a model on Apple's MPS failed deep inside, at the first float64 tensor (MPS has none)."""
    class OnMps(torch.Tensor):  # this machine has no MPS: a CPU tensor that reports it
        device = property(lambda self: torch.device("mps"))

    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    tail = (r" is on mps, which yoda does not support \(its noise and the SR3 / SRDiff upsampling compute in "
            r"float64, which MPS lacks\): move lr and the model to the CPU$")
    with pytest.raises(ValueError, match="^lr" + tail):
        yoda.sample(model, lr_image().as_subclass(OnMps), steps=2, progress=False)
    monkeypatch.setattr(model, "device", lambda: torch.device("mps"))
    with pytest.raises(ValueError, match="^the model" + tail):
        yoda.sample(model, lr_image(), steps=2, progress=False)


def test_an_attention_callable_may_use_gradients():
    """A Grad-CAM-like callable (gradients of the image, under torch.enable_grad) failed with torch's "element 0 of
    tensors does not require grad": it ran inside yoda.sample's inference mode, where enable_grad does nothing. It
    worked only when pad=True padded (resolved before that mode). It now gives what its map as a tensor gives."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    lr, grad_on = lr_image(), []

    def saliency(x):
        grad_on.append(torch.is_grad_enabled())
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            (x.sin() * x).sum().backward()
            g = x.grad.abs().mean(1, keepdim=True)
        return g / g.max()

    got = run(model, lr, attention=saliency, lower_bound=0.5, seed=0)
    assert grad_on == [False]  # called under no_grad, as documented
    assert torch.equal(got, run(model, lr, attention=saliency(lr), lower_bound=0.5, seed=0))


def test_errors_name_the_argument_the_caller_gave():
    """yoda.sample's errors used to name other things: windows= errors said "tiles:", kernel_tile= errors "tile",
    a wrong attention batch read "with B = 1 (or 1)", and an lr on the meta device raised torch's raw
    "Tensor.item() cannot be called on meta tensors"."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    with pytest.raises(ValueError, match=r"^kernel_tile must be one of \(8, 16, 32\), got 12$"):
        run(model, lr_image(), kernel_tile=12)
    with pytest.raises(ValueError, match=r"^attention must have batch size 1 \(the lr batch\), got 3 "
                                         r"\(shape \(3, 1, 8, 8\)\)$"):
        run(model, lr_image(), attention=attention_map(B=3))
    with pytest.raises(ValueError, match=r"^attention must have batch size 2 \(the lr batch\) or 1, got 3 "):
        run(model, lr_image(B=2), attention=attention_map(B=3))
    assert run(model, lr_image(B=2), attention=attention_map(B=1), seed=0).shape == (2, 3, 16, 16)  # 1: shared
    # a callable's map is one per image: a batch of 1 for 2 hid a callable that looked at lr[0] alone
    with pytest.raises(ValueError, match=r"^attention\(lr\) must return one map per lr image, batch size 2, got 1 "):
        run(model, lr_image(B=2), attention=lambda x: attention_map(B=1), seed=0)
    with pytest.raises(ValueError, match=r"^lr is on the meta device \(a shape without values\)"):
        yoda.sample(model, lr_image().to("meta"), steps=2, progress=False)
    with pytest.raises(TypeError, match=r"^lr must be a dense tensor, got layout torch.sparse_coo: pass it "
                                        r"\.to_dense\(\)$"):  # was 14 kB of dispatcher error
        yoda.sample(model, lr_image().to_sparse(), steps=2, progress=False)
    ad, seen = _tiny_unet_adapter("srdiff")  # scale 2: windows of 6 every 5 pixels start at 5, off the LR grid
    rrdb = []
    ad.model.rrdb.register_forward_hook(lambda *a: rrdb.append(1))
    for bad in ((6, 1), (8, 3)):  # refused before prepare ran the RRDB (it was at the first step's crop_cond)
        with pytest.raises(ValueError, match=r"^windows: SRDiffAdapter windows must lie on the LR grid: window and "
                                             rf"overlap multiples of the scale 2, got windows=\({bad[0]}, {bad[1]}\)$"):
            run(ad, lr_image(), windows=bad, seed=0)
    assert rrdb == [] and seen == []
    assert run(ad, lr_image(), windows=(17, 1), seed=0).shape == (1, 3, 16, 16)  # wider than the state: one window


def test_a_users_module_runs_in_its_own_dtype_and_reports_its_device():
    """as_adapter(module): a float64 module with the (float32) state raised torch's "Input type (float) and bias
    type (double)", and device() did not look at ``fn``, so a model on another device than lr got no clear error
    (here: the meta device)."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x, t, cond):
            seen.append((x.dtype, cond.dtype))
            return self.conv(x) * 0.1

    ad = as_adapter(Net(), prediction="eps", schedule=SCHED, scale=SCALE)
    assert ad.device() == torch.device("cpu")
    out = run(ad, lr_image(), seed=0)
    assert out.dtype == torch.float32 and set(seen) == {(torch.float64, torch.float64)}
    with pytest.raises(ValueError, match="the model's weights are on the meta device"):
        run(as_adapter(Net().to("meta"), prediction="eps", schedule=SCHED, scale=SCALE), lr_image())


def test_a_pixel_adapters_module_runs_in_its_own_dtype():
    """PixelAdapter(module) called its net in the state's dtype: a float64 (or half) net with a float32 lr raised
    torch's "Input type (float) and bias type (double)"; as_adapter's modules and SR3Adapter already ran in their
    parameters' dtype. The float64 net gives the float32 net's image to float32 rounding."""
    lr = lr_image()
    ref = run(PixelAdapter(SR3Net(), SCHED, scale=SCALE), lr, seed=0)
    got = run(PixelAdapter(SR3Net().double(), SCHED, scale=SCALE), lr, seed=0)
    assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=0, atol=1e-5)
    half = run(PixelAdapter(SR3Net(), SCHED, scale=SCALE), lr.half(), seed=0)  # float32 net, half state
    assert half.dtype == torch.float16 and (half.float() - ref).abs().max() < 0.02
    # under a speed option the net is wrapped (FastNet, not a Module): still its parameters' dtype
    cl = run(PixelAdapter(SR3Net().double(), SCHED, scale=SCALE), lr, seed=0, channels_last=True)
    assert cl.dtype == torch.float32 and torch.allclose(cl, ref, rtol=0, atol=1e-5)


def test_sampling_checks_what_it_would_meet_only_later():
    """windows= with an adapter that cannot crop its cond failed at the first denoise step with a message not
    naming windows; a misspelt attention name was accepted when lower_bound >= 1 left it unused."""
    calls = []

    class NoCrop(Adapter):
        prediction, schedule, scale, multiple = "eps", SCHED, SCALE, 1

        def prepare(self, lr):
            up = upsample(lr, SCALE)
            return Prepared(c=up, cond=up)

        def denoise(self, x_t, t, ab_t, cond):
            calls.append(1)
            return torch.zeros_like(x_t)

    with pytest.raises(ValueError, match=r"^windows: NoCrop cannot denoise in windows \(it has no crop_cond"):
        run(NoCrop(), lr_image(), windows=(8, 4), seed=0)
    assert calls == []
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    for lb in (0.5, 1.0, 2.0):
        with pytest.raises(ValueError, match="unknown attention 'egde'"):
            run(model, lr_image(), attention="egde", lower_bound=lb)
    with pytest.raises(ValueError, match="needs a local weights file"):
        run(model, lr_image(), attention="dino-vits8", lower_bound=1.0)
    with pytest.raises(FileNotFoundError, match=r"^attention 'dino-vits8:/no/such\.pth': weights file not found"):
        run(model, lr_image(), attention="dino-vits8:/no/such.pth", lower_bound=1.0)


@pytest.mark.parametrize("windows", [None, (8, 4), (4, 2)], ids=["whole", "one-window", "windows"])
def test_an_adapters_output_must_be_a_floating_tensor_of_the_states_shape(windows):
    """An Adapter subclass whose denoise returned an integer, bool or complex tensor was cast to the state's dtype
    without a word (CallableAdapter and PixelAdapter checked their nets, yoda.sample did not check adapters)."""
    class Bad(Adapter):
        prediction, schedule, scale, multiple = "eps", SCHED, SCALE, 1
        out = None

        def prepare(self, lr):
            up = upsample(lr, SCALE)
            return Prepared(c=up, cond=up)

        def denoise(self, x_t, t, ab_t, cond):
            return self.out(x_t)

        def crop_cond(self, cond, ys, xs):
            return cond[..., ys, xs]

    bad = Bad()
    for make in (lambda x: torch.zeros_like(x, dtype=torch.int64), lambda x: torch.zeros_like(x, dtype=torch.bool),
                 lambda x: torch.zeros_like(x, dtype=torch.complex64)):
        bad.out = make
        with pytest.raises(TypeError, match=r"^Bad\.denoise must return a real floating tensor"
                           + (" for a batch of 9 windows of 4x4" if windows == (4, 2) else "") + r", got torch\."):
            run(bad, lr_image(h=4, w=4), windows=windows, seed=0)
    bad.out = lambda x: x[..., :-1]
    with pytest.raises(ValueError, match=r"^Bad\.denoise returned shape \(\d+, 3, \d+, \d+\)"
                       + (" for a batch of 9 windows of 4x4" if windows == (4, 2) else "") + r", expected the"):
        run(bad, lr_image(h=4, w=4), windows=windows, seed=0)
    bad.out = lambda x: torch.zeros_like(x, dtype=torch.float64)  # a floating dtype of its own: cast, as before
    assert run(bad, lr_image(h=4, w=4), windows=windows, seed=0).dtype == torch.float32
    bad.out = lambda x: torch.empty_like(x, device="meta")  # another device: it failed in the fused step or the
    with pytest.raises(ValueError, match=r"^Bad\.denoise returned a tensor on meta"  # finite check, naming no model
                       + (" for a batch of 9 windows of 4x4" if windows == (4, 2) else "") + r", the state is on cpu$"):
        run(bad, lr_image(h=4, w=4), windows=windows, seed=0)


def test_an_adapter_of_ones_own_that_breaks_the_contract_is_said_before_any_step():
    """A subclass without a schedule, with a tensor for one, or a prepare that returned a tuple got Python's bare
    errors at some step ("'NoSched' object has no attribute 'schedule'", "Boolean value of Tensor ... ambiguous")."""
    class Mine(PixelAdapter):
        pass

    for attr, value, err, said in (("schedule", None, TypeError, "schedule must be a yoda.Schedule, got "
                                    "NoneType"), ("schedule", torch.linspace(1e-4, 0.02, 10), TypeError, "schedule "
                                    "must be a yoda.Schedule, got Tensor"),
                                   ("prediction", "epsilon", ValueError, "prediction must be one of"),
                                   ("scale", 2.0, ValueError, "scale must be a positive int, got 2.0")):
        model = Mine(SR3Net().eval(), SCHED, scale=SCALE)
        setattr(model, attr, value)
        with pytest.raises(err, match=rf"^Mine breaks the adapter contract \(yoda/adapters\.py\): {said}"):
            run(model, lr_image())

    class Tuple(PixelAdapter):
        def prepare(self, lr):
            p = super().prepare(lr)
            return p.c, p.cond

    with pytest.raises(TypeError, match=r"^Tuple\.prepare must return a yoda\.adapters\.Prepared\(c=\.\.\., "
                                        r"cond=\.\.\.\), got tuple$"):
        run(Tuple(SR3Net().eval(), SCHED, scale=SCALE), lr_image())


def test_an_adapters_decode_must_give_the_rgb_image():
    """A user's decode that gave the state back at another scale, or other channels, was returned as the image."""
    class BadDecode(PixelAdapter):
        def decode(self, x0, lr, cond):
            return self.out(super().decode(x0, lr, cond))

    model = BadDecode(SR3Net().eval(), SCHED, scale=SCALE)
    lr = lr_image()
    want = (1, 3, lr.shape[-2] * SCALE, lr.shape[-1] * SCALE)
    model.out = lambda im: im
    assert run(model, lr).shape == want
    for out, got in ((lambda im: im[..., ::2, ::2], rf"torch.float32 \(1, 3, {want[2] // 2}, {want[3] // 2}\)"),
                     (lambda im: torch.cat([im, im[:, :1]], 1), rf"torch.float32 \(1, 4, {want[2]}, {want[3]}\)"),
                     (lambda im: im.long(), rf"torch.int64 \(1, 3, {want[2]}, {want[3]}\)"),
                     (lambda im: im.numpy(), "ndarray")):
        model.out = out
        with pytest.raises(ValueError, match=rf"^BadDecode\.decode returned {got}, expected a floating RGB image "
                                             rf"\(1, 3, {want[2]}, {want[3]}\)"):
            run(model, lr)


def test_windows_must_fit_the_models_size_multiple_before_any_call():
    """A window narrower than the state is a model input of its own size: one that is not a multiple of the
    model's size multiple is refused, naming windows, before the model is called (it used to reach the model:
    silently for a callable, as the UNet's own error at the first step for SR3)."""
    seen = []
    f = lambda x, t, c: seen.append(tuple(x.shape)) or torch.zeros_like(x)
    ad = CallableAdapter(f, prediction="eps", schedule=SCHED, scale=SCALE, multiple=8)
    with pytest.raises(ValueError, match=r"^windows: the window 12 must be a multiple of 8, the model's size "
                                         r"multiple on the state grid \(16, 16\), got windows=\(12, 4\)$"):
        run(ad, lr_image(), windows=(12, 4), seed=0)
    assert seen == []
    run(ad, lr_image(), windows=(8, 4), seed=0)  # a multiple: runs, at the window's size
    assert set(s[-2:] for s in seen) == {(8, 8)}
    seen.clear()
    run(ad, lr_image(), windows=(24, 4), seed=0)  # wider than the state: one window, the state's own size
    assert set(s[-2:] for s in seen) == {(16, 16)}


def test_ddim_eta_above_one_is_refused():
    """DDIM's eta > 1 asked some steps for more noise than their level has; the direction term was clamped to 0
    without a word. eta = 1 (DDPM's variance) still runs."""
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    with pytest.raises(ValueError, match=r"^eta must be in \[0, 1\] for sampler='ddim' .*, got 3.0$"):
        run(model, lr_image(), sampler="ddim", eta=3.0)
    assert run(model, lr_image(), sampler="ddim", eta=1.0, seed=0).shape == (1, 3, 16, 16)


def test_progress_and_clip_are_bools_and_the_bar_changes_nothing(monkeypatch):
    """progress="no" was bool("no"), a bar; the bar itself must not change the image. progress=None is a bar on a
    terminal only (it was a TypeError; into a log file every redraw of a bar is written)."""
    import io

    import yoda.sampling.loop as loop

    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    lr, A = lr_image(), attention_map()
    bars = []
    monkeypatch.setattr(loop, "trange", lambda n, **kw: bars.append(n) or range(n))

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stderr, want in ((io.StringIO(), []), (Terminal(), [STEPS])):
        monkeypatch.setattr(sys, "stderr", stderr)
        run(model, lr, progress=None)
        assert bars == want
        bars.clear()
        yoda.sample(model, lr, steps=STEPS, seed=0)  # the default is None: no bar into a log (it was True)
        assert bars == want
        bars.clear()
    for kw, name in ((dict(progress="no"), "progress must be None or a bool, got str"),
                     (dict(clip="yes"), "clip must be None or a bool, got str")):
        with pytest.raises(TypeError, match=name):
            run(model, lr, **kw)
    assert torch.equal(run(model, lr, attention=A, seed=3, progress=True),
                       run(model, lr, attention=A, seed=3, progress=False))


def test_meta_tensors_are_named():
    """An attention map or noise on the meta device (a model built without weights, moved by mistake) failed
    deep inside torch ("Cannot copy out of meta tensor", "Tensor.item() cannot be called on meta tensors")."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    lr = lr_image()
    with pytest.raises(ValueError, match="^attention is on the meta device"):
        run(model, lr, attention=torch.empty(1, 1, 4, 4, device="meta"))
    with pytest.raises(ValueError, match=r"^noise\[0\] must be a finite float tensor \(it is on the meta device\)"):
        run(model, lr, noise=[torch.empty(1, 3, 16, 16, device="meta")] * (STEPS + 1))
    with pytest.raises(ValueError, match="^x is on the meta device"):
        yoda.to_uint8(torch.empty(1, 3, 4, 4, device="meta"))


# its sigmas start above SCHED's largest, and say so (test_solvers.py asserts it): the same words for each type
@pytest.mark.filterwarnings("ignore:sigmas. 8 is above the model's largest sigma:UserWarning")
def test_numpy_seed_and_sigmas_are_what_they_hold():
    """A numpy integer seed and a numpy array of sigmas give the image of the Python int and the torch tensor."""
    np = pytest.importorskip("numpy")
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    assert torch.equal(run(model, lr_image(), seed=np.int64(7)), run(model, lr_image(), seed=7))
    # a 0-d tensor seed and numpy windows, as steps / eta / lower_bound took them (they were refused)
    assert torch.equal(run(model, lr_image(), seed=torch.tensor(7)), run(model, lr_image(), seed=7))
    tiled = run(model, lr_image(), windows=(8, 2), window_batch=2, seed=3)
    assert torch.equal(run(model, lr_image(), windows=(np.int64(8), np.int32(2)), window_batch=np.int64(2), seed=3),
                       tiled)
    sig = [8.0, 2.0, 0.5, 0.1]
    kw = dict(seed=1, sampler="euler", steps=None)
    want = run(model, lr_image(), sigmas=torch.tensor(sig), **kw)
    assert torch.equal(run(model, lr_image(), sigmas=np.array(sig), **kw), want)
    assert torch.equal(run(model, lr_image(), sigmas=[np.float32(v) for v in sig], **kw), want)


# ------------------------------------------------------------------------------------------------------------
# Non-finite model outputs: stopped with the step and the model named, checked only every few steps
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["naive", "cpp"])
def test_nan_model_stops_at_the_first_step(backend):
    net = SR3Net()
    with torch.no_grad():
        net.conv.bias.fill_(float("nan"))
    model = PixelAdapter(net, SCHED, scale=SCALE)
    calls = []
    with pytest.raises(FloatingPointError, match=r"the model output has NaN or Inf at step 0 \(t index 49\) of 5 "
                                                 r"steps: the model PixelAdapter of SR3Net"):
        run(model, lr_image(), seed=0, backend=backend, attention=attention_map(h=16, w=16),
            callback=lambda d: calls.append(d["i"]))
    assert calls == [0]  # nothing after the step that went wrong


def test_inf_model_is_caught_within_a_few_steps_and_checks_are_sparse(monkeypatch):
    from yoda.sampling import loop as sampler

    def fn(x, t, cond):  # finite for the first two steps, then +Inf
        return torch.zeros_like(x) if int(t[0]) >= 45 else torch.full_like(x, float("inf"))

    model = CallableAdapter(fn, prediction="eps", schedule=SCHED, scale=SCALE)
    checked, calls = [], []  # (the last step done, tensors checked) of each finiteness check: one device sync
    real = sampler.all_finite
    monkeypatch.setattr(sampler, "all_finite", lambda *xs: (checked.append((calls[-1], len(xs))), real(*xs))[1])
    with pytest.raises(FloatingPointError, match=r"between steps 1 and 10 \(t index 47 to 29\) of 25 steps: the "
                                                 r"model CallableAdapter of .*fn"):
        run(model, lr_image(), seed=0, steps=25, callback=lambda d: calls.append(d["i"]))
    # stopped at the check after step 10; only then is each looked at alone (the model output: the culprit)
    assert calls == list(range(11)) and checked == [(0, 2), (10, 2), (10, 1)]
    checked.clear(), calls.clear()
    good = CallableAdapter(lambda x, t, c: torch.zeros_like(x), prediction="eps", schedule=SCHED, scale=SCALE)
    assert torch.isfinite(run(good, lr_image(), seed=0, steps=25, callback=lambda d: calls.append(d["i"]))).all()
    # model output and state together at steps 0, 10, 20 and the last; the decoded image once
    assert checked == [(0, 2), (10, 2), (20, 2), (24, 2), (24, 1)]


def test_nan_from_decode_is_an_error():
    class BadDecode(CallableAdapter):
        def decode(self, x0, lr, cond):
            return x0 * float("nan")

    model = BadDecode(lambda x, t, c: torch.zeros_like(x), prediction="eps", schedule=SCHED, scale=SCALE)
    with pytest.raises(FloatingPointError, match="BadDecode.decode returned NaN or Inf"):
        run(model, lr_image(), seed=0)


def test_validation_happens_before_any_work_and_the_backend_is_chosen_once(monkeypatch):
    """sample() validates every argument into a frozen spec before the model is called, and resolves the backend
    of the fused ops once per call (the ops then take the bound backend)."""
    import dataclasses

    from yoda.sampling import make_spec
    from yoda_kernels import ops

    net = SR3Net()
    model = CallableAdapter(make_fn(net), prediction="eps", schedule=SCHED, scale=SCALE)
    seen = []
    spy = CallableAdapter(lambda x, t, c: seen.append(int(t[0])) or make_fn(net)(x, t, c), prediction="eps",
                          schedule=SCHED, scale=SCALE)
    for bad, exc, message in ((dict(kernel_tile=12), ValueError, r"kernel_tile must be one of \(8, 16, 32\), got 12"),
                              (dict(eta=-1.0, sampler="ddim"), ValueError, "eta must be >= 0, got -1.0"),
                              (dict(windows=(4, 4)), ValueError, r"0 <= overlap < window, got \(4, 4\); a window of H "
                                                                 r"x W pixels is windows=\(\(H, W\), overlap\)$"),
                              (dict(callback=3), TypeError, "callback must be callable or None, got int"),
                              # diffusers' callback(step, timestep, latents) failed after the first model call
                              (dict(callback=lambda i, t, latents: None), TypeError,
                               r"callback must take one argument, a dict of the step .* not diffusers' callback"),
                              (dict(steps=T + 1), ValueError, rf"steps must be in \[1, T={T}\]")):
        with pytest.raises(exc, match=message):
            run(spy, lr_image(), attention=attention_map(), **bad)
    assert seen == []
    spec = make_spec(model, lr_image(), steps=STEPS, sampler="ddim", lower_bound=0.5, seed=3, backend="naive")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 4
    assert spec.taus == tuple((idx + 1) / T - 0.5 for idx, _, _ in spec.pairs) and spec.backend.name == "naive"
    calls = []
    real = ops.resolve_backend
    monkeypatch.setattr(ops, "resolve_backend", lambda *a: calls.append(a) or real(*a))
    out = run(model, lr_image(), attention=attention_map(), seed=0, backend="auto")
    assert len(calls) == 1 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------------------
# Noise draws
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["naive", "cpp"])
def test_plain_ddim_eta0_draws_no_noise(monkeypatch, backend):
    """Plain DDIM with eta = 0 has no noise term and no LR branch: only the start draws noise, and the image is
    bit-identical to the old path, where every step drew Philox normals and multiplied them by zero (here: an
    all-ones map, every pixel active, the LR branch's noise weight kept). YODA with eta = 0 still draws noise
    for its LR branch at every step but the last (ab_prev = 1 there)."""
    if backend == "cpp" and "cpp" not in K.available_backends():
        pytest.skip("no C++ kernels")
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image(h=8, w=12)
    kw = dict(sampler="ddim", eta=0.0, seed=4, backend=backend)
    old = run(model, lr, attention=torch.ones(1, 1, 16, 24), lower_bound=0.6, **kw)
    draws = []
    real = K.philox.noise
    monkeypatch.setattr(K.philox, "noise", lambda *a, **k: draws.append(a[1]) or real(*a, **k))
    new = run(model, lr, attention=None, **kw)
    assert torch.equal(new, old)
    if backend == "naive":
        assert draws == [0]  # the start only
        draws.clear()
        run(model, lr, attention=_asym_A(16, 24), **kw)
        assert draws == list(range(STEPS))  # the start and every step but the last
        draws.clear()
        run(model, lr, attention=None, sampler="ddim", eta=0.5, seed=4, backend=backend)
        assert draws == list(range(STEPS))  # eta > 0: sigma > 0 except at the last step


def test_sampling_runs_under_inference_mode():
    """The denoiser runs under torch.inference_mode; the image returned is an ordinary tensor (in-place ops work)."""
    seen = []
    net = SR3Net()

    def f(x, t, cond):
        seen.append(torch.is_inference_mode_enabled())
        return make_fn(net)(x, t, cond)

    model = CallableAdapter(f, prediction="eps", schedule=SCHED, scale=SCALE)
    out = run(model, lr_image(), attention=attention_map(), seed=0)
    assert seen == [True] * STEPS and not out.is_inference() and not out.requires_grad
    out.add_(0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_finite_is_exact(dtype):
    """yoda.sampling.spec.all_finite = torch.isfinite(x).all(), including the cases where a sum is not finite
    although every element is (overflow: the check by sums needed an elementwise fallback), and a +Inf and a -Inf
    whose sum is NaN."""
    from yoda.sampling.spec import all_finite

    big = torch.finfo(dtype).max
    x = torch.randn(3, 17, 19).to(dtype)
    cases = {"random": x, "overflowing sum": torch.full((4, 5), big, dtype=dtype), "empty": x[:0]}
    for name, v in (("nan", float("nan")), ("inf", float("inf")), ("-inf", -float("inf"))):
        y = x.clone()
        y[1, 3, 4] = v
        cases[name] = y
    y = x.clone()
    y[0, 0, 0], y[2, 16, 18] = float("inf"), -float("inf")
    cases["inf and -inf"] = y
    y = torch.full((4, 5), big, dtype=dtype)
    y[3, 4] = float("nan")
    cases["overflow and nan"] = y
    for name, t in cases.items():
        assert all_finite(t) == bool(torch.isfinite(t).all()), name
    assert all_finite(cases["overflowing sum"]) and not torch.isfinite(cases["overflowing sum"].sum())
    # several tensors at once (one device sync): finite only when each is, whichever holds the NaN or Inf
    for a in cases.values():
        for b in cases.values():
            assert all_finite(a, b) == (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_check_lr_takes_an_overflowing_sum_and_refuses_nan_and_inf(dtype):
    """check_lr reads lr's least and greatest value in one transfer: an lr whose sum overflows its dtype (a white fp16
    image of 300² pixels) is taken, one NaN or Inf anywhere is refused, and the range is that of lr."""
    from yoda.attention.classic import check_lr as check

    def check_lr(lr):  # yoda.sample's
        return check(lr, float32=False)

    white = torch.ones(1, 3, 300, 300, dtype=dtype)
    assert not torch.isfinite(white.sum()) or dtype != torch.float16
    assert torch.equal(check_lr(white), white)
    for v in (float("nan"), float("inf"), -float("inf")):
        bad = white.clone()
        bad[0, 1, 7, 9] = v
        with pytest.raises(ValueError, match="lr contains NaN or Inf"):
            check_lr(bad)
    with pytest.raises(ValueError, match=r"lr values must lie in \[-1, 1\]"):
        check_lr(white * 1.5)  # out of [-1, 1] by more than rounding


def test_check_lr_reads_float64_values_exactly():
    """The range check and the [0, 1] warning see a float64 lr's own least and greatest values (rounded to float32
    they let 1 + LR_MARGIN + 1e-12 through, and warned of a darkest pixel of 0.0200000001)."""
    from yoda.attention.classic import LR_MARGIN
    from yoda.attention.classic import check_lr as check

    def check_lr(lr):  # yoda.sample's
        return check(lr, float32=False)

    lr = torch.linspace(-0.5, 0.5, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
    lr[0, 0, 0, 0] = 1 + LR_MARGIN + 1e-12
    with pytest.raises(ValueError, match="lr values must lie in"):
        check_lr(lr)
    bright = torch.full((1, 3, 4, 4), 0.9, dtype=torch.float64)
    bright[0, 0, 0, 0] = 0.0200000001
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_lr(bright)  # darkest pixel above 0.02: no warning
    bright[0, 0, 0, 0] = 0.02
    with pytest.warns(UserWarning, match="lr has no negative value"):
        check_lr(bright)
    # the same words for every image: a loop over [0, 1] images got a line (and a registry entry) per image
    said = []
    for k in range(3):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            check_lr(torch.linspace(0.001 * k, 0.6 + 0.1 * k, 48).reshape(1, 3, 4, 4))
        said += [str(x.message) for x in w]
    assert len(said) == 3 and len(set(said)) == 1, said


def test_warns_for_a_network_in_training_mode_and_for_a_0_1_image():
    """A network left in train mode sampled with dropout on (the same seed, another image) and a [0, 1] image
    (torchvision's convention) came out washed out, both without a word."""
    from yoda.models.sr3 import SR3Config, SR3UNet

    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                    attn_res=(), res_blocks=1, image_size=16, mid_attn=False, scale=2, dropout=0.2)
    torch.manual_seed(0)
    net = SR3UNet.from_config(cfg)
    ad = net.yoda_adapter(yoda.Schedule.linear(10))
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    with pytest.warns(UserWarning, match=r"the model \(SR3UNet\) is in training mode: its Dropout layers"):
        a = yoda.sample(ad, lr, steps=2, seed=0, progress=False)
    with pytest.warns(UserWarning, match=r"the model \(SR3UNet\) is in training mode"):  # at every call
        b = yoda.sample(ad, lr, steps=2, seed=0, progress=False)
    assert not torch.equal(a, b)  # what the warning is about
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c, d = (yoda.sample(ad, lr, steps=2, seed=0, progress=False) for _ in range(2))
    assert torch.equal(c, d)
    quiet = SR3UNet.from_config(dataclasses.replace(cfg, dropout=0.0)).yoda_adapter(yoda.Schedule.linear(10))
    with warnings.catch_warnings():  # in training mode without dropout or batch norm: the same image, no warning
        warnings.simplefilter("error")
        e, f = (yoda.sample(quiet, lr, steps=2, seed=0, progress=False) for _ in range(2))
    assert quiet.net.training and torch.equal(e, f)
    with warnings.catch_warnings():  # a white page or a light image in [-1, 1] is not a [0, 1] image
        warnings.simplefilter("error")
        yoda.sample(ad, torch.ones(1, 3, 8, 8), steps=1, seed=0, progress=False)
        yoda.sample(ad, lr.clamp(0.3, 1.0), steps=1, seed=0, progress=False)
    with pytest.warns(UserWarning, match=r"lr has no negative value and its darkest pixel is within 0\.02 of 0: yoda "
                                         r"takes images in \[-1, 1\]"):
        yoda.sample(ad, (lr + 1) / 2, steps=1, seed=0, progress=False)
    with warnings.catch_warnings():  # what the warning says silences it
        warnings.simplefilter("error")
        warnings.filterwarnings('ignore', 'lr has no negative value')
        yoda.sample(ad, (lr + 1) / 2, steps=1, seed=0, progress=False)


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
def _zero_model():
    return yoda.adapters.as_adapter(lambda x, t, c: torch.zeros_like(x), prediction="eps",
                                    schedule=yoda.Schedule.linear(10), scale=2)


def test_lr_margin_takes_a_resizes_overshoot():
    """0.02 refused torch's bicubic of photographs (-1.07, 1.18); LR_MARGIN (0.25) takes them, clamped."""
    lr = torch.full((1, 3, 4, 4), -0.5)
    lr[..., 0, 0] = 1.2499
    yoda.sample(_zero_model(), lr, steps=1, seed=0, progress=False)  # a resize's overshoot: taken (clamped)
    lr[..., 0, 0] = 1.26
    with pytest.raises(ValueError, match=r"lr values must lie in \[-1, 1\]"):
        yoda.sample(_zero_model(), lr, steps=1, seed=0, progress=False)


def test_a_0_1_image_whose_darkest_pixel_is_exactly_0_is_warned_of():
    lr = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    lr[..., 0, 0] = 0.0  # any photograph with one black pixel, as torchvision's to_tensor gives it
    with pytest.warns(UserWarning, match="lr has no negative value"):
        yoda.sample(_zero_model(), lr, steps=1, seed=0, progress=False)


def test_an_extractor_given_a_0_1_image_warns_as_yoda_sample_does_and_sample_warns_once():
    """An extractor called by itself took a [0, 1] tensor without a word (SIFT found 42% fewer keypoints on one),
    where yoda.sample warns; yoda.sample with attention= says it once, not again from its extractor."""
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    lr[..., 0, 0] = 0.0
    for name in ("edge", "gaussian", "sift"):
        with pytest.warns(UserWarning, match="^lr has no negative value") as seen:
            yoda.attention.get(name)(lr)
        assert len(seen) == 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yoda.sample(_zero_model(), lr, steps=1, seed=0, progress=False, attention="edge")
    assert sum(str(w.message).startswith("lr has no negative value") for w in seen) == 1
    with pytest.warns(UserWarning, match="^lr has no negative value"):  # a callable of its own making a [0, 1] image
        yoda.sample(_zero_model(), lr * 2 - 1, steps=2, seed=0, progress=False,
                    attention=lambda x: yoda.attention.get("edge")((x + 1) / 2))
    with warnings.catch_warnings():  # an lr in [-1, 1]: no word from the extractor
        warnings.simplefilter("error")
        yoda.attention.get("edge")(lr * 2 - 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_lr_keeps_a_half_precision_state(dtype):
    seen = []
    lr = (torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
    out = yoda.sample(_zero_model(), lr, steps=3, seed=0, progress=False, callback=lambda d: seen.append(d["x"].dtype))
    assert seen == [dtype] * 3 and out.dtype == dtype


def test_an_int_window_overlaps_by_a_quarter_on_the_models_grid():
    """windows=40 took the overlap 40 // 4 = 10, off the embedded SRDiff model's grid: refused after its encoder
    ran, where `yoda upscale --tiles 40` worked (overlap 8). W alone now overlaps as the CLI's W does."""
    from yoda.sampling.spec import check_windows
    from yoda.sampling.tiles import default_overlap

    assert check_windows(16).overlap is None and check_windows((16, 4)) == check_windows((16, 4, True))
    assert (default_overlap(40, 8), default_overlap(10, 2), default_overlap(16, 8)) == (8, 2, 8)
    net = yoda.load("yoda", "default")
    lr = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = []
    out = yoda.sample(net, lr, windows=40, seed=0, progress=False, callback=lambda d: calls.append(d["calls"]))
    assert torch.equal(out, yoda.sample(net, lr, windows=(40, 8), seed=0, progress=False)) and calls == [9]
    with pytest.raises(ValueError, match="windows must satisfy window >= 1"):
        check_windows(0)
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)  # multiple 1, scale 2: unit 2
    small = lr_image(h=8, w=8)
    assert torch.equal(run(model, small, windows=10, seed=0), run(model, small, windows=(10, 2), seed=0))


def test_a_map_of_another_aspect_ratio_is_warned_of():
    """A map of another aspect ratio (a transposed one, an (h, w) mix-up) was stretched to the image silently. A
    rounding of a map pixel is not warned of (a patch model's map of a side that is not a multiple of its patch)."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE)
    lr = lr_image(h=6, w=10)  # HR 12 x 20
    said = set()
    for h, w in ((10, 6), (9, 5)):
        with pytest.warns(UserWarning, match=r"^attention is stretched to the image, whose aspect ratio") as seen:
            run(model, lr, attention=torch.rand(1, 1, h, w), seed=0)
        assert seen[0].filename == __file__  # the caller's line (run here)
        said.add(str(seen[0].message))
    assert len(said) == 1  # words that do not depend on the sizes: the default filter says it once for a service
    with pytest.warns(UserWarning, match=r"^attention\(lr\) is stretched"):
        run(model, lr, attention=lambda x: torch.rand(1, 1, 3, 100), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for h, w in ((6, 10), (12, 20), (3, 5), (2, 3), (4, 6), (7, 10)):  # exact, or within a map pixel
            run(model, lr, attention=torch.rand(1, 1, h, w), seed=0)
        run(model, lr, attention=lambda x: torch.rand(1, 1, 3, 7), seed=0)  # 3.6 x 6: a pixel's rounding a side
        run(model, lr, attention="edge", seed=0)


def test_pad_samples_any_size_as_the_cli_does():
    """Odd-sized images had no path in the library (only the CLI padded them, with the map made of the unpadded
    image: a map of the padded image moves a Gaussian's centre). yoda.sample(pad=True) edge-pads lr to what the
    model takes, pads the map made of lr itself the same way, and crops the SR back."""
    import torch.nn.functional as F

    from yoda.sampling.prepare import resolve_attention

    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE, multiple=4)  # HR sides: multiples of 4
    lr = lr_image(h=5, w=7)  # HR 10x14: not multiples of 4
    with pytest.raises(ValueError, match=r"yoda.sample\(..., pad=True\) pads lr and crops the SR back"):
        run(model, lr, seed=1)
    A = resolve_attention("gaussian", lr, (10, 14))
    padded = F.pad(lr, (0, 1, 0, 1), mode="replicate")  # 6x8: HR 12x16
    want = run(model, padded, attention=F.pad(A, (0, 2, 0, 2), mode="replicate"), seed=1)[..., :10, :14]
    seen = []
    got = run(model, lr, attention="gaussian", seed=1, pad=True, callback=lambda d: seen.append(d))
    assert got.shape == (1, 3, 10, 14) and torch.equal(got, want)
    for d in seen:  # of the SR's pixels, not of the padding's
        assert torch.equal(d["active_fraction"], (A >= torch.tensor(d["tau"]).float()).float().mean(dim=(1, 2, 3)))
    assert not torch.equal(got, run(model, padded, attention="gaussian", seed=1)[..., :10, :14])  # the map matters
    fits = lr_image(h=6, w=8)
    assert torch.equal(run(model, fits, attention="edge", seed=1, pad=True), run(model, fits, attention="edge", seed=1))
    with pytest.raises(TypeError, match="pad must be a bool, got str"):
        run(model, lr, pad="yes")


def test_pad_with_a_window_wider_than_the_image_is_the_untiled_call():
    """pad=True pads the state to lcm(scale, multiple); a window of the model's multiple may cover the SR image
    and not the padded state (scale 3, multiple 2: SR 15, state 18, window 16). The tiler laid two windows a side,
    overlapping almost wholly: 4 calls a step and another image. A window that covers the image along an axis now
    covers the state there: one call, the untiled image bit for bit. One that covers a single axis takes it whole."""
    model = PixelAdapter(SR3Net().eval(), SCHED, scale=3, multiple=2)
    lr, A = lr_image(h=5, w=5), torch.rand(1, 1, 15, 15, generator=torch.Generator().manual_seed(1))
    want = run(model, lr, attention=A, seed=1, pad=True, steps=5)
    calls = []
    got = run(model, lr, attention=A, seed=1, pad=True, steps=5, windows=16,
              callback=lambda d: calls.append(d["calls"]))
    assert torch.equal(got, want) and calls == [1] * 5
    wide = lr_image(h=5, w=12)  # SR 15 x 36, state 18 x 36: windows of 16 wide, whole in height
    calls.clear()
    run(model, wide, seed=1, pad=True, steps=2, windows=(16, 4), callback=lambda d: calls.append(d["calls"]))
    assert calls == [3, 3]  # 3 windows along the width (starts 0, 12, 20), one along the height
    # a window the size of the SR image that is no multiple of the model's (15: SR 15 x 15, state 18 x 18) was
    # refused as "must be a multiple of 2 on the state grid (18, 18)", though it covers the image as 16 does
    calls.clear()
    assert torch.equal(run(model, lr, attention=A, seed=1, pad=True, steps=5, windows=15,
                           callback=lambda d: calls.append(d["calls"])), want) and calls == [1] * 5
    with pytest.raises(ValueError, match=r"the window 13 must be a multiple of 2, the model's size multiple on the "
                                         r"state grid \(18, 18\), got windows=13$"):  # (not the overlap it took)
        run(model, lr, pad=True, windows=13)


def test_default_attention_to_state_halving_is_2x2_means():
    """bilinear with half-pixel centres (align_corners=False) halving a grid samples at 2i + 0.5: the mean of each
    2 x 2 block, exactly."""
    from yoda.adapters import Adapter
    A = torch.rand(2, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    got = Adapter().attention_to_state(A, torch.Size([2, 3, 4, 6]))
    torch.testing.assert_close(got, torch.nn.functional.avg_pool2d(A, 2), rtol=0, atol=1e-6)


def test_host_reads_do_not_grow_with_steps_or_windows(monkeypatch):
    """Every read of a tensor's value on the host (``.item()``, ``float()``, ``bool()``, ``.tolist()``) is a device
    sync on a GPU, after which the GPU waits for the host. yoda.sample reads a fixed few a call (lr's check, the
    attention map's, the tile statistics', the windows' maxima, the decoded image's) and one a finiteness check
    (FINITE_EVERY steps): none a step, none a window (the windows' maxima were read one by one, the tile
    statistics' NaN search and lr's range took three reads each)."""
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda t, *a, _real=real, _name=name: (reads.append(_name), _real(t, *a))[1])
    model = PixelAdapter(SR3Net(), SCHED, scale=SCALE)
    lr = lr_image(h=16, w=24)

    def count(steps, windows):
        reads.clear()
        run(model, lr, steps=steps, attention="gaussian", lower_bound=0.3, seed=1, windows=windows, backend="cpp")
        return len(reads)

    count(11, (16, 4))  # once first: the schedule's alpha_bar list is made (on the CPU) at the first call
    base = count(11, (16, 4))  # 12 windows; finiteness checks after steps 0, 10
    assert count(11, (8, 2)) == base  # 35 windows
    assert count(21, (16, 4)) == base + 1  # one check more (after step 20)
    assert base <= 12, reads


def test_loads_in_two_threads_keep_float32_until_the_last_is_done():
    """Under a caller's float64 default, two yoda.load calls at once (a service's threads): each put back the dtype
    it found on leaving, so the first to finish made the other's later tensors float64 (a model part float64, part
    float32: "Input type (float) and bias type (double)"). The caller's dtype comes back when the last leaves."""
    import threading

    from yoda.devices import torch_defaults

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with torch_defaults():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with torch_defaults():
            second_in.set()
            first_out.wait(10)
            seen.append(torch.empty(1).dtype)  # built after the first load is done

    torch.set_default_dtype(torch.float64)
    try:
        threads = [threading.Thread(target=f) for f in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen == [torch.float32] and torch.get_default_dtype() == torch.float64
        # a caller that sets its dtype while a load runs (started under float32) gets it back when the last is done
        torch.set_default_dtype(torch.float32)
        outer = torch_defaults()
        outer.__enter__()
        torch.set_default_dtype(torch.float64)
        with torch_defaults():
            assert torch.empty(1).dtype == torch.float32
        outer.__exit__(None, None, None)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)


def test_the_callers_default_dtype_and_device_change_nothing():
    """A program's torch.set_default_dtype(bfloat16) made yoda.load cast the embedded model's float32 weights (an
    image 0.9 of a level off) and torch.set_default_device put yoda's own tables there ('meta' here, standing in for
    'cuda': edge maps, a drawn seed and yoda.load failed). The same image as in a clean process, and the caller's
    defaults left as they were."""
    import yoda

    lr = lr_image(h=8, w=8)
    net = yoda.load()
    want = yoda.sample(net, lr, attention="edge", seed=0, progress=False)
    edge = yoda.attention.edge()(lr)  # an extractor called by itself, as README's training recipe does
    ups = {m: yoda.upsampling.upsample(lr, 4, m) for m in ("sr3", "srdiff")}  # upstream models' up(lr)
    torch.manual_seed(3)
    drawn = yoda.sample(net, lr, progress=False)
    for dtype, device in ((torch.bfloat16, "cpu"), (torch.float64, "cpu"), (torch.float32, "meta")):
        torch.set_default_dtype(dtype)
        torch.set_default_device(device)
        try:
            loaded = yoda.load()
            assert {p.dtype for p in loaded.parameters()} == {torch.float32}
            assert {p.device.type for p in loaded.parameters()} == {"cpu"}
            assert torch.equal(yoda.sample(loaded, lr, attention="edge", seed=0, progress=False), want)
            assert torch.equal(yoda.attention.edge()(lr), edge)
            assert all(torch.equal(yoda.upsampling.upsample(lr, 4, m), u) for m, u in ups.items())
            torch.manual_seed(3)
            assert torch.equal(yoda.sample(net, lr, progress=False), drawn)
            assert torch.get_default_dtype() == dtype and torch.get_default_device().type == device
        finally:
            torch.set_default_dtype(torch.float32)
            torch.set_default_device(None)
    # a model of one's own runs under the caller's defaults (yoda's hold for yoda's own tables only): one that makes
    # a tensor with no dtype / device in its forward got float32 on the CPU, next to float64 (or CUDA) weights
    seen = []

    def fn(x, t, c):
        seen.append((torch.get_default_dtype(), torch.empty(0).device.type))
        return x * 0.5

    model, small = as_adapter(fn, prediction="eps", schedule=SCHED, scale=SCALE), lr_image(h=4, w=4)
    torch.set_default_dtype(torch.float64)
    torch.set_default_device("meta")
    try:
        yoda.sample(model, small, seed=0, steps=2, progress=False, callback=lambda d: seen.append(
            (torch.get_default_dtype(), torch.empty(0).device.type)))
    finally:
        torch.set_default_dtype(torch.float32)
        torch.set_default_device(None)
    assert seen and set(seen) == {(torch.float64, "meta")}


@pytest.mark.parametrize("attention", [None, "gaussian"])
def test_decode_runs_without_the_loops_lr_state_held(attention):
    """The loop's c (and A) are let go before decode: decode's own image-sized tensors (SRDiff's up(lr) and the
    clamped residual) no longer stack on top of them at the end of a large upscale (issue 12's peak RSS)."""
    import gc
    import weakref

    seen = {}

    class Tracked(Adapter):
        prediction, schedule, scale, multiple = "x0", SCHED, SCALE, 1

        def prepare(self, lr):
            up = upsample(lr, SCALE)
            seen["c"] = weakref.ref(up)
            return Prepared(c=up, cond=None)

        def denoise(self, x_t, t, ab_t, cond):
            return torch.zeros_like(x_t)

        def decode(self, x0, lr, cond):
            gc.collect()
            seen["held"] = seen["c"]() is not None
            return x0

    out = run(Tracked(), lr_image(), attention=attention, lower_bound=0.5, steps=2, seed=0)
    assert out.shape == (1, 3, 16, 16) and seen["held"] is False


@pytest.mark.parametrize("how", ["pad", "covering"])
def test_a_map_yoda_sample_made_is_resolved_once_and_not_held_through_the_loop(how, monkeypatch):
    """A map yoda.sample made itself (padded to the model's multiple, or for the covering steps of a model's own
    steps) was resolved again in prepare (a clamped copy) and held in sample's frame through the loop and decode:
    one HR map twice at the peak. Same image either way."""
    import gc

    from yoda.sampling import loop, prepare as prep_mod

    calls, alive = [], []
    real = prep_mod.resolve_attention

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    model = PixelAdapter(SR3Net().eval(), SCHED, scale=SCALE, multiple=4)  # HR sides: multiples of 4
    lr = lr_image(h=5, w=7) if how == "pad" else lr_image()
    kw = dict(attention=lambda x: (x.mean(1, keepdim=True) + 1) / 2, lower_bound=0.5, seed=0, pad=how == "pad")
    if how == "covering":  # the model's own 1 step leaves pixels unrefined: the map is made for the covering count
        model.sampling_defaults = {"steps": 1}
        kw.update(steps=None)
    ref = run(model, lr, **kw)
    decode = type(model).decode

    def watched(self, x0, lr_, cond):
        gc.collect()
        with warnings.catch_warnings():  # (isinstance on torch.distributed's deprecated reduce_op warns)
            warnings.simplefilter("ignore", FutureWarning)
            alive.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.dim() == 4
                             and o.shape[1] == 1 and o.shape[-2:] == x0.shape[-2:]))
        return decode(self, x0, lr_, cond)

    monkeypatch.setattr(prep_mod, "resolve_attention", counted)
    monkeypatch.setattr(loop, "resolve_attention", counted)
    monkeypatch.setattr(type(model), "decode", watched)
    out = run(model, lr, **kw)
    assert torch.equal(out, ref) and len(calls) == 1 and alive == [0]


def test_the_callers_autocast_leaves_yodas_own_arithmetic_alone():
    """Under a torch.autocast the caller opened, only the model's own ops are cast (README: autocast=): the fused
    step, x0_hat, up(lr), the attention maps and the windows' blending stay float32. A network of ops autocast
    leaves alone gives the image it gives without it, bit for bit."""
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ad = CallableAdapter(lambda x, t, c: torch.tanh(x + c), prediction="eps", schedule=Schedule.linear(1000),
                         scale=4)
    for kw in (dict(steps=4), dict(attention="edge", lower_bound=0.4, steps=4),
               dict(attention="gaussian", sampler="dpmpp_2m", steps=5, windows=(32, 8)),
               dict(attention="sift", sampler="heun", steps=3, windows=(32, 8), window_batch=2)):
        want = yoda.sample(ad, lr, seed=0, progress=False, **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = yoda.sample(ad, lr, seed=0, progress=False, **kw)
        assert got.dtype == torch.float32 and torch.equal(got, want), kw


class _DropNet(torch.nn.Module):
    """f(x_t, t) with dropout: a network that needs a lambda around it to take cond."""

    def __init__(self):
        super().__init__()
        self.conv, self.drop = torch.nn.Conv2d(3, 3, 1), torch.nn.Dropout(0.5)

    def forward(self, x, t):
        return self.drop(self.conv(x))


_GLOBAL_NET = _DropNet()  # what a notebook's lambda reads: a global, not a closure cell


def test_a_network_behind_a_lambda_is_seen_for_its_training_mode():
    """A network wrapped as every (x, t) network must be (a lambda reading it from its closure or as a notebook's
    global, functools.partial, a module's bound method) was not looked at: left in training mode it sampled with
    dropout on without a word (the same seed, two images). Only what the callable loads counts: a global that
    shares a name with an attribute it reads (ckpt.net beside a global net), or a trainer's self.model beside
    the self.ema its method runs, is not warned of (a review of the first version, which did)."""
    import functools

    from yoda.callables import modules_behind

    net, sched, lr = _DropNet().train(), Schedule.linear(10), torch.rand(1, 3, 4, 4) * 2 - 1

    def sample(fn):
        return yoda.sample(as_adapter(fn, prediction="eps", schedule=sched, scale=2), lr, steps=2, seed=0,
                           progress=False)

    fns = {"closure": lambda x, t, c: net(x, t), "global": lambda x, t, c: _GLOBAL_NET(x, t),
           "partial": functools.partial(lambda n, x, t, c: n(x, t), net),
           "partial of a partial": functools.partial(functools.partial(lambda n, x, t, c: n(x, t), net)),
           "method": functools.partial(lambda f, x, t, c: f(x, t), net.forward)}
    for kind, fn in fns.items():
        held = _GLOBAL_NET if kind == "global" else net
        assert modules_behind(fn) == [held], kind
        held.train()
        with pytest.warns(UserWarning, match=r"the model \(_DropNet\) is in training mode: its Dropout layers"):
            sample(fn)
        held.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sample(fn)
    _GLOBAL_NET.train()  # a global of that name is not what ckpt.net or a trainer's self.ema runs
    ckpt = SimpleNamespace(_GLOBAL_NET=_DropNet().eval())

    class Trainer:
        def __init__(self):
            self.model, self.ema = _DropNet().train(), _DropNet().eval()

        def sample_fn(self, x, t, c):
            return self.ema(x, t)

    for fn in (lambda x, t, c: ckpt._GLOBAL_NET(x, t), Trainer().sample_fn):
        assert modules_behind(fn) == []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sample(fn)
    _GLOBAL_NET.eval()
    assert modules_behind(lambda x, t, c: x) == [] and modules_behind(torch.nn.Identity()) != []


class _ScriptableNet(torch.nn.Module):
    """f(x_t, t, cond) with dropout and batch norm (whose statistics a call in training mode leaves as they are),
    written for torch.jit.script."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.drop = torch.nn.Conv2d(6, 3, 1), torch.nn.BatchNorm2d(3, momentum=0.0), torch.nn.Dropout(0.5)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.conv(torch.cat([x_t, cond], 1))))


def test_a_scripted_network_in_training_mode_is_warned_of():
    """A torch.jit.script'ed network (or one torch.jit.load read back) has no torch Dropout / BatchNorm2d modules,
    only their names: left in training mode it sampled with dropout on (the same seed, another image) without a
    word. A traced one, traced in eval mode, runs the same in either mode: not warned of."""
    import io

    sched, lr = Schedule.linear(10), torch.rand(1, 3, 4, 4) * 2 - 1

    def sample(net):
        return yoda.sample(as_adapter(net, prediction="eps", schedule=sched, scale=2), lr, steps=2, seed=0,
                           progress=False)

    torch.manual_seed(0)
    net = _ScriptableNet().eval()
    ref = sample(net)
    scripted = torch.jit.script(net)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    for m in (scripted, torch.jit.load(buf)):
        m.train()
        with pytest.warns(UserWarning, match=r"the model \(_ScriptableNet\) is in training mode: its BatchNorm2d, "
                                             r"Dropout layers change the image"):
            assert not torch.equal(sample(m), ref)
        m.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(sample(m), ref)
    x = torch.rand(1, 3, 8, 8)
    traced = torch.jit.trace(net, (x, torch.tensor([1]), x)).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(sample(traced), ref)


def _small_sr3_and_its_image():
    """(config, a small SR3UNet x2 with a 10-step card, an 8² LR, its image at 2 seeded steps), for the wrapper tests."""
    from yoda.models.sr3 import SR3Config, SR3UNet

    cfg = SR3Config(in_channel=6, out_channel=3, inner_channel=8, norm_groups=4, channel_mults=(1, 2),
                    attn_res=(), res_blocks=1, image_size=16, mid_attn=False, scale=2)
    torch.manual_seed(0)
    net = SR3UNet.from_config(cfg).eval()
    net.card = yoda.models.ModelCard(Schedule.linear(10), 2, space="pixel")
    lr = torch.rand(1, 3, 8, 8) * 2 - 1
    return cfg, net, lr, yoda.sample(net, lr, steps=2, seed=0, progress=False)


def test_wrapped_yoda_models_and_callables_that_cannot_take_cond():
    """DataParallel / an EMA's AveragedModel around a yoda model hid its yoda_adapter, and the error said to declare
    a plain callable's prediction (doing so failed inside SRDiff.forward); a forward(x, t) module got Python's
    "takes 3 positional arguments but 4 were given" at the first step, a diffusers UNet2DModel took cond as its
    class labels; a diffusers prediction_type or scheduler was refused without the way to yoda's."""
    import functools

    from torch.optim.swa_utils import AveragedModel

    cfg, net, lr, ref = _small_sr3_and_its_image()
    for wrap in (torch.nn.DataParallel(net), AveragedModel(net)):
        assert torch.equal(yoda.sample(wrap.eval(), lr, steps=2, seed=0, progress=False), ref), type(wrap)
    with pytest.raises(TypeError, match=r"model: Sequential\(input\) cannot be called as f\(x_t, t, cond\)"):
        as_adapter(torch.nn.Sequential(net))  # another wrapper: not opened
    with pytest.raises(TypeError, match=r"model: _DropNet\(x, t\) cannot be called as f\(x_t, t, cond\) \(cond: "
                                        r"up\(lr\)\); an SR3-style network, .* is yoda\.adapters\.PixelAdapter"):
        as_adapter(_DropNet())  # (before the missing prediction, which it could not use)
    with pytest.raises(TypeError, match=r"fn: .*<lambda>\(x\) cannot be called as f\(x_t, t, cond\)"):
        CallableAdapter(lambda x: x, prediction="eps", schedule=Schedule.linear(10))
    def takes_cond(f):  # a decorator whose function takes other arguments than the callable it makes
        @functools.wraps(f)
        def g(x_t, t, cond):
            return f(torch.cat([cond, x_t], 1)[:, 3:], t)
        return g

    class CondNet(torch.nn.Module):  # forward(x, t), called through its own __call__(x_t, t, cond)
        def forward(self, x, t):
            return x

        def __call__(self, x_t, t, cond):
            return self.forward(x_t, t)

    for fine in (lambda x, t, c=None: x, lambda *a: a[0], lambda x, t, c, *, k=1: x, torch.tanh,
                 takes_cond(lambda x, t: x), CondNet()):
        CallableAdapter(fine, prediction="eps", schedule=Schedule.linear(10))
    with pytest.raises(ValueError, match=r"got 'v_prediction' \(diffusers' prediction_type 'v_prediction' is 'v'\)"):
        as_adapter(lambda x, t, c: x, prediction="v_prediction", schedule=Schedule.linear(10))
    with pytest.raises(ValueError, match=r"one of \('eps', 'x0', 'v'\), got 'foo'$"):
        as_adapter(lambda x, t, c: x, prediction="foo", schedule=Schedule.linear(10))

    class DDIMScheduler:
        config = {}

    with pytest.raises(TypeError, match=r"got DDIMScheduler; of a diffusers scheduler: "
                                        r"yoda\.models\.schedule_from_diffusers\(scheduler\.config\)\[0\]"):
        as_adapter(lambda x, t, c: x, prediction="eps", schedule=DDIMScheduler())

    class UNet2DModel(torch.nn.Module):  # (diffusers' signature; the name is what is recognised)
        def forward(self, sample, timestep, class_labels=None, return_dict=True):
            return sample

    for unet in (UNet2DModel(), torch.nn.DataParallel(UNet2DModel())):  # (a compiled one: its _orig_mod too)
        with pytest.raises(TypeError, match=r"model: a diffusers UNet2DModel takes \(sample, timestep, "):
            as_adapter(unet, prediction="eps", schedule=Schedule.linear(10))


def test_torchscript_and_exported_networks_are_checked_for_f_x_t_t_cond():
    """A traced or exported SR3-style net(x, noise_level), and a scripted function of two arguments, were taken as
    f(x_t, t, cond) (inspect cannot read TorchScript's signatures; an fx GraphModule's __call__ is (*args)) and
    failed at the first step with torch's "expected at most 3 argument(s) but received 4". Their schemas and
    forwards are read now; the three-argument forms sample as the eager module does."""
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x, noise_level):
            return self.c(x) * noise_level.float().reshape(-1, 1, 1, 1)

    class Three(Two):
        def forward(self, x_t, t, cond):
            return 0.1 * self.c(x_t) + 0.05 * cond

    @torch.jit.script
    def two(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x

    torch.manual_seed(0)
    x, t = torch.randn(1, 3, 32, 32), torch.ones(1, dtype=torch.long)  # the HR state of a 8² LR, x4 (export: static)
    sched, lr = Schedule.linear(10), torch.rand(1, 3, 8, 8) * 2 - 1
    for cls, args in ((Two, (x, t)), (Three, (x, t, torch.randn_like(x)))):  # (x twice: export ties the two)
        net = cls().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the tracer's)
            forms = {"TopLevelTracedModule": torch.jit.trace(net, args), "RecursiveScriptModule": torch.jit.script(net),
                     "GraphModule": torch.export.export(net, args).module()}
        for name, f in forms.items():
            if cls is Two:
                with pytest.raises(TypeError, match=rf"fn: {name}\(x, noise_level\) cannot be called as f\(x_t, t, "
                                                    r"cond\) .* is yoda\.adapters\.PixelAdapter"):
                    CallableAdapter(f, prediction="x0", schedule=sched)
            else:
                got = yoda.sample(as_adapter(f, prediction="x0", schedule=sched), lr, steps=2, seed=0, progress=False)
                want = yoda.sample(as_adapter(net, prediction="x0", schedule=sched), lr, steps=2, seed=0,
                                   progress=False)
                assert torch.equal(got, want), name
    with pytest.raises(TypeError, match=r"fn: two\(x, t\) cannot be called as f\(x_t, t, cond\)"):
        CallableAdapter(two, prediction="eps", schedule=sched)


def test_nested_and_compiled_wrappers_of_a_yoda_model_sample_it():
    """One wrapper around a yoda model was opened; two (DataParallel around an EMA's AveragedModel, or the other way
    round) or a torch.compile around DataParallel said to declare a plain callable's prediction. They give the bare
    model's image, and a compiled outer wrapper is what runs (its graph is compiled)."""
    from torch.optim.swa_utils import AveragedModel

    from yoda.callables import CompiledWrapper
    from yoda.models.sr3 import SR3UNet

    cfg, net, lr, ref = _small_sr3_and_its_image()
    DP = torch.nn.DataParallel
    for wrap in (DP(AveragedModel(net)), AveragedModel(DP(net)), DP(DP(net))):
        assert torch.equal(yoda.sample(wrap.eval(), lr, steps=2, seed=0, progress=False), ref), wrap
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(DP(net), backend=backend)
    held = as_adapter(compiled).net
    assert isinstance(held, CompiledWrapper) and held.compiled is compiled and held.config is net.config
    assert torch.equal(yoda.sample(compiled, lr, steps=2, seed=0, progress=False), ref) and graphs
    assert as_adapter(DP(compiled)).net.compiled is compiled  # (inside one more wrapper too)
    # the adapter's network given again (it ran uncompiled; save_model refused it), and its mode followed: the
    # model put in training mode after the adapter was made is warned of, by its own name (it named CompiledWrapper)
    assert as_adapter(held).net.compiled is compiled and yoda.callables.unwrapped(held) is net
    net_d = SR3UNet.from_config(dataclasses.replace(cfg, dropout=0.1)).eval()
    net_d.card = net.card
    ad = as_adapter(torch.compile(DP(net_d), backend=backend))
    net_d.train()
    with pytest.warns(UserWarning, match=r"^the model \(SR3UNet\) is in training mode: its Dropout layers"):
        yoda.sample(ad, lr, steps=1, seed=0, progress=False)
    net_d.eval()
    torch._dynamo.reset()


def test_a_callable_takes_gradients_as_readme_says():
    """README's recipe for a callable that needs gradients (guidance) under the sampler's inference mode:
    torch.enable_grad() alone gave "element 0 of tensors does not require grad". Here eps is the gradient of
    0.5 * |x|^2 (= x), so the image is the one of f = x."""
    def guided(x_t, t, cond):
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.clone().requires_grad_()
            (g,) = torch.autograd.grad(0.5 * (x * x).sum(), x)
        return g

    sched, lr = Schedule.linear(10), torch.rand(1, 3, 4, 4) * 2 - 1
    got, ref = (yoda.sample(as_adapter(f, prediction="eps", schedule=sched, scale=2), lr, steps=3, seed=0,
                            progress=False) for f in (guided, lambda x, t, c: x.clone()))
    assert torch.equal(got, ref)


def test_threads_sharing_a_model_get_the_bits_of_calls_made_one_after_another():
    """README: threads may share a model in yoda.sample, the same seed giving the same bits as sequential calls
    (a review checked it by hand; no test did). Three threads, three seeds each, plain and YODA, against the same
    calls made one after another."""
    import threading

    from yoda.models.srdiff import SRDiff

    torch.manual_seed(0)
    net = SRDiff(hidden_size=8, dim_mults=(1, 2), rrdb_num_block=2, rrdb_num_feat=8, sr_scale=2, timesteps=10).eval()
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    calls = [dict(seed=s, attention=a, steps=3) for s in (0, 1, 2) for a in (None, "edge")]
    ref = [yoda.sample(net, lr, progress=False, **kw) for kw in calls]
    got: dict = {}

    def work(k):
        for i in range(k, len(calls), 3):
            got[i] = yoda.sample(net, lr, progress=False, **calls[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(len(calls)))
    assert all(torch.equal(got[i], ref[i]) for i in range(len(calls)))


def test_a_callables_bad_output_in_windows_names_the_batch():
    """With windows, a callable's output of the wrong shape said "fn returned shape (40, 3, 8, 7), expected ... (40,
    3, 8, 8)" of a call on 2 images: the adapter's own check fired before the windows' wording. It says the batch."""
    ad = yoda.adapters.as_adapter(lambda x, t, c: x[..., :-1], prediction="eps", schedule=yoda.Schedule.linear(50))
    with pytest.raises(ValueError, match=r"^fn returned shape \(40, 3, 8, 7\), expected the shape of the x_t it was "
                                         r"given \(40, 3, 8, 8\) \(for a batch of 20 windows of 8x8, 2 images each\)$"):
        yoda.sample(ad, torch.rand(2, 3, 6, 5) * 2 - 1, windows=8, steps=4, seed=0)
