"""Classifiers with ``forward_features(x) -> (B, D)`` and ``get_classifier() -> nn.Linear``.

``MODELS`` holds one spec per architecture name: how to build it for C classes and the input
normalisation its weights expect. Adding an architecture is one module and one spec.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from util.errors import UserError

from .checkpoints import load_state_dict_strict, read_state_dict
from .densenet import DenseNet3
from .resnet import ResNet50
from .resnetv2 import BIT_UNITS, ResNetV2


@dataclass(frozen=True)
class ModelSpec:
    """``build(num_classes)`` -> an untrained model; ``input_norm``: (mean, std) its weights
    expect, or None for the dataset's own statistics."""

    build: Callable[[int], nn.Module]
    input_norm: tuple[tuple, tuple] | None = None


MODELS = {
    "densenet": ModelSpec(lambda c: DenseNet3(depth=100, num_classes=c, growth_rate=12, reduction=0.5)),
    "resnet50": ModelSpec(lambda c: ResNet50(num_classes=c), (ResNet50.input_mean, ResNet50.input_std)),
    "BiT-S-R101x1": ModelSpec(
        lambda c: ResNetV2(BIT_UNITS["R101"], width=1, num_classes=c),
        (ResNetV2.input_mean, ResNetV2.input_std),
    ),
}
MODEL_NAMES = tuple(MODELS)


def get_model(name: str, num_classes: int, checkpoint=None) -> nn.Module:
    """An eval-mode classifier ``name`` with ``num_classes`` outputs, loaded from ``checkpoint``."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.{hint}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    model = MODELS[name].build(num_classes)
    if checkpoint is not None:
        # A model may read its own formats (BiT: Google's .npz); the default is a PyTorch file.
        reader = getattr(model, "read_checkpoint", read_state_dict)
        load_state_dict_strict(model, reader(checkpoint), checkpoint)
    return model.eval()


def input_normalization(name: str) -> tuple[tuple, tuple] | None:
    """(mean, std) the architecture ``name`` expects its inputs normalised with; None: the dataset's.

    The ID transform follows the model (BiT: mean = std = 0.5), so the feature-cache key, which
    includes the transform, changes with it.
    """
    return MODELS[name].input_norm if name in MODELS else None
