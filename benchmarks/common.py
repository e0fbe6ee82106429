"""Shared setup for the benchmarks: the DenseNet-101 checkpoint and CIFAR-10 images of ../shared."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("LINE_SHARED_DIR", REPO.parent / "shared"))
DATA_ROOT = SHARED / "data"
CHECKPOINT = SHARED / "checkpoints" / "CIFAR-10" / "densenet" / "checkpoint_100.pth.tar"


def cifar10_test_images(n: int):
    """``n`` CIFAR-10 test images (JPEG files) spread over all classes, as a cacheable dataset."""
    from util.data import spread_subset
    from util.datasets import id_dataset, id_transform

    return spread_subset(id_dataset("CIFAR-10", "test", DATA_ROOT, id_transform("CIFAR-10")), n)


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


def line_problem(n: int, C: int = 1000, D: int = 2048, seed: int = 0):
    """LINe at ImageNet scale: a random head (W, b) of C classes over D features, class-mean
    contributions as precompute.py makes them, and n non-negative features, float32."""
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 0.02, (C, D)).astype(np.float32)
    b = rng.normal(0, 0.01, C).astype(np.float32)

    def relu_normal(rows: int) -> np.ndarray:  # float32 throughout: no float64 copy of the set
        x = rng.standard_normal((rows, D), dtype=np.float32)
        x *= 0.5
        x += 0.3
        return np.maximum(x, 0, out=x)

    # Contributions as precompute.py makes them: class means of h * W[y] over 20 images a class.
    contrib = np.zeros((C, D))
    for c in range(C):
        contrib[c] = (relu_normal(20) * W[c]).mean(axis=0, dtype=np.float64)
    features = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 4096):
        features[start : start + 4096] = relu_normal(min(4096, n - start))
    return W, b, contrib, features


def write_relu_rows(path, rows: int, dim: int, rng, block: int = 16384) -> None:
    """A .npy of (rows, dim) float32 max(N(0, 1), 0) values (about half exact zeros, as after a
    ReLU), written block by block: never whole in memory."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    offset = header.offset
    del header
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, rows, block):
            values = rng.standard_normal((min(block, rows - start), dim), dtype=np.float32)
            np.maximum(values, 0, out=values)
            f.write(values.tobytes())
