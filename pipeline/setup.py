"""From a run configuration to the classifier, its input transform, the datasets and the extractor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from models import as_classifier, build_model, input_normalization, preferred_input, preferred_input_source
from models.checkpoints import published_weights, resolve_checkpoint
from models.external import code_sha256, weights_sha256
from models.weights import WEIGHTS, Weights
from util.data import balanced_subset, folder_classes, normalization, spread_subset
from util.datasets import NOISE_SIZE, OOD_SETS, id_dataset, ood_dataset, present_ood_sets
from util.errors import UserError
from util.features import FeatureExtractor
from util.inputs import InputSpec
from util.io import sha256_file
from util.openood import get_benchmark, list_dataset

from .config import RunConfig


def num_classes(config: RunConfig) -> int:
    """The classifier's outputs: what the in-dataset implies (CIFAR-10: 10, ImageNet: 1000; an image
    folder: its classes, or the class map's largest index + 1), or --num-classes where it does not."""
    if config.benchmark is not None:
        implied = get_benchmark(config.benchmark).num_classes
        if config.num_classes not in (None, implied):
            raise UserError(f"--num-classes {config.num_classes}: {config.benchmark} has {implied} classes")
        return implied
    if config.id_root is None:
        implied = config.dataset.num_classes
        if config.num_classes not in (None, implied):
            raise UserError(f"--num-classes {config.num_classes}: {config.in_dataset} has {implied} classes")
        return implied
    needed = max(folder_classes(config.id_root, config.class_map).values()) + 1
    if config.num_classes is None:
        return needed
    if config.class_map is None and config.num_classes != needed:
        raise UserError(
            f"--num-classes {config.num_classes}: {config.id_root}/train has {needed} class folders, "
            f"labelled 0..{needed - 1} by sorted name; for a head with other outputs, say which output "
            "each folder is with --class-map FILE"
        )
    if config.num_classes < needed:
        raise UserError(
            f"--num-classes {config.num_classes} is too few: {config.class_map or config.id_root} "
            f"needs {needed} outputs"
        )
    return config.num_classes


def load_classifier(config: RunConfig):
    """(model, model_key, checkpoint_path); model_key identifies the network and its weights in the
    cache keys: architecture, classes, the checkpoint's sha256 (a digest of the state_dict when the
    weights come from a library or a user's function), and the output layer when named."""
    classes = num_classes(config)
    checkpoint = resolve_checkpoint(
        config.checkpoint,
        config.in_dataset,
        config.name,
        config.model_arch,
        epoch=config.epochs,
        num_classes=classes,
    )
    raw = build_model(config.model_arch, classes, checkpoint, pretrained=checkpoint is None)
    digest = sha256_file(checkpoint) if checkpoint is not None else f"state_dict:{weights_sha256(raw)}"
    model = as_classifier(raw, config.model_arch, input_spec(config).crop, config.head)
    out = model.get_classifier().out_features
    if out != classes:
        raise UserError(
            f"{config.model_arch} has {out} outputs, but {config.in_dataset} needs {classes}; pass a model "
            "with that many, or for an image folder --num-classes with --class-map (which output each "
            "folder is)"
        )
    model_key = {"arch": config.model_arch, "num_classes": classes, "checkpoint_sha256": digest}
    if config.head is not None:
        model_key["head"] = config.head
    code = code_sha256(config.model_arch)
    if code is not None:  # a user's function: its source decides the features too
        model_key["code_sha256"] = code
    return model, model_key, checkpoint


def weights_source(checkpoint) -> str:
    """The checkpoint path, or where weights without a file came from (for messages and records)."""
    return str(checkpoint) if checkpoint is not None else "(the library's or the function's own weights)"


def statistics_inputs(config: RunConfig) -> dict:
    """What besides the network decides the training statistics: the image folder, the class map,
    the input transform and the named head. precompute.py records it; ood_eval.py checks it."""
    return {
        "id_root": config.id_root,
        "class_map_sha256": sha256_file(config.class_map) if config.class_map else None,
        "input": repr(input_spec(config)),
        "head": config.head,
        "benchmark": config.benchmark,
    }


def input_spec(config: RunConfig) -> InputSpec:
    """Resize, crop and normalisation of the ID images (and of the noise OOD sets).

    The dataset spec's input (CIFAR: 32 px, CIFAR statistics; ImageNet and image folders: Resize
    256, CenterCrop 224, ImageNet statistics). Where the spec takes the model's input
    (``model_input``: full-size images) the model's preferred input replaces it (built-in spec,
    torchvision weights' transforms, timm's config); elsewhere only a built-in architecture's own
    normalisation does (BiT: mean = std = 0.5). --image-size (the crop; the resize keeps the
    resize/crop ratio), --mean and --std override. ``input_choice`` also says where each part
    came from.
    """
    return input_choice(config)[0]


def input_choice(config: RunConfig) -> tuple[InputSpec, dict[str, str]]:
    """(``input_spec``, where its parts came from: ``size`` (resize and crop), ``mean``, ``std``
    -> the dataset spec's default, the model's weights spec / torchvision's / timm's, a flag)."""
    dataset = config.dataset
    spec = dataset.input
    default = (
        f"the {dataset.name} dataset spec's default"
        if config.id_root is None
        else "the image-folder default (ImageNet's input)"
    )
    source = dict.fromkeys(("size", "mean", "std"), default)
    model_source = preferred_input_source(config.model_arch)
    if dataset.model_input and preferred_input(config.model_arch) is not None:
        spec = preferred_input(config.model_arch)
        source = dict.fromkeys(source, model_source)
    elif not dataset.model_input and input_normalization(config.model_arch) is not None:
        norm = input_normalization(config.model_arch)
        spec = replace(spec, mean=tuple(norm[0]), std=tuple(norm[1]))
        source.update(mean=model_source, std=model_source)
    if config.image_size is not None:
        resize = round(config.image_size * spec.resize / spec.crop)
        spec = replace(spec, resize=resize, crop=config.image_size)
        source["size"] = f"--image-size {config.image_size}"
    if config.mean is not None:
        spec = replace(spec, mean=tuple(config.mean))
        source["mean"] = "--mean"
    if config.std is not None:
        spec = replace(spec, std=tuple(config.std))
        source["std"] = "--std"
    return spec, source


def known_weights(config: RunConfig, model_key: dict) -> Weights | None:
    """The published weights spec (``models.weights``) of the run's weights, or None: the one whose
    sha256 the checkpoint's digest starts with, or without --checkpoint the published weights the
    run took when their spec has no sha256 to compare (BiT)."""
    digest = model_key["checkpoint_sha256"]
    for weights in WEIGHTS.values():
        if weights.sha256 and weights.arch == config.model_arch and digest.startswith(weights.sha256):
            return weights
    if config.checkpoint is None and not digest.startswith("state_dict:"):
        weights = published_weights(
            config.in_dataset, config.name, config.model_arch, config.epochs, model_key["num_classes"]
        )
        if weights is not None and weights.sha256 is None:
            return weights
    return None


def trained_input(config: RunConfig, model_key: dict, checkpoint) -> tuple[InputSpec, str] | None:
    """(the input the run's weights were trained with, where that is known from), or None when it
    is not known: a published weights spec they match, or a library's own pretrained weights
    (no checkpoint file: torchvision's weights transforms, timm's config)."""
    weights = known_weights(config, model_key)
    if weights is not None:
        return weights.input, f"the weights spec of {weights.source}"
    source = preferred_input_source(config.model_arch) if checkpoint is None else None
    spec = preferred_input(config.model_arch) if source is not None else None
    return (spec, source) if spec is not None else None


def transform(config: RunConfig):
    """The ID transform (``input_spec``)."""
    return input_spec(config).transform()


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
    """Cache tag of a set: ``{in_dataset or benchmark}_{name}_{train|test|<OOD set>}``."""
    return f"{config.label}_{config.name}_{set_name}"


def train_set(config: RunConfig, tf):
    """The ID training set; with ``max_samples``, its fixed class-balanced subset of that many images
    (``balanced_subset``), the same in precompute.py, ood_eval.py and sweep.py. With --benchmark, the
    benchmark's ID training list."""
    if config.benchmark is not None:
        bench = get_benchmark(config.benchmark)
        train = list_dataset(config.data_root, bench, "train", bench.id_set, tf, labelled=True)
        return (
            balanced_subset(train, config.max_samples, num_classes(config)) if config.max_samples else train
        )
    train = id_dataset(
        config.in_dataset, "train", config.data_root, tf, id_root=config.id_root, class_map=config.class_map
    )
    if config.max_samples:
        train = balanced_subset(train, config.max_samples, num_classes(config))
    return train


def test_sets(
    config: RunConfig,
    tf,
    requested: list[str] | None,
    extra: tuple[str, ...] = (),
    ood: bool = True,
    val: bool = False,
):
    """(sets, OOD names): the ID test set (key ``in``), then ``extra`` and the OOD sets
    (``ood_set_names``), each limited to ``max_samples`` images spread over the set (the OOD sets
    also to ``max_ood_samples``). With
    ``ood=False`` (--in-dist-only) only the ID set is built, and the OOD names are those requested
    or found, none required. With --benchmark, the benchmark's lists (``benchmark_sets``; ``val``:
    its validation lists too)."""
    if config.benchmark is not None:
        return benchmark_sets(config, tf, requested, ood=ood, val=val)
    in_test = id_dataset(
        config.in_dataset, "test", config.data_root, tf, id_root=config.id_root, class_map=config.class_map
    )
    sets = {"in": spread_subset(in_test, config.max_samples)}
    if not ood:
        found, _ = present_ood_sets(config.dataset.ood_sets, config.data_root)
        return sets, list(requested or found)
    names = ood_set_names(config.dataset.ood_sets, config.data_root, requested)
    noise = noise_size(config, len(sets["in"]))
    for name in [*extra, *names]:
        limits = [n for n in (config.max_samples, getattr(config, "max_ood_samples", None)) if n]
        sets[name] = spread_subset(ood_dataset(name, config.data_root, tf, noise), min(limits, default=None))
    return sets, names


def noise_size(config: RunConfig, id_test_size: int) -> int:
    """Images of each synthetic OOD set (gaussian, uniform): --noise-samples, else as many as the ID
    test set scored, at most ``NOISE_SIZE``. Image i is seeded by i, so a smaller set is the first
    images of a larger one (their scores are the same)."""
    return getattr(config, "noise_samples", None) or min(id_test_size, NOISE_SIZE)


def noise_note(config: RunConfig, datasets: dict) -> str | None:
    """The line saying how many images each synthetic OOD set of ``datasets`` has, and why."""
    noise = [k for k in datasets if k in OOD_SETS and OOD_SETS[k].synthetic]
    if not noise:
        return None
    counts = sorted({len(datasets[k]) for k in noise})
    asked = getattr(config, "noise_samples", None)
    why = (
        f"--noise-samples {asked}"
        if asked
        else f"as many as the ID test set, at most {NOISE_SIZE:,}; --noise-samples N for another number"
    )
    intended = noise_size(config, len(datasets["in"])) if "in" in datasets else asked
    if intended and counts[-1] < intended:
        why += "; fewer by --max-samples / --max-ood-samples"
    each = "/".join(str(c) for c in counts)
    return f"noise sets {', '.join(noise)}: {each} images each ({why})"


def benchmark_sets(config: RunConfig, tf, requested: list[str] | None, ood: bool = True, val: bool = False):
    """(sets, OOD names) of an OpenOOD benchmark: the ID test list (key ``in``) and its near- and
    far-OOD test lists (all of them, or those ``requested``), in OpenOOD's order; with ``val`` also
    the validation lists, ID (key ``in_val``) and OOD (key ``val_<set>``). ``max_samples`` and
    ``max_ood_samples`` limit each set as elsewhere."""
    bench = get_benchmark(config.benchmark)
    unknown = [n for n in requested or () if n not in bench.test_sets]
    if unknown:
        raise UserError(
            f"--out-datasets {' '.join(unknown)}: {bench.name} has the OOD sets "
            f"{', '.join(bench.test_sets)} (near: {', '.join(bench.near)}; far: {', '.join(bench.far)})"
        )
    names = [n for n in bench.test_sets if not requested or n in requested]
    root = config.data_root
    sets = {
        "in": spread_subset(list_dataset(root, bench, "test", bench.id_set, tf, True), config.max_samples)
    }
    if val:
        sets["in_val"] = spread_subset(
            list_dataset(root, bench, "val", bench.id_set, tf, True), config.max_samples
        )
    if not ood:
        return sets, names
    limits = [n for n in (config.max_samples, getattr(config, "max_ood_samples", None)) if n]
    limit = min(limits, default=None)
    if val:
        sets[f"val_{bench.val_ood}"] = spread_subset(
            list_dataset(root, bench, "val", bench.val_ood, tf, False), limit
        )
    for name in names:
        sets[name] = spread_subset(list_dataset(root, bench, "test", name, tf, False), limit)
    return sets, names


def ood_groups(config: RunConfig, names: list[str]) -> dict[str, list[str]]:
    """The OpenOOD groups (near, far) of the OOD sets ``names``; empty without --benchmark."""
    if config.benchmark is None:
        return {}
    out = {}
    for group, members in get_benchmark(config.benchmark).groups.items():
        present = [n for n in names if n in members]
        if present:  # a group of which --out-datasets keeps only part is labelled so
            out[group if len(present) == len(members) else f"{group} (partial)"] = present
    return out


def set_tag(config: RunConfig, key: str) -> str:
    return tag(config, "test" if key == "in" else key)


def ood_set_names(defaults: tuple[str, ...], data_root: str, requested: list[str] | None) -> list[str]:
    """Requested OOD sets (all must exist); else those of ``defaults`` (the ID dataset spec's) found,
    one line per absent one."""
    if requested:
        _, missing = present_ood_sets(requested, data_root)
        if missing:
            raise UserError("\n".join(missing))
        return list(requested)
    names, missing = present_ood_sets(defaults, data_root)
    for message in missing:
        print(f"skipping {message}")
    if not names:
        raise UserError(
            f"no OOD set found under {Path(data_root) / 'ood_datasets'}; download "
            "one of the sets above or pass --out-datasets NAME_OR_FOLDER"
        )
    return names
