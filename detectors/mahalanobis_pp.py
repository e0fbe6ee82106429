"""Mahalanobis++: Mahalanobis on l2-normalised features (Müller & Hein, "Mahalanobis++: Improving
OOD Detection via Feature Normalization", ICML 2025; code: github.com/mueller-mp/maha-norm).

z = h / ||h||_2 for the ID training features and the test features alike; then exactly
``mahalanobis`` on z: class means mu_c and the tied maximum-likelihood covariance Sigma of the
training z (``class_means_and_tied_precision``, float64, pseudo-inverse, no ridge), score =
-min_c (z - mu_c)^T Sigma^+ (z - mu_c). No hyperparameters (the paper has none). Predictions
(ID accuracy) are the classifier's argmax of W h + b on the unnormalised h.

Numerical choices that matter: the norms are taken in float64 (the authors divide float32
features by their float32 norm; the scores agree to float32 precision). A row with ||h|| below
1e-12 (an all-zero ReLU feature) is divided by 1e-12 instead, as ``torch.nn.functional.normalize``
does, and stays near zero, where the authors' code gives NaN. The training features are
normalised block by block as they are read (a memory-mapped file is never copied whole).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from util.io import take_rows

from .mahalanobis import Mahalanobis, squared_distances

NORM_EPS = 1e-12  # smallest norm divided by (torch.nn.functional.normalize's default)


def unit_rows(h: torch.Tensor) -> torch.Tensor:
    """h / max(||h||_2, 1e-12), row by row, in float64."""
    return F.normalize(h.double(), dim=1, eps=NORM_EPS)


class UnitRows:
    """The rows of an (N, D) feature array, l2-normalised (float64) when sliced: the training
    features as ``mahalanobis``'s fit reads them (``util.io.row_blocks`` slices an array that is not
    a memory-mapped file; this one reads the slice from such a file by ``take_rows``)."""

    def __init__(self, features):
        self.features = features
        self.shape = (len(features), features.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = take_rows(self.features, np.arange(*rows.indices(len(self))))
        return unit_rows(torch.from_numpy(block)).numpy()


class MahalanobisPP(Mahalanobis):
    name = "mahalanobis_pp"
    paper = "Müller & Hein, ICML 2025"

    def fit(self, fc, train_features, train_labels) -> MahalanobisPP:
        return super().fit(fc, UnitRows(train_features), train_labels)

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-min_c (z - mu_c)^T P (z - mu_c) with z = h / ||h|| (float64)."""
        dist = squared_distances(unit_rows(h), self.means_, self.precision_)
        return -dist.min(dim=1).values, self.logits(h)
