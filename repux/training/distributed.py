"""Distributed data parallel for training, through ``torchrun`` (gloo on CPU, NCCL on GPU).

Rank 0 validates, checkpoints, exports and reports progress; every rank trains on
its own crops (seeded by rank) and the gradients are averaged by
:class:`torch.nn.parallel.DistributedDataParallel`.  At the end every rank's
weights are checksummed and compared (:func:`ranks_agree`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os

import torch
from torch import nn

__all__ = ["Distributed", "ranks_agree", "weights_digest"]

logger = logging.getLogger("repux.training.trainer")


class Distributed:
    """The process group of a ``torchrun`` launch (a no-op object when run alone)."""

    def __init__(self, device_type: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=30))
            logger.info("distributed training: rank %d of %d (%s)", self.rank, self.world, backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def sync_buffers(self, net: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over ranks."""
        if not self.enabled:
            return
        for b in net.buffers():
            if b.is_floating_point():
                torch.distributed.all_reduce(b.data, op=torch.distributed.ReduceOp.SUM)
                b.data /= self.world

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def weights_digest(net: nn.Module) -> torch.Tensor:
    """Order-dependent float64 checksum of all parameters and buffers."""
    total = torch.zeros(2, dtype=torch.float64)
    for i, t in enumerate(net.state_dict().values()):
        v = t.detach().double().cpu().flatten()
        if v.numel():
            total[0] += v.sum() * (i + 1)
            total[1] += (v * torch.linspace(0.5, 1.5, v.numel(), dtype=torch.float64)).sum()
    return total


def ranks_agree(net: nn.Module) -> bool:
    mine = weights_digest(net)
    if torch.distributed.get_backend() == "nccl":
        mine = mine.to(next(net.parameters()).device)
    gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return all(torch.equal(g, gathered[0]) for g in gathered)
