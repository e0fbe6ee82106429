"""LINe (Ahn, Park & Kim, "LINe: Out-of-Distribution Detection by Leveraging Important Neurons",
CVPR 2023).

h' = min(h, tau) (activation clipping, AC); c^ = argmax(W h' + b); logits =
(W * WP_{c^}) (h' * AP_{c^}) + b with the class-wise activation-pruning (AP: Cm[c, j] >
percentile(Cm[c], p_a)) and weight-pruning (WP: R_c > percentile(R_c, p_w), R_c =
|Cm[c]|[None, :] * W) masks of ``models.route.RouteLINe``, the one implementation of both;
score = logsumexp(logits). Cm is the (C, D) class-mean Taylor contribution h * W[y]
(``detectors.statistics``). Paper settings: CIFAR-10 (p_w, p_a, tau) = (90, 90, 1.0),
CIFAR-100 (90, 10, 1.0), ImageNet ResNet-50 (10, 10, 0.8).

Ablation (the paper's AC / AP / WP table): each component is switched off by a mask setting of
the same layer: AC off means tau = inf, AP off an all-true AP mask, WP off no weight cut. The
variant names are ``line`` (all three), ``line_<parts>`` (the parts kept, e.g. ``line_ac_wp``)
and ``line_none``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from models.route import RouteLINe
from util.argtypes import nonnegative_float, percentile_arg

from .base import Detector

PARTS = ("ac", "ap", "wp")


def line_parts(name: str) -> tuple[bool, bool, bool] | None:
    """(AC, AP, WP) of a LINe variant name (``line``, ``line_ac_ap``, ``line_none``), else None."""
    if name in ("line", "taylor"):
        return True, True, True
    if not name.startswith("line_"):
        return None
    parts = name[len("line_") :].split("_")
    if parts == ["none"]:
        return False, False, False
    if not parts or any(p not in PARTS for p in parts) or len(set(parts)) != len(parts):
        return None
    return tuple(p in parts for p in PARTS)


def line_name(ac: bool, ap: bool, wp: bool) -> str:
    """Canonical name of a LINe variant: ``line`` with all parts, else ``line_<parts>``."""
    parts = [p for p, on in zip(PARTS, (ac, ap, wp)) if on]
    if len(parts) == 3:
        return "line"
    return "line_" + ("_".join(parts) if parts else "none")


class LINe(Detector):
    name = "line"
    aliases = ("taylor",)
    paper = "Ahn et al., CVPR 2023"
    param_help = {
        "p_w": "weight-pruning (WP) percentile p_w",
        "p_a": "activation-pruning (AP) percentile p_a",
        "clip_threshold": "activation clipping threshold tau, h' = min(h, tau)",
        "activation_clipping": "activation clipping (AC)",
        "activation_pruning": "activation pruning (AP)",
        "weight_pruning": "weight pruning (WP)",
    }
    param_types = {"p_w": percentile_arg, "p_a": percentile_arg, "clip_threshold": nonnegative_float}
    defaults = {
        "CIFAR-10": {"p_w": 90.0, "p_a": 90.0, "clip_threshold": 1.0},
        "CIFAR-100": {"p_w": 90.0, "p_a": 10.0, "clip_threshold": 1.0},
        "imagenet": {"p_w": 10.0, "p_a": 10.0, "clip_threshold": 0.8},
    }
    fit_params = ("p_w", "p_a", "activation_pruning", "weight_pruning")
    # Rows scored per chunk: one masked (C, D) weight is built per predicted class present in a
    # chunk, so larger chunks mean fewer rebuilds (ImageNet: 1,000 classes).
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

    @classmethod
    def variants(cls) -> dict[str, dict]:
        """line, then the ablations keeping two parts, one part, none (the paper's table order)."""
        out = {}
        for ac, ap, wp in sorted(
            itertools.product((True, False), repeat=3), key=lambda s: (-sum(s), line_name(*s))
        ):
            switches = {"activation_clipping": ac, "activation_pruning": ap, "weight_pruning": wp}
            out[line_name(ac, ap, wp)] = {k: v for k, v in switches.items() if not v}
        return out

    @classmethod
    def canonical(cls, name: str) -> str | None:
        """``line_wp_ac`` means ``line_ac_wp``: the parts in any order."""
        parts = line_parts(name)
        return None if parts is None else line_name(*parts)

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        grid = (10.0, 30.0, 50.0, 70.0, 90.0)
        return {"p_w": grid, "p_a": grid, "clip_threshold": (0.5, 0.8, 1.0, 1.5)}

    def run_name(self) -> str:
        clips = self.activation_clipping and self.clip_threshold is not None
        return line_name(clips, self.activation_pruning, self.weight_pruning)

    def inert_params(self) -> set[str]:
        switches = (
            ("clip_threshold", self.activation_clipping),
            ("p_a", self.activation_pruning),
            ("p_w", self.weight_pruning),
        )
        return {name for name, on in switches if not on}

    @property
    def tau(self) -> float:
        """The clipping threshold applied: clip_threshold, or inf with AC off (or none given)."""
        if not self.activation_clipping or self.clip_threshold is None:
            return math.inf
        return float(self.clip_threshold)

    def fit(self, fc, contributions) -> LINe:
        super().fit(fc)
        self.route_ = RouteLINe(
            self.fc_, contributions, self.p_w, self.p_a, self.activation_pruning, self.weight_pruning
        )
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.route_(h.clamp(max=self.tau))

    def score_array(self, features: np.ndarray):
        """The whole array grouped by predicted class (``RouteLINe.score_array``), when masks prune."""
        if not self.route_.prunes:
            return None
        return self.route_.score_array(features, self.tau, self.score_logits, self.score_chunk)
