"""The ``yoda`` commands' lines on stdout and stderr: above any progress bar (tqdm.write), one write each, and a
stream that cannot be written ends its lines, not the command. Imports nothing of yoda, nor torch (the parser's
messages and torchrun's notes go through it)."""

from __future__ import annotations

import errno
import os
import sys


def on_terminal() -> bool:
    """Whether stderr is a terminal: where a progress bar left to its default (progress=None) is drawn (into a log
    file or a pipe, every redraw is a line of its own)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def say(line: str, full_ok: bool = True) -> None:
    """A line on stdout. A reader that went away (`yoda upscale ... | head`) ends the lines, not the command: stdout
    then goes to os.devnull (each written image's line was an EPIPE error, and the image counted as failed); so does
    a stdout that cannot be written (`>/dev/full` stopped a folder at its first image, with "No space left on
    device" read as the output disk's), unless not ``full_ok`` (the line is the command's only output: `yoda eval >
    results.md` on a full disk is an error)."""
    write("stdout", line + "\n", full_ok)


def error_line(text: str) -> None:
    """A line on stderr, not stuck to a progress bar's end. A stderr nobody reads (`yoda ... 2>&1 | head -1`) ends
    the lines, not the work: the error handler's own message raised again, and the run stopped with its images
    unwritten."""
    write("stderr", text + "\n", True)


def write(name: str, text: str, full_ok: bool) -> None:
    """``text`` on sys.<name> ("stdout" / "stderr") in one write (torchrun's ranks run unbuffered, and a rank's
    line got between another's text and its newline). A closed pipe (BrokenPipeError; on Windows EINVAL,
    cpython#79935), or with ``full_ok`` a full or failing device, sends that stream to os.devnull; any other error
    raises."""
    stream, bars = getattr(sys, name), sys.modules.get("tqdm")  # a bar exists only where tqdm was imported (--help
    try:  # and --version do not load it: 36 ms)
        if bars is None:
            stream.write(text)
        else:
            bars.tqdm.write(text, file=stream, end="")
        stream.flush()
    except OSError as e:
        if not (isinstance(e, BrokenPipeError) or full_ok and e.errno in (errno.ENOSPC, errno.EIO) or
                (sys.platform == "win32" and e.errno == errno.EINVAL)):  # named: it read as the output disk's error
            raise OSError(e.errno, f"cannot write to {name}: {e.strerror or e}") from e
        try:  # the file descriptor itself, so that the flush at exit finds it writable too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # a stream without a file descriptor (a wrapper, a tee)
            setattr(sys, name, open(os.devnull, "w"))
