"""One forward pass per image, ever: features, logits and labels cached on disk.

A cache entry is a folder ``{cache_dir}/features/{tag}-{key}`` holding ``features.npy`` (N, D)
float32, ``logits.npy`` (N, C) float32, ``labels.npy`` (N,) int64 and ``meta.json``. The key is a
hash of what produced it: the model (architecture, classes, checkpoint sha256), the dataset's
fingerprint (which images), the transform and the cache format version. While extracting, the
arrays are memory-mapped in ``{entry}.partial`` and filled in place; ``progress.json`` records how
many leading rows are complete, so an interrupted run resumes there. The folder is renamed to
its final name only when complete, so a partial entry is never read as complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from util.io import atomic_write_json, sha256_json

CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """Penultimate features (N, D), logits (N, C) and labels (N,) of one dataset."""

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    path: Path
    from_cache: bool

    def __len__(self) -> int:
        return len(self.labels)


def _transform_repr(dataset: Dataset) -> str:
    t = getattr(dataset, "transform", None)
    if t is None:
        t = getattr(dataset, "normalize", None)
    return repr(t)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _open_arrays(folder: Path, n: int, d: int, c: int, mode: str):
    open_memmap = np.lib.format.open_memmap
    return (
        open_memmap(folder / "features.npy", mode=mode, dtype=np.float32, shape=(n, d)),
        open_memmap(folder / "logits.npy", mode=mode, dtype=np.float32, shape=(n, c)),
        open_memmap(folder / "labels.npy", mode=mode, dtype=np.int64, shape=(n,)),
    )


class FeatureExtractor:
    """Extracts (and caches) ``model.forward_features`` and logits for whole datasets."""

    def __init__(
        self,
        model: torch.nn.Module,
        model_key: dict,
        cache_dir: str | os.PathLike,
        device: str | None = None,
        batch_size: int = 256,
        num_workers: int | None = None,
        progress: bool = True,
    ):
        self.device = torch.device(device or default_device())
        self.model = model.eval().to(self.device)
        if self.device.type in ("cpu", "cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.fc = self.model.get_classifier()
        self.model_key = model_key
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1) if self.device.type == "cuda" else 1
        self.num_workers = num_workers
        self.progress = progress
        self.images_forwarded = 0

    def cache_key(self, dataset: Dataset) -> dict:
        fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
        if fingerprint is None:
            raise TypeError(f"{type(dataset).__name__} has no fingerprint(); it cannot be cached")
        return {
            "version": CACHE_VERSION,
            "model": self.model_key,
            "data": fingerprint,
            "transform": _transform_repr(dataset),
        }

    def entry_path(self, dataset: Dataset, tag: str) -> Path:
        key = sha256_json(self.cache_key(dataset))[:16]
        safe_tag = tag.replace(os.sep, "_").replace("/", "_").strip("_.") or "data"
        return self.cache_dir / "features" / f"{safe_tag}-{key}"

    def extract(self, dataset: Dataset, tag: str) -> FeatureSet:
        """Features of every image of ``dataset``, from the cache when an entry matches."""
        entry = self.entry_path(dataset, tag)
        if (entry / "meta.json").is_file():
            return self._load(entry)
        self._fill(dataset, entry)
        return self._load(entry, from_cache=False)

    def _load(self, entry: Path, from_cache: bool = True) -> FeatureSet:
        return FeatureSet(
            features=np.load(entry / "features.npy", mmap_mode="r"),
            logits=np.load(entry / "logits.npy", mmap_mode="r"),
            labels=np.load(entry / "labels.npy"),
            path=entry,
            from_cache=from_cache,
        )

    def _fill(self, dataset: Dataset, entry: Path) -> None:
        partial = entry.with_name(entry.name + ".partial")
        key = self.cache_key(dataset)
        n = len(dataset)
        d = self.fc.in_features
        c = self.fc.out_features
        done = 0
        if (partial / "progress.json").is_file():
            progress = json.loads((partial / "progress.json").read_text())
            if progress.get("key") == key and progress.get("n") == n:
                done = int(progress["done"])
            else:
                shutil.rmtree(partial)
        if done == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            arrays = _open_arrays(partial, n, d, c, "w+")
            atomic_write_json(partial / "progress.json", {"key": key, "n": n, "done": 0})
        else:
            arrays = _open_arrays(partial, n, d, c, "r+")
            print(f"resuming {entry.name}: {done} of {n} images already extracted")
        features, logits, labels = arrays
        remaining = Subset(dataset, range(done, n)) if done else dataset
        loader = DataLoader(
            remaining,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        last_save = time.monotonic()
        bar = tqdm(
            total=n,
            initial=done,
            desc=f"features {entry.name}",
            unit="img",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        with torch.inference_mode():
            for images, targets in loader:
                h, z = self.forward(images)
                b = len(h)
                features[done : done + b] = h
                logits[done : done + b] = z
                labels[done : done + b] = targets.numpy()
                done += b
                self.images_forwarded += b
                bar.update(b)
                if time.monotonic() - last_save > 30:
                    self._save_progress(partial, arrays, key, n, done)
                    last_save = time.monotonic()
        bar.close()
        for a in arrays:
            a.flush()
        del features, logits, labels, arrays
        atomic_write_json(partial / "meta.json", {**key, "n": n, "feature_dim": d, "classes": c})
        (partial / "progress.json").unlink()
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(partial, entry)

    @staticmethod
    def _save_progress(partial: Path, arrays, key: dict, n: int, done: int) -> None:
        for a in arrays:
            a.flush()
        atomic_write_json(partial / "progress.json", {"key": key, "n": n, "done": done})

    def forward(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Features and logits of one batch, as float32 numpy arrays."""
        x = images.to(self.device, non_blocking=True)
        if self.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.model.forward_features(x).float()
        z = self.fc(h)
        return h.cpu().numpy(), z.float().cpu().numpy()
