"""From a run configuration to the classifier, its input transform, the datasets and the extractor."""

from __future__ import annotations

from pathlib import Path

from models import get_model, input_normalization
from models.checkpoints import resolve_checkpoint
from util.data import (
    IN_DATASETS,
    balanced_subset,
    default_ood_sets,
    id_dataset,
    id_transform,
    missing_ood_message,
    normalization,
    ood_available,
    ood_dataset,
    spread_subset,
)
from util.errors import UserError
from util.features import FeatureExtractor
from util.io import sha256_file

from .config import RunConfig


def num_classes(config: RunConfig) -> int:
    return IN_DATASETS[config.in_dataset]


def load_classifier(config: RunConfig):
    """(model, model_key, checkpoint_path); model_key identifies the weights in the cache keys."""
    checkpoint = resolve_checkpoint(
        config.checkpoint, config.in_dataset, config.name, config.model_arch, epoch=config.epochs
    )
    model = get_model(config.model_arch, num_classes(config), checkpoint)
    model_key = {
        "arch": config.model_arch,
        "num_classes": num_classes(config),
        "checkpoint_sha256": sha256_file(checkpoint),
    }
    return model, model_key, checkpoint


def transform(config: RunConfig):
    """The ID transform, normalised as the architecture expects (BiT: mean = std = 0.5)."""
    return id_transform(config.in_dataset, input_normalization(config.model_arch))


def input_std(tf) -> tuple[float, ...]:
    """The per-channel std the transform normalises with (ODIN's perturbation is in pixel units)."""
    return tuple(float(s) for s in normalization(tf).std)


def make_extractor(config: RunConfig, model, model_key: dict) -> FeatureExtractor:
    return FeatureExtractor(
        model,
        model_key,
        config.cache_dir,
        device=config.device,
        batch_size=config.batch_size,
        num_workers=config.workers,
        progress=config.progress,
        precision=config.precision,
        skip_bad_images=config.skip_bad_images,
    )


def tag(config: RunConfig, set_name: str) -> str:
    """Cache tag of a set: ``{in_dataset}_{name}_{train|test|<OOD set>}``."""
    return f"{config.in_dataset}_{config.name}_{set_name}"


def train_set(config: RunConfig, tf):
    """The ID training set; with ``max_samples``, its fixed class-balanced subset of that many images
    (``balanced_subset``), the same in precompute.py, ood_eval.py and sweep.py."""
    train = id_dataset(config.in_dataset, "train", config.data_root, tf)
    if config.max_samples:
        train = balanced_subset(train, config.max_samples, num_classes(config))
    return train


def test_sets(
    config: RunConfig, tf, requested: list[str] | None, extra: tuple[str, ...] = (), ood: bool = True
):
    """(sets, OOD names): the ID test set (key ``in``), then ``extra`` and the OOD sets
    (``ood_set_names``), each limited to ``max_samples`` images spread over the set. With
    ``ood=False`` (--in-dist-only) only the ID set is built, and the OOD names are those requested
    or found, none required."""
    in_test = id_dataset(config.in_dataset, "test", config.data_root, tf)
    sets = {"in": spread_subset(in_test, config.max_samples)}
    if not ood:
        found = [n for n in default_ood_sets(config.in_dataset) if ood_available(n, config.data_root)]
        return sets, list(requested or found)
    names = ood_set_names(config.in_dataset, config.data_root, requested)
    for name in [*extra, *names]:
        sets[name] = spread_subset(ood_dataset(name, config.data_root, tf), config.max_samples)
    return sets, names


def set_tag(config: RunConfig, key: str) -> str:
    return tag(config, "test" if key == "in" else key)


def ood_set_names(in_dataset: str, data_root: str, requested: list[str] | None) -> list[str]:
    """Requested OOD sets (all must exist); by default the papers' sets found, one line per absent one."""
    if requested:
        missing = [n for n in requested if not ood_available(n, data_root)]
        if missing:
            raise UserError("\n".join(missing_ood_message(n, data_root) for n in missing))
        return list(requested)
    names = []
    for name in default_ood_sets(in_dataset):
        if ood_available(name, data_root):
            names.append(name)
        else:
            print(f"skipping {missing_ood_message(name, data_root)}")
    if not names:
        raise UserError(
            f"no OOD set found under {Path(data_root) / 'ood_datasets'}; download "
            "one of the sets above or pass --out-datasets NAME_OR_FOLDER"
        )
    return names
