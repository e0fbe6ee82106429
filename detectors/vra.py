"""VRA (Xu, Lian, Liu & Tao, "VRA: Variational Rectified Activation for Out-of-distribution
Detection", NeurIPS 2023; code: github.com/zeroQiaoba/VRA).

Each activation h_j of the penultimate feature goes through the piecewise rectifier

    VRA(h_j) = 0            if h_j < alpha_j
               h_j + gamma  if alpha_j <= h_j <= beta_j
               beta_j       if h_j > beta_j

(low activations suppressed, intermediate ones amplified by gamma, high ones truncated at beta,
not at beta + gamma: the function jumps down at beta); score = Energy, logsumexp(W h' + b), and
the same rectified logits give the predictions. The parameters are the paper's eta_alpha,
eta_beta and gamma; the function is that of the authors' code (its ``clip2`` case).

Thresholds: alpha / beta are the ``alpha_percentile`` / ``beta_percentile`` percentiles of the
ID training activations, or given values (``alpha``, ``beta``). ``per_unit`` (default, as the
authors' code) takes one percentile per feature dimension j over the N training samples;
``per_unit=False`` (``--vra-global``) one percentile of all N*D activations, as ReAct. Both equal
numpy.percentile of the float64 values exactly (linear interpolation): per unit by a partition
of column blocks of the float32 features, globally by ``models.exact_percentile``. The
comparisons with alpha and beta are made in float64; the rectified features then go through the
float32 head. alpha > beta is an error.

Defaults, from the authors' README commands with gamma (the search space is the paper's grid,
eta_alpha in {0.5, 0.6, 0.65, 0.7}, eta_beta in {0.8, ..., 0.99}, gamma in {0.2, ..., 0.7}):
- CIFAR-10 and CIFAR-100 (DenseNet-101): per-unit percentiles 60 and 95, gamma = 0.6; the score
  is always Energy.
- ImageNet (ResNet-50): alpha = 0.6, beta = 0.7, gamma = 0.3 as values (their BiT-S-R101x1
  setting: ``--vra-alpha 1 --vra-beta 2 --vra-gamma 0.6``).
"""

from __future__ import annotations

import numpy as np
import torch

from models.exact_percentile import array_percentile, percentile_positions
from util.argtypes import percentile_arg
from util.io import row_blocks

from .base import Detector

BLOCK_ROWS = 4096
COLUMN_BLOCK_BYTES = 512 << 20  # float32 bytes of one block of columns (per-unit percentiles)


def _lerp(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    """numpy's linear-percentile interpolation of float64 arrays (form switches at gamma 0.5)."""
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def column_percentiles(features, percentiles, block_bytes: int = COLUMN_BLOCK_BYTES) -> np.ndarray:
    """(len(percentiles), D) float64: numpy.percentile(features.astype(float64), p, axis=0) exactly.

    Reads ``features`` (N, D), possibly memory-mapped, in row blocks, one block of columns at a
    time (as many as fit ``block_bytes`` in the feature dtype), and partitions each column for
    the two order statistics numpy interpolates between.
    """
    n, d = features.shape
    if n == 0:
        raise ValueError("percentile of an empty array")
    positions = [percentile_positions(n, p) for p in percentiles]
    kth = sorted({k for k0, k1, _ in positions for k in (k0, k1)})
    cols = max(1, block_bytes // (n * features.dtype.itemsize))
    out = np.empty((len(percentiles), d))
    for start in range(0, d, cols):
        stop = min(d, start + cols)
        block = np.empty((stop - start, n), dtype=features.dtype)  # one column per row
        row = 0
        for rows in row_blocks(features, BLOCK_ROWS):
            block[:, row : row + len(rows)] = rows[:, start:stop].T
            row += len(rows)
        block.partition(kth, axis=1)
        for i, (k0, k1, gamma) in enumerate(positions):
            a = block[:, k0].astype(np.float64)
            b = block[:, k1].astype(np.float64)
            out[i, start:stop] = _lerp(a, b, gamma)
    return out


def vra(h: torch.Tensor, alpha, beta, gamma: float) -> torch.Tensor:
    """The VRA rectifier (module docstring); alpha, beta scalars or (D,) float64 tensors.

    Compared and shifted in float64, returned in h's dtype.
    """
    x = h.double()
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    beta = torch.as_tensor(beta, dtype=torch.float64)
    middle = torch.where(x > beta, beta.expand_as(x), x + gamma)
    return torch.where(x < alpha, torch.zeros_like(x), middle).to(h.dtype)


class VRA(Detector):
    """Energy of W vra(h) + b; thresholds from ID training percentiles or given."""

    name = "vra"
    paper = "Xu et al., NeurIPS 2023"
    param_help = {
        "alpha_percentile": "alpha (below it activations are zeroed) = this percentile of the ID training "
        "activations",
        "beta_percentile": "beta (above it activations are set to beta) = this percentile of the ID training "
        "activations",
        "gamma": "added to activations in [alpha, beta]",
        "alpha": "alpha as a value instead of a percentile, ResNet-50's on imagenet",
        "beta": "beta as a value instead of a percentile, ResNet-50's on imagenet",
        "per_unit": "one percentile per feature dimension (the authors' code), not one of all training "
        "activations (as ReAct)",
    }
    param_types = {"alpha_percentile": percentile_arg, "beta_percentile": percentile_arg}
    defaults = {
        "CIFAR-10": {"alpha_percentile": 60.0, "beta_percentile": 95.0, "gamma": 0.6},
        "CIFAR-100": {"alpha_percentile": 60.0, "beta_percentile": 95.0, "gamma": 0.6},
        "imagenet": {"alpha": 0.6, "beta": 0.7, "gamma": 0.3},
    }
    fit_params = ("alpha_percentile", "beta_percentile", "alpha", "beta", "per_unit")

    def __init__(
        self,
        alpha_percentile: float = 60.0,
        beta_percentile: float = 95.0,
        gamma: float = 0.6,
        alpha: float | None = None,
        beta: float | None = None,
        per_unit: bool = True,
    ):
        self.alpha_percentile = alpha_percentile
        self.beta_percentile = beta_percentile
        self.gamma = gamma
        self.alpha = alpha
        self.beta = beta
        self.per_unit = per_unit

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {
            "alpha_percentile": (50.0, 60.0, 65.0, 70.0),
            "beta_percentile": (80.0, 85.0, 90.0, 95.0, 99.0),
            "gamma": (0.2, 0.3, 0.4, 0.5, 0.6, 0.7),
        }

    def inert_params(self) -> set[str]:
        inert = set()
        if self.alpha is not None:
            inert.add("alpha_percentile")
        if self.beta is not None:
            inert.add("beta_percentile")
        if self.alpha is not None and self.beta is not None:
            inert.add("per_unit")
        return inert

    def needs(self) -> tuple[str, ...]:
        return () if self.alpha is not None and self.beta is not None else ("train_features",)

    def fit(self, fc, train_features=None) -> VRA:
        super().fit(fc)
        given = {"alpha": self.alpha, "beta": self.beta}
        wanted = {"alpha": self.alpha_percentile, "beta": self.beta_percentile}
        wanted = {k: p for k, p in wanted.items() if given[k] is None}
        found = dict(zip(wanted, self._percentiles(train_features, list(wanted.values()))))
        self.alpha_ = found["alpha"] if "alpha" in found else float(self.alpha)
        self.beta_ = found["beta"] if "beta" in found else float(self.beta)
        if bool((torch.as_tensor(self.alpha_) > torch.as_tensor(self.beta_)).any()):
            raise ValueError("VRA needs alpha <= beta (for every feature dimension)")
        return self

    def _percentiles(self, train_features, percentiles: list[float]) -> list:
        """Each percentile of the training activations: a (D,) float64 tensor per unit, else a float."""
        if not percentiles:
            return []
        if train_features is None:
            raise ValueError("VRA without both alpha and beta needs the ID training features")
        if self.per_unit:
            return [torch.from_numpy(row) for row in column_percentiles(train_features, percentiles)]
        n = train_features.shape[0] * train_features.shape[1]

        def blocks():
            return row_blocks(train_features, BLOCK_ROWS)

        return [array_percentile(blocks, n, p, train_features.dtype) for p in percentiles]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(vra(h, self.alpha_, self.beta_, self.gamma))
