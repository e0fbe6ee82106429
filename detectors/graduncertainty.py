"""Gradient uncertainty of the classification head (Lee & AlRegib, "Gradients as a Measure of
Uncertainty in Neural Networks", ICIP 2020), the training-free score of pytorch-ood's
``GradUncertainty`` restricted to the head's parameters.

The loss is the binary cross-entropy between the softmax p = softmax(W h + b) and the "confounding
label" of all ones, L = -sum_c log p_c. Its gradient w.r.t. the logits is g = C p - 1, so w.r.t. the
head dL/dW = g h^T and dL/db = g, with squared norm ||g||^2 (||h||^2 + 1) (no +1 without a bias).
It vanishes for a uniform posterior and grows with confidence, so score = ||g||^2 (||h||^2 + 1)
(higher = ID; pytorch-ood's outlier score is its negative). The paper's experiments instead
concatenate the per-layer norms of all layers and train a binary classifier on ID and OOD
gradients (needs OOD data); pytorch-ood's default takes every parameter of the network (a
network-level score); the head alone is its suggested cheap setting and needs only the
penultimate features. No parameters.

Numerical choices that matter: g is the exact C p - 1 in float64. pytorch-ood differentiates
torch's binary_cross_entropy, whose backward divides by max(p (1 - p), 1e-12): a class with
p_c < 1e-12, or a float32 p_c of exactly 1, contributes less than the exact -1 to a_c = p_c dL/dp_c,
so its scores differ on confident images (reproduced in benchmarks/compare_pytorch_ood.py).
"""

from __future__ import annotations

import torch

from .base import Detector, head_float64


def logit_gradient(p: torch.Tensor) -> torch.Tensor:
    """d(-sum_c log p_c)/dz = C p - 1 for softmax probabilities p (B, C)."""
    return p.shape[1] * p - 1


class GradUncertainty(Detector):
    name = "graduncertainty"
    paper = "Lee & AlRegib, ICIP 2020"

    def fit(self, fc) -> GradUncertainty:
        super().fit(fc)
        self.weight_, self.bias_ = head_float64(self.fc_)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = h.double()
        g = logit_gradient(torch.softmax(x @ self.weight_.T + self.bias_, dim=1))
        scale = (x * x).sum(dim=1) + (0.0 if self.fc_.bias is None else 1.0)
        return (g * g).sum(dim=1) * scale, self.logits(h)
