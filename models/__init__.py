"""Classifiers with ``forward_features(x) -> (B, D)`` and ``get_classifier() -> nn.Linear``."""

from __future__ import annotations

import difflib

from torch import nn

from util.errors import UserError

from .checkpoints import load_state_dict_strict, read_state_dict

MODEL_NAMES = ("densenet", "resnet50", "BiT-S-R101x1")


def get_model(name: str, num_classes: int, checkpoint=None) -> nn.Module:
    """An eval-mode classifier ``name`` with ``num_classes`` outputs, loaded from ``checkpoint``."""
    if name == "densenet":
        from .densenet import DenseNet3

        model = DenseNet3(depth=100, num_classes=num_classes, growth_rate=12, reduction=0.5)
    elif name == "resnet50":
        from .resnet import ResNet50

        model = ResNet50(num_classes=num_classes)
    elif name == "BiT-S-R101x1":
        from .resnetv2 import BIT_UNITS, ResNetV2

        model = ResNetV2(BIT_UNITS["R101"], width=1, num_classes=num_classes)
    else:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.{hint}")
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
    if name == "resnet50":
        from .resnet import ResNet50 as cls
    elif name == "BiT-S-R101x1":
        from .resnetv2 import ResNetV2 as cls
    else:
        return None
    return cls.input_mean, cls.input_std
