"""What a user's denoiser callable is made of: the torch modules it runs, whether it can take (x_t, t, cond), and the
module inside a wrapper (DataParallel, DistributedDataParallel, an EMA's AveragedModel) that yoda can sample."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Optional

import torch


def modules_behind(fn: Any) -> list:
    """The torch modules ``fn`` runs, as far as one level of looking tells: ``fn`` itself; else those a
    functools.partial holds, a bound method's object, a callable object's attributes, and what a function reads
    from its closure or its globals (a notebook's ``lambda x_t, t, cond: net(...)`` reads the global ``net``)."""
    if isinstance(fn, torch.nn.Module):
        return [fn]
    found: list = []

    def add(v: Any) -> None:
        if isinstance(v, torch.nn.Module) and all(v is not m for m in found):
            found.append(v)

    if isinstance(fn, functools.partial):
        for v in (*fn.args, *fn.keywords.values()):
            add(v)
        fn = fn.func
        add(fn)
    if inspect.ismethod(fn):  # its object, or the modules the object holds (self.net)
        add(fn.__self__)
        if not isinstance(fn.__self__, torch.nn.Module):
            for v in getattr(fn.__self__, "__dict__", {}).values():
                add(v)
    func = getattr(fn, "__func__", fn)
    if inspect.isfunction(func):
        try:
            names = inspect.getclosurevars(func)
        except (TypeError, ValueError):  # (a closure cell not filled yet)
            return found
        for v in (*names.nonlocals.values(), *names.globals.values()):
            add(v)
    elif not inspect.isroutine(fn) and hasattr(fn, "__dict__"):  # an object with __call__ (self.net inside)
        for v in vars(fn).values():
            add(v)
    return found


def signature_problem(fn: Any) -> Optional[str]:
    """Why ``fn`` cannot be called as f(x_t, t, cond) (a module: its forward), or None where it can or Python
    cannot tell (a builtin)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    name = type(fn).__name__ if isinstance(fn, torch.nn.Module) else getattr(fn, "__qualname__", type(fn).__name__)
    if any(c.__name__ == "UNet2DModel" for c in type(fn).__mro__):  # its third argument is class_labels
        return (f"a diffusers {name} takes (sample, timestep, class_labels): cond (up(lr)) would be its class "
                f"labels; wrap it, e.g. lambda x_t, t, cond: unet(torch.cat([cond, x_t], 1), t).sample for a UNet "
                f"that takes up(lr) beside x_t")
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(None, None, None)
    except TypeError:
        return (f"{name}{sig} cannot be called as f(x_t, t, cond) (cond: up(lr)); an SR3-style network, "
                f"net(cat([up(lr), x_t]), noise_level), is yoda.adapters.PixelAdapter(net, schedule); wrap another, "
                f"e.g. lambda x_t, t, cond: net(torch.cat([cond, x_t], 1), t)")
    return None


WRAPPERS = ("DataParallel", "DistributedDataParallel", "AveragedModel")  # torch's: they keep the model in .module


def unwrapped(model: Any) -> Any:
    """The model inside torch's DataParallel / DistributedDataParallel / AveragedModel (an EMA) where it is one yoda
    samples (it has yoda_adapter), else ``model``: the wrapper hid yoda_adapter, and the error that followed said to
    declare a plain callable's prediction."""
    inner = getattr(model, "module", None)
    if (type(model).__name__ in WRAPPERS and isinstance(model, torch.nn.Module)
            and callable(getattr(inner, "yoda_adapter", None))):
        return inner
    return model
