"""Feature extraction across processes and machines with torch.distributed (torchrun).

``torchrun --nproc_per_node=N precompute.py ...`` (and ``ood_eval.py``) starts N processes; each
calls ``setup`` which joins the process group from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT: NCCL with one GPU per process, gloo on CPU). Multi-node runs use
torchrun's usual rendezvous flags (--nnodes, --node_rank, --rdzv_endpoint); nothing here depends
on a shared file system.

Extraction (``gathered_rounds``, which ``util.features.FeatureExtractor`` writes from): the images
still to do, [done, n), are cut into batches of ``batch_size`` exactly as a single process would
(so every image sees the same batch and the features are bit-for-bit the same as a one-process
run); in round k, rank r forwards batch k * world + r. After each round ``all_gather`` brings
every rank's rows to every rank and rank 0 writes them, in dataset order, into the cache's
memory-mapped arrays, so progress.json still counts complete leading rows and an interrupted run
resumes (with any number of processes). Only rank 0 reads and writes the cache directory.
Everything computed from the features afterwards (class sums of the contributions, DICE's
mean, scores) runs on rank 0 from the ordered cache after ``leave()``; so results equal a
single-process run exactly rather than up to the summation order of a cross-rank reduction.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from util.data import BAD_IMAGE_LABEL
from util.errors import UserError


def launched() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True while this process is part of a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str | None) -> str | None:
    """Join torchrun's process group if launched with several processes; the device to use.

    CUDA (the default when available, or --device cuda): NCCL, device cuda:LOCAL_RANK. CPU: gloo.
    Without torchrun (or with one process) nothing happens and ``device`` is returned.
    """
    if not launched() or active():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise UserError(
                f"process with LOCAL_RANK {local_rank} has no GPU (this node has "
                f"{torch.cuda.device_count()}); use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    elif device is None:
        device = "cpu"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if is_main():
        print(
            f"distributed: {world_size()} processes, backend {dist.get_backend()}, device {device} on rank 0"
        )
    return device


def leave() -> bool:
    """End the parallel part: all ranks meet, the group is destroyed; True on rank 0 (which goes on)."""
    if not active():
        return True
    main = is_main()
    dist.barrier()
    dist.destroy_process_group()
    return main


def broadcast(obj):
    """``obj`` of rank 0 on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    dist.barrier()


def shard_batches(done: int, n: int, batch_size: int, world: int, r: int) -> list[tuple[int, int]]:
    """Rank r's batches [lo, hi) in round order: batch k*world + r of the batches cut from ``done``."""
    out = []
    for lo in range(done + r * batch_size, n, world * batch_size):
        out.append((lo, min(lo + batch_size, n)))
    return out


def gathered_rounds(
    forward, dataset, done: int, batch_size: int, num_workers: int, pin_memory: bool, dims, device
):
    """(start, h, z, y) of every round of images [done, n), in dataset order, on every rank.

    In round k rank r forwards batch k * world + r (``forward(images) -> (h, z, e)`` numpy arrays,
    e the flat layer statistics or None); ``all_gather`` brings every rank's rows to every rank.
    ``dims`` = (D, C, E). Ranks that have no batch left in the last round send padding that is cut
    off. Yields (start, h, z, y, e), e None when E = 0.
    """
    n = len(dataset)
    d, c, e = dims
    world, me = world_size(), rank()
    mine = shard_batches(done, n, batch_size, world, me)
    loader = DataLoader(
        Subset(dataset, [i for lo, hi in mine for i in range(lo, hi)]),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    comm = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    batches = iter(loader)
    for k in range(math.ceil((n - done) / (world * batch_size))):
        start = done + k * world * batch_size
        rows = torch.zeros(batch_size, d + c + e, dtype=torch.float32, device=comm)
        labels = torch.full((batch_size,), BAD_IMAGE_LABEL - 1, dtype=torch.int64, device=comm)
        if start + me * batch_size < n:
            images, targets = next(batches)
            h, z, extras = forward(images)
            m = len(h)
            parts = [h, z] if extras is None else [h, z, extras]
            rows[:m] = torch.from_numpy(np.concatenate(parts, axis=1)).to(comm)
            labels[:m] = targets.to(comm)
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_labels = [torch.empty_like(labels) for _ in range(world)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_labels, labels)
        stop = min(start + world * batch_size, n)
        block = torch.cat(all_rows).cpu().numpy()[: stop - start]
        y = torch.cat(all_labels).cpu().numpy()[: stop - start]
        yield start, block[:, :d], block[:, d : d + c], y, (block[:, d + c :] if e else None)
