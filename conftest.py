"""What every pytest run of this tree (tests/ and benchmarks/) needs before anything is imported."""
import os
import signal

# A shell's background job (`pytest ... &`, nohup, some CI runners) starts with SIGINT ignored, and Python then
# keeps it ignored: the tests that press Ctrl-C (os.kill(SIGINT)) would see nothing happen. Give them Python's own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# This tree's yoda for the commands the tests start too (python -m yoda, torchrun; cwd a temporary folder), as
# pyproject's pythonpath gives it to the tests themselves: not the tree an editable install elsewhere points at.
_ROOT = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                      if p and os.path.abspath(p) != _ROOT])

# The Triton interpreter must be chosen before triton is first imported (CPU-only machines).
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
