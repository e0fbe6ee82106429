"""WeiPer: weight perturbations of the class projections (Granz, Heurich & Landgraf, "WeiPer: OOD
Detection using Weight Perturbations of Class Projections", NeurIPS 2024).

Perturbed head, drawn once by ``fit``: for repeats i = 1..r and classes c,
w~_ic = w_c + delta * ||w_c|| * eta_ic / ||eta_ic||, eta_ic ~ N(0, I_D) (a cone around w_c), the
noise drawn repeat by repeat in float64 from a ``torch.Generator`` seeded with ``seed``; W~ is kept
as an (r*C, D) float32 matrix. Perturbed logits l_ic(h) = w~_ic . h + b_c, computed in float64.

WeiPer+KLD (``weiper``, the paper's main method): q_z(h) is the histogram of the D entries of h
divided by D, q_W(h) that of its r*C perturbed logits divided by r*C, each with n_bins equal bins
on [lo, hi], the minimum and maximum over the ID training set in that space (the last bin closed;
test values outside are dropped, no renormalisation). p_z, p_W: their means over the training rows.
T_s: a box filter of s bins (edge bins repeated), applied to the sample's histogram only. With
D_eps(p, q) = KL(p' || q') + KL(q' || p'), p' = (p + eps) / sum(p + eps), q' likewise, and
MSP_W(h) = (1/r) sum_i max_c softmax(l_i.(h))_c,

    score(h) = -[ D_0.01(p_z, T_s1 q_z(h)) + lambda_1 D_0.025(p_W, T_s2 q_W(h)) - lambda_2 MSP_W(h) ]

(eps = 0.01 and 0.025 are constants of the authors' code). WeiPer+MSP (``weiper_msp``): score =
MSP_W(h), no training statistics. The logits returned (ID accuracy) are W h + b.

Defaults: the authors' README table (r = 100, n_bins = 100; (lambda_1, lambda_2), (s1, s2)):
CIFAR-10 (ResNet-18) delta 1.8, (2.5, 0.1), (4, 15); CIFAR-100 (ResNet-18) delta 2.4, (0.1, 1),
(4, 40); ImageNet (ResNet-50) delta 2.4, (2.5, 0.25), (40, 15). ``search_space``: every value of
these (48 settings, refitted only when delta changes).

Cost: ``fit`` projects every training row on the r*C perturbed vectors twice (range, then
histograms), 2.6e14 multiply-adds for ImageNet ResNet-50, so there ``fraction`` defaults to 0.234
(a seeded random share, about the authors' 300,000 images). W~ takes r*C*D*4 bytes; training
features are read in row blocks, temporaries stay below ``BLOCK_VALUES`` perturbed logits.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import fraction_arg, nonnegative_float, nonnegative_int
from util.io import row_blocks

from .base import Detector, head_float64
from .statistics import seeded_rows

FEATURE_EPS = 0.01  # added to both densities of the feature divergence (authors' code)
LOGIT_EPS = 0.025  # added to both densities of the perturbed-logit divergence (authors' code)
GROUP_WEIGHTS = 1 << 22  # perturbed weight entries projected at once (32 MiB in float64)
BLOCK_VALUES = 1 << 23  # perturbed logits held at once (64 MiB in float64)
TRAIN_ROWS = 4096  # training rows read at a time
SCORES = ("kld", "msp")


def perturbed_weights(weight: torch.Tensor, r: int, delta: float, seed: int) -> torch.Tensor:
    """W~ (r*C, D) float32: row i*C + c is w_c + delta ||w_c|| eta / ||eta||, eta ~ N(0, I_D) drawn
    repeat by repeat as a (C, D) float64 matrix from a generator seeded with ``seed``."""
    w = weight.detach().double()
    c = w.shape[0]
    norms = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    generator = torch.Generator().manual_seed(int(seed))
    out = torch.empty((r * c, w.shape[1]), dtype=torch.float32)
    for i in range(r):
        eta = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        eta = eta / torch.linalg.vector_norm(eta, dim=1, keepdim=True)
        out[i * c : (i + 1) * c] = (w + delta * norms * eta).float()
    return out


def bin_index(x: torch.Tensor, lo: float, hi: float, n_bins: int) -> torch.Tensor:
    """1 + the bin of each value among n_bins equal bins on [lo, hi]: with t = (x - lo) / (hi - lo)
    * n_bins (float64), bin floor(t) for 0 <= t < n_bins and the last bin for t = n_bins (the
    maximum); 0 for a value below the range, n_bins + 1 above it (or NaN)."""
    t = (x - lo).div_(hi - lo).mul_(n_bins)
    top = t == n_bins
    t.floor_().clamp_(-1, n_bins).masked_fill_(top, n_bins - 1).nan_to_num_(nan=n_bins)
    return t.add_(1).long()


def row_histograms(x: torch.Tensor, lo: float, hi: float, n_bins: int) -> torch.Tensor:
    """(B, n_bins) float64 counts of each row's values per bin (values outside [lo, hi] dropped)."""
    idx = bin_index(x, lo, hi, n_bins).add_((n_bins + 2) * torch.arange(len(x))[:, None])
    counts = torch.bincount(idx.view(-1), minlength=len(x) * (n_bins + 2))
    return counts.view(len(x), n_bins + 2)[:, 1 : n_bins + 1].double()


def smoothing_matrix(n_bins: int, size: int) -> torch.Tensor:
    """S (n_bins, n_bins) with (q @ S.T)_k = mean of q over bins k - (size-1)//2 .. k + size-1 -
    (size-1)//2, indices clamped to the edge bins (Conv1d, padding "same", replicate padding)."""
    left = (size - 1) // 2
    offsets = torch.arange(-left, size - left)
    cols = (torch.arange(n_bins)[:, None] + offsets[None, :]).clamp(0, n_bins - 1)
    rows = torch.arange(n_bins)[:, None].expand_as(cols)
    s = torch.zeros(n_bins, n_bins, dtype=torch.float64)
    s.index_put_(
        (rows.reshape(-1), cols.reshape(-1)),
        torch.full((cols.numel(),), 1.0 / size, dtype=torch.float64),
        accumulate=True,
    )
    return s


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """KL(p' || q') + KL(q' || p') of a density p (n,) and each row of q (B, n), where p' and q'
    are p + eps and q + eps normalised to sum 1."""
    p = (p + eps) / (p + eps).sum()
    q = (q + eps) / (q + eps).sum(dim=1, keepdim=True)
    return ((p - q) * (torch.log(p) - torch.log(q))).sum(dim=1)


class WeiPer(Detector):
    """WeiPer+KLD (``weiper``) or WeiPer+MSP (``weiper_msp``) on one seeded perturbed head."""

    name = "weiper"
    paper = "Granz et al., NeurIPS 2024"
    param_help = {
        "r": "perturbations per class vector r",
        "delta": "relative perturbation size delta",
        "n_bins": "histogram bins (WeiPer+KLD)",
        "lambda_1": "weight of the perturbed-logit divergence (WeiPer+KLD)",
        "lambda_2": "weight of MSP over the perturbed heads (WeiPer+KLD)",
        "s1": "smoothing kernel size in bins of the feature histogram (WeiPer+KLD)",
        "s2": "smoothing kernel size in bins of the perturbed-logit histogram (WeiPer+KLD)",
        "seed": "seed of the perturbations",
        "fraction": "share of training features fitted, a seeded random subset (WeiPer+KLD)",
    }
    param_types = {
        "delta": nonnegative_float,
        "lambda_1": nonnegative_float,
        "lambda_2": nonnegative_float,
        "seed": nonnegative_int,
        "fraction": fraction_arg,
    }
    defaults = {
        "CIFAR-10": {
            "r": 100,
            "delta": 1.8,
            "n_bins": 100,
            "lambda_1": 2.5,
            "lambda_2": 0.1,
            "s1": 4,
            "s2": 15,
        },
        "CIFAR-100": {
            "r": 100,
            "delta": 2.4,
            "n_bins": 100,
            "lambda_1": 0.1,
            "lambda_2": 1.0,
            "s1": 4,
            "s2": 40,
        },
        "imagenet": {
            "r": 100,
            "delta": 2.4,
            "n_bins": 100,
            "lambda_1": 2.5,
            "lambda_2": 0.25,
            "s1": 40,
            "s2": 15,
            "fraction": 0.234,
        },
    }
    fit_params = ("score", "r", "delta", "n_bins", "seed", "fraction")

    def __init__(
        self,
        score: str = "kld",
        r: int = 100,
        delta: float = 1.8,
        n_bins: int = 100,
        lambda_1: float = 2.5,
        lambda_2: float = 0.1,
        s1: int = 4,
        s2: int = 15,
        seed: int = 0,
        fraction: float = 1.0,
    ):
        self.score = score
        self.r = r
        self.delta = delta
        self.n_bins = n_bins
        self.lambda_1 = lambda_1
        self.lambda_2 = lambda_2
        self.s1 = s1
        self.s2 = s2
        self.seed = seed
        self.fraction = fraction

    def check_params(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"WeiPer score must be one of {', '.join(SCORES)}, got {self.score!r}")
        for label in ("r", "n_bins", "s1", "s2"):
            value = getattr(self, label)
            if int(value) != value or value < 1:
                raise ValueError(f"WeiPer {label} must be an integer >= 1, got {value}")
        if not self.delta >= 0:
            raise ValueError(f"WeiPer delta must be >= 0, got {self.delta}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"WeiPer fraction of training data must be in (0, 1], got {self.fraction}")

    # -- description ---------------------------------------------------------------------------
    @classmethod
    def variants(cls) -> dict[str, dict]:
        return {"weiper": {"score": "kld"}, "weiper_msp": {"score": "msp"}}

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        # the refitting axis first: the sweep's product then fits once per delta
        return {
            "delta": (1.8, 2.4),
            "lambda_1": (0.1, 2.5),
            "lambda_2": (0.1, 0.25, 1.0),
            "s1": (4, 40),
            "s2": (15, 40),
        }

    def run_name(self) -> str:
        return "weiper" if self.score == "kld" else "weiper_msp"

    def inert_params(self) -> set[str]:
        return {"n_bins", "lambda_1", "lambda_2", "s1", "s2", "fraction"} if self.score == "msp" else set()

    def needs(self) -> tuple[str, ...]:
        return ("train_features",) if self.score == "kld" else ()

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, fc, train_features=None) -> WeiPer:
        super().fit(fc)
        weight = self.fc_.weight.detach()
        self.bias_ = head_float64(self.fc_)[1]
        self.perturbed_weight_ = perturbed_weights(weight, int(self.r), float(self.delta), int(self.seed))
        if self.score == "msp":
            return self
        if train_features is None:
            raise ValueError("WeiPer+KLD needs the ID training features")
        n, d = train_features.shape
        keep = seeded_rows(n, float(self.fraction), int(self.seed))

        def rows():
            """The (kept) training rows, block by block, as float64 tensors."""
            start = 0
            for block in row_blocks(train_features, TRAIN_ROWS):
                end = start + len(block)
                if keep is not None:
                    first, last = np.searchsorted(keep, [start, end])
                    block = block[keep[first:last] - start]
                start = end
                yield torch.from_numpy(np.asarray(block, dtype=np.float64))

        with torch.inference_mode():
            feature_range, logit_range = [np.inf, -np.inf], [np.inf, -np.inf]
            count = 0
            for h in self._blocks(rows()):
                count += len(h)
                feature_range = [min(feature_range[0], h.min().item()), max(feature_range[1], h.max().item())]
                for logits in self._perturbed_logits(h):
                    logit_range = [
                        min(logit_range[0], logits.min().item()),
                        max(logit_range[1], logits.max().item()),
                    ]
            if count == 0:
                raise ValueError("WeiPer+KLD needs at least one ID training feature")
            for label, (lo, hi) in (("features", feature_range), ("perturbed logits", logit_range)):
                if not lo < hi:
                    raise ValueError(
                        f"WeiPer+KLD: the ID training {label} all equal {lo}: no histogram range"
                    )
            self.feature_min_, self.feature_max_ = (float(v) for v in feature_range)
            self.logit_min_, self.logit_max_ = (float(v) for v in logit_range)
            bins = int(self.n_bins)
            feature_counts = torch.zeros(bins, dtype=torch.float64)
            logit_counts = torch.zeros(bins, dtype=torch.float64)
            for h in self._blocks(rows()):
                feature_counts += row_histograms(h, *feature_range, bins).sum(dim=0)
                for logits in self._perturbed_logits(h):
                    flat = logits.reshape(len(h), -1)
                    logit_counts += row_histograms(flat, *logit_range, bins).sum(dim=0)
        self.train_rows_ = count
        self.feature_density_ = feature_counts / (count * d)
        self.logit_density_ = logit_counts / (count * len(self.perturbed_weight_))
        return self

    # -- projections ---------------------------------------------------------------------------
    def _repeats_per_group(self) -> int:
        c, d = self.fc_.out_features, self.fc_.in_features
        return max(1, min(int(self.r), GROUP_WEIGHTS // (c * d)))

    def _block_rows(self) -> int:
        return max(1, BLOCK_VALUES // (self._repeats_per_group() * self.fc_.out_features))

    def _blocks(self, arrays):
        """Row blocks of at most ``_block_rows()`` rows of each (B, D) float64 tensor of ``arrays``."""
        rows = self._block_rows()
        for h in arrays:
            for start in range(0, len(h), rows):
                yield h[start : start + rows]

    def _perturbed_logits(self, h: torch.Tensor):
        """The perturbed logits of float64 rows h, one (B, g, C) float64 tensor per group of g repeats."""
        c = self.fc_.out_features
        group, r = self._repeats_per_group(), int(self.r)
        for first in range(0, r, group):
            g = min(group, r - first)
            w = self.perturbed_weight_[first * c : (first + g) * c].double()
            yield torch.addmm(self.bias_.repeat(g), h, w.T).view(len(h), g, c)

    # -- scoring -------------------------------------------------------------------------------
    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        kld = self.score == "kld"
        bins = int(self.n_bins)
        if kld:
            smooth_features = smoothing_matrix(bins, int(self.s1))
            smooth_logits = smoothing_matrix(bins, int(self.s2))
        out = [torch.zeros(0, dtype=torch.float64)]
        for block in self._blocks([h.double()]):
            msp = torch.zeros(len(block), dtype=torch.float64)
            logit_counts = torch.zeros(len(block), bins, dtype=torch.float64)
            for logits in self._perturbed_logits(block):
                msp += torch.softmax(logits, dim=2).amax(dim=2).sum(dim=1)
                if kld:
                    flat = logits.reshape(len(block), -1)
                    logit_counts += row_histograms(flat, self.logit_min_, self.logit_max_, bins)
            msp /= int(self.r)
            if not kld:
                out.append(msp)
                continue
            q_z = row_histograms(block, self.feature_min_, self.feature_max_, bins) / block.shape[1]
            q_w = logit_counts / len(self.perturbed_weight_)
            d_z = symmetric_kl(self.feature_density_, q_z @ smooth_features.T, FEATURE_EPS)
            d_w = symmetric_kl(self.logit_density_, q_w @ smooth_logits.T, LOGIT_EPS)
            out.append(-(d_z + float(self.lambda_1) * d_w - float(self.lambda_2) * msp))
        return torch.cat(out), z
