"""SCALE (Xu, Chen, Franchi & Yao, "Scaling for Training Time and Post-hoc Out-of-distribution
Detection Enhancement", ICLR 2024).

ASH-S without the pruning: with k = D - round(D * p / 100), s1 = sum_j h_j and s2 = the sum of
the k largest entries of h, h' = h * exp(s1 / s2) (every activation kept). Score = Energy:
logsumexp(W h' + b). Because every activation of a sample is multiplied by the same factor r,
the predicted class (argmax of W h' + b with b included) can still change, but barely; the
paper reports no ID accuracy loss. Default p = 85 (the paper's ImageNet ResNet-50 setting).
"""

from __future__ import annotations

import torch

from util.argtypes import open_percentile_arg

from .ash import sum_ratio, top_k_mask
from .base import Detector


def scale(h: torch.Tensor, percentile: float) -> torch.Tensor:
    """h * exp(s1 / s2), s2 summing the top (100 - p)% entries of each row."""
    ratio = sum_ratio(h, top_k_mask(h, percentile))
    return (h.double() * torch.exp(ratio)[:, None]).to(h.dtype)


class SCALE(Detector):
    name = "scale"
    paper = "Xu et al., ICLR 2024"
    param_help = {"percentile": "percentile p: s2 sums the top (100 - p)% entries of h"}
    param_types = {"percentile": open_percentile_arg}

    def __init__(self, percentile: float = 85.0):
        self.percentile = percentile

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"percentile": (60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(scale(h, float(self.percentile)))
