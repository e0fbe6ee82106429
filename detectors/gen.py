"""GEN: generalized entropy (Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based
Out-of-Distribution Detection", CVPR 2023).

With p = softmax(W h + b) and p_(1) >= ... >= p_(C) its entries sorted, the generalized entropy
of the M largest is G(p) = sum_{i<=M} p_(i)^gamma (1 - p_(i))^gamma; score = -G(p) (low entropy:
in-distribution). M = min(M, C). Defaults gamma = 0.1, M = 100 (the paper's setting, also
OpenOOD v1.5's); the search space is OpenOOD's sweep.

Numerical choices that matter: the softmax is taken in float64. In float32, 1 - p of the top
class rounds to 0 once its logit leads by about 17 or more, and (1 - p)^0.1 is steep near 0, so
on such confident images float32 gives other scores (a one-hot gap of 20 gives -1.387 here,
-1.218 in float32).
"""

from __future__ import annotations

import torch

from util.argtypes import positive_float

from .base import Detector


class GEN(Detector):
    name = "gen"
    paper = "Liu et al., CVPR 2023"
    family = "logit"
    param_help = {"gamma": "exponent gamma", "m": "number M of largest probabilities used"}
    param_types = {"gamma": positive_float}

    def __init__(self, gamma: float = 0.1, m: int = 100):
        self.gamma = gamma
        self.m = m

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"gamma": (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0), "m": (10, 50, 100, 200, 500, 1000)}

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.double(), dim=1)
        top = torch.topk(p, min(int(self.m), p.shape[1]), dim=1).values
        gamma = float(self.gamma)
        return -(top**gamma * (1 - top) ** gamma).sum(dim=1)
