"""The block printed at the start of every run, before any image goes through the network: what
will run and where each choice came from.

- the model: architecture, output layer (head), features D and classes C;
- the weights: the file (or the library's), how it was chosen, the published spec it matches;
- the input transform (resize, crop, mean, std) and the source of each part (``setup.input_choice``),
  then the input the weights were trained with where that is known (``setup.trained_input``):
  a WARNING when the crops differ by a factor of ``MUCH`` or more, a note when it is not known;
- each detector's settings, grouped by source: a flag, the method name (``line_ac``), the preset of
  the dataset (CIFAR-10, CIFAR-100, imagenet; image folders take imagenet's), the detector's own
  default;
- the size of the noise OOD sets and why (``setup.noise_note``).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch import nn

from detectors.base import Detector, init_signature, shown_value
from util import distributed
from util.data import IMG_EXTENSIONS

from . import setup
from .config import RunConfig
from .flags import shown_flag
from .layers import layers_line

MUCH = 2.0  # crop / trained crop (or its inverse) from which the input "differs much"


def run_block(
    config: RunConfig, model: nn.Module, model_key: dict, checkpoint, detectors=(), datasets=None
) -> list[str]:
    """The lines of the start-of-run block (``print_run_block`` prints them); ``detectors``: pairs
    (detector, the parameters flags set or None when not recorded)."""
    lines = [model_line(config, model), weights_line(config, model_key, checkpoint)]
    lines += input_lines(config, model_key, checkpoint)
    lines += [detector_line(config, *pair) for pair in detectors]
    layers = layers_line(config, [detector for detector, _ in detectors])
    lines += [layers] if layers else []
    noise = setup.noise_note(config, datasets or {})
    return lines + ([noise] if noise else [])


def print_run_block(*args, **kwargs) -> None:
    """Prints ``run_block`` (on rank 0 alone under torchrun)."""
    if distributed.is_main():
        print("\n".join(run_block(*args, **kwargs)))


def model_line(config: RunConfig, model: nn.Module) -> str:
    fc = model.get_classifier()
    head = getattr(model, "head_name", None) or next(n for n, m in model.named_modules() if m is fc)
    how = "--head" if config.head else "its output nn.Linear"
    return (
        f"model: {config.model_arch}, head {head} ({how}): D = {fc.in_features} features, "
        f"C = {fc.out_features} classes"
    )


def weights_line(config: RunConfig, model_key: dict, checkpoint) -> str:
    """The weights file and how it was chosen; the published spec it matches, with its top-1."""
    if checkpoint is None:
        if ":" in config.model_arch and config.model_arch.split(":")[0] in ("torchvision", "timm"):
            text = f"{config.model_arch.split(':')[0]}'s own ImageNet-1k pretrained weights (no --checkpoint)"
        else:
            text = "the weights the model function returns (no --checkpoint)"
    else:
        how = "--checkpoint" if config.checkpoint else "no --checkpoint: this dataset and name's default"
        text = f"{checkpoint} ({how})"
    weights = setup.known_weights(config, model_key)
    if weights is not None:
        top1 = f", published top-1 {weights.top1:g}% on {weights.dataset}" if weights.top1 else ""
        text += f"; {weights.source}{top1}"
    return f"weights: {text}"


def input_lines(config: RunConfig, model_key: dict, checkpoint) -> list[str]:
    """The transform with its sources, and the input the weights were trained with (when known)."""
    spec, source = setup.input_choice(config)
    parts = {}
    for part, where in source.items():
        parts.setdefault(where, []).append(part)
    if len(parts) == 1:
        origin = f"from {next(iter(parts))}"
    else:
        origin = "; ".join(f"{', '.join(p)} from {where}" for where, p in parts.items())
    numbers = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    lines = [
        f"input: Resize {spec.resize}, CenterCrop {spec.crop}, mean {numbers(spec.mean)}, "
        f"std {numbers(spec.std)} ({origin})"
    ]
    lines += _image_size_warning(config, spec.crop)
    trained = setup.trained_input(config, model_key, checkpoint)
    if trained is None:
        lines.append(
            f"  the input {checkpoint or 'these weights'} was trained with is not known here: if it was not "
            f"{spec.crop}-px crops with this mean and std, pass --image-size, --mean, --std"
        )
        return lines
    expected, where = trained
    ratio = max(spec.crop / expected.crop, expected.crop / spec.crop)
    if ratio >= MUCH:
        lines.append(
            f"WARNING: {spec.crop}-px crops, but the weights were trained on {expected.crop}-px ones "
            f"({where}): the features of such inputs mean little; pass --image-size {expected.crop}"
        )
    else:
        lines.append(f"  the weights were trained on {expected.crop}-px crops ({where})")
    return lines


def _image_size_warning(config: RunConfig, crop: int) -> list[str]:
    """A WARNING when an image folder's images are ``MUCH`` smaller than the crop they are scaled
    up to (32-px images under ImageNet's Resize 256, CenterCrop 224): a model trained on such
    images sees them at another scale. The first training image stands for the folder."""
    if config.id_root is None:
        return []
    first = next(
        (
            f
            for f in sorted((Path(config.id_root) / "train").rglob("*"))
            if f.name.lower().endswith(IMG_EXTENSIONS)
        ),
        None,
    )
    if first is None:
        return []
    try:
        with Image.open(first) as image:
            side = min(image.size)
    except OSError:
        return []  # an unreadable file is reported where the images are read
    if crop < MUCH * side:
        return []
    return [
        f"WARNING: the images of {config.id_root} are {side}-px ({first.name}), scaled up to {crop}-px "
        f"crops; if the model was trained on {side}-px images, pass --image-size {side} (and --mean, --std)"
    ]


def preset_label(config: RunConfig) -> str:
    preset = config.dataset.preset
    return f"the {preset} preset, which image folders take" if config.id_root else f"{preset} preset"


def value_sources(config: RunConfig, detector: Detector, given: dict | None = None) -> dict[str, list[str]]:
    """Source -> ['name value', ...] of each parameter with a flag (those without effect left out):
    a flag (``given``), what the method name fixes, the dataset's preset, the detector's own
    default; without ``given``, a value that is none of these came from a flag."""
    cls, variant = type(detector), detector.run_name()
    fixed = cls.variants().get(variant, {})
    preset = cls.defaults_for(config.dataset.preset, variant if variant in cls.variants() else None)
    signature = init_signature(cls)
    out: dict[str, list[str]] = {}
    for param in (p for p in detector.params if p.name not in detector.inert_params()):
        value = getattr(detector, param.name)
        if given is not None and param.name in given:
            flag = shown_flag(detector.name, param)  # the spelling of the original code where it has one
            unset = fixed.get(param.name, preset.get(param.name, signature[param.name].default))
            where = f"{flag}, also the value without it" if value == unset else flag
        elif param.name in fixed and value == fixed[param.name]:
            where = f"the method name {variant}"
        elif param.name in preset and value == preset[param.name]:
            where = preset_label(config)
        elif param.name not in preset and value == signature[param.name].default:
            where = "the detector's default"
        else:
            where = param.flags[0]
        out.setdefault(where, []).append(f"{param.name} {shown_value(value)}")
    return out


def detector_line(config: RunConfig, detector: Detector, given: dict | None = None) -> str:
    groups = value_sources(config, detector, given)
    if not groups:
        return f"{detector.run_name()}: no parameters"
    return f"{detector.run_name()}: " + "; ".join(f"{', '.join(v)} ({where})" for where, v in groups.items())
