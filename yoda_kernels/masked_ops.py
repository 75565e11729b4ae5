"""MaskedOps: yoda_kernels.masked_step / masked_combine for a loop of steps, with what the loop keeps fixed checked
once (the sampler's host time a step; benchmarks/RESULTS.md). Each result is the public op's, bit for bit."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from . import philox
from .contract import MAX_HISTORY, NUM_COEFS, NUM_COMBINE_COEFS
from .checks import check_call, check_clip, check_history, check_state, traced
from .ops import Backend, TileStats, _check_fixed, _check_no_grad, _impl, _made_of, masked_combine, masked_step


class MaskedOps:
    """:func:`masked_step` and :func:`masked_combine` for a loop of steps over one LR state ``c`` (B, C, H, W) and
    attention ``A`` (None: every pixel active)::

        ops = MaskedOps(c, A, tile=16, stats=None, seed=0, backend="auto")   # stats: tile_stats(A, tile) if None
        x = ops.step(x, model_out, tau, coefs=k, step=i + 1)                 # or ops.combine(x, [d0, ...], ...)

    What the loop keeps fixed (c, A, its tile statistics, tile, seed, backend) is checked once, here; each call
    checks what changes (tau, coefs, step, noise) and that its tensors have c's shape, dtype and device. A call
    whose tensors fail that test goes through the full entry point: the same result, or the same error naming the
    argument. Each result is masked_step's / masked_combine's with the same arguments, bit for bit; A changed in
    place after construction is refused (its tile statistics are made once, here; TileStats says which writes
    torch does not count)."""

    def __init__(self, c: torch.Tensor, A: Optional[torch.Tensor] = None, *, tile: int = 16,
                 stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None, seed: int = 0,
                 backend: Union[str, Backend] = "auto"):
        philox.check_seed_step(seed, 0)
        A, tile, name, self._tmax, self._tmin = _check_fixed(c, c, A, tile, stats, backend, ref="c")
        self.c, self.A, self.tile, self.seed = c, A, tile, int(seed)
        self.backend = Backend(name, c.device.type)
        self._stats = None if A is None else _made_of(TileStats(self._tmax, self._tmin), A, tile)
        self._version = None if A is None or A.is_inference() else A._version

    @property
    def stats(self) -> Optional[TileStats]:
        """A's tile statistics (None without A), made or checked once at construction."""
        return self._stats

    def _same_A(self) -> bool:
        """A not changed in place since construction, as far as torch counts (TileStats); not looked at where
        torch.compile traces (a tensor's _version does not trace: fullgraph=True failed on it)."""
        return self._version is None or traced() or self.A._version == self._version

    def _refuse_changed_A(self) -> None:
        """A changed in place since construction: said of this object (masked_step's own error told its caller to
        call tile_stats again, which a MaskedOps user never did)."""
        if not self._same_A():
            raise ValueError("stats were made of another A, or of this A before it changed in place: A changed "
                             "since this MaskedOps was made; make a new MaskedOps(c, A, ...) of it")

    def _fits(self, *tensors: torch.Tensor) -> bool:
        c = self.c
        return all(isinstance(t, torch.Tensor) and t.shape == c.shape and t.dtype == c.dtype and t.device == c.device
                   and t.layout == torch.strided for t in tensors)  # (a sparse x reached the dispatcher)

    def step(self, x: torch.Tensor, model_out: torch.Tensor, tau: float = 0.0, *, coefs: Sequence[float],
             step: int = 0, clip: bool = False, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """masked_step(x, model_out, c, A, tau, coefs=coefs, clip=clip, seed=, step=step, noise=noise, tile=,
        stats=, backend=) with this object's c, A, seed, tile, stats and backend."""
        if not (self._fits(x, model_out) and self._same_A()):
            self._refuse_changed_A()
            check_state("x", x, self.c, "this MaskedOps' c")  # x is the caller's: said of x, not of the fixed c
            return masked_step(x, model_out, self.c, self.A, tau, coefs=coefs, clip=clip, seed=self.seed, step=step,
                               noise=noise, tile=self.tile, stats=self.stats, backend=self.backend)
        tau, coefs = check_call(x, self.A, tau, coefs, NUM_COEFS, self.seed, step, noise)
        _check_no_grad("masked_step", self.backend.name, x, model_out, self.c, self.A, noise)
        return _impl("masked_step", self.backend.name, x)(
            x, model_out, self.c, self.A, self._tmax, self._tmin, tau, coefs, check_clip(clip), self.seed, int(step),
            noise, self.tile
        )

    def combine(self, x: torch.Tensor, denoised: Sequence[torch.Tensor], tau: float = 0.0, *, coefs: Sequence[float],
                step: int = 0, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """masked_combine(x, denoised, c, A, tau, coefs=coefs, seed=, step=step, noise=noise, tile=, stats=,
        backend=) with this object's c, A, seed, tile, stats and backend."""
        if not (isinstance(denoised, (list, tuple)) and 1 <= len(denoised) <= MAX_HISTORY
                and self._fits(x, *denoised) and self._same_A()):
            self._refuse_changed_A()
            check_state("x", x, self.c, "this MaskedOps' c")
            return masked_combine(x, denoised, self.c, self.A, tau, coefs=coefs, seed=self.seed, step=step,
                                  noise=noise, tile=self.tile, stats=self.stats, backend=self.backend)
        tau, coefs = check_call(x, self.A, tau, coefs, NUM_COMBINE_COEFS, self.seed, step, noise)
        d = check_history(denoised, coefs)
        _check_no_grad("masked_combine", self.backend.name, x, *d, self.c, self.A, noise)
        return _impl("masked_combine", self.backend.name, x)(
            x, d[0], d[1], d[2], self.c, self.A, self._tmax, self._tmin, tau, coefs, self.seed, int(step), noise,
            self.tile
        )
