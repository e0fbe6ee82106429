"""Copies of classification heads for scoring on the CPU."""

from __future__ import annotations

import torch
from torch import nn


def cpu_copy(fc: nn.Linear) -> nn.Linear:
    """A float32 CPU nn.Linear with fc's weight and bias; fc itself is not moved or cast.

    Detectors and precompute score on the CPU from cached features while the model (and its head)
    may still be on the GPU extracting features, so the head is copied, never moved in place.
    """
    head = nn.Linear(fc.in_features, fc.out_features, bias=fc.bias is not None)
    with torch.no_grad():
        head.weight.copy_(fc.weight.detach())
        if fc.bias is not None:
            head.bias.copy_(fc.bias.detach())
    return head.eval()


def last_batchnorm(model: nn.Module, num_features: int) -> tuple[str, nn.Module] | None:
    """(name, module) of the last BatchNorm layer (in registration order, which is the order the
    forward pass runs them in for sequential networks) with ``num_features`` channels, or None."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_features == num_features:
            found = (name, module)
    return found
