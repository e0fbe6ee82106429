"""Neural Relation Graph (Kim, Yun & Song, "Neural Relation Graph: A Unified Framework for
Identifying Label Noise and Outlier Data", NeurIPS 2023).

Each image is a node with z = h / (||h||_2 + 1e-10) and p = softmax(W h + b). The edge between a
test image and training image i is the kernel k_i = max(0, z . z_i) * (p . p_i): cosine
similarity of the features times the compatibility of the predictions. Score = sum_i k_i^t over
the edges with k_i > threshold (the relation graph's total edge weight; higher = ID).
Defaults, from OpenOOD (``RelationPostprocessor``, ``configs/postprocessors/relation.yml``) and
the authors' code (snu-mllab/Neural-Relation-Graph, ``relation.py``, ``detect_ood.py``):
t = 1 (``pow``; the authors warn that t != 1 is not optimal for OOD detection), threshold 0.03,
all training images as the bank; the search space is OpenOOD's sweep of t. ``fraction`` < 1 keeps
a seeded random share of the bank (the authors' ``--hop`` subsamples it likewise). OpenOOD
normalises by sqrt(||h||^2 + 1e-10), the authors by ||h||: equal to float32 here but for
features of norm near 1e-5 or less. The authors' OOD score 1 / (sum + 1e-6) ranks the same.

Memory: the relation matrix is built in blocks of ``block`` test rows against ``BANK_ROWS``
training rows (float32, as OpenOOD), each block's sum added in float64. A bank (z and p) up to
``MAX_BANK_BYTES`` is held in memory; a larger one (ImageNet's 1.28M training images) stays in
its file with only the row norms kept, and each batch reads it once, block by block, recomputing
that block's p from the head.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import fraction_arg, nonnegative_float
from util.io import row_blocks, take_rows

from .base import Detector
from .knn import normalise, row_norms
from .statistics import seeded_rows

MAX_BANK_BYTES = 1 << 30  # larger banks are streamed from their file
BANK_ROWS = 16384  # training rows of the relation matrix at a time


def edge_sum(z, p, bank_z, bank_p, power: int, threshold: float) -> torch.Tensor:
    """sum_i k_i^power over the edges k_i = max(0, z . z_i) (p . p_i) > threshold, float64 (B,)."""
    kernel = (z @ bank_z.T).clamp(min=0) * (p @ bank_p.T)
    edges = torch.where(kernel > threshold, kernel**power, torch.zeros((), dtype=kernel.dtype))
    return edges.double().sum(dim=1)


class Relation(Detector):
    name = "relation"
    paper = "Kim et al., NeurIPS 2023"
    param_help = {
        "power": "exponent t of each edge (OpenOOD's pow)",
        "threshold": "edges at or below this kernel value are left out",
        "fraction": "share of training features in the bank, a seeded random subset",
    }
    param_types = {"threshold": nonnegative_float, "fraction": fraction_arg}
    fit_params = ("fraction", "seed")

    def __init__(
        self, power: int = 1, threshold: float = 0.03, fraction: float = 1.0, seed: int = 0, block: int = 1024
    ):
        self.power = power
        self.threshold = threshold
        self.fraction = fraction
        self.seed = seed
        self.block = block

    def check_params(self) -> None:
        if not self.power >= 1:
            raise ValueError(f"Relation power must be >= 1, got {self.power}")
        if not self.threshold >= 0:
            raise ValueError(f"Relation threshold must be >= 0, got {self.threshold}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"Relation fraction of training data must be in (0, 1], got {self.fraction}")

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"power": (1, 2, 4, 6, 8)}

    def fit(self, fc, train_features) -> Relation:
        super().fit(fc)
        features = train_features
        keep = seeded_rows(len(features), float(self.fraction), self.seed)
        if keep is not None:
            features = take_rows(features, keep)  # a memory-mapped file is read, not mapped in
        if len(features) == 0:
            raise ValueError("Relation needs at least one training feature; got none")
        if len(features) * (features.shape[1] + self.fc_.out_features) * 4 <= MAX_BANK_BYTES:
            h = torch.from_numpy(np.array(features, dtype=np.float32))
            self.bank_, self.bank_prob_ = self._nodes(h)
            self.bank_norm_ = None
        else:  # streamed: the rows stay in their file, their norms are kept
            self.bank_, self.bank_prob_ = features, None
            self.bank_norm_ = row_norms(features, BANK_ROWS)
        return self

    def _nodes(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, p) of features h: unit rows and the softmax of the logits of h itself."""
        with torch.no_grad():  # not inference mode: the bank is read again outside it
            return normalise(h), torch.softmax(self.fc_(h), dim=1)

    def _bank_blocks(self):
        """(z_i, p_i) of the bank, ``BANK_ROWS`` rows at a time."""
        if self.bank_norm_ is None:
            for start in range(0, len(self.bank_), BANK_ROWS):
                yield self.bank_[start : start + BANK_ROWS], self.bank_prob_[start : start + BANK_ROWS]
            return
        start = 0
        for block in row_blocks(self.bank_, BANK_ROWS):
            h = torch.from_numpy(block.astype(np.float32, copy=False))
            norms = torch.from_numpy(self.bank_norm_[start : start + len(block)])
            start += len(block)
            with torch.no_grad():
                yield h / norms[:, None], torch.softmax(self.fc_(h), dim=1)

    @torch.no_grad()
    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = h.float()
        logits = self.logits(h)
        z, p = normalise(h), torch.softmax(logits, dim=1)
        total = torch.zeros(len(h), dtype=torch.float64)
        power, threshold = int(self.power), float(self.threshold)
        for bank_z, bank_p in self._bank_blocks():
            for start in range(0, len(h), self.block):
                rows = slice(start, start + self.block)
                total[rows] += edge_sum(z[rows], p[rows], bank_z, bank_p, power, threshold)
        return total, logits
