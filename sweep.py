#!/usr/bin/env python3
"""Sweep one detector's hyperparameters from the feature cache and select a setting without test OOD data.

Every setting of the detector's search space is scored from cached features (no forward pass
once the sets are cached). The ID test set is split (seeded) into a validation part and a test
part; a setting is chosen by FPR95 (then AUROC) of ID-validation against a validation OOD set
(``gaussian`` noise by default, never one of the test OOD sets), and reported on the ID-test
part against the test OOD sets.

The validation set: ID = a seeded share of the ID test set (--val-fraction, --seed), OOD = the
--val-ood set (default: synthetic Gaussian noise, pixels clip(N(0.5, 1), 0, 1), in the ID image
size). Noise is easy to tell from real images, so it often cannot rank the settings: settings
that tie (equal validation FPR95 and AUROC to the printed two decimals) are named in a warning,
and the paper's setting is kept when it is among them. For a real choice give --val-ood a folder
of real images unlike the ID classes that is not one of the test sets. With --benchmark the
benchmark's own ID and OOD validation lists are used instead (best AUROC, OpenOOD's rule).

  python sweep.py --in-dataset CIFAR-10 --out-datasets dtd FashionMNIST            # LINe's grid
  python sweep.py --method knn --out-datasets dtd --grid k=1,10,50,200
  python sweep.py --method line --grid p_w=10,50,90 --grid clip_threshold=0.8,1.0,inf
"""

from __future__ import annotations

import bootstrap  # noqa: F401  (reruns this script under .venv when this Python has no torch)

# isort: split
import argparse

from detectors import registry
from pipeline.config import SweepConfig
from pipeline.flags import add_evaluation_args, add_run_args, config_values, method_arg, method_choices
from pipeline.sweep import sweep
from util.argtypes import fraction_arg
from util.cli import CliParser
from util.errors import UserError
from util.runtime import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__ + "\n" + default_grids(),
    )
    add_run_args(parser)
    parser.add_argument(
        "--method",
        default="line",
        type=method_arg,
        metavar="METHOD",
        help=f"the detector to sweep (default: line): {', '.join(method_choices())}",
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="replace one axis of the detector's search space (repeatable), e.g. p_w=10,50,90 "
        "(default: the grids listed below)",
    )
    parser.add_argument(
        "--val-ood",
        default=None,
        help="validation OOD set, a set name or an image folder, never a test set (default: "
        f"{SweepConfig.val_ood}, synthetic noise in the ID image size; with --benchmark its OOD validation "
        "list); see 'The validation set' below",
    )
    parser.add_argument(
        "--val-fraction",
        type=fraction_arg,
        default=None,
        help="share of the ID test set held out as ID validation images, the rest is reported as the test "
        f"part (default: {SweepConfig.val_fraction:g}; with --benchmark its ID validation list instead)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the ID validation split (default: {SweepConfig.seed})",
    )
    add_evaluation_args(parser)
    return parser


def default_grids(feature_dim: int = 342) -> str:
    """The search space of every method (--grid replaces one axis), for --help."""
    lines = [f"Default grids (the search space; ViM's depends on the feature size, here D = {feature_dim}):"]
    for method in registry.method_names():
        cls, _ = registry.lookup(method)
        space = cls.search_space(feature_dim)
        text = "; ".join(
            f"{k}={','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
            for k, vs in space.items()
        )
        lines.append(f"  {method:<12} {text or '(no parameters)'}")
    return "\n".join(lines)


def parse_grid(method: str, items: list[str]) -> dict[str, tuple]:
    """``NAME=V1,V2`` items -> {parameter: values}, each value parsed by the parameter's own type."""
    cls, _ = registry.lookup(method)
    params = {p.name: p for p in cls.params if not p.is_switch}
    grid = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not text or name not in params:
            raise UserError(
                f"--grid {item!r}: expected NAME=V1,V2,... with NAME one of {method}'s parameters "
                f"{', '.join(params) or '(none)'}"
            )
        try:
            grid[name] = tuple(params[name].type(v.strip()) for v in text.split(","))
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"--grid {item!r}: {exc}") from None
    return grid


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    values = config_values(args, SweepConfig)
    split_flags = {"val_ood": "--val-ood", "val_fraction": "--val-fraction", "seed": "--seed"}
    given = [flag for key, flag in split_flags.items() if values.get(key) is not None]
    if values.get("benchmark") and given:
        raise UserError(
            f"{', '.join(given)}: with --benchmark the benchmark's validation lists select the setting "
            "(OpenOOD's ID and OOD val lists); drop the flag"
        )
    config = SweepConfig(**{k: v for k, v in values.items() if v is not None or k not in split_flags})
    config.grid = parse_grid(args.method, args.grid)
    sweep(config)


if __name__ == "__main__":
    run_cli(main)
