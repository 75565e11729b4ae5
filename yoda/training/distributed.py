"""Data-parallel training under torchrun: the ranks, the process group, the rank's share of the global batch.

    torchrun --nproc_per_node N -m yoda train --config CFG.json

Every rank holds the whole run's state: the model, AdamW, the EMA and the one CPU torch.Generator that draws the
crops, flips, steps and noise. Each step, every rank draws the *global* batch (config ``batch``) from that
generator in the order a single process draws it, and keeps its own share: rank r of N takes the samples
r*B/N .. (r+1)*B/N - 1 (Ranks.shard). DistributedDataParallel averages the ranks' gradients, which is the
gradient of the global batch's mean loss (the masked loss divides by the global count of active values, see
diffusion_loss's ``reduce_count``), so grad clipping (of the averaged gradient's global norm), AdamW, the
learning-rate warm-up and the EMA see what one process sees, up to float summation order. The generator, and
hence the checkpoint, is the same on every rank and does not depend on N: a run saved with N ranks resumes
with any number that divides the batch, one process included. Only rank 0 writes files (atomically).

Backend: gloo on the CPU, nccl on GPUs (rank r on cuda:LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Optional

import torch

from ..torchrun import JOIN_NOTE, dist_env, env_int, meeting_store, wait_for_keys


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run: rank, world size and LOCAL_RANK (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world or self.local_rank < 0:
            raise ValueError(f"bad ranks: rank {self.rank}, world size {self.world}, local rank {self.local_rank}")

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates and writes the checkpoint, the log and the weights."""
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """The indices of this rank's samples in a global batch of ``batch``: r*b .. (r+1)*b - 1, b = batch / world."""
        b = local_batch(batch, self.world)
        return slice(self.rank * b, (self.rank + 1) * b)


def local_batch(batch: int, world: int) -> int:
    """Samples per rank; the global batch must split evenly over the ranks (ValueError otherwise)."""
    if batch % world:  # a resumed run keeps its batch: the rank counts that divide it are the way on
        fits = ", ".join(str(n) for n in range(1, batch + 1) if batch % n == 0)
        raise ValueError(f"the global batch ({batch}, config 'batch') is not divisible by the {world} processes: "
                         f"each rank must take the same number of samples; run on a number of processes that divides "
                         f"it ({fits}), or (for a new run) use a batch that is a multiple of {world}")
    return batch // world


def env_ranks() -> Ranks:
    """The Ranks torchrun puts in the environment (RANK, WORLD_SIZE, LOCAL_RANK); Ranks() without them."""
    rank, world = dist_env()
    return Ranks(rank, world, env_int("LOCAL_RANK", 0))


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device):
    """The torch.distributed process group of a run with ranks.world > 1 (env:// from torchrun; gloo on the CPU,
    nccl on CUDA), destroyed on exit; nothing for a single process. A group that already exists (the caller's
    own) is used as it is and left for the caller to destroy."""
    if ranks.world == 1:
        yield
        return
    import torch.distributed as dist

    if dist.is_initialized():
        check_group(ranks)
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # the ranks meet in the store first, waiting in Python: rank 0 waited in init_process_group's C++ for ranks that
    # never came (30 minutes), where neither Ctrl-C nor SIGTERM ended it
    store, _ = meeting_store(ranks.rank, ranks.world, "yoda-train")
    store.set(f"here/{ranks.rank}", "1")
    wait_for_keys(store, [f"here/{r}" for r in range(ranks.world)], ranks.rank, JOIN_NOTE)
    store.set_timeout(datetime.timedelta(minutes=30))  # torch's own for a process group (meeting_store's: 5)
    dist.init_process_group("nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo",  # Windows: no
                            store=dist.PrefixStore("group", store), rank=ranks.rank, world_size=ranks.world)
    try:
        if dist.get_world_size() != ranks.world or dist.get_rank() != ranks.rank:
            raise ValueError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) is not the "
                             f"environment's (rank {ranks.rank} of {ranks.world})")
        yield
    finally:
        dist.destroy_process_group()


def check_group(ranks: Ranks) -> None:
    """A Trainer with ranks.world > 1 needs the matching process group (process_group)."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"training on {ranks.world} ranks needs a torch.distributed process group "
                         "(run under torchrun: yoda.training.train_main sets it up)")
    if dist.get_world_size() != ranks.world or dist.get_rank() != ranks.rank:
        raise ValueError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                         f"the trainer's ranks (rank {ranks.rank} of {ranks.world})")


def all_reduce_sum(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of ``t`` over the ranks (a new tensor; ``t`` itself for a single process)."""
    if ranks.world == 1:
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def gather_to_main(obj, ranks: Ranks) -> Optional[list]:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the others. A collective: every rank
    calls it. One process: [obj]."""
    if ranks.world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * ranks.world if ranks.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(ranks: Ranks, device: torch.device) -> None:
    """Wait for every rank (an all-reduce on ``device``, which gloo and nccl both run); nothing for one process."""
    if ranks.world > 1:
        all_reduce_sum(torch.zeros(1, device=device), ranks)


class LossModule(torch.nn.Module):
    """The denoiser of the loss as one module, for DistributedDataParallel: forward(x_t, idx, sqrt_ab, lr, up)
    = make_denoiser(model, lr, up, cfg)(x_t, idx, sqrt_ab). SRDiff's RRDB features are computed inside, so that
    the whole graph of the step runs in DDP's forward."""

    def __init__(self, model: torch.nn.Module, loss_cfg):
        super().__init__()
        self.model, self.loss_cfg = model, loss_cfg

    def forward(self, x_t, idx, sqrt_ab, lr_img, up):
        from .glue import make_denoiser

        return make_denoiser(self.model, lr_img, up, self.loss_cfg)(x_t, idx, sqrt_ab)


def wrap_ddp(model: torch.nn.Module, loss_cfg, device: torch.device):
    """DistributedDataParallel over LossModule(model). static_graph: every step runs the same graph, and the
    parameters the loss never uses (SRDiff's RRDB upsampling tail) keep grad None, as in one process."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(model, loss_cfg), device_ids=ids, static_graph=True)
