"""yoda_kernels/contract.py is the one definition every backend and every layer above reads: the step
coefficients by name (csrc/step.h mirrors them, checked here from its source), tile sizes, predictions,
memory format."""

import collections
import inspect
import os
import re

import pytest
import torch

import yoda_kernels as yk
from yoda_kernels import coefs, contract, naive, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mirror(src: str, struct: str, make: str, count: str):
    """(fields of the C++ struct, [(field, index)] read by its make function, the count constant) of step.h."""
    fields = re.search(r"struct %s \{\s*float ([^;]+);" % struct, src).group(1)
    body = re.search(r"YODA_HD %s %s\(const double\* c\) \{(.*?)\n\}" % (struct, make), src, re.S).group(1)
    reads = re.findall(r"k\.(\w+) = static_cast<float>\(c\[(\d+)\]\);", body)
    n = re.search(r"constexpr int %s = (\d+);" % count, src).group(1)
    return tuple(f.strip() for f in fields.split(",")), [(name, int(i)) for name, i in reads], int(n)


def test_step_h_mirrors_the_named_coefficients():
    src = open(os.path.join(ROOT, "csrc", "step.h"), encoding="utf-8").read()
    for names, n, struct, make, count in (
        (contract.COEF_NAMES, contract.NUM_COEFS, "StepCoefs", "make_step_coefs", "kNumCoefs"),
        (contract.COMBINE_COEF_NAMES, contract.NUM_COMBINE_COEFS, "CombineCoefs", "make_combine_coefs",
         "kNumCombineCoefs"),
    ):
        fields, reads, count_value = _mirror(src, struct, make, count)
        assert fields == names, struct
        assert reads == [(name, i) for i, name in enumerate(names)], make
        assert count_value == n == len(names), count
    assert re.search(r"constexpr int kMaxHistory = (\d+);", src).group(1) == str(contract.MAX_HISTORY)


def test_coefficients_are_built_and_read_by_name():
    c = coefs.step_coefficients(0.3, 0.45, prediction="v", sampler="ddim", eta=0.5)
    assert isinstance(c, contract.StepCoefs) and c._fields == contract.COEF_NAMES
    assert c.la == pytest.approx(0.45 ** 0.5) and c.lb == pytest.approx(0.55 ** 0.5)
    start = coefs.init_coefficients(0.5)
    assert start.sigma == 1.0 and contract.needs_noise(start)
    assert not contract.needs_noise(coefs.step_coefficients(0.3, 1.0))
    # decided in float32, as the kernels hold the coefficients: a sigma of 1e-300 drew noise in the reference (a NaN
    # of an Inf noise entry, -0.0 of 0 * -1) and none in the C++ op called directly
    tiny = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1e-300, 0.5, 0.0]
    assert not contract.needs_noise(tiny) and contract.needs_noise(tiny[:7] + [1e-44, 0.5, 0.0])  # (a subnormal)
    assert contract.needs_noise(tiny[:9] + [1e300])  # beyond float32: inf
    for v in (2.0**-150, 2.0**-150 * (1 + 2**-52), 2.0**-149, 1e-45, 7e-46, -1e-300, 3.4e38, 1.0):  # float32's own
        assert contract._nonzero_f32(v) == (torch.tensor(v, dtype=torch.float32).item() != 0.0), v  # rounding
    x, A = torch.full((1, 1, 4, 8), -0.0), torch.ones(1, 1, 4, 8)
    noise = torch.full((1, 1, 4, 8), -1.0)
    noise[0, 0, 0, 0] = float("inf")
    args = (x, x, x, A, None, None, 0.5, tiny, False, 0, 0, noise, 8)
    ref = naive.masked_step(*args)
    assert ref.isfinite().all() and not ref.signbit().any()
    for op in [torch.ops.yoda.masked_step] if hasattr(torch.ops.yoda, "masked_step") else []:
        assert torch.equal(op(*args), ref) and not op(*args).signbit().any()
    # the reference and the Triton launch unpack them through the contract, never by position
    triton_ms = pytest.importorskip("yoda_kernels.triton.masked_step")
    params = list(inspect.signature(triton_ms._masked_step_kernel.fn).parameters)
    assert all(n in params for n in contract.COEF_NAMES)
    assert "**k._asdict()" in inspect.getsource(triton_ms.launch_masked_step)
    triton_mc = pytest.importorskip("yoda_kernels.triton.masked_combine")
    params = list(inspect.signature(triton_mc._masked_combine_kernel.fn).parameters)
    assert all(n in params for n in contract.COMBINE_COEF_NAMES)
    assert "**k._asdict()" in inspect.getsource(triton_mc.launch_masked_combine)


def test_the_reference_reads_the_coefficients_through_the_contract(monkeypatch):
    """naive.masked_step reads the coefficients by name through contract.StepCoefs: renaming two of its fields
    (k1 <-> k2) changes the step, which reading them by position would not."""
    g = torch.Generator().manual_seed(0)
    x, out, c = (torch.randn(1, 3, 8, 8, generator=g) for _ in range(3))
    noise = torch.randn(1, 3, 8, 8, generator=g)
    k = coefs.step_coefficients(0.3, 0.45, prediction="v", sampler="ddim", eta=0.5)
    assert k.k1 != k.k2

    def step():
        return naive.masked_step(x, out, c, None, None, None, 0.5, list(k), False, 0, 0, noise, 8)

    before = step()
    names = list(contract.COEF_NAMES)
    i, j = names.index("k1"), names.index("k2")
    names[i], names[j] = names[j], names[i]
    monkeypatch.setattr(naive, "StepCoefs", collections.namedtuple("StepCoefs", names))
    assert not torch.allclose(step(), before)


def test_the_reference_reads_the_combine_coefficients_through_the_contract(monkeypatch):
    """naive.masked_combine reads its coefficients by name through contract.CombineCoefs: swapping two field
    names (cx <-> cd0) changes the update."""
    g = torch.Generator().manual_seed(1)
    x, d0, c, noise = (torch.randn(1, 3, 8, 8, generator=g) for _ in range(4))
    k = contract.CombineCoefs(cx=0.7, cd0=0.2, cd1=0.0, cd2=0.0, sigma=0.1, la=0.9, lb=0.3)

    def update():
        return naive.masked_combine(x, d0, None, None, c, None, None, None, 0.0, list(k), 0, 0, noise, 8)

    before = update()
    names = list(contract.COMBINE_COEF_NAMES)
    names[0], names[1] = names[1], names[0]
    monkeypatch.setattr(naive, "CombineCoefs", collections.namedtuple("CombineCoefs", names))
    assert not torch.allclose(update(), before)


def test_one_definition_of_each_constant():
    import yoda.adapters
    import yoda.models.card
    import yoda.training.config

    assert yoda.adapters.PREDICTIONS is contract.PREDICTIONS is coefs.PREDICTIONS
    assert yoda.training.config.TARGETS is contract.PREDICTIONS
    assert yoda.training.config.SPACES is yoda.adapters.SPACES
    for bad in (0, 12, True):
        with pytest.raises(ValueError, match="tile must be one of"):
            contract.check_tile(bad)
    x = torch.zeros(1, 3, 4, 5).to(memory_format=torch.channels_last)
    assert contract.memory_format(x) == torch.channels_last
    assert naive.masked_step(x, x, x, None, None, None, 0.0, coefs.step_coefficients(0.3, 1.0), False, 0, 0, None,
                             8).is_contiguous(memory_format=torch.channels_last)
    assert ops.FLOAT_DTYPES is contract.FLOAT_DTYPES and yk.StepCoefs is contract.StepCoefs
