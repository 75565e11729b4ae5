"""The one exception type for mistakes in what a user gave yoda.

UserError (a ValueError) means: the input is wrong, not the code. The `yoda` command prints its message on
one line (exit code 2); any other exception is a bug and prints its traceback. Library errors about inputs
derive from it: yoda.checkpoint.CheckpointError (a model file that cannot be used), yoda.images.DataError
(an image or data folder that cannot be used), and the sampler's NonFiniteError (a model that returns NaN or
Inf; also a FloatingPointError). out_of_memory(e) tells a failed allocation, which is neither (the machine's
limit).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shlex
import sys


# what an error about a latent model's file says to do (the CLI and the yoda model loader cannot sample one)
LATENT_API = ("latent models (the SD x4 upscaler, LDM-SR, DiffBIR, other diffusers models) are for the Python API: "
              "yoda.models.SDUpscalerAdapter, yoda.models.LDMSRAdapter, yoda.models.DiffBIRAdapter, "
              "yoda.models.from_diffusers")


class UserError(ValueError):
    """A problem with a file, an option, a config or a model the user gave; the message says which."""


class NonFiniteError(UserError, FloatingPointError):
    """A model (or its decoder) returned NaN or Inf while sampling; the message names the step where the check found
    it, or the steps since the last check (yoda.sampling.FINITE_EVERY), their timestep indices, and the model."""


class UnrefinedWarning(UserWarning):
    """yoda.sample's step count leaves the least attended pixels at the LR image (YODA's last step does not reach
    them); the message names the count that refines them where there is one and the call does not fix the count
    (noise=, sigmas=). Its own category, so that a caller who chose the count can silence it without matching its
    words: warnings.simplefilter("ignore", yoda.UnrefinedWarning)."""


@contextlib.contextmanager
def user_input():
    """Around a library call that reads or runs what the user gave (a file, an option, a config, a model): a
    ValueError it raises is about that input, so it becomes a UserError. Other exceptions pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from e


class Terminated(SystemExit):
    """SIGTERM, raised by sigterm_exits (and by yoda train's second one): SystemExit(143), which the CLI reports
    in one line, as it reports Ctrl-C."""

    def __init__(self, code: int = 143) -> None:  # (the code: as pickle and copy make one again)
        super().__init__(code)


def stop_in(e: BaseException) -> BaseException:
    """The KeyboardInterrupt or Terminated in ``e``'s chain of causes, else ``e``: Python <= 3.11 wraps one that
    lands while a class is being defined (during torch's import, say) in a RuntimeError from __set_name__."""
    seen, c = set(), e
    while c is not None and id(c) not in seen:
        if isinstance(c, (KeyboardInterrupt, Terminated)):
            return c
        seen.add(id(c))
        c = c.__cause__ or c.__context__
    return e


@contextlib.contextmanager
def sigterm_exits():
    """Within, in the main thread: SIGTERM (timeout, a job scheduler, kill) raises Terminated (SystemExit(143)), so
    that what runs on Ctrl-C runs on it too: a temporary file half-written is removed, a folder made for outputs
    and still empty is removed. (It ended the process at once, leaving them.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _SIGTERM_SEEN[0] = True  # (lost_sigterm: Python drops an exception raised in a weakref callback)
        raise Terminated

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
        lost_sigterm()  # the work ended as if no SIGTERM had come: it exits 143 all the same
    finally:
        signal.signal(signal.SIGTERM, old)
        # cleared on the way out, not on the way in: `yoda train` nests this (cli.main, train_main), and a SIGTERM
        # lost between the two was forgotten; one delivered as usual stopped the process's next Trainer.run
        _SIGTERM_SEEN[0] = False


_SIGTERM_SEEN = [False]  # whether sigterm_exits' handler ran


def lost_sigterm() -> None:
    """Raise Terminated again if sigterm_exits' handler ran and its exception was lost: one that lands in a weakref
    or import-lock callback (`Exception ignored in: ... _get_module_lock`) is dropped by Python, and a SIGTERM while
    `yoda train` started up then trained the whole run and exited 0 (a job manager's stop lost). Each one once."""
    if _SIGTERM_SEEN[0]:
        _SIGTERM_SEEN[0] = False
        raise Terminated


_LR_FROM_IMAGES = contextvars.ContextVar("yoda_lr_from_images", default=False)


@contextlib.contextmanager
def lr_from_images():
    """Within: yoda.sample does not warn that lr may be a [0, 1] image (yoda.attention.classic.check_lr). For yoda's
    own callers (the CLI, evaluate, figures, training's validation), which make every lr of 8-bit images with
    from_uint8 / make_lr, where the warning could only ever fire on a light photograph (its darkest pixel at 8-bit
    128-130). A context variable, not a warnings filter: it leaves the other warnings' once-per-place bookkeeping
    alone, and other threads. (Here, not in yoda.sampling: the CLI imports it without torch.)"""
    token = _LR_FROM_IMAGES.set(True)
    try:
        yield
    finally:
        _LR_FROM_IMAGES.reset(token)


def lr_from_images_now() -> bool:
    """Whether the caller is within lr_from_images()."""
    return _LR_FROM_IMAGES.get()


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed (CPU or GPU): the machine's limit, not a bug (the CLI says it in
    one line with what needs less memory)."""
    torch = sys.modules.get("torch")  # not imported yet: no tensor failed (and an early CLI error stays quick)
    if isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("not enough memory" in text or "can't allocate memory" in text)


def broken_link(path) -> str:
    """" (a broken link to TARGET)" where ``path`` is a symbolic link to nothing, else "": what a "not found" says of
    a path that is there, as a link."""
    return f" (a broken link to {printable(os.readlink(path))})" if os.path.islink(path) else ""


def shell_quoted(s: str) -> str:
    """``s`` quoted for a POSIX shell so that a line holding it can be pasted back: shlex.quote's where ``s`` is
    printable; else bash's $'...', whose \\xNN is the byte of a name that is not UTF-8 (printable's \\xff in
    shlex.quote's '...' named another file)."""
    if printable(s) == s:
        return shlex.quote(s)
    return "$'" + "".join("\\" + c if c in "'\\" else c if c.isprintable() else
                          f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else
                          "".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass")) for c in s) + "'"


def printable(s: str) -> str:
    """``s`` with its control characters escaped (ESC as \\x1b, a newline as \\n): a file name that carries terminal
    escape sequences is shown, not obeyed, when the CLI prints it. A byte of a name that is not UTF-8 (Python's
    surrogate escape, U+DC80-U+DCFF) is shown as that byte, \\xff, not as \\udcff."""
    return "".join(c if c.isprintable() else f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else repr(c)[1:-1] for c in str(s))
