"""Whole-loop speed options of yoda.sample: torch.compile, autocast, channels-last and CUDA graphs (issue 12).

    yoda.sample(model, lr, compile=True, autocast="bf16", channels_last=True, cuda_graphs=True)
    yoda upscale IN -o OUT --compile --autocast bf16 --channels-last --cuda-graphs

All four act on the adapter's *network* only -- the callable it keeps in ``net`` (SR3 / pixel adapters),
``model`` (SRDiff), ``fn`` (CallableAdapter) or ``_denoise`` (LatentAdapter) -- never on the fused step, which
keeps the state's dtype (float32 math for a float32 state). For one sample() call the adapter is shallow-copied
with that network wrapped in a :class:`FastNet`; the user's adapter and model are not modified, and nothing
outlives the call except torch.compile's own code cache (keyed on the network's code, so a second call with the
same shapes does not compile again).

- ``compile``: ``torch.compile(network)``; a dict gives torch.compile's keyword arguments (``{"mode":
  "max-autotune-no-cudagraphs"}``, ``{"backend": "aot_eager"}``). Same image up to float rounding (inductor fuses
  and reorders). On a GPU the modes that capture CUDA graphs of their own ("reduce-overhead", "max-autotune") are
  refused: their graphs overwrite a call's output at the next call, and two-call solvers read it after (yoda's
  ``cuda_graphs`` captures instead). A compile that fails says ``compile`` (a UserError).
- ``autocast``: ``"bf16"`` or ``"fp16"``: the network call runs under ``torch.autocast`` of its device; the
  adapter casts the output back to the state's dtype.
- ``channels_last``: 4-D tensor inputs of the network are made channels-last (the weights are left alone; the
  convolutions then pick channels-last kernels); the output comes back in the contiguous layout.
- ``cuda_graphs``: CUDA only. The network call is captured once per input signature (shapes, dtypes, the
  non-tensor arguments) in a ``torch.cuda.CUDAGraph`` with static input buffers, and replayed: inputs are copied
  into the buffers, the output is cloned out. Tiled denoising has a few signatures (edge windows, the last
  batch), each captured once. The graphs live as long as the call, unless ``cuda_graphs`` is a
  :class:`GraphCache`: then they live in it, and later calls given the same cache replay them (``yoda upscale
  --cuda-graphs`` keeps one for the images of a run). A cache is for calls on one network whose Python state
  does not change between them (a DiffBIR strength, a training flag: a graph replays what was captured); an
  ``nn.Module`` network whose weights moved (``.to()``, ``.half()``) is captured anew, and so are other speed
  options; for another callable (a closure, a bound method) the cache cannot see the weights: ``clear()`` it
  after moving them. A new signature costs GRAPH_WARMUP + 1 network calls (a 1-step call without a cache is
  about 4x eager). Windows are denoised in batches of one size under cuda_graphs (the last batch padded with
  its last window, whose output is dropped), so that a step's changing count of active windows is no new
  signature. A capture that runs out of memory frees the cache's other graphs and tries once more. Threads
  take turns at the graphs (their buffers are shared; the threads must use one CUDA stream; captures are
  thread-local). The network must be capturable: no host syncs, no data-dependent shapes.
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..errors import UserError, out_of_memory

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NETWORK_ATTRS = ("net", "model", "fn", "_denoise")  # where adapters keep their network, in this order
GRAPH_WARMUP = 3  # eager (or compiled) calls on a side stream before a CUDA graph is captured
MAX_GRAPHS = 8  # CUDA graphs a GraphCache keeps (each holds its memory pool)
_GRAPH_LOCK = threading.RLock()  # around each capture and copy-in, replay, copy-out (threads on one stream)


class GraphCache:
    """CUDA graphs kept across yoda.sample calls: ``cuda_graphs=cache``, the same instance for calls on one network
    whose Python state stays the same (see the module docstring). At most MAX_GRAPHS input signatures, the least
    recently used dropped; ``clear()`` frees them (and their memory pools)."""

    def __init__(self) -> None:
        self.graphs: OrderedDict = OrderedDict()

    def clear(self) -> None:
        with _GRAPH_LOCK:
            self.graphs.clear()

    def __len__(self) -> int:
        return len(self.graphs)


@dataclass(frozen=True)
class Speed:
    """The checked speed options of one yoda.sample call (see the module docstring)."""

    compile: bool = False
    compile_options: tuple = ()  # torch.compile keyword arguments, as sorted (name, value) pairs
    autocast: Optional[str] = None  # None | "bf16" | "fp16"
    channels_last: bool = False
    cuda_graphs: bool = False
    graph_cache: Optional[GraphCache] = field(default=None, compare=False)  # cuda_graphs=GraphCache(): kept there

    @property
    def active(self) -> bool:
        return self.compile or self.autocast is not None or self.channels_last or self.cuda_graphs


def check_speed(*, compile: Any = False, autocast: Any = None, channels_last: Any = False, cuda_graphs: Any = False,
                device: torch.device) -> Speed:
    """The Speed of yoda.sample's arguments for a run on ``device``; errors name the argument."""
    options: tuple = ()
    if isinstance(compile, dict):
        if not all(isinstance(k, str) for k in compile):
            raise TypeError("compile: a dict of torch.compile keyword arguments must have str keys")
        compile, options = True, tuple(sorted(compile.items()))
    cache = cuda_graphs if isinstance(cuda_graphs, GraphCache) else None
    if cache is not None:
        cuda_graphs = True
    for name, v in (("compile", compile), ("channels_last", channels_last), ("cuda_graphs", cuda_graphs)):
        if not isinstance(v, bool):
            kind = {"compile": " or a dict", "cuda_graphs": " or a GraphCache"}.get(name, "")
            what = type(v).__name__ if type(v).__module__ == "builtins" else f"{type(v).__module__}.{type(v).__name__}"
            raise TypeError(f"{name} must be a bool{kind}, got {what}")  # numpy.bool, not "bool", for np.True_
    if isinstance(autocast, torch.dtype):
        autocast = {v: k for k, v in AUTOCAST_DTYPES.items()}.get(autocast, autocast)
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {autocast!r}")
    opts = dict(options)
    if torch.device(device).type == "cuda" and (opts.get("mode") in ("reduce-overhead", "max-autotune")
                                                 or (opts.get("options") or {}).get("triton.cudagraphs")):
        raise ValueError(f"compile: mode {opts.get('mode') or 'with triton.cudagraphs'!r} captures CUDA graphs of "
                         "its own, which overwrite a call's output at the next call (the two-call solvers read it "
                         "after); use 'max-autotune-no-cudagraphs', and cuda_graphs=True for yoda's own graphs")
    if cuda_graphs and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_graphs=True captures the denoiser call in a CUDA graph and needs a CUDA device; "
                         f"lr is on {device} (leave cuda_graphs=False on the CPU)")
    return Speed(compile, options, autocast, channels_last, cuda_graphs, cache)


def network_attr(adapter: Any) -> str:
    """The attribute of ``adapter`` that holds its network (NETWORK_ATTRS); ValueError if it has none."""
    for name in NETWORK_ATTRS:
        if callable(getattr(adapter, name, None)):
            return name
    raise ValueError(f"compile / autocast / channels_last / cuda_graphs act on the adapter's network, and "
                     f"{type(adapter).__name__} keeps none in {', '.join('.' + n for n in NETWORK_ATTRS)}")


def speed_adapter(adapter: Any, speed: Speed) -> Any:
    """``adapter`` itself when no option is on, else a shallow copy whose network is a FastNet."""
    if not speed.active:
        return adapter
    name = network_attr(adapter)
    if speed.autocast is not None:
        from ..adapters import module_dtype

        dt, want = module_dtype(getattr(adapter, name)), AUTOCAST_DTYPES[speed.autocast]
        if dt == torch.float64:
            warnings.warn(f"autocast={speed.autocast!r} changes nothing for a float64 network: torch.autocast casts "
                          "only float32 operations (make the model float32 first)", stacklevel=3)
        elif dt in AUTOCAST_DTYPES.values() and dt != want:  # torch's own error: "Unexpected floating ScalarType"
            raise ValueError(f"autocast={speed.autocast!r}: the network is {dt}, which torch.autocast to {want} "
                             f"cannot run; leave autocast out (the network already runs in {dt}) or make it float32")
    fast = copy.copy(adapter)
    setattr(fast, name, FastNet(getattr(adapter, name), speed))
    return fast


def _channels_last(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.dim() == 4:
        return v.contiguous(memory_format=torch.channels_last)
    return v


def _contiguous(v: Any) -> Any:
    return v.contiguous() if isinstance(v, torch.Tensor) else v


# where torch.compile keeps what it compiles (torchinductor_USER under the temporary folder by default)
CACHE_HINT = "set TORCHINDUCTOR_CACHE_DIR to a writable folder"


class FastNet:
    """``net`` called with the options of ``speed``; every other attribute is ``net``'s (parameters(), the
    submodules an adapter's prepare uses, its config), so the adapter's code runs unchanged."""

    def __init__(self, net: Any, speed: Speed) -> None:
        graphs = speed.graph_cache.graphs if speed.graph_cache is not None else OrderedDict()
        call = net
        if speed.compile:
            try:  # a mode, backend or keyword torch.compile does not know: its own error named no option of yoda's
                call = torch.compile(net, **dict(speed.compile_options))
            except OSError as e:  # (its error named a folder, not compile=, nor the variable that moves it)
                raise UserError(f"compile: torch.compile cannot use its cache folder ({e}); {CACHE_HINT}") from e
            except (TypeError, ValueError, RuntimeError, AssertionError) as e:  # {"dynamic": "yes"}: an assert
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                first = first if len(first) <= 200 else first[:200] + " ..."  # an unknown option: every known one
                opts = dict(speed.compile_options)
                raise ValueError(f"compile: torch.compile {f'refused {opts!r}' if opts else 'failed'} "
                                 f"({type(e).__name__}: {first})") from e
        self.__dict__.update(_net=net, _speed=speed, _graphs=graphs, _key=None, _call=call)

    def __getattr__(self, name: str) -> Any:
        net = self.__dict__.get("_net")
        if net is None:  # not initialised (copy, pickle): no forwarding
            raise AttributeError(name)
        return getattr(net, name)

    def _run(self, args: tuple, kwargs: dict) -> Any:
        """One network call with autocast (of the inputs' device) when asked; a failed compile says compile."""
        dt = self._speed.autocast
        try:
            if dt is None:
                return self._call(*args, **kwargs)
            leaves = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
            device_type = leaves[0].device.type if leaves else "cpu"
            with torch.autocast(device_type, dtype=AUTOCAST_DTYPES[dt]):
                return self._call(*args, **kwargs)
        except Exception as e:
            if self._speed.compile and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                cache = f"; {CACHE_HINT}" if "PermissionError" in first or "Permission denied" in first else ""
                raise UserError(f"compile: torch.compile of the network failed ({type(e).__name__}: {first}){cache}; "
                                "leave compile off (yoda upscale: without --compile)") from e
            if self._speed.compile and hasattr(e, "add_note"):  # an error of torch's compiled code (aot_eager's
                # strides) reads like the network's own: say where it came from (Python 3.11+)
                e.add_note("(raised under compile=: if the network runs without compile, torch.compile is the cause)")
            if self._speed.channels_last and hasattr(e, "add_note"):  # x.view(B, -1) of a channels-last input
                e.add_note("(raised under channels_last=True: if the network runs without it, the channels-last "
                           "layout is the cause, e.g. a .view of its input; leave channels_last off)")
            raise

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._speed.channels_last:
            args, kwargs = tree_map(_channels_last, (args, kwargs))
        out = self._graphed(args, kwargs) if self._speed.cuda_graphs else self._run(args, kwargs)
        return tree_map(_contiguous, out) if self._speed.channels_last else out

    def _graphed(self, args: tuple, kwargs: dict) -> Any:
        """The call replayed from a CUDA graph captured for this input signature (captured on first sight)."""
        leaves, spec = tree_flatten((args, kwargs))
        if self._key is None:  # once a call: the weights (a walk over every parameter) and the other options
            sp = self._speed
            self.__dict__["_key"] = (_weights_key(self._net), repr((sp.compile, sp.compile_options, sp.autocast)))
        key = (str(spec), tuple((tuple(v.shape), v.dtype, v.device, v.stride()) if isinstance(v, torch.Tensor)
                                else repr(v) for v in leaves), self._key)
        with _GRAPH_LOCK:  # threads sharing a graph take turns: its input and output buffers are shared
            entry = self._graphs.get(key)
            if entry is None:
                try:
                    entry = self._capture(leaves, spec)
                except Exception as e:  # the cache's other graphs hold their memory pools: free them, once
                    if not (out_of_memory(e) and self._graphs):
                        raise
                    self._graphs.clear()
                    torch.cuda.empty_cache()
                    entry = self._capture(leaves, spec)
                self._graphs[key] = entry
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            replay, static, out = entry
            for dst, src in zip(static, leaves):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)
            replay()
            return tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, out)

    def _capture(self, leaves: list, spec: Any) -> tuple:
        static = [v.clone() if isinstance(v, torch.Tensor) else v for v in leaves]
        args, kwargs = tree_unflatten(static, spec)
        replay, out = capture_cuda_graph(lambda: self._run(args, kwargs), static)
        odd = sorted({type(v).__name__ for v in tree_flatten(out)[0]
                      if not isinstance(v, (torch.Tensor, int, float, bool, str, type(None)))})
        if odd:  # its tensors could not be cloned out: the next replay would overwrite what this call returned
            raise TypeError(f"cuda_graphs: the network returned a {', '.join(odd)}, which torch's pytree does not "
                            "open; return tensors (or tuples, lists, dicts of them)")
        return replay, static, out


def _weights_key(net: Any) -> tuple:
    """Where the network's weights live and its training flag: a graph replays those addresses and that mode, so
    weights moved (``.to()``, ``.half()``, a replaced parameter) or a mode switched must not replay an older one."""
    if not isinstance(net, torch.nn.Module):
        return (id(net),)
    return (id(net), net.training) + tuple((t.data_ptr(), t.dtype)
                                           for t in itertools.chain(net.parameters(), net.buffers()))


def capture_cuda_graph(fn: Callable[[], Any], inputs: list) -> tuple[Callable[[], None], Any]:
    """fn(), which reads only the static buffers ``inputs``, warmed up on a side stream, then one call captured in a
    CUDA graph -> (replay, the output buffers that replay refills)."""
    if any(isinstance(v, torch.Tensor) and v.device.type != "cuda" for v in inputs):
        raise ValueError("cuda_graphs=True: every tensor the network takes must be on a CUDA device")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: cuDNN / inductor choices and allocations happen outside the capture
        for _ in range(GRAPH_WARMUP):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may sync meanwhile
        out = fn()
    return graph.replay, out
