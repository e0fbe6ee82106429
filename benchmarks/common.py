"""Shared setup for the benchmarks: the DenseNet-101 checkpoint and CIFAR-10 images of ../shared."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("LINE_SHARED_DIR", REPO.parent / "shared"))
DATA_ROOT = SHARED / "data"
CHECKPOINT = SHARED / "checkpoints" / "CIFAR-10" / "densenet" / "checkpoint_100.pth.tar"


def cifar10_test_images(n: int):
    """``n`` CIFAR-10 test images (JPEG files) spread over all classes, as a cacheable dataset."""
    from util.data import cifar_dataset, id_transform, spread_subset

    return spread_subset(cifar_dataset("CIFAR-10", "test", DATA_ROOT, id_transform("CIFAR-10")), n)


def densenet():
    from models import get_model

    return get_model("densenet", 10, CHECKPOINT)


def cpu_extractor(cache_dir, name: str, args):
    """A FeatureExtractor of a fresh DenseNet-101 on the CPU, caching under ``cache_dir``."""
    from util.features import FeatureExtractor

    return FeatureExtractor(
        densenet(),
        {"bench": name},
        cache_dir,
        device="cpu",
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=False,
    )


def plain_forward(model, x, batch=64):
    """model.forward_features over ``x`` in batches, without autograd: the bare network's speed."""
    import torch

    with torch.no_grad():
        return torch.cat([model.forward_features(x[i : i + batch]) for i in range(0, len(x), batch)])


def preload(dataset):
    """All images of ``dataset`` decoded and transformed into one (N, 3, 32, 32) tensor."""
    import torch

    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def timed(fn, *args, repeat: int = 1):
    """(result, best wall time in seconds over ``repeat`` runs)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        _synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def _synchronize() -> None:
    """Wait for queued GPU work, so that a timing covers it (CUDA kernels run asynchronously)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def report(rows: list[tuple[str, float]], unit: str = "images/s") -> None:
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"  {name:<{width}}{value:10.1f} {unit}")
