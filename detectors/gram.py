"""Gram matrices of several layers (Sastry & Oore, "Detecting Out-of-Distribution Examples with
In-distribution Examples and Gram Matrices", ICML 2020).

For a layer output F (C_l channels x positions) and a power p, the p-th order Gram statistic is
g_p = sign(r) |r|^(1/p) with r the row sums of F^p (F^p)^T (``util.layer_taps.gram_rows``, the
cache's ``gram`` kind; the feature maps are never stored). Fit: the training images of each
class are split, per class and seeded (``seed``), into a held-out 10% (floor, as OpenOOD and
pytorch-ood) and the rest; from the rest, per layer l, power p and class c, the min and max of
each entry. A test image with predicted class c = argmax W h + b deviates from them by
delta_l = sum_p sum_i relu(min_i - g_i) / |min_i + 1e-6| + relu(g_i - max_i) / |max_i + 1e-6|;
the held-out images (against their own class) give E[delta_l]. Score = -(sum_l delta_l /
E[delta_l]) / MSP, the negated total deviation divided by the max softmax probability, as the
authors' code (VectorInstitute/gram-ood-detection) and OpenOOD's ``gram_postprocessor`` do;
pytorch-ood 0.4's ``Gram`` does not divide by the MSP. Where E[delta_l] is 0 (every held-out
image within the bounds) or no image was held out, it is 1 (pytorch-ood's rule).

Defaults: powers p = 1..10 (the paper's ``range(1, 11)``; OpenOOD uses 1..5, pytorch-ood 1..L
for L layers). Differences from the authors' code, which groups the training images by the
*predicted* class (all of them used for min/max) and estimates E[delta_l] on 10% of the ID
*test* set (deviations already divided by the MSP): here, as in OpenOOD and pytorch-ood, the
groups are the labels and E[delta_l] comes from held-out training images, without the MSP.
Deviations are computed in float64 from the cached float32 statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks, take_rows
from util.layer_taps import GRAM_POWERS

from .base import LayerDetector

HELD_OUT = 0.1  # share of each class's training images that estimates E[delta_l]


def class_permutations(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Per class c (in order), a seeded permutation of the positions 0..n_c-1 of its rows."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=num_classes)
    return [rng.permutation(int(n)) for n in counts[:num_classes]]


def held_out_rows(labels: np.ndarray, permutations: list[np.ndarray]) -> np.ndarray:
    """(N,) bool: the first floor(HELD_OUT * n_c) positions of each class's permutation."""
    out = np.zeros(len(labels), dtype=bool)
    for c, perm in enumerate(permutations):
        rows = np.flatnonzero(labels == c)
        out[rows[perm[: int(HELD_OUT * len(perm))]]] = True
    return out


def class_bounds(
    gram, labels: np.ndarray, keep: np.ndarray, num_classes: int, powers: int, chunk: int = 8192
):
    """(mins, maxs), each (C, powers, C_l) float32: per class the entrywise min and max of the
    first ``powers`` rows of the (N, GRAM_POWERS, C_l) statistics over the rows ``keep``."""
    shape = (num_classes, powers, gram.shape[2])
    mins, maxs = np.full(shape, np.inf, np.float32), np.full(shape, -np.inf, np.float32)
    for start, block in zip(range(0, len(labels), chunk), row_blocks(gram, chunk)):
        rows = keep[start : start + len(block)]
        y = labels[start : start + len(block)][rows]
        g = block[rows, :powers].astype(np.float32, copy=False)
        np.minimum.at(mins, y, g)
        np.maximum.at(maxs, y, g)
    return mins, maxs


def deviation(g: torch.Tensor, mins: torch.Tensor, maxs: torch.Tensor) -> torch.Tensor:
    """(B,) float64: sum over powers and entries of relu(min - g) / |min + 1e-6| + relu(g - max) /
    |max + 1e-6| for g, mins, maxs of shape (B, P, C_l)."""
    g, mins, maxs = g.double(), mins.double(), maxs.double()
    below = torch.relu(mins - g) / (mins + 1e-6).abs()
    above = torch.relu(g - maxs) / (maxs + 1e-6).abs()
    return (below + above).flatten(1).sum(dim=1)


class Gram(LayerDetector):
    name = "gram"
    paper = "Sastry & Oore, ICML 2020"
    taps = ("gram",)
    needs_each_class = True
    score_chunk = 1024  # rows scored at a time: the bounds of each row's class are gathered
    param_help = {"powers": f"Gram matrix orders p = 1..P used (P <= {GRAM_POWERS}, the cached ones)"}

    def __init__(self, powers: int = 10, seed: int = 0):
        self.powers = powers
        self.seed = seed

    def check_params(self) -> None:
        if not 1 <= self.powers <= GRAM_POWERS:
            raise ValueError(
                f"gram powers must be in 1..{GRAM_POWERS} (the cached orders), got {self.powers}"
            )

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"powers": (1, 2, 3, 5, 10)}

    def fit(self, fc, train_layers, train_labels) -> Gram:
        super().fit(fc)
        labels = np.asarray(train_labels, dtype=np.int64)
        num_classes = self.fc_.out_features
        held = held_out_rows(labels, class_permutations(labels, num_classes, self.seed))
        missing = np.setdiff1d(np.arange(num_classes), labels[~held])
        if missing.size:
            raise ValueError(
                f"gram needs training images of all {num_classes} classes; none of class {missing[:10]}"
            )
        self.mins_, self.maxs_, norms = [], [], []
        for gram in train_layers.arrays["gram"]:
            mins, maxs = class_bounds(gram, labels, ~held, num_classes, int(self.powers))
            self.mins_.append(torch.from_numpy(mins))
            self.maxs_.append(torch.from_numpy(maxs))
            norms.append(self._expected_deviation(gram, labels, held, mins, maxs))
        self.expected_deviation_ = torch.tensor(norms, dtype=torch.float64)
        return self

    def _expected_deviation(self, gram, labels, held, mins, maxs) -> float:
        """Mean deviation of the held-out rows from their own class's bounds (1 where it is 0)."""
        rows = np.flatnonzero(held)
        if rows.size == 0:
            return 1.0
        g = torch.from_numpy(take_rows(gram, rows)[:, : int(self.powers)])
        y = torch.from_numpy(labels[rows])
        mean = float(deviation(g, torch.from_numpy(mins)[y], torch.from_numpy(maxs)[y]).mean())
        return mean if mean > 0 else 1.0

    def score_layers(self, h: torch.Tensor, layers: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-(sum_l delta_l / E[delta_l]) / max softmax, delta_l against the predicted class's bounds."""
        logits = self.logits(h)
        conf, pred = torch.softmax(logits.double(), dim=1).max(dim=1)
        total = torch.zeros(len(h), dtype=torch.float64)
        for layer, g in enumerate(layers["gram"]):
            dev = deviation(g[:, : int(self.powers)], self.mins_[layer][pred], self.maxs_[layer][pred])
            total += dev / self.expected_deviation_[layer]
        return -total / conf, logits
