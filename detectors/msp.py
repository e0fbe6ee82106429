"""MSP: maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified
and Out-of-Distribution Examples in Neural Networks", ICLR 2017).

score = max_c softmax(W h + b)_c, computed in float64.
"""

from __future__ import annotations

import torch

from .base import Detector


class MSP(Detector):
    name = "msp"
    paper = "Hendrycks & Gimpel, ICLR 2017"
    family = "logit"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.double(), dim=1).max(dim=1).values
