"""Process-group set-up for ``torchrun`` and the few collectives the engine needs.

A run started by ``torchrun --nproc_per_node=K`` (one or several nodes) sees ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in its environment; everything here is a no-op in a plain process.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` picks ``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        atexit.register(_close_process_group)
    return info


def end_distributed_process(code: int) -> None:
    """End a successful run of a process in a torchrun group: wait for every rank, leave the
    group and exit with ``code`` at once; return (doing nothing) in a plain process.

    Call it last, on every rank, with nothing left to write. The exit skips the interpreter's
    finalization on purpose: gloo's worker threads free a finished collective's tensors after
    the caller has been told it is done, freeing a tensor that Python has seen takes the GIL,
    and a thread that asks for the GIL while the interpreter finalizes aborts the process
    ("terminate called without an active exception"; about one two-rank run in fifteen on
    2 CPU cores, with or without a final barrier, as a gloo barrier holds the collectives
    queued before it). Standard streams are flushed first.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _close_process_group() -> None:
    """The exit-time fallback, for runs that stop on an error: leave without a barrier (the
    other ranks may be inside a different collective, and a barrier would wait forever)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def current_info() -> DistInfo:
    """The process group this process belongs to (a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """``obj`` of every rank in rank order (picklable objects); ``[obj]`` in a plain process.

    Every rank must call it, the same number of times.
    """
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def main_first(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its (picklable) result on every rank.

    The other ranks wait for it. An exception on rank 0 is re-raised there and raised on the other
    ranks as a ``RuntimeError`` naming it, so that no rank waits forever.
    """
    if not info.enabled:
        return fn()
    if info.is_main:
        try:
            value = fn()
        except Exception as err:
            dist.broadcast_object_list([(False, f"{type(err).__name__}: {err}")], src=0)
            raise
        dist.broadcast_object_list([(True, value)], src=0)
        return value
    outcome: list[Any] = [None]
    dist.broadcast_object_list(outcome, src=0)
    ok, value = outcome[0]
    if not ok:
        raise RuntimeError(f"rank 0 failed, so rank {info.rank} stops too: {value}")
    return value


def gather_across_ranks(rows: Tensor) -> Tensor:
    """Concatenate ``rows`` ``(n_r, ...)`` from every rank in rank order; identity without a group.

    Ranks may hold different numbers of rows. Uses ``torch.distributed.all_gather`` (every rank
    must call it), so ``rows`` must be on the device the process group's backend expects.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    world = dist.get_world_size()
    size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:count] for g, count in zip(gathered, counts, strict=True)])
