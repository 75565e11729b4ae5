"""Sampling: ``yoda.sample`` and its parts, in the order a call runs them.

    spec.py     validate the arguments into a frozen SamplingSpec (the backend of the fused ops resolved once)
    solvers.py  the sigma-space solvers (euler ... dpmpp_3m_sde): sigmas, sigma <-> t, per-step coefficient plans
    prepare.py  prepare the run: c and cond, the attention map and its tile stats, noise, denoiser windows
    tiles.py    denoising in overlapping windows (``windows=``)
    speed.py    compile / autocast / channels_last / cuda_graphs of the denoiser's network (a copy of the adapter)
    loop.py     sample(): the loop, and the NaN/Inf checks
"""

from .loop import FINITE_EVERY, sample
from .spec import SamplingSpec, make_spec

__all__ = ["FINITE_EVERY", "SamplingSpec", "make_spec", "sample"]
