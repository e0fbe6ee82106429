"""One forward pass per image, ever: features, logits and labels cached on disk.

A cache entry is a folder ``{cache_dir}/features/{tag}-{key}`` holding ``features.npy`` (N, D)
float32, ``logits.npy`` (N, C) float32, ``labels.npy`` (N,) int64 and ``meta.json``. The key is a
hash of what produced it: the model (architecture, classes, checkpoint sha256), the dataset's
fingerprint (which images), the transform and the cache format version. While extracting, the
arrays are memory-mapped in ``{entry}.partial`` and filled in place; ``progress.json`` records how
many leading rows are complete, so an interrupted run resumes there. The folder is renamed to
its final name only when complete, so a partial entry is never read as complete.

Progress is saved every ``LINE_PROGRESS_SECONDS`` seconds (default 30) and on Ctrl-C. An entry is
re-checked when loaded: its ``meta.json`` must repeat the key and the arrays must have the
expected shapes, else it is recomputed (with a message). Free disk space for the arrays is
checked before extraction starts. Image files that cannot be read come back from the dataset
with label ``BAD_IMAGE_LABEL`` (util/data.py); they stop the run with a message naming the file,
or with ``skip_bad_images`` they are dropped from the returned set and listed in ``skipped``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from util import distributed
from util.data import BAD_IMAGE_LABEL, image_path, why_unreadable
from util.errors import UserError
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
    skipped: list[str] = field(default_factory=list)  # unreadable image files left out

    @property
    def requested(self) -> int:
        """Images in the dataset, including skipped unreadable ones."""
        return len(self.labels) + len(self.skipped)

    def __len__(self) -> int:
        return len(self.labels)


def _transform_repr(dataset: Dataset) -> str:
    t = getattr(dataset, "transform", None)
    if t is None:
        t = getattr(dataset, "normalize", None)
    return repr(t)


CPU_MICRO_BATCH = 16
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> str:
    """fp32 (default, exact), bf16 (CPU or CUDA autocast) or fp16 (CUDA autocast only)."""
    if precision not in ("fp32", *AUTOCAST_DTYPES):
        raise UserError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 autocast needs a CUDA device; use --precision bf16 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{device} does not support bfloat16; use --precision fp16 on this GPU")
    return precision


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> torch.device:
    """torch.device(name), refusing devices this machine does not have (with what it has)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: this machine has no usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise UserError(f"--device {name}: only cpu and cuda devices are supported")
    return device


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
        precision: str = "fp32",
        skip_bad_images: bool = False,
    ):
        self.device = check_device(device or default_device())
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)  # pinned memory and kernels on that GPU, not cuda:0
        self.precision = check_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        if self.device.type in ("cpu", "cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.fc = self.model.get_classifier()
        # Reduced precision changes the features, so it is part of the cache key (fp32 keys unchanged).
        self.model_key = model_key if precision == "fp32" else {**model_key, "precision": precision}
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1) if self.device.type == "cuda" else 1
        self.num_workers = num_workers
        self.progress = progress
        self.images_forwarded = 0
        self.skip_bad_images = skip_bad_images
        self.skipped: dict[str, list[str]] = {}  # tag -> unreadable files skipped
        self.progress_seconds = float(os.environ.get("LINE_PROGRESS_SECONDS", "30"))
        if self.device.type == "cuda":
            # Same command, same bits: no autotuned (run-dependent) convolution algorithms.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

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
        """Features of every image of ``dataset``, from the cache when an entry matches.

        Under torchrun (util/distributed.py) the images are split over the processes and the
        result, identical to one process's, is returned on rank 0 (None on the other ranks).
        """
        if distributed.active():
            return distributed.extract_sharded(self, dataset, tag)
        entry = self.entry_path(dataset, tag)
        problem = self._check_entry(entry, self.cache_key(dataset), len(dataset))
        if problem is None:
            fs = self._load(entry)
        else:
            if entry.exists():
                print(f"cache entry {entry} {problem}; recomputing it")
                shutil.rmtree(entry)
            self._fill(dataset, entry)
            fs = self._load(entry, from_cache=False)
        return self._drop_bad_images(fs, dataset, tag)

    def bytes_needed(self, dataset: Dataset, tag: str) -> int:
        """Disk bytes the cache arrays of ``dataset`` will take (0 when already cached)."""
        entry = self.entry_path(dataset, tag)
        if (entry / "meta.json").is_file():
            return 0
        return len(dataset) * ((self.fc.in_features + self.fc.out_features) * 4 + 8)

    def require_space(self, needed: int, what: str) -> None:
        """UserError before any work when the cache directory has less than ``needed`` bytes free."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache_dir).free
        if needed > free:
            raise UserError(
                f"not enough free disk space in {self.cache_dir} for the feature cache of {what}: "
                f"needs {_size(needed)}, {_size(free)} free. Free some space or "
                "pass another --cache-dir."
            )

    @staticmethod
    def _check_entry(entry: Path, key: dict, n: int) -> str | None:
        """None when ``entry`` is a complete cache entry made with ``key``, else what is wrong."""
        if not entry.exists():
            return "is absent"
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            return "has no readable meta.json (incomplete)"
        want = json.loads(json.dumps(key))
        differ = [k for k in want if meta.get(k) != want[k]]
        if differ:
            return f"was made with a different {', '.join(differ)} than this run"
        shapes = {"features.npy": (n, meta.get("feature_dim")), "logits.npy": (n, meta.get("classes"))}
        shapes["labels.npy"] = (n,)
        for name, shape in shapes.items():
            try:
                got = np.load(entry / name, mmap_mode="r").shape
            except (OSError, ValueError):
                return f"has no readable {name}"
            if got != shape:
                return f"holds {name} of shape {got}, expected {shape}"
        return None

    def _drop_bad_images(self, fs: FeatureSet, dataset: Dataset, tag: str) -> FeatureSet:
        """Unreadable images (label BAD_IMAGE_LABEL): an error naming them, or dropped when skipping."""
        bad = np.flatnonzero(np.asarray(fs.labels) == BAD_IMAGE_LABEL)
        if len(bad) == 0:
            return fs
        files = [image_path(dataset, int(i)) for i in bad]
        if not self.skip_bad_images:
            raise UserError(bad_image_message(files, len(fs.labels)))
        keep = np.setdiff1d(np.arange(len(fs.labels)), bad)
        print(f"skipped {len(files)} unreadable images of {len(fs.labels)} in {tag}, e.g. {files[0]}")
        self.skipped[tag] = files
        return FeatureSet(
            features=np.asarray(fs.features[keep]),
            logits=np.asarray(fs.logits[keep]),
            labels=np.asarray(fs.labels[keep]),
            path=fs.path,
            from_cache=fs.from_cache,
            skipped=files,
        )

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
        arrays, done = self.open_partial(partial, key, n, entry.name)
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
        try:
            with torch.inference_mode():
                for images, targets in loader:
                    bad = np.flatnonzero(targets.numpy() == BAD_IMAGE_LABEL)
                    if len(bad) and not self.skip_bad_images:
                        files = [image_path(dataset, done + int(i)) for i in bad]
                        raise UserError(bad_image_message(files, n))
                    h, z = self.forward(images)
                    b = len(h)
                    features[done : done + b] = h
                    logits[done : done + b] = z
                    labels[done : done + b] = targets.numpy()
                    done += b
                    self.images_forwarded += b
                    bar.update(b)
                    if time.monotonic() - last_save >= self.progress_seconds:
                        self._save_progress(partial, arrays, key, n, done)
                        last_save = time.monotonic()
        except (KeyboardInterrupt, UserError):
            # Keep the complete leading rows: the next run resumes after them.
            bar.close()
            self._save_progress(partial, arrays, key, n, done)
            raise
        bar.close()
        for a in arrays:
            a.flush()
        del features, logits, labels, arrays
        atomic_write_json(partial / "meta.json", {**key, "n": n, "feature_dim": d, "classes": c})
        (partial / "progress.json").unlink()
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(partial, entry)

    def open_partial(self, partial: Path, key: dict, n: int, label: str):
        """The memory-mapped arrays of ``partial`` and how many leading rows are complete.

        A progress record for another key or size (or an unreadable one) restarts from zero.
        """
        d, c = self.fc.in_features, self.fc.out_features
        done = 0
        if (partial / "progress.json").is_file():
            try:
                progress = json.loads((partial / "progress.json").read_text())
            except ValueError:
                progress = {}
            if progress.get("key") == json.loads(json.dumps(key)) and progress.get("n") == n:
                done = int(progress["done"])
            else:
                shutil.rmtree(partial)
        self.require_space((n - done) * ((d + c) * 4 + 8), label)
        if done == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            arrays = _open_arrays(partial, n, d, c, "w+")
            atomic_write_json(partial / "progress.json", {"key": key, "n": n, "done": 0})
        else:
            arrays = _open_arrays(partial, n, d, c, "r+")
            print(f"resuming {label}: {done} of {n} images already extracted")
        return arrays, done

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
        # On CPU, small micro-batches keep activations in cache: DenseNet-101 runs about twice as
        # fast at 16 images per call as at 256 (benchmarks/bench_extraction.py). Samples are
        # independent in eval mode, so the split does not change what is computed.
        step = CPU_MICRO_BATCH if self.device.type == "cpu" else len(x)
        parts = []
        for chunk in x.split(max(step, 1)):
            if self.precision == "fp32":
                parts.append(self.model.forward_features(chunk).float())
            else:
                with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                    parts.append(self.model.forward_features(chunk).float())
        h = torch.cat(parts)
        z = self.fc(h)
        return h.cpu().numpy(), z.float().cpu().numpy()


def bad_image_message(files: list[str], n: int) -> str:
    more = f" (and {len(files) - 1} more unreadable)" if len(files) > 1 else ""
    return (
        f"cannot read image {files[0]}{more}: {why_unreadable(files[0])}. Replace or delete the "
        "file, or pass --skip-bad-images to leave unreadable images out (they are counted in the output)."
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
