"""Detectors fitted from a model and a training loader, and scoring images with a model.

``fit_loader(detector, model, loader)`` runs one pass over ``loader`` and computes exactly the
statistics the detector's ``fit`` names (``detector.needs()``), with the functions precompute.py
uses (``detectors.statistics``): LINe's class-mean contributions, DICE's mean feature, the
training features and labels, BatchNorm's (beta, gamma). ``score_with_model(detector, model, x)``
gives (scores, logits) of a batch of images. Network-level detectors (ODIN, RankFeat) are fitted
on the model itself and score the images with it.

Loaders as users have them: a batch is ``x``, ``(x, y)``, ``(x, y, ...)`` or a dict with an image
and a label entry; ``x`` on any device (it is moved to the model's). Without labels, the classes a
fit needs are the model's predictions (said once). The model is left as it was: it runs in eval
mode inside each call (its own modes restored), is never moved, and its weights are only read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torchvision import transforms

from models.heads import cpu_copy, last_batchnorm
from models.split import evaluating, features_and_logits, known_head, model_device
from util.errors import UserError

from .statistics import ClassMeanAccumulator, fill_empty_classes, taylor_contributions

# The statistics a detector's fit may name (``Detector.needs()``).
STATISTICS = ("contributions", "mean_feature", "train_features", "train_labels", "batchnorm")
IMAGE_KEYS = ("image", "images", "img", "pixel_values", "input", "inputs", "x")
LABEL_KEYS = ("label", "labels", "target", "targets", "y")
# Where an ODIN-like perturbation's scale comes from when the loader's transform has no Normalize.
UNIT_STD = (1.0, 1.0, 1.0)


def batch_parts(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) of one batch: ``x``, ``(x, y, ...)`` or a dict; labels are kept
    only when they are one integer per image (anything else counts as no labels)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        x = next((batch[k] for k in IMAGE_KEYS if k in batch), None)
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    elif isinstance(batch, (tuple, list)) and batch:
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        x, y = None, None
    if not isinstance(x, torch.Tensor):
        keys = f" (keys {', '.join(map(str, batch))})" if isinstance(batch, dict) else ""
        raise UserError(
            f"a loader batch is {type(batch).__name__}{keys}: expected images x (a tensor), (x, y, ...) "
            f"or a dict with one of {', '.join(IMAGE_KEYS)}"
        )
    if isinstance(y, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in y):
        y = torch.as_tensor(y)
    usable = isinstance(y, torch.Tensor) and y.dim() == 1 and len(y) == len(x)
    return x, (y.long() if usable and not y.is_floating_point() else None)


def loader_batches(model: nn.Module, loader: Iterable, head: str | None = None) -> Iterator:
    """(h, logits, labels or None, head) of each batch, on the CPU, the model in eval mode."""
    device = model_device(model)
    with evaluating(model):
        for batch in loader:
            x, y = batch_parts(batch)
            h, z, fc = features_and_logits(model, x.to(device), head)
            yield h.cpu(), z.cpu(), (None if y is None else y.cpu()), fc


class TrainingPass:
    """Accumulates, batch by batch, the statistics ``needs`` names (``STATISTICS``).

    Contributions: ``ClassMeanAccumulator`` of ``taylor_contributions`` (float64 sums), as
    ``class_mean_contributions`` over precompute.py's cached features; mean feature: float64 sum
    of h over the rows, as ``mean_feature``. Only the order of the float64 sums differs from
    precompute.py's, so the results agree with its files to about 1e-12 relative on the same
    features (the features themselves may differ in the last float32 bits: other batch sizes and
    memory layouts pick other convolution kernels).
    """

    def __init__(self, fc: nn.Linear, needs: Iterable[str]):
        self.needs = set(needs)
        unknown = self.needs - set(STATISTICS)
        if unknown:
            raise ValueError(
                f"no statistic named {', '.join(sorted(unknown))}; known: {', '.join(STATISTICS)}"
            )
        self.fc = cpu_copy(fc)
        c, d = fc.out_features, fc.in_features
        self.classes = ClassMeanAccumulator(c, d) if "contributions" in self.needs else None
        self.total = np.zeros(d, dtype=np.float64)
        self.count = 0
        self.features: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    @property
    def needs_labels(self) -> bool:
        return bool(self.needs & {"contributions", "train_labels"})

    def add(self, h: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One batch of features (B, D) and class labels (B,) (None where no statistic needs them)."""
        h = h.float().cpu()
        if self.needs_labels:
            c = self.fc.out_features
            bad = labels[(labels < 0) | (labels >= c)]
            if len(bad):
                raise UserError(
                    f"the training loader gives label {int(bad[0])}; a class index 0..{c - 1} of the "
                    f"model's {c} outputs is expected"
                )
        if self.classes is not None:
            self.classes.add(taylor_contributions(self.fc, h, labels), labels)
        self.total += h.numpy().astype(np.float64).sum(axis=0)
        self.count += len(h)
        if "train_features" in self.needs:
            self.features.append(h.numpy())
        if "train_labels" in self.needs:
            self.labels.append(labels.numpy().astype(np.int64))

    def result(self, model: nn.Module | None = None) -> dict:
        """The statistics (``fit``'s keyword arguments), checked finite; ``model`` for BatchNorm."""
        if self.count == 0 and self.needs - {"batchnorm"}:
            raise UserError("the training loader gave no images: the detector's statistics need some")
        out = {}
        mean = self.total / max(self.count, 1)
        if "mean_feature" in self.needs:
            out["mean_feature"] = mean
        if self.classes is not None:
            out["contributions"] = self._contributions(mean)
        if "train_features" in self.needs:
            out["train_features"] = np.concatenate(self.features)
        if "train_labels" in self.needs:
            out["train_labels"] = np.concatenate(self.labels)
        if "batchnorm" in self.needs:
            out["batchnorm"] = batchnorm_statistics(model, self.fc.in_features)
        for key, value in out.items():
            bad = sum(int(np.count_nonzero(~np.isfinite(v))) for v in np.atleast_1d(value))
            if bad:
                raise UserError(f"{bad} NaN or infinite values in the {key} of the training loader's images")
        return out

    def _contributions(self, mean: np.ndarray) -> np.ndarray:
        """Class means (C, D); a class without images takes the mean feature's contribution (as
        precompute.py, said once). Rounded to float32, as precompute.py's file stores them, so a
        fit from a loader equals the command line's fit from that file."""
        contrib = self.classes.mean().numpy()
        counts = self.classes.counts.numpy()
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            contrib = fill_empty_classes(contrib, counts, self.fc, mean)
            listed = ", ".join(str(c) for c in empty[:10]) + (" ..." if len(empty) > 10 else "")
            print(
                f"note: {len(empty)} of {len(counts)} classes have no training image ({listed}); their LINe "
                "contributions are those of the mean training feature, h_mean * W[y]"
            )
        return contrib.astype(np.float32).astype(np.float64)


def batchnorm_statistics(model: nn.Module | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(beta, gamma) float64 of the model's last BatchNorm layer with ``dim`` channels (BATS)."""
    found = last_batchnorm(model, dim) if model is not None else None
    if found is None:
        raise UserError(
            f"bats needs a BatchNorm layer with {dim} channels (the penultimate features') in the "
            "classifier; this model has none. Choose another detector for it."
        )
    name, bn = found
    if bn.weight is None or bn.bias is None:
        raise UserError(f"bats: the BatchNorm layer {name!r} has no affine parameters")
    return bn.bias.detach().double().cpu().numpy(), bn.weight.detach().double().cpu().numpy()


class LabelSource:
    """Labels of a batch: the loader's, else the model's predictions, said once per pass."""

    def __init__(self, what: str):
        self.what = what
        self.said = False

    def __call__(self, labels: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        if labels is not None:
            return labels
        if not self.said:
            print(f"{self.what}: the batches hold no labels; the model's predicted classes serve as labels")
            self.said = True
        return logits.argmax(dim=1)


def training_statistics(
    model: nn.Module, loader: Iterable, needs: Iterable[str], head: str | None = None
) -> tuple[nn.Linear, dict]:
    """(the model's head, the statistics ``needs`` names) from one pass over ``loader``; no pass
    when nothing but the head (and BatchNorm) is needed and the head is known without one."""
    needs = tuple(needs)
    fc = known_head(model, head)
    if fc is not None and not set(needs) - {"batchnorm"}:
        return fc, TrainingPass(fc, needs).result(model)
    if loader is None:
        what = (
            ", ".join(n for n in needs if n != "batchnorm") or "its output layer (pass head='<name>' instead)"
        )
        raise UserError(f"the fit needs {what} from the training images: give a training loader")
    accumulator, labels = None, LabelSource("training loader")
    for h, z, y, fc in loader_batches(model, loader, head):
        accumulator = accumulator or TrainingPass(fc, needs)
        if not set(needs) - {"batchnorm"}:
            break  # the head was all this pass was for
        accumulator.add(h, labels(y, z) if accumulator.needs_labels else y)
    if accumulator is None:
        raise UserError("the training loader gave no batch")
    return fc, accumulator.result(model)


def input_std_of(loader, what: str = "") -> tuple[float, ...]:
    """The std of the ``transforms.Normalize`` in the loader's dataset's transform (ODIN's
    perturbation is in pixel units), else ``UNIT_STD`` (the model's input units); said either way."""
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and getattr(dataset, "transform", None) is None and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # a Subset's images come from the dataset under it
    transform = getattr(dataset, "transform", None)
    steps = getattr(transform, "transforms", [transform])
    normalize = next((t for t in steps if isinstance(t, transforms.Normalize)), None)
    if normalize is None:
        print(
            f"{what}: no Normalize in the loader's transform; input_std = {UNIT_STD} (the perturbation "
            "is in the model's input units); pass input_std=... for pixel units"
        )
        return UNIT_STD
    std = tuple(float(s) for s in np.atleast_1d(normalize.std))
    print(f"{what}: input_std = {std}, the std of the loader's Normalize")
    return std


def fit_loader(detector, model: nn.Module, loader: Iterable, head: str | None = None, input_std=None):
    """``detector`` fitted on ``model`` and one pass over the training ``loader``; returns it.

    A feature-level detector gets the model's head and the statistics its ``fit`` names
    (``training_statistics``); a network-level one the model and the input std (``input_std``,
    else ``input_std_of(loader)``), with no pass over the loader.
    """
    if detector.kind == "network":
        std = input_std if input_std is not None else input_std_of(loader, detector.name)
        return detector.fit(model, std)
    fc, stats = training_statistics(model, loader, detector.needs(), head)
    return detector.fit(fc, **stats)


def score_with_model(
    detector, model: nn.Module, x: torch.Tensor, head: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (B,) float64, the detector's logits (B, C)) of a batch of images, on the model's
    device; higher scores mean more in-distribution.

    The logits are the detector's: DICE's and LINe's sparsified layer, ODIN's on the perturbed
    images, the full head for the others. A network-level detector runs the model it was fitted
    on (``model`` must be that one).
    """
    device = model_device(model)
    x, _ = batch_parts(x)
    if detector.kind == "network":
        if detector.model_ is not model:
            raise ValueError(f"{detector.name} was fitted on another model: fit it on this one first")
        with evaluating(model):
            scores, logits = detector.score_images(x.to(device))
    else:
        with evaluating(model):
            h, _, _ = features_and_logits(model, x.to(device), head)
        with torch.no_grad():
            scores, logits = detector.score_batch(h.cpu())
    return scores.double().to(device), logits.to(device)
