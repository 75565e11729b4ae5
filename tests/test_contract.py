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


def test_step_h_mirrors_the_named_coefficients():
    src = open(os.path.join(ROOT, "csrc", "step.h"), encoding="utf-8").read()
    fields = re.search(r"struct StepCoefs \{\s*float ([^;]+);", src).group(1)
    assert tuple(f.strip() for f in fields.split(",")) == contract.COEF_NAMES
    reads = re.findall(r"k\.(\w+) = static_cast<float>\(c\[(\d+)\]\);", src)
    assert [(name, int(i)) for name, i in reads] == [(n, i) for i, n in enumerate(contract.COEF_NAMES)]
    assert re.search(r"constexpr int kNumCoefs = (\d+);", src).group(1) == str(contract.NUM_COEFS)


def test_coefficients_are_built_and_read_by_name():
    c = coefs.step_coefficients(0.3, 0.45, prediction="v", sampler="ddim", eta=0.5)
    assert isinstance(c, contract.StepCoefs) and c._fields == contract.COEF_NAMES
    assert c.la == pytest.approx(0.45 ** 0.5) and c.lb == pytest.approx(0.55 ** 0.5)
    start = coefs.init_coefficients(0.5)
    assert start.sigma == 1.0 and contract.needs_noise(start)
    assert not contract.needs_noise(coefs.step_coefficients(0.3, 1.0))
    # the reference and the Triton launch unpack them through the contract, never by position
    triton_ms = pytest.importorskip("yoda_kernels.triton.masked_step")
    params = list(inspect.signature(triton_ms._masked_step_kernel.fn).parameters)
    assert all(n in params for n in contract.COEF_NAMES)
    assert "**k._asdict()" in inspect.getsource(triton_ms.launch_masked_step)


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
