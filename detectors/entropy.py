"""Predictive entropy of the softmax posterior, the score pytorch-ood's ``Entropy`` gives (it cites
Chan, Rottmann & Gottschalk, "Entropy Maximization and Meta Classification for Out-of-Distribution
Detection in Semantic Segmentation", ICCV 2021, whose OOD score is this entropy).

With p = softmax(W h + b): H(p) = -sum_c p_c log p_c; score = -H(p) (a flat posterior, high
entropy, is OOD). It lies in [-log C, 0]. No parameters and no fit beyond the head.

Numerical choices that matter: log p is ``log_softmax`` of the float64 logits, and p = exp(log p),
so a class whose probability underflows to 0 adds 0 log p = 0 (the limit), never 0 * -inf = NaN.
pytorch-ood 0.4 instead clips p to [1e-7, 1] before the log (float32), so each class with
p < 1e-7 adds 1e-7 * log(1e7) = 1.6e-6 to its entropy: its scores differ from these by up to
C * 1.6e-6, which reorders confident images (entropies of that size); see docs/detectors.md.
"""

from __future__ import annotations

import torch

from .base import Detector


class Entropy(Detector):
    name = "entropy"
    paper = "Chan et al., ICCV 2021"
    family = "logit"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """-H(softmax(z)) = sum_c p_c log p_c, float64."""
        log_p = torch.log_softmax(logits.double(), dim=1)
        return (log_p.exp() * log_p).sum(dim=1)
