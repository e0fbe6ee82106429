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

from .exact_percentile import ColumnSorted


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
        mask = torch.from_numpy(mask).to(fc.weight.device)  # all state lives where fc does
        self.register_buffer("weight", fc.weight.detach() * mask.to(fc.weight.dtype))
        self.register_buffer("bias", _bias_of(fc))
        self.register_buffer("mask", mask)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight, self.bias)


class RouteLINe(nn.Module):
    """LINe: class-wise activation pruning (AP) and weight pruning (WP) from Shapley contributions.

    contrib: Cm, shape (C, D), mean over the ID training images of class c of h * W[c].
    AP: keep neuron j for class c where Cm[c, j] > percentile(Cm[c, :], p_a).
    WP: with R_c = |Cm[c, :]|[None, :] * W, keep weight (k, j) where R_c[k, j] > t_c,
        t_c = percentile(R_c, p_w) over all C*D entries.
    forward(h'): c^ = argmax(W h' + b); logits = (W * WP_{c^}) (h' * AP_{c^}) + b.

    State is O(C*D): the AP masks, |Cm|, one threshold t_c per class, and two integer (C, D)
    arrays that describe every WP mask exactly (``models.exact_percentile``): the rank of each
    weight within its column and, per class and column, how many entries of that column of R_c
    are <= t_c. A class's weight mask is built only for the samples predicted as that class; no
    (C, C, D) tensor exists. t_c equals numpy.percentile(R_c, p_w) bit for bit.
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
        columns = ColumnSorted(weight64)
        thresholds, cutoffs = columns.percentiles(abs_contrib, self.p_w)
        device = fc.weight.device  # all state lives where fc does
        self.register_buffer("weight", fc.weight.detach().clone())
        self.register_buffer("bias", _bias_of(fc))
        self.register_buffer("abs_contrib", torch.from_numpy(abs_contrib).to(device))
        self.register_buffer("wp_threshold", torch.from_numpy(thresholds).to(device))
        self.register_buffer("wp_rank", torch.from_numpy(columns.column_rank).to(device))
        self.register_buffer("wp_cutoff", torch.from_numpy(cutoffs).to(device))
        self.register_buffer("ap_mask", torch.from_numpy(ap_mask).to(device))

    def weight_mask(self, c: int) -> torch.Tensor:
        """WP mask of class c, shape (C, D): R_c > t_c, i.e. column rank >= the class's cutoff."""
        return self.wp_rank >= self.wp_cutoff[c]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Rows are sorted by predicted class; each class's masked weight is built once per call.

        The AP mask is folded into the weight (column j of class c's weight is zeroed where
        AP_c[j] is false), which multiplies the same products as masking h. Without autograd one
        pair of (C, D) buffers is reused for every class; when h requires grad each class gets its
        own masked weight, since autograd keeps it for the backward pass.
        """
        if h.requires_grad:
            return self._forward_differentiable(h)
        pred = self.predict(h)
        order = torch.argsort(pred, stable=True)
        classes, counts = torch.unique_consecutive(pred[order], return_counts=True)
        out = torch.empty(h.shape[0], self.weight.shape[0], dtype=h.dtype, device=h.device)
        rows_buf = h.new_empty(int(counts.max()) if len(counts) else 0, h.shape[1])
        mask = torch.empty(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        weight = torch.empty_like(self.weight)
        start = 0
        for c, n in zip(classes.tolist(), counts.tolist()):
            rows = order[start : start + n]
            start += n
            self.masked_weight(c, mask, weight)
            x = torch.index_select(h, 0, rows, out=rows_buf[:n])
            out.index_copy_(0, rows, self.linear(x, weight))
        return out

    def _forward_differentiable(self, h: torch.Tensor) -> torch.Tensor:
        pred = self.predict(h.detach())
        out = torch.empty(h.shape[0], self.weight.shape[0], dtype=h.dtype, device=h.device)
        for c in torch.unique(pred).tolist():
            rows = (pred == c).nonzero(as_tuple=True)[0]
            out = out.index_copy(0, rows, F.linear(h[rows], self.masked_weight(c), self.bias))
        return out

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x weight^T + b for one class's rows x (n, D) and masked weight (C, D).

        On CPU without autograd the product is taken as (weight x^T)^T through numpy's BLAS, which
        is about 1.4x faster than torch's for the few dozen rows a class gets at C = 1,000.
        """
        if x.device.type != "cpu" or x.requires_grad or x.dtype != weight.dtype:
            return F.linear(x, weight, self.bias)
        return self.linear_t(x, weight, torch.empty(weight.shape[0], x.shape[0], dtype=x.dtype)).T

    def linear_t(self, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (C, n) = weight x^T + b[:, None] on CPU, written in place (out may be a column slice)."""
        z = out.numpy()
        np.matmul(weight.numpy(), x.numpy().T, out=z)
        z += self.bias.numpy()[:, None]
        return out

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """c^ = argmax(W h' + b) with the full, unmasked weights."""
        return F.linear(h, self.weight, self.bias).argmax(dim=1)

    def masked_weight(self, c: int, mask: torch.Tensor | None = None, out: torch.Tensor | None = None):
        """W * WP_c * AP_c[None, :] (C, D), written into the preallocated buffers when given.

        A column dropped by AP gets cutoff C (no rank reaches it), so one comparison builds both
        masks. numpy's kernels are used on CPU (faster than torch's for int16 broadcasting).
        """
        if mask is None:
            mask = torch.empty(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        if out is None:
            out = torch.empty_like(self.weight)
        never = torch.full_like(self.wp_cutoff[c], self.weight.shape[0])
        cutoff = torch.where(self.ap_mask[c], self.wp_cutoff[c], never)
        if self.weight.device.type == "cpu":
            np.greater_equal(self.wp_rank.numpy(), cutoff.numpy(), out=mask.numpy())
            np.multiply(self.weight.numpy(), mask.numpy(), out=out.numpy())
        else:
            torch.ge(self.wp_rank, cutoff, out=mask)
            torch.mul(self.weight, mask, out=out)
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
