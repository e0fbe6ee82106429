"""Command-line construction of the post-hoc baselines and of LINe's ablation variants.

``ood_eval.py`` keeps its own resolution of the original methods (energy, msp, react, dice, line,
odin); this module adds the baselines of the later literature, their flags (defaults from each
paper), and the names of LINe ablation variants: ``line`` is AC + AP + WP, ``line_<parts>`` keeps
only the listed parts (e.g. ``line_ac_wp``: clipping and weight pruning, no activation pruning),
``line_none`` is plain energy with the same code path.
"""

from __future__ import annotations

import argparse

from util.cli import parsed_number, positive_int

from .ash import ASH
from .gradnorm import GradNorm
from .knn import KNN
from .mahalanobis import Mahalanobis
from .scale import SCALE
from .vim import ViM

BASELINE_METHODS = ("ash_p", "ash_b", "ash_s", "scale", "mahalanobis", "knn", "vim", "gradnorm")
LINE_PARTS = ("ac", "ap", "wp")


def _fraction(text: str) -> float:
    value = parsed_number(text, float, "a fraction in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is outside (0, 1]")
    return value


def _percentile(text: str) -> float:
    """ASH / SCALE percentile: [0, 100) (at 100 nothing would be kept)."""
    value = parsed_number(text, float, "a percentile in [0, 100]")
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 100)")
    return value


def add_baseline_args(parser: argparse.ArgumentParser) -> None:
    """Flags of the baselines and of the LINe ablation."""
    g = parser.add_argument_group("baselines (defaults from each paper)")
    g.add_argument(
        "--ash-percentile",
        type=_percentile,
        default=None,
        help="ASH pruning percentile p (default: 90 for ash_p and ash_b, 95 for ash_s)",
    )
    g.add_argument(
        "--scale-percentile", type=_percentile, default=85.0, help="SCALE percentile p (default 85)"
    )
    g.add_argument(
        "--knn-k", type=positive_int, default=None, help="KNN k (default: 50 on CIFAR, 1000 otherwise)"
    )
    g.add_argument(
        "--knn-fraction", type=_fraction, default=1.0, help="KNN: share of training features used (default 1)"
    )
    g.add_argument(
        "--vim-dim",
        type=int,
        default=None,
        help="ViM principal-space dimension (default: 1000 if D >= 2048, 512 if D >= 768, else D // 2)",
    )
    g.add_argument(
        "--gradnorm-temperature", type=float, default=1.0, help="GradNorm temperature T (default 1)"
    )
    a = parser.add_argument_group("LINe ablation (the paper's AC / AP / WP table)")
    a.add_argument("--no-clip", action="store_true", help="LINe without activation clipping (AC)")
    a.add_argument("--no-ap", action="store_true", help="LINe without activation pruning (AP)")
    a.add_argument("--no-wp", action="store_true", help="LINe without weight pruning (WP)")


def make_baseline(method: str, args: argparse.Namespace, in_dataset: str):
    """The detector for a name in BASELINE_METHODS, configured from the flags."""
    if method.startswith("ash_"):
        return ASH(method[-1], args.ash_percentile)
    if method == "scale":
        return SCALE(args.scale_percentile)
    if method == "mahalanobis":
        return Mahalanobis()
    if method == "knn":
        k = args.knn_k if args.knn_k is not None else (50 if in_dataset.startswith("CIFAR") else 1000)
        return KNN(k=k, fraction=args.knn_fraction)
    if method == "vim":
        return ViM(dim=args.vim_dim)
    if method == "gradnorm":
        return GradNorm(args.gradnorm_temperature)
    raise ValueError(f"unknown baseline {method!r}; expected one of {', '.join(BASELINE_METHODS)}")


def line_parts(name: str) -> tuple[bool, bool, bool] | None:
    """(AC, AP, WP) switches of a LINe ablation name (``line``, ``line_ac_ap``, ``line_none``), else None."""
    if name in ("line", "taylor"):
        return True, True, True
    if not name.startswith("line_"):
        return None
    parts = name[len("line_") :].split("_")
    if parts == ["none"]:
        return False, False, False
    if not parts or any(p not in LINE_PARTS for p in parts) or len(set(parts)) != len(parts):
        return None
    return tuple(p in parts for p in LINE_PARTS)


def line_name(ac: bool, ap: bool, wp: bool) -> str:
    """Canonical method name of a LINe variant: ``line`` with all parts, else ``line_<parts>``."""
    parts = [p for p, on in zip(LINE_PARTS, (ac, ap, wp)) if on]
    if len(parts) == 3:
        return "line"
    return "line_" + ("_".join(parts) if parts else "none")
