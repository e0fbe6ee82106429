"""Logit-based baselines on penultimate features h with logits W h + b.

- MSP (Hendrycks & Gimpel, ICLR 2017): max_c softmax(W h + b)_c.
- Energy (Liu et al., NeurIPS 2020): logsumexp_c (W h + b)_c, temperature 1.
- ReAct (Sun et al., NeurIPS 2021): Energy of W min(h, tau) + b, tau given or the p-th
  percentile (default 90) of all ID training activations.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Detector, TrainStats


def clip(h: torch.Tensor, tau: float | None) -> torch.Tensor:
    """h' = min(h, tau); identity when tau is None."""
    return h if tau is None else h.clamp(max=tau)


class MSP(Detector):
    name = "msp"

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.double(), dim=1).max(dim=1).values


class Energy(Detector):
    """Energy score of W min(h, tau) + b (no clipping when ``clip_threshold`` is None)."""

    name = "energy"

    def __init__(self, clip_threshold: float | None = None):
        self.clip_threshold = clip_threshold

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(clip(h, self.clip_threshold))


class ReAct(Energy):
    """Energy with activations clipped at tau (given, or the ``percentile`` of ID activations)."""

    name = "react"

    def __init__(self, clip_threshold: float | None = None, percentile: float = 90.0):
        super().__init__(clip_threshold)
        self.percentile = percentile

    def fit(self, fc, stats: TrainStats | None = None) -> ReAct:
        super().fit(fc, stats)
        if self.clip_threshold is None:
            train = np.asarray(stats.get("train_features"), dtype=np.float64)
            self.clip_threshold = float(np.percentile(train, self.percentile))
        return self
