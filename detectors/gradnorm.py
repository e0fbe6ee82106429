"""GradNorm (Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts
in the Wild", NeurIPS 2021).

Per image, L = KL(u || softmax(z / T)) up to a constant = -(1/C) sum_c log softmax(z / T)_c with
u uniform over the C classes and z = W h + b; score = sum_{c,j} |dL / dW_cj|, the L1 norm of the
gradient with respect to the last layer's weights (not its bias).

The authors back-propagate through the network, but for a linear head the gradient is the outer
product dL/dW = g h^T with g = dL/dz = (softmax(z / T) - u) / T, so its L1 norm factorises:

    score = ||h||_1 * ||softmax(z / T) - 1/C||_1 / T.

``GradNorm`` therefore computes it from cached features; ``gradnorm_network_scores`` is the
network-level autograd version, and the tests check that the two agree. Default T = 1 (paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from util.argtypes import positive_float

from .base import Detector


class GradNorm(Detector):
    name = "gradnorm"
    paper = "Huang et al., NeurIPS 2021"
    param_help = {"temperature": "temperature T of the softmax"}
    param_types = {"temperature": positive_float}

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"temperature": (0.5, 1.0, 2.0, 10.0, 100.0)}

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("GradNorm depends on h as well as the logits: use score_batch(h)")

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        temperature = float(self.temperature)
        p = torch.softmax(z.double() / temperature, dim=1)
        g = (p - 1.0 / z.shape[1]).abs().sum(dim=1) / temperature
        return h.double().abs().sum(dim=1) * g, z


def gradnorm_network_scores(model: torch.nn.Module, images: torch.Tensor, temperature: float = 1.0):
    """GradNorm by autograd, one image at a time: the L1 norm of dL/dW of ``model.get_classifier()``."""
    fc = model.get_classifier()
    scores = []
    for x in images:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            logits = model(x[None])
            loss = -F.log_softmax(logits / temperature, dim=1).mean()
            (grad,) = torch.autograd.grad(loss, fc.weight)
        scores.append(grad.abs().sum().double())
    return torch.stack(scores)
