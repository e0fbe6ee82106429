"""GEN: generalized entropy (Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based
Out-of-Distribution Detection", CVPR 2023).

With p = softmax(W h + b) and p_(1) >= ... >= p_(C) its entries sorted, the generalized entropy
of the M largest is G(p) = sum_{i<=M} p_(i)^gamma (1 - p_(i))^gamma; score = -G(p) (low entropy:
in-distribution). M = min(M, C). Defaults gamma = 0.1, M = 100 (the paper's setting, also
OpenOOD v1.5's); the search space is OpenOOD's sweep.

Numerical choices that matter: the softmax is taken in float64. OpenOOD v1.5's ``gen``
postprocessor has the same formula in float32, where 1 - p of the top class rounds to 0 once its
logit leads by about 17 or more, and (1 - p)^0.1 is steep near 0: on such confident images the
two differ (a one-hot gap of 20 gives -1.387 here, -1.218 in float32). pytorch-ood 0.4's ``GEN``
returns the mean instead of the sum (a constant factor 1/M), negated, with p clamped to
[1e-7, 1 - 1e-7] in float32 and M = all classes by default; on the cached CIFAR-10 features
(``benchmarks/compare_pytorch_ood.py``) its ranking agrees with ours to Spearman 0.9992, the
differences being the clamped confident images.
"""

from __future__ import annotations

import torch

from util.argtypes import positive_float, positive_int

from .base import Detector, Param


class GEN(Detector):
    name = "gen"
    paper = "Liu et al., CVPR 2023"
    family = "logit"
    params = (
        Param("gamma", ("--gen-gamma",), "GEN exponent gamma (default 0.1)", positive_float),
        Param("m", ("--gen-m",), "GEN: number M of largest probabilities used (default 100)", positive_int),
    )

    def __init__(self, gamma: float = 0.1, m: int = 100):
        self.gamma = float(gamma)
        self.m = int(m)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"gamma": (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0), "m": (10, 50, 100, 200, 500, 1000)}

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.double(), dim=1)
        top = torch.topk(p, min(self.m, p.shape[1]), dim=1).values
        return -(top**self.gamma * (1 - top) ** self.gamma).sum(dim=1)
