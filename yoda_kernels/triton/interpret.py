"""Whether Triton runs through its interpreter (TRITON_INTERPRET=1, how the tests run it on a CPU), read once:
the interpreter must be chosen before triton is first imported (yoda_kernels/triton/__init__.py imports this
module before triton)."""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
