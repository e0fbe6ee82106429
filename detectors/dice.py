"""DICE (Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022).

With m the mean ID training feature and V = m[None, :] * W, keep W[c, j] where
V[c, j] > percentile(V, p). Score = logsumexp((W * mask) h' + b), h' = min(h, tau) (DICE+ReAct)
or h (plain DICE). Paper settings: p = 90 on CIFAR, p = 70 on ImageNet.
"""

from __future__ import annotations

import torch

from models.route import RouteDICE

from .base import Detector, TrainStats
from .logit import clip


class DICE(Detector):
    name = "dice"

    def __init__(self, p: float = 90.0, clip_threshold: float | None = None):
        self.p = p
        self.clip_threshold = clip_threshold

    def fit(self, fc, stats: TrainStats | None = None) -> DICE:
        super().fit(fc, stats)
        self.route_ = RouteDICE(self.fc_, stats.get("mean_feature"), self.p)
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.route_(clip(h, self.clip_threshold))
