"""NCI: Neural Collapse inspired OOD detector (Liu & Qin, "Detecting Out-of-Distribution through
the Lens of Neural Collapse", CVPR 2025; arXiv:2311.01479).

With mu = the mean ID training feature, c = argmax_c (W h + b)_c the predicted class and w_c its
row of W (not normalised):

    pScore(h) = w_c . (h - mu) / ||h - mu||_2,    score = pScore(h) + alpha * ||h||_1

pScore is the proximity of the centred feature to the predicted class's weight vector: the
cosine of their angle times ||w_c||. The paper motivates it as that angle; the authors' code
leaves ||w_c|| out (under Neural Collapse the class weight vectors have equal norms), and so
does this module. The L1 norm term is the paper's filter: ID features lie farther from the
origin than OOD features. Predictions (ID accuracy) are the argmax of W h + b.

alpha: the authors choose it per benchmark with OpenOOD's automatic parameter search (ID and
OOD validation sets) from {1e-4, 1e-3, 1e-2, 1e-1} (``configs/postprocessors/nci.yml``, whose
default, 1e-4, is the default here). No per-dataset values are set; ``sweep.py`` searches the
grid. The right alpha scales with 1 / ||h||_1, i.e. with the feature dimension and the
activation level of the network.

Numerical choices: the score is computed in float64; mu is the float64 mean of the ID training
features; c is taken from float64 logits, so that a near-tie cannot flip with the batch size. A
feature exactly at the mean (||h - mu|| = 0) gets pScore = 0.
"""

from __future__ import annotations

import torch

from util.argtypes import nonnegative_float

from .base import Detector, head_float64
from .statistics import mean_feature


class NCI(Detector):
    """pScore (predicted class's weight . centred feature / its L2 norm) + alpha * ||h||_1."""

    name = "nci"
    paper = "Liu & Qin, CVPR 2025"
    param_help = {
        "alpha": "weight of the L1 feature norm (the default is the authors' config; they tune it per "
        "benchmark from 1e-4, 1e-3, 1e-2, 1e-1)"
    }
    param_types = {"alpha": nonnegative_float}
    fit_params = ()  # the fit (the training mean) does not depend on alpha

    def __init__(self, alpha: float = 1e-4):
        self.alpha = alpha

    def check_params(self) -> None:
        if not self.alpha >= 0:
            raise ValueError(f"NCI alpha must be >= 0, got {self.alpha}")

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"alpha": (0.0, 1e-4, 1e-3, 1e-2, 1e-1)}

    def fit(self, fc, train_features) -> NCI:
        super().fit(fc)
        if train_features.shape[1] != self.fc_.in_features:
            raise ValueError(
                f"NCI: the training features have {train_features.shape[1]} dimensions but the classifier "
                f"expects {self.fc_.in_features}"
            )
        mean = mean_feature(train_features)
        self.mean_ = torch.from_numpy(mean)
        self.weight_, self.bias_ = head_float64(self.fc_)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        h64 = h.double()
        # the predicted class from float64 logits: float32 rounding depends on the batch size
        pred = (h64 @ self.weight_.T + self.bias_).argmax(dim=1)
        centred = h64 - self.mean_
        along = (self.weight_[pred] * centred).sum(dim=1)
        norm = torch.linalg.vector_norm(centred, dim=1)
        proximity = torch.where(norm > 0, along / torch.where(norm > 0, norm, 1.0), 0.0)
        return proximity + float(self.alpha) * h64.abs().sum(dim=1), z
