"""BATS: batch-normalisation assisted typical set (Zhu et al., "Boosting
Out-of-distribution Detection with Typical Features", NeurIPS 2022).

A BatchNorm layer's output for ID data is (approximately) Gaussian per channel with mean beta and
standard deviation |gamma|, its affine bias and weight. BATS truncates each feature to that
layer's typical set, h'_j = min(max(h_j, beta_j - lambda |gamma_j|), beta_j + lambda |gamma_j|),
and scores h' with Energy: logsumexp(W h' + b). beta and gamma are read from the model: its last
BatchNorm layer with D channels (DenseNet-101's final ``bn1``, ResNet-50's last ``bn3``), and the
truncation is applied to the penultimate features, as the authors' released code truncates the
features before the head. Defaults lambda = 3.25 on CIFAR and 1.05 on ImageNet (the authors' code).
Neither OpenOOD v1.5 nor pytorch-ood 0.4 ships BATS.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import positive_float

from .base import Detector, Param


class BATS(Detector):
    name = "bats"
    paper = "Zhu et al., NeurIPS 2022"
    params = (
        Param(
            "lam",
            ("--bats-lambda",),
            "BATS: truncate to the last BatchNorm's beta +- lambda |gamma| "
            "(default 3.25 on CIFAR, 1.05 on ImageNet)",
            positive_float,
        ),
    )
    defaults = {"CIFAR-10": {"lam": 3.25}, "CIFAR-100": {"lam": 3.25}, "imagenet": {"lam": 1.05}}
    fit_params = ()

    def __init__(self, lam: float = 1.05):
        self.lam = float(lam)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"lam": (0.5, 1.0, 1.05, 1.5, 2.0, 3.0, 3.25, 4.0, 5.0)}

    def fit(self, fc, batchnorm) -> BATS:
        """``batchnorm``: (beta, gamma), the affine bias and weight of the model's last BatchNorm
        layer with D channels."""
        super().fit(fc)
        beta, gamma = (np.asarray(v, dtype=np.float64).reshape(-1) for v in batchnorm)
        if beta.shape != (self.fc_.in_features,) or gamma.shape != beta.shape:
            raise ValueError(
                f"BATS needs a BatchNorm of {self.fc_.in_features} channels; got {beta.shape[0]} channels"
            )
        self.centre_ = torch.from_numpy(beta).float()
        self.spread_ = torch.from_numpy(np.abs(gamma)).float()
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        half = self.lam * self.spread_
        return self.fc_(torch.maximum(torch.minimum(h, self.centre_ + half), self.centre_ - half))
