"""Diffusion SR models that plug into the YODA sampler (DESIGN.md §6).

- :class:`SR3UNet` (pixel space; Janspiry's SR3 UNet, upstream state-dict keys) + :class:`SR3Adapter`
- :class:`SRDiff` (residual space; LeiaLi/SRDiff UNet + RRDB encoder, upstream keys) + :class:`SRDiffAdapter`
- :class:`LatentAdapter` / :func:`from_diffusers` (latent space, DiffBIR/ControlLDM-style)

Every model has ``yoda_adapter(**kw)``; checkpoints load with :func:`yoda.load`.
"""

from .latent import LatentAdapter, LatentCond, from_diffusers, schedule_from_diffusers
from .sr3 import SR3Adapter, SR3Config, SR3UNet, load_sr3_config, sr3_beta_schedule
from .srdiff import SRDiff, SRDiffAdapter, SRDiffConfig, load_srdiff_config, srdiff_beta_schedule

__all__ = [
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
    "schedule_from_diffusers",
]
