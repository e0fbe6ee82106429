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

    The paper's ablations are masks of this one layer: ``activation_pruning=False`` makes every
    AP mask all-true, ``weight_pruning=False`` cuts no weight (every cutoff 0). With both off the
    layer is the plain head W h' + b.

    State is O(C*D): the AP masks, one threshold t_c per class, and two integer (C, D) arrays that
    describe every WP mask exactly (``models.exact_percentile``): the rank of each weight within
    its column and, per class and column, how many entries of that column of R_c are <= t_c. A
    class's masked weight is built only for the samples predicted as that class; no (C, C, D)
    tensor exists. t_c equals numpy.percentile(R_c, p_w) bit for bit.

    ``forward`` has two exact paths (``batched``; None picks by the device of h): grouped, a
    Python loop over the predicted classes present (the CPU default: each class's masked weight
    is built once however many rows it gets), and batched, no loop over classes (the default on
    a GPU): each row's cutoffs are gathered and compared with the column ranks, ``chunk_rows``
    rows at a time, then one batched product. Both equal the per-sample formula to float32
    rounding; the grouped path's logits are unchanged from before the batched one existed.
    """

    # Bytes of per-row temporaries (a bool mask and a float masked weight, C*D each) the batched
    # path may hold at once: 256 MiB, e.g. 25 rows at C = 1,000, D = 2,048.
    batched_bytes = 256 * 2**20

    def __init__(
        self,
        fc: nn.Linear,
        contrib,
        p_w: float,
        p_a: float,
        activation_pruning: bool = True,
        weight_pruning: bool = True,
        batched: bool | None = None,
    ):
        super().__init__()
        self.batched = batched
        self.p_w = _check_percentile("p_w", p_w)
        self.p_a = _check_percentile("p_a", p_a)
        self.activation_pruning = bool(activation_pruning)
        self.weight_pruning = bool(weight_pruning)
        weight64 = _as_float64(fc.weight)
        contrib = _as_float64(contrib)
        if contrib.shape != weight64.shape:
            raise ValueError(
                f"contributions have shape {contrib.shape}, expected (classes, features) = "
                f"{weight64.shape} for this classifier"
            )
        columns = ColumnSorted(weight64)
        if self.activation_pruning:
            ap_mask = contrib > np.percentile(contrib, self.p_a, axis=1, keepdims=True)
        else:
            ap_mask = np.ones(contrib.shape, dtype=bool)
        if self.weight_pruning:
            thresholds, cutoffs = columns.percentiles(np.abs(contrib), self.p_w)
        else:
            thresholds = np.full(len(contrib), -np.inf)
            cutoffs = np.zeros(contrib.shape, dtype=columns.column_rank.dtype)
        device = fc.weight.device  # all state lives where fc does
        self.register_buffer("weight", fc.weight.detach().clone())
        self.register_buffer("bias", _bias_of(fc))
        self.register_buffer("wp_threshold", torch.from_numpy(thresholds).to(device))
        self.register_buffer("wp_rank", torch.from_numpy(columns.column_rank).to(device))
        self.register_buffer("wp_cutoff", torch.from_numpy(cutoffs).to(device))
        self.register_buffer("ap_mask", torch.from_numpy(ap_mask).to(device))

    @property
    def prunes(self) -> bool:
        """Whether any mask removes anything (else the layer is W h' + b)."""
        return self.activation_pruning or self.weight_pruning

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """c^ = argmax(W h' + b) with the full, unmasked weights."""
        return F.linear(h, self.weight, self.bias).argmax(dim=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """LINe logits of clipped features h (n, D): ``forward_batched`` when ``self.batched`` is
        true, or is None and h is not on the CPU; else ``forward_grouped``."""
        if not self.prunes:
            return F.linear(h, self.weight, self.bias)
        batched = h.device.type != "cpu" if self.batched is None else self.batched
        return self.forward_batched(h) if batched else self.forward_grouped(h)

    def chunk_rows(self) -> int:
        """Rows the batched path takes at once: ``batched_bytes`` / (C*D * 5 bytes), at least 1."""
        return max(1, self.batched_bytes // (self.weight.numel() * (self.weight.element_size() + 1)))

    def forward_batched(self, h: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """No loop over classes: for row i with c^_i, keep W[k, j] iff rank[k, j] >= cut[c^_i, j]
        (cut = C where AP drops j), all rows of a chunk at once, then one batched product.

        ``chunk`` rows (default ``chunk_rows()``) build an (n, C, D) masked weight together; the
        result does not depend on it. Autograd through h works (each chunk's masked weight is kept).
        """
        n_classes = self.weight.shape[0]
        chunk = chunk or self.chunk_rows()
        pred = self.predict(h.detach())
        zero = torch.zeros((), dtype=self.weight.dtype, device=self.weight.device)
        parts = []
        for s in range(0, h.shape[0], chunk):
            c = pred[s : s + chunk]
            cut = torch.where(self.ap_mask[c], self.wp_cutoff[c], n_classes)  # (n, D)
            masked = torch.where(self.wp_rank >= cut[:, None, :], self.weight, zero)  # (n, C, D)
            parts.append(torch.bmm(masked, h[s : s + chunk, :, None]).squeeze(-1))
        if not parts:
            return h.new_empty(0, n_classes)
        return torch.cat(parts) + self.bias

    def forward_grouped(self, h: torch.Tensor) -> torch.Tensor:
        """Rows grouped by predicted class; each class's masked weight is built once per call.

        Without autograd one pair of (C, D) buffers is reused for every class; when h requires
        grad each class gets its own masked weight, since autograd keeps it for the backward pass.
        """
        if not self.prunes:
            return F.linear(h, self.weight, self.bias)
        pred = self.predict(h.detach())
        order = torch.argsort(pred, stable=True)
        classes, counts = torch.unique_consecutive(pred[order], return_counts=True)
        reuse = not h.requires_grad
        mask = torch.empty(self.weight.shape, dtype=torch.bool, device=self.weight.device) if reuse else None
        weight = torch.empty_like(self.weight) if reuse else None
        out = torch.empty(h.shape[0], self.weight.shape[0], dtype=h.dtype, device=h.device)
        start = 0
        for c, n in zip(classes.tolist(), counts.tolist()):
            rows = order[start : start + n]
            start += n
            logits = self.linear(h[rows], self.masked_weight(c, mask, weight))
            out = out.index_copy_(0, rows, logits) if reuse else out.index_copy(0, rows, logits)
        return out

    def score_array(self, features: np.ndarray, tau: float, score_logits, chunk: int):
        """(scores, predictions) of a whole (N, D) array of unclipped features, h' = min(h, tau).

        Pass 1 finds c^ for every row; pass 2 scores the rows of each class together (``chunk``
        rows at a time), so each class's masked weight is built once whatever N is. The logits
        equal ``forward``'s; ``score_logits`` turns a block of them into scores.
        """
        if self.weight.device.type != "cpu":
            raise ValueError(
                f"LINe scores cached (numpy) features on the CPU, but its layer is on "
                f"{self.weight.device}; keep the fitted detector on the CPU, or call the layer on "
                "feature batches of that device yourself"
            )
        n = len(features)
        n_classes, dim = self.weight.shape
        if n == 0:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        c_hat = np.empty(n, dtype=np.int64)
        scores, preds = np.empty(n), np.empty(n, dtype=np.int64)
        rows_buf = np.empty((min(chunk, n), dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, n, chunk):
                h = _clipped(features[s : s + chunk], tau, rows_buf)
                c_hat[s : s + chunk] = self.predict(torch.from_numpy(h)).numpy()
            order = np.argsort(c_hat, kind="stable")  # rows of one class stay in dataset order
            starts = np.flatnonzero(np.r_[True, np.diff(c_hat[order]) != 0])
            mask = torch.empty(self.weight.shape, dtype=torch.bool)
            weight = torch.empty_like(self.weight)
            # Masked logits of several small class groups, transposed: column i is one row's
            # (C,) logits; scored together once `chunk` columns are filled.
            logits_t = torch.empty(n_classes, min(chunk, n), dtype=self.weight.dtype)
            done = np.empty(min(chunk, n), dtype=np.int64)
            filled = 0

            def flush():
                z = logits_t[:, :filled].T
                scores[done[:filled]] = score_logits(z).double().numpy()
                preds[done[:filled]] = z.argmax(dim=1).numpy()

            for a, b in zip(starts, np.r_[starts[1:], n]):
                weight = self.masked_weight(int(c_hat[order[a]]), mask, weight)
                for s in range(a, b, chunk):
                    rows = order[s : min(s + chunk, b)]
                    if filled + len(rows) > logits_t.shape[1]:
                        flush()
                        filled = 0
                    h = _clipped(features[rows], tau, rows_buf)
                    self.linear_t(torch.from_numpy(h), weight, logits_t[:, filled : filled + len(rows)])
                    done[filled : filled + len(rows)] = rows
                    filled += len(rows)
            if filled:
                flush()
        return scores, preds

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


def _clipped(features: np.ndarray, tau: float, buf: np.ndarray) -> np.ndarray:
    """min(features, tau) as float32, written into the first rows of ``buf`` (no other copy)."""
    out = buf[: len(features)]
    np.minimum(features, np.float32(tau), out=out, casting="same_kind")
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
