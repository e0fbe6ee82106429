"""Mahalanobis distance on penultimate features (Lee, Lee, Lee & Shin, "A Simple Unified Framework
for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018).

From the ID training features h_i with labels y_i: class means mu_c and one tied covariance
Sigma = (1/N) sum_i (h_i - mu_{y_i}) (h_i - mu_{y_i})^T (maximum likelihood, as sklearn's
EmpiricalCovariance). Score = -min_c (h - mu_c)^T Sigma^+ (h - mu_c) with Sigma^+ the
pseudo-inverse. Penultimate layer only: no input preprocessing and no feature ensemble (the
paper's full method adds both, which need the network). Predictions (ID accuracy) are the
classifier's own argmax of W h + b.

Numerical choices that matter: the class means and the covariance are accumulated in float64
and the covariance is not regularised (no ridge): the pseudo-inverse is taken as it is. The
features are read in row blocks (memory-mapped training features are never copied whole).
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks

from .base import Detector


def class_means_and_tied_precision(features, labels, num_classes: int, chunk: int = 8192):
    """(means (C, D), precision (D, D)) in float64, accumulated ``chunk`` rows at a time."""
    labels = np.asarray(labels, dtype=np.int64)
    d = features.shape[1]
    sums = np.zeros((num_classes, d))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if counts.size != num_classes or np.any(counts == 0):
        raise ValueError(f"Mahalanobis needs training features of all {num_classes} classes")
    for start, block in zip(range(0, len(labels), chunk), row_blocks(features, chunk)):
        np.add.at(sums, labels[start : start + chunk], block.astype(np.float64))
    means = sums / counts[:, None]
    scatter = np.zeros((d, d))
    for start, block in zip(range(0, len(labels), chunk), row_blocks(features, chunk)):
        centred = block.astype(np.float64) - means[labels[start : start + chunk]]
        scatter += centred.T @ centred
    return means, np.linalg.pinv(scatter / len(labels), hermitian=True)


def squared_distances(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B, K) of (x_i - mu_k)^T P (x_i - mu_k) = x'P x - 2 mu_k'P x + mu_k'P mu_k, float64."""
    xp = x @ precision
    mp = means @ precision
    return (xp * x).sum(1, keepdim=True) - 2 * xp @ means.T + (mp * means).sum(1)[None, :]


class Mahalanobis(Detector):
    name = "mahalanobis"
    paper = "Lee et al., NeurIPS 2018"
    needs_each_class = True

    def fit(self, fc, train_features, train_labels) -> Mahalanobis:
        super().fit(fc)
        means, precision = class_means_and_tied_precision(train_features, train_labels, self.fc_.out_features)
        self.means_ = torch.from_numpy(means)
        self.precision_ = torch.from_numpy(precision)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-min_c (h - mu_c)^T P (h - mu_c) (float64)."""
        dist = squared_distances(h.double(), self.means_, self.precision_)
        return -dist.min(dim=1).values, self.logits(h)
