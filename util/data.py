"""Dataset mechanisms: image folders (with link files and class maps), image arrays, idx files,
synthetic noise and fixed subsets. Which datasets exist, and where, is ``util.datasets``' specs.

Every dataset here returns ``(image_tensor, label)`` and has ``fingerprint()``: a JSON-able
description of exactly which images it holds, used as part of the feature-cache key.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from util.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
NOISE_SEED = 0

# Label an ImageFiles dataset returns for an image file that cannot be read (see ImageFiles).
BAD_IMAGE_LABEL = -2


def image_size(transform: transforms.Compose) -> int:
    for t in transform.transforms:
        if isinstance(t, transforms.CenterCrop):
            return int(t.size[0])
    raise ValueError("transform has no CenterCrop")


def normalization(transform: transforms.Compose) -> transforms.Normalize:
    for t in transform.transforms:
        if isinstance(t, transforms.Normalize):
            return t
    raise ValueError("transform has no Normalize")


LINK_FILE_MAX_BYTES = 1024
LINK_FILE_MAX_HOPS = 8


def follow_link_files(path: str | os.PathLike) -> Path:
    """``path`` with each component that is a link stored as a text file replaced by its target.

    A Git checkout made without symbolic links (core.symlinks false, some archives and file
    systems) stores a link as a small file holding the target path; ``../shared``'s ImageNet sample
    has ``val`` -> ``train`` and ``ood_datasets`` -> ``../ood_datasets`` so. A file counts as such
    a link only when it is that small, holds one line and that line names an existing folder
    relative to the file's own folder.
    """
    path = Path(path)
    out, parts = (Path(path.anchor), path.parts[1:]) if path.is_absolute() else (Path(), path.parts)
    for part in parts:
        out = out / part
        for _ in range(LINK_FILE_MAX_HOPS):  # a link may point at another link file
            target = _link_file_target(out)
            if target is None:
                break
            out = target
    return out


def _link_file_target(path: Path) -> Path | None:
    if not path.is_file() or path.stat().st_size > LINK_FILE_MAX_BYTES:
        return None
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or "\n" in text:
        return None
    target = path.parent / text
    return target if target.is_dir() or _link_file_target(target) is not None else None


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image and convert it to RGB (grayscale and palette images included)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


class ImageFiles(Dataset):
    """A list of image files with labels; order as given."""

    def __init__(
        self, root: Path, files: list[Path], labels: list[int], transform, classes=(), label_names=None,
        relabelled: bool = False,
    ):  # fmt: skip
        self.root = Path(root)
        self.files = files
        self.labels = labels
        self.transform = transform
        self.classes = list(classes)
        self.label_names = dict(label_names or {})  # label -> class folder name
        self.relabelled = relabelled  # labels from a class list, not folder positions: fingerprinted

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        """(transformed image, label); an unreadable file gives a black image and BAD_IMAGE_LABEL.

        Raising here would surface as a traceback from inside a DataLoader worker, so the file is
        marked instead; the feature extractor names it (or skips it with --skip-bad-images).
        """
        try:
            img = load_rgb(self.files[i])
        except Exception:
            return self.transform(Image.new("RGB", (32, 32))), BAD_IMAGE_LABEL
        return self.transform(img), self.labels[i]

    def fingerprint(self) -> dict:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f.relative_to(self.root).as_posix()}\t{f.stat().st_size}\n".encode())
        out = {
            "kind": "image_files",
            "root": str(self.root.resolve()),
            "n": len(self.files),
            "files_sha256": h.hexdigest(),
        }
        if self.relabelled:  # a class map or ImageNet's val subset: the labels are part of the data
            out["labels_sha256"] = hashlib.sha256(
                np.asarray(self.labels, dtype=np.int64).tobytes()
            ).hexdigest()
        return out


def image_path(dataset: Dataset, i: int) -> str:
    """The file behind item ``i`` of ``dataset`` (through FixedSubset/Subset), or a description."""
    if isinstance(dataset, FixedSubset):
        return image_path(dataset.dataset, int(dataset.indices[i]))
    if isinstance(dataset, torch.utils.data.Subset):
        return image_path(dataset.dataset, int(dataset.indices[i]))
    if isinstance(dataset, ImageFiles):
        return str(dataset.files[i])
    return f"item {i} of {type(dataset).__name__}"


def why_unreadable(path: str) -> str:
    """The error reading ``path`` gives (re-read in this process, for the message)."""
    try:
        load_rgb(path)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "it read fine when checked again"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_image_folder(
    root: Path, class_index: dict[str, int] | None = None, classes_of: str = ""
) -> tuple[list[Path], list[int], list[str]]:
    """torchvision ``ImageFolder`` order: class folders sorted, files of each sorted (recursive).

    Labels are the sorted folder positions, or with ``class_index`` (folder name -> label) the
    labels it gives; a folder it does not name is an error (``classes_of`` says where the class
    list came from). Images directly under ``root`` come first with label -1 (a plain folder of
    images).
    """
    root = Path(root)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    if class_index is not None:
        unknown = [c for c in classes if c not in class_index]
        if unknown:
            raise UserError(
                f"{root} has {len(unknown)} class folder(s) that are not among the "
                f"{len(class_index)} classes of {classes_of or 'the class list'}: {', '.join(unknown[:5])}"
            )
    files = [Path(e.path) for e in entries if e.is_file() and _is_image(e.name)]
    labels = [-1] * len(files)
    for position, cls in enumerate(classes):
        label = class_index[cls] if class_index is not None else position
        for dirpath, _, names in sorted(os.walk(root / cls, followlinks=True)):
            for name in sorted(names):
                if _is_image(name):
                    files.append(Path(dirpath) / name)
                    labels.append(label)
    return files, labels, classes


def image_folder(
    root: Path, transform, hint: str = "", class_index: dict[str, int] | None = None, classes_of: str = ""
) -> ImageFiles:
    """``root`` read as an image folder; ``hint`` (what belongs there, where to get it) ends the error."""
    files, labels, classes = list_image_folder(root, class_index, classes_of)
    if not files:
        raise UserError(f"no images found under {root} (looked for {', '.join(IMG_EXTENSIONS)}){hint}")
    names = {v: k for k, v in class_index.items()} if class_index else dict(enumerate(classes))
    return ImageFiles(root, files, labels, transform, classes, names, relabelled=class_index is not None)


def labelled_folder(
    folder: Path, transform, hint: str = "", class_index=None, classes_of: str = ""
) -> ImageFiles:
    """``image_folder`` for an ID split: every image must be in a class folder (an image directly
    under ``folder`` has no label; ILSVRC's val images come flat and must be sorted first)."""
    ds = image_folder(folder, transform, hint, class_index, classes_of)
    loose = [f.name for f, y in zip(ds.files, ds.labels) if y == -1]
    if loose:
        raise UserError(
            f"{folder} holds {len(loose)} image(s) outside class folders (e.g. {loose[0]}): an ID split "
            f"needs {folder}/<class>/*; sort ImageNet's val images into wnid folders (e.g. with valprep.sh)"
        )
    if not ds.classes:
        raise UserError(f"{folder} has no class folders{hint}")
    return ds


def class_names(dataset: Dataset) -> dict[int, str]:
    """label -> class folder name of an image-folder dataset (through subsets); {} for others."""
    while isinstance(dataset, (FixedSubset, torch.utils.data.Subset)):
        dataset = dataset.dataset
    return dict(getattr(dataset, "label_names", {}))


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the sub-folders of ``folder`` (the ImageFolder class order)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def read_class_map(path: str | os.PathLike) -> dict[str, int]:
    """Folder name -> output index from a text file: one ``folder index`` pair per line (the last
    field is the index, so folder names may hold spaces), or one folder name per line (its index is
    its line number, from 0). Blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class map not found: {path} (--class-map)")
    pairs, names, listed = {}, [], 0
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        listed += 1
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9]+", parts[1], re.ASCII):
            pairs[parts[0]] = int(parts[1])
        else:
            names.append(line)
    if pairs and names:
        raise UserError(
            f"{path}: mixes 'folder index' lines with lines that end in no index (e.g. {names[0]!r}); "
            "use one form"
        )
    mapping = pairs or {name: i for i, name in enumerate(names)}
    if len(mapping) != listed:
        raise UserError(f"{path}: a folder name appears twice")
    if not mapping:
        raise UserError(f"{path}: no classes listed")
    shared = len(mapping) - len(set(mapping.values()))
    if shared:
        raise UserError(f"{path}: {shared} output index(es) given to two folders; each folder needs its own")
    return mapping


class ArrayImages(Dataset):
    """Images held as a uint8 array (N, H, W, 3) or (N, H, W), with labels."""

    def __init__(self, images: np.ndarray, labels, transform, source: dict):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i]).convert("RGB")
        return self.transform(img), int(self.labels[i])

    def fingerprint(self) -> dict:
        h = hashlib.sha256(np.ascontiguousarray(self.images).data)
        h.update(self.labels.tobytes())
        return {"kind": "array", **self.source, "n": len(self.images), "sha256": h.hexdigest()}


class NoiseImages(Dataset):
    """Synthetic OOD images made in the ID image size, then normalised like ID images.

    gaussian: pixels clip(N(0.5, 1), 0, 1); uniform: pixels U(0, 1). Image i is drawn from a
    generator seeded with ``seed + i``, so it does not depend on batching or workers.
    """

    def __init__(self, kind: str, n: int, size: int, normalize, seed: int = NOISE_SEED):
        assert kind in ("gaussian", "uniform")
        self.kind, self.n, self.size, self.seed = kind, n, size, seed
        self.normalize = normalize

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed + i)
        shape = (3, self.size, self.size)
        if self.kind == "gaussian":
            x = (torch.randn(shape, generator=g) + 0.5).clamp_(0, 1)
        else:
            x = torch.rand(shape, generator=g)
        return self.normalize(x), -1

    def fingerprint(self) -> dict:
        return {"kind": self.kind, "n": self.n, "size": self.size, "seed": self.seed}


def read_idx_images(path: Path) -> np.ndarray:
    """Read an idx3-ubyte file (optionally .gz): uint8 array (N, rows, cols)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or len(data) != 16 + n * rows * cols:
        raise UserError(f"{path} is not an idx3-ubyte image file (magic {magic}, {len(data)} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def folder_classes(root: str | os.PathLike, class_map: str | None = None) -> dict[str, int]:
    """Folder name -> label of an image-folder ID dataset: the class map, else the sorted class
    folders of ``{root}/train``."""
    if class_map is not None:
        return read_class_map(class_map)
    train = follow_link_files(Path(root) / "train")
    if not train.is_dir():
        raise UserError(
            f"{train} does not exist: an image-folder --in-dataset holds train/<class>/* and test/<class>/* "
            "(or val/<class>/*); or pass --class-map FILE naming the classes"
        )
    classes = class_folders(train)
    if not classes:
        raise UserError(f"{train} has no class folders (expected train/<class>/*)")
    return {c: i for i, c in enumerate(classes)}


def folder_split(root: str | os.PathLike, split: str) -> Path:
    """The folder of ``split`` in an image-folder dataset: train/, and test/ or else val/ for 'test'."""
    root = Path(root)
    if split == "train":
        return follow_link_files(root / "train")
    for name in ("test", "val"):
        if follow_link_files(root / name).is_dir():
            return follow_link_files(root / name)
    raise UserError(f"{root} has neither test/ nor val/: the ID test set of an image-folder --in-dataset")


def folder_dataset(
    root: str | os.PathLike, split: str, transform, class_map: str | None = None
) -> ImageFiles:
    """``split`` ('train' or 'test') of an image-folder dataset, labelled by ``folder_classes``."""
    folder = folder_split(root, split)
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist (the {split} split of --in-dataset {root})")
    source = f"--class-map {class_map}" if class_map else f"{Path(root) / 'train'}"
    return labelled_folder(
        folder, transform, f"; expected {folder}/<class>/*", folder_classes(root, class_map), source
    )


class FixedSubset(Dataset):
    """The images of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset: Dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = getattr(dataset, "transform", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]

    def fingerprint(self) -> dict:
        return {
            "kind": "subset",
            "of": self.dataset.fingerprint(),
            "indices_sha256": hashlib.sha256(self.indices.tobytes()).hexdigest(),
        }


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of every image, without decoding any image."""
    if isinstance(dataset, FixedSubset):
        return dataset_labels(dataset.dataset)[dataset.indices]
    if isinstance(dataset, (ImageFiles, ArrayImages)):
        return np.asarray(dataset.labels, dtype=np.int64)
    return np.full(len(dataset), -1, dtype=np.int64)


def balanced_subset(dataset: Dataset, max_samples: int, num_classes: int) -> Dataset:
    """A fixed, class-balanced subset: the first max_samples // K images of each of the K classes
    that have images (K = C when every class has some).

    The remainder (max_samples % K) goes one image each to the lowest of those class labels.
    """
    if max_samples >= len(dataset):
        return dataset
    labels = dataset_labels(dataset)
    present = np.unique(labels[(labels >= 0) & (labels < num_classes)])
    per_class = np.full(len(present), max_samples // max(len(present), 1))
    per_class[: max_samples % max(len(present), 1)] += 1
    chosen = [np.flatnonzero(labels == c)[:k] for c, k in zip(present, per_class)]
    return FixedSubset(dataset, np.sort(np.concatenate(chosen or [np.zeros(0, np.int64)])))


def spread_subset(dataset: Dataset, n: int | None) -> Dataset:
    """``n`` images spread evenly over ``dataset`` (all when n is None or larger), in order.

    Image folders are sorted by class, so evenly spaced indices cover every class.
    """
    if n is None or n >= len(dataset):
        return dataset
    return FixedSubset(dataset, np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(np.int64)))
