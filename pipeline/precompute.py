"""ID training statistics: one forward pass over the training set (cached), then LINe's class-mean
contributions and DICE's mean feature, written atomically with provenance records."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from detectors.statistics import class_mean_contributions, fill_empty_classes, mean_feature
from models.checkpoints import resolve_checkpoint
from util import distributed
from util.data import class_names
from util.datasets import ID_DATASETS, id_dataset
from util.errors import UserError
from util.features import CACHE_VERSION
from util.io import atomic_save_npy, atomic_write_json, sha256_file
from util.runtime import code_version, ensure_writable_dir

from . import setup
from .config import PrecomputeConfig
from .run_block import print_run_block
from .statistics import contributions_path, feat_stat_path


def precompute_all(config: PrecomputeConfig) -> list[str]:
    """The original ``precompute.py`` with no arguments: the statistics of every ID dataset
    (CIFAR-10, CIFAR-100, ImageNet) whose training data and checkpoint are present here, one
    line for each one skipped saying what is missing. Returns the datasets computed."""
    if config.checkpoint:
        raise UserError("--checkpoint names the weights of one network: give --in-dataset with it")
    present, skipped = [], []
    for in_dataset, spec in ID_DATASETS.items():
        one = replace(config, in_dataset=in_dataset)  # name and architecture resolved per dataset
        try:
            id_dataset(in_dataset, "train", one.data_root, None, download=False)
            resolve_checkpoint(
                one.checkpoint, in_dataset, one.name, one.model_arch, epoch=one.epochs, download=False
            )
        except UserError as exc:
            skipped.append(in_dataset)
            hint = (
                f"\n  (`python precompute.py --in-dataset {in_dataset}` downloads the data and checkpoint)"
                if spec.downloads
                else f"\n  ({spec.setup_hint or f'get it from {spec.source}'})"
            )
            print(f"skipping {in_dataset} ({one.model_arch}): {exc}{hint}")
            continue
        present.append(one)
    if not present:
        raise UserError(
            f"no ID dataset has both its training data under {config.data_root} and its checkpoint "
            "(see above); pass --data-root, or --in-dataset NAME to download a published one"
        )
    for one in present:
        print(f"==== {one.in_dataset} ({one.model_arch}, name {one.name})")
        precompute(one)
    if skipped:
        print(f"precomputed {', '.join(c.in_dataset for c in present)}; skipped {', '.join(skipped)}")
    return [c.in_dataset for c in present]


def precompute(config: PrecomputeConfig) -> None:
    """One pass over the ID training set (or its features from the cache), then LINe's class-mean
    contributions and DICE's mean feature written with their provenance."""
    config.device = distributed.setup(config.device)  # torchrun: join the process group
    start = time.time()
    ensure_writable_dir(config.cache_dir, "cache directory")
    model, model_key, checkpoint = setup.load_classifier(config)
    print_run_block(config, model, model_key, checkpoint)  # model, weights, input: before any forward pass
    train = setup.train_set(config, setup.transform(config))
    print(f"{config.label} training set: {len(train)} images; weights {setup.weights_source(checkpoint)}")

    extractor = setup.make_extractor(config, model, model_key)
    fs = extractor.extract(train, setup.tag(config, "train"))
    if not distributed.leave():  # torchrun: ranks > 0 are done; rank 0 goes on alone
        return
    if fs.from_cache:
        print(f"training features loaded from cache {fs.path} (no forward pass)")
    if fs.skipped:
        print(f"images: {fs.requested} requested, {len(fs.skipped)} unreadable skipped, {len(fs)} used")
    contrib, mean, counts = _statistics(fs, extractor.fc, checkpoint, train)
    empty = np.flatnonzero(counts == 0)
    provenance = {
        "code_version": code_version(),
        "in_dataset": config.label,
        "name": config.name,
        "model_arch": config.model_arch,
        "checkpoint": setup.weights_source(checkpoint),
        "inputs": setup.statistics_inputs(config),
        "checkpoint_sha256": model_key["checkpoint_sha256"],
        "num_images": int(len(fs)),
        "num_images_requested": int(fs.requested),
        "skipped_bad_images": fs.skipped,
        "cache_version": CACHE_VERSION,
        "max_samples": config.max_samples,
        "images_per_class": counts.tolist(),
        "classes_without_images": empty.tolist(),
        "empty_class_contributions": "h_mean * W[y]" if len(empty) else None,
        "feature_cache": str(fs.path),
    }
    _write_statistics(config, contrib, mean, provenance)
    print(
        f"precompute done in {time.time() - start:.1f} s "
        f"({extractor.images_forwarded} images through the network)"
    )


def _statistics(fs, fc, checkpoint, train) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class-mean contributions (C, D), mean feature (D,), images per class) of the training
    features; a class without images takes the mean feature's contribution, said once."""
    contrib, counts = class_mean_contributions(fc, fs.features, fs.labels)
    mean = mean_feature(fs.features)
    nonfinite = int(np.count_nonzero(~np.isfinite(contrib))) + int(np.count_nonzero(~np.isfinite(mean)))
    if nonfinite:
        raise UserError(
            f"{nonfinite} NaN or infinite values in the statistics of {fs.path}: checkpoint "
            f"{setup.weights_source(checkpoint)} gives non-finite features or logits; nothing was written"
        )
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        contrib = fill_empty_classes(contrib, counts, fc, mean)
        names = class_names(train)
        listed = ", ".join(f"{c} ({names[c]})" if c in names else str(c) for c in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        print(
            f"note: {len(empty)} of {len(counts)} classes have no training image: {listed}{more}. Their "
            "LINe contributions are those of the mean training feature, h_mean * W[y] "
            "(detectors.statistics.fill_empty_classes), not a class mean."
        )
    return contrib, mean, counts


def _write_statistics(config: PrecomputeConfig, contrib, mean, provenance: dict) -> None:
    """The contributions (D, C) float32 and the mean feature, each with a JSON record beside it; a
    --max-samples N subset's under their own names (``_nN``, ``pipeline/statistics.py``), never
    replacing the whole training set's."""
    contrib_file = contributions_path(
        config.cache_dir, config.label, config.name, max_samples=config.max_samples
    )
    stat_file = feat_stat_path(config.cache_dir, config.label, config.name, config.max_samples)
    atomic_save_npy(contrib_file, contrib.T.astype(np.float32))
    atomic_save_npy(stat_file, mean)
    for path, kind in ((contrib_file, "contributions"), (stat_file, "feat_stat")):
        atomic_write_json(
            path.with_suffix(".json"), {"kind": kind, "sha256": sha256_file(path), **provenance}
        )
    print(f"wrote {contrib_file} {tuple(contrib.T.shape)} and {stat_file} {mean.shape}")
