"""Relative Mahalanobis distance (Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, "A Simple Fix to
Mahalanobis Distance for Improving Near-OOD Detection", arXiv 2106.09022, 2021).

From the ID training features: class means mu_c with the tied covariance Sigma (as
``mahalanobis``), and the background Gaussian of all features, mean mu_0 and covariance Sigma_0.
With MD_c(h) = (h - mu_c)^T Sigma^+ (h - mu_c) and MD_0(h) = (h - mu_0)^T Sigma_0^+ (h - mu_0),
RMD_c = MD_c - MD_0 and score = -min_c RMD_c(h) = MD_0(h) - min_c MD_c(h).

Numerical choices that matter: means and covariances are accumulated in float64, both
covariances are maximum-likelihood (1/N) and not regularised, inverted by the pseudo-inverse.
The float64 pseudo-inverse keeps eigenvalues above about D * 2.2e-16 of the largest (pinvh of a
float32 covariance drops those below about D * 1.2e-7), which matters on ill-conditioned (ReLU)
features.
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks

from .base import Detector
from .mahalanobis import class_means_and_tied_precision, squared_distances
from .statistics import mean_feature


def mean_and_precision(features, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), pseudo-inverse of the 1/N covariance (D, D)) of all rows, float64, in blocks."""
    n, d = len(features), features.shape[1]
    mean = mean_feature(features, chunk)
    scatter = np.zeros((d, d))
    for block in row_blocks(features, chunk):
        centred = block.astype(np.float64) - mean
        scatter += centred.T @ centred
    return mean, np.linalg.pinv(scatter / n, hermitian=True)


class RelativeMahalanobis(Detector):
    name = "rmds"
    aliases = ("relative_mahalanobis",)
    paper = "Ren et al., arXiv 2021"
    needs_each_class = True

    def fit(self, fc, train_features, train_labels) -> RelativeMahalanobis:
        super().fit(fc)
        means, precision = class_means_and_tied_precision(train_features, train_labels, self.fc_.out_features)
        mean0, precision0 = mean_and_precision(train_features)
        self.means_ = torch.from_numpy(means)
        self.precision_ = torch.from_numpy(precision)
        self.background_mean_ = torch.from_numpy(mean0[None, :])
        self.background_precision_ = torch.from_numpy(precision0)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = h.double()
        md = squared_distances(x, self.means_, self.precision_)
        md0 = squared_distances(x, self.background_mean_, self.background_precision_)[:, 0]
        return md0 - md.min(dim=1).values, self.logits(h)
