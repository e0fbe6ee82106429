#!/usr/bin/env python3
"""Evaluate OOD detectors (LINe, DICE, Energy, MSP, ReAct, ODIN and the later baselines) on the ID
test set and OOD sets.

Features of every set are extracted once and cached; every detector and hyperparameter setting is
then computed from the cache. Prints FPR95 / AUROC / AUPR-In per OOD set and on average (ID
positive, the DICE/LINe convention) and the ID accuracy of the logits used, and writes
{base_dir}/{in_dataset}/{method}/{name}/results.json plus per-image scores.

Examples (the original demo commands):
  python ood_eval.py --in-dataset CIFAR-10 --p-w 90 --p-a 90 --method taylor --clip_threshold 1.0
  python ood_eval.py --in-dataset CIFAR-10 --p 90
Several methods from one extraction, one table:
  python ood_eval.py --in-dataset CIFAR-10 --methods energy,dice,line,knn
"""

from __future__ import annotations

import bootstrap  # noqa: F401  (reruns this script under .venv when this Python has no torch)

# isort: split
import argparse
import sys

from detectors import registry
from pipeline.config import EvalConfig
from pipeline.evaluate import DetectorsFailed, evaluate
from pipeline.flags import (
    add_detector_args,
    add_evaluation_args,
    add_method_args,
    add_original_eval_args,
    add_run_args,
    config_values,
    detector_runs,
    flags_of,
)
from util.cli import CliParser
from util.datasets import present_ood_sets
from util.metrics import FPR_CONVENTIONS
from util.runtime import run_cli


def build_parser() -> argparse.ArgumentParser:
    methods = ", ".join([*registry.method_names(), *registry.aliases()])
    parser = CliParser(
        description=__doc__.split("\n\n")[0].replace("\n", " ") + f" Methods: {methods}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("Examples") :],
    )
    add_run_args(parser)
    add_method_args(parser)
    add_evaluation_args(parser)
    parser.add_argument(
        "--fpr-convention",
        choices=sorted(FPR_CONVENTIONS),
        default="id",
        help="FPR95 printed in the table: id = ID positive (the papers, default), ood = OOD positive "
        "(OpenOOD, pytorch-ood); results.json always holds both",
    )
    parser.add_argument(
        "--plots",
        action="store_true",
        help="write score histograms and ROC curves (PNG) to {result dir}/plots/",
    )
    parser.add_argument(
        "--show-flags",
        action="store_true",
        help="print the detector flags of the chosen method with their values for --in-dataset (the "
        "papers' settings unless given) and exit; the demos read the settings this way",
    )
    parser.add_argument(
        "--show-ood-sets",
        action="store_true",
        help="print the OOD sets this run would score (--out-datasets, else the ID dataset's defaults) "
        "that are present under --data-root, on one line; each absent one is named on stderr with "
        "where to get it; then exit (the demos read the sets this way)",
    )
    add_detector_args(parser)
    add_original_eval_args(parser)
    return parser


def config_of(args: argparse.Namespace) -> EvalConfig:
    config = EvalConfig(**config_values(args, EvalConfig))
    config.detectors = detector_runs(args, config.dataset.preset)
    return config


def show_ood_sets(config: EvalConfig) -> None:
    """--show-ood-sets: the sets present on stdout, one line; a line per absent one on stderr."""
    names = config.out_datasets or config.dataset.ood_sets
    present, missing = present_ood_sets(names, config.data_root)
    for message in missing:
        print(f"missing: {message}", file=sys.stderr)
    print(" ".join(present))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    config = config_of(args)
    if args.show_flags:
        print("\n".join(" ".join(flags_of(run.detector)) for run in config.detectors))
        return
    if args.show_ood_sets:
        show_ood_sets(config)
        return
    try:
        evaluate(config)
    except DetectorsFailed as exc:  # the others' results are written; the command still fails
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
