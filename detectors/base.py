"""Detector protocol and chunked scoring of feature arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.heads import cpu_copy


@dataclass
class TrainStats:
    """ID training statistics a detector may need, each loaded on first use.

    mean_feature: (D,) mean of h (DICE); contributions: (C, D) class-mean Taylor contributions
    (LINe); train_features: (N, D) features of the training set (ReAct percentile, ...).
    """

    mean_feature: Callable[[], np.ndarray] | None = None
    contributions: Callable[[], np.ndarray] | None = None
    train_features: Callable[[], np.ndarray] | None = None
    train_labels: Callable[[], np.ndarray] | None = None

    def get(self, name: str):
        loader = getattr(self, name)
        if loader is None:
            raise ValueError(f"this detector needs the ID training statistic {name!r}")
        return loader()


class Detector:
    """Base class: logit-based score of (optionally clipped) features.

    Detectors live on the CPU: ``fit`` keeps a float32 CPU copy of the head, and scoring reads
    cached (numpy) features.
    """

    name = "detector"

    def fit(self, fc: nn.Linear, stats: TrainStats | None = None) -> Detector:
        """Keeps a float32 CPU copy of the head; ``fc`` itself (often on the GPU, inside the model
        that still extracts features) is left where and as it is."""
        self.fc_ = cpu_copy(fc)
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(h)

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Energy score: logsumexp over classes (temperature 1)."""
        return torch.logsumexp(logits, dim=1)

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), logits (B, C)) of a batch of features; distance-based detectors override it.

        Default: ``score_logits(logits(h))``, so logit-based detectors only define those two.
        """
        z = self.logits(h)
        return self.score_logits(z), z

    def settings(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}


def score_features(
    detector: Detector, features: np.ndarray, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) float64 and predicted classes (N,) of ``features``, ``chunk`` rows at a time.

    Default chunk: the detector's ``score_chunk`` attribute if it has one (LINe builds one
    masked weight per predicted class and chunk, so it prefers large chunks), else 8192.
    """
    if chunk is None and hasattr(detector, "score_all"):  # whole-array path (LINe at many classes)
        result = detector.score_all(features)
        if result is not None:
            return result
    chunk = chunk or getattr(detector, "score_chunk", 8192)
    scores, preds = [], []
    with torch.inference_mode():
        for start in range(0, len(features), chunk):
            h = torch.from_numpy(np.array(features[start : start + chunk], dtype=np.float32))
            s, z = detector.score_batch(h)
            scores.append(s.double().numpy())
            preds.append(z.argmax(dim=1).numpy())
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(preds)


def score_sets(detector: Detector, features: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(scores, predicted classes) of each named (N, D) feature array, by ``score_features``."""
    scored = {name: score_features(detector, array) for name, array in features.items()}
    return {k: s for k, (s, _) in scored.items()}, {k: p for k, (_, p) in scored.items()}
