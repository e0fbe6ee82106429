"""CF-OOD: the Concentration-Free Outlier Factor on penultimate features (Angiulli, Fassetti & Zupi,
"CF-OOD: Concentration-Free Density Estimation for Reliable Out-of-Distribution Detection", 2026;
CFOF: Angiulli, "CFOF: A Concentration Free Measure for Anomaly Detection", ACM TKDD 2020).

Features are l2-normalised, z = h / (||h||_2 + 1e-10). The reference set R is a seeded random share
``fraction`` of the n normalised training features. For each reference point r and each neighbourhood
size k_j = kappa_j n of a fixed grid kappa_1 < ... < kappa_J, d_j(r) is the squared distance from r to
its k_j-th nearest other reference point. A test point x is a reverse neighbour of r at k_j when
||x - r||^2 <= d_j(r). CFOF(x) = the smallest kappa_j at which x is a reverse neighbour of at least
a share ``rho`` of R (1 if of none), and score = -CFOF(x): an ID image is close to many reference
points at small neighbourhoods. Defaults, grid and positions are OpenOOD's (postprocessor ``cfood``,
configs/postprocessors/cfood.yml): fraction 0.1, rho 0.01 (its ``k``), kappa = 100 values in
[0.001, 0.1], 81 in [0.105, 0.5], 49 in [0.51, 0.99], neighbour position int(kappa n - 1) + 1
(the self-distance 0 skipped), positions that do not increase dropped.

Computation: the first share kappa_j with count_j >= rho is the m-th smallest over r of t_r(x) = #{j :
d_j(r) < ||x - r||^2} (d(r) is sorted in j), m the least integer with m / n >= rho; distances are
float64. Fitting sorts the n x n reference distances in row blocks (n^2 D work: 5,000 references for
CIFAR at the default share, 128k for ImageNet). OpenOOD draws the subset with torch.randperm and keeps
int(fraction n) rows; here ``seeded_rows`` (round, seeded).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from util.argtypes import fraction_arg
from util.io import take_rows

from .base import Detector
from .knn import bank_size
from .statistics import seeded_rows

BLOCK_ELEMENTS = 1 << 22  # entries of a (rows x references) block of distances


def neighbourhood_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(kappa_j, neighbour position of each) for n references: OpenOOD's grid of shares, positions
    int(kappa n - 1) + 1 in the sorted distances that include the self-distance; non-increasing
    positions dropped."""
    kappa = np.concatenate(
        (np.linspace(0.001, 0.1, 100), np.linspace(0.105, 0.5, 81), np.linspace(0.51, 0.99, 49))
    )
    position = (kappa * n - 1).astype(int) + 1  # truncation toward zero, as int()
    keep = np.concatenate(([True], position[1:] > position[:-1]))
    return kappa[keep], position[keep]


def least_count(rho: float, n: int) -> int:
    """The least integer m >= 1 with m / n >= rho (float64 division, as the share is compared)."""
    m = max(1, math.floor(rho * n))
    while m / n < rho:
        m += 1
    while m > 1 and (m - 1) / n >= rho:
        m -= 1
    return m


def normalised(h: torch.Tensor) -> torch.Tensor:
    """h / (||h||_2 + 1e-10) in float32 (as OpenOOD), then float64."""
    return (h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-10)).double()


def squared_distances(x: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """||x_i - r_k||^2 (float64) of every row of x against every reference row, clamped at 0."""
    sq = (x * x).sum(dim=1, keepdim=True)
    return (sq + bank_sq[None, :] - 2 * x @ bank.T).clamp(min=0)


class CFOOD(Detector):
    name = "cfood"
    paper = "Angiulli et al., 2026"
    param_help = {
        "fraction": "share of training features kept as the reference set, a seeded random subset",
        "rho": "share of reference points x must be a reverse k-nearest neighbour of",
    }
    param_types = {"fraction": fraction_arg, "rho": fraction_arg}
    fit_params = ("fraction", "seed")

    def __init__(self, fraction: float = 0.1, rho: float = 0.01, seed: int = 0):
        self.fraction = fraction
        self.rho = rho
        self.seed = seed

    def check_params(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"CFOOD fraction of training data must be in (0, 1], got {self.fraction}")
        if not 0 < self.rho <= 1:
            raise ValueError(f"CFOOD rho must be in (0, 1], got {self.rho}")

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        if num_train is None or bank_size(num_train, float(self.fraction)) >= 2:
            return []
        return [
            f"cfood needs at least 2 reference features; {self.flag('fraction')} {self.fraction:g} of "
            f"{num_train} training images keeps fewer; raise it or use more training images"
        ]

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        """OpenOOD's sweep (configs/postprocessors/cfood.yml)."""
        return {"fraction": (0.1, 0.5, 1.0), "rho": (0.001, 0.005, 0.01, 0.05)}

    def fit(self, fc, train_features) -> CFOOD:
        super().fit(fc)
        keep = seeded_rows(len(train_features), float(self.fraction), self.seed)
        features = train_features if keep is None else take_rows(train_features, keep)
        if len(features) < 2:
            raise ValueError(f"CFOOD needs at least 2 reference features, got {len(features)}")
        z = normalised(torch.from_numpy(np.array(features, dtype=np.float32)))
        self.bank_, self.bank_sq_ = z, (z * z).sum(dim=1)
        kappa, position = neighbourhood_grid(len(z))
        self.kappa_ = torch.from_numpy(kappa)
        self.radii_ = self._neighbour_radii(torch.from_numpy(position))
        return self

    def _neighbour_radii(self, position: torch.Tensor) -> torch.Tensor:
        """(n, J): squared distance of each reference point to its neighbour at each position."""
        n = len(self.bank_)
        rows = max(1, BLOCK_ELEMENTS // n)
        out = []
        for start in range(0, n, rows):
            block = squared_distances(self.bank_[start : start + rows], self.bank_, self.bank_sq_)
            out.append(torch.sort(block, dim=1).values[:, position])
        return torch.cat(out).contiguous()

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, steps = len(self.bank_), len(self.kappa_)
        m = least_count(float(self.rho), n)
        z = normalised(h.float())
        rows = max(1, BLOCK_ELEMENTS // n)
        out = []
        for start in range(0, len(z), rows):
            dist = squared_distances(z[start : start + rows], self.bank_, self.bank_sq_)
            below = torch.searchsorted(self.radii_, dist.T.contiguous())  # t_r(x): (n, rows)
            first = torch.kthvalue(below, m, dim=0).values  # first step with count >= rho
            kappa = torch.ones(len(first), dtype=torch.float64)
            inside = first < steps
            kappa[inside] = self.kappa_[first[inside]]
            out.append(-kappa)
        scores = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
        return scores, self.logits(h)
