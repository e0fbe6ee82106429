"""BATS: batch-normalisation assisted typical set (Zhu et al., "Boosting Out-of-distribution
Detection with Typical Features", NeurIPS 2022).

The paper's idea: a BatchNorm layer's output for ID data is (approximately) Gaussian per channel
with mean beta and standard deviation |gamma| (its affine bias and weight), so features are
truncated to that typical set, h'_j = min(max(h_j, m_j - lambda s_j), m_j + lambda s_j), and the
truncated features are scored with Energy: logsumexp(W h' + b).

Where (m, s) come from, ``statistics``:

- ``"batchnorm"`` (default): m = beta, s = |gamma| of the model's last BatchNorm layer with D
  channels (DenseNet-101's final ``bn1``, ResNet-50's last ``bn3``), applied to the penultimate
  features. This is an adaptation: the paper truncates the BatchNorm's output map itself, inside
  the network, while the penultimate features come after the ReLU (and, in ResNets, the residual
  add) and the global pooling; on post-ReLU features the lower bound is often below 0 and inactive.
- ``"features"``: m and s are the per-dimension mean and standard deviation of the ID training
  penultimate features, as the authors' released code (alibaba/easyrobust,
  examples/ood_detection/BATS) truncates the features before the head.

Defaults lambda = 3.25 on CIFAR (the released code's CIFAR ResNet-18) and 1.05 on ImageNet (its
ViT-B/16-384).
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import name_arg, positive_float

from .base import Detector
from .statistics import mean_and_std

SOURCES = ("batchnorm", "features")


class BATS(Detector):
    name = "bats"
    paper = "Zhu et al., NeurIPS 2022"
    param_help = {
        "lam": "truncate features to mean +- lambda std",
        "statistics": "mean and std from the model's last BatchNorm ('batchnorm') or from the ID training "
        "features ('features', the authors' released code)",
    }
    param_types = {"lam": positive_float, "statistics": name_arg(SOURCES, "BATS statistics")}
    defaults = {"CIFAR-10": {"lam": 3.25}, "CIFAR-100": {"lam": 3.25}, "imagenet": {"lam": 1.05}}
    fit_params = ("statistics",)

    def __init__(self, lam: float = 1.05, statistics: str = "batchnorm"):
        self.lam = lam
        self.statistics = statistics

    def check_params(self) -> None:
        if self.statistics not in SOURCES:
            raise ValueError(f"BATS statistics must be one of {', '.join(SOURCES)}, got {self.statistics!r}")

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"lam": (0.5, 1.0, 1.05, 1.5, 2.0, 3.0, 3.25, 4.0, 5.0)}

    def needs(self) -> tuple[str, ...]:
        return ("batchnorm",) if self.statistics == "batchnorm" else ("train_features",)

    def fit(self, fc, batchnorm=None, train_features=None, chunk: int = 8192) -> BATS:
        """``batchnorm``: (beta, gamma) of the model's last BatchNorm layer with D channels; or
        ``train_features`` with ``statistics="features"``."""
        super().fit(fc)
        if self.statistics == "batchnorm":
            if batchnorm is None:
                raise ValueError("BATS with statistics='batchnorm' needs the model's BatchNorm (beta, gamma)")
            centre, gamma = (np.asarray(v, dtype=np.float64).reshape(-1) for v in batchnorm)
            spread = np.abs(gamma)
        else:
            if train_features is None:
                raise ValueError("BATS with statistics='features' needs the ID training features")
            centre, spread = mean_and_std(train_features, chunk)
        if centre.shape != (self.fc_.in_features,) or spread.shape != centre.shape:
            raise ValueError(
                f"BATS needs statistics of {self.fc_.in_features} channels; got {centre.shape[0]} channels"
            )
        self.centre_ = torch.from_numpy(centre).float()
        self.spread_ = torch.from_numpy(spread).float()
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        half = float(self.lam) * self.spread_
        return self.fc_(torch.maximum(torch.minimum(h, self.centre_ + half), self.centre_ - half))
