"""Classifiers with ``forward_features(x) -> (B, D)`` and ``get_classifier() -> nn.Linear``.

``MODELS`` holds one spec per built-in architecture name: how to build it for C classes and the
input its weights expect. Adding an architecture is one module and one spec; its published
weights are one ``models.weights.Weights`` entry (file, URL or package, sha256, input). Any other
classifier whose output layer is an ``nn.Linear`` comes in through ``--model-arch torchvision:NAME``,
``timm:NAME`` or ``package.module:function`` (``models.external``), split at that layer by
``models.adapter``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from util.errors import UserError
from util.inputs import InputSpec

from . import external
from .adapter import adapt
from .checkpoints import load_state_dict_strict, read_state_dict
from .densenet import DenseNet3
from .efficientnet_lite import EfficientNetLite0
from .resnet import ResNet50
from .resnetv2 import BIT_UNITS, ResNetV2
from .weights import WEIGHTS


@dataclass(frozen=True)
class ModelSpec:
    """``build(num_classes)`` -> an untrained model; ``input``: what its weights expect (its mean and
    std apply on every dataset, its sizes on ImageNet-size images), or None for the dataset's."""

    build: Callable[[int], nn.Module]
    input: InputSpec | None = None
    input_source: str | None = None  # where ``input`` comes from, as the start-of-run block says
    # Modules whose outputs the multi-layer detectors read by default (--feature-layers): the
    # stages, each ending at its own resolution (DenseNet's dense blocks, ResNet's layer1..4).
    layers: tuple[str, ...] = ()


def _imagenet_input(arch: str) -> tuple[InputSpec, str]:
    """(input, its source) of the ImageNet-1k weights spec of ``arch`` (models.weights)."""
    weights = WEIGHTS["imagenet", arch]
    return weights.input, f"the weights spec of {weights.source} (models/weights.py)"


# The ImageNet architectures expect the input of their ImageNet-1k weights (models.weights);
# DenseNet-101 takes the dataset's (its CIFAR weights' input is the CIFAR datasets' own).
MODELS = {
    "densenet": ModelSpec(
        lambda c: DenseNet3(depth=100, num_classes=c, growth_rate=12, reduction=0.5),
        layers=("block1", "block2", "block3"),
    ),
    "resnet50": ModelSpec(
        lambda c: ResNet50(num_classes=c),
        *_imagenet_input("resnet50"),
        layers=("layer1", "layer2", "layer3", "layer4"),
    ),
    "BiT-S-R101x1": ModelSpec(
        lambda c: ResNetV2(BIT_UNITS["R101"], width=1, num_classes=c),
        *_imagenet_input("BiT-S-R101x1"),
        layers=("body.block1", "body.block2", "body.block3", "body.block4"),
    ),
    "efficientnet-lite0": ModelSpec(
        lambda c: EfficientNetLite0(num_classes=c),
        *_imagenet_input("efficientnet-lite0"),
        layers=("_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"),  # last block at 56, 28, 14, 7 px
    ),
}
MODEL_NAMES = tuple(MODELS)


def default_layers(name: str) -> tuple[str, ...]:
    """The modules the multi-layer detectors read for architecture ``name`` without
    --feature-layers (``ModelSpec.layers``); empty for external models."""
    spec = MODELS.get(name)
    return spec.layers if spec else ()


def check_arch(name: str) -> str:
    """``name`` if it is a built-in architecture or a well-formed external one, else a UserError."""
    if external.is_external(name):
        return external.check_arch(name)
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, or torchvision:NAME, "
            f"timm:NAME, package.module:function.{hint}"
        )
    return name


def build_model(name: str, num_classes: int, checkpoint=None, pretrained: bool = False) -> nn.Module:
    """The eval-mode classifier ``name`` with ``num_classes`` outputs as its library builds it,
    loaded (strictly) from ``checkpoint``; without one, external models take their library's
    pretrained weights when ``pretrained`` (a factory its own)."""
    check_arch(name)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    if external.is_external(name):
        model = external.build(name, num_classes, pretrained and checkpoint is None)
    else:
        model = MODELS[name].build(num_classes)
    if checkpoint is not None:
        # A model may read its own formats (BiT: Google's .npz); the default is a PyTorch file.
        reader = getattr(model, "read_checkpoint", read_state_dict)
        load_state_dict_strict(model, reader(checkpoint), checkpoint)
    return model.eval()


def get_model(
    name: str,
    num_classes: int,
    checkpoint=None,
    image_size: int = 224,
    head: str | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """``build_model`` with ``forward_features``/``get_classifier`` (``as_classifier``)."""
    return as_classifier(build_model(name, num_classes, checkpoint, pretrained), name, image_size, head)


def as_classifier(model: nn.Module, name: str, image_size: int, head: str | None = None) -> nn.Module:
    """Built-in models as they are (they define both methods); any other model, or one whose
    output layer is named by ``head``, split at its output Linear (``models.adapter.adapt``) and
    checked on ``image_size`` inputs."""
    return model if name in MODELS and head is None else adapt(model, image_size, head)


def input_normalization(name: str) -> tuple[tuple, tuple] | None:
    """(mean, std) the built-in architecture ``name`` normalises with on every dataset, or None.

    The ID transform follows the model (BiT: mean = std = 0.5), so the feature-cache key, which
    includes the transform, changes with it.
    """
    spec = MODELS.get(name)
    return (spec.input.mean, spec.input.std) if spec and spec.input else None


def preferred_input(name: str) -> InputSpec | None:
    """The input ``name``'s weights expect on ImageNet-size images (built-in spec, torchvision
    weights' transforms, timm's pretrained config), or None."""
    if external.is_external(name):
        return external.preferred_input(name)
    return MODELS[name].input


def preferred_input_source(name: str) -> str | None:
    """Where ``preferred_input(name)`` comes from (the built-in weights spec, torchvision's weights
    transforms, timm's pretrained config), as the start-of-run block names it; None: no such input."""
    prefix, _, model = name.partition(":")
    if not external.is_external(name):
        return MODELS[name].input_source
    if prefix == "torchvision":
        import torchvision

        return f"torchvision's {torchvision.models.get_model_weights(model).DEFAULT} transforms"
    return f"timm's pretrained config of {model}" if prefix == "timm" else None
