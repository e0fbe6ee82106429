"""Typed run configurations: what a script's flags mean, checked once, passed to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from detectors.base import Detector


@dataclass
class RunConfig:
    """The classifier, the data and how features are extracted and cached."""

    in_dataset: str = "CIFAR-10"
    name: str = "densenet"
    model_arch: str = "densenet"
    checkpoint: str | None = None
    data_root: str = "datasets"
    cache_dir: str = "cache"
    device: str | None = None
    batch_size: int = 256
    workers: int | None = None
    progress: bool = True
    skip_bad_images: bool = False
    precision: str = "fp32"
    max_samples: int | None = None

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
