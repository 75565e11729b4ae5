"""What a user's denoiser callable is made of: the torch modules it runs, whether it can take (x_t, t, cond), and the
module inside wrappers (DataParallel, DistributedDataParallel, an EMA's AveragedModel, torch.compile; nested in any
order) that yoda can sample, with the compiled wrapper its adapter runs (CompiledWrapper)."""

from __future__ import annotations

import dis
import functools
import inspect
from typing import Any, Optional

import torch


def modules_behind(fn: Any) -> list:
    """The torch modules ``fn`` calls, as far as one look tells: ``fn`` itself; a module's bound method's module
    (``net.forward``); what a functools.partial holds; and the modules a Python function reads from its closure or
    loads as globals (a notebook's ``lambda x_t, t, cond: net(...)`` loads the global ``net``; in ``ckpt.net(...)``
    only ``ckpt`` is a global). Not looked into: other objects' attributes (a trainer's ``self.ema`` beside its
    ``self.model``: which one runs, only running it tells), nested functions."""
    if isinstance(fn, torch.nn.Module):
        return [fn]
    found: list = []

    def add(v: Any) -> None:
        v = v.__self__ if inspect.ismethod(v) else v  # (net.forward handed over)
        if isinstance(v, torch.nn.Module) and all(v is not m for m in found):
            found.append(v)

    while isinstance(fn, functools.partial):
        for v in (fn.func, *fn.args, *fn.keywords.values()):
            add(v)
        fn = fn.func
    if inspect.ismethod(fn):
        if isinstance(fn.__self__, torch.nn.Module):
            add(fn)
            return found
        fn = fn.__func__
    if inspect.isfunction(fn):
        for cell in fn.__closure__ or ():
            try:
                add(cell.cell_contents)
            except ValueError:  # a cell not filled yet
                pass
        for ins in dis.get_instructions(fn.__code__):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):  # (LOAD_ATTR's names are attributes)
                add(fn.__globals__.get(ins.argval))
    return found


def _classes(fn: Any) -> list:
    """The class names of ``fn`` and of the module inside it (torch.compile's _orig_mod, DataParallel's module)."""
    inner = [getattr(fn, a, None) for a in ("_orig_mod", "module")]
    return [c.__name__ for f in (fn, *inner) if f is not None for c in type(f).__mro__]


def signature_problem(fn: Any) -> Optional[str]:
    """Why ``fn`` cannot be called as f(x_t, t, cond) (a module: its forward), or None where it can or Python
    cannot tell (a builtin)."""
    module = isinstance(fn, torch.nn.Module)
    # a module's forward, where torch's own __call__ runs it (an fx / torch.export GraphModule has one of its own)
    by_torch = module and getattr(type(fn).__call__, "__module__", "").startswith("torch.")
    target = fn.forward if by_torch else fn
    name = (type(fn).__name__ if module else fn.name if isinstance(fn, torch.jit.ScriptFunction) else
            getattr(fn, "__qualname__", type(fn).__name__))
    if "UNet2DModel" in _classes(fn):  # its third argument is class_labels
        return ("a diffusers UNet2DModel takes (sample, timestep, class_labels): cond (up(lr)) would be its class "
                "labels; wrap it, e.g. lambda x_t, t, cond: unet(torch.cat([cond, x_t], 1), t).sample for a UNet "
                "that takes up(lr) beside x_t")
    try:
        sig = inspect.signature(target, follow_wrapped=False)  # (a decorator's own signature, not its function's)
    except (TypeError, ValueError):
        sig = _script_signature(target)  # TorchScript: a traced module's forward, a scripted function
        if sig is None:
            return None
    try:
        sig.bind(None, None, None)
    except TypeError:
        return (f"{name}{sig} cannot be called as f(x_t, t, cond) (cond: up(lr)); an SR3-style network, "
                f"net(cat([up(lr), x_t]), noise_level), is yoda.adapters.PixelAdapter(net, schedule); wrap another, "
                f"e.g. lambda x_t, t, cond: net(torch.cat([cond, x_t], 1), t)")
    return None


def _script_signature(fn: Any) -> Optional[inspect.Signature]:
    """The signature of a TorchScript function or method, from its schema (Python's inspect has none), or None."""
    schema = getattr(fn, "schema", None)
    if not isinstance(schema, torch._C.FunctionSchema):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return inspect.Signature([inspect.Parameter(a.name, kinds[a.kwarg_only], default=None if a.has_default_value()
                                                else inspect.Parameter.empty)
                              for a in schema.arguments if a.name != "self"])


WRAPPERS = ("DataParallel", "DistributedDataParallel", "AveragedModel")  # torch's: they keep the model in .module


def _inside(model: Any) -> Any:
    """The module one wrapper holds (WRAPPERS' .module, torch.compile's _orig_mod), or None: ``model`` is none."""
    if isinstance(model, CompiledWrapper):  # an adapter's: given again (as_adapter(adapter.net), save_model)
        return model.compiled
    if not isinstance(model, torch.nn.Module):
        return None
    name = type(model).__name__
    inner = getattr(model, "_orig_mod" if name == "OptimizedModule" else "module", None)
    return inner if (name in WRAPPERS or name == "OptimizedModule") and isinstance(inner, torch.nn.Module) else None


def _chain(model: Any) -> list:
    """``model`` and the modules its wrappers hold, outermost first (at most 16 deep: a module that wraps itself)."""
    chain = [model]
    while len(chain) < 16 and (inner := _inside(chain[-1])) is not None:
        chain.append(inner)
    return chain


def unwrapped(model: Any) -> Any:
    """The model inside torch's DataParallel / DistributedDataParallel / AveragedModel (an EMA) / torch.compile,
    nested in any order, where it is one yoda samples (it has yoda_adapter), else ``model``: the wrapper hid
    yoda_adapter, and the error that followed said to declare a plain callable's prediction."""
    inner = _chain(model)[-1]
    return inner if callable(getattr(inner, "yoda_adapter", None)) else model


def model_name(net: torch.nn.Module) -> str:
    """A network's name for a message: its class's; a scripted one's original class; a CompiledWrapper's model's."""
    if isinstance(net, CompiledWrapper):
        net = net._inner
    return net.original_name if isinstance(net, torch.jit.RecursiveScriptModule) else type(net).__name__


def compiled_within(model: Any) -> tuple:
    """(what runs the outermost torch.compile'd module among ``model``'s wrappers, the yoda model inside it), or
    (None, None) where none is compiled or no yoda model is inside: the yoda model's adapter holds the first in
    place of the second. That is the compiled module itself where it forwards attributes to the yoda model
    (torch.compile(net), DataParallel(torch.compile(net))), else a CompiledWrapper of it."""
    chain = _chain(model)
    at = next((i for i, m in enumerate(chain) if type(m).__name__ == "OptimizedModule"), None)
    inner = unwrapped(model)
    if at is None or inner is model:
        return None, None
    direct = all(type(m).__name__ == "OptimizedModule" for m in chain[at:-1])
    return (chain[at] if direct else CompiledWrapper(chain[at], inner)), inner


class CompiledWrapper(torch.nn.Module):
    """A torch.compile'd wrapper of a yoda model (torch.compile(DataParallel(net))) as the model's adapter holds it:
    called, the compiled wrapper runs; any other attribute is the model's (its config, submodules, parameters()),
    which torch.compile(net) forwards but a wrapper in between (DataParallel's) does not have."""

    def __init__(self, compiled: torch.nn.Module, inner: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = compiled
        object.__setattr__(self, "_inner", inner)  # (not a submodule: its tensors are the compiled wrapper's)

    @property
    def training(self) -> bool:  # the model's, now (net.train() after the adapter was made: warned of)
        inner = self.__dict__.get("_inner")
        return True if inner is None else inner.training

    @training.setter
    def training(self, mode: bool) -> None:  # (train() / eval() reach the model through self.compiled)
        pass

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_inner")
            if inner is None:  # (not initialised: copy, pickle)
                raise
            return getattr(inner, name)
