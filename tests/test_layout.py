"""The shape of the code, checked from the source: no import cycle among yoda's and yoda_kernels' modules
(function-level imports included, so a cycle cannot hide behind them), no module over MAX_LINES lines, no
comment pointing to a file that is not in the repository; and setup.py's choice of extension per platform."""

import ast
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("yoda", "yoda_kernels")
MAX_LINES = 600
GENERATED = {"QUALITY.md", "STABILITY.md"}  # written by benchmarks/quality_grid.py and benchmarks/stability.py


def _modules() -> dict:
    """module name -> path, for every .py file of PACKAGES."""
    out = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py") or (f.endswith(".so") and "." in f[:-3]):  # .so: the compiled extension
                    rel = os.path.relpath(os.path.join(folder, f), ROOT).split(".")[0].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = os.path.join(folder, f)
    return out


def import_graph() -> dict:
    """module -> the set of project modules it imports anywhere in its source (``from pkg import name`` counts as
    importing pkg.name when that is a module, else pkg)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        deps = set()
        graph[name] = deps
        if not path.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - node.level + 1]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:  # "yoda.models.sr3.SR3UNet" -> "yoda.models.sr3"
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    graph = import_graph()
    assert "yoda_kernels._C" in graph["yoda_kernels.ops"] and "yoda.training.loss" in graph["yoda.training"]
    assert graph["yoda.attention.weights"] >= {"yoda.checkpoint"} and "yoda.attention.weights" not in graph["yoda.checkpoint"]
    assert cycles(graph) == []


def test_first_use_of_lazy_names_from_threads_at_once():
    """Threads touching yoda's lazy names for the first time at once (a server's first requests): "load"
    (yoda.models.loading) and "ModelCard" (yoda.models.card) each imported a submodule whose package imports the
    other, and Python locks a submodule before its package: a _DeadlockError or "cannot import name ... from
    partially initialized module" (8 of 8 fresh processes)."""
    code = (
        "import sys, threading, yoda\n"
        "names = sys.argv[1:]\n"
        "bar, errors = threading.Barrier(len(names)), []\n"
        "def touch(n):\n"
        "    bar.wait()\n"
        "    try:\n"
        "        getattr(yoda, n)\n"
        "    except Exception as e:\n"
        "        errors.append(f'{n}: {type(e).__name__}: {e}')\n"
        "ts = [threading.Thread(target=touch, args=(n,)) for n in names]\n"
        "[t.start() for t in ts]; [t.join(120) for t in ts]\n"
        "print(errors, [t.is_alive() for t in ts].count(True))\n")
    for names in (["load", "ModelCard"], ["load", "ModelCard"],
                  ["load", "ModelCard", "models", "sample", "attention", "adapters", "training", "load_image"]):
        r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode == 0 and r.stdout.strip() == "[] 0", r.stdout + r.stderr


def test_the_cycle_check_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_too_long():
    long = {name: n for name, path in _modules().items()
            if path.endswith(".py") and (n := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES}
    assert long == {}


def test_comments_point_inside_the_repository():
    """A reference to a Markdown file (such as RESULTS.md) must name a file that exists in the repository."""
    existing = {f for pkg in PACKAGES + ("tests", "benchmarks", "csrc", "yoda/weights", ".")
                for f in os.listdir(os.path.join(ROOT, pkg)) if f.endswith(".md")}
    existing |= GENERATED
    bad = []
    for pkg in PACKAGES + ("tests", "benchmarks", "csrc"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith((".py", ".h", ".cpp", ".cu", ".cuh", ".sh")):
                    text = open(os.path.join(folder, f), encoding="utf-8").read()
                    bad += [(f, m) for m in re.findall(r"\b([A-Z][A-Za-z_]*\.md)\b", text) if m not in existing]
    assert bad == []


@pytest.mark.parametrize("where", ["loss", "trainer", "loaders", "sampler loop", "kernel contract"])
def test_a_newcomer_finds_it_from_the_folder_names(where):
    path = {"loss": "yoda/training/loss.py", "trainer": "yoda/training/trainer.py",
            "loaders": "yoda/models/loading.py", "sampler loop": "yoda/sampling/loop.py",
            "kernel contract": "yoda_kernels/contract.py"}[where]
    assert os.path.isfile(os.path.join(ROOT, path))


def test_every_mutant_still_finds_its_code():
    """benchmarks/mutants.py changes one snippet per mutant; a snippet that no longer occurs exactly once (the
    code was edited since) would stop the mutation check. Checked here, where every run sees it."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("_mutants", os.path.join(ROOT, "benchmarks", "mutants.py"))
    mutants = sys.modules["_mutants"] = importlib.util.module_from_spec(spec)  # its dataclass looks itself up
    try:
        spec.loader.exec_module(mutants)
    finally:
        del sys.modules["_mutants"]
    assert mutants.check_list(mutants.MUTANTS) == []  # each snippet once, and each name (a duplicate stopped a run)


def test_dir_of_yoda_lists_each_public_name_once():
    """dir(yoda) listed a name twice once it was loaded ('sample', 'sample') and the module's own imports."""
    import yoda
    from yoda import _LAZY

    yoda.sample, yoda.Schedule  # noqa: B018 - loaded: now in the module's globals too
    names = dir(yoda)
    assert len(names) == len(set(names)) and set(_LAZY) <= set(names)
    assert "importlib" not in names and "annotations" not in names
    # `from yoda import *` gave 'annotations' and 'importlib' (the names not yet loaded were missing): yoda.__all__
    ns: dict = {}
    exec("from yoda import *", ns)
    assert set(ns) - {"__builtins__"} == set(_LAZY) and ns["sample"] is yoda.sample
    # the modules the README names by their dotted path are reached from `import yoda` alone (a subprocess: a fresh
    # interpreter, where no test has imported them yet)
    # every module the docs name by a dotted path (`yoda.malloc.tune_malloc`: an AttributeError after `import
    # yoda`) is one of them
    docs = "".join(open(os.path.join(ROOT, f), encoding="utf-8").read() for f in ("README.md", "DESIGN.md"))
    named = set(re.findall(r"\byoda\.([a-z_]+)\.[A-Za-z_]", docs))
    assert len(named) > 8 and named <= set(_LAZY), sorted(named - set(_LAZY))
    code = ("import yoda; print(yoda.images.MAX_PIXELS > 0, yoda.schedule.MAX_FILE_T, callable(yoda.upsampling."
            "upsample), callable(yoda.figures.compute), callable(yoda.data.make_lr), callable(yoda.masks.tau_at), "
            "callable(yoda.malloc.tune_malloc), len(yoda.photos.HELD_OUT_PHOTOS), callable(yoda.heldout."
            "held_out_copy), callable(yoda.devices.resolve_device))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "100000", "True", "True", "True", "True", "True", "10", "True",
                                  "True"], out.stderr


def test_windows_installs_without_the_extension(monkeypatch):
    """The C++ sources are written for GCC / Clang (__restrict__, __builtin_*, -ffp-contract=off): MSVC cannot
    build them, and `pip install -e .` failed on Windows. setup.py skips the extension there and asks for any
    torch >= 2.4, as YODA_NO_EXTENSION=1 does; on Linux it builds it and pins torch."""
    import setuptools

    def run_setup(platform):
        seen = {}
        monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
        monkeypatch.setattr(sys, "platform", platform)
        monkeypatch.setattr(sys, "argv", ["setup.py", "egg_info"])
        monkeypatch.delenv("YODA_NO_EXTENSION", raising=False)
        code = compile(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read(), "setup.py", "exec")
        exec(code, {"__file__": os.path.join(ROOT, "setup.py"), "__name__": "setup"})
        return seen

    win = run_setup("win32")
    assert win["ext_modules"] == [] and win["cmdclass"] == {} and win["install_requires"][0] == "torch>=2.4"
    linux = run_setup("linux")
    assert [e.name for e in linux["ext_modules"]] == ["yoda_kernels._C"]
    assert linux["install_requires"][0] == "torch==" + torch.__version__.split("+")[0]
    # the build backend asks for no torch there either (it downloaded one for nothing, and failed where PyPI has
    # none: Windows on ARM64); on Linux it asks for the torch the extension is compiled against
    sys.path.insert(0, os.path.join(ROOT, "_build"))
    try:
        import yoda_build
    finally:
        sys.path.pop(0)
    monkeypatch.delenv("YODA_BUILD_TORCH", raising=False)
    monkeypatch.setattr(sys, "platform", "win32")
    assert yoda_build.get_requires_for_build_editable() == ["setuptools>=77"]  # (it builds wheels: no wheel package)
    monkeypatch.setattr(sys, "platform", "linux")
    assert yoda_build.get_requires_for_build_editable()[1:] == ["torch==" + torch.__version__.split("+")[0], "ninja"]


def test_commands_that_need_no_torch_do_not_import_it(tmp_path):
    """`yoda plot` and `yoda data build` imported torch (2 s) through yoda.images, and so did every early CLI error
    (a wrong -o suffix, --steps 0) through errors.out_of_memory: each waited for torch it never used."""
    code = ("import sys\nfrom yoda.cli import main\nimport yoda.images, yoda.plots, yoda.photos\n"
            "codes = [main(['upscale', 'x.png', '-o', 'o.xyz']), main(['upscale', 'x.png', '--steps', '0']),\n"
            "         main(['plot', 'missing.csv', '-o', 'p.png'])]\n"
            "print(codes, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[2, 2, 2] False", r.stdout + r.stderr


def test_the_library_leaves_the_warnings_filters_alone():
    """yoda.images.read_image recorded Pillow's warnings with warnings.catch_warnings, which swaps the process-wide
    filters: two threads loading images left an "always" filter and a dead list that swallowed every later warning
    of the process. Only the CLI (one thread, its own process) may catch warnings."""
    found = []
    for folder in ("yoda", "yoda_kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                path = os.path.join(dirpath, f)
                if f.endswith(".py") and not f.startswith("cli") and f != "__main__.py":
                    with open(path, encoding="utf-8") as fh:  # any use of the name, however spelt (a text search
                        tree = ast.parse(fh.read())  # for "catch_warnings(" missed "catch_warnings ()")
                    if any(getattr(n, "attr", None) == "catch_warnings" or getattr(n, "id", None) == "catch_warnings"
                           or isinstance(n, ast.alias) and n.name == "catch_warnings" for n in ast.walk(tree)):
                        found.append(os.path.relpath(path, ROOT))
    assert found == []


def test_the_library_asserts_nothing():
    """python -O drops assert statements: yoda_kernels.testing planted its ties inside one (the op tests' tie cases
    then had none) and checked a public helper's dtype, shape and tolerance with them (everything passed). The
    library raises instead."""
    found = []
    for folder in ("yoda", "yoda_kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    with open(path, encoding="utf-8") as fh:
                        tree = ast.parse(fh.read())
                    found += [f"{os.path.relpath(path, ROOT)}:{n.lineno}" for n in ast.walk(tree)
                              if isinstance(n, ast.Assert)]
    assert found == []


def test_triton_launches_use_no_jit_cdiv():
    """DEVELOPERS.md: launch-time Python stays lean, no triton.cdiv (a @jit function, slow to call from the host;
    launch.cdiv does it); nothing refused it."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "yoda_kernels")):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
                found += [f for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "cdiv"
                          and isinstance(n.value, ast.Name) and n.value.id == "triton"
                          or isinstance(n, ast.ImportFrom) and n.module == "triton"
                          and any(a.name == "cdiv" for a in n.names)]
    assert found == []
