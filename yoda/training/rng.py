"""Torch's global generators as a trainer's own: dropout draws from them (yoda.training.trainer)."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch


class TorchRNG:
    """The states of torch's global generators (the CPU's and ``device``'s GPU's) that a trainer draws its dropout
    masks from, kept here between uses and put in place only inside :meth:`use`: Trainer() reseeded a notebook's
    generator, and the weights of a run with dropout depended on what the notebook drew between Trainer() and
    run(). The caller's generators are as they were after every use."""

    def __init__(self, device: torch.device):
        self.device = device
        self.inside = False  # whether torch's generators hold this state now (inside use())
        self.cpu: Optional[torch.Tensor] = None
        self.cuda: Optional[torch.Tensor] = None

    def _devices(self) -> list:
        return [self.device] if self.device.type == "cuda" else []

    @contextlib.contextmanager
    def seeded(self, seed: int):
        """Torch's generators seeded with ``seed`` inside (the caller's after); keep() inside takes that state."""
        with torch.random.fork_rng(devices=self._devices()):
            torch.random.default_generator.manual_seed(seed)  # torch.manual_seed would reseed every GPU too
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            yield

    def _now(self) -> tuple:
        """(torch's CPU generator state, this device's GPU state or None) as they are now."""
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def keep(self) -> None:
        """Take the generators' current states as this object's."""
        self.cpu, self.cuda = self._now()

    def reseed(self, seed: int) -> None:
        with self.seeded(seed):
            self.keep()

    def states(self) -> tuple:
        """(CPU state, this device's GPU state or None) as they are now: the generators' inside use(), else kept."""
        return self._now() if self.inside else (self.cpu, self.cuda)

    def set_states(self, cpu: Optional[torch.Tensor], cuda: Optional[torch.Tensor]) -> None:
        """Restore saved states (None: the one held is kept; a GPU state only on a GPU). A state that is no
        generator's (not bytes, or the CPU's of another size) is a ValueError here, not torch's at the next use."""
        for name, st in (("torch generator", cpu), ("CUDA generator", cuda)):
            if st is not None and (not isinstance(st, torch.Tensor) or st.dtype != torch.uint8 or
                                   (name == "torch generator" and st.numel() != torch.get_rng_state().numel())):
                raise ValueError(f"its {name} state is not one (RNG state must be a torch.ByteTensor of a generator)")
        if cpu is not None:
            self.cpu = cpu.cpu()
        if cuda is not None and self.device.type == "cuda":
            self.cuda = cuda.cpu()

    @contextlib.contextmanager
    def use(self):
        """Torch's generators hold this state inside and the caller's again after. Nested: as it is."""
        if self.inside:
            yield
            return
        with torch.random.fork_rng(devices=self._devices()):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            self.inside = True
            try:
                yield
            finally:
                self.inside = False
                self.keep()
