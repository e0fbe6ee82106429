"""LTS: logit scaling (Djurisic, Liu & Nikolic, "Logit Scaling for Out-of-Distribution Detection",
Machine Vision and Applications 2025; arXiv:2409.01175).

A per-sample factor from the pooled penultimate feature h (D values) multiplies the logits; the
features themselves are left as they are. With h+ = max(h, 0), k = D - round(D * p / 100) (at
least 1; Python's round, halves to even), s1 = sum_j h+_j and s2 = the sum of the k largest
entries of h+:

    S(h) = (s1 / s2) ** 2,    score = logsumexp_c (S(h) * (W h + b)_c)

(the paper's energy of the scaled logits, negated so that higher means more in-distribution).
S is the square of SCALE's exponent s1 / s2 (detectors/scale.py), but LTS scales the logits
instead of the activations. Predictions (ID accuracy) are the argmax of the unscaled W h + b,
which S > 0 does not change. LTS needs no training statistics.

Default p = 95: the authors' setting for every model (config/*.yml of github.com/andrijazz/lts:
``lts@95`` for CIFAR-10 and CIFAR-100 DenseNet-101 and ImageNet ResNet-50, MobileNetV2, ViT,
Swin, MLP-Mixer), so there are no per-dataset defaults.

Numerical choices: s1, s2, S, the logits that S multiplies and their logsumexp are computed in
float64: S can reach (D / k)^2, about 400 for D = 2048 and p = 95, and amplifies float32 logit
rounding by as much; float64 also keeps the effect of the batch a row is scored in (BLAS
blocking) at float64 rounding. A sample with no positive activation (s2 = 0) gets S = 1, i.e.
its plain Energy score.
"""

from __future__ import annotations

import torch

from util.argtypes import open_percentile_arg

from .ash import sum_ratio, top_k_mask
from .base import Detector, head_float64


def lts_factor(h: torch.Tensor, percentile: float) -> torch.Tensor:
    """S = (s1 / s2) ** 2 per row (float64), from the positive part of h (module docstring)."""
    positive = h.clamp(min=0)
    return sum_ratio(positive, top_k_mask(positive, percentile)) ** 2


class LTS(Detector):
    """Energy of the logits scaled by S(h) = (sum h+ / sum of the top (100 - p)% of h+) ** 2."""

    name = "lts"
    paper = "Djurisic et al., MVA 2025"
    param_help = {"percentile": "percentile p: S = (sum of h / sum of its top (100 - p) percent)^2"}
    param_types = {"percentile": open_percentile_arg}

    def __init__(self, percentile: float = 95.0):
        self.percentile = percentile

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"percentile": (60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.0, 99.0)}

    def fit(self, fc) -> LTS:
        super().fit(fc)
        self.weight_, self.bias_ = head_float64(self.fc_)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits64 = h.double() @ self.weight_.T + self.bias_
        scaled = lts_factor(h, float(self.percentile))[:, None] * logits64
        return torch.logsumexp(scaled, dim=1), self.logits(h)
