"""Stopping a training run: the first Ctrl-C, SIGTERM or SIGHUP asks Trainer.run to stop after the step in progress
and save; a second one aborts."""

from __future__ import annotations

import signal
import sys
import threading

from tqdm.auto import tqdm

from ..errors import Terminated, lost_sigterm
from ..torchrun import main_rank, under_torchrun

STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
if hasattr(signal, "SIGHUP"):  # the terminal went away (an ssh session dropped without nohup or tmux): it ended the
    STOP_SIGNALS[signal.SIGHUP] = "SIGHUP"  # run at once, and the steps since the last checkpoint were lost


def stop_on_interrupt() -> tuple[list, dict]:
    """Ctrl-C (SIGINT) or SIGTERM (what SLURM, Kubernetes and torchrun send to stop a job) while training: the
    first one sets a flag (the signal's number), and Trainer.run stops after the step in progress and saves as at a
    time-out (checkpoint, log, weights: the same command resumes); a second one interrupts at once
    (KeyboardInterrupt; errors.Terminated for SIGTERM), except, under torchrun, a first SIGTERM after a Ctrl-C:
    torchrun forwards the Ctrl-C to its ranks and SIGTERMs those still running as it shuts down. Returns (the flag
    list, the handlers to restore; none off the main thread, where signals cannot be handled and Ctrl-C stays
    Python's KeyboardInterrupt)."""
    flag: list = []
    if threading.current_thread() is not threading.main_thread():
        return flag, {}
    lost_sigterm()  # one that came while the run started up, its exception dropped by Python, stops it now

    def handler(signum, frame):
        if flag == [signal.SIGINT] and signum == signal.SIGTERM and under_torchrun():  # (docstring) the same stop
            return flag.append(signum)
        if flag:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated
        flag.append(signum)
        if main_rank():  # under torchrun every rank gets it: said once; above the bar, as the CLI's other lines
            try:  # (a blank line before it in a log, the bar's in a tty; SIGHUP: a terminal that may be gone)
                tqdm.write(f"yoda: {STOP_SIGNALS[signum]}: stopping after this step and saving (a second one aborts "
                           f"without saving)", file=sys.stderr)
            except OSError:
                pass

    # (not SIGHUP where it is ignored: nohup's run goes on when its terminal goes)
    return flag, {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS
                  if sig in (signal.SIGINT, signal.SIGTERM) or signal.getsignal(sig) is not signal.SIG_IGN}
