#!/usr/bin/env python3
"""Precompute ID training statistics: LINe's class-mean contributions and DICE's mean feature.

One batched forward pass over the ID training set (its features are cached, so ood_eval.py and
later runs reuse them), then per-class sums of the Taylor contributions s = h * d logit_y / d h,
accumulated chunk by chunk. Writes atomically to --cache-dir:
  {in_dataset}_{name}_{method}_mean_class.npy   (D, C) float32
  {in_dataset}_{name}_feat_stat.npy             (D,)   float64
and a .json next to each naming what produced it.

Example: python precompute.py --in-dataset CIFAR-10
Several processes or machines (util/distributed.py): torchrun --nproc_per_node=N precompute.py ...
"""

from __future__ import annotations

import argparse

from pipeline.config import PrecomputeConfig
from pipeline.flags import add_run_args, config_values
from pipeline.precompute import precompute
from util.argtypes import positive_int
from util.runtime import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser)
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
        help="use a fixed class-balanced subset of N training images (quick runs)",
    )
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    precompute(PrecomputeConfig(**config_values(args, PrecomputeConfig)))


if __name__ == "__main__":
    run_cli(main)
