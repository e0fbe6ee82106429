"""The datasets as declarative specs: one ``IDDataset`` per in-distribution dataset and one
``OODSet`` per named OOD set. Every reader (run set-up, flags, demos, ``--show-flags``, the
detectors' presets, precompute.py's loop over datasets) asks these specs; adding a dataset or an
OOD set is one spec in ``ID_DATASETS`` or ``OOD_SETS`` (or ``register``).

The loaders themselves (image folders, arrays, idx files, noise) live in ``util.data``.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from util.argtypes import name_or_folder_arg
from util.data import (
    ArrayImages,
    NoiseImages,
    class_folders,
    folder_dataset,
    follow_link_files,
    image_folder,
    image_size,
    labelled_folder,
    normalization,
    read_idx_images,
)
from util.errors import UserError
from util.inputs import CIFAR_INPUT, IMAGENET_INPUT, InputSpec

NOISE_SIZE = 10_000
_MOS_URL = "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset"


# -- OOD sets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OODSet:
    """A named OOD set: where it lives under the data root, where a user gets it, how it is read.

    ``read(spec, path, transform)`` builds the dataset from the located ``path``; a synthetic set
    (``path`` None) is ``read(spec, None, transform, size)``; ``files``: the set is the first of
    these file names found in ``path`` (an idx file) rather than ``path`` itself.
    """

    name: str
    path: str | None  # under the data root; None: made here (noise)
    source: str  # where to get it (download URL or command)
    read: Callable[[OODSet, Path | None, object], Dataset]
    files: tuple[str, ...] = ()

    def expected_path(self, data_root: str | os.PathLike) -> Path:
        """Where the set belongs under the data root (link files followed)."""
        return follow_link_files(Path(data_root) / self.path)

    def locate(self, data_root: str | os.PathLike) -> Path | None:
        """The folder or file the set is read from, or None when it is not there."""
        if self.path is None:
            return None
        where = self.expected_path(data_root)
        if not self.files:
            return where if where.exists() else None
        return next((where / f for f in self.files if (where / f).is_file()), None)

    def available(self, data_root: str | os.PathLike) -> bool:
        return self.path is None or self.locate(data_root) is not None

    def missing_message(self, data_root: str | os.PathLike) -> str:
        return f"OOD set {self.name}: {Path(data_root) / self.path} not found; get it from {self.source}"

    @property
    def synthetic(self) -> bool:
        """Made here (noise), in as many images as asked for."""
        return self.path is None

    def dataset(self, data_root: str | os.PathLike, transform, size: int | None = None) -> Dataset:
        """The set; a synthetic one with ``size`` images (default ``NOISE_SIZE``)."""
        if not self.available(data_root):
            raise UserError(self.missing_message(data_root))
        if self.synthetic:
            return self.read(self, None, transform, size or NOISE_SIZE)
        return self.read(self, self.locate(data_root), transform)


def read_folder(spec: OODSet, path: Path, transform) -> Dataset:
    """An OOD image folder (labels ignored)."""
    return image_folder(path, transform, f"; OOD set {spec.name} belongs there, get it from {spec.source}")


def read_npz(spec: OODSet, path: Path, transform) -> Dataset:
    """Arrays ``images`` (N, H, W, 3) uint8 and ``labels`` in an .npz file (select_svhn_data.py)."""
    with np.load(path) as f:
        images, labels = f["images"], f["labels"]
    return ArrayImages(images, labels, transform, {"dataset": spec.name, "file": str(path.resolve())})


def read_idx(spec: OODSet, path: Path, transform) -> Dataset:
    """An idx3-ubyte image file (Fashion-MNIST's test images), grey images as RGB."""
    images = read_idx_images(path)
    return ArrayImages(
        images, np.full(len(images), -1), transform, {"dataset": spec.name, "file": str(path.resolve())}
    )


def read_noise(spec: OODSet, path: None, transform, size: int = NOISE_SIZE) -> Dataset:
    """``size`` synthetic images in the ID crop size, normalised like the ID images. Image i is
    seeded by i alone, so a smaller set is the first images of a larger one."""
    return NoiseImages(spec.name, size, image_size(transform), normalization(transform))


_DROPBOX = "https://www.dropbox.com/s"
OOD_SETS: dict[str, OODSet] = {
    s.name: s
    for s in (
        OODSet(
            "SVHN", "ood_datasets/svhn/svhn_test_subset.npz",
            "run `python select_svhn_data.py --data-root DATA_ROOT` (downloads the SVHN test set "
            "from http://ufldl.stanford.edu/housenumbers/test_32x32.mat)",
            read_npz,
        ),
        OODSet(
            "LSUN", "ood_datasets/LSUN",
            f"{_DROPBOX}/fhtsw1m3qxlwj6h/LSUN.tar.gz (ODIN's LSUN crop set)",
            read_folder,
        ),
        OODSet(
            "LSUN_resize", "ood_datasets/LSUN_resize",
            f"{_DROPBOX}/moqh2wh8696c3yl/LSUN_resize.tar.gz",
            read_folder,
        ),
        OODSet("iSUN", "ood_datasets/iSUN", f"{_DROPBOX}/ssz7qxfqae0cca5/iSUN.tar.gz", read_folder),
        OODSet(
            "dtd", "ood_datasets/dtd/images",
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz "
            "(extract to ood_datasets/dtd)",
            read_folder,
        ),
        OODSet(
            "places365", "ood_datasets/places365",
            "the Places365 test images selected by the DICE/ReAct authors "
            "(http://places2.csail.mit.edu/download.html)",
            read_folder,
        ),
        # ImageNet-1k OOD benchmark of MOS (Huang & Li, CVPR 2021), used by DICE and LINe.
        OODSet(
            "inat", "ood_datasets/iNaturalist",
            f"{_MOS_URL}/iNaturalist.tar.gz (10,000 images, MOS)",
            read_folder,
        ),
        OODSet("sun", "ood_datasets/SUN", f"{_MOS_URL}/SUN.tar.gz (10,000 images, MOS)", read_folder),
        OODSet(
            "places", "ood_datasets/Places",
            f"{_MOS_URL}/Places.tar.gz (10,000 images, MOS)",
            read_folder,
        ),
        OODSet(
            "FashionMNIST", "ood_datasets/FashionMNIST/raw",
            "t10k-images-idx3-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
            read_idx, files=("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"),
        ),
        OODSet("gaussian", None, "generated here: pixels clip(N(0.5, 1), 0, 1)", read_noise),
        OODSet("uniform", None, "generated here: pixels U(0, 1)", read_noise),
    )
}  # fmt: skip


def _normalised(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def unknown_ood_message(name: str) -> str:
    known = list(OOD_SETS)
    by_norm = {_normalised(k): k for k in known}
    close = difflib.get_close_matches(_normalised(name), list(by_norm), n=1)
    hint = f" Did you mean {by_norm[close[0]]!r}?" if close else ""
    return f"OOD set {name!r}: not a known set name ({', '.join(known)}) and not an existing directory.{hint}"


def ood_available(name: str, data_root: str | os.PathLike) -> bool:
    """Whether a named OOD set is under the data root (noise always is), or ``name`` is a folder."""
    return OOD_SETS[name].available(data_root) if name in OOD_SETS else Path(name).is_dir()


def missing_ood_message(name: str, data_root: str | os.PathLike) -> str:
    return OOD_SETS[name].missing_message(data_root) if name in OOD_SETS else unknown_ood_message(name)


def present_ood_sets(names, data_root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(the sets of ``names`` under the data root or given as folders, in order; for each absent one
    a message saying where it belongs and where to get it)."""
    present = [n for n in names if ood_available(n, data_root)]
    return present, [missing_ood_message(n, data_root) for n in names if n not in present]


def ood_dataset(name: str, data_root: str | os.PathLike, transform, noise_size: int | None = None) -> Dataset:
    """A named OOD set (``OOD_SETS``; a synthetic one of ``noise_size`` images, default
    ``NOISE_SIZE``), or any directory read as an image folder (labels ignored)."""
    if name in OOD_SETS:
        return OOD_SETS[name].dataset(data_root, transform, noise_size)
    if not Path(name).is_dir():
        raise UserError(unknown_ood_message(name))
    return image_folder(Path(name), transform)


# -- ID datasets -----------------------------------------------------------------------------------
def load_cifar(spec: IDDataset, split: str, data_root, transform, download: bool = True) -> Dataset:
    """CIFAR-10/100 ``split`` ('train' or 'test') from an image folder or torchvision's format.

    Image-folder layout: ``{root}/{spec.folder}/{split}/<class>/*`` (classes sorted = labels).
    torchvision layout: ``{root}/cifar-10-batches-py`` or ``{root}/cifar-100-python``, downloaded
    when absent and ``download`` is true.
    """
    root, name, expected, source = Path(data_root), spec.name, spec.num_classes, spec.source
    folder = follow_link_files(root / spec.folder / split)
    if not root.is_dir():
        raise UserError(
            f"data root {root} does not exist (--data-root). It should hold {name}/{split}/<class>/* "
            f"image folders ({expected} classes) or torchvision's CIFAR files; get {name} from "
            f"{source}, or create {root} to let this script download it there."
        )
    if folder.is_dir():
        ds = labelled_folder(
            folder,
            transform,
            f"; expected {folder}/<class>/* with {expected} class folders. Get {name} from "
            f"{source}, or remove the empty folder to use (and download) torchvision's format.",
        )
        if len(ds.classes) != expected:
            raise UserError(f"{folder} has {len(ds.classes)} class folders; {name} needs {expected}")
        return ds
    tv = _torchvision_cifar(spec, split, root, folder, download)
    return ArrayImages(
        tv.data, tv.targets, transform, {"dataset": name, "split": split, "root": str(root.resolve())}
    )


def _torchvision_cifar(spec: IDDataset, split: str, root: Path, folder: Path, download: bool):
    """torchvision's CIFAR10/CIFAR100 under ``root``, downloaded when absent and ``download``."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if spec.num_classes == 10 else datasets.CIFAR100
    try:
        return cls(str(root), train=(split == "train"), download=False)
    except RuntimeError:
        if not download:
            raise UserError(
                f"{spec.name} {split} set not found under {root}: expected {folder}/<class>/*"
            ) from None
    try:
        return cls(str(root), train=(split == "train"), download=True)
    except Exception as exc:
        raise UserError(
            f"{spec.name} {split} set not found under {root}: expected {folder}/<class>/* "
            f"or torchvision's {cls.base_folder}, and downloading it failed "
            f"({type(exc).__name__}: {exc}). Download {cls.url} and extract it into "
            f"{root}, or pass --data-root."
        ) from None


def load_imagenet(spec: IDDataset, split: str, data_root, transform, download: bool = True) -> Dataset:
    """ImageNet-1k ``split`` ('train', or 'test': the 'val' folder) from
    ``{root}/ILSVRC-2012/{train|val}/<wnid>/*``.

    Labels are the sorted wnid folders of the 1,000 training classes (torchvision's ImageFolder
    order, the order of torchvision's and BiT's heads), so train/ holds all 1,000 class folders
    (a folder may be empty). The val folder may hold a subset of them: each wnid keeps its label
    among the 1,000, so ten classes can be the ID test set of a 1,000-way network.
    """
    split = "val" if split == "test" else split
    root = follow_link_files(Path(data_root) / spec.folder)
    folder = follow_link_files(root / split)
    if not folder.is_dir():
        raise UserError(f"ImageNet {split} set not found: {folder} does not exist. Get {spec.source}.")
    hint = f"; expected {folder}/<wnid>/*.JPEG. Get {spec.source}."
    own = class_folders(folder)
    if len(own) == spec.num_classes:
        return labelled_folder(folder, transform, hint)
    train = follow_link_files(root / "train")
    if split == "train" or not train.is_dir() or len(class_folders(train)) != spec.num_classes:
        raise UserError(
            f"{folder} has {len(own)} class folders; ImageNet-1k needs 1000 (<wnid> folders, sorted names "
            "give the label order of the pretrained heads). A val folder may hold fewer when "
            f"{train} holds all 1000."
        )
    index = {wnid: i for i, wnid in enumerate(class_folders(train))}
    return labelled_folder(folder, transform, hint, index, f"{train}")


def load_class_folders(spec: IDDataset, split: str, data_root, transform, download: bool = True) -> Dataset:
    """``{root}/{spec.folder}/{split}/<class>/*`` (sorted class folders = labels), the loader of a
    dataset that is image folders only (no download): ``spec.num_classes`` folders are required."""
    folder = follow_link_files(Path(data_root) / spec.folder / split)
    if not folder.is_dir():
        raise UserError(f"{spec.name} {split} set not found: {folder} is missing; get it from {spec.source}")
    hint = f"; expected {folder}/<class>/*. Get {spec.name} from {spec.source}."
    ds = labelled_folder(folder, transform, hint)
    if spec.num_classes is not None and len(ds.classes) != spec.num_classes:
        raise UserError(f"{folder} has {len(ds.classes)} class folders; {spec.name} needs {spec.num_classes}")
    return ds


@dataclass(frozen=True)
class IDDataset:
    """An in-distribution dataset: its name and other accepted spellings, where it lives under the
    data root and where to get it, how it is loaded, its classes and input, the network its papers
    used, whose detector settings apply (``preset``: a key of ``Detector.defaults``) and the OOD
    sets scored by default.

    ``load(spec, split, data_root, transform, download)`` reads 'train' or 'test'.
    ``model_input``: the model's preferred input (a built-in's, torchvision's or timm's) replaces
    ``input`` (full-size images); else only the model's own normalisation does (CIFAR's 32 px).
    """

    name: str
    num_classes: int | None  # None: an image folder's own classes
    folder: str  # under the data root
    source: str  # where to get it
    load: Callable[..., Dataset]
    input: InputSpec
    default_arch: str | None
    preset: str
    ood_sets: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    model_input: bool = False
    downloads: bool = False  # torchvision downloads it (and precompute.py its checkpoint)
    setup_hint: str = ""  # how to get the data when it is absent (precompute.py's skip line)


_CIFAR_OOD = ("SVHN", "LSUN", "LSUN_resize", "iSUN", "dtd", "places365")
_TORONTO = "https://www.cs.toronto.edu/~kriz"
ID_DATASETS: dict[str, IDDataset] = {
    d.name: d
    for d in (
        IDDataset(
            name="CIFAR-10", num_classes=10, folder="CIFAR-10", source=f"{_TORONTO}/cifar-10-python.tar.gz",
            load=load_cifar, input=CIFAR_INPUT, default_arch="densenet", preset="CIFAR-10",
            ood_sets=_CIFAR_OOD, aliases=("cifar10",), downloads=True,
        ),
        IDDataset(
            name="CIFAR-100", num_classes=100, folder="CIFAR-100",
            source=f"{_TORONTO}/cifar-100-python.tar.gz",
            load=load_cifar, input=CIFAR_INPUT, default_arch="densenet", preset="CIFAR-100",
            ood_sets=_CIFAR_OOD, aliases=("cifar100",), downloads=True,
        ),
        IDDataset(
            name="imagenet", num_classes=1000, folder="ILSVRC-2012",
            source="ILSVRC-2012 from https://image-net.org/download.php (train and val, each as "
            "<wnid>/*.JPEG class folders; val images sorted into class folders, e.g. with the valprep.sh "
            "script)",
            load=load_imagenet, input=IMAGENET_INPUT, default_arch="resnet50", preset="imagenet",
            ood_sets=("inat", "sun", "places", "dtd"), aliases=("ImageNet", "imagenet-1k", "ImageNet-1k"),
            model_input=True, setup_hint="see the README's ImageNet section for the data and weights",
        ),
    )
}  # fmt: skip


# Any image folder (--in-dataset FOLDER, train/<class>/* and test/ or val/): full-size images,
# so ImageNet's input, detector settings and OOD sets; no default network.
def _load_folder_by_name(spec: IDDataset, split: str, data_root, transform, download: bool = True):
    """An image folder is loaded from its path (``id_dataset(..., id_root=FOLDER)``), never by name."""
    raise UserError(
        "an image-folder dataset is read from its path: pass id_root=FOLDER to id_dataset (on the command "
        f"line --in-dataset FOLDER); named datasets: {', '.join(ID_DATASETS)}"
    )


FOLDER_DATASET = IDDataset(
    "folder", None, "", "your own images", _load_folder_by_name, IMAGENET_INPUT, None, "imagenet",
    ID_DATASETS["imagenet"].ood_sets, model_input=True,
)  # fmt: skip


def id_names() -> list[str]:
    """Every name and accepted spelling of the named ID datasets."""
    return [n for d in ID_DATASETS.values() for n in (d.name, *d.aliases)]


def canonical_id_name(name: str) -> str | None:
    """The ID dataset a name or spelling means (``cifar10`` -> ``CIFAR-10``), or None."""
    return next((d.name for d in ID_DATASETS.values() if name in (d.name, *d.aliases)), None)


def id_spec(in_dataset: str | None) -> IDDataset:
    """The spec of a named ID dataset; anything else (an image folder's label) is ``FOLDER_DATASET``."""
    name = canonical_id_name(in_dataset) if in_dataset else None
    return ID_DATASETS[name] if name else FOLDER_DATASET


def preset_of(in_dataset: str) -> str:
    """Whose detector settings apply to ``in_dataset``: a named dataset's (under any spelling its
    spec lists) ``preset``, an existing image folder's (ImageNet's); any other text is refused
    with the names, as ``--in-dataset`` refuses it."""
    name = canonical_id_name(in_dataset)
    if name is not None:
        return ID_DATASETS[name].preset
    try:
        name_or_folder_arg(list(ID_DATASETS), "dataset", id_names())(in_dataset)
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None
    return FOLDER_DATASET.preset


def dataset_input(in_dataset: str) -> InputSpec:
    """The papers' input for ``in_dataset`` (its spec's ``input``)."""
    return id_spec(in_dataset).input


def id_transform(in_dataset: str, norm: tuple[tuple, tuple] | None = None):
    """The spec's Resize, CenterCrop, ToTensor, Normalize; ``norm`` = (mean, std) replaces the
    statistics when the model asks for its own (BiT: 0.5, 0.5; ``models.input_normalization``)."""
    spec = dataset_input(in_dataset)
    if norm is not None:
        spec = replace(spec, mean=tuple(norm[0]), std=tuple(norm[1]))
    return spec.transform()


def id_dataset(
    in_dataset: str, split: str, data_root, transform, download: bool = True, id_root: str | None = None,
    class_map: str | None = None,
) -> Dataset:  # fmt: skip
    """The ID ``split`` ('train' or 'test') of a named dataset (its spec's loader; CIFAR is
    downloaded when absent unless ``download`` is false), or of the image folder ``id_root``."""
    if id_root is not None:
        return folder_dataset(id_root, split, transform, class_map)
    spec = id_spec(in_dataset)
    return spec.load(spec, split, data_root, transform, download)


def register(spec: IDDataset | OODSet) -> None:
    """Add a dataset spec (a user's OOD set or ID dataset); a name already taken is an error."""
    table = ID_DATASETS if isinstance(spec, IDDataset) else OOD_SETS
    names = (spec.name, *spec.aliases) if isinstance(spec, IDDataset) else (spec.name,)
    taken = [n for n in names if n in table or (isinstance(spec, IDDataset) and canonical_id_name(n))]
    if taken:
        raise ValueError(f"a dataset named {taken[0]!r} exists already")
    table[spec.name] = spec
