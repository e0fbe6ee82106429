"""A classifier and a fitted detector as one module: ``forward(x) -> (logits, scores)``.

The design's "model wrapped by a DICE/LINe sparsified final layer" for any classifier whose output
layer is an ``nn.Linear`` (torchvision, timm, a user's own; ``models.split``): one forward pass
gives the penultimate features, the detector's logits (DICE's and LINe's sparsified layer; the
full head for the others) and its scores, higher meaning more in-distribution. Network-level
detectors (ODIN, RankFeat) run the model themselves.

    det = registry.build("line", "cifar10").fit_loader(model, train_loader)
    ood_model = OODClassifier(model, det)
    logits, scores = ood_model(x)
"""

from __future__ import annotations

import torch
from torch import nn

from .from_loader import score_with_model


class OODClassifier(nn.Module):
    """``model`` (registered as a submodule, so ``.to()`` moves it) scored by ``detector``.

    ``forward`` runs ``model`` in eval mode whatever the wrapper's mode (its own modes restored
    afterwards) and returns (logits (B, C), scores (B,) float64) on the model's device.
    """

    def __init__(self, model: nn.Module, detector, head: str | None = None):
        super().__init__()
        self.model = model
        self.detector = detector
        self.head = head
        _ = detector.fc_ if detector.kind == "features" else detector.model_  # NotFittedError now

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, logits = score_with_model(self.detector, self.model, x, self.head)
        return logits, scores

    def extra_repr(self) -> str:
        return f"detector={self.detector!r}"
