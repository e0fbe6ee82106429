"""WeiPer: weight perturbations of the class projections (Granz, Heurich & Landgraf, "WeiPer: OOD
Detection using Weight Perturbations of Class Projections", NeurIPS 2024).

Perturbed head (drawn once by ``fit``): for repeats i = 1..r and classes c,
    w~_ic = w_c + delta * ||w_c|| * eta_ic / ||eta_ic||,   eta_ic ~ N(0, I_D),
so every perturbed vector lies at distance delta * ||w_c|| from w_c (a cone around it). The noise
is drawn repeat by repeat as ``torch.randn((C, D), float64)`` from a ``torch.Generator`` seeded
with ``seed``; W~ is kept as an (r*C, D) float32 matrix (row i*C + c), like the authors' layer.
Perturbed logits of a feature h: l_ic(h) = w~_ic . h + b_c, r*C values, computed in float64.

WeiPer+KLD (``weiper``, the paper's main method). Two one-dimensional densities per sample:
q_z(h), the histogram of its D feature entries divided by D, and q_W(h), the histogram of its r*C
perturbed logits divided by r*C. Each has n_bins equal bins on [lo, hi], the minimum and maximum
over every entry of the ID training set in that space: with t = (x - lo) / (hi - lo) * n_bins in
float64, a value goes to bin floor(t), the maximum (t = n_bins) to the last bin, and a test value
outside the range (t < 0 or t > n_bins) is dropped (the histogram is not renormalised). p_z and
p_W are the means of q_z and q_W over the training rows. T_s is a box filter of s bins along the
bin axis, window [k - (s - 1) // 2, k + s - 1 - (s - 1) // 2], edge bins repeated (PyTorch's
Conv1d with padding "same" and replicate padding, as the authors smooth), applied to the sample's
histogram only (the paper's T_k(q) against the unsmoothed training mean). With
D_eps(p, q) = KL(p' || q') + KL(q' || p'), p' = (p + eps) / sum(p + eps), q' likewise, and
MSP_W(h) = (1/r) sum_i max_c softmax(l_i.(h))_c,

    score(h) = -[ D_0.01(p_z, T_s1 q_z(h)) + lambda_1 D_0.025(p_W, T_s2 q_W(h)) - lambda_2 MSP_W(h) ]

(higher = more in-distribution). eps = 0.01 and 0.025 are fixed constants of the authors' code.
WeiPer+MSP (``weiper_msp``, the paper's MSP_WeiPer): score = MSP_W(h); it needs no training
statistics. The logits returned (ID accuracy) are the classifier's own, W h + b.

Defaults: the authors' README table (found by their search on OpenOOD's validation sets; r = 100
throughout):

    dataset (backbone)     delta  n_bins  lambda_1  lambda_2  s1  s2
    CIFAR-10 (ResNet-18)   1.8    100     2.5       0.1       4   15
    CIFAR-100 (ResNet-18)  2.4    100     0.1       1         4   40
    ImageNet (ResNet-50)   2.4    100     2.5       0.25      40  15

The CIFAR rows were tuned for ResNet-18 (D = 512), not this repository's DenseNet-101 (D = 342).
The README gives no separate setting for WeiPer+MSP, which takes the same r and delta. The search
space holds every value of these three settings (n_bins fixed at 100): 48 settings, refitted only
when delta changes (the authors' own sweep lists, 3600 settings, are a superset).

Against the authors' code (github.com/mgranz/weiper, an OpenOOD-based postprocessor
``weiper_kldiv``; neither OpenOOD v1.5 nor pytorch-ood 0.4 has WeiPer), per image:

- Same bins, smoothing, eps, divergences and score: given the same W~ and training densities
  their functions and this module agree per image to float32 precision (checked on synthetic
  data: 6e-6 absolute), apart from the points below.
- Their code hands the drawn layer over under a keyword (``W_tilde``) that the scoring function
  swallows into ``**params``, so a fresh W~ is drawn for every batch: the training range comes
  from one draw, the training densities average one draw per batch, and each test batch gets its
  own draw, so a score depends on the batch it is in and on the global random state. Here W~ is
  drawn once (seeded) and serves the range, the training densities and every test row: the
  paper's r fixed weight matrices W_1 .. W_r, reproducible and independent of batching.
- Their training densities average per-batch means (a smaller last batch weighs as a full one);
  here the exact mean over the training rows.
- Their float32 bin edges end at max + 1e-8, which rounds to max, so the training maximum itself
  falls outside the last (half-open) bin; here the last bin is closed. Projections, histograms
  and divergences are float64 here, float32 there.
- For D > 1000 (ResNet-50 on ImageNet: D = 2048) their feature histogram is built over chunks of
  1000 dimensions and normalised by the size of the last chunk before renormalising, so every
  chunk weighs equally (dimensions 2000-2047 make up a third of q_z and p_z); here the histogram
  of all D values, each weighing 1/D. CIFAR (D <= 1000) is not affected.

Cost: ``fit`` makes two passes over the training features (range, then histograms), each
projecting every row on the r*C perturbed vectors: N*D*r*C multiply-adds per pass, 1.7e11 for
CIFAR-100 on DenseNet-101 but 2.6e14 for ImageNet on ResNet-50 (hours on a CPU). ``fraction``
fits on a seeded random share of the training rows instead: on ImageNet it defaults to 0.234,
about the 300,000 images the authors fit ImageNet on (their ``train_imagenet_subsample.txt``;
theirs are class-balanced, this share is uniform). Scoring costs
D*r*C multiply-adds and a histogram of r*C values per image, and every sweep setting scores
afresh. Memory: W~ takes r*C*D*4 bytes (0.8 GB for ImageNet); the training features are read in
row blocks, and temporaries stay below ``BLOCK_VALUES`` perturbed logits.
"""

from __future__ import annotations

import numpy as np
import torch

from util.argtypes import fraction_arg, nonnegative_float, nonnegative_int, positive_int
from util.io import row_blocks

from .base import Detector, Param
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
    params = (
        Param("r", ("--weiper-r",), "WeiPer: perturbations per class vector r (default 100)", positive_int),
        Param(
            "delta",
            ("--weiper-delta",),
            "WeiPer: relative perturbation size delta (default: 1.8 CIFAR-10, 2.4 CIFAR-100 and ImageNet)",
            nonnegative_float,
        ),
        Param("n_bins", ("--weiper-bins",), "WeiPer+KLD: histogram bins (default 100)", positive_int),
        Param(
            "lambda_1",
            ("--weiper-lambda1",),
            "WeiPer+KLD: weight of the perturbed-logit divergence (default: 2.5, 0.1 on CIFAR-100)",
            nonnegative_float,
        ),
        Param(
            "lambda_2",
            ("--weiper-lambda2",),
            "WeiPer+KLD: weight of MSP over the perturbed heads (default: 0.1 CIFAR-10, 1 CIFAR-100, "
            "0.25 ImageNet)",
            nonnegative_float,
        ),
        Param(
            "s1",
            ("--weiper-s1",),
            "WeiPer+KLD: smoothing kernel size (bins), feature histogram (default: 4 CIFAR, 40 ImageNet)",
            positive_int,
        ),
        Param(
            "s2",
            ("--weiper-s2",),
            "WeiPer+KLD: smoothing kernel size (bins) of the perturbed-logit histogram (default: 15, 40 on "
            "CIFAR-100)",
            positive_int,
        ),
        Param("seed", ("--weiper-seed",), "WeiPer: seed of the perturbations (default 0)", nonnegative_int),
        Param(
            "fraction",
            ("--weiper-fraction",),
            "WeiPer+KLD: share of training features fitted, a seeded random subset (default 1)",
            fraction_arg,
        ),
    )
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
        if score not in SCORES:
            raise ValueError(f"WeiPer score must be one of {', '.join(SCORES)}, got {score!r}")
        for label, value in (("r", r), ("n_bins", n_bins), ("s1", s1), ("s2", s2)):
            if int(value) != value or value < 1:
                raise ValueError(f"WeiPer {label} must be an integer >= 1, got {value}")
        if not delta >= 0:
            raise ValueError(f"WeiPer delta must be >= 0, got {delta}")
        if not 0 < fraction <= 1:
            raise ValueError(f"WeiPer fraction of training data must be in (0, 1], got {fraction}")
        self.score = score
        self.r = int(r)
        self.delta = float(delta)
        self.n_bins = int(n_bins)
        self.lambda_1 = float(lambda_1)
        self.lambda_2 = float(lambda_2)
        self.s1 = int(s1)
        self.s2 = int(s2)
        self.seed = int(seed)
        self.fraction = float(fraction)

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
        bias = self.fc_.bias
        self.bias_ = (
            bias.detach().double() if bias is not None else torch.zeros(len(weight), dtype=torch.float64)
        )
        self.perturbed_weight_ = perturbed_weights(weight, self.r, self.delta, self.seed)
        if self.score == "msp":
            return self
        if train_features is None:
            raise ValueError("WeiPer+KLD needs the ID training features")
        n, d = train_features.shape
        keep = seeded_rows(n, self.fraction, self.seed)

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
            feature_counts = torch.zeros(self.n_bins, dtype=torch.float64)
            logit_counts = torch.zeros(self.n_bins, dtype=torch.float64)
            for h in self._blocks(rows()):
                feature_counts += row_histograms(h, *feature_range, self.n_bins).sum(dim=0)
                for logits in self._perturbed_logits(h):
                    flat = logits.reshape(len(h), -1)
                    logit_counts += row_histograms(flat, *logit_range, self.n_bins).sum(dim=0)
        self.train_rows_ = count
        self.feature_density_ = feature_counts / (count * d)
        self.logit_density_ = logit_counts / (count * len(self.perturbed_weight_))
        return self

    # -- projections ---------------------------------------------------------------------------
    def _repeats_per_group(self) -> int:
        c, d = self.fc_.out_features, self.fc_.in_features
        return max(1, min(self.r, GROUP_WEIGHTS // (c * d)))

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
        group = self._repeats_per_group()
        for first in range(0, self.r, group):
            g = min(group, self.r - first)
            w = self.perturbed_weight_[first * c : (first + g) * c].double()
            yield torch.addmm(self.bias_.repeat(g), h, w.T).view(len(h), g, c)

    # -- scoring -------------------------------------------------------------------------------
    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        kld = self.score == "kld"
        if kld:
            smooth_features = smoothing_matrix(self.n_bins, self.s1)
            smooth_logits = smoothing_matrix(self.n_bins, self.s2)
        out = [torch.zeros(0, dtype=torch.float64)]
        for block in self._blocks([h.double()]):
            msp = torch.zeros(len(block), dtype=torch.float64)
            logit_counts = torch.zeros(len(block), self.n_bins, dtype=torch.float64)
            for logits in self._perturbed_logits(block):
                msp += torch.softmax(logits, dim=2).amax(dim=2).sum(dim=1)
                if kld:
                    flat = logits.reshape(len(block), -1)
                    logit_counts += row_histograms(flat, self.logit_min_, self.logit_max_, self.n_bins)
            msp /= self.r
            if not kld:
                out.append(msp)
                continue
            q_z = row_histograms(block, self.feature_min_, self.feature_max_, self.n_bins) / block.shape[1]
            q_w = logit_counts / len(self.perturbed_weight_)
            d_z = symmetric_kl(self.feature_density_, q_z @ smooth_features.T, FEATURE_EPS)
            d_w = symmetric_kl(self.logit_density_, q_w @ smooth_logits.T, LOGIT_EPS)
            out.append(-(d_z + self.lambda_1 * d_w - self.lambda_2 * msp))
        return torch.cat(out), z
