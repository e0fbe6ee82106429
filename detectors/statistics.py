"""The ID training statistics of LINe and DICE, streamed over row blocks of the training features.

Contribution of neuron j to the logit of class y for one image (first-order Taylor
approximation of its Shapley value): s_j = h_j * d logit_y / d h_j. For a linear head this is
h * W[y]. Cm[c] is the mean of s over the training images of class c.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.heads import cpu_copy
from util.io import row_blocks


def taylor_contributions(fc: nn.Module, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """s = h * d logit_y / d h for a whole batch by one autograd call, shape (B, D).

    Samples are independent (no batch statistics in eval mode), so the gradient of
    sum_i logit_{y_i}(h_i) with respect to h_i is d logit_{y_i} / d h_i of sample i alone.
    """
    with torch.enable_grad():
        h = h.detach().clone().requires_grad_(True)
        logits = fc(h)
        picked = logits.gather(1, labels.view(-1, 1).long()).sum()
        (grad,) = torch.autograd.grad(picked, h)
    return (h * grad).detach()


class ClassMeanAccumulator:
    """Per-class running sums (float64) of row vectors; ``mean()`` gives the (C, D) class means."""

    def __init__(self, num_classes: int, dim: int):
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.int64)

    def add(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.long().cpu()
        self.sums.index_add_(0, labels, values.double().cpu())
        self.counts += torch.bincount(labels, minlength=len(self.counts))

    def mean(self) -> torch.Tensor:
        """Class means; a class with no sample gets zeros."""
        return self.sums / self.counts.clamp(min=1).unsqueeze(1).double()


def class_mean_contributions(
    fc: nn.Module, features: np.ndarray, labels: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Cm (C, D) float64 and the per-class counts, streaming over ``chunk`` rows at a time."""
    acc = ClassMeanAccumulator(fc.out_features, fc.in_features)
    fc = cpu_copy(fc)
    for start, block in zip(range(0, len(labels), chunk), row_blocks(features, chunk)):
        h = torch.from_numpy(block.astype(np.float32, copy=False))
        y = torch.from_numpy(np.asarray(labels[start : start + chunk]))
        acc.add(taylor_contributions(fc, h, y), y)
    return acc.mean().numpy(), acc.counts.numpy()


def fill_empty_classes(
    contrib: np.ndarray, counts: np.ndarray, fc: nn.Module, mean: np.ndarray
) -> np.ndarray:
    """``contrib`` (C, D) with each class that has no training image given the contribution of the
    mean training feature to that class's logit, h_mean * W[y] (the average over all training
    images of h * d logit_y / d h, as the head is linear).

    A class mean over zero images is undefined (0 / 0); zeros instead would make LINe's percentile
    cuts for that class degenerate (every neuron tied). This keeps the class's own weights and the
    training data's typical activation, and is what a class with only typical images would get.
    """
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if len(empty) == 0:
        return contrib
    weight = fc.weight.detach().cpu().double().numpy()[empty]
    out = contrib.copy()
    out[empty] = weight * np.asarray(mean, dtype=np.float64)[None, :]
    return out


def mean_feature(features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Mean of h over all rows, float64, shape (D,)."""
    if len(features) == 0:
        raise ValueError("the mean training feature needs at least one training feature; got none")
    total = np.zeros(features.shape[1], dtype=np.float64)
    for block in row_blocks(features, chunk):
        total += block.astype(np.float64).sum(axis=0)
    return total / len(features)


def mean_and_std(features, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and population standard deviation (1/N, as numpy's and sklearn's
    StandardScaler's) of all rows, float64, in two passes over row blocks."""
    mean = mean_feature(features, chunk)
    squares = np.zeros(features.shape[1])
    for block in row_blocks(features, chunk):
        squares += ((block.astype(np.float64) - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / len(features))


def seeded_rows(n: int, fraction: float, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random share ``fraction`` of ``n`` rows (at least one), or None
    for all of them (fraction 1)."""
    if fraction >= 1:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max(1, round(fraction * n)), replace=False))
