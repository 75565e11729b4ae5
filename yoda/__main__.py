"""``python -m yoda`` = the ``yoda`` command (needed by ``torchrun -m yoda``); ``run`` is also the console script.

A Ctrl-C while the command's modules load (its first ~0.1 s) is held until they have loaded, then ends the
command as a later one does: one line, exit 130. Raised inside an import it printed a traceback, or an
ImportError when it hit numpy's C initialisation.
"""

import gc
import signal
import sys


def run() -> int:
    pressed = []
    hold = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not where Ctrl-C is ignored
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from .torchrun import quiet_cpp_logs

        quiet_cpp_logs(sys.argv[1:])  # before torch loads
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
