#!/usr/bin/env python3
"""Precompute ID training statistics: LINe's class-mean contributions and DICE's mean feature.

One batched forward pass over the ID training set (its features are cached, so ood_eval.py and
later runs reuse them), then per-class sums of the Taylor contributions s = h * d logit_y / d h,
accumulated chunk by chunk. Writes atomically to --cache-dir:
  {in_dataset}_{name}_{method}_mean_class.npy   (D, C) float32
  {in_dataset}_{name}_feat_stat.npy             (D,)   float64
and a .json next to each naming what produced it.

Examples:
  python precompute.py --in-dataset CIFAR-10     (-d / --dataset, as in the original code)
  ./precompute.py                                every ID dataset whose data and checkpoint are here
Several processes or machines (util/distributed.py): torchrun --nproc_per_node=N precompute.py ...
"""

from __future__ import annotations

import bootstrap  # noqa: F401  (reruns this script under .venv when this Python has no torch)

# isort: split
import argparse

from pipeline.config import PrecomputeConfig
from pipeline.flags import add_run_args, config_values
from pipeline.precompute import precompute, precompute_all
from util.argtypes import positive_int
from util.cli import CliParser
from util.runtime import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(description=__doc__.split("\n")[0])
    add_run_args(parser, in_dataset_flags=("--in-dataset", "--dataset", "-d"), in_dataset_default=None)
    parser.add_argument(
        "--method",
        default="taylor",
        choices=["taylor"],
        help="contribution estimate (default: taylor, first-order Shapley value)",
    )
    parser.add_argument(
        "--max-samples",
        default=None,
        type=positive_int,
        help="use a fixed class-balanced subset of N training images (quick runs; default: all)",
    )
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    config = PrecomputeConfig(**config_values(args, PrecomputeConfig))
    if config.in_dataset is None:  # the original's no-argument run: every ID dataset present
        precompute_all(config)
    else:
        precompute(config)


if __name__ == "__main__":
    run_cli(main)
