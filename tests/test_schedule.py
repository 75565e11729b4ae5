"""yoda.schedule: constructors against diffusers and closed forms, respacing, JSON round trip, errors."""

import dataclasses
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch

from yoda.schedule import Schedule

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import DDIMScheduler, DDPMScheduler

EPS32 = 2.0**-24  # float32 unit roundoff


def _diffusers(kind: str, T: int, **kw):
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, **kw)


@pytest.mark.parametrize(
    "kind, make",
    [
        ("linear", lambda T: Schedule.linear(T, 1e-4, 2e-2)),
        ("scaled_linear", lambda T: Schedule.scaled_linear(T, 0.00085, 0.012)),
        ("squaredcos_cap_v2", lambda T: Schedule.cosine(T)),
    ],
)
@pytest.mark.parametrize("T", [50, 1000])
def test_betas_and_alphas_cumprod_match_diffusers(kind, make, T):
    s = make(T)
    kw = {"beta_start": 1e-4, "beta_end": 2e-2} if kind == "linear" else {}
    if kind == "scaled_linear":
        kw = {"beta_start": 0.00085, "beta_end": 0.012}
    d = _diffusers(kind, T, **kw)
    assert s.T == T and s.betas.dtype == torch.float64 and s.alphas_cumprod.dtype == torch.float64
    # diffusers builds betas in float32: a float32 linspace (<= 2 roundings), squared for scaled_linear
    # (relative error doubles, + 1 rounding): within 8 units of float32 roundoff of our float64 betas
    np.testing.assert_allclose(s.betas.numpy(), d.betas.double().numpy(), rtol=8 * EPS32, atol=0)
    # diffusers' float32 cumprod: each factor 1 - beta_k carries a relative error of about
    # eps * (1 + beta_k / (1 - beta_k)) (large when a beta is capped near 1) plus one rounding per product
    b = s.betas.numpy()
    bound = 2 * EPS32 * np.cumsum(2 + b / (1 - b))
    ours, theirs = s.alphas_cumprod.numpy(), d.alphas_cumprod.double().numpy()
    rel = np.abs(ours - theirs) / ours
    assert (rel <= bound).all(), (rel / bound).max()


def test_closed_forms():
    s = Schedule.linear(2, 1e-4, 2e-2)
    assert s.betas.tolist() == [1e-4, 2e-2]
    assert s.alphas_cumprod.tolist() == [1 - 1e-4, (1 - 1e-4) * (1 - 2e-2)]
    assert s.alpha_bar(1) == (1 - 1e-4) * (1 - 2e-2)
    assert s.alpha_bar(-1) == 1.0
    assert s.noise_level(1) == math.sqrt((1 - 1e-4) * (1 - 2e-2))
    # cosine: alpha_bar[idx] = f(idx + 1) / f(0) while no beta is capped (improved-DDPM eq. 17)
    T, sc = 100, 0.008
    c = Schedule.cosine(T, s=sc)
    f = lambda u: math.cos((u / T + sc) / (1 + sc) * math.pi / 2) ** 2  # noqa: E731
    for idx in (0, 10, 50, 90):
        assert c.alpha_bar(idx) == pytest.approx(f(idx + 1) / f(0), rel=1e-12)
    assert c.betas.max().item() <= 0.999
    # max_beta caps the betas that pass it, and only those (a fixed cap of 0.999 passed every test)
    raw = [1 - f(i + 1) / f(i) for i in range(T)]
    capped = Schedule.cosine(T, s=sc, max_beta=0.1).betas.tolist()
    assert capped == pytest.approx([min(b, 0.1) for b in raw], rel=1e-12) and sum(b > 0.1 for b in raw) >= 5
    sl = Schedule.scaled_linear(3, 0.01, 0.04)
    np.testing.assert_allclose(sl.betas.numpy(), [0.01, 0.0225, 0.04], rtol=1e-14)


def _has_tie(T, steps, spacing):
    """Whether the exact spacing formula hits k + 1/2 somewhere (diffusers' float arithmetic decides those)."""
    if spacing == "trailing":
        return any((2 * T * (steps - i)) % steps == 0 and (T * (steps - i)) % steps for i in range(steps))
    if spacing == "linspace":
        return steps > 1 and any((2 * (T - 1) * i) % (steps - 1) == 0 and ((T - 1) * i) % (steps - 1)
                                 for i in range(steps))
    return False


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("T", [1, 7, 50, 1000])
def test_respace_matches_diffusers(spacing, T):
    s = Schedule.linear(T)
    d = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    compared = 0
    for steps in sorted({1, 2, 3, 4, 5, 10, 20, 25, 50, 333, T} & set(range(1, T + 1))):
        got = s.respace(steps, spacing)
        assert len(got) == steps
        assert all(a > b for a, b in zip(got, got[1:])), got
        assert 0 <= got[-1] and got[0] < T
        d.set_timesteps(steps)
        ref = d.timesteps.tolist()
        if _has_tie(T, steps, spacing) or len(ref) != steps:  # see Schedule.respace's docstring
            continue
        assert got == ref, (T, steps)
        compared += 1
    assert compared >= min(2, T)


def test_respace_docstring_counts_of_diffusers_ties():
    """Schedule.respace's docstring counts the step counts of T = 1000 where diffusers' float rounding visits
    another index (it said 127; there are 49 trailing + 92 linspace) and those where its arange gives steps + 1."""
    s = Schedule.linear(1000)
    differ = {"trailing": 0, "linspace": 0}
    longer = 0
    for spacing in differ:
        d = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        for steps in range(1, 1001):
            d.set_timesteps(steps)
            ref = d.timesteps.tolist()
            if len(ref) != steps:
                longer += 1
            elif ref != s.respace(steps, spacing):
                differ[spacing] += 1
    assert (differ, longer) == ({"trailing": 49, "linspace": 92}, 62)
    doc = " ".join(Schedule.respace.__doc__.split())
    assert "49 trailing and 92 linspace step counts of the 1000" in doc and "for 62 more" in doc


@pytest.mark.parametrize("T", [20, 50, 1000])
def test_sd_leading_is_diffusers_ddim_with_steps_offset_1(T):
    """Stable Diffusion's DDIM config (leading, steps_offset 1, set_alpha_to_one False): exactly its timesteps,
    every step to t - T // steps, the last to alpha_bar[0]. "ldm_uniform" visits more when T % steps != 0 (LDM's
    own range(0, T, T // steps) + 1: 77 steps for 75 at T = 1000), which is why the SD x4 upscaler needs this."""
    s = Schedule.linear(T)
    d = DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    for steps in sorted({2, 3, 4, 7, 10, 19, 75} & set(range(2, T))):
        d.set_timesteps(steps)
        assert s.respace(steps, "sd_leading") == d.timesteps.tolist(), (T, steps)
        pairs = s.pairs(steps, "sd_leading")
        ab = s.alphas_cumprod
        assert [p[2] for p in pairs] == [float(ab[i]) for i in d.timesteps.tolist()[1:]] + [float(ab[0])]
    assert len(Schedule.linear(1000).respace(75, "ldm_uniform")) == 77
    with pytest.raises(ValueError, match="spacing='sd_leading' visits"):
        s.respace(T, "sd_leading")


def test_respace_known_values_and_full_schedule():
    s = Schedule.linear(50)
    assert s.respace(5) == [49, 39, 29, 19, 9]
    assert s.respace(5, "leading") == [40, 30, 20, 10, 0]
    assert s.respace(5, "linspace") == [49, 37, 24, 12, 0]  # 49 * k / 4 = 36.75, 24.5 (-> 24, even), 12.25
    for spacing in ("trailing", "leading", "linspace"):
        assert s.respace(50, spacing) == list(range(49, -1, -1))
    pairs = s.pairs(3, "leading")
    assert [p[0] for p in pairs] == [32, 16, 0]
    assert pairs[0][2] == s.alpha_bar(16) and pairs[-1][2] == 1.0


@pytest.mark.parametrize("steps", [0, 51, -3])
def test_respace_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        Schedule.linear(50).respace(steps)


def test_respace_bad_types():
    s = Schedule.linear(50)
    with pytest.raises(TypeError, match="steps"):
        s.respace(5.0)
    with pytest.raises(ValueError, match="spacing"):
        s.respace(5, "middle")


def test_json_round_trip_is_exact(tmp_path):
    for s in (Schedule.linear(37), Schedule.cosine(100), Schedule.scaled_linear(10)):
        p = tmp_path / "s.json"
        p.write_text(json.dumps(s.to_dict()))
        back = Schedule.from_dict(json.loads(p.read_text()))
        assert back == s and torch.equal(back.betas, s.betas)
        assert torch.equal(back.alphas_cumprod, s.alphas_cumprod)
    assert Schedule.linear(10) != Schedule.linear(11)


def test_immutable_and_copied():
    b = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)
    s = Schedule.from_betas(b)
    b[0] = 0.5  # the schedule holds its own copy
    assert s.betas[0].item() == pytest.approx(1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = b  # frozen dataclass
    assert Schedule.from_betas([0.1, 0.2]).betas.dtype == torch.float64


@pytest.mark.parametrize(
    "betas, err, match",
    [
        ([0.1, 0.0], ValueError, r"\(0, 1\)"),
        ([1.0, 0.1], ValueError, r"\(0, 1\).* at index 0"),  # only the last beta may be 1 (zero terminal SNR)
        ([0.1, 1.0, 0.2], ValueError, r"\(0, 1\).* at index 1"),
        ([0.1, 1.5], ValueError, r"\(0, 1\]"),
        ([0.1, float("nan")], ValueError, "finite"),
        ([], ValueError, "at least one"),
        ([[0.1, 0.2]], ValueError, "1-D"),
        # alpha_bar[0] == 1: "ab_t must be < 1" after the model ran, or log(0) in the solvers' sigmas
        ([1e-17, 0.5, 0.6], ValueError, r"^betas\[0\] = 1e-17 is too small: alpha_bar\[0\] = 1 - betas\[0\] rounds"),
    ],
)
def test_bad_betas(betas, err, match):
    with pytest.raises(err, match=match):
        Schedule.from_betas(torch.tensor(betas, dtype=torch.float64))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="T"):
        Schedule.linear(0)
    with pytest.raises(ValueError, match="beta_end"):
        Schedule.linear(10, 1e-4, 1.5)
    for make in (Schedule.linear, Schedule.scaled_linear):  # the two swapped: a decreasing schedule, silently
        with pytest.raises(ValueError, match=r"beta_start must be <= beta_end \(betas grow with t\), got 0.02 > 0.0001"):
            make(10, 0.02, 1e-4)
    assert Schedule.linear(3, 0.01, 0.01).betas.tolist() == [0.01] * 3  # constant betas are a schedule
    with pytest.raises(ValueError, match="idx"):
        Schedule.linear(10).noise_level(10)
    with pytest.raises(ValueError, match="betas"):
        Schedule.from_dict({"T": 3})
    with pytest.raises(ValueError, match="T"):
        Schedule.from_dict({"T": 3, "betas": [0.1, 0.2]})
    # a T that is not the int it names ("x" was int()'s own error; 2.7 passed as 2)
    for bad in (2.7, "x", True):
        with pytest.raises(ValueError, match=rf"^d\['T'\] = {re.escape(repr(bad))} does not match len\(d\['betas'\]\)"):
            Schedule.from_dict({"T": bad, "betas": [0.1, 0.2]})
    assert Schedule.from_dict({"T": np.int64(2), "betas": [0.1, 0.2]}).T == 2


# ----------------------------------------------------------------------------------------------------------
# Zero terminal SNR (Lin et al. 2024, Algorithm 1)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda T: Schedule.linear(T), lambda T: Schedule.scaled_linear(T), lambda T: Schedule.cosine(T)],
    ids=["linear", "scaled_linear", "cosine"],
)
@pytest.mark.parametrize("T", [2, 50, 1000])
def test_rescale_zero_terminal_snr_matches_diffusers(make, T):
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    s = make(T)
    z = s.rescale_zero_terminal_snr()
    ref = rescale_zero_terminal_snr(s.betas.clone())  # diffusers' function, given float64 betas
    np.testing.assert_allclose(z.betas.numpy(), ref.numpy(), rtol=1e-13, atol=1e-15)
    assert z.betas[-1].item() == 1.0 and z.alphas_cumprod[-1].item() == 0.0 and z.zero_terminal_snr
    assert not s.zero_terminal_snr and z.T == T
    assert ((z.betas > 0) & (z.betas <= 1)).all()
    # the algorithm from its definition: sqrt(ab') = (sqrt(ab) - sqrt(ab[T-1])) * sqrt(ab[0]) / (sqrt(ab[0]) -
    # sqrt(ab[T-1])): an affine map of sqrt(alpha_bar) fixing the first value and sending the last to 0
    r, q = s.alphas_cumprod.sqrt().numpy(), z.alphas_cumprod.sqrt().numpy()
    np.testing.assert_allclose(q, (r - r[-1]) * r[0] / (r[0] - r[-1]), rtol=1e-12, atol=1e-15)
    assert z.alpha_bar(0) == pytest.approx(s.alpha_bar(0), rel=1e-14)
    assert z.rescale_zero_terminal_snr() is z  # already zero-SNR: unchanged
    assert z.pairs(min(T, 5))[0][:2] == (T - 1, 0.0) and z.noise_level(T - 1) == 0.0
    assert Schedule.from_dict(json.loads(json.dumps(z.to_dict()))) == z


def test_rescale_zero_terminal_snr_against_diffusers_schedulers():
    """DDIMScheduler / DDPMScheduler(rescale_betas_zero_snr=True) build it in float32: within float32 rounding."""
    z = Schedule.scaled_linear(1000, 0.00085, 0.012).rescale_zero_terminal_snr()
    for cls in (DDIMScheduler, DDPMScheduler):
        d = cls(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                rescale_betas_zero_snr=True)
        assert d.betas[-1].item() == 1.0 and d.alphas_cumprod[-1].item() == 0.0
        np.testing.assert_allclose(z.alphas_cumprod.numpy(), d.alphas_cumprod.double().numpy(), rtol=2e-5,
                                   atol=1e-7)
    plain = Schedule.scaled_linear(1000, 0.00085, 0.012)
    assert (plain.alphas_cumprod - z.alphas_cumprod).abs().max() > 1e-3  # the rescale is not a no-op


def test_rescale_zero_terminal_snr_errors():
    with pytest.raises(ValueError, match="T >= 2"):
        Schedule.linear(1).rescale_zero_terminal_snr()


def test_numpy_integers_are_ints_here_too():
    """yoda.sample took steps=np.int64(2), but Schedule.respace refused it and alpha_bar(np.int64(5)) said the
    index was not an int."""
    import numpy as np

    s = Schedule.linear(1000)
    assert s.respace(np.int64(5)) == s.respace(5) and s.alpha_bar(np.int32(5)) == s.alpha_bar(5)
    with pytest.raises(TypeError, match="steps must be an int, got float"):
        s.respace(5.0)
    with pytest.raises(ValueError, match=r"idx must be an int in \[0, 1000\), got 5.0"):
        s.alpha_bar(5.0)
    # a one-element tensor: an integer one is its int; a float or bool one is refused as 5.7 and True are (it read
    # tensor(5.7) as 5 and tensor(True) as 1); numpy's -1 is "after the last step" as -1 is
    assert s.alpha_bar(torch.tensor(5)) == s.alpha_bar(5) and s.alpha_bar(np.int64(-1)) == 1.0
    for bad in (torch.tensor(5.7), torch.tensor(True), torch.tensor(5.0)):
        with pytest.raises(ValueError, match=r"idx must be an int in \[0, 1000\), got tensor"):
            s.alpha_bar(bad)


@pytest.mark.parametrize("make, name", [
    (lambda v: Schedule.linear(10, v), "beta_start"), (lambda v: Schedule.linear(10, 1e-4, v), "beta_end"),
    (lambda v: Schedule.scaled_linear(10, v), "beta_start"), (lambda v: Schedule.cosine(10, s=v), "s"),
    (lambda v: Schedule.cosine(10, max_beta=v), "max_beta"),
])
def test_every_constructor_argument_follows_one_rule(make, name):
    """Each float argument: Python / numpy reals and 0-d tensors are taken, as yoda.sample takes them; a str, a bool,
    a 1-element 1-D tensor and a meta tensor are refused naming the argument. ('0.001' was taken by linear and an
    error of math.sqrt's in scaled_linear; cosine took s=True as 1.0; a meta tensor said only 'Tensor.item()')."""
    want = make(0.005)
    for same in (np.float32(0.005), np.float64(0.005), torch.tensor(0.005, dtype=torch.float64)):
        assert make(same) == want if not isinstance(same, np.float32) else make(same).T == 10
    for bad in ("0.005", True, False, torch.tensor([0.005]), [0.005], None):
        with pytest.raises(TypeError, match=f"^{name} must be a float, got "):
            make(bad)
    with pytest.raises(ValueError, match=f"^{name} is on the meta device"):
        make(torch.tensor(0.005, device="meta"))
    with pytest.raises(ValueError, match=f"^{name} must be finite"):
        make(float("inf"))
    with pytest.raises(ValueError, match="^T is on the meta device"):
        Schedule.linear(torch.tensor(10, device="meta"))


def test_from_betas_takes_what_schedule_takes():
    """from_betas and Schedule(betas) agreed on nothing: ['0.1'] was an error of torch's in one and a TypeError in
    the other, 0.1 'not iterable' in one; [True] was beta 1; a meta tensor an error of torch's copy."""
    want = Schedule.from_betas(torch.tensor([0.1, 0.2], dtype=torch.float64))
    both = np.array([0.2, 0.1])
    for same in ([0.1, 0.2], (0.1, 0.2), np.array([0.1, 0.2]), (v for v in [0.1, 0.2]), [np.float64(0.1), 0.2],
                 both[::-1], np.array([0.1, 0.2], dtype=">f8"), list(torch.tensor([0.1, 0.2], dtype=torch.float64)),
                 np.array([0.1, 0.2], dtype=object), [np.array(0.1), 0.2]):  # (a reversed or big-endian array, a
        assert Schedule.from_betas(same) == want  # list of 0-d tensors: from_betas took them, and takes them again)
    assert Schedule(v for v in [0.1, 0.2]) == want and Schedule(np.array([0.1, 0.2])) == want
    for bad, match in ((["0.1"], "betas[0] must be a float, got str"), ([0.1, True], "betas[1] must be a float, "
                       "got bool"), (0.1, "betas must be a 1-D sequence of floats, got float"), ("0.1", "got str"),
                       ({0.1: 1}, "got dict"), (np.array([0.1, None]), "betas[1] must be a float, got NoneType"),
                       (torch.tensor([True]), "betas must be real numbers, got a torch.bool tensor"),
                       (np.array([True]), "numpy array of bool")):
        for make in (Schedule, Schedule.from_betas):
            said = "^" + re.escape(match) if match.startswith("betas") else r"^betas\b.*" + re.escape(match)
            with pytest.raises(TypeError, match=said):
                make(bad)
    with pytest.raises(ValueError, match="^betas is on the meta device"):
        Schedule.from_betas(torch.zeros(3, device="meta"))
    assert Schedule.from_betas(torch.tensor([1], dtype=torch.int16)).zero_terminal_snr  # an integer dtype: its value


def test_cosine_with_a_huge_s_names_s():
    with pytest.raises(ValueError, match=r"^s = 1e\+308 is too large for T = 10"):
        Schedule.cosine(10, s=1e308)
