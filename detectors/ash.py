"""ASH: activation shaping (Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping
for Out-of-Distribution Detection", ICLR 2023).

Applied to the pooled penultimate feature h (D values), as the authors' code does for ResNet-50
on the pooled vector. With p the pruning percentile, keep the k = D - round(D * p / 100) largest
entries of each sample (``torch.topk``; ties broken by topk) and zero the rest, then

- ASH-P: h' = the kept entries (pruning only);
- ASH-B: h'_j = s1 / k on every kept entry (binarised), s1 = sum_j h_j before pruning;
- ASH-S: h' = kept entries * exp(s1 / s2), s2 = sum of the kept entries.

Score = Energy: logsumexp(W h' + b); the same logits give the ID accuracy. Defaults: p = 90 for
ASH-P and ASH-B (the paper's main setting, ImageNet ResNet-50) and p = 95 for ASH-S (its CIFAR
DenseNet-101 setting). ASH needs no training statistics.
"""

from __future__ import annotations

import torch

from util.argtypes import open_percentile_arg

from .base import Detector

ASH_DEFAULT_PERCENTILE = {"p": 90.0, "b": 90.0, "s": 95.0}


def kept_count(dim: int, percentile: float) -> int:
    """Entries kept per sample: D - round(D * p / 100) (at least 1)."""
    return max(1, dim - int(round(dim * percentile / 100.0)))


def top_k_mask(h: torch.Tensor, percentile: float) -> torch.Tensor:
    """Bool mask (B, D) of the k = kept_count(D, p) largest entries of each row."""
    k = kept_count(h.shape[1], percentile)
    idx = torch.topk(h, k, dim=1).indices
    return torch.zeros_like(h, dtype=torch.bool).scatter_(1, idx, True)


def sum_ratio(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """s1 / s2 per row: the sum of h over the sum of its masked entries (1 where s2 = 0)."""
    h64 = h.double()
    s1 = h64.sum(dim=1)
    s2 = (h64 * mask).sum(dim=1)
    return torch.where(s2 != 0, s1 / torch.where(s2 != 0, s2, torch.ones_like(s2)), torch.ones_like(s2))


def ash(h: torch.Tensor, percentile: float, variant: str) -> torch.Tensor:
    """Shaped features for variant 'p', 'b' or 's' (module docstring)."""
    mask = top_k_mask(h, percentile)
    kept = h * mask
    if variant == "p":
        return kept
    if variant == "b":
        fill = h.double().sum(dim=1, keepdim=True) / kept_count(h.shape[1], percentile)
        return (mask * fill).to(h.dtype)
    if variant == "s":
        return (kept.double() * torch.exp(sum_ratio(h, mask))[:, None]).to(h.dtype)
    raise ValueError(f"ASH variant must be 'p', 'b' or 's', got {variant!r}")


class ASH(Detector):
    """Energy of W ash(h) + b for one ASH variant and pruning percentile."""

    name = "ash"
    paper = "Djurisic et al., ICLR 2023"
    param_help = {"percentile": "pruning percentile p"}
    param_types = {"percentile": open_percentile_arg}

    def __init__(self, variant: str = "s", percentile: float | None = None):
        self.variant = variant
        self.percentile = percentile

    def check_params(self) -> None:
        if self.variant not in ASH_DEFAULT_PERCENTILE:
            raise ValueError(f"ASH variant must be 'p', 'b' or 's', got {self.variant!r}")

    @classmethod
    def variants(cls) -> dict[str, dict]:
        return {f"ash_{v}": {"variant": v} for v in ASH_DEFAULT_PERCENTILE}

    @classmethod
    def defaults_for(cls, in_dataset: str, variant: str | None = None) -> dict:
        """The variant's percentile (ASH_DEFAULT_PERCENTILE), then the papers' parameters."""
        fixed = cls.variants().get(variant, {})
        own = {"percentile": ASH_DEFAULT_PERCENTILE[fixed["variant"]]} if fixed else {}
        return {**own, **super().defaults_for(in_dataset, variant)}

    @property
    def pruning_percentile(self) -> float:
        """The percentile applied: ``percentile``, or the variant's default when it is None."""
        return ASH_DEFAULT_PERCENTILE[self.variant] if self.percentile is None else float(self.percentile)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"percentile": (60.0, 65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)}

    def run_name(self) -> str:
        return f"ash_{self.variant}"

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(ash(h, self.pruning_percentile, self.variant))
