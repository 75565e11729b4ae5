"""yoda.sample's speed options (yoda.sampling.speed, issue 12 item 5) on the CPU: torch.compile, autocast and
channels-last of the denoiser's network give the image of the plain run (within float rounding; autocast within a
measured bf16 tolerance), actually reach the network, leave the user's model untouched, and bad values raise
errors naming the argument; cuda_graphs on the CPU is a clear error (yoda.sample and yoda upscale).

The networks are small: two convolutions at 32² HR. torch.compile is checked with a recording backend (dynamo
traces the network, the image is the eager one bit for bit) and with inductor (marked slow: its C++ build).
"""

import re
import sys

import pytest
from unittest import mock
import torch

import yoda
from yoda.adapters import PixelAdapter
from yoda.cli import main
from yoda.cli_models import load_model
from yoda.models.loading import DEFAULT_WEIGHTS
from yoda.sampling.speed import FastNet, Speed, check_speed, network_attr, speed_adapter
from yoda.schedule import Schedule

NOTES = sys.version_info >= (3, 11)  # BaseException.add_note: on Python 3.10 the errors pass without yoda's notes

pytestmark = pytest.mark.usefixtures("one_thread")

SCHED = Schedule.linear(50, 1e-4, 2e-2)
KW = dict(steps=4, sampler="ddpm", seed=0, progress=False, lower_bound=0.4)
# bf16 autocast of the network against float32, after 4 steps (measured on the CPU: max 0.021, mean 0.0016 on Net;
# the embedded model: max 0.005, mean 0.001; bf16 has an 8-bit mantissa, one rounding is up to 2**-9 of a value)
BF16_MAX, BF16_MEAN = 0.05, 0.005


class Net(torch.nn.Module):
    """net(cat(up(lr), x_t), noise_level) -> eps: conv, SiLU, conv (a real, if tiny, network)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Conv2d(6, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        self.seen = []  # (channels-last input?, autocast on?) of every forward, when record is on
        self.record = True  # off for torch.compile: the list's length would be a guard, recompiling every call

    def forward(self, inp, level):
        if self.record:
            self.seen.append((inp.is_contiguous(memory_format=torch.channels_last) and not inp.is_contiguous(),
                              torch.is_autocast_enabled("cpu")))
        return self.b(torch.nn.functional.silu(self.a(inp))) * (0.5 + level.view(-1, 1, 1, 1))


def lr_image(B=1, h=16, w=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 3, h, w, generator=g) * 2 - 1


def attention(B=1, h=16, w=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 1, h, w, generator=g)


def run(model, **kw):
    return yoda.sample(model, lr_image(), attention=attention(), **KW, **kw)


def test_channels_last_reaches_the_network_and_keeps_the_image():
    net = Net()
    model = PixelAdapter(net, SCHED, scale=2)
    ref = run(model)
    assert net.seen and not any(cl for cl, _ in net.seen)
    net.seen.clear()
    out = run(model, channels_last=True)
    assert net.seen and all(cl for cl, _ in net.seen)  # every network call got channels-last input
    assert out.is_contiguous() and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # tiled: every window batch goes channels-last too, same image as tiled without it
    ref_t = run(model, windows=(16, 8), window_batch=2)
    net.seen.clear()
    torch.testing.assert_close(run(model, windows=(16, 8), window_batch=2, channels_last=True), ref_t, atol=1e-5,
                               rtol=0)
    assert len(net.seen) > KW["steps"] and all(cl for cl, _ in net.seen)


def _autocast_run(autocast):
    """(model, float32 image, image under ``autocast``) of Net, checked to have run every network call under it."""
    net = Net()
    model = PixelAdapter(net, SCHED, scale=2)
    ref = run(model)
    net.seen.clear()
    out = run(model, autocast=autocast)
    assert net.seen and all(ac for _, ac in net.seen)
    return model, ref, out


def test_autocast_bf16_runs_the_network_in_bf16_within_a_measured_tolerance():
    model, ref, out = _autocast_run("bf16")
    assert not torch.is_autocast_enabled("cpu")  # only inside the network call
    assert out.dtype == torch.float32  # the state (and the fused step) stay float32
    diff = (out - ref).abs()
    assert diff.max() > 0, "autocast had no effect: the network did not run in bf16"
    assert diff.max() <= BF16_MAX and diff.mean() <= BF16_MEAN, (diff.max(), diff.mean())
    assert torch.equal(run(model, autocast=torch.bfloat16), out)  # the dtype names the same option


def test_autocast_fp16_runs_the_network_in_fp16_on_the_cpu():
    """fp16 autocast was only checked to run: fp16 ignored, or run as bf16, passed. fp16 keeps 10 mantissa bits to
    bf16's 7, so its image is nearer the float32 one than bf16's, and not equal to it."""
    model, ref, out = _autocast_run("fp16")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    d = (out - ref).abs().max()
    assert 0 < d < (run(model, autocast="bf16") - ref).abs().max() and d <= BF16_MAX, d


def _recording_backend(calls):
    def backend(gm, example_inputs):
        calls.append(len(example_inputs))
        return gm.forward

    return backend


def test_compile_traces_the_network_and_keeps_the_image():
    """torch.compile with a recording backend: dynamo really traces the network (through FastNet), and the
    traced graph gives the eager image bit for bit."""
    net = Net()
    net.record = False
    model = PixelAdapter(net, SCHED, scale=2)
    ref = run(model)
    calls = []
    torch._dynamo.reset()
    out = run(model, compile={"backend": _recording_backend(calls)})
    assert calls, "the network was not compiled"
    assert torch.equal(out, ref)


def test_a_compiled_module_passed_as_the_model_runs_compiled():
    """torch.compile(net) forwards yoda_adapter to the original module, whose adapter held and ran the original: the
    user's compile did nothing, silently. Its adapter now runs the compiled module (the same image here); an
    adapter that holds no reference to the original says so."""

    class WithAdapter(Net):
        def yoda_adapter(self):
            return PixelAdapter(self, SCHED, scale=2)

    class Elsewhere(Net):  # keeps a bound method, not the module: nothing to swap
        def yoda_adapter(self):
            return yoda.adapters.CallableAdapter(lambda x, t, c: self(torch.cat([c, x], 1), t.float()[:, None]),
                                                 prediction="eps", schedule=SCHED, scale=2)

    net = WithAdapter()
    net.record = False
    ref = run(net)
    calls = []
    torch._dynamo.reset()
    compiled = torch.compile(net, backend=_recording_backend(calls))
    assert yoda.adapters.as_adapter(compiled).net is compiled and net.yoda_adapter().net is net
    assert torch.equal(run(compiled), ref) and calls, "the network was not compiled"
    with pytest.warns(UserWarning, match=r"model is a torch.compile'd Elsewhere, whose CallableAdapter runs the "
                                         r"original module: the compile changes nothing here; pass compile=True"):
        yoda.adapters.as_adapter(torch.compile(Elsewhere(), backend="eager"))


@pytest.mark.slow  # inductor's C++ build: about 17 s with an empty cache on the 2-core CPU
def test_compile_inductor_same_image_within_float_tolerance():
    """The real thing: inductor's CPU code for the network, same image within float rounding, and a second call
    reuses the compiled code (no recompile per sample() call)."""
    net = Net()
    net.record = False
    model = PixelAdapter(net, SCHED, scale=2)
    ref = run(model)
    torch._dynamo.reset()
    out = run(model, compile=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.testing.assert_close(run(model, compile=True), out, atol=0, rtol=0)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames


@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="the embedded default model is not installed")
def test_embedded_model_speed_options_and_the_model_is_untouched():
    """The SRDiff adapter keeps its network in ``model``: channels-last and bf16 reach it, prepare's RRDB (an
    attribute of the network) still works through FastNet, and the user's model and adapter are unchanged."""
    m = load_model("default", "cpu")
    adapter = m.yoda_adapter()
    lr = lr_image(h=8, w=8)
    kw = dict(KW, sampler="ddim", lower_bound=1.0)
    ref = yoda.sample(adapter, lr, **kw)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = yoda.sample(adapter, lr, channels_last=True, **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    bf = yoda.sample(adapter, lr, autocast="bf16", **kw)
    assert 0 < (bf - ref).abs().max() <= BF16_MAX
    assert adapter.model is m and not isinstance(adapter.model, FastNet)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert next(m.parameters()).is_contiguous()  # weights not converted to channels-last


def test_speed_adapter_copies_and_finds_the_network():
    net = Net()
    a = PixelAdapter(net, SCHED, scale=2)
    assert speed_adapter(a, Speed()) is a
    fast = speed_adapter(a, Speed(channels_last=True))
    assert fast is not a and a.net is net and isinstance(fast.net, FastNet)
    assert fast.net.a is net.a and next(fast.net.parameters()) is next(net.parameters())  # attributes forwarded
    assert network_attr(a) == "net"

    class NoNet(yoda.adapters.Adapter):
        pass

    with pytest.raises(ValueError, match="network"):
        speed_adapter(NoNet(), Speed(autocast="bf16"))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(autocast="fp8"), ValueError, "autocast"),
    (dict(autocast=torch.float64), ValueError, "autocast"),
    (dict(compile="yes"), TypeError, "compile"),
    (dict(compile={1: 2}), TypeError, "compile"),
    (dict(channels_last=1), TypeError, "channels_last"),
    (dict(cuda_graphs="on"), TypeError, "cuda_graphs"),
    (dict(cuda_graphs=True), ValueError, "cuda_graphs.*CUDA device"),
])
def test_bad_values_name_the_argument(kw, exc, match):
    with pytest.raises(exc, match=match):
        run(PixelAdapter(Net(), SCHED, scale=2), **kw)


def test_check_speed_values():
    assert check_speed(device=torch.device("cpu")) == Speed()
    assert not Speed().active and Speed(compile=True).active
    s = check_speed(compile={"mode": "max-autotune", "dynamic": False}, autocast=torch.float16,
                    device=torch.device("cpu"))
    assert s.compile and s.compile_options == (("dynamic", False), ("mode", "max-autotune")) and s.autocast == "fp16"
    assert check_speed(cuda_graphs=True, device=torch.device("cuda", 0)).cuda_graphs  # checked by device type only


def test_cli_cuda_graphs_on_the_cpu_is_one_line(tmp_path, tiny_model, capsys):
    import numpy as np
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(src)
    code = main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--model", tiny_model, "--device", "cpu",
                 "--cuda-graphs", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--cuda-graphs" in err and "CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.png").exists()


def test_cli_speed_flags_reach_the_sampler(tmp_path, tiny_model, monkeypatch):
    import numpy as np
    from PIL import Image

    import yoda.sampling as S

    seen = {}
    real = S.sample

    def spy(*args, **kw):
        seen.update({k: kw.get(k) for k in ("compile", "autocast", "channels_last", "cuda_graphs")})
        return real(*args, **kw)

    monkeypatch.setattr(S, "sample", spy)
    src = tmp_path / "in.png"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out.png"), "--model", tiny_model, "--device", "cpu",
                 "--autocast", "bf16", "--channels-last", "-q"]) == 0
    assert seen == dict(compile=False, autocast="bf16", channels_last=True, cuda_graphs=False)
    assert (tmp_path / "out.png").exists()


def fake_capture(monkeypatch, pause: float = 0.0) -> list:
    """capture_cuda_graph replaced for the CPU: the call run once (its output is the graph's output buffer), and a
    replay that runs it again into that buffer, after ``pause`` seconds; returns the list of the static inputs of
    every capture."""
    import time

    import yoda.sampling.speed as S

    captures = []

    def capture(fn, inputs):
        out = fn()
        captures.append(inputs)

        def replay():
            time.sleep(pause)
            out.copy_(fn())

        return replay, out

    monkeypatch.setattr(S, "capture_cuda_graph", capture)
    return captures


def test_cuda_graph_replay_logic_with_a_fake_capture(monkeypatch):
    """FastNet's CUDA-graph path without a GPU: capture_cuda_graph replaced by a fake whose replay recomputes into
    the captured output buffers. Checked: one capture per input signature, inputs copied into the static buffers
    before each replay, outputs cloned out (a later replay does not change an earlier result)."""
    captures = fake_capture(monkeypatch)
    net = Net()
    fast = FastNet(net, Speed(cuda_graphs=True))
    g = torch.Generator().manual_seed(3)
    x1, x2, x3 = (torch.randn(1, 6, 8, 8, generator=g) for _ in range(3))
    lv = torch.full((1, 1), 0.5)
    y1 = fast(x1, lv)
    y2 = fast(x2, lv * 0.5)
    assert len(captures) == 1  # same signature: replayed
    torch.testing.assert_close(y1, net(x1, lv), atol=0, rtol=0)
    torch.testing.assert_close(y2, net(x2, lv * 0.5), atol=0, rtol=0)
    fast(x3, lv)
    torch.testing.assert_close(y2, net(x2, lv * 0.5), atol=0, rtol=0)  # y2 is a clone, not the output buffer
    fast(torch.randn(2, 6, 8, 8, generator=g), torch.full((2, 1), 0.5))
    assert len(captures) == 2  # a new shape: a new graph
    assert not any(b is x1 for b in captures[0])  # static buffers are copies


def test_cuda_graphs_are_kept_across_calls_in_a_graph_cache(monkeypatch):
    """Each yoda.sample call (each image of `yoda upscale --cuda-graphs`) built a new FastNet with no graphs, so
    every image paid GRAPH_WARMUP + 1 network calls and a capture: with the CLI's 1 step, 4 forwards instead of 1.
    A GraphCache given as cuda_graphs= keeps them across calls (the CLI keeps one per run): one capture for five
    calls; weights that moved or a training flag switched are captured anew; at most MAX_GRAPHS signatures, the
    least recently used dropped. Without one, graphs still live as long as the call (a DiffBIR strength set per
    call, baked into a graph, must not be replayed by the next call)."""
    import yoda.sampling.speed as S

    captures = fake_capture(monkeypatch)
    net, cache = Net(), S.GraphCache()
    speed = check_speed(cuda_graphs=cache, device=torch.device("cuda", 0))
    assert speed.cuda_graphs and speed.graph_cache is cache and speed == Speed(cuda_graphs=True)
    x, lv = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((1, 1), 0.5)
    for _ in range(5):  # five sample() calls: five FastNets over one network
        y = FastNet(net, speed)(x, lv)
    assert len(captures) == 1 and len(cache) == 1 and torch.equal(y, net(x, lv))
    for _ in range(2):  # no cache: one capture a call, as before
        FastNet(net, Speed(cuda_graphs=True))(x, lv)
    assert len(captures) == 3
    captures.clear()
    with torch.no_grad():
        net.a.weight = torch.nn.Parameter(net.a.weight * 2)  # replaced: the old graph would read freed memory
    y = FastNet(net, speed)(x, lv)
    assert len(captures) == 1 and torch.equal(y, net(x, lv))
    assert net.training
    net.eval()  # another mode: another graph
    FastNet(net, speed)(x, lv)
    net.train()
    assert len(captures) == 2
    fast = FastNet(net, speed)
    for n in range(2, S.MAX_GRAPHS + 3):  # MAX_GRAPHS + 1 new signatures: more than are kept
        fast(torch.zeros(n, 6, 8, 8), torch.full((n, 1), 0.5))
    assert len(cache) == S.MAX_GRAPHS and len(captures) == 2 + S.MAX_GRAPHS + 1
    n = S.MAX_GRAPHS + 2
    fast(torch.zeros(n, 6, 8, 8), torch.full((n, 1), 0.5))  # the newest: replayed
    assert len(captures) == 2 + S.MAX_GRAPHS + 1
    fast(x, lv)  # the first signature of these weights was dropped: captured again
    assert len(captures) == 2 + S.MAX_GRAPHS + 2
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(TypeError, match="cuda_graphs must be a bool or a GraphCache, got dict"):
        check_speed(cuda_graphs={}, device=torch.device("cuda", 0))


def test_cli_keeps_one_graph_cache_for_a_run():
    """`yoda upscale --cuda-graphs` passes one GraphCache to every image of the run (built once, with the model)."""
    import argparse

    from yoda.cli_upscale import speed_options
    from yoda.sampling.speed import GraphCache

    a = argparse.Namespace(compile=False, autocast=None, channels_last=False, cuda_graphs=True)
    opts = speed_options(a, torch.device("cuda", 0))
    assert isinstance(opts["cuda_graphs"], GraphCache) and len(opts["cuda_graphs"]) == 0
    assert speed_options(argparse.Namespace(**{**vars(a), "cuda_graphs": False}), torch.device("cpu"))[
        "cuda_graphs"] is False


def test_threads_sharing_a_graph_take_turns(monkeypatch):
    """The kept graphs are shared by every call on the network, threads too: two threads copying their inputs
    into the one static buffer and replaying could each get the other's output. They take turns now (a fake
    replay that yields the GIL midway made the interleaving happen at every call without the lock)."""
    import threading

    import yoda.sampling.speed as S

    fake_capture(monkeypatch, pause=0.002)  # another thread runs in the pause: it would overwrite the static inputs
    net, lv = Net(), torch.full((1, 1), 0.5)
    speed = check_speed(cuda_graphs=S.GraphCache(), device=torch.device("cuda", 0))
    xs = [torch.full((1, 6, 8, 8), float(i)) for i in range(2)]
    want = [net(x, lv) for x in xs]
    bad = []

    def work(i):
        for _ in range(10):
            if not torch.equal(FastNet(net, speed)(xs[i], lv), want[i]):
                bad.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_cuda_graph_capture_refuses_cpu_tensors():
    from yoda.sampling.speed import capture_cuda_graph

    with pytest.raises(ValueError, match="CUDA device"):
        capture_cuda_graph(lambda: None, [torch.zeros(1)])


def test_graph_cache_keys_the_options_and_survives_running_out_of_memory(monkeypatch):
    """A GraphCache shared by calls with other options replayed the first call's graph: a later autocast="bf16"
    call gave the float32 image (and compile on / off the same). The options are now in the key. A capture that
    runs out of memory while the cache holds other graphs (their memory pools) frees them and tries once more
    (`yoda upscale --cuda-graphs` on a folder of sizes kept failing after the first); a network output the graph
    cannot clone out (a plain object) is refused at capture."""
    import yoda.sampling.speed as S

    captures = fake_capture(monkeypatch)
    net, cache = Net(), S.GraphCache()
    net.record = False
    x, lv = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((1, 1), 0.5)
    y32 = FastNet(net, check_speed(cuda_graphs=cache, device=torch.device("cuda")))(x, lv)
    bf16 = check_speed(cuda_graphs=cache, autocast="bf16", device=torch.device("cuda"))
    y16 = FastNet(net, bf16)(x, lv)
    assert len(captures) == 2 and torch.equal(y16, FastNet(net, Speed(autocast="bf16"))(x, lv))
    assert not torch.equal(y16, y32)
    real, failed = S.capture_cuda_graph, []

    def short_of_memory(fn, inputs):  # the first try of a capture beside other graphs fails
        if len(cache) and not failed:
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(fn, inputs)

    monkeypatch.setattr(S, "capture_cuda_graph", short_of_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    y = FastNet(net, bf16)(torch.zeros(2, 6, 8, 8), torch.full((2, 1), 0.5))
    assert failed == [1] and len(cache) == 1 and y.shape == (2, 3, 8, 8)  # the others freed, this one kept

    class Box:
        def __init__(self, t):
            self.t = t

    with pytest.raises(TypeError, match="cuda_graphs: the network returned a Box, which torch's pytree does not"):
        FastNet(lambda a, b: Box(a), Speed(cuda_graphs=True))(x, lv)


def test_compile_modes_with_their_own_cuda_graphs_and_failed_compiles_say_compile():
    """compile={"mode": "max-autotune"} (the README's example) turns on inductor's CUDA graphs, which overwrite a
    call's output at the next call: the two-call solvers read it after and failed. Refused on a GPU, naming
    compile; the CPU keeps the mode. A compile that failed (no C++ compiler) was "an internal error (a bug in
    yoda)" in the CLI, with a 116-line traceback: it is a UserError naming compile."""
    from yoda.errors import UserError

    gpu = torch.device("cuda")
    for opts in ({"mode": "max-autotune"}, {"mode": "reduce-overhead"}, {"options": {"triton.cudagraphs": True}}):
        with pytest.raises(ValueError, match="^compile: mode .* captures CUDA graphs of its own"):
            check_speed(compile=opts, device=gpu)
    assert check_speed(compile={"mode": "max-autotune-no-cudagraphs"}, device=gpu).compile
    assert check_speed(compile={"mode": "max-autotune"}, device=torch.device("cpu")).compile

    class InductorError(RuntimeError):
        pass

    InductorError.__module__ = "torch._inductor.exc"
    fast = FastNet(Net(), Speed(compile=True, compile_options=(("backend", "eager"),)))

    def fail(*a, **k):
        raise InductorError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

    fast.__dict__["_call"] = fail
    with pytest.raises(UserError, match=r"^compile: torch.compile of the network failed \(InductorError: "
                                        r"InvalidCxxCompiler: No working C\+\+ compiler found\); leave compile off"):
        fast(torch.zeros(1, 6, 8, 8), torch.full((1, 1), 0.5))
    # an error from compiled code outside dynamo / inductor (aot_eager's "Expected X.is_contiguous") is the
    # network's as far as its type says, so it passes unchanged, with a note naming compile (it had none)
    fast.__dict__["_call"] = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("Expected X.is_contiguous"))
    with pytest.raises(RuntimeError, match="^Expected X.is_contiguous(\n|$)") as e:
        fast(torch.zeros(1, 6, 8, 8), torch.full((1, 1), 0.5))
    assert getattr(e.value, "__notes__", None) == ([
        "(raised under compile=: if the network runs without compile, torch.compile is the cause)"] if NOTES else None)
    plain = FastNet(Net(), Speed())
    plain.__dict__["_call"] = fast.__dict__["_call"]
    with pytest.raises(RuntimeError) as e:
        plain(torch.zeros(1, 6, 8, 8), torch.full((1, 1), 0.5))
    assert not hasattr(e.value, "__notes__")
    # a cache folder torch.compile cannot write (TORCHINDUCTOR_CACHE_DIR, or the temporary folder's): the error named
    # the folder only ("yoda: error: /x/ind: Permission denied"), not compile nor the variable that moves it
    fast.__dict__["_call"] = lambda *a, **k: (_ for _ in ()).throw(InductorError(
        "PermissionError: [Errno 13] Permission denied: '/tmp/torchinductor_root/73'"))
    with pytest.raises(UserError, match=r"Permission denied: '/tmp/torchinductor_root/73'\); set "
                                        r"TORCHINDUCTOR_CACHE_DIR to a writable folder; leave compile off"):
        fast(torch.zeros(1, 6, 8, 8), torch.full((1, 1), 0.5))
    def unwritable(*a, **k):
        raise PermissionError(13, "Permission denied", "/x/ind")

    with mock.patch.object(torch, "compile", unwritable):
        with pytest.raises(UserError, match=r"^compile: torch.compile cannot use its cache folder \(\[Errno 13\] "
                                            r"Permission denied: '/x/ind'\); set TORCHINDUCTOR_CACHE_DIR to a "
                                            r"writable folder$"):
            FastNet(Net(), Speed(compile=True))


def test_compile_options_torch_refuses_and_channels_last_failures_name_the_option():
    """compile={"mode": "bogus"} (or an unknown backend or keyword) gave torch's own error, which names no option of
    yoda's; np.True_ was refused as "got bool"; a network that fails on channels-last input said nothing of
    channels_last (compile= adds a note of its own)."""
    np = pytest.importorskip("numpy")
    for opts, said in (({"mode": "bogus"}, "RuntimeError: Unrecognized mode=bogus"),
                       ({"backend": "nosuch"}, "InvalidBackend"), ({"bogus_kw": 1}, "TypeError")):
        with pytest.raises(ValueError, match=rf"^compile: torch.compile refused {re.escape(repr(opts))} \({said}"):
            run(PixelAdapter(Net(), SCHED), compile=opts)
    with pytest.raises(TypeError, match=r"^compile must be a bool or a dict, got numpy.bool"):
        check_speed(compile=np.True_, device=torch.device("cpu"))

    class Flat(torch.nn.Module):  # views its input as contiguous
        def forward(self, inp, level):
            return inp[:, :3] + 0 * inp.view(inp.shape[0], -1).sum()

    with pytest.raises(RuntimeError) as e:
        FastNet(Flat(), Speed(channels_last=True))(torch.zeros(1, 6, 8, 8), torch.full((1, 1), 0.5))
    assert getattr(e.value, "__notes__", None) == ([
        "(raised under channels_last=True: if the network runs without it, the channels-last layout is the cause, "
        "e.g. a .view of its input; leave channels_last off)"] if NOTES else None)
    with pytest.raises(ValueError, match=r"^compile: torch.compile refused \{'dynamic': 'yes'\} \(AssertionError"):
        FastNet(Net(), Speed(compile=True, compile_options=(("dynamic", "yes"),)))
    with pytest.raises(ValueError,
                       match=r"^compile: torch.compile refused .*'bogus': 1.*\(RuntimeError: .{1,200} \.\.\.\)$"):
        FastNet(Net(), Speed(compile=True, compile_options=(("options", {"bogus": 1}),)))


# 6 steps at lower_bound 0.1 leave the ramp's least attended pixels unrefined, and say so: beside the point
@pytest.mark.filterwarnings("ignore:yoda.sample. at steps=6 with lower_bound 0.1:yoda.UnrefinedWarning")
def test_windows_under_cuda_graphs_go_in_batches_of_one_size(monkeypatch):
    """With windows and attention the count of active windows grows from step to step, and every new batch size
    was a new CUDA graph (GRAPH_WARMUP + 1 network calls and a memory pool each: 7 in 10 steps). Under
    cuda_graphs each window size now goes in batches of one size, the last padded with its last window (its
    output dropped): the image of eager windows, a few captures."""
    import yoda.sampling.loop as L

    captures = fake_capture(monkeypatch)
    real_check = L.check_speed
    monkeypatch.setattr(L, "check_speed", lambda **kw: real_check(**{**kw, "device": torch.device("cuda")}))
    model = PixelAdapter(Net().eval(), SCHED, scale=2)
    model.net.record = False
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)  # more windows active every step
    kw = dict(attention=ramp, steps=6, sampler="ddim", seed=0, progress=False, lower_bound=0.1, windows=(8, 2),
              window_batch=4)
    sizes, calls = set(), []
    with torch.backends.mkldnn.flags(enabled=False):  # oneDNN's convolutions round by batch size; these do not
        want = yoda.sample(model, lr_image(), callback=lambda d: calls.append(d["calls"]), **kw)
        real_denoise = model.denoise
        monkeypatch.setattr(PixelAdapter, "denoise",
                            lambda self, x, *a: (sizes.add(x.shape[0]), real_denoise(x, *a))[1])
        got = yoda.sample(model, lr_image(), cuda_graphs=True, **kw)
    assert len(set(calls)) > 2  # the active windows changed from step to step
    assert torch.equal(got, want) and sizes == {4} and len(captures) <= 4  # per window size (inner, 2 edges, corner)


def test_autocast_of_a_float64_network_says_it_changes_nothing():
    """torch.autocast leaves float64 operations alone: autocast="bf16" on a float64 network gave the float64
    image bit for bit, without a word. It now warns; a float32 network does not."""
    import warnings

    model = PixelAdapter(Net().double().eval(), SCHED, scale=2)
    model.net.record = False
    with pytest.warns(UserWarning, match=r"autocast='bf16' changes nothing for a float64 network"):
        got = run(model, autocast="bf16")
    assert torch.equal(got, run(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(PixelAdapter(Net().eval(), SCHED, scale=2), autocast="bf16")


@pytest.mark.parametrize("net_dtype, autocast", [(torch.float16, "bf16"), (torch.bfloat16, "fp16")])
def test_autocast_to_the_other_half_dtype_is_refused_before_prepare(net_dtype, autocast):
    """A float16 network under autocast="bf16" (or the reverse) failed at its first call, after prepare (an SRDiff's
    RRDB), with torch's "Unexpected floating ScalarType in at::autocast::prioritize". Refused first, naming autocast;
    autocast of the network's own half dtype runs."""
    model = PixelAdapter(Net().to(net_dtype).eval(), SCHED, scale=2)
    model.net.record = False
    with pytest.raises(ValueError, match=rf"^autocast='{autocast}': the network is {net_dtype}, which torch.autocast "
                                         r"to torch.\w+ cannot run; leave autocast out"):
        run(model, autocast=autocast)
    own = {torch.float16: "fp16", torch.bfloat16: "bf16"}[net_dtype]
    assert run(model, autocast=own).dtype == torch.float32
