"""Builds yoda_kernels._C: C++ CPU kernels always, CUDA kernels when a CUDA torch and nvcc are present.

Switches (environment): FORCE_CUDA=1 builds the CUDA kernels even without a visible GPU (needs a CUDA torch
and nvcc); FORCE_ONLY_CPU=1 never builds them; YODA_NO_EXTENSION=1 skips the extension (pure-Python install,
the reference backend is used); YODA_DEBUG=1 keeps debug information in the library. As pytorch_scatter's
setup.py does. On Windows the extension is skipped: its
sources are written for GCC / Clang (__restrict__, __builtin_*, -ffp-contract=off), not MSVC.
"""

import glob
import os
import sys

from setuptools import find_namespace_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# The kernels' float arithmetic as written (the reference's bits). -fno-fast-math: a CFLAGS of -ffast-math /
# -Ofast (the environment's flags come first) reassociated it, and the bits left the reference's without a word;
# -fno-math-errno after it, which it would turn back on. tests/test_noise.py builds with these. At the link too,
# where CFLAGS come first as well: GCC <= 12 linked crtfastmath.o into a -ffast-math library, whose loading turned
# on flush-to-zero for the whole process (every torch op then flushed subnormals).
CXX_FLAGS = ["-O3", "-fno-fast-math", "-fno-math-errno", "-ffp-contract=off"]
LINK_FLAGS = ["-fno-fast-math"]


def _flag(name):
    return os.getenv(name, "0") == "1"


def _source_hash() -> str:
    import importlib.util

    path = os.path.join(ROOT, "yoda_kernels", "_source_hash.py")
    spec = importlib.util.spec_from_file_location("_source_hash", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.source_hash(os.path.join(ROOT, "csrc"))


def _build_ext(base):
    """base (torch's BuildExtension) with a failed compile ending in one line that names the way around it."""

    class BuildExt(base):
        def run(self):
            try:
                super().run()
            except Exception as e:
                clang = "clang" in os.getenv("CXX", "") + os.getenv("CC", "")  # Debian's clang lacks omp.h
                raise SystemExit(f"error: building yoda's C++ extension failed ({type(e).__name__}: {e}; the "
                                 "compiler's output is above). " + ("With clang, 'omp.h' file not found means "
                                 "OpenMP's headers are missing (Debian: apt-get install libomp-dev), or build with "
                                 "GCC (CC=gcc CXX=g++). " if clang else "") + "YODA_NO_EXTENSION=1 installs without "
                                 "it (the pure-PyTorch reference then runs on the CPU); README.md, Quickstart.") from e

    return BuildExt


def _no_extension() -> bool:
    """An install without yoda_kernels._C: asked for, an sdist (compiles nothing, needs no torch), or Windows."""
    return _flag("YODA_NO_EXTENSION") or "sdist" in sys.argv or sys.platform == "win32"


def _import_torch():
    """torch, or an error saying how on: a --no-build-isolation build compiles against the installed torch."""
    try:
        import torch
    except ImportError:
        raise SystemExit("error: yoda's C++ kernels compile against torch, and this build sees none: install torch "
                         "first (pip install torch==2.13.0), or build without --no-build-isolation (pip then "
                         "brings it), or set YODA_NO_EXTENSION=1 (no kernels: the pure-PyTorch reference runs)") \
            from None
    return torch


def extensions():
    if _no_extension():
        if sys.platform == "win32" and not _flag("YODA_NO_EXTENSION"):
            print("yoda: the C++ kernels are not built on Windows (GCC / Clang sources); the pure-PyTorch "
                  "reference runs instead (README.md, Platforms)", file=sys.stderr)
        return [], {}
    torch = _import_torch()
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = not _flag("FORCE_ONLY_CPU") and torch.version.cuda is not None and CUDA_HOME is not None
    with_cuda = with_cuda and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++20 for torch >= 2.10);
    # forcing c++17 gives warnings in c10 headers and breaks with newer ones. -g0: Python's CFLAGS carry -g, 20 of
    # the library's 22 MB (YODA_DEBUG=1 keeps it).
    cxx = CXX_FLAGS + openmp + ([] if _flag("YODA_DEBUG") else ["-g0"])
    # the sources' fingerprint, compiled in (a number: no quoting through ninja's shell) and checked at import
    define_macros = [("YODA_SOURCE_HASH", f"0x{_source_hash()}ULL")]
    kwargs = dict(
        name="yoda_kernels._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=openmp + (LINK_FLAGS if sys.platform.startswith("linux") else []),  # (GCC's crtfastmath)
    )
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define_macros.append(("WITH_CUDA", None))
        nvcc = ["-O3", "--fmad=false", "-lineinfo"]
        ext = CUDAExtension(sources=sources, define_macros=define_macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=sources, define_macros=define_macros, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": _build_ext(BuildExtension.with_options(use_ninja=True))}


# scipy: eval's confidence intervals; pyyaml: SRDiff's configs. Floors (each checked: the suite at these versions):
# Pillow 11.1 (ExifTags.Base 9.3, TIFF orientation read once 10.1, big_tiff 11.1), scikit-image 0.23.1 and OpenCV
# 4.10.0.84 (the first built for numpy 2), safetensors 0.3.2 (SafetensorError; views saved), tqdm 4.66 (tqdm.auto;
# no deadlock at a bar's close, 4.50.1; TQDM_DISABLE)
REQUIRES = ["numpy", "pillow>=11.1", "scikit-image>=0.23.1", "scipy", "opencv-python-headless>=4.10.0.84",
            "safetensors>=0.3.2", "tqdm>=4.66", "pyyaml"]


def torch_requirement() -> str:
    """torch pinned to the release the kernels are compiled against (a different release's C++ ABI would not
    load them); any torch >= 2.4 when no extension is built."""
    if _no_extension():
        return "torch>=2.4"
    return "torch==" + _import_torch().__version__.split("+")[0]


ext_modules, cmdclass = extensions()
setup(
    install_requires=[torch_requirement()] + REQUIRES,
    packages=find_namespace_packages(include=["yoda", "yoda.*", "yoda_kernels", "yoda_kernels.*"],
                                     exclude=["*.__pycache__"]),  # namespace: the data folders (weights, configs)
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
