"""Deep nearest neighbours (Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest
Neighbors", ICML 2022).

z = h / (||h||_2 + 1e-10) for test and ID training features alike; score = -||z - z_(k)||_2,
the negated Euclidean distance to the k-th nearest normalised training feature.
Paper settings: CIFAR k = 50 with all training images; ImageNet k = 1000 with a random 1%
(``fraction``, the default on ImageNet). Distances come from ||z - t||^2 = 2 - 2 z.t (unit
vectors), in blocks of ``block`` test rows so the (block, N) similarity matrix stays small.
Predictions (ID accuracy) are the classifier's argmax of W h + b.

Memory: a bank up to ``MAX_BANK_BYTES`` is normalised once and kept in memory. A larger one (all
1.28M ImageNet training features are 10.5 GB) stays where it is (the cache's memory-mapped file):
only its row norms are kept, and each batch of test rows reads the bank in blocks of
``BANK_ROWS`` rows (plain file reads, so the file never becomes resident memory), keeping a
running top-k of the similarities. Both paths are exact: the k-th largest similarity of the same
dot products.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import fraction_arg
from util.io import row_blocks, take_rows

from .base import Detector
from .statistics import seeded_rows

MAX_BANK_BYTES = 1 << 30  # larger training banks are streamed from their file
BANK_ROWS = 16384  # rows of a streamed bank read at a time


def bank_size(num_train: int, fraction: float) -> int:
    """How many of ``num_train`` training rows a seeded share ``fraction`` keeps (``seeded_rows``:
    all at fraction 1, else round(fraction * N), at least one)."""
    return num_train if fraction >= 1 else max(1, round(fraction * num_train))


def bank_problems(detector, num_train: int | None) -> list[str]:
    """k against the training bank that ``fraction`` keeps of ``num_train`` images (KNN, NNGuide)."""
    if num_train is None:
        return []
    bank = bank_size(num_train, float(detector.fraction))
    if detector.k <= bank:
        return []
    k, fraction = detector.flag("k"), detector.flag("fraction")
    if detector.fraction >= 1:
        return [f"{k} {detector.k} exceeds the {num_train} training images; lower {k}"]
    return [
        f"{k} {detector.k} exceeds the {bank} training features kept by {fraction} {detector.fraction:g} "
        f"of {num_train} training images; lower {k} or raise {fraction}"
    ]


def normalise(h: torch.Tensor) -> torch.Tensor:
    return h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-10)


def row_norms(features, chunk: int = BANK_ROWS) -> np.ndarray:
    """||h||_2 + 1e-10 of every row, float32 as ``normalise`` divides by it, read in blocks."""
    out = [np.zeros(0, np.float32)]
    for block in row_blocks(features, chunk):
        h = torch.from_numpy(block.astype(np.float32, copy=False))
        out.append((torch.linalg.vector_norm(h, dim=1) + 1e-10).numpy())
    return np.concatenate(out)


class KNN(Detector):
    name = "knn"
    paper = "Sun et al., ICML 2022"
    param_help = {
        "k": "number of nearest neighbours: the score is the distance to the k-th",
        "fraction": "share of training features used, a seeded random subset",
    }
    param_types = {"fraction": fraction_arg}
    defaults = {"imagenet": {"k": 1000, "fraction": 0.01}}
    fit_params = ("fraction", "seed")

    def __init__(self, k: int = 50, fraction: float = 1.0, seed: int = 0, block: int = 1024):
        self.k = k
        self.fraction = fraction
        self.seed = seed
        self.block = block

    def check_params(self) -> None:
        if self.k < 1:
            raise ValueError(f"KNN k must be >= 1, got {self.k}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"KNN fraction of training data must be in (0, 1], got {self.fraction}")

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        return bank_problems(self, num_train)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"k": (1, 5, 10, 20, 50, 100, 200)}

    def fit(self, fc, train_features) -> KNN:
        super().fit(fc)
        features = train_features
        n = len(features)
        keep = seeded_rows(n, float(self.fraction), self.seed)
        if keep is not None:
            features = take_rows(features, keep)  # a memory-mapped file is read, not mapped in
        if len(features) < self.k:
            raise ValueError(f"KNN k = {self.k} exceeds the {len(features)} training features")
        if len(features) * features.shape[1] * 4 <= MAX_BANK_BYTES:
            self.bank_ = normalise(torch.from_numpy(np.array(features, dtype=np.float32)))
            self.bank_norm_ = None
        else:  # streamed: the rows stay in their file, their norms are kept
            self.bank_ = features
            self.bank_norm_ = row_norms(features)
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.bank_) < self.k:
            raise ValueError(f"KNN k = {self.k} exceeds the {len(self.bank_)} training features")
        z = normalise(h.float())
        if self.bank_norm_ is not None:
            kth = self._kth_similarity_streamed(z).double()
            return -torch.sqrt((2 - 2 * kth).clamp(min=0)), self.logits(h)
        out = []
        for start in range(0, len(z), self.block):
            sim = z[start : start + self.block] @ self.bank_.T
            kth = torch.topk(sim, int(self.k), dim=1).values[:, -1].double()
            out.append(-torch.sqrt((2 - 2 * kth).clamp(min=0)))
        scores = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
        return scores, self.logits(h)

    def _kth_similarity_streamed(self, z: torch.Tensor) -> torch.Tensor:
        """k-th largest z.t over the streamed bank: one pass over its file, a running top-k."""
        k = int(self.k)
        best = torch.full((len(z), k), -torch.inf)
        start = 0
        for block in row_blocks(self.bank_, BANK_ROWS):
            bank = torch.from_numpy(block.astype(np.float32, copy=False))
            bank /= torch.from_numpy(self.bank_norm_[start : start + len(block)])[:, None]
            start += len(block)
            sim = z @ bank.T
            best = torch.topk(torch.cat([best, sim], dim=1), k, dim=1, sorted=False).values
        return best.min(dim=1).values
