"""``python -m yoda`` = the ``yoda`` command (needed by ``torchrun -m yoda``); ``run`` is also the console script.

A Ctrl-C while the command's modules load (its first ~0.1 s) is held until they have loaded, then ends the
command as a later one does: one line, exit 130. Raised inside an import it printed a traceback, or an
ImportError when it hit numpy's C initialisation.
"""

import signal
import sys


def run() -> int:
    pressed = []
    hold = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not where Ctrl-C is ignored
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from .cli import main
    finally:
        if hold:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if pressed:
            raise KeyboardInterrupt
        return main()
    except KeyboardInterrupt:  # main handles its own; this is one held above or one while its parser is built
        print("yoda: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
