"""pNML regret (Bibas, Feder & Hassner, "Single Layer Predictive Normalized Maximum Likelihood for
Out-of-Distribution Detection", NeurIPS 2021).

With unit features x = h / ||h||_2 (training rows x_i stacked as X, N x D) and p = softmax(W x + b)
(the head applied to the normalised feature, as the authors' code does), the pNML learner's
normalisation factor is K(x) = sum_c p_c / (p_c + (1 - p_c) p_c^g) with
g = x^T (X^T X)^+ x / (1 + x^T (X^T X)^+ x); the regret is log K / log C, in [0, 1], and the
score is minus the regret (a feature in directions the training features rarely take, with a
flat prediction, gets a high regret). The paper has no hyperparameter. The predictions (ID
accuracy) are the classifier's argmax of W h + b on the raw features.

Numerical choices: X^T X is summed in float64 over row blocks (memory-mapped training features
are never copied whole) and pseudo-inverted through its eigendecomposition, dropping eigenvalues
at or below ``rtol`` * the largest; the default, D * eps64 (numpy's matrix_rank cutoff), gives the
exact inverse when X^T X is well conditioned and the pseudo-inverse when it is singular (fewer
training images than D, or a unit that is always 0). The authors invert in float32
(pseudo-inverse when the smallest singular value is <= 1e-16); pytorch-ood 0.4 pseudo-inverts in
float32 with torch's default cutoff, rtol = D * eps32, so on real features, whose X^T X spans
many orders of magnitude, it drops directions this keeps (``rtol`` = D * 1.19e-7 reproduces it,
benchmarks/compare_pytorch_ood.py). Each term is evaluated as 1 / (1 + (1 - p) exp((g - 1) log p)) from
the float64 log-softmax, so a probability that underflows gives 0 (pytorch-ood clamps p to
[1e-12, 1 - 1e-12]). A zero feature has x = 0.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import nonnegative_float
from util.io import row_blocks

from .base import Detector


def unit_rows(h: np.ndarray | torch.Tensor):
    """h / ||h||_2 row by row; a zero row stays zero."""
    lib = torch if isinstance(h, torch.Tensor) else np
    norm = lib.sqrt((h * h).sum(1))[:, None]
    return h / lib.where(norm > 0, norm, lib.ones_like(norm))


def pseudo_inverse_root(gram: np.ndarray, rtol: float | None = None) -> np.ndarray:
    """B (D, r) with B B^T = gram^+ (symmetric gram): eigenvectors over sqrt(eigenvalue), keeping
    eigenvalues above ``rtol`` times the largest (None: D * float64 eps)."""
    eigvals, eigvecs = np.linalg.eigh(gram)
    rtol = len(gram) * np.finfo(np.float64).eps if rtol is None else rtol
    keep = eigvals > rtol * max(eigvals.max(initial=0.0), 0.0)
    return eigvecs[:, keep] / np.sqrt(eigvals[keep])


def regret(x: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """log K / log C of the pNML learner from x^T (X^T X)^+ x (B,) and log-probabilities (B, C)."""
    g = (x / (1 + x))[:, None]
    one_minus_p = -torch.expm1(log_p)
    terms = 1 / (1 + one_minus_p * torch.exp((g - 1) * log_p))
    return torch.log(terms.sum(dim=1)) / np.log(log_p.shape[1])


class PNML(Detector):
    name = "pnml"
    paper = "Bibas et al., NeurIPS 2021"
    param_help = {
        "rtol": "eigenvalues of X^T X at or below rtol x the largest are left out of its pseudo-inverse "
        "(none: D x float64 eps)"
    }
    param_types = {"rtol": nonnegative_float}

    def __init__(self, rtol: float | None = None):
        self.rtol = rtol

    def check_params(self) -> None:
        if self.rtol is not None and not 0 <= self.rtol < 1:
            raise ValueError(f"pnml rtol must be in [0, 1), got {self.rtol}")

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        if num_classes >= 2:
            return []
        return [
            f"pnml needs a head of at least 2 classes (its regret divides by log C); it has {num_classes}"
        ]

    def fit(self, fc, train_features, chunk: int = 8192) -> PNML:
        super().fit(fc)
        if len(train_features) == 0:
            raise ValueError("pnml needs at least one training feature; got none")
        if self.fc_.out_features < 2:
            raise ValueError(f"pnml needs a head of at least 2 classes, got {self.fc_.out_features}")
        d = train_features.shape[1]
        gram = np.zeros((d, d))
        for block in row_blocks(train_features, chunk):
            x = unit_rows(block.astype(np.float64))
            gram += x.T @ x
        root = pseudo_inverse_root(gram, None if self.rtol is None else float(self.rtol))
        self.rank_ = int(root.shape[1])
        self.projector_root_ = torch.from_numpy(np.ascontiguousarray(root))
        return self

    @torch.no_grad()
    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = unit_rows(h.double())
        spread = ((x @ self.projector_root_) ** 2).sum(dim=1)  # x^T (X^T X)^+ x
        weight, bias = self.fc_.weight.double(), self.fc_.bias
        logits = x @ weight.T + (bias.double() if bias is not None else 0)
        scores = -regret(spread, torch.log_softmax(logits, dim=1))
        return scores, self.logits(h)
