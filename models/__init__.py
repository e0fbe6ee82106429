"""Classifiers with ``forward_features(x) -> (B, D)`` and ``get_classifier() -> nn.Linear``."""

from __future__ import annotations

import difflib

from torch import nn

from util.errors import UserError

from .checkpoints import load_state_dict_strict, read_state_dict

MODEL_NAMES = ("densenet",)


def get_model(name: str, num_classes: int, checkpoint=None) -> nn.Module:
    """An eval-mode classifier ``name`` with ``num_classes`` outputs, loaded from ``checkpoint``."""
    if name == "densenet":
        from .densenet import DenseNet3

        model = DenseNet3(depth=100, num_classes=num_classes, growth_rate=12, reduction=0.5)
    else:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.{hint}")
    if checkpoint is not None:
        load_state_dict_strict(model, read_state_dict(checkpoint), checkpoint)
    return model.eval()
