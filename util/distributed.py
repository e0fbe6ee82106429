"""Feature extraction across processes and machines with torch.distributed (torchrun).

``torchrun --nproc_per_node=N precompute.py ...`` (and ``ood_eval.py``) starts N processes; each
calls ``setup`` which joins the process group from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT: NCCL with one GPU per process, gloo on CPU). Multi-node runs use
torchrun's usual rendezvous flags (--nnodes, --node_rank, --rdzv_endpoint); nothing here depends
on a shared file system.

Extraction (``extract_sharded``): the images still to do, [done, n), are cut into batches of
``batch_size`` exactly as a single process would (so every image sees the same batch and the
features are bit-for-bit the same as a one-process run); in round k, rank r forwards batch
k * world + r. After each round ``all_gather`` brings every rank's rows to every rank and rank 0
writes them, in dataset order, into the cache's memory-mapped arrays, so progress.json still
counts complete leading rows and an interrupted run resumes (with any number of processes).
Only rank 0 reads and writes the cache directory. Everything computed from the features
afterwards (class sums of the contributions, DICE's mean, scores) runs on rank 0 from the
ordered cache after ``leave()``; so results equal a single-process run exactly rather than up
to the summation order of a cross-rank reduction.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from util.data import BAD_IMAGE_LABEL, image_path
from util.errors import UserError
from util.io import atomic_write_json


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


def shard_batches(done: int, n: int, batch_size: int, world: int, r: int) -> list[tuple[int, int]]:
    """Rank r's batches [lo, hi) in round order: batch k*world + r of the batches cut from ``done``."""
    out = []
    for lo in range(done + r * batch_size, n, world * batch_size):
        out.append((lo, min(lo + batch_size, n)))
    return out


def extract_sharded(extractor, dataset, tag: str):
    """``FeatureExtractor.extract`` split over the ranks; the FeatureSet on rank 0, None elsewhere."""
    entry = extractor.entry_path(dataset, tag)
    key = extractor.cache_key(dataset)
    problem = extractor._check_entry(entry, key, len(dataset)) if is_main() else None
    problem = broadcast(problem)
    if problem is not None:
        if is_main() and entry.exists():
            print(f"cache entry {entry} {problem}; recomputing it")
            shutil.rmtree(entry)
        _fill_sharded(extractor, dataset, entry, key)
        from_cache = False
    else:
        from_cache = True
    if not is_main():
        return None
    return extractor._drop_bad_images(extractor._load(entry, from_cache=from_cache), dataset, tag)


def _open_partial(extractor, partial: Path, key: dict, n: int, d: int, c: int):
    """Rank 0: the memory-mapped arrays of ``partial`` and how many leading rows are complete."""
    return extractor.open_partial(partial, key, n, partial.name)


def _fill_sharded(extractor, dataset, entry: Path, key: dict) -> None:
    partial = entry.with_name(entry.name + ".partial")
    n, d, c = len(dataset), extractor.fc.in_features, extractor.fc.out_features
    world, me, main = world_size(), rank(), is_main()
    # Rank 0 owns the cache; a failure there (disk space, ...) must stop every rank.
    arrays, done, error = None, 0, None
    if main:
        try:
            arrays, done = _open_partial(extractor, partial, key, n, d, c)
        except UserError as exc:
            error = str(exc)
    done, error = broadcast((done, error))
    if error is not None:
        raise UserError(error)

    bsz = extractor.batch_size
    mine = shard_batches(done, n, bsz, world, me)
    indices = [i for lo, hi in mine for i in range(lo, hi)]
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=bsz,
        shuffle=False,
        num_workers=extractor.num_workers,
        pin_memory=extractor.device.type == "cuda",
    )
    comm = torch.device(extractor.device) if dist.get_backend() == "nccl" else torch.device("cpu")
    rounds = math.ceil((n - done) / (world * bsz))
    bar = tqdm(
        total=n,
        initial=done,
        desc=f"features {entry.name}",
        unit="img",
        disable=not (main and extractor.progress),
    )
    last_save = time.monotonic()
    batches = iter(loader)
    complete = done  # leading rows written by rank 0
    try:
        with torch.inference_mode():
            for k in range(rounds):
                start = done + k * world * bsz
                rows = torch.zeros(bsz, d + c, dtype=torch.float32, device=comm)
                labels = torch.full((bsz,), BAD_IMAGE_LABEL - 1, dtype=torch.int64, device=comm)
                lo = start + me * bsz
                if lo < n:
                    images, targets = next(batches)
                    h, z = extractor.forward(images)
                    m = len(h)
                    rows[:m] = torch.from_numpy(np.concatenate([h, z], axis=1)).to(comm)
                    labels[:m] = targets.to(comm)
                    extractor.images_forwarded += m
                all_rows = [torch.empty_like(rows) for _ in range(world)]
                all_labels = [torch.empty_like(labels) for _ in range(world)]
                dist.all_gather(all_rows, rows)
                dist.all_gather(all_labels, labels)
                stop = min(start + world * bsz, n)
                y = torch.cat(all_labels).cpu().numpy()[: stop - start]
                bad = np.flatnonzero(y == BAD_IMAGE_LABEL)
                if len(bad) and not extractor.skip_bad_images:  # every rank sees it and stops
                    from util.features import bad_image_message

                    raise UserError(bad_image_message([image_path(dataset, start + int(i)) for i in bad], n))
                if main:
                    block = torch.cat(all_rows).cpu().numpy()[: stop - start]
                    arrays[0][start:stop] = block[:, :d]
                    arrays[1][start:stop] = block[:, d:]
                    arrays[2][start:stop] = y
                    bar.update(stop - start)
                    if time.monotonic() - last_save >= extractor.progress_seconds:
                        extractor._save_progress(partial, arrays, key, n, stop)
                        last_save = time.monotonic()
                complete = stop
    except (KeyboardInterrupt, UserError):
        if main:
            bar.close()
            extractor._save_progress(partial, arrays, key, n, complete)
        raise
    bar.close()
    if main:
        for a in arrays:
            a.flush()
        del arrays
        atomic_write_json(partial / "meta.json", {**key, "n": n, "feature_dim": d, "classes": c})
        (partial / "progress.json").unlink()
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(partial, entry)
    dist.barrier()
