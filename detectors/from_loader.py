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

import functools
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torchvision import transforms

from models import MODELS, default_layers
from models.heads import cpu_copy, last_batchnorm
from models.split import _check_output, evaluating, features_and_logits, known_head, model_device
from util.errors import UserError
from util.layer_taps import LayerArrays, LayerTaps, TapSpec, tap_kinds

from .statistics import ClassMeanAccumulator, fill_empty_classes, taylor_contributions

# The statistics a detector's fit may name (``Detector.needs()``).
STATISTICS = ("contributions", "mean_feature", "train_features", "train_labels", "train_layers", "batchnorm")
# Statistics that are the training loader itself (AdaSCALE's fit runs the network on its images).
LOADER_STATISTICS = ("train_images",)
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
    for h, z, y, fc, _ in tapped_batches(model, loader, head):
        yield h, z, y, fc


def tapped_batches(model: nn.Module, loader: Iterable, head: str | None = None, spec: TapSpec | None = None):
    """(h, logits, labels or None, head, layers) of each batch, on the CPU, the model in eval mode;
    ``layers``: the batch's ``LayerArrays`` of ``spec`` (None without one), reduced by hooks
    (``util.layer_taps.LayerTaps``) in the same forward pass."""
    device = model_device(model)
    fc = known_head(model, head) if spec is not None else None
    with evaluating(model), LayerTaps.maybe(model, spec) as taps:
        for batch in loader:
            x, y = batch_parts(batch)
            h, z, fc, layers = tapped_forward(model, x.to(device), head, taps, fc)
            yield h.cpu(), z.cpu(), (None if y is None else y.cpu()), fc, layers


def tapped_forward(model: nn.Module, x: torch.Tensor, head: str | None, taps: LayerTaps | None, fc=None):
    """(h, logits, head, the batch's LayerArrays or None) of one ``model(x)`` with ``taps`` hooked.

    Statistics that need dKL/dz (``nac``) need a graph from the tapped outputs to the logits: the
    pass then runs with autograd on (x requiring grad, whatever the weights' ``requires_grad``),
    reading h at the head ``fc`` (found, where not known, by a one-image probe of the first batch).
    """
    if taps is None or not taps.spec.needs_grad:
        h, z, fc = features_and_logits(model, x, head)
        return h, z, fc, (taps.layer_arrays(z) if taps is not None else None)
    fc = fc if fc is not None else features_and_logits(model, x[:1], head)[2]
    kept = {}
    handle = fc.register_forward_hook(lambda _m, args, out: kept.update(h=args[0], z=out))
    try:
        with torch.enable_grad():
            out = model(x.detach().requires_grad_(True))
    finally:
        handle.remove()
    _check_output(model, out, kept["z"])
    layers = taps.layer_arrays(out)
    return kept["h"].detach().float(), out.detach().float(), fc, layers


def flat_layers(layers: LayerArrays, spec: TapSpec) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """(rows (B, E), each array's row shape) of ``layers`` in ``spec.array_names()`` order: the
    inverse of ``util.layer_taps.split_rows``, as the feature cache's writer takes them."""
    parts = [np.asarray(layers.arrays[kind][i]) for kind, i, _ in spec.array_names()]
    flat = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)
    return flat, [tuple(p.shape[1:]) for p in parts]


@functools.cache
def _builtin_classes() -> dict[type, str]:
    """{model class: built-in architecture}: each ``models.MODELS`` spec built on the meta device
    (no memory, no weights), the first architecture of a class kept."""
    out: dict[type, str] = {}
    for arch, spec in MODELS.items():
        with torch.device("meta"):
            out.setdefault(type(spec.build(1)), arch)
    return out


def layer_names(model: nn.Module, feature_layers, readers: str) -> tuple[str, ...]:
    """The modules whose outputs the multi-layer detectors ``readers`` read: ``feature_layers`` (a
    list of module names, or one comma-separated string), else the default of the built-in
    architecture of the model's class (``models.default_layers``, said), else a UserError."""
    if feature_layers is not None:
        given = feature_layers.split(",") if isinstance(feature_layers, str) else list(feature_layers)
        names = tuple(str(n).strip() for n in given if str(n).strip())
        if not names:
            raise UserError(
                "feature_layers is empty: give module names, e.g. feature_layers=['layer1', 'layer2']"
            )
        return names
    arch = _builtin_classes().get(type(model))
    if arch is not None and default_layers(arch):
        names = default_layers(arch)
        print(
            f"feature_layers: {', '.join(names)} ({arch}'s default in models/__init__.py, the built-in "
            f"architecture of {type(model).__name__}; pass feature_layers=[...] for others)"
        )
        return names
    top = [n for n, _ in model.named_children()]
    raise UserError(
        f"{readers} read(s) intermediate layers, and {type(model).__name__} is not a built-in architecture: "
        f"pass feature_layers=[...] with the model's module names, e.g. feature_layers={top[:3]!r} (its "
        f"top-level modules: {', '.join(top)}; dotted names such as layer1.0 for deeper ones)"
    )


def tap_spec_of(model: nn.Module, detectors, feature_layers=None) -> TapSpec | None:
    """The layer statistics the ``detectors`` read (the union of their ``taps``) on the modules of
    ``layer_names``; None when none reads intermediate layers."""
    kinds = tap_kinds(detectors)
    if not kinds:
        return None
    readers = ", ".join(d.name for d in detectors if getattr(d, "taps", ()))
    return TapSpec(layer_names(model, feature_layers, readers), kinds)


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
        self.layers: list[LayerArrays] = []

    @property
    def needs_labels(self) -> bool:
        return bool(self.needs & {"contributions", "train_labels"})

    def add(self, h: torch.Tensor, labels: torch.Tensor | None, layers: LayerArrays | None = None) -> None:
        """One batch of features (B, D), class labels (B,) (None where no statistic needs them) and,
        for ``train_layers``, the batch's layer statistics."""
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
        if "train_layers" in self.needs:
            if layers is None:
                raise ValueError("train_layers: each batch's layer statistics are needed (a TapSpec)")
            self.layers.append(layers)

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
        if "train_layers" in self.needs:
            out["train_layers"] = LayerArrays.concatenate(self.layers)
        if "batchnorm" in self.needs:
            out["batchnorm"] = batchnorm_statistics(model, self.fc.in_features)
        for key, value in out.items():
            layered = key == "train_layers"
            parts = [a for v in value.arrays.values() for a in v] if layered else np.atleast_1d(value)
            bad = sum(int(np.count_nonzero(~np.isfinite(v))) for v in parts)
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
    model: nn.Module,
    loader: Iterable,
    needs: Iterable[str],
    head: str | None = None,
    spec: TapSpec | None = None,
) -> tuple[nn.Linear, dict]:
    """(the model's head, the statistics ``needs`` names) from one pass over ``loader``; no pass
    when nothing but the head (and BatchNorm) is needed and the head is known without one.
    ``train_layers``: the layer statistics of ``spec``, from the same pass (``tapped_batches``)."""
    needs = tuple(needs)
    fc = known_head(model, head)
    if fc is not None and not set(needs) - {"batchnorm"}:
        return fc, TrainingPass(fc, needs).result(model)
    if loader is None:
        what = (
            ", ".join(n for n in needs if n != "batchnorm") or "its output layer (pass head='<name>' instead)"
        )
        raise UserError(f"the fit needs {what} from the training images: give a training loader")
    if "train_layers" in needs and spec is None:
        raise ValueError("train_layers: give the layers and statistics to tap (spec, a TapSpec)")
    accumulator, labels = None, LabelSource("training loader")
    for h, z, y, fc, layers in tapped_batches(model, loader, head, spec if "train_layers" in needs else None):
        accumulator = accumulator or TrainingPass(fc, needs)
        if not set(needs) - {"batchnorm"}:
            break  # the head was all this pass was for
        accumulator.add(h, labels(y, z) if accumulator.needs_labels else y, layers)
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


def computed_statistics(needs) -> tuple[str, ...]:
    """The statistics of ``needs`` that a pass over the training loader computes."""
    return tuple(n for n in needs if n not in LOADER_STATISTICS)


def loader_statistics(needs, loader) -> dict:
    """The statistics of ``needs`` that are the training ``loader`` itself (``LOADER_STATISTICS``)."""
    return {n: loader for n in needs if n in LOADER_STATISTICS}


def reads_layers(detector) -> bool:
    """Whether ``detector`` is a ``detectors.base.LayerDetector`` (scored with ``score_layers``;
    told by its method, so that this module need not import the base module that imports it)."""
    return detector.kind == "features" and callable(getattr(detector, "score_layers", None))


def fit_loader(
    detector, model: nn.Module, loader: Iterable, head: str | None = None, input_std=None, feature_layers=None
):
    """``detector`` fitted on ``model`` and one pass over the training ``loader``; returns it.

    A feature-level detector gets the model's head and the statistics its ``fit`` names
    (``training_statistics``); a network-level one the model, the input std (``input_std``, else
    ``input_std_of(loader)``) and the statistics its ``fit`` names after them (no pass without
    any). A detector with ``taps`` reads the layers ``feature_layers`` (``layer_names``); a
    ``LayerDetector`` keeps their names as ``feature_layers_`` for ``score_with_model``.
    """
    spec = tap_spec_of(model, [detector], feature_layers)
    needs = detector.needs()
    if detector.kind == "network":
        std = input_std if input_std is not None else input_std_of(loader, detector.name)
        computed = computed_statistics(needs)
        stats = training_statistics(model, loader, computed, head, spec)[1] if computed else {}
        return detector.fit(model, std, **stats, **loader_statistics(needs, loader))
    fc, stats = training_statistics(model, loader, needs, head, spec)
    detector.fit(fc, **stats)
    if reads_layers(detector):
        detector.feature_layers_ = spec.layers
    return detector


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
    elif reads_layers(detector):
        scores, logits = _score_layers(detector, model, x.to(device), head)
    else:
        with evaluating(model):
            h, _, _ = features_and_logits(model, x.to(device), head)
        with torch.no_grad():
            scores, logits = detector.score_batch(h.cpu())
    return scores.double().to(device), logits.to(device)


def _score_layers(detector, model: nn.Module, x: torch.Tensor, head: str | None):
    """(scores, logits) of a ``LayerDetector`` on a batch: its ``taps`` of the modules it was fitted
    on (``feature_layers_``) hooked in the one forward pass."""
    names = vars(detector).get("feature_layers_")
    if names is None:
        _ = detector.fc_  # not fitted at all: NotFittedError
        raise UserError(
            f"{detector.name}: the layers it reads are unknown; fit it with fit_loader(model, loader, "
            "feature_layers=[...]) or evaluate(), or set detector.feature_layers_ to the module names"
        )
    with evaluating(model), LayerTaps(model, TapSpec(tuple(names), detector.taps)) as taps:
        h, _, _, layers = tapped_forward(model, x, head, taps)
    with torch.no_grad():
        return detector.score_layers(h.cpu(), layers.block(0, len(h)))
