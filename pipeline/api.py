"""Evaluate detectors on your own model and loaders, in memory: the command line's evaluation as one
call.

    result = evaluate(model, ["line", "dice", "knn"], train_loader, test_loader,
                      {"svhn": svhn_loader}, in_dataset="cifar10")
    print(result)                 # the table ood_eval.py prints
    result["line"].ood["svhn"]    # FPR95 (both conventions), AUROC, AUPR_IN, AUPR_OUT
    result.scores["line"]["in"]   # per-image scores, higher = more in-distribution

One forward pass per image: the training loader once (the statistics every detector's ``fit``
names, ``detectors.from_loader.TrainingPass``), the ID test and OOD loaders once for all
feature-level detectors; network-level detectors (ODIN, RankFeat) run the model on the images
themselves. With ``cache_dir`` the features go through the feature cache (``util.features``), so a
second call forwards nothing, for loaders whose images can be named (the repository's datasets,
torchvision's ImageFolder/DatasetFolder, in loader order, unshuffled). The metrics, the table and
``to_dict()`` are ``pipeline.report``'s, as ``ood_eval.py`` writes them.

Multi-layer detectors (those with ``taps``: ``LayerDetector``s such as gram, and network-level
ones that fit on ``train_layers`` such as mds_ensemble) read statistics of intermediate layers
(``util.layer_taps``), reduced by hooks in the same forward pass: of the training loader, and of
every test loader for the ``LayerDetector``s; the modules are ``feature_layers`` or the built-in
architecture's default (``detectors.from_loader.layer_names``).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import SequentialSampler

from detectors import registry
from detectors.base import Detector, LayerDetector, score_features
from detectors.from_loader import (
    LabelSource,
    TrainingPass,
    batch_parts,
    batchnorm_statistics,
    computed_statistics,
    flat_layers,
    input_std_of,
    loader_statistics,
    tap_spec_of,
    tapped_batches,
    training_statistics,
)
from models.split import evaluating, features_and_logits, known_head, model_device
from util.datasets import canonical_id_name
from util.errors import UserError
from util.features import CACHE_VERSION, FeatureCache, taps_record
from util.io import row_blocks
from util.layer_taps import LayerArrays, TapSpec, tap_kinds

from . import report

NO_LABEL = -1  # stored in the feature cache for images whose batches hold no label


@dataclass
class Evaluation:
    """The metrics and per-image scores of every detector; ``print`` gives ``ood_eval.py``'s table.

    ``results`` {method: ``report.MethodResult``}: per OOD set (``.ood``) and on average
    (``.average``) FPR95 (ID positive), FPR95_OOD_POSITIVE (OpenOOD's), AUROC, AUPR_IN, AUPR_OUT as
    fractions; ``.id_accuracy`` (NaN when the ID loader gives no labels); ``.scores`` {set: (N,)},
    ``in`` for the ID test set, higher = more in-distribution.
    """

    in_dataset: str
    name: str
    ood_names: list[str]
    results: dict[str, report.MethodResult] = field(default_factory=dict)
    fpr_convention: str = "id"

    def __getitem__(self, method: str) -> report.MethodResult:
        return self.results[method]

    def __str__(self) -> str:
        return self.table()

    def table(self, fpr_convention: str | None = None) -> str:
        """One method: ``report.single_table``; several: ``report.methods_table``."""
        convention = fpr_convention or self.fpr_convention
        results = list(self.results.values())
        if len(results) == 1:
            return report.single_table(
                result=results[0], in_dataset=self.in_dataset, name=self.name, fpr_convention=convention
            )
        return report.methods_table(
            results=results,
            names=self.ood_names,
            in_dataset=self.in_dataset,
            name=self.name,
            fpr_convention=convention,
        )

    @property
    def scores(self) -> dict[str, dict[str, np.ndarray]]:
        """{method: {set: per-image scores}}, ``in`` the ID test set; higher = more in-distribution."""
        return {m: r.scores for m, r in self.results.items()}

    def to_dict(self, scores: bool = False) -> dict:
        """JSON-able: {method: results.json's content}, with the per-image scores as lists when asked."""
        methods = {}
        for method, r in self.results.items():
            methods[method] = r.as_json()
            if scores:
                methods[method]["scores"] = {k: np.asarray(v).tolist() for k, v in r.scores.items()}
        return {
            "in_dataset": self.in_dataset,
            "model": self.name,
            "ood_sets": self.ood_names,
            "methods": methods,
        }

    def add_scores(
        self, method: str, id_scores, ood_scores: dict, higher_is: str = "id", id_accuracy: float = math.nan
    ) -> report.MethodResult:
        """A row for scores made elsewhere (another library's detector): ``ood_scores`` {set: scores}
        for every OOD set of this evaluation; ``higher_is="ood"`` for higher-is-OOD scores
        (pytorch-ood's), which are negated so that every row is higher-is-ID."""
        if higher_is not in ("id", "ood"):
            raise ValueError(f"higher_is must be 'id' or 'ood', not {higher_is!r}")
        missing = [n for n in self.ood_names if n not in ood_scores]
        if missing:
            raise UserError(f"add_scores({method!r}): no scores of OOD set {', '.join(missing)}")
        sign = 1.0 if higher_is == "id" else -1.0
        scores = {
            k: sign * np.asarray(v, dtype=np.float64).ravel()
            for k, v in {"in": id_scores, **ood_scores}.items()
        }
        settings = {"detector": {"source": "given scores", "higher_is": higher_is}, "method": method}
        self.results[method] = report.method_result(method, scores, id_accuracy, self.ood_names, settings)
        return self.results[method]


def evaluate(
    model: nn.Module,
    detectors,
    train_loader,
    id_loader,
    ood_loaders: dict,
    *,
    in_dataset: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    head: str | None = None,
    input_std=None,
    name: str | None = None,
    fpr_convention: str = "id",
    feature_layers=None,
) -> Evaluation:
    """Fit every detector on ``train_loader`` and score ``id_loader`` and each of ``ood_loaders``
    ({set name: loader}) with ``model`` (left as it was); returns an ``Evaluation``.

    ``detectors``: names (one or a list; ``registry`` names such as ``line``, ``dice``,
    ``ash_s``) with the papers' settings for ``in_dataset``'s preset (``cifar10``, ``CIFAR-100``,
    ``imagenet``, ...; none: each detector's own defaults), or configured ``Detector`` objects.
    ``head``: the name of the model's output Linear where it is not found by itself
    (``models.split``); ``input_std``: ODIN's per-channel std (default: the loaders' Normalize);
    ``name``: the model's name in the table (default: its class name); ``feature_layers``: the
    modules the multi-layer detectors read (names as in ``model.named_modules()``; default: the
    built-in architecture's, ``models.default_layers``; required for other models).
    """
    if fpr_convention not in ("id", "ood"):
        raise ValueError(f"fpr_convention must be 'id' or 'ood', not {fpr_convention!r}")
    runs = build_detectors(detectors, in_dataset)
    label = (canonical_id_name(in_dataset) or in_dataset) if in_dataset else "ID data"
    name = name or type(model).__name__
    ood_names = list(ood_loaders)
    if not ood_names:
        raise UserError("ood_loaders is empty: give at least one {name: loader} of OOD images")
    loaders = {"in": id_loader, **ood_loaders}
    cache = FeatureCache(cache_dir, model_key(model, head)) if cache_dir is not None else None
    spec = tap_spec_of(model, runs, feature_layers)  # the layer statistics the detectors read, if any
    by_features = [d for d in runs if d.kind != "network"]
    # one training pass for all (AdaSCALE's training images are the loader itself)
    needs = computed_statistics(dict.fromkeys(n for d in runs for n in d.needs()))
    fc, stats, sets = None, {}, {}
    if by_features:
        taps = (spec, _set_taps(spec, runs))
        fc, stats, sets = _features(model, needs, train_loader, loaders, head, cache, f"{label}_{name}", taps)
    elif needs:
        fc, stats = _training(model, train_loader, needs, head, cache, f"{label}_{name}", spec)
    out = Evaluation(label, name, ood_names, fpr_convention=fpr_convention)
    for detector in runs:
        try:
            if detector.kind == "network":
                scores, preds, labels = _network_scores(
                    detector, model, loaders, train_loader, input_std, stats
                )
            else:
                scores, preds, labels = _feature_scores(detector, fc, stats, sets, spec)
        except ValueError as exc:  # a setting the data cannot take (k above the training images)
            raise UserError(f"{detector.run_name()}: {exc}") from None
        result = _result(detector, scores, preds, labels, ood_names, label, name, spec)
        out.results[detector.run_name()] = result
    return out


def _set_taps(spec: TapSpec | None, runs) -> TapSpec | None:
    """The layer statistics of the test loaders: those the ``LayerDetector``s read (network-level
    detectors run the model on the test images themselves)."""
    kinds = tap_kinds(d for d in runs if isinstance(d, LayerDetector))
    return TapSpec(spec.layers, kinds) if kinds else None


def _feature_scores(detector, fc, stats: dict, sets: dict, spec: TapSpec | None):
    """(scores, predictions, ID labels or None) of a feature-level detector fitted on ``stats``; a
    ``LayerDetector`` keeps the names of the layers it read (``feature_layers_``)."""
    detector.fit(fc, **{k: stats[k] for k in detector.needs()})
    if isinstance(detector, LayerDetector):
        detector.feature_layers_ = spec.layers
    scores, preds = score_sets_of(detector, sets)
    return scores, preds, sets["in"][2]


def _features(model, needs, train_loader, loaders: dict, head, cache, prefix: str, taps=(None, None)):
    """(the head, the training statistics ``needs`` names, (features, logits, labels, layers) of
    each test loader): every image forwarded once (or read from the cache). ``taps``: the layer
    statistics of the training loader and of the test loaders (None: none)."""
    fc, stats = _training(model, train_loader, needs, head, cache, prefix, taps[0])
    sets = {
        k: _set_features(model, loader, k, head, cache, f"{prefix}_{k}", taps[1])
        for k, loader in loaders.items()
    }
    if fc is None:
        fc = _head(model, loaders["in"], head, sets["in"][0].shape[1], sets["in"][1].shape[1])
    if "batchnorm" in needs and "batchnorm" not in stats:
        stats["batchnorm"] = batchnorm_statistics(model, fc.in_features)
    if sets["in"][2] is None:
        print("ID test loader: the batches hold no labels, so the table's ID accuracy is nan")
    return fc, stats, sets


def build_detectors(detectors, in_dataset: str | None) -> list[Detector]:
    """Detector objects of names (``registry.build`` with ``in_dataset``'s preset, or each class's
    own defaults without one, said once) and of configured detectors, each run name once."""
    items = [detectors] if isinstance(detectors, (str, Detector)) else list(detectors)
    out = []
    for item in items:
        if isinstance(item, Detector):
            out.append(item)
        elif isinstance(item, str):  # without in_dataset: the detector's own defaults
            out.append(registry.build(item, in_dataset))
        else:
            raise UserError(f"a detector is a method name or a Detector object, not {type(item).__name__}")
    if any(isinstance(i, str) for i in items) and not in_dataset:
        print(
            "detectors by name: each detector's own defaults (in_dataset='cifar10', 'imagenet', ... "
            "for the papers' settings)"
        )
    names = [d.run_name() for d in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"detector {', '.join(twice)} given twice: configure each run once (its table row)")
    if not out:
        raise UserError("no detector given: name one (e.g. 'line') or pass a Detector")
    return out


def model_key(model: nn.Module, head: str | None) -> dict:
    """What identifies ``model`` in the feature cache: its class, the sha256 of its state_dict
    (names, dtypes, shapes and bytes) and the head named."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    cls = type(model)
    return {
        "arch": f"python:{cls.__module__}.{cls.__qualname__}",
        "checkpoint_sha256": digest.hexdigest(),
        "head": head,
    }


class LoaderImages:
    """A loader's images as the feature cache keys them: which images in which order
    (``fingerprint``), and the transform. ``cacheable`` says why not when they cannot be named."""

    def __init__(self, loader):
        self.loader = loader
        self.dataset = getattr(loader, "dataset", None)
        self.transform = getattr(self.dataset, "transform", None)
        self.target_transform = getattr(self.dataset, "target_transform", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def problem(self) -> str | None:
        """None when the images can be cached, else why not."""
        if self.dataset is None or not hasattr(self.dataset, "__len__"):
            return "it is not a DataLoader over a dataset of known length"
        if not isinstance(getattr(self.loader, "sampler", None), SequentialSampler):
            return "it shuffles or samples (the cache holds the dataset in order)"
        if getattr(self.loader, "drop_last", False) and len(self.dataset) % (self.loader.batch_size or 1):
            return "it drops its last batch"
        if not hasattr(self.dataset, "fingerprint") and not hasattr(self.dataset, "samples"):
            return f"its {type(self.dataset).__name__} names no files (an ImageFolder or DatasetFolder does)"
        return None

    def fingerprint(self) -> dict:
        if hasattr(self.dataset, "fingerprint"):
            return self.dataset.fingerprint()
        digest = hashlib.sha256()
        for path, target in self.dataset.samples:
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}\t{target}\n".encode())
        return {
            "kind": "samples",
            "class": type(self.dataset).__name__,
            "n": len(self.dataset.samples),
            "files_sha256": digest.hexdigest(),
            "target_transform": repr(self.target_transform),
        }


def _training(model, loader, needs, head, cache, prefix: str, spec=None) -> tuple[nn.Linear | None, dict]:
    """(the head or None, the statistics ``needs`` names) from the training loader: streamed in one
    pass, or through the feature cache; ``train_layers``: the layer statistics of ``spec``."""
    if not set(needs) - {"batchnorm"}:
        fc = known_head(model, head)
        return fc, (TrainingPass(fc, needs).result(model) if fc is not None and needs else {})
    if loader is None:
        raise UserError(f"the detectors fit on {', '.join(needs)} of the training images: give train_loader")
    images = LoaderImages(loader)
    if cache is None or images.problem() is not None:
        _say_uncached(cache, images, "training loader")
        fc, stats = training_statistics(model, loader, needs, head, spec)
        print(f"training loader: statistics ({', '.join(needs)}) from one pass")
        return fc, stats
    tapped = spec if "train_layers" in needs else None
    features, logits, labels, layers = _cached(
        model, loader, images, head, cache, f"{prefix}_train", "training loader", tapped
    )
    fc = _head(model, loader, head, features.shape[1], logits.shape[1])
    accumulator, source = TrainingPass(fc, needs), LabelSource("training loader")
    for start, block in zip(range(0, len(features), 8192), row_blocks(features, 8192)):
        y, z = labels[start : start + len(block)], logits[start : start + len(block)]
        given = None if (y == NO_LABEL).any() else torch.from_numpy(np.asarray(y))
        if accumulator.needs_labels:  # the predictions stand in only where a statistic needs labels
            given = source(given, torch.from_numpy(np.array(z)))
        rows = layers.rows(slice(start, start + len(block))) if tapped is not None else None
        accumulator.add(torch.from_numpy(np.array(block)), given, rows)
    return fc, accumulator.result(model)


def _say_uncached(cache, images: LoaderImages, what: str) -> None:
    if cache is not None:
        print(f"{what}: not cached, {images.problem()}; features computed in memory")


def _set_features(model, loader, key: str, head, cache, tag: str, spec: TapSpec | None = None) -> tuple:
    """(features (N, D), logits (N, C), labels (N,) or None, LayerArrays of ``spec`` or None) of one
    test loader: one forward pass, or the feature cache's entry."""
    what = "ID test loader" if key == "in" else f"OOD loader {key}"
    images = LoaderImages(loader)
    if cache is not None and images.problem() is None:
        features, logits, labels, layers = _cached(model, loader, images, head, cache, tag, what, spec)
        return features, logits, (None if (labels == NO_LABEL).any() else np.asarray(labels)), layers
    _say_uncached(cache, images, what)
    h, z, y, e = [], [], [], []
    for hb, zb, yb, _, layers in tapped_batches(model, loader, head, spec):
        h.append(hb.numpy())
        z.append(zb.numpy())
        y.append(None if yb is None else yb.numpy())
        e.append(layers)
    if not h:
        raise UserError(f"the {what} gave no images")
    print(f"{what}: {sum(len(b) for b in h)} images (forward pass)")
    labels = None if any(b is None for b in y) else np.concatenate(y).astype(np.int64)
    layers = LayerArrays.concatenate(e) if spec is not None else None
    return np.concatenate(h), np.concatenate(z), labels, layers


def _cached(model, loader, images: LoaderImages, head, cache: FeatureCache, tag: str, what: str, spec=None):
    """(features, logits, labels, layers) of a loader from its cache entry (``layers``: the
    statistics of ``spec``, or None), filled by one pass when absent or without them."""
    cache.taps = spec
    problem = cache.problem(images, tag)
    if problem is None:
        fs = cache.load(images, tag)
        print(f"{what}: {len(fs)} images, features from the cache {fs.path}")
        return fs.features, fs.logits, fs.labels, fs.layers
    spec = cache.taps_to_write(images, tag)  # before the old entry goes: the kinds it held are kept
    cache.discard(images, tag, problem)
    entry = cache.entry(images, tag)
    shutil.rmtree(
        entry.with_name(entry.name + ".partial"), ignore_errors=True
    )  # no resuming: a loader restarts
    partial, start = None, 0
    for h, z, y, fc, layers in tapped_batches(model, loader, head, spec):
        e, shapes = flat_layers(layers, spec) if spec is not None else (None, None)
        if partial is None:
            record = taps_record(spec, shapes) if spec is not None else None
            partial = cache.open_partial(images, tag, fc.in_features, fc.out_features, record)
        y = np.full(len(h), NO_LABEL, np.int64) if y is None else y.numpy()
        partial.write(start, h.numpy(), z.numpy(), y, e)
        start += len(h)
    if partial is None or start != len(images):
        raise UserError(f"the {what} gave {start} images of its dataset's {len(images)}")
    partial.finalise()
    fs = cache.load(images, tag)
    print(f"{what}: {len(fs)} images (forward pass, now cached in {fs.path}, cache version {CACHE_VERSION})")
    return fs.features, fs.logits, fs.labels, fs.layers


def _head(model, loader, head, dim: int, classes: int) -> nn.Linear:
    """The model's output Linear for cached features (D = ``dim``, C = ``classes``): named or
    ``get_classifier()``, else the one Linear of that shape, else found by running one image."""
    fc = known_head(model, head)
    if fc is not None:
        return fc
    shaped = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (dim, classes)
    ]
    if len(shaped) == 1:
        return shaped[0]
    with evaluating(model):
        for batch in loader:
            x, _ = batch_parts(batch)
            return features_and_logits(model, x[:1].to(model_device(model)), head)[2]
    raise UserError("the loader gave no batch: the model's output layer cannot be found")


def score_sets_of(detector: Detector, sets: dict) -> tuple[dict, dict]:
    """(scores, predicted classes) per set by ``score_features``, as ``ood_eval.py`` scores them
    (a ``LayerDetector`` with the set's layer statistics)."""
    scored = {
        k: score_features(detector, features, layers=layers) for k, (features, _, _, layers) in sets.items()
    }
    return {k: s for k, (s, _) in scored.items()}, {k: p for k, (_, p) in scored.items()}


def _network_scores(
    detector, model, loaders: dict, train_loader, input_std, stats: dict
) -> tuple[dict, dict, np.ndarray | None]:
    """(scores, predictions, ID labels or None) of a network-level detector fitted on the model,
    the input std and the training statistics its ``fit`` names (``stats``), batch by batch."""
    loader = train_loader if train_loader is not None else loaders["in"]
    std = input_std if input_std is not None else input_std_of(loader, detector.name)
    computed = {k: stats[k] for k in computed_statistics(detector.needs())}
    detector.fit(model, std, **computed, **loader_statistics(detector.needs(), loader))
    scores, preds, labels = {}, {}, None
    device = model_device(model)
    for key, loader in loaders.items():
        s, p, y = [], [], []
        with evaluating(model):
            for batch in loader:
                x, yb = batch_parts(batch)
                sb, zb = detector.score_images(x.to(device))
                s.append(sb.double().cpu().numpy())
                p.append(zb.argmax(1).cpu().numpy())
                y.append(None if yb is None else yb.numpy())
        scores[key], preds[key] = np.concatenate(s), np.concatenate(p)
        if key == "in" and not any(b is None for b in y):
            labels = np.concatenate(y)
    return scores, preds, labels


def _result(detector, scores, preds, labels, ood_names, label, name, spec=None) -> report.MethodResult:
    """The ``MethodResult`` of one detector: metrics per set and on average, ID accuracy."""
    report.check_scores(scores)
    accuracy = math.nan if labels is None else float(np.mean(preds["in"] == labels))
    settings = {
        "method": detector.run_name(),
        "detector": {**detector.get_params(), **detector.fitted_values()},
        "in_dataset": label,
        "model": name,
        "num_images": {k: len(v) for k, v in scores.items()},
    }
    if getattr(detector, "taps", ()):  # a multi-layer detector: the modules it read
        settings["feature_layers"] = list(spec.layers)
    return report.method_result(detector.run_name(), scores, accuracy, ood_names, settings)
