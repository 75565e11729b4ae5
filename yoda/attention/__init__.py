"""Attention maps from the LR image (DESIGN.md §3).

An extractor is a callable ``f(lr) -> A``: lr (B, 3, h, w) float in [-1, 1] (grey (B, 1, h, w) is
repeated to 3 channels), A (B, 1, h, w) float32 in [0, 1] at the LR resolution. The sampler resizes A.

    import yoda.attention as att
    A = att.edge(sigma=1.0)(lr)
    A = att.get("dino-vits8:/path/dino_deitsmall8_pretrain.pth")(lr)

Names understood by :func:`get` (the CLI passes these strings):
    edge, gaussian, sift, dino-vits8:PATH, dino-resnet50:PATH
"""

from __future__ import annotations

import os

from typing import Callable

from ..errors import broken_link
from .classic import Edge, Gaussian, Sift, aggregate, check_lr, edge, gaussian, minmax_normalize, sift
from .dino import DinoResNet50, DinoViT, DinoViTS8, ResNet50, dino_resnet50, dino_vits8, load_state_dict

__all__ = [
    "edge",
    "gaussian",
    "sift",
    "dino_vits8",
    "dino_resnet50",
    "get",
    "NAMES",
    "aggregate",
    "check_lr",
    "minmax_normalize",
    "load_state_dict",
    "attention_figure",
    "Edge",
    "Gaussian",
    "Sift",
    "DinoViTS8",
    "DinoResNet50",
    "DinoViT",
    "ResNet50",
]

# name -> (factory, whether "name:PATH" is required)
_FACTORIES = {
    "edge": (edge, False),
    "gaussian": (gaussian, False),
    "sift": (sift, False),
    "dino-vits8": (dino_vits8, True),
    "dino-resnet50": (dino_resnet50, True),
}
NAMES = ("edge", "gaussian", "sift", "dino-vits8:PATH", "dino-resnet50:PATH")


def get(name: str, **kw) -> Callable:
    """Resolve an extractor name to an extractor; ``kw`` go to its factory.

    "edge" | "gaussian" | "sift" | "dino-vits8:PATH" | "dino-resnet50:PATH" (PATH: a local
    checkpoint, .pth or .safetensors; ~ is expanded). Unknown names raise ValueError listing the known ones.
    """
    factory, path = check_name(name)
    return factory(**kw) if path is None else factory(path, **kw)


def check_name(name: str, file_exists: bool = False) -> tuple:
    """(factory, weights path or None) of an extractor name, checked as get() checks it, without building the
    extractor (no weights read): yoda.sample checks a name it does not use (lower_bound >= 1) this way, with
    ``file_exists`` (a missing weights file is refused here; get() leaves that to the loader, whose message says
    what the file should hold)."""
    if not isinstance(name, str):
        raise TypeError(f"attention name must be a str, one of {', '.join(NAMES)}; got {type(name).__name__}")
    base, sep, path = name.partition(":")
    key = base.strip().lower()
    if key not in _FACTORIES:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(NAMES)}")
    factory, needs_path = _FACTORIES[key]
    if needs_path:
        if not path:
            raise ValueError(f"attention {key!r} needs a local weights file: use '{key}:PATH'")
        path = os.path.expanduser(path)  # the shell leaves a ~ after the colon as it is
        if file_exists and not os.path.exists(path):
            raise FileNotFoundError(f"attention {name!r}: weights file not found: {path!r}{broken_link(path)}")
        return factory, path
    if sep:
        raise ValueError(f"attention {key!r} takes no ':PATH' part, got {name!r}")
    return factory, None


def __getattr__(name: str):
    # figure.py pulls in Pillow and yoda.masks; load it only when asked for
    if name == "attention_figure":
        from .figure import attention_figure

        return attention_figure
    raise AttributeError(f"module 'yoda.attention' has no attribute {name!r}")
