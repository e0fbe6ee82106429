"""ReAct (Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations",
NeurIPS 2021).

h' = min(h, tau); score = logsumexp(W h' + b). tau is given (``clip_threshold``), or the p-th
percentile (``percentile``, default 90) of all ID training activations, i.e. numpy.percentile
over every entry of the (N, D) training features in float64, linear interpolation. That value
is computed exactly by two counting passes over the (memory-mapped) features in row blocks
(``models.exact_percentile.array_percentile``), with no float64 copy of the array.
"""

from __future__ import annotations

import torch

from models.exact_percentile import array_percentile
from util.argtypes import nonnegative_float, percentile_arg
from util.io import row_blocks

from .base import Detector

BLOCK_ROWS = 4096


def clip(h: torch.Tensor, tau: float | None) -> torch.Tensor:
    """h' = min(h, tau); identity when tau is None."""
    return h if tau is None else h.clamp(max=tau)


class ReAct(Detector):
    """Energy of W min(h, tau) + b; tau given, or the ``percentile`` of the ID training activations."""

    name = "react"
    paper = "Sun et al., NeurIPS 2021"
    param_help = {
        "clip_threshold": "activation clipping threshold tau, h' = min(h, tau) (none: a percentile of the "
        "training activations, --react-percentile)",
        "percentile": "tau = this percentile of all ID training activations, when no threshold is given",
    }
    param_types = {"clip_threshold": nonnegative_float, "percentile": percentile_arg}

    def __init__(self, clip_threshold: float | None = None, percentile: float = 90.0):
        self.clip_threshold = clip_threshold
        self.percentile = percentile

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"percentile": (80.0, 85.0, 90.0, 95.0, 99.0)}

    def inert_params(self) -> set[str]:
        return {"percentile"} if self.clip_threshold is not None else set()

    def needs(self) -> tuple[str, ...]:
        return () if self.clip_threshold is not None else ("train_features",)

    def fit(self, fc, train_features=None) -> ReAct:
        super().fit(fc)
        if self.clip_threshold is not None:
            self.threshold_ = float(self.clip_threshold)
        else:
            if train_features is None:
                raise ValueError("ReAct without clip_threshold needs the ID training features")
            n = train_features.shape[0] * train_features.shape[1]
            self.threshold_ = array_percentile(
                lambda: row_blocks(train_features, BLOCK_ROWS), n, self.percentile, train_features.dtype
            )
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(clip(h, self.threshold_))
