"""Diffusion SR models that plug into the YODA sampler (DESIGN.md §6).

- :class:`SR3UNet` (pixel space; Janspiry's SR3 UNet, upstream state-dict keys) + :class:`SR3Adapter`
- :class:`SRDiff` (residual space; LeiaLi/SRDiff UNet + RRDB encoder, upstream keys) + :class:`SRDiffAdapter`
- :class:`LatentAdapter` / :func:`from_diffusers` (latent space, DiffBIR/ControlLDM-style)
- :class:`DiffBIRAdapter` (latent space, over DiffBIR's own ControlLDM and Diffusion, v1 / v2 / v2.1)
- :class:`SDUpscalerAdapter` (latent space, the Stable Diffusion x4 upscaler's diffusers modules)
- :class:`LDMSRAdapter` (latent space, LDM-SR's diffusers modules: LDMSuperResolutionPipeline's UNet and VQ model)

Every model has ``yoda_adapter(**kw)`` and a ``card`` (:class:`ModelCard`: schedule, scale, prediction, space)
that the adapter samples with. Loaders live next to their models:

- ``sr3_load.py`` / ``srdiff_load.py``: the upstream checkpoints of SR3 and SRDiff, and their config files
- ``yoda_format.py``: the project's own model file (:func:`save_model`, :func:`load_yoda`)
- ``loading.py``: :func:`load`, the one entry point (``yoda.load``), which also reaches the DINO extractors

Reading files and checking state dicts is yoda.checkpoint.
"""

from .card import ModelCard
from .diffbir import DiffBIRAdapter, DiffBIRCond
from .latent import LatentAdapter, LatentCond, from_diffusers, schedule_from_diffusers
from .ldm_sr import LDMSRAdapter
from .sd_upscaler import SDUpscalerAdapter
from .sr3 import SR3Adapter, SR3Config, SR3UNet, sr3_beta_schedule
from .srdiff import SRDiff, SRDiffAdapter, SRDiffConfig, srdiff_beta_schedule
from .sr3_load import load_sr3_config
from .srdiff_load import load_srdiff_config
from .loading import KINDS, load
from .yoda_format import save_model

__all__ = [
    "ModelCard",
    "load",
    "save_model",
    "KINDS",
    "SR3UNet",
    "SR3Config",
    "SR3Adapter",
    "load_sr3_config",
    "sr3_beta_schedule",
    "SRDiff",
    "SRDiffConfig",
    "SRDiffAdapter",
    "load_srdiff_config",
    "srdiff_beta_schedule",
    "LatentAdapter",
    "LatentCond",
    "from_diffusers",
    "SDUpscalerAdapter",
    "LDMSRAdapter",
    "schedule_from_diffusers",
    "DiffBIRAdapter",
    "DiffBIRCond",
]
