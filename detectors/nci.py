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
default, 1e-4, is the default here). The per-dataset values the paper's searches selected
could not be read from any stored source, so no per-dataset defaults are set; ``sweep.py``
searches the grid. The right alpha scales with 1 / ||h||_1, i.e. with the feature dimension and
the activation level of the network.

Reference implementations, per image:
- Official code (github.com/litianliu/NCI-OOD, identical to the ``nci_postprocessor.py`` that
  OpenOOD's main branch added in 2025, after v1.5): the formula above, with mu the float32 numpy
  mean of the training features, c the argmax of the network output (bias included), w_c the raw
  fc weight row and ``torch.norm(h, p=1)``. Ours is the same function; mu is the float64 mean of
  the ID training features, which differs from theirs by float32 rounding only; c is taken from
  float64 logits, so that a near-tie cannot flip with the batch size.
- pytorch-ood 0.4 (``detector/nci.py``): the same score negated (outlier score), with alpha <= 0
  dropping the norm term (the same as alpha = 0 here). Checked against this module on random
  features (D = 342): the same scores up to float32 rounding.

Numerical choices: the score is computed in float64. A feature exactly at the mean
(||h - mu|| = 0, where the official code gives 0 / 0 = NaN) gets pScore = 0.
"""

from __future__ import annotations

import torch

from util.argtypes import nonnegative_float

from .base import Detector, Param
from .statistics import mean_feature


class NCI(Detector):
    """pScore (predicted class's weight . centred feature / its L2 norm) + alpha * ||h||_1."""

    name = "nci"
    paper = "Liu & Qin, CVPR 2025"
    params = (
        Param(
            "alpha",
            ("--nci-alpha",),
            "NCI weight of the L1 feature norm (default 1e-4, the authors' config; they tune it per "
            "benchmark from 1e-4, 1e-3, 1e-2, 1e-1)",
            nonnegative_float,
        ),
    )
    fit_params = ()  # the fit (the training mean) does not depend on alpha

    def __init__(self, alpha: float = 1e-4):
        if not alpha >= 0:
            raise ValueError(f"NCI alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

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
        self.weight_ = self.fc_.weight.detach().double()
        bias = self.fc_.bias
        self.bias_ = (
            bias.detach().double()
            if bias is not None
            else torch.zeros(len(self.weight_), dtype=torch.float64)
        )
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
        return proximity + self.alpha * h64.abs().sum(dim=1), z
