"""One forward pass per image, ever: features, logits and labels cached on disk.

``FeatureCache`` owns the cache directory. An entry is a folder ``{cache_dir}/features/{tag}-{key}``
holding ``features.npy`` (N, D) float32, ``logits.npy`` (N, C) float32, ``labels.npy`` (N,) int64
and ``meta.json``, the provenance: the key repeated, N, D and C. The key is a hash of what
produced the entry: the model (architecture, classes, checkpoint sha256), the dataset's
fingerprint (which images), the transform and the cache format version. Each dataset is
fingerprinted once per cache object. While an entry is written, its arrays are memory-mapped in
``{entry}.partial`` and filled in place; ``progress.json`` records how many leading rows are
complete, so an interrupted run resumes there (with any number of processes). The folder is
renamed to its final name only when complete, so a partial entry is never read as complete.
An entry is re-checked when loaded: ``meta.json`` must repeat the key and the arrays must have
the expected shapes, else it is recomputed (with a message).

``FeatureExtractor`` runs the model and fills entries: one writer loop, fed by batches of one
process or, under torchrun, by the rounds that every process forwards together
(``util.distributed.gathered_rounds``); only rank 0 writes. Progress is saved every
``LINE_PROGRESS_SECONDS`` seconds (default 30) and on Ctrl-C. Image files that cannot be read come
back from the dataset with label ``BAD_IMAGE_LABEL`` (util/data.py); they stop the run with a
message naming the file, or with ``skip_bad_images`` they are dropped from the returned set and
listed in ``skipped``.
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
from util.devices import AUTOCAST_DTYPES, check_device, check_precision, default_device
from util.errors import UserError
from util.io import atomic_write_json, sha256_json
from util.layer_taps import LayerArrays, LayerTaps, TapSpec, split_rows

CACHE_VERSION = 1
CPU_MICRO_BATCH = 16


@dataclass
class FeatureSet:
    """Penultimate features (N, D), logits (N, C) and labels (N,) of one dataset."""

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    path: Path
    from_cache: bool
    skipped: list[str] = field(default_factory=list)  # unreadable image files left out
    layers: LayerArrays | None = None  # statistics of intermediate layers (util.layer_taps), if held

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


def _open_arrays(folder: Path, n: int, d: int, c: int, mode: str, taps: dict | None = None):
    """features, logits, labels and, with ``taps`` (an entry's taps record), one array per layer
    statistic (``layer{i}_{kind}.npy``), memory-mapped."""
    open_memmap = np.lib.format.open_memmap
    arrays = [
        open_memmap(folder / "features.npy", mode=mode, dtype=np.float32, shape=(n, d)),
        open_memmap(folder / "logits.npy", mode=mode, dtype=np.float32, shape=(n, c)),
        open_memmap(folder / "labels.npy", mode=mode, dtype=np.int64, shape=(n,)),
    ]
    for stem, shape in (taps or {}).get("shapes", {}).items():
        arrays.append(open_memmap(folder / f"{stem}.npy", mode=mode, dtype=np.float32, shape=(n, *shape)))
    return tuple(arrays)


def taps_record(spec: TapSpec, shapes: list[tuple[int, ...]]) -> dict:
    """What an entry's meta.json says of its layer statistics: the spec and each array's row shape."""
    stems = [stem for _, _, stem in spec.array_names()]
    return {**spec.as_dict(), "shapes": {stem: list(shape) for stem, shape in zip(stems, shapes)}}


def held_layers(entry: Path, meta: dict, n: int) -> LayerArrays | None:
    """The layer statistics an entry holds (memory-mapped), or None."""
    record = meta.get("taps")
    spec = TapSpec.from_dict(record)
    if spec is None:
        return None
    arrays: dict[str, list] = {kind: [] for kind in spec.kinds}
    for kind, _, stem in spec.array_names():
        arrays[kind].append(np.load(entry / f"{stem}.npy", mmap_mode="r"))
    return LayerArrays(spec.layers, {k: tuple(v) for k, v in arrays.items()})


class PartialEntry:
    """An entry being written: memory-mapped arrays, the complete leading rows, and finalisation."""

    def __init__(self, entry: Path, key: dict, n: int, d: int, c: int, done: int, arrays, taps=None):
        self.entry, self.key, self.n, self.d, self.c = entry, key, n, d, c
        self.folder = entry.with_name(entry.name + ".partial")
        self.done = done
        self.arrays = arrays
        self.taps = taps  # the taps record (taps_record) of the layer arrays after the first three

    def write(
        self, start: int, h: np.ndarray, z: np.ndarray, y: np.ndarray, e: np.ndarray | None = None
    ) -> None:
        stop = start + len(y)
        self.arrays[0][start:stop] = h
        self.arrays[1][start:stop] = z
        self.arrays[2][start:stop] = y
        if self.taps:
            shapes = [tuple(s) for s in self.taps["shapes"].values()]
            for array, rows in zip(self.arrays[3:], split_rows(e, shapes)):
                array[start:stop] = rows
        self.done = stop

    def save_progress(self) -> None:
        for a in self.arrays:
            a.flush()
        record = {"key": self.key, "n": self.n, "done": self.done, "taps": self.taps}
        atomic_write_json(self.folder / "progress.json", record)

    def finalise(self) -> None:
        """meta.json written last, then the folder renamed to the entry's final name."""
        for a in self.arrays:
            a.flush()
        self.arrays = None
        meta = {**self.key, "n": self.n, "feature_dim": self.d, "classes": self.c}
        if self.taps:
            meta["taps"] = self.taps
        atomic_write_json(self.folder / "meta.json", meta)
        (self.folder / "progress.json").unlink()
        if self.entry.exists():
            shutil.rmtree(self.entry)
        os.replace(self.folder, self.entry)


class FeatureCache:
    """The feature-cache entries of one model (``model_key``) under ``root``/features."""

    def __init__(self, root: str | os.PathLike, model_key: dict):
        self.root = Path(root)
        self.model_key = model_key
        self._keys: dict[int, tuple[Dataset, dict]] = {}
        # Layer statistics the entries must hold (util.layer_taps); they are not part of the key,
        # so an entry without them stays valid for runs that need none.
        self.taps: TapSpec | None = None

    def key(self, dataset: Dataset) -> dict:
        """What produced an entry of ``dataset``; the dataset is fingerprinted once."""
        known = self._keys.get(id(dataset))
        if known is not None and known[0] is dataset:
            return known[1]
        fingerprint = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
        if fingerprint is None:
            raise TypeError(f"{type(dataset).__name__} has no fingerprint(); it cannot be cached")
        key = {
            "version": CACHE_VERSION,
            "model": self.model_key,
            "data": fingerprint,
            "transform": _transform_repr(dataset),
        }
        self._keys[id(dataset)] = (dataset, key)
        return key

    def entry(self, dataset: Dataset, tag: str) -> Path:
        digest = sha256_json(self.key(dataset))[:16]
        safe_tag = tag.replace(os.sep, "_").replace("/", "_").strip("_.") or "data"
        return self.root / "features" / f"{safe_tag}-{digest}"

    def problem(self, dataset: Dataset, tag: str) -> str | None:
        """None when the entry of ``dataset`` is complete and was made with its key, else what is wrong."""
        return self._entry_problem(self.entry(dataset, tag), dataset)

    def same_images(self, dataset: Dataset, tag: str) -> Path | None:
        """A complete entry under another tag with this entry's key (the same model, images and
        transform: ImageNet-sample's val/ is a link to its train/), or None."""
        own = self.entry(dataset, tag)
        digest = own.name.rsplit("-", 1)[1]
        for entry in sorted(own.parent.glob(f"*-{digest}")) if own.parent.is_dir() else []:
            if entry != own and entry.is_dir() and self._entry_problem(entry, dataset) is None:
                return entry
        return None

    def _entry_problem(self, entry: Path, dataset: Dataset) -> str | None:
        n = len(dataset)
        if not entry.exists():
            return "is absent"
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            return "has no readable meta.json (incomplete)"
        want = json.loads(json.dumps(self.key(dataset)))
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
        return self._layers_problem(entry, meta, n)

    def _layers_problem(self, entry: Path, meta: dict, n: int) -> str | None:
        """None when the entry holds the layer statistics ``self.taps`` asks for, else what is missing."""
        if self.taps is None:
            return None
        held = TapSpec.from_dict(meta.get("taps"))
        if not self.taps.covered_by(held):
            return (
                f"holds no {'/'.join(self.taps.kinds)} statistics of the layers "
                f"{', '.join(self.taps.layers)} (--feature-layers)"
            )
        for stem, shape in meta["taps"].get("shapes", {}).items():
            try:
                got = np.load(entry / f"{stem}.npy", mmap_mode="r").shape
            except (OSError, ValueError):
                return f"has no readable {stem}.npy"
            if got != (n, *shape):
                return f"holds {stem}.npy of shape {got}, expected {(n, *shape)}"
        return None

    def taps_to_write(self, dataset: Dataset, tag: str) -> TapSpec | None:
        """The layer statistics a recomputed entry gets: those asked for, plus the kinds the old entry
        held of the same layers (so recomputing for one kind does not drop another)."""
        if self.taps is None:
            return None
        try:
            meta = json.loads((self.entry(dataset, tag) / "meta.json").read_text())
        except (OSError, ValueError):
            return self.taps
        held = TapSpec.from_dict(meta.get("taps"))
        if held is None or held.layers != self.taps.layers:
            return self.taps
        return TapSpec(self.taps.layers, tuple(dict.fromkeys([*held.kinds, *self.taps.kinds])))

    def load(
        self, dataset: Dataset, tag: str, from_cache: bool = True, entry: Path | None = None
    ) -> FeatureSet:
        entry = entry or self.entry(dataset, tag)
        labels = np.load(entry / "labels.npy")
        layers = None
        if self.taps is not None:
            layers = held_layers(entry, json.loads((entry / "meta.json").read_text()), len(labels))
        return FeatureSet(
            features=np.load(entry / "features.npy", mmap_mode="r"),
            logits=np.load(entry / "logits.npy", mmap_mode="r"),
            labels=labels,
            path=entry,
            from_cache=from_cache,
            layers=layers,
        )

    def discard(self, dataset: Dataset, tag: str, why: str) -> None:
        """Removes the entry of ``dataset`` before it is recomputed, said with ``why``; an entry that
        lacks only layer statistics stays until its replacement is complete."""
        entry = self.entry(dataset, tag)
        if not entry.exists():
            return
        asked, self.taps = self.taps, None
        complete_without_layers = self._entry_problem(entry, dataset) is None
        self.taps = asked
        if complete_without_layers:
            print(f"cache entry {entry} {why}; recomputing it with them (it stays until that is complete)")
            return
        print(f"cache entry {entry} {why}; recomputing it")
        shutil.rmtree(entry)

    def bytes_needed(self, dataset: Dataset, tag: str, d: int, c: int, e: int = 0) -> int:
        """Disk bytes the arrays of ``dataset`` will take (0 when already cached); ``e``: the
        values of layer statistics per image."""
        if self.problem(dataset, tag) is None:
            return 0
        return len(dataset) * ((d + c + e) * 4 + 8)

    def require_space(self, needed: int, what: str) -> None:
        """UserError before any work when the cache directory has less than ``needed`` bytes free."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise UserError(
                f"not enough free disk space in {self.root} for the feature cache of {what}: "
                f"needs {_size(needed)}, {_size(free)} free. Free some space or pass another --cache-dir."
            )

    def open_partial(
        self, dataset: Dataset, tag: str, d: int, c: int, taps: dict | None = None
    ) -> PartialEntry:
        """The entry's partial arrays, resumed after its complete leading rows when a progress
        record for the same key, size and layer statistics (``taps``, a ``taps_record``) exists
        (else started from zero)."""
        entry, key, n = self.entry(dataset, tag), self.key(dataset), len(dataset)
        folder = entry.with_name(entry.name + ".partial")
        done = 0
        if (folder / "progress.json").is_file():
            try:
                progress = json.loads((folder / "progress.json").read_text())
            except ValueError:
                progress = {}
            same = progress.get("key") == json.loads(json.dumps(key)) and progress.get("n") == n
            if same and progress.get("taps") == json.loads(json.dumps(taps)):
                done = int(progress["done"])
            else:
                shutil.rmtree(folder)
        e = sum(int(np.prod(s)) for s in (taps or {}).get("shapes", {}).values())
        self.require_space((n - done) * ((d + c + e) * 4 + 8), entry.name)
        if done == 0:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            arrays = _open_arrays(folder, n, d, c, "w+", taps)
            atomic_write_json(folder / "progress.json", {"key": key, "n": n, "done": 0, "taps": taps})
        else:
            arrays = _open_arrays(folder, n, d, c, "r+", taps)
            print(f"resuming {entry.name}: {done} of {n} images already extracted")
        return PartialEntry(entry, key, n, d, c, done, arrays, taps)


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
        self.cache = FeatureCache(cache_dir, self.model_key)
        self.batch_size = batch_size
        if num_workers is None:
            num_workers = min(4, os.cpu_count() or 1) if self.device.type == "cuda" else 1
        self.num_workers = num_workers
        self.progress = progress
        self.images_forwarded = 0
        self.skip_bad_images = skip_bad_images
        self.skipped: dict[str, list[str]] = {}  # tag -> unreadable files skipped
        self.progress_seconds = float(os.environ.get("LINE_PROGRESS_SECONDS", "30"))
        self.taps: TapSpec | None = None  # layer statistics to fill in the same pass (set_taps)
        self._channels: list[int] | None = None
        if self.device.type == "cuda":
            # Same command, same bits: no autotuned (run-dependent) convolution algorithms.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            if self.precision == "fp32":  # fp32 means float32: no TF32 tensor-core rounding (cuDNN's default)
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False

    def set_taps(self, taps: TapSpec | None) -> None:
        """Fill (and require) the layer statistics ``taps`` in every entry from now on; the modules
        are looked up now, so a wrong name is an error before any image is read."""
        if taps is not None:
            LayerTaps(self.model, taps)
        self.taps = self.cache.taps = taps
        self._channels = None

    def layer_channels(self, dataset: Dataset) -> list[int]:
        """Channels C_l of each tapped layer, from one forward pass of a zero image shaped like the
        dataset's first (a probe, not an image of the set, so not counted)."""
        if self._channels is None:
            probe = torch.zeros(1, *dataset[0][0].shape, device=self.device)
            with torch.inference_mode(), LayerTaps(self.model, self.taps) as taps:
                self.model.forward_features(probe)
                self._channels = taps.channels()
        return self._channels

    def _taps_record(self, dataset: Dataset, spec: TapSpec | None) -> dict | None:
        if spec is None:
            return None
        with LayerTaps(self.model, spec) as taps:
            return taps_record(spec, taps.row_shapes(self.layer_channels(dataset)))

    def bytes_needed(self, dataset: Dataset, tag: str) -> int:
        record = self._taps_record(dataset, self.taps)
        e = sum(int(np.prod(s)) for s in (record or {}).get("shapes", {}).values())
        return self.cache.bytes_needed(dataset, tag, self.fc.in_features, self.fc.out_features, e)

    def require_space(self, needed: int, what: str) -> None:
        self.cache.require_space(needed, what)

    def extract(self, dataset: Dataset, tag: str) -> FeatureSet | None:
        """Features of every image of ``dataset``, from the cache when an entry matches.

        Under torchrun the images are split over the processes and the result, identical to one
        process's, is returned on rank 0 (None on the other ranks).
        """
        main = distributed.is_main()
        problem = self.cache.problem(dataset, tag) if main else None
        problem = distributed.broadcast(problem) if distributed.active() else problem
        if problem is not None and not distributed.active():
            whole = self._from_whole_set(dataset, tag)
            if whole is not None:  # a subset (--max-samples) of a cached set: no forward pass
                return self._drop_bad_images(whole, dataset, tag)
            twin = self.cache.same_images(dataset, tag)
            if twin is not None:  # the same images cached under another tag: no forward pass
                return self._drop_bad_images(self.cache.load(dataset, tag, entry=twin), dataset, tag)
        if problem is not None:
            spec = self.cache.taps_to_write(dataset, tag) if main else None  # before the old entry goes
            if main:
                self.cache.discard(dataset, tag, problem)
            self._fill(dataset, tag, spec)
        if not main:
            return None
        return self._drop_bad_images(self.cache.load(dataset, tag, from_cache=problem is None), dataset, tag)

    def _from_whole_set(self, dataset: Dataset, tag: str) -> FeatureSet | None:
        """The rows of a FixedSubset read from its whole set's complete cache entry, or None."""
        whole, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
        if whole is None or indices is None or not hasattr(whole, "fingerprint"):
            return None
        if self.cache.problem(whole, tag) is not None:
            return None
        fs = self.cache.load(whole, tag)
        return FeatureSet(
            features=np.asarray(fs.features[indices]),
            logits=np.asarray(fs.logits[indices]),
            labels=np.asarray(fs.labels[indices]),
            path=fs.path,
            from_cache=True,
            layers=fs.layers.rows(indices) if fs.layers is not None else None,
        )

    def _fill(self, dataset: Dataset, tag: str, spec: TapSpec | None = None) -> None:
        """The writer loop: blocks of (start, features, logits, labels) in dataset order, written by
        rank 0 with progress saved as it goes; the same loop for one process and for torchrun. ``spec``:
        the layer statistics filled in the same pass (None: none)."""
        d, c, n = self.fc.in_features, self.fc.out_features, len(dataset)
        spec = distributed.broadcast(spec) if distributed.active() else spec
        record = self._taps_record(dataset, spec)
        partial, done, error = None, 0, None
        if distributed.is_main():
            try:
                partial = self.cache.open_partial(dataset, tag, d, c, record)
                done = partial.done
            except UserError as exc:  # disk space, ...: under torchrun every rank must stop
                error = str(exc)
        if distributed.active():
            done, error = distributed.broadcast((done, error))
        if error is not None:
            raise UserError(error)
        entry = self.cache.entry(dataset, tag)
        bar = tqdm(
            total=n,
            initial=done,
            desc=f"features {entry.name}",
            unit="img",
            disable=not (self.progress and distributed.is_main()),
            dynamic_ncols=True,
        )
        last_save = time.monotonic()
        grads = spec is not None and spec.needs_grad  # NAC's statistics need a backward pass
        try:
            with torch.inference_mode(not grads), LayerTaps.maybe(self.model, spec) as taps:
                for start, h, z, y, e in self._blocks(dataset, done, taps, record):
                    bad = np.flatnonzero(y == BAD_IMAGE_LABEL)
                    if len(bad) and not self.skip_bad_images:  # under torchrun every rank sees it
                        raise UserError(
                            bad_image_message([image_path(dataset, start + int(i)) for i in bad], n)
                        )
                    if partial is not None:
                        partial.write(start, h, z, y, e)
                        if time.monotonic() - last_save >= self.progress_seconds:
                            partial.save_progress()
                            last_save = time.monotonic()
                    bar.update(len(y))
        except (KeyboardInterrupt, UserError):
            # Keep the complete leading rows: the next run resumes after them.
            bar.close()
            if partial is not None:
                partial.save_progress()
            raise
        bar.close()
        if partial is not None:
            partial.finalise()
        if distributed.active():
            distributed.barrier()

    def _blocks(self, dataset: Dataset, done: int, taps: LayerTaps | None = None, record: dict | None = None):
        """(start, h, z, y, e) of the images [done, n) in order (e: the flat layer statistics of
        ``taps``, or None): this process's batches, or under torchrun the rounds every process
        forwards a batch of and all gather."""
        pin = self.device.type == "cuda"
        if distributed.active():
            e = sum(int(np.prod(s)) for s in (record or {}).get("shapes", {}).values())
            yield from distributed.gathered_rounds(
                lambda images: self._counted_forward(images, taps),
                dataset,
                done,
                self.batch_size,
                self.num_workers,
                pin,
                (self.fc.in_features, self.fc.out_features, e),
                self.device,
            )
            return
        remaining = Subset(dataset, range(done, len(dataset))) if done else dataset
        loader = DataLoader(
            remaining, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, pin_memory=pin
        )
        start = done
        for images, targets in loader:
            h, z, e = self._counted_forward(images, taps)
            yield start, h, z, targets.numpy(), e
            start += len(targets)

    def _counted_forward(self, images: torch.Tensor, taps: LayerTaps | None = None):
        h, z, e = self.forward(images, taps)
        self.images_forwarded += len(h)
        return h, z, e

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
            layers=fs.layers.rows(keep) if fs.layers is not None else None,
        )

    def forward(self, images: torch.Tensor, taps: LayerTaps | None = None):
        """Features, logits and (with ``taps``) the flat layer statistics of one batch, as float32
        numpy arrays (the last None without taps)."""
        x = images.to(self.device, non_blocking=True)
        if self.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        # On CPU, small micro-batches keep activations in cache: DenseNet-101 runs about twice as
        # fast at 16 images per call as at 256 (benchmarks/bench_extraction.py). Samples are
        # independent in eval mode, so the split does not change what is computed.
        step = CPU_MICRO_BATCH if self.device.type == "cpu" else len(x)
        parts, extras = [], []
        for chunk in x.split(max(step, 1)):
            if self.precision == "fp32":
                parts.append(self.model.forward_features(chunk).float())
            else:
                with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]):
                    parts.append(self.model.forward_features(chunk).float())
            if taps is not None:  # the layer outputs of this chunk, reduced before the next one
                extras.append(taps.reduce(self.fc(parts[-1])))
                parts[-1] = parts[-1].detach()
        h = torch.cat(parts)
        z = self.fc(h)
        e = torch.cat(extras).cpu().numpy() if extras else None
        return h.cpu().numpy(), z.detach().float().cpu().numpy(), e


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
