"""OpenOOD v1.5's benchmarks (Zhang et al., "OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution
Detection", 2023): image lists under a data root, grouped as OpenOOD's evaluator groups them.

Layout (what OpenOOD's download script creates under its ``data/`` folder):

    {data_root}/benchmark_imglist/{list}/{split}_{set}.txt    lines ``relative/path label``
    {data_root}/images_classic/...  and  {data_root}/images_largescale/...

Each list line names an image relative to the list's image folder and its label (OOD lists carry
-1 or 0: the label of an OOD image is never used). The ID training list fits the detectors, the
ID test list is scored against each near-OOD and far-OOD test list, and the validation lists
(ID ``val_{id}``, OOD ``val_{set}``) drive the automatic parameter search.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from util.data import ImageFiles, follow_link_files
from util.errors import UserError

DOWNLOAD_HINT = (
    "get OpenOOD v1.5's image lists and images with its script "
    "(https://github.com/Jingkang50/OpenOOD, scripts/download/download.py --contents datasets "
    "--datasets ood_v1.5 --save_dir DATA_ROOT), then pass --data-root DATA_ROOT"
)


@dataclass(frozen=True)
class Benchmark:
    """One OpenOOD v1.5 benchmark: the ID dataset it stands for here, its lists and OOD groups."""

    name: str  # the --benchmark value
    in_dataset: str  # the ID dataset whose model, input and detector defaults apply
    list_dir: str  # benchmark_imglist/<list_dir>
    id_set: str  # train_<id_set>.txt, val_<id_set>.txt, test_<id_set>.txt
    num_classes: int
    near: tuple[str, ...]
    far: tuple[str, ...]
    val_ood: str  # val_<val_ood>.txt
    # The image folder of each list (OpenOOD's data_dir): images_classic unless named here.
    largescale: tuple[str, ...] = field(default=())

    def image_dir(self, set_name: str) -> str:
        return "images_largescale" if set_name in self.largescale else "images_classic"

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        return {"near": self.near, "far": self.far}

    @property
    def test_sets(self) -> tuple[str, ...]:
        return (*self.near, *self.far)


_IMAGENET_SETS = ("imagenet", "imagenet200", "ssb_hard", "ninco", "inaturalist", "openimage_o")
BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "openood-cifar10", "CIFAR-10", "cifar10", "cifar10", 10,
            near=("cifar100", "tin"), far=("mnist", "svhn", "texture", "places365"), val_ood="tin",
        ),
        Benchmark(
            "openood-cifar100", "CIFAR-100", "cifar100", "cifar100", 100,
            near=("cifar10", "tin"), far=("mnist", "svhn", "texture", "places365"), val_ood="tin",
        ),
        Benchmark(
            "openood-imagenet200", "imagenet", "imagenet200", "imagenet200", 200,
            near=("ssb_hard", "ninco"), far=("inaturalist", "textures", "openimage_o"),
            val_ood="openimage_o", largescale=_IMAGENET_SETS,
        ),
        Benchmark(
            "openood-imagenet", "imagenet", "imagenet", "imagenet", 1000,
            near=("ssb_hard", "ninco"), far=("inaturalist", "textures", "openimage_o"),
            val_ood="openimage_o", largescale=_IMAGENET_SETS,
        ),
    )
}  # fmt: skip


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}: choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def list_path(data_root, benchmark: Benchmark, split: str, set_name: str) -> Path:
    """``{data_root}/benchmark_imglist/{list_dir}/{split}_{set}.txt``."""
    return Path(data_root) / "benchmark_imglist" / benchmark.list_dir / f"{split}_{set_name}.txt"


def read_image_list(path: Path) -> list[tuple[str, int]]:
    """(relative path, label) of each non-empty line ``relative/path label`` (the label may be
    absent: -1). The label is the last space-separated token, so paths may hold spaces (OpenOOD
    splits at the first space; its own lists have none). A missing file or a malformed line is an
    error naming the file and line."""
    path = follow_link_files(path)
    if not path.is_file():
        raise UserError(f"OpenOOD image list {path} not found: {DOWNLOAD_HINT}")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        tokens = line.rsplit(" ", 1)
        label = -1
        if len(tokens) == 2:
            text = tokens[1]
            try:
                label = int(text)
            except ValueError:
                raise UserError(
                    f"{path}, line {number}: {line!r} is not 'relative/path label' (label {text!r} is "
                    "not an integer)"
                ) from None
        rel = tokens[0].strip()
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise UserError(
                f"{path}, line {number}: {rel!r} is not a path inside the image folder (OpenOOD lists hold "
                "paths relative to images_classic/ or images_largescale/)"
            )
        entries.append((rel, label))
    if not entries:
        raise UserError(f"OpenOOD image list {path} lists no image")
    return entries


def list_dataset(data_root, benchmark: Benchmark, split: str, set_name: str, transform, labelled: bool):
    """The images of one list as an ``ImageFiles`` dataset (root: the list's image folder). With
    ``labelled`` (ID lists) every label must be a class index of the benchmark; OOD lists' labels
    are replaced by -1. Images missing on disk are an error listing the first few."""
    lst = list_path(data_root, benchmark, split, set_name)
    entries = read_image_list(lst)
    root = follow_link_files(Path(data_root) / benchmark.image_dir(set_name))
    files = [root / rel for rel, _ in entries]
    missing = [str(f) for f in files if not os.path.isfile(f)]
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(
            f"{len(missing)} of the {len(files)} images listed in {lst} are missing under {root}:\n  "
            f"{shown}{more}\n{DOWNLOAD_HINT}"
        )
    if labelled:
        labels = [label for _, label in entries]
        bad = [(rel, y) for rel, y in entries if not 0 <= y < benchmark.num_classes]
        if bad:
            raise UserError(
                f"{lst}: {len(bad)} ID images have labels outside 0..{benchmark.num_classes - 1}, "
                f"e.g. {bad[0][0]} {bad[0][1]}"
            )
    else:
        labels = [-1] * len(files)
    return ImageFiles(root, files, labels, transform, relabelled=True)
