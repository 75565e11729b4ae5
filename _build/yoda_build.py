"""PEP 517 backend of yoda: setuptools, plus the torch that the extension must be compiled against.

`pip install -e .` builds in an isolated environment that has only what the build asks for. The compiled
kernels must match the torch they will run with, so the build asks for exactly that torch:
- the version already installed in the target environment, if there is one (a user's own CUDA build keeps
  its version; with a non-PyPI build such as a nightly use `--no-build-isolation` instead);
- otherwise DEFAULT_TORCH, the version this project is tested with.
setup.py then pins the runtime dependency to the torch it was built with (``torch==<that version>``), so the
runtime resolver cannot pick another release. YODA_BUILD_TORCH=<requirement> overrides the choice.
"""

import glob
import os
import sys
import sysconfig

from setuptools.build_meta import *  # noqa: F401,F403  (the hooks this module does not override)

DEFAULT_TORCH = "torch==2.13.0"


def _target_torch() -> str:
    if os.environ.get("YODA_BUILD_TORCH"):
        return os.environ["YODA_BUILD_TORCH"]
    if os.environ.get("YODA_NO_EXTENSION") == "1" or sys.platform == "win32":  # setup.py builds nothing there
        return ""
    # pip hides the target environment's site-packages from the build, but the interpreter (and so its
    # install scheme) is the target's: read the installed torch's version from its dist-info folder name
    for key in ("purelib", "platlib"):
        for d in glob.glob(os.path.join(sysconfig.get_paths()[key], "torch-*.dist-info")):
            version = os.path.basename(d)[len("torch-"):-len(".dist-info")].split("+")[0]
            return f"torch=={version}"
    return DEFAULT_TORCH


def _requires():
    # not setuptools' own get_requires_*: it runs setup.py, which imports torch before torch is there
    torch = _target_torch()
    return ["setuptools>=77"] + ([torch, "ninja"] if torch else [])


def get_requires_for_build_wheel(config_settings=None):
    return _requires()


def get_requires_for_build_editable(config_settings=None):
    return _requires()


def get_requires_for_build_sdist(config_settings=None):
    return ["setuptools>=77"]  # an sdist compiles nothing
