import os

# The Triton interpreter must be chosen before triton is first imported (CPU-only machines).
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small forwards: on a shared 2-core machine two threads spin against
    each other (a ResNet-50 forward took 1.4 s with 2 threads vs 0.3 s with 1, at load 8). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
