"""OptFS (Zhao, Xu, Gupta, Asthana, Zheng & Gould, "Towards Optimal Feature-Shaping Methods for
Out-of-Distribution Detection", ICLR 2024; code: github.com/Qinyu-Allen-Zhao/OptFSOOD).

Piecewise-constant feature shaping: the range [lo, hi) of activation values, lo and hi the 0.1th
and 99.9th percentiles of all ID training activations, is cut into K (``intervals``, default
100) intervals of equal width w = (hi - lo) / K, I_k = [lo + k w, lo + (k + 1) w) (the last one
ending at hi exactly). Each activation is scaled by its interval's weight,

    h'_j = theta_k h_j  if h_j in I_k,     h'_j = 0  outside [lo, hi),

and the score is the max logit of the shaped features for the class predicted from the unshaped
ones, without the bias: s = sum_j W[c^, j] h'_j with c^ = argmax(W h + b) (``score="maxlogit"``,
the authors' default "vanilla" score, "Ours (V)"); ``score="energy"`` is their energy variant,
logsumexp(W h' + b). Predictions (ID accuracy) are those of W h + b in both cases.

The weights are the paper's closed form without OOD data (the max-logit score is linear in
theta, so its expected ID value under a norm bound on theta is maximised by the direction of the
mean below), computed as the authors' code does:

    I_k = (1/N) sum_i sum_j 1[h_ij in I_k] W[c^_i, j] h_ij,    theta = 1000 * I / ||I||_2,

c^_i the prediction on training sample i (not its label). The scale 1000 is the authors'; it
does not change the max-logit ranking but does change the energy score.

Numerical choices: lo and hi are numpy.percentile of the float64 values, computed exactly by the
streaming ``models.exact_percentile.array_percentile``; I is accumulated in float64 over row
blocks of the (memory-mapped) features; the predictions use the float32 head. The fit reads the
features five times (four percentile passes, one accumulation pass). The K intervals partition
[lo, hi) exactly. The optional dynamic-weight refinement (appendix) is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch

from models.exact_percentile import array_percentile
from util.argtypes import name_arg
from util.io import row_blocks

from .base import Detector, head_float64

LOWER_PERCENTILE = 0.1  # np.quantile(features, 1e-3) in the authors' code
UPPER_PERCENTILE = 99.9
THETA_NORM = 1000.0
BLOCK_ROWS = 4096
SCORES = ("maxlogit", "energy")


class OptFS(Detector):
    """Max logit (or Energy) of piecewise-constant shaped features, weights from ID data only."""

    name = "optfs"
    paper = "Zhao et al., ICLR 2024"
    param_help = {
        "intervals": "number of equal-width intervals between the 0.1th and 99.9th percentiles of the ID "
        "training activations",
        "score": "score of the shaped features: maxlogit (the predicted class's logit without bias) or "
        "energy",
    }
    param_types = {"score": name_arg(SCORES, "OptFS score")}
    fit_params = ("intervals",)

    def __init__(self, intervals: int = 100, score: str = "maxlogit"):
        self.intervals = intervals
        self.score = score

    def check_params(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"OptFS score must be one of {', '.join(SCORES)}, got {self.score!r}")

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"intervals": (25, 50, 100, 200, 400)}

    def fit(self, fc, train_features) -> OptFS:
        super().fit(fc)
        n, d = train_features.shape
        if n == 0:
            raise ValueError("OptFS needs at least one ID training feature")

        def blocks():
            return row_blocks(train_features, BLOCK_ROWS)

        lo, hi = (
            array_percentile(blocks, n * d, p, train_features.dtype)
            for p in (LOWER_PERCENTILE, UPPER_PERCENTILE)
        )
        if not hi > lo:
            raise ValueError(f"OptFS: the activation range [{lo}, {hi}) is empty")
        k = int(self.intervals)
        width = (hi - lo) / k
        edges = np.append(lo + width * np.arange(k), hi)
        edges_t = torch.from_numpy(edges)
        weight = self.fc_.weight.detach().double()
        total = torch.zeros(k + 2, dtype=torch.float64)  # bin 0: below lo, bin k + 1: at or above hi
        with torch.inference_mode():
            for block in blocks():
                x = torch.from_numpy(block.astype(np.float32, copy=False))
                h = x.double()
                bins = torch.bucketize(h, edges_t, right=True).view(-1)
                contribution = (weight[self.fc_(x).argmax(dim=1)] * h).view(-1)
                total += torch.bincount(bins, weights=contribution, minlength=k + 2)
        total = total.numpy()
        mean = total[1 : k + 1] / n
        norm = np.linalg.norm(mean)
        if norm == 0:
            raise ValueError("OptFS: every interval weight is zero")
        self.lower_, self.upper_ = float(lo), float(hi)
        self.edges_ = edges_t
        self.theta_ = torch.from_numpy(np.concatenate([[0.0], THETA_NORM * mean / norm, [0.0]]))
        self.weight64_ = weight
        self.bias64_ = head_float64(self.fc_)[1]
        return self

    def shape(self, h: torch.Tensor) -> torch.Tensor:
        """h' = theta_k h on interval k, 0 outside [lo, hi); float64."""
        x = h.double()
        return x * self.theta_[torch.bucketize(x, self.edges_, right=True)]

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.fc_(h)
        shaped = self.shape(h)
        if self.score == "energy":
            return torch.logsumexp(shaped @ self.weight64_.T + self.bias64_, dim=1), z
        pred = (h.double() @ self.weight64_.T + self.bias64_).argmax(dim=1)  # float64: batch-independent
        return (self.weight64_[pred] * shaped).sum(dim=1), z
