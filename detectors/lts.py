"""LTS: logit scaling (Djurisic, Liu & Nikolic, "Logit Scaling for Out-of-Distribution Detection",
Machine Vision and Applications 2025; arXiv:2409.01175).

A per-sample factor from the pooled penultimate feature h (D values) multiplies the logits; the
features themselves are left as they are. With h+ = max(h, 0), k = D - round(D * p / 100) (at
least 1), s1 = sum_j h+_j and s2 = the sum of the k largest entries of h+:

    S(h) = (s1 / s2) ** 2,    score = logsumexp_c (S(h) * (W h + b)_c)

(the paper's energy of the scaled logits, negated so that higher means more in-distribution).
S is the square of SCALE's exponent s1 / s2 (detectors/scale.py), but LTS scales the logits
instead of the activations. Predictions (ID accuracy) are the argmax of the unscaled W h + b,
which S > 0 does not change. LTS needs no training statistics.

Default p = 95: the authors' setting for every model (config/*.yml of github.com/andrijazz/lts:
``lts@95`` for CIFAR-10 and CIFAR-100 DenseNet-101 and ImageNet ResNet-50, MobileNetV2, ViT,
Swin, MLP-Mixer), so there are no per-dataset defaults.

Reference implementations, per image:
- Official code (andrijazz/lts, ``lts.py``): ReLU, then k = n - round(n * p / 100) with
  ``np.round`` and ``torch.topk``, S = (s1 / s2) ** 2 multiplying the network's logits, Energy
  score. Ours is the same function (Python's ``round`` also rounds halves to even); the ReLU only
  matters for features that can be negative (transformers).
- pytorch-ood 0.4 (``detector/lts.py``): the same S (ReLU, k = max(1, D - round((1 - p') D)) with
  p' = 0.05 the kept fraction), logits times S, outlier score = -logsumexp: equal to ours up to
  sign. (An earlier pytorch-ood draft divided the logits by S and skipped the ReLU; the release
  multiplies, as the paper and the official code do.)
- OpenOOD v1.5 has no LTS postprocessor.
Both were checked against this module on random signed features (D = 24, 342, 2048): the same
scores up to float32 rounding (relative difference < 1e-6).

Numerical choices: s1, s2, S, the logits that S multiplies and their logsumexp are computed in
float64 (the official code uses float32; the difference is rounding only, but S can reach
(D / k)^2, about 400 for D = 2048 and p = 95, and amplifies float32 logit rounding by as much),
which also keeps the effect of the batch a row is scored in (BLAS blocking) at float64
rounding. A sample with no positive activation (s2 = 0, where the official code gives 0 / 0 =
NaN) gets S = 1, i.e. its plain Energy score.
"""

from __future__ import annotations

import torch

from util.argtypes import open_percentile_arg

from .ash import sum_ratio, top_k_mask
from .base import Detector, Param


def lts_factor(h: torch.Tensor, percentile: float) -> torch.Tensor:
    """S = (s1 / s2) ** 2 per row (float64), from the positive part of h (module docstring)."""
    positive = h.clamp(min=0)
    return sum_ratio(positive, top_k_mask(positive, percentile)) ** 2


class LTS(Detector):
    """Energy of the logits scaled by S(h) = (sum h+ / sum of the top (100 - p)% of h+) ** 2."""

    name = "lts"
    paper = "Djurisic et al., MVA 2025"
    params = (
        Param(
            "percentile",
            ("--lts-percentile",),
            "LTS percentile p: S = (sum of h / sum of its top (100 - p) percent)^2 (default 95, the paper's)",
            open_percentile_arg,
        ),
    )

    def __init__(self, percentile: float = 95.0):
        self.percentile = float(percentile)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"percentile": (60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.0, 99.0)}

    def fit(self, fc) -> LTS:
        super().fit(fc)
        self.weight_ = self.fc_.weight.detach().double()
        bias = self.fc_.bias
        self.bias_ = bias.detach().double() if bias is not None else torch.zeros(len(self.weight_))
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits64 = h.double() @ self.weight_.T + self.bias_
        scaled = lts_factor(h, self.percentile)[:, None] * logits64
        return torch.logsumexp(scaled, dim=1), self.logits(h)
