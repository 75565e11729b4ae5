"""The JSON field types of yoda's config dataclasses (TrainConfig, LossConfig, DataConfig), checked the same way
for a config read from JSON and one built in Python.

    check_field_types(obj)     every field of the dataclass ``obj`` has its JSON type (numpy numbers become the
                               Python numbers they hold); ValueError naming the field otherwise
    json_type_ok(value, tp)    whether a JSON value has the field type ``tp``
    json_type_name(tp)         ``tp`` in words, for messages ("an int", "a list of 2 items, each a number")
    read_config_text(path, what) a config file's text: a regular file of at most MAX_CONFIG_BYTES, else a
                               ValueError naming it (``what``: "config file")
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import numbers
import os
import stat
import typing
from typing import Iterable, Union

import numpy as np


def check_field_types(obj) -> None:
    """ValueError naming the field whose value does not have its JSON type (json_type_ok): a config built in
    Python gets the checks of one read from JSON. Numpy ints and floats are taken as the Python numbers they hold,
    and a tuple field (a list, an array) becomes a tuple of them."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        py = _python_numbers(value, tp)
        if not json_type_ok(py, tp):
            raise ValueError(f"{f.name} must be {json_type_name(tp)}, got {value!r}")
        if py is not value:
            object.__setattr__(obj, f.name, py)


def _python_numbers(value, tp):
    """``value`` with numpy numbers (and a numpy array for a tuple field) turned into the Python numbers of the
    field type ``tp`` (JSON writes those); anything else as it is, for json_type_ok to judge."""
    if tp in (int, float) and not isinstance(value, (bool, np.bool_)) and isinstance(
            value, numbers.Integral if tp is int else numbers.Real) and type(value) is not tp:
        return tp(value)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and isinstance(value, (list, tuple, np.ndarray)) and len(value) == len(args):
        return tuple(_python_numbers(v, a) for v, a in zip(list(value), args))
    return value


def json_type_ok(value, tp) -> bool:
    """Whether the JSON value ``value`` has the field type ``tp``: a bool is a JSON bool (Python would take
    "false" as true), an int an int and not a bool, a float any number, a tuple a list of its element types,
    a nested config (DataConfig, LossConfig) an object, Optional[X] X or null."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Union:
        return any(json_type_ok(value, a) for a in args)
    if typing.get_origin(tp) is tuple:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(json_type_ok(v, a) for v, a in zip(value, args)))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if tp is float else tp)


def json_type_name(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is Union:
        return " or ".join(json_type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(args)} items, each {json_type_name(args[0])}"
    names = {bool: "true or false", int: "an int", float: "a number", str: "a string", type(None): "null"}
    return names.get(tp, "a JSON object")


# other programs' names of a field that spelling does not lead to (difflib passed "learning_rate" for lr)
ALIASES = {"learning_rate": "lr", "epochs": "steps", "max_steps": "steps", "iterations": "steps", "iters": "steps",
           "batch_size": "batch", "num_steps": "steps", "ema": "ema_decay", "timesteps": "T"}


def unknown_keys(unknown: Iterable[str], known: Iterable[str]) -> str:
    """'batchsize (did you mean batch?); known: ...': each unknown key with its closest known one (or the field
    another program's name stands for, ALIASES), then the known."""
    known = sorted(known)
    near = {k: [ALIASES[k]] if ALIASES.get(k) in known else difflib.get_close_matches(k, known, n=1, cutoff=0.6)
            for k in unknown}
    return (", ".join(k + (f" (did you mean {near[k][0]}?)" if near[k] else "") for k in unknown)
            + f"; known: {', '.join(known)}")


MAX_CONFIG_BYTES = 16 << 20  # a config is a few KB; /dev/zero as --config was read whole (22 GB, then killed)


def read_config_text(path: str, what: str) -> str:
    """The UTF-8 text of the config file ``path``: FileNotFoundError / IsADirectoryError as open's, a ValueError
    naming it (``what`` first) for a device or a pipe (a FIFO waited forever), a file over MAX_CONFIG_BYTES and one
    that is not UTF-8."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {path} is not a regular file (a device or a pipe); a config is a small text file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # (a BOM, as Windows' Notepad writes, is no JSON error)
            text = f.read(MAX_CONFIG_BYTES + 1)
    except UnicodeDecodeError as e:  # (codec words, naming no file: an image given as the config)
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {e.start}); a config is a text file") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"{what} {path} is over {MAX_CONFIG_BYTES >> 20} MB; a config is a few KB")
    return text
