"""VRA (Xu, Lian, Liu & Tao, "VRA: Variational Rectified Activation for Out-of-distribution
Detection", NeurIPS 2023; code: github.com/zeroQiaoba/VRA).

Each activation h_j of the penultimate feature goes through the piecewise rectifier

    VRA(h_j) = 0            if h_j < alpha_j
               h_j + gamma  if alpha_j <= h_j <= beta_j
               beta_j       if h_j > beta_j

(low activations suppressed, intermediate ones amplified by gamma, high ones truncated at beta,
not at beta + gamma: the function jumps down at beta); score = Energy, logsumexp(W h' + b), and
the same rectified logits give the predictions. This is the function of the authors' code (the
``clip2`` case of every model's forward: add gamma, zero where h + gamma < alpha + gamma, set beta
where h + gamma > beta + gamma); the paper's text was not available here to compare equation by
equation. The NeurIPS paper's method has exactly these three parameters (eta_alpha, eta_beta
and the amplification gamma, its experimental setup), so its VRA is this rectifier with gamma;
the authors' README keeps older names, VRA for gamma = 0 and VRA+ for gamma > 0 (its VRA++ adds
a quadratic feature-norm term to the score, not implemented here).

Thresholds: alpha / beta are the ``alpha_percentile`` / ``beta_percentile`` percentiles of the
ID training activations, or given values (``alpha``, ``beta``), as the authors do on ImageNet.
``per_unit`` (default, the authors' code: ``torch.quantile(train_features, q, dim=0)``) takes
one percentile per feature dimension j over the N training samples; ``per_unit=False``
(``--vra-global``) one percentile of all N*D activations, as ReAct. Both equal numpy.percentile
of the float64 values exactly (linear interpolation): per unit by a partition of column blocks
of the float32 features (about 512 MB at a time; ImageNet's 1.28M x 2048 features take about 20
passes over the file), globally by the streaming ``models.exact_percentile.array_percentile``.
The comparisons with alpha and beta are made in float64; the rectified features then go through
the float32 head. alpha > beta is an error.

Defaults (the authors' README commands with gamma, i.e. the NeurIPS VRA; the paper tunes
eta_alpha in {0.5, 0.6, 0.65, 0.7}, eta_beta in {0.8, 0.85, 0.9, 0.95, 0.99} and gamma in
{0.2, ..., 0.7} on Gaussian-noise images, the ``search_space`` here):

- CIFAR-10 and CIFAR-100 (DenseNet-101): per-unit percentiles 60 and 95, gamma = 0.6. On
  CIFAR-100 the authors combine VRA with the ODIN score (T = 1000, eps = 0.004); here the score
  is always Energy.
- ImageNet (ResNet-50): alpha = 0.6, beta = 0.7, gamma = 0.3 as values (their BiT-S-R101x1
  setting is alpha = 1, beta = 2, gamma = 0.6: pass ``--vra-alpha 1 --vra-beta 2 --vra-gamma
  0.6``).

Other implementations named VRA differ from the paper's function. OpenOOD (main branch, added in
2025, after v1.5; ``vra_postprocessor.py``) clips to [low, high] = global percentiles (10, 90) of
the ID validation features: activations below low are raised to low instead of zeroed and there is
no gamma. pytorch-ood 0.4's ``VRA`` clips the same way, element by element on the un-pooled feature
maps (C x H x W thresholds, percentiles 1 and 99) before the head's pooling. Both score Energy;
neither equals this module per image (with gamma = 0 they would still differ below alpha). The OptFS
authors' re-implementation (``VRA_P``) zeroes h <= alpha and clips at beta, without gamma.
"""

from __future__ import annotations

import numpy as np
import torch

from models.exact_percentile import array_percentile, percentile_positions
from util.argtypes import parsed_number, percentile_arg
from util.io import row_blocks

from .base import Detector, Param

BLOCK_ROWS = 4096
COLUMN_BLOCK_BYTES = 512 << 20  # float32 bytes of one block of columns (per-unit percentiles)


def real_number(text: str) -> float:
    """Any number (a threshold may be negative for features without a final ReLU)."""
    return parsed_number(text, float, "a number")


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
    params = (
        Param(
            "alpha_percentile",
            ("--vra-alpha-percentile",),
            "VRA: alpha (below it activations are zeroed) = this percentile of the ID training "
            "activations (default 60)",
            percentile_arg,
        ),
        Param(
            "beta_percentile",
            ("--vra-beta-percentile",),
            "VRA: beta (above it activations are set to beta) = this percentile of the ID training "
            "activations (default 95)",
            percentile_arg,
        ),
        Param(
            "gamma",
            ("--vra-gamma",),
            "VRA: added to activations in [alpha, beta] (default: 0.6 on CIFAR, 0.3 on ImageNet)",
            real_number,
        ),
        Param(
            "alpha",
            ("--vra-alpha",),
            "VRA: alpha as a value instead of a percentile (default on ImageNet: 0.6, ResNet-50)",
            real_number,
        ),
        Param(
            "beta",
            ("--vra-beta",),
            "VRA: beta as a value instead of a percentile (default on ImageNet: 0.7, ResNet-50)",
            real_number,
        ),
        Param(
            "per_unit",
            ("--vra-global",),
            "VRA: one percentile of all training activations (as ReAct) instead of one per "
            "feature dimension (the authors' code)",
            const=False,
        ),
    )
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
