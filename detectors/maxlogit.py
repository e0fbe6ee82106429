"""MaxLogit (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling
Out-of-Distribution Detection for Real-World Settings", ICML 2022).

Score = max_c z_c with z = W h + b: the largest logit, unnormalised (no softmax), returned as float64.
"""

from __future__ import annotations

import torch

from .base import Detector


class MaxLogit(Detector):
    name = "maxlogit"
    aliases = ("mls",)
    paper = "Hendrycks et al., ICML 2022"
    family = "logit"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.double().max(dim=1).values
