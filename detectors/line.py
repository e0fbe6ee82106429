"""LINe (Ahn, Park & Kim, "LINe: Out-of-Distribution Detection by Leveraging Important Neurons",
CVPR 2023).

h' = min(h, tau) (activation clipping); c^ = argmax(W h' + b); logits =
(W * WP_{c^}) (h' * AP_{c^}) + b with the class-wise activation-pruning (AP, percentile p_a of
Cm[c]) and weight-pruning (WP, percentile p_w of |Cm[c]| * W) masks of ``models.route.RouteLINe``;
score = logsumexp(logits). Paper settings: CIFAR-10 (90, 90, 1.0), CIFAR-100 (90, 10, 1.0),
ImageNet ResNet-50 (10, 10, 0.8).

Ablation (the paper's AC / AP / WP table): ``activation_clipping``, ``activation_pruning`` and
``weight_pruning`` switch each component off independently. AC off means h' = h; AP off means
every neuron is kept (AP mask all True); WP off means every weight is kept. With all three on the
detector is ``RouteLINe``; otherwise the same masks (DESIGN.md) are applied here, class by class
of c^ = argmax(W h' + b), so RouteLINe itself is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.route import RouteLINe

from .base import Detector, TrainStats
from .logit import clip


class LINe(Detector):
    name = "line"
    # Rows scored per chunk by score_features: RouteLINe builds one masked (C, D) weight per
    # predicted class present in a chunk, so larger chunks mean fewer rebuilds (ImageNet: 1,000).
    score_chunk = 16384

    def __init__(
        self,
        p_w: float = 90.0,
        p_a: float = 90.0,
        clip_threshold: float | None = 1.0,
        activation_clipping: bool = True,
        activation_pruning: bool = True,
        weight_pruning: bool = True,
    ):
        self.p_w = p_w
        self.p_a = p_a
        self.clip_threshold = clip_threshold
        self.activation_clipping = activation_clipping
        self.activation_pruning = activation_pruning
        self.weight_pruning = weight_pruning

    def fit(self, fc, stats: TrainStats | None = None) -> LINe:
        super().fit(fc, stats)
        contrib = stats.get("contributions")
        if self.activation_pruning and self.weight_pruning:
            self.route_ = RouteLINe(self.fc_, contrib, self.p_w, self.p_a)
        else:
            self.route_ = _AblatedLINe(
                self.fc_, contrib, self.p_w, self.p_a, self.activation_pruning, self.weight_pruning
            )
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.route_(clip(h, self.clip_threshold if self.activation_clipping else None))

    def score_all(self, features: np.ndarray, chunk: int | None = None):
        """(scores, predictions) of a whole (N, D) array, building each class's masked weight once.

        Pass 1 finds c^ = argmax(W h' + b) for every row; pass 2 scores the rows of each class
        together (``chunk`` rows at a time), so at C = 1,000 there are at most 1,000 mask builds
        whatever N is. Same logits as ``logits`` (score_features uses it when no chunk is given).
        None when the detector is an ablation (no RouteLINe).
        """
        route = self.route_
        if not isinstance(route, RouteLINe):
            return None
        if route.weight.device.type != "cpu":
            raise ValueError(
                f"LINe scores cached (numpy) features on the CPU, but its route is on "
                f"{route.weight.device}; keep the fitted detector on the CPU, or call "
                "detector.route_ on feature batches of that device yourself"
            )
        chunk = chunk or self.score_chunk
        tau = self.clip_threshold if self.activation_clipping else None
        n = len(features)
        n_classes, dim = route.weight.shape
        c_hat = np.empty(n, dtype=np.int64)
        scores, preds = np.empty(n), np.empty(n, dtype=np.int64)
        rows_buf = np.empty((min(chunk, n), dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, n, chunk):
                h = _clipped(features[s : s + chunk], tau, rows_buf)
                c_hat[s : s + chunk] = route.predict(torch.from_numpy(h)).numpy()
            order = np.argsort(c_hat, kind="stable")  # rows of one class stay in dataset order
            starts = np.flatnonzero(np.r_[True, np.diff(c_hat[order]) != 0])
            mask = torch.empty(route.weight.shape, dtype=torch.bool)
            weight = torch.empty_like(route.weight)
            # Masked logits of several small class groups, transposed: column i is one row's
            # (C,) logits; scored together once `chunk` columns are filled.
            logits_t = torch.empty(n_classes, min(chunk, n), dtype=route.weight.dtype)
            done = np.empty(min(chunk, n), dtype=np.int64)
            filled = 0

            def flush():
                z = logits_t[:, :filled].T
                scores[done[:filled]] = self.score_logits(z).double().numpy()
                preds[done[:filled]] = z.argmax(dim=1).numpy()

            for a, b in zip(starts, np.r_[starts[1:], n]):
                weight = route.masked_weight(int(c_hat[order[a]]), mask, weight)
                for s in range(a, b, chunk):
                    rows = order[s : min(s + chunk, b)]
                    if filled + len(rows) > logits_t.shape[1]:
                        flush()
                        filled = 0
                    h = _clipped(features[rows], tau, rows_buf)
                    route.linear_t(torch.from_numpy(h), weight, logits_t[:, filled : filled + len(rows)])
                    done[filled : filled + len(rows)] = rows
                    filled += len(rows)
            if filled:
                flush()
        return scores, preds


def _clipped(features: np.ndarray, tau: float | None, buf: np.ndarray) -> np.ndarray:
    """min(features, tau) as float32, written into the first rows of ``buf`` (no other copy)."""
    out = buf[: len(features)]
    if tau is None:
        np.copyto(out, features, casting="same_kind")
    else:
        np.minimum(features, np.float32(tau), out=out, casting="same_kind")
    return out


class _AblatedLINe(torch.nn.Module):
    """LINe with AP and/or WP switched off (not both on: that is RouteLINe).

    AP on: logits = W (h' * AP_{c^}) + b, AP_c = Cm[c] > percentile(Cm[c], p_a).
    WP on: logits = (W * WP_{c^}) h' + b, WP_c = R_c > percentile(R_c, p_w), R_c = |Cm[c]|[None, :] * W.
    Both off: logits = W h' + b.
    """

    def __init__(self, fc: torch.nn.Linear, contrib, p_w: float, p_a: float, ap: bool, wp: bool):
        super().__init__()
        device = fc.weight.device
        weight64 = fc.weight.detach().cpu().double().numpy()
        contrib = np.asarray(contrib, dtype=np.float64)
        bias = fc.bias.detach() if fc.bias is not None else torch.zeros(len(weight64), device=device)
        self.register_buffer("weight", fc.weight.detach().clone())
        self.register_buffer("bias", bias.clone())
        self.register_buffer("ap_mask", None)
        self.wp_threshold = None
        if ap:
            ap_mask = contrib > np.percentile(contrib, p_a, axis=1, keepdims=True)
            self.register_buffer("ap_mask", torch.from_numpy(ap_mask).to(device))
        if wp:
            self.register_buffer("abs_contrib", torch.from_numpy(np.abs(contrib)).to(device))
            self.register_buffer("weight64", torch.from_numpy(weight64).to(device))
            self.wp_threshold = [
                float(np.percentile(np.abs(contrib[c])[None, :] * weight64, p_w)) for c in range(len(contrib))
            ]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.ap_mask is None and self.wp_threshold is None:
            return F.linear(h, self.weight, self.bias)
        pred = F.linear(h, self.weight, self.bias).argmax(dim=1)
        out = torch.empty(h.shape[0], self.weight.shape[0], dtype=h.dtype, device=h.device)
        for c in torch.unique(pred).tolist():
            rows = (pred == c).nonzero(as_tuple=True)[0]
            x, weight = h[rows], self.weight
            if self.ap_mask is not None:
                x = x * self.ap_mask[c].to(h.dtype)
            if self.wp_threshold is not None:
                keep = (self.abs_contrib[c][None, :] * self.weight64) > self.wp_threshold[c]
                weight = weight * keep.to(weight.dtype)
            out[rows] = F.linear(x, weight, self.bias)
        return out
