"""The JSON field types of yoda's config dataclasses (TrainConfig, LossConfig, DataConfig), checked the same way
for a config read from JSON and one built in Python.

    check_field_types(obj)     every field of the dataclass ``obj`` has its JSON type (numpy numbers become the
                               Python numbers they hold); ValueError naming the field otherwise
    json_type_ok(value, tp)    whether a JSON value has the field type ``tp``
    json_type_name(tp)         ``tp`` in words, for messages ("an int", "a list of 2 items, each a number")
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
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


def unknown_keys(unknown: Iterable[str], known: Iterable[str]) -> str:
    """'batchsize (did you mean batch?); known: ...': each unknown key with its closest known one, then the known."""
    known = sorted(known)
    near = {k: difflib.get_close_matches(k, known, n=1, cutoff=0.6) for k in unknown}
    return (", ".join(k + (f" (did you mean {near[k][0]}?)" if near[k] else "") for k in unknown)
            + f"; known: {', '.join(known)}")
