"""MaskedOps: masked_step and masked_combine with the loop's fixed arguments checked once. Each call equals the
public op bit for bit on every backend; a bad argument raises the public op's error (at construction for what
is fixed, at the call for what changes); tensors that fit take the short path, those that do not the full one."""

from __future__ import annotations

import pytest
import torch

import test_masked_combine as TC
import test_masked_step as TS
import yoda_kernels as yk
from yoda_kernels import masked_ops, ops
from yoda_kernels import testing as T

FIXED = {"c", "A", "tile", "stats", "seed"}  # what MaskedOps takes once
CALL = {"x", "model_out", "denoised", "tau", "noise", "step", "coefs"}  # what each call takes
BACKENDS = yk.available_backends("cpu")


def _loop_inputs(shape, attention: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(shape, generator=g), torch.randn(shape, generator=g) * 0.5
    A = T.blob_attention(shape[0], *shape[2:]) if attention else None
    preds = [torch.randn(shape, generator=g) for _ in range(3)]
    return g, x, c, A, preds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attention", [False, True], ids=["plain", "masked"])
@pytest.mark.parametrize("explicit_noise", [False, True], ids=["philox", "noise"])
def test_a_loop_equals_the_public_ops(backend, attention, explicit_noise):
    """Three steps of masked_step and one masked_combine of 1, 2 and 3 estimates: the same bits as the public
    ops with the same arguments, Philox or explicit noise, plain or masked."""
    shape = (1, 3, 16, 24) if backend == "triton" else (2, 3, 24, 40)
    g, x, c, A, preds = _loop_inputs(shape, attention)
    tile = 8
    fixed = dict(tile=tile, seed=2**32 - 1, backend=backend)
    step_ops = yk.MaskedOps(c, A, **fixed)
    for i, (ab_t, ab_prev) in enumerate([(0.2, 0.35), (0.35, 0.6), (0.6, 0.9)]):
        k = yk.step_coefficients(ab_t, ab_prev, prediction="v", sampler="ddim", eta=0.5)
        z = torch.randn(shape, generator=g) if explicit_noise else None
        tau = 0.6 - 0.2 * i
        got = step_ops.step(x, preds[i], tau, coefs=k, step=i + 1, clip=True, noise=z)
        want = yk.masked_step(x, preds[i], c, A, tau, coefs=k, step=i + 1, clip=True, noise=z, **fixed)
        assert torch.equal(got, want)
        assert not torch.equal(got, x)
        x = got
    for n in (1, 2, 3):
        coefs = TC.coefs_for("sde", n)
        z = torch.randn(shape, generator=g) if explicit_noise else None
        got = step_ops.combine(x, preds[:n], 0.3, coefs=coefs, step=7, noise=z)
        want = yk.masked_combine(x, preds[:n], c, A, 0.3, coefs=coefs, step=7, noise=z, **fixed)
        assert torch.equal(got, want)


def test_fitting_calls_skip_the_fixed_checks(monkeypatch):
    """The fixed arguments are checked (and A's tile stats made) once, at construction; a call whose tensors
    have c's shape, dtype and device does not check them again, one that does not goes through the full op."""
    _, x, c, A, preds = _loop_inputs((1, 3, 16, 20), True)
    checked, stats_made = [], []
    real_fixed, real_stats = ops._check_fixed, ops.tile_stats
    counted = lambda *a, **k: (checked.append(1), real_fixed(*a, **k))[1]  # noqa: E731
    monkeypatch.setattr(ops, "_check_fixed", counted)  # the full entry point's
    monkeypatch.setattr(masked_ops, "_check_fixed", counted)  # MaskedOps
    monkeypatch.setattr(ops, "tile_stats", lambda *a, **k: (stats_made.append(1), real_stats(*a, **k))[1])
    m = yk.MaskedOps(c, A, tile=8, backend="cpp")
    assert (len(checked), len(stats_made)) == (1, 1)
    k = yk.step_coefficients(0.3, 0.45)
    for step in range(1, 4):
        m.step(x, preds[0], 0.5, coefs=k, step=step)
        m.combine(x, preds[:2], 0.5, coefs=TC.coefs_for("ode", 2), step=step)
    assert (len(checked), len(stats_made)) == (1, 1)
    # another shape than c's: the full entry point, its check and its error
    with pytest.raises(ValueError, match="model_out must have the shape of x"):
        m.step(x, preds[0][:, :, :8], 0.5, coefs=k, step=1)
    assert len(checked) == 1  # _check_state refused model_out before the fixed checks
    # x of c's shape but half precision: said of x, the caller's (the full op's check blamed the fixed c); so is
    # an x of another shape
    with pytest.raises(TypeError, match="x has dtype torch.float16 but this MaskedOps' c has torch.float32"):
        m.step(x.half(), preds[0].half(), 0.5, coefs=k, step=1)
    with pytest.raises(ValueError, match=r"x must have the shape of this MaskedOps' c \(1, 3, 16, 20\), got \(1, 3, 16, 8\)"):
        m.combine(x[..., :8], [p[..., :8] for p in preds[:2]], 0.5, coefs=TC.coefs_for("ode", 2), step=1)
    assert len(checked) == 1


def _split(kw_changes: dict) -> str:
    """Where a BAD case's change goes in MaskedOps: "fixed" (construction), "call", or "" (not applicable: the
    (ab_t, ab_prev) form of masked_step, or a change of both)."""
    keys = set(kw_changes)
    if keys <= FIXED:
        return "fixed"
    if keys <= CALL:
        return "call"
    return ""


STEP_BAD = [pytest.param(n, m, e, s, id=n) for n, m, e, s in TS.BAD
            if _split(m(*TS._good())) and n != "x-int"]  # x-int changes c too (covered by c-dtype)
COMBINE_BAD = [pytest.param(n, ch, e, s, id=n) for n, ch, e, s in TC.BAD if _split(ch)]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("name, make, exc, match", STEP_BAD)
def test_bad_step_input_names_the_argument(backend, name, make, exc, match):
    x, o, c, A = TS._good()
    change = make(x, o, c, A)
    fixed = dict(c=c, A=A, tile=16, stats=None, seed=0)
    call = dict(x=x, model_out=o, tau=0.5, coefs=yk.step_coefficients(0.3, 0.45), step=3, noise=None)
    (fixed if _split(change) == "fixed" else call).update(change)
    with pytest.raises(exc, match=match):
        m = yk.MaskedOps(fixed.pop("c"), fixed.pop("A"), backend=backend, **fixed)
        m.step(call.pop("x"), call.pop("model_out"), **call)
    if _split(change) == "call":  # the object itself was fine: a good call after the bad one works
        good = yk.masked_step(x, o, c, A, 0.5, coefs=yk.step_coefficients(0.3, 0.45), step=3, backend=backend)
        assert torch.equal(m.step(x, o, 0.5, coefs=yk.step_coefficients(0.3, 0.45), step=3), good)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("name, change, exc, match", COMBINE_BAD)
def test_bad_combine_input_names_the_argument(backend, name, change, exc, match):
    x, ds, c, A = TC._good()
    fixed = dict(c=c, A=A, tile=16, seed=0)
    call = dict(x=x, denoised=ds, tau=0.5, coefs=[0.5, 0.3, 0.2, 0.0, 0.1, 0.9, 0.4], step=0, noise=None)
    for key, v in change.items():
        where = fixed if key in FIXED else call
        src = x if key == "noise" else where.get(key)
        where[key] = v(src) if callable(v) else v
    with pytest.raises(exc, match=match):
        m = yk.MaskedOps(fixed.pop("c"), fixed.pop("A"), backend=backend, **fixed)
        m.combine(call.pop("x"), call.pop("denoised"), **call)


def test_what_the_public_ops_refuse_is_refused():
    """None where a tensor belongs (a missing estimate took the fast path and its term was left out), and inputs
    that want a gradient (the kernels have no backward): the public ops' errors."""
    _, x, c, A, preds = _loop_inputs((1, 3, 16, 20), True)
    k, coefs = yk.step_coefficients(0.3, 0.45), [0.5, 0.3, 0.2, 0.0, 0.1, 0.9, 0.4]
    for backend in ("naive", "cpp"):
        m = yk.MaskedOps(c, A, tile=8, backend=backend)
        with pytest.raises(TypeError, match=r"denoised\[1\] must be a torch.Tensor"):
            m.combine(x, [preds[0], None], 0.5, coefs=coefs)
        with pytest.raises(TypeError, match="model_out must be a torch.Tensor"):
            m.step(x, None, 0.5, coefs=k)
        if backend != "naive":  # the reference differentiates
            with pytest.raises(RuntimeError, match="not differentiable on the 'cpp' backend"):
                m.step(x, preds[0].clone().requires_grad_(), 0.5, coefs=k)
            with pytest.raises(RuntimeError, match="not differentiable on the 'cpp' backend"):
                m.combine(x.clone().requires_grad_(), preds[:2], 0.5, coefs=coefs)


def test_adversarial_arguments_are_named():
    """An adversarial review: stats of two ints (or Nones) was an AttributeError of .shape; a meta tensor as tau
    Tensor.item()'s RuntimeError; a complex 0-d tau of masked_q_sample ran on its real part; tile_stats of a numpy
    array was told its shape was wrong; ab_t = 1e-320 said coefs (never given) were not finite floats."""
    x, A = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    for stats in ([1, 2], (None, None), "ab"):
        with pytest.raises(TypeError, match=r"^stats must be two tensors of shape \(1, 1, 1\)"):
            yk.masked_step(x, x, x, A, 0.5, coefs=[0.1] * 10, stats=stats)
        with pytest.raises(TypeError, match=r"^stats must be two tensors"):
            yk.MaskedOps(x, A, stats=stats)
    with pytest.raises(ValueError, match=r"^tau is a tensor on the meta device"):
        yk.masked_step(x, x, x, A, torch.tensor(0.5, device="meta"), coefs=[0.1] * 10)
    for args in ((torch.tensor(0.5 + 3j), 0.3), (0.5, torch.tensor(0.3 + 5j))):
        with pytest.raises(TypeError, match=r"must be a float or a \(1,\) tensor of floats, got torch.complex64"):
            yk.masked_q_sample(x, x, x, A, *args)
    with pytest.raises(TypeError, match=r"^A must be a torch.Tensor, got ndarray$"):
        yk.tile_stats(A.numpy(), 8)
    with pytest.raises(ValueError, match=r"^ab_t = 1e-320 gives step coefficients beyond float32's range"):
        yk.masked_step(x, x, x, A, 0.5, ab_t=1e-320, ab_prev=0.5)

