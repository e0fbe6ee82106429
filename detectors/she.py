"""SHE: simplified Hopfield energy (Zhang et al., "Out-of-Distribution Detection
based on In-Distribution Data Patterns Memorization with Modern Hopfield Energy", ICLR 2023).

Stored patterns: s_c = the mean penultimate feature of the ID training images of class c that the
classifier classifies correctly. Score = h^T s_yhat with yhat = argmax(W h + b): the (negated)
simplified Hopfield energy of h against the pattern of its predicted class.

A class with no correctly classified training image (a degenerate classifier) falls back to the
mean over all of its training images.
"""

from __future__ import annotations

import numpy as np
import torch

from util.io import row_blocks

from .base import Detector


class SHE(Detector):
    name = "she"
    paper = "Zhang et al., ICLR 2023"
    needs_each_class = True

    def fit(self, fc, train_features, train_labels, chunk: int = 8192) -> SHE:
        super().fit(fc)
        c, d = self.fc_.out_features, self.fc_.in_features
        labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
        correct_sums, all_sums = (
            torch.zeros(c, d, dtype=torch.float64),
            torch.zeros(c, d, dtype=torch.float64),
        )
        correct_counts, all_counts = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        start = 0
        with torch.inference_mode():
            for block in row_blocks(train_features, chunk):
                h = torch.from_numpy(block.astype(np.float32, copy=False))
                y = labels[start : start + len(h)]
                start += len(h)
                right = self.fc_(h).argmax(dim=1) == y
                all_sums.index_add_(0, y, h.double())
                all_counts += torch.bincount(y, minlength=c).double()
                correct_sums.index_add_(0, y[right], h[right].double())
                correct_counts += torch.bincount(y[right], minlength=c).double()
        if (all_counts == 0).any():
            missing = torch.nonzero(all_counts == 0).flatten().tolist()[:10]
            raise ValueError(f"SHE needs training features of every class; none of class {missing}")
        use_all = correct_counts == 0
        patterns = correct_sums / correct_counts.clamp(min=1)[:, None]
        patterns[use_all] = all_sums[use_all] / all_counts[use_all, None]
        self.patterns_ = patterns
        self.classes_without_correct_images_ = int(use_all.sum())
        return self

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        return (h.double() * self.patterns_[z.argmax(dim=1)]).sum(dim=1), z
