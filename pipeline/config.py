"""Typed run configurations: what a script's flags mean, checked once, passed to the pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from detectors.base import Detector
from models import MODEL_NAMES
from models.checkpoints import CHECKPOINT_EPOCH
from util.datasets import ID_DATASETS, canonical_id_name, id_spec
from util.errors import UserError
from util.openood import BENCHMARKS, get_benchmark


def resolve_model(in_dataset: str, name: str | None, model_arch: str | None) -> tuple[str, str]:
    """(name, model_arch) as both original repositories read them.

    The architecture is an explicit ``model_arch`` (DICE's ``--model-arch resnet50``), else a
    ``name`` that is an architecture (LINe's ``--name resnet50``: its code sets model_arch = name),
    else the in-dataset's default (densenet on CIFAR, resnet50 on ImageNet). The name, which
    names the checkpoint folder and the cache files, defaults to the architecture.
    """
    if model_arch is None:
        default = id_spec(in_dataset).default_arch
        if name not in MODEL_NAMES and default is None:
            raise UserError(
                f"--in-dataset {in_dataset}: an image-folder dataset has no default network; pass "
                "--model-arch (a built-in name, torchvision:NAME, timm:NAME or package.module:function)"
            )
        model_arch = name if name in MODEL_NAMES else default
    if name is None:  # the name is part of file names: torchvision:resnet18 -> torchvision-resnet18
        name = model_arch.replace(":", "-").replace("/", "-")
    return name, model_arch


def dataset_label(in_dataset: str) -> str:
    """The name an ID dataset goes by in file names: itself, or an image folder's base name
    (``FOLDER-folder`` when that base name is a dataset name: a folder named ``imagenet`` must not
    share ImageNet's statistics files)."""
    if in_dataset in ID_DATASETS:
        return in_dataset
    name = Path(os.path.abspath(in_dataset)).name
    return f"{name}-folder" if name in ID_DATASETS or name in BENCHMARKS else name


@dataclass
class RunConfig:
    """The classifier, the data and how features are extracted and cached."""

    in_dataset: str | None = "CIFAR-10"  # a name of util.datasets.ID_DATASETS, or an image folder (id_root)
    benchmark: str | None = None  # an OpenOOD v1.5 benchmark (util.openood): its image lists
    name: str | None = None  # None: the architecture (resolve_model)
    model_arch: str | None = None  # None: from --name or the in-dataset (resolve_model)
    checkpoint: str | None = None
    id_root: str | None = None  # an image-folder ID dataset: {id_root}/train, {id_root}/test or val
    class_map: str | None = None  # folder name -> output index (util.data.read_class_map)
    num_classes: int | None = None  # None: what the in-dataset implies
    head: str | None = None  # the output Linear's module name; None: found by a forward pass
    image_size: int | None = None  # crop size; None: the model's or the dataset's
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    epochs: int = CHECKPOINT_EPOCH  # the default checkpoint is checkpoint_{epochs}.pth.tar
    data_root: str = "datasets"
    cache_dir: str = "cache"
    device: str | None = None
    batch_size: int = 256
    workers: int | None = None
    progress: bool = True
    skip_bad_images: bool = False
    precision: str = "fp32"
    max_samples: int | None = None

    def __post_init__(self):
        if self.in_dataset is not None and self.id_root is None and not os.path.isdir(self.in_dataset):
            self.in_dataset = canonical_id_name(self.in_dataset) or self.in_dataset  # cifar10 -> CIFAR-10
        if self.benchmark is not None:
            bench = get_benchmark(self.benchmark)
            if self.in_dataset not in (None, bench.in_dataset):
                raise UserError(
                    f"--benchmark {self.benchmark} evaluates {bench.in_dataset} classifiers on its own image "
                    f"lists; drop --in-dataset {self.in_dataset}"
                )
            if self.class_map is not None:
                raise UserError(
                    f"--benchmark {self.benchmark}: its image lists label the images; drop --class-map"
                )
            self.in_dataset = bench.in_dataset
            implied = ID_DATASETS[bench.in_dataset].num_classes
            if bench.num_classes != implied and self.checkpoint is None:
                raise UserError(
                    f"--benchmark {self.benchmark} needs a {bench.num_classes}-class classifier: pass its "
                    "--checkpoint (and --model-arch), e.g. OpenOOD v1.5's ImageNet-200 ResNet-18; the"
                    f" default {bench.in_dataset} weights have {implied} outputs"
                )
        if self.in_dataset in ID_DATASETS:
            self.id_root = None  # a named dataset (also after dataclasses.replace from a folder)
        elif self.in_dataset is not None and (
            self.id_root is None or self.in_dataset != dataset_label(self.id_root)
        ):
            self.id_root, self.in_dataset = os.path.abspath(self.in_dataset), dataset_label(self.in_dataset)
        if self.class_map is not None:
            self.class_map = os.path.abspath(self.class_map)
        if self.class_map is not None and self.id_root is None:
            raise UserError(
                f"--class-map {self.class_map}: class maps label image-folder datasets (--in-dataset "
                f"FOLDER); {self.in_dataset or 'each named dataset'} has its own labels"
            )
        if self.in_dataset is not None:  # None: precompute.py's run over every ID dataset
            which = (
                self.in_dataset if self.id_root is None else self.id_root
            )  # a folder has no default network
            self.name, self.model_arch = resolve_model(which, self.name, self.model_arch)

    @property
    def dataset(self):
        """The ID dataset's spec (``util.datasets``): an image folder's is ``FOLDER_DATASET``."""
        return id_spec(None if self.id_root is not None else self.in_dataset)

    @property
    def label(self) -> str:
        """The name the data goes by in file names (cache tags, statistics files, result folders):
        the benchmark when the images come from an OpenOOD benchmark's lists, else the ID dataset."""
        return self.benchmark or self.in_dataset

    @property
    def dataset_flags(self) -> str:
        """The flag that names this run's data: ``--benchmark NAME`` or ``--in-dataset NAME``."""
        if self.benchmark:
            return f"--benchmark {self.benchmark}"
        return f"--in-dataset {self.id_root or self.in_dataset}"

    def settings(self) -> dict:
        """The configuration as recorded in results.json (detectors apart)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "detectors"}


@dataclass
class DetectorRun:
    """One method of an evaluation: the name it was asked by and the configured detector."""

    flag: str
    detector: Detector
    given: dict | None = None  # the parameters set by flags; None: not recorded (told apart by value)

    @property
    def method(self) -> str:
        return self.detector.run_name()


@dataclass
class EvalConfig(RunConfig):
    """``ood_eval.py``: one or more detectors scored on the ID test set and the OOD sets."""

    detectors: list[DetectorRun] = field(default_factory=list)
    out_datasets: list[str] | None = None
    max_ood_samples: int | None = None  # each OOD set limited to this many images (spread over it)
    noise_samples: int | None = None  # images of each noise set; None: as many as the ID test set
    base_dir: str = "output/ood_scores"
    fpr_convention: str = "id"
    plots: bool = False
    contrib: str | None = None
    feat_stat: str | None = None
    detail: str = "mean_class"  # LINe's contribution-file and score-file suffix
    only: str | None = None  # "in" (--in-dist-only) or "out" (--out-dist-only): score those sets only
    cal_metric: bool = False  # metrics from the saved per-image scores, no network and no data
    feature_layers: tuple[str, ...] | None = None  # multi-layer detectors' modules; None: the arch's


@dataclass
class PrecomputeConfig(RunConfig):
    """``precompute.py``: the ID training statistics (LINe's contributions, DICE's mean feature)."""


@dataclass
class SweepConfig(RunConfig):
    """``sweep.py``: one detector's search space scored from the cache, selected on validation data."""

    method: str = "line"
    grid: dict[str, tuple] = field(default_factory=dict)
    out_datasets: list[str] | None = None
    max_ood_samples: int | None = None
    noise_samples: int | None = None  # images of each noise set; None: as many as the ID test set
    val_ood: str = "gaussian"
    val_fraction: float = 0.2
    seed: int = 0
    base_dir: str = "output/ood_scores"
    contrib: str | None = None
    feat_stat: str | None = None
    feature_layers: tuple[str, ...] | None = None  # multi-layer detectors' modules; None: the arch's
