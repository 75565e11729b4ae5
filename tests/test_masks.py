"""yoda.masks: tau, masks, pixel update ratio and active fractions against closed forms and counting."""

import numpy as np
import pytest
import torch

from yoda import masks
from yoda.masks import active_fraction, mask_at, pixel_update_ratio, refine_fraction, tau_at
from yoda.schedule import Schedule


def test_tau_known_values():
    assert tau_at(1000, 1000, 0.6) == pytest.approx(0.4)
    assert tau_at(600, 1000) == pytest.approx(0.0)
    assert tau_at(1, 50, 0.0) == 1 / 50
    assert tau_at(50, 50, 1.0) == 0.0


@pytest.mark.parametrize("bad", [0, 51, 2.5e3])
def test_tau_bad_t(bad):
    with pytest.raises(ValueError, match="t must be"):
        tau_at(bad, 50)


def test_bad_args():
    with pytest.raises(ValueError, match="T must"):
        tau_at(1, 0)
    with pytest.raises(ValueError, match="lower_bound"):
        tau_at(1, 10, -0.1)
    # what tau_at's short way (plain ints and a float) must leave to the checks
    for bad_lb in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lower_bound must be a finite float"):
            tau_at(5, 10, bad_lb)
    with pytest.raises(TypeError, match="t must be an int"):
        tau_at(True, 10, 0.5)
    with pytest.raises(ValueError, match="t must be in 1..T=10"):
        tau_at(11, 10, 0.5)
    with pytest.raises(ValueError, match="lower_bound"):
        pixel_update_ratio(torch.rand(1, 1, 4, 4), float("nan"))
    with pytest.raises(ValueError, match="A must be"):
        mask_at(torch.rand(1, 2, 4, 4), 1, 10)
    with pytest.raises(TypeError, match="A must be a float"):
        active_fraction(torch.ones(1, 1, 4, 4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        active_fraction(torch.full((1, 1, 2, 2), float("nan")), 0.5)
    with pytest.raises(ValueError, match="tau"):
        active_fraction(torch.rand(1, 1, 2, 2), float("nan"))
    for bad in ("0.5", True, None, torch.tensor([0.5, 0.6])):  # ("0.5" and True were taken, None named nothing)
        with pytest.raises(TypeError, match="^tau must be a float, got "):
            active_fraction(torch.rand(1, 1, 2, 2), bad)


def test_numpy_and_tensor_integers_and_bad_maps():
    """t and T of numpy or a 0-d tensor were refused with a range message ("t must be in 1..T=1000, got
    np.int64(5)"); a map outside [0, 1] or an empty one gave negative or NaN ratios without a word."""
    for t, T in ((np.int64(5), 1000), (torch.tensor(5), np.int32(1000)), (5, torch.tensor(1000))):
        assert tau_at(t, T, 0.6) == tau_at(5, 1000, 0.6)
    for t in (2.5, np.float64(2.5), np.float32(2.5), torch.tensor(2.5)):  # a fractional t stays a float
        assert tau_at(t, 10, 0.0) == 0.25
    A = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask_at(A, np.int64(700), np.int64(1000)), mask_at(A, 700, 1000))
    with pytest.raises(TypeError, match="T must be a positive int, got str"):
        tau_at(1, "10")
    with pytest.raises(TypeError, match="t must be an int"):
        tau_at(torch.tensor([1, 2]), 10)
    for bad, match in ((A - 2, r"A values must be in \[0, 1\], got range \[-1\.9"), (A * 3, r"A values must be in"),
                       (torch.empty(1, 1, 0, 0), "not empty"), (torch.empty(1, 1, 2, 2, device="meta"), "meta")):
        for f in (pixel_update_ratio, lambda A: active_fraction(A, 0.5), lambda A: mask_at(A, 1, 10)):
            with pytest.raises(ValueError, match=match):
                f(bad)
    assert pixel_update_ratio(A * (1 + 5e-4)).shape == (1,)  # float rounding of a resize is let through
    from yoda.training import LossConfig, diffusion_loss

    x0 = torch.zeros(1, 3, 4, 4)
    ab, cfg = Schedule.linear(10).alphas_cumprod, LossConfig(mask_input=True, mask_loss=True)
    zero = lambda x, i, s: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="A values must be in"):
        diffusion_loss(zero, x0, x0, A - 2, ab, cfg)
    # a 2-D ab was an IndexError from inside, a seed for a generator randint's own TypeError
    with pytest.raises(ValueError, match=r"^ab must be the \(T,\) alpha_bar of the schedule, got \(2, 5\)"):
        diffusion_loss(zero, x0, x0, A, ab.view(2, 5), cfg)
    with pytest.raises(TypeError, match="^generator must be a torch.Generator or None, got int"):
        diffusion_loss(zero, x0, x0, A, ab, cfg, generator=5)


def test_mask_is_threshold_and_shapes():
    A = torch.tensor([[[[0.0, 0.2], [0.4, 1.0]]]])
    # t = 40 of T = 50, l = 0.6 -> tau = 0.2: pixels >= 0.2 are active
    assert mask_at(A, 40, 50).tolist() == [[[[False, True], [True, True]]]]
    assert mask_at(A[:, 0], 40, 50).shape == (1, 2, 2)
    assert mask_at(A, 50, 50, lower_bound=0.0).tolist() == [[[[False, False], [False, True]]]]


def test_masks_are_monotone_over_sampling_and_full_after_lT():
    torch.manual_seed(0)
    A = torch.rand(2, 1, 9, 11)
    T = 50
    for steps in (5, 17, 50):
        idxs = Schedule.linear(T).respace(steps)
        prev = torch.zeros_like(A, dtype=torch.bool)
        for idx in idxs:  # sampling order: descending t
            m = mask_at(A, idx + 1, T, 0.6)
            assert (m | ~prev).all(), "an active pixel became inactive"
            prev = m
        assert prev.all()  # the last step (t <= 0.6 T) refines every pixel
    # every t <= l T is fully active, whatever A
    for t in range(1, 31):
        assert mask_at(torch.zeros(1, 1, 3, 3), t, T, 0.6).all()


def test_active_fraction_values():
    A = torch.tensor([[0.1, 0.5], [0.5, 0.9]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    A[1] = 0.0
    assert active_fraction(A, 0.5).tolist() == [0.75, 0.0]
    assert active_fraction(A, -0.1).tolist() == [1.0, 1.0]


def test_pixel_update_ratio_closed_form_and_counting():
    A = torch.tensor([0.0, 0.2, 0.4, 1.0]).view(1, 1, 2, 2)
    # min(1, A + 0.6) = 0.6, 0.8, 1, 1 -> mean 0.85
    assert pixel_update_ratio(A, 0.6).item() == pytest.approx(0.85)
    assert pixel_update_ratio(A, 1.0).item() == 1.0
    assert pixel_update_ratio(torch.zeros(1, 1, 3, 3), 0.6).item() == pytest.approx(0.6)
    # Fig. 3's ratio is the fraction of (pixel, step) pairs refined with all T steps: count them, to 1/T
    torch.manual_seed(1)
    A = torch.rand(3, 1, 16, 16)
    T = 1000
    counted = refine_fraction(A, list(range(T - 1, -1, -1)), T, 0.6)
    torch.testing.assert_close(counted, pixel_update_ratio(A, 0.6), atol=1.0 / T, rtol=0)
    # by hand for one pixel: A = 0.25, l = 0.6 -> refined at t / T <= 0.85 -> 850 of 1000 steps
    one = torch.full((1, 1, 1, 1), 0.25)
    assert refine_fraction(one, list(range(T)), T, 0.6).item() == pytest.approx(0.85, abs=1e-6)
    # the binary search counts what active_fraction counts step by step, ties at tau included (A equal to some
    # float32 thresholds), per image, for any visited indices
    idx = [999, 800, 613, 400, 37, 0]
    taus = torch.tensor([tau_at(i + 1, T, 0.3) for i in idx], dtype=torch.float64).float()
    A = torch.cat([torch.rand(2, 1, 9, 7), taus.clamp(0, 1).repeat(11)[:63].view(1, 1, 9, 7)])
    by_step = sum(active_fraction(A, tau_at(i + 1, T, 0.3)).double() for i in idx) / len(idx)
    torch.testing.assert_close(refine_fraction(A, idx, T, 0.3).double(), by_step, atol=1e-7, rtol=0)


def test_mask_compares_in_float32_like_the_kernels():
    # tau = 10/10 - 0.3 = 0.7 (float64); float32(0.7) = 0.69999998... < 0.7, but == float32(tau): the kernels
    # compare A >= float32(tau), so this pixel is active there and must be here too
    A = torch.full((1, 1, 1, 1), 0.7, dtype=torch.float32)
    assert A.double().item() < 0.7
    assert mask_at(A, 10, 10, 0.3).item()
    assert active_fraction(A, 0.7).item() == 1.0


def test_one_lower_bound_check_everywhere():
    """masks.check_lower_bound is what sampling, training and evaluation use: numpy scalars and 0-d tensors
    are floats; bools and strings are type errors; each caller's error names its own argument."""
    import numpy as np

    from yoda.evaluate import EvalSettings
    from yoda.masks import check_lower_bound
    from yoda.training import LossConfig

    assert check_lower_bound(np.float32(0.5)) == 0.5 and check_lower_bound(torch.tensor(0.25)) == 0.25
    for bad in (True, "0.5"):
        with pytest.raises(TypeError, match="lower_bound must be a float"):
            check_lower_bound(bad)
    assert LossConfig(lower_bound=np.float64(0.6)).lower_bound == 0.6
    assert type(LossConfig(lower_bound=np.float32(0.5)).lower_bound) is float
    with pytest.raises(ValueError, match="lower_bound must be a finite float"):
        LossConfig(lower_bound=-1.0)
    assert EvalSettings(lower_bounds=np.array([0.4, 0.8], dtype=np.float32)).lower_bounds == (
        float(np.float32(0.4)), float(np.float32(0.8)))
    with pytest.raises(ValueError, match=r"lower_bounds\[1\]"):
        EvalSettings(lower_bounds=(0.4, float("inf")))


# ---- holes found by a mutation pass (eleventh session): each test fails on its planted one-line bug ----
def test_three_d_attention_batches_are_read_per_image():
    A = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(0))
    want = (A.numpy() >= np.float32(0.5)).reshape(2, -1).mean(1)  # counted by numpy
    np.testing.assert_allclose(active_fraction(A[:, 0], 0.5).numpy(), want, rtol=0, atol=1e-7)
    want_pur = np.minimum(1.0, A.numpy().astype(np.float64) + 0.6).reshape(2, -1).mean(1)
    np.testing.assert_allclose(pixel_update_ratio(A[:, 0], 0.6).numpy(), want_pur, rtol=1e-6)


def test_numbers_given_as_meta_tensors_or_of_the_wrong_type_are_named():
    """steps, seed and lower_bound as meta tensors raised torch's "Tensor.item() cannot be called on meta tensors",
    naming nothing; a seed of 3.0 or '3' was a ValueError where steps=2.0 is a TypeError."""
    from yoda.sampling.spec import resolve_seed

    meta = torch.tensor(3, device="meta")
    for check, name in ((lambda v: masks.as_int(v, "steps"), "steps"), (resolve_seed, "seed"),
                        (masks.check_lower_bound, "lower_bound"), (lambda v: masks.as_float(v, "eta"), "eta")):
        with pytest.raises(ValueError, match=f"^{name} is on the meta device"):
            check(meta)
    for bad in (3.0, "3", True):
        with pytest.raises(TypeError, match=r"^seed must be an int in \[0, 2\*\*32 - 1\] or None, got "):
            resolve_seed(bad)
    with pytest.raises(ValueError, match=r"^seed must be an int in \[0, 2\*\*32 - 1\] or None, got -1"):
        resolve_seed(-1)
    assert masks.check_lower_bound(np.float32(0.5)) == 0.5 and masks.as_float(torch.tensor(2), "eta") == 2.0
    assert masks.check_lower_bound(np.array(0.5)) == 0.5 and masks.as_int(np.array(3), "steps") == 3  # np.load's
    for bad in (True, "0.4", torch.tensor([0.4])):
        with pytest.raises(TypeError, match="^lower_bound must be a float, got "):
            masks.check_lower_bound(bad)
    with pytest.raises(ValueError, match="^lower_bound must be a finite float >= 0, got inf"):
        masks.check_lower_bound(float("inf"))
