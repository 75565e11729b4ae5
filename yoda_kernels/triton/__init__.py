"""Triton backend of the yoda ops: ``torch.ops.yoda.<op>_triton`` (GPU; on CPU through TRITON_INTERPRET=1).

Importing this package registers the four ops with ``torch.library.custom_op`` (launch.py), so they dispatch
like built-in operators; ``torch.compile`` calls them as they are, with the eager launch's bits (launch.py says
why not ``triton_op``). Each launch runs on its tensors' CUDA device. Signatures are the schemas of
``yoda_kernels.ops.SCHEMAS`` (``int`` arguments are inferred as ``SymInt``, which accepts the same values).

``INTERPRET`` is read once (interpret.py), before triton is first imported: the interpreter must be chosen then.
"""

from __future__ import annotations

from .interpret import INTERPRET

import triton  # noqa: E402,F401  ImportError here means "no triton backend" (ops.triton_available)

from .launch import EAGER  # noqa: E402
from .masked_combine import masked_combine_triton  # noqa: E402
from .masked_q_sample import masked_q_sample_triton  # noqa: E402
from .masked_step import launch_config, masked_step_triton  # noqa: E402
from .tile_stats import tile_stats_triton  # noqa: E402

__all__ = [
    "EAGER",
    "INTERPRET",
    "launch_config",
    "masked_combine_triton",
    "masked_q_sample_triton",
    "masked_step_triton",
    "tile_stats_triton",
]
