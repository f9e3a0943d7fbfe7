"""torchrun / DistributedDataParallel plumbing: who am I, and agreeing across processes."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    Uses NCCL on CUDA and gloo on CPU. Returns rank 0 of 1 when not under torchrun.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return info


def device_for(requested: str | None, info: DistInfo) -> str:
    if requested:
        if requested == "cuda" and info.enabled:
            return f"cuda:{info.local_rank}"
        return requested
    if torch.cuda.is_available():
        return f"cuda:{info.local_rank}" if info.enabled else "cuda"
    return "cpu"


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
