"""Sparsified final layers: DICE (Sun & Li, ECCV 2022) and LINe (Ahn, Park & Kim, CVPR 2023).

Both are built from the classifier's ``nn.Linear`` (weight W of shape (C, D), bias b) and take
features that are already clipped (h' = min(h, tau)); ``forward`` returns sparsified logits.
Thresholds are ``numpy.percentile`` (linear interpolation) of float64 values; masks use ``>``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_percentile(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{name} must be a percentile in [0, 100], got {value}")
    return value


class RouteDICE(nn.Module):
    """DICE: keep weight (c, j) where V[c, j] = m[j] * W[c, j] > percentile(V, p).

    m is the mean penultimate feature over the ID training set. logits = (W * mask) h' + b.
    """

    def __init__(self, fc: nn.Linear, mean_feature, p: float):
        super().__init__()
        self.p = _check_percentile("p", p)
        weight = _as_float64(fc.weight)
        mean_feature = _as_float64(mean_feature).ravel()
        if mean_feature.shape != (weight.shape[1],):
            raise ValueError(
                f"mean feature has {mean_feature.size} values but the classifier expects "
                f"{weight.shape[1]} features"
            )
        contrib = mean_feature[None, :] * weight
        mask = contrib > np.percentile(contrib, self.p)
        dtype = fc.weight.dtype
        self.register_buffer("weight", fc.weight.detach() * torch.from_numpy(mask).to(dtype))
        self.register_buffer("bias", _bias_of(fc))
        self.register_buffer("mask", torch.from_numpy(mask))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.bias)


class RouteLINe(nn.Module):
    """LINe: class-wise activation pruning (AP) and weight pruning (WP) from Shapley contributions.

    contrib: Cm, shape (C, D), mean over the ID training images of class c of h * W[c].
    AP: keep neuron j for class c where Cm[c, j] > percentile(Cm[c, :], p_a).
    WP: with R_c = |Cm[c, :]|[None, :] * W, keep weight (k, j) where R_c[k, j] > t_c,
        t_c = percentile(R_c, p_w) over all C*D entries.
    forward(h'): c^ = argmax(W h' + b); logits = (W * WP_{c^}) (h' * AP_{c^}) + b.

    State is O(C*D): the AP masks, |Cm| and one threshold t_c per class. A class's weight mask is
    built only for the samples predicted as that class; no (C, C, D) tensor exists.
    """

    def __init__(self, fc: nn.Linear, contrib, p_w: float, p_a: float):
        super().__init__()
        self.p_w = _check_percentile("p_w", p_w)
        self.p_a = _check_percentile("p_a", p_a)
        weight64 = _as_float64(fc.weight)
        contrib = _as_float64(contrib)
        if contrib.shape != weight64.shape:
            raise ValueError(
                f"contributions have shape {contrib.shape}, expected (classes, features) = "
                f"{weight64.shape} for this classifier"
            )
        ap_mask = contrib > np.percentile(contrib, self.p_a, axis=1, keepdims=True)
        abs_contrib = np.abs(contrib)
        thresholds = np.array(
            [np.percentile(abs_contrib[c][None, :] * weight64, self.p_w) for c in range(len(contrib))]
        )
        self.register_buffer("weight", fc.weight.detach().clone())
        self.register_buffer("bias", _bias_of(fc))
        self.register_buffer("weight64", torch.from_numpy(weight64))
        self.register_buffer("abs_contrib", torch.from_numpy(abs_contrib))
        self.register_buffer("wp_threshold", torch.from_numpy(thresholds))
        self.register_buffer("ap_mask", torch.from_numpy(ap_mask))

    def weight_mask(self, c: int) -> torch.Tensor:
        """WP mask of class c, shape (C, D): R_c > t_c."""
        return (self.abs_contrib[c][None, :] * self.weight64) > self.wp_threshold[c]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pred = F.linear(h, self.weight, self.bias).argmax(dim=1)
        out = torch.empty(h.shape[0], self.weight.shape[0], dtype=h.dtype, device=h.device)
        for c in torch.unique(pred).tolist():
            rows = (pred == c).nonzero(as_tuple=True)[0]
            weight = self.weight * self.weight_mask(c).to(self.weight.dtype)
            out[rows] = F.linear(h[rows] * self.ap_mask[c].to(h.dtype), weight, self.bias)
        return out


def _bias_of(fc: nn.Linear) -> torch.Tensor:
    if fc.bias is None:
        return torch.zeros(fc.weight.shape[0], dtype=fc.weight.dtype, device=fc.weight.device)
    return fc.bias.detach().clone()


class SparsifiedClassifier(nn.Module):
    """``model`` with its final layer replaced: logits = route(min(forward_features(x), tau))."""

    def __init__(self, model: nn.Module, route: nn.Module, clip_threshold: float | None = None):
        super().__init__()
        self.model = model
        self.route = route
        self.clip_threshold = clip_threshold

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.model.forward_features(x)
        if self.clip_threshold is not None:
            h = h.clamp(max=self.clip_threshold)
        return self.route(h)
