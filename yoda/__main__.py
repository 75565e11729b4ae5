"""``python -m yoda`` = the ``yoda`` command (needed by ``torchrun -m yoda``); ``run`` is also the console script.

A Ctrl-C while the command's modules load (its first ~0.1 s) is held until they have loaded, then ends the
command as a later one does: one line, exit 130. Raised inside an import it printed a traceback, or an
ImportError when it hit numpy's C initialisation.
"""

import gc
import os
import signal
import sys


def passive_openmp(environ=os.environ) -> None:
    """OMP_WAIT_POLICY=PASSIVE for the yoda program, unless the environment says how OpenMP's threads wait
    (OMP_WAIT_POLICY, GOMP_SPINCOUNT). torch's threads spin after each op by default; where other work holds a core
    the small ops of yoda's model wait on them (README, "A shared or busy CPU"): `yoda demo` 15.9 s against 3.2 s
    in a review at load 2-4, 4.4-4.8 s against 3.5-3.8 beside one busy core, and the same 3.1 s idle (a 192² upscale
    3.8-4.6 s against 3.8-4.0; the same bytes; the 2-vCPU AMD EPYC, 2026-12-07). Read when torch loads."""
    if not environ.get("OMP_WAIT_POLICY", "").strip() and "GOMP_SPINCOUNT" not in environ:  # (set empty: libgomp
        environ["OMP_WAIT_POLICY"] = "PASSIVE"  # said "Invalid value" and spun)


def run() -> int:
    pressed = []
    hold = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not where Ctrl-C is ignored
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from .torchrun import quiet_cpp_logs

        quiet_cpp_logs(sys.argv[1:])  # before torch loads
        passive_openmp()
        from .cli import main
    finally:
        if hold:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if pressed:
            raise KeyboardInterrupt
        code = main(program=True)
    except KeyboardInterrupt:  # main handles its own; this is one held above or one while its parser is built
        from .console import error_line

        error_line("yoda: interrupted")
        return 130
    # The command is done and its files are closed (every write is atomic, in a with-block): the garbage collection
    # of the interpreter's exit, over torch's and the model's objects, would only free what the process's end
    # frees anyway (0.2-0.5 s of a short run on the 2-core CPU). atexit handlers and weakref finalizers still run.
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(run())
