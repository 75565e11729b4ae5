"""yoda: You Only Diffuse Areas -- attention-guided diffusion super-resolution.

    import yoda
    sr = yoda.sample(model, lr, attention="edge")      # lr: (B, 3, h, w) in [-1, 1]
    net = yoda.load("yoda", "model.safetensors")       # with its ModelCard: yoda.sample(net, lr) needs nothing else

Where things live: sampling/ (the sampler loop), training/ (loss, trainer), models/ (networks, their loaders,
the ModelCard), attention/, figures/; yoda_kernels.contract is the kernel contract (README, "Layout").
Submodules are imported on first use so that ``import yoda`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    # name -> (module, attribute or None for the module itself)
    "sample": ("yoda.sampling", "sample"),
    "Schedule": ("yoda.schedule", "Schedule"),
    "mask_at": ("yoda.masks", "mask_at"),
    "tau_at": ("yoda.masks", "tau_at"),
    "pixel_update_ratio": ("yoda.masks", "pixel_update_ratio"),
    "active_fraction": ("yoda.masks", "active_fraction"),
    "load": ("yoda.models.loading", "load"),
    "save_model": ("yoda.models.yoda_format", "save_model"),
    "to_uint8": ("yoda.images", "to_uint8"),
    "from_uint8": ("yoda.images", "from_uint8"),
    "load_image": ("yoda.images", "load_image"),
    "save_image": ("yoda.images", "save_image"),
    "read_exif": ("yoda.exif", "read_exif"),
    "read_xmp": ("yoda.xmp", "read_xmp"),
    "attention": ("yoda.attention", None),
    "adapters": ("yoda.adapters", None),
    "models": ("yoda.models", None),
    "training": ("yoda.training", None),
    "ModelCard": ("yoda.models.card", "ModelCard"),
    "UserError": ("yoda.errors", "UserError"),
    "UnrefinedWarning": ("yoda.errors", "UnrefinedWarning"),
    "sampling": ("yoda.sampling", None),
    # the modules the README names by their dotted path (yoda.images.MAX_PIXELS, yoda.schedule.MAX_FILE_T ...)
    "images": ("yoda.images", None),
    "schedule": ("yoda.schedule", None),
    "masks": ("yoda.masks", None),
    "upsampling": ("yoda.upsampling", None),
    "data": ("yoda.data", None),
    "evaluate": ("yoda.evaluate", None),
    "figures": ("yoda.figures", None),
    "cli_upscale": ("yoda.cli_upscale", None),
    "malloc": ("yoda.malloc", None),
    "photos": ("yoda.photos", None),
    "heldout": ("yoda.heldout", None),
    "devices": ("yoda.devices", None),
    "errors": ("yoda.errors", None),
}
__all__ = sorted(_LAZY)  # `from yoda import *` loads them (and torch) as attribute access does


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'yoda' has no attribute {name!r}")
    module, attr = _LAZY[name]
    parts = module.split(".")
    # parents first, as `import yoda.models.card` would not: Python 3.11 locks a submodule before importing its
    # package, so two threads met here ("load" and "ModelCard") each held the lock the other awaited (a
    # _DeadlockError or a partly initialised module)
    for i in range(2, len(parts) + 1):
        mod = importlib.import_module(".".join(parts[:i]))
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    # the public names once each (a loaded one is also in globals()), not this module's own imports
    return sorted({n for n in globals() if not n.startswith("_") and n not in ("annotations", "importlib")}
                  | set(_LAZY) | {"__version__"})
