"""What every Triton launch of the yoda ops shares: the device it runs on, and how the ops are registered.

The ops are ``torch.library.custom_op``s, opaque to ``torch.compile``: Inductor, which re-emits the launches of
a ``triton_op``, forwards only the kernel's own parameters (``enable_fp_fusion=False`` is dropped, so a*x + b*y
becomes one fused multiply-add) and passes Python float scalars as fp64 (``A >= tau`` in fp64 makes a pixel
with A == float32(0.7) inactive where every other backend makes it active). A compiled graph calls the op as it
is, so the bits are those of the eager launch.
"""

from __future__ import annotations

import functools
import threading

import torch


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints. Not ``triton.cdiv``: that is a ``@jit`` function in triton 3.x, and a call from
    Python goes through its JIT wrapper (about 5 us each, a sixth of a launch's Python time)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1); ``triton.next_power_of_2`` is ``@jit`` too."""
    return 1 << max(0, int(n) - 1).bit_length()


def on_device(t: torch.Tensor):
    """Context of a launch: the CUDA device of ``t`` made current (Triton launches on the current device and its
    current stream, so tensors on cuda:1 would be launched on cuda:0); for a CPU tensor, the interpreter's lock:
    Triton's interpreter keeps global state (the grid index, its patches of triton.language), so launches from
    two threads at once failed ("Did you forget to add @triton.jit ?") or read each other's grid."""
    return torch.cuda.device(t.device) if t.is_cuda else _INTERPRETER_LOCK


_INTERPRETER_LOCK = threading.RLock()


OFFSET_LIMIT = 2**31  # a block's elements are addressed in 32 bits from its 64-bit base (narrow_offsets)


def block_span(t: torch.Tensor, rows: int) -> int:
    """How far apart (in elements) the first and last element of a block of ``rows`` whole rows of ``t`` lie."""
    return (rows - 1) * abs(t.stride(-2)) + (t.shape[-1] - 1) * abs(t.stride(-1))


def narrow_offsets(t, rows: int, name: str = "x"):
    """``t`` itself, or a dense copy where the kernels' 32-bit offsets could wrap. A kernel addresses a block of
    ``rows`` rows from a 64-bit base (batch, channel, first row) plus ``r * stride_h + col * stride_w`` in 32 bits
    (Triton types a stride below 2**31 as int32): a view whose block spans OFFSET_LIMIT elements or more (H or W the
    outermost dimension of a tensor that large) would read and write out of bounds. None stays None. Where even
    the dense copy's block spans that much (rows of 2**27 pixels and more), a ValueError naming ``name``: it wrapped
    and wrote out of bounds, without a word."""
    if t is None or block_span(t, rows) < OFFSET_LIMIT:
        return t
    return _fits(t.contiguous(), rows, name)


def narrow_all(rows: int, **tensors) -> tuple:
    """narrow_offsets of each tensor, named by its keyword, in the order given."""
    return tuple(narrow_offsets(t, rows, name) for name, t in tensors.items())


def output_like(x: torch.Tensor, fmt: torch.memory_format, rows: int) -> torch.Tensor:
    """A launch's output: x's shape, dtype and device in layout ``fmt`` (the input's, taken before narrow_offsets
    copied it: the output kept the copy's, unlike the reference's); a ValueError where its blocks of ``rows`` rows
    span OFFSET_LIMIT elements (channels-last rows of 2**27 elements and more)."""
    return _fits(torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt), rows, "out")


def _fits(t: torch.Tensor, rows: int, name: str) -> torch.Tensor:
    if block_span(t, rows) >= OFFSET_LIMIT:  # the CUDA and C++ kernels index in 64 bits
        raise ValueError(f"{name} of shape {tuple(t.shape)}: a block of {rows} rows spans {block_span(t, rows)} "
                         f"elements, more than the Triton kernels' 32-bit offsets take (2**31); use backend='cuda'")
    return t


# op name -> the function registered as it: yoda_kernels.ops calls it directly in a plain eager call
# (ops._plain_eager; the op's dispatch would cost as much again as the launch's own Python)
EAGER: dict = {}


def register(name: str, fake, check):
    """Decorator: the function as the op ``yoda::<name>`` (schema from its annotations), its arguments checked
    first by ``check`` (yoda_kernels/checks.py), with ``fake`` (the base op's fake, yoda_kernels.ops.FAKES) for meta
    tensors and torch.compile; the function itself, unchecked, in EAGER (its callers have checked)."""

    def wrap(fn):
        @functools.wraps(fn)
        def checked(*args):
            check(*args)
            return fn(*args)

        schema = torch.library.infer_schema(fn, mutates_args=())  # fn's annotations, read in fn's module
        op = torch.library.custom_op(f"yoda::{name}", checked, mutates_args=(), schema=schema)
        op.register_fake(fake)
        EAGER[name] = fn
        return op

    return wrap
