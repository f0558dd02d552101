"""Several processes under `torchrun`: who this process is, and the few collectives the library needs.

torchrun (torch.distributed.run) starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK;
`start` joins them into one process group (nccl on CUDA, gloo on CPU). Without torchrun the world
is one process and every function here is a no-op, so the single-process path is the same code.

torchrun also stops every process when one fails, and reports that failure: a rank waiting in a
collective for a dead peer is killed, not left hanging.
"""

from __future__ import annotations

import atexit
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator

import numpy as np

from kdcompress.core.errors import KdcError
from kdcompress.core.world import World, launched

# How long a collective may wait for its peers. Long on purpose: at the end of a distributed sweep the ranks
# that finish first wait for the others' last trainings. A failed rank never makes them wait this long:
# torchrun stops the whole group as soon as one process exits with an error.
WAIT = timedelta(hours=12)
PEER_FAILED = 3  # exit code of a process stopped because another one failed (that one exits 1 with the cause)


def start(device: str) -> World:
    """Join the process group torchrun set up (once per process): nccl on CUDA, gloo on CPU."""
    import torch
    import torch.distributed as dist

    world = launched()
    if world.size == 1 or dist.is_initialized():
        return world
    if device == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise KdcError(
                f"torchrun started {world.local_size} processes on this machine but torch sees {torch.cuda.device_count()} "
                f"GPU(s): start at most one process per GPU (--nproc-per-node {torch.cuda.device_count()})"
            )
        torch.cuda.set_device(world.local_rank)  # "cuda" now means this process's own GPU
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=WAIT)
    atexit.register(stop)
    return world


def stop() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several in a joined process group."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank gets here."""
    import torch.distributed as dist

    if active():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's value, on every rank (any picklable object)."""
    import torch.distributed as dist

    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: Any, device: str) -> Any:
    """Give every rank rank 0's weights and buffers for module (the same architecture on every rank).

    The module moves to device first: nccl (CUDA) broadcasts GPU tensors only.
    """
    import torch
    import torch.distributed as dist

    if active():
        module.to(device)
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)
    return module


def broadcast_buffers(module: Any) -> Any:
    """Give every rank rank 0's buffers for module (BatchNorm statistics, which each rank's last forward moved)."""
    import torch.distributed as dist

    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)
    return module


def shard(count: int, rank: int, size: int) -> slice:
    """The contiguous share of count items that rank takes (the first count % size ranks take one more)."""
    base, extra = divmod(count, size)
    begin = rank * base + min(rank, extra)
    return slice(begin, begin + base + (1 if rank < extra else 0))


def gather_rows(part: np.ndarray) -> np.ndarray:
    """Every rank's rows, concatenated in rank order, on every rank (the inverse of `shard`)."""
    import torch.distributed as dist

    if not active():
        return part
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return np.concatenate(parts)


@contextmanager
def data_parallel(objective: Any, device: str) -> Iterator[None]:
    """Train objective's trainable part (student and projection) with DistributedDataParallel over all ranks.

    The teacher stays outside DDP, as in timm's distillation task (`prepare_distributed`): it is frozen and
    runs on every rank. On CUDA, BatchNorm layers are synchronised across ranks (timm's
    convert_sync_batchnorm) and turned back into plain ones afterwards; torch's SyncBatchNorm runs on GPUs
    only, so on CPU each rank normalises over its own share of the batch. Either way DDP broadcasts rank
    0's BatchNorm buffers before every step, and `fit` once more before each validation, so all ranks
    evaluate and keep the same weights and statistics.
    """
    if not active():
        yield
        return
    import torch
    from timm.layers import convert_sync_batchnorm
    from torch.nn.parallel import DistributedDataParallel

    trainable = objective.trainable
    if device == "cuda":
        trainable = convert_sync_batchnorm(trainable)
    wrapped = DistributedDataParallel(trainable, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)
    objective.distribute(wrapped)
    try:
        yield
    finally:
        objective.distribute(None)
        if device == "cuda":
            revert_sync_batchnorm(trainable)


def revert_sync_batchnorm(module: Any) -> Any:
    """Replace every SyncBatchNorm (and timm's SyncBatchNormAct) in module by the plain layer, sharing its tensors.

    A synchronised layer waits for the other ranks in training mode and does not export to ONNX; after
    training the student must be an ordinary network again.
    """
    import torch.nn as nn
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            plain: Any = (BatchNormAct2d if isinstance(child, SyncBatchNormAct) else nn.BatchNorm2d)(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if isinstance(child, SyncBatchNormAct):
                plain.act, plain.drop = child.act, child.drop
            if child.affine:
                plain.weight, plain.bias = child.weight, child.bias
            plain.running_mean, plain.running_var = child.running_mean, child.running_var
            plain.num_batches_tracked = child.num_batches_tracked
            plain.train(child.training)
            setattr(module, name, plain)
        else:
            revert_sync_batchnorm(child)
    return module


def lost_peer(exc: BaseException) -> bool:
    """Whether exc is a collective failing because another process is gone (that process reports the cause)."""
    import torch.distributed as dist

    if launched().size == 1:
        return False
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")
    )


