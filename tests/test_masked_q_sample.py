"""masked_q_sample: every backend against the reference over the grid (same float32 order: equal up to the
tolerance rule, bit for bit for C++), the float64 closed forms (tau <= 0: q(x_t | x0); tau > 1: q(x_t | c)),
per-batch thresholds, bad input, opcheck."""

from __future__ import annotations

import math

import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import testing as T

TRITON_CPU_CASES = {
    T.Case("cpu", torch.float32, (1, 3, 37, 53), "contiguous"),
    T.Case("cpu", torch.float16, (2, 4, 16, 16), "channels_last"),
}


def _params():
    out = []
    for case in T.grid():
        for backend in T.backends_for(case):
            if backend == "triton" and case.device == "cpu" and case not in TRITON_CPU_CASES:
                continue
            for attention in ("blob", "none"):
                if attention == "none" and case.layout != "contiguous":
                    continue
                out.append(pytest.param(case, backend, attention, id=f"{backend}-{case.id}-{attention}"))
    return out


def _f64(x0, c, noise, A, ab, tau):
    """x_t = sqrt(ab) (x0 where A >= tau else c) + sqrt(1 - ab) noise (Ho et al. 2020 eq. 4), float64, and the
    magnitude of its terms sqrt(ab) |base| + sqrt(1 - ab) |noise| (what float32 roundings scale with)."""
    B = x0.shape[0]
    ab = ab.double().view(B, 1, 1, 1)
    base = x0.double()
    if A is not None:
        Af = A.float().view(B, 1, *A.shape[-2:])
        base = torch.where(Af >= tau.float().view(B, 1, 1, 1), base, c.double())
    s1 = (1 - ab).sqrt()
    return ab.sqrt() * base + s1 * noise.double(), ab.sqrt() * base.abs() + s1 * noise.double().abs()


@pytest.mark.parametrize("case, backend, attention", _params())
def test_matches_reference(case, backend, attention):
    g = torch.Generator().manual_seed(11)
    x0, c, noise = T.randn(case, g), T.randn(case, g), T.randn(case, g)
    B, _, H, W = case.shape
    A = T.blob_attention(B, H, W, device=case.device) if attention == "blob" else None
    ab = torch.linspace(0.05, 0.95, B)
    tau = torch.linspace(0.2, 0.7, B)  # a different threshold per image
    got = yk.masked_q_sample(x0, c, noise, A, tau, ab, backend=backend)
    ref = yk.masked_q_sample(x0, c, noise, A, tau, ab, backend="naive")
    ref64, scale = _f64(x0.cpu(), c.cpu(), noise.cpu(), None if A is None else A.cpu(), ab, tau)
    T.assert_within_reference_error(got, ref, ref64, scale=scale, what=backend)
    assert got.stride() == ref.stride()
    if backend == "cpp":
        assert torch.equal(got, ref)


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
def test_closed_forms(backend):
    """tau <= 0: plain q_sample of x0; tau > 1: q_sample of c (x0 is never read there: NaN must not leak)."""
    g = torch.Generator().manual_seed(12)
    x0, c, n = (torch.randn(2, 3, 37, 53, generator=g) for _ in range(3))
    A = T.blob_attention(2, 37, 53)
    ab = 0.3
    plain = yk.masked_q_sample(x0, c, n, A, 0.0, ab, backend=backend)
    torch.testing.assert_close(plain.double(), math.sqrt(ab) * x0.double() + math.sqrt(1 - ab) * n.double(),
                               rtol=0, atol=1e-6)  # two float32 roundings of values <= ~5
    assert torch.equal(plain, yk.masked_q_sample(x0, c, n, None, 0.0, ab, backend=backend))
    lr = yk.masked_q_sample(torch.full_like(x0, float("nan")), c, n, A, 1.5, ab, backend=backend)
    torch.testing.assert_close(lr.double(), math.sqrt(ab) * c.double() + math.sqrt(1 - ab) * n.double(),
                               rtol=0, atol=1e-6)


BAD = [
    ("c-shape", lambda a: dict(c=a["c"][:, :1]), ValueError, r"^c must have the shape of x0 \(2, 3, 8, 9\)"),
    ("noise-dtype", lambda a: dict(noise=a["noise"].half()), TypeError, "^noise has dtype torch.float16 but x0 has"),
    ("A-shape", lambda a: dict(A=a["A"][..., :5]), ValueError, "A must be"),
    ("A-device", lambda a: dict(A=a["A"].to("meta")), ValueError, "A is on meta"),
    ("ab-zero", lambda a: dict(ab=0.0), ValueError, "ab must be in"),
    ("ab-shape", lambda a: dict(ab=torch.rand(3)), ValueError, "ab must be a float or a"),
    ("tau-nan", lambda a: dict(tau=float("nan")), ValueError, "tau contains NaN"),
    ("x0-int", lambda a: dict(x0=a["x0"].int()), TypeError, "x0 must be float"),
    ("x0-sparse", lambda a: dict(x0=a["x0"].to_sparse()), TypeError, "x0 must be a dense tensor"),
    ("tau-list-huge", lambda a: dict(tau=[10**400, 0.5]), ValueError, "tau must be a float or a .* past float64"),
]


def test_a_tau_past_floats_range_is_its_infinity_as_in_masked_step():
    """masked_step takes tau = 10**400 as +inf (no pixel active); masked_q_sample raised a bare OverflowError."""
    x0 = torch.randn(1, 3, 8, 9)
    c, n, A = torch.randn_like(x0), torch.randn_like(x0), torch.rand(1, 1, 8, 9)
    assert torch.equal(yk.masked_q_sample(x0, c, n, A, 10**400, 0.5), yk.masked_q_sample(x0, c, n, A, math.inf, 0.5))
    assert torch.equal(yk.masked_q_sample(x0, c, n, A, -10**400, 0.5),
                       yk.masked_q_sample(x0, c, n, A, -math.inf, 0.5))


@pytest.mark.parametrize("backend", [b for b in yk.available_backends("cpu") if b != "triton"])
@pytest.mark.parametrize("make, exc, match", [pytest.param(m, e, s, id=n) for n, m, e, s in BAD])
def test_bad_input(backend, make, exc, match):
    x0 = torch.randn(2, 3, 8, 9)
    args = dict(x0=x0, c=torch.randn_like(x0), noise=torch.randn_like(x0), A=torch.rand(2, 1, 8, 9), tau=0.5, ab=0.5)
    args.update(make(args))
    with pytest.raises(exc, match=match):
        yk.masked_q_sample(**args, backend=backend)


@pytest.mark.skipif("cpp" not in yk.available_backends("cpu"), reason="C++ extension not built")
def test_cpp_checks():
    x0 = torch.randn(2, 3, 8, 9)
    v = torch.rand(2)
    with pytest.raises(RuntimeError, match="sqrt_ab must have shape"):
        torch.ops.yoda.masked_q_sample(x0, x0, x0, None, torch.rand(3), v, v)
    with pytest.raises(RuntimeError, match="noise has dtype"):
        torch.ops.yoda.masked_q_sample(x0, x0, x0.half(), None, v, v, v)
    with pytest.raises(RuntimeError, match="A must be"):
        torch.ops.yoda.masked_q_sample(x0, x0, x0, torch.rand(2, 2, 8, 9), v, v, v)


@pytest.mark.parametrize("with_A", [True, False], ids=["A", "no-A"])
def test_opcheck(with_A):
    x0 = torch.randn(2, 3, 19, 24)
    A = torch.rand(2, 1, 19, 24) if with_A else None
    v = torch.rand(2)
    torch.library.opcheck(torch.ops.yoda.masked_q_sample.default, (x0, x0 * 2, x0 * 3, A, v, v, v))


def test_nan_in_attention_is_rejected():
    x0 = torch.zeros(1, 3, 5, 7)
    A = torch.rand(1, 1, 5, 7)
    A[0, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="A contains NaN"):
        yk.masked_q_sample(x0, x0, x0, A, 0.5, 0.5)


def test_gradients_of_ab_and_tau_and_bad_values_are_named():
    """A tensor ab (or tau) that wants a gradient passed the no-grad check, and C++ / Triton returned a result
    whose backward left ab.grad None; a tau of "high" said "new(): invalid data type 'str'"; on the meta device
    the ab range check failed in Tensor.item()."""
    x0, c, noise = (torch.rand(2, 3, 8, 8) for _ in range(3))
    A = torch.rand(2, 1, 8, 8)
    ab = torch.tensor([0.3, 0.6], requires_grad=True)
    yk.masked_q_sample(x0, c, noise, A, 0.5, ab, backend="naive").sum().backward()
    assert ab.grad is not None and torch.isfinite(ab.grad).all()
    for backend in set(yk.available_backends("cpu")) - {"naive"}:
        with pytest.raises(RuntimeError, match=f"^masked_q_sample is not differentiable on the '{backend}' backend"):
            yk.masked_q_sample(x0, c, noise, A, 0.5, ab, backend=backend)
    for name, args in (("tau", ("high", 0.3)), ("ab", (0.5, [0.3, "a"]))):
        with pytest.raises(TypeError, match=rf"^{name} must be a float or a \(2,\) tensor, got "):
            yk.masked_q_sample(x0, c, noise, A, *args)
    meta = [t.to("meta") for t in (x0, c, noise)]
    out = yk.masked_q_sample(*meta, None, 0.5, torch.tensor([0.3, 0.6], device="meta"))
    assert out.device.type == "meta" and out.shape == x0.shape
