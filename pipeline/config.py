"""Typed run configurations: what a script's flags mean, checked once, passed to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from detectors.base import Detector
from models import MODEL_NAMES
from models.checkpoints import CHECKPOINT_EPOCH

# The architecture each ID dataset's papers used, when neither --model-arch nor --name names one.
DEFAULT_ARCH = {"CIFAR-10": "densenet", "CIFAR-100": "densenet", "imagenet": "resnet50"}


def resolve_model(in_dataset: str, name: str | None, model_arch: str | None) -> tuple[str, str]:
    """(name, model_arch) as both original repositories read them.

    The architecture is an explicit ``model_arch`` (DICE's ``--model-arch resnet50``), else a
    ``name`` that is an architecture (LINe's ``--name resnet50``: its code sets model_arch = name),
    else the in-dataset's default (densenet on CIFAR, resnet50 on ImageNet). The name, which
    names the checkpoint folder and the cache files, defaults to the architecture.
    """
    if model_arch is None:
        model_arch = name if name in MODEL_NAMES else DEFAULT_ARCH.get(in_dataset, "densenet")
    return (model_arch if name is None else name), model_arch


@dataclass
class RunConfig:
    """The classifier, the data and how features are extracted and cached."""

    in_dataset: str | None = "CIFAR-10"
    name: str | None = None  # None: the architecture (resolve_model)
    model_arch: str | None = None  # None: from --name or the in-dataset (resolve_model)
    checkpoint: str | None = None
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
        if self.in_dataset is not None:  # None: precompute.py's run over every ID dataset
            self.name, self.model_arch = resolve_model(self.in_dataset, self.name, self.model_arch)

    def settings(self) -> dict:
        """The configuration as recorded in results.json (detectors apart)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "detectors"}


@dataclass
class DetectorRun:
    """One method of an evaluation: the name it was asked by and the configured detector."""

    flag: str
    detector: Detector

    @property
    def method(self) -> str:
        return self.detector.run_name()


@dataclass
class EvalConfig(RunConfig):
    """``ood_eval.py``: one or more detectors scored on the ID test set and the OOD sets."""

    detectors: list[DetectorRun] = field(default_factory=list)
    out_datasets: list[str] | None = None
    base_dir: str = "output/ood_scores"
    fpr_convention: str = "id"
    plots: bool = False
    contrib: str | None = None
    feat_stat: str | None = None
    detail: str = "mean_class"  # LINe's contribution-file and score-file suffix
    only: str | None = None  # "in" (--in-dist-only) or "out" (--out-dist-only): score those sets only
    cal_metric: bool = False  # metrics from the saved per-image scores, no network and no data


@dataclass
class PrecomputeConfig(RunConfig):
    """``precompute.py``: the ID training statistics (LINe's contributions, DICE's mean feature)."""

    method: str = "taylor"


@dataclass
class SweepConfig(RunConfig):
    """``sweep.py``: one detector's search space scored from the cache, selected on validation data."""

    method: str = "line"
    grid: dict[str, tuple] = field(default_factory=dict)
    out_datasets: list[str] | None = None
    val_ood: str = "gaussian"
    val_fraction: float = 0.2
    seed: int = 0
    base_dir: str = "output/ood_scores"
    contrib: str | None = None
    feat_stat: str | None = None
