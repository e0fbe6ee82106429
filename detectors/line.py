"""LINe (Ahn, Park & Kim, "LINe: Out-of-Distribution Detection by Leveraging Important Neurons",
CVPR 2023).

h' = min(h, tau) (activation clipping); c^ = argmax(W h' + b); logits =
(W * WP_{c^}) (h' * AP_{c^}) + b with the class-wise activation-pruning (AP, percentile p_a of
Cm[c]) and weight-pruning (WP, percentile p_w of |Cm[c]| * W) masks of ``models.route.RouteLINe``;
score = logsumexp(logits). Paper settings: CIFAR-10 (90, 90, 1.0), CIFAR-100 (90, 10, 1.0),
ImageNet ResNet-50 (10, 10, 0.8).
"""

from __future__ import annotations

import torch

from models.route import RouteLINe

from .base import Detector, TrainStats
from .logit import clip


class LINe(Detector):
    name = "line"

    def __init__(self, p_w: float = 90.0, p_a: float = 90.0, clip_threshold: float | None = 1.0):
        self.p_w = p_w
        self.p_a = p_a
        self.clip_threshold = clip_threshold

    def fit(self, fc, stats: TrainStats | None = None) -> LINe:
        super().fit(fc, stats)
        self.route_ = RouteLINe(self.fc_, stats.get("contributions"), self.p_w, self.p_a)
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.route_(clip(h, self.clip_threshold))
