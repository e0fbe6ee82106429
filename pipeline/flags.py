"""Command-line flags shared by the scripts, and their translation into typed configurations.

The detector flags are not written here: they are the ``params`` that the detectors of
``detectors.registry`` declare, so a new detector's flags appear with it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from detectors import registry
from detectors.base import Param
from models import MODEL_NAMES
from util.argtypes import name_arg, nonnegative_int, positive_int
from util.data import CIFAR_OOD_SETS, IMAGENET_OOD_SETS, IN_DATASETS
from util.errors import UserError

from .config import DetectorRun


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The classifier, the data and the extraction: the same flags in every script."""
    parser.add_argument(
        "--in-dataset",
        default="CIFAR-10",
        type=name_arg(sorted(IN_DATASETS), "dataset"),
        metavar="{" + ",".join(sorted(IN_DATASETS)) + "}",
        help="in-distribution dataset (default: CIFAR-10)",
    )
    parser.add_argument(
        "--name",
        default="densenet",
        help="network name: checkpoints/{in_dataset}/{name}/ and cache file names",
    )
    parser.add_argument(
        "--model-arch",
        default="densenet",
        type=name_arg(MODEL_NAMES, "model"),
        help="architecture (default: densenet)",
    )
    parser.add_argument("--data-root", default="datasets", help="dataset root (default: ./datasets)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (default: checkpoints/{in_dataset}/{name}/"
        "checkpoint_100.pth.tar, downloaded if absent and published; ImageNet: torchvision's "
        "resnet50 IMAGENET1K_V1 weights, checkpoints/imagenet/BiT-S-R101x1.npz for BiT)",
    )
    parser.add_argument(
        "--cache-dir", default="cache", help="where features and ID statistics are cached (default: ./cache)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "-b", "--batch-size", default=256, type=positive_int, help="images per forward batch (default: 256)"
    )
    parser.add_argument(
        "--workers",
        default=None,
        type=nonnegative_int,
        help="DataLoader worker processes, 0 = load in the main process (default: 1 on CPU, 4 on CUDA)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip image files that cannot be read (counted in the output) instead of stopping",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="forward-pass precision: fp32 (default, exact), bf16 autocast (CPU/CUDA), "
        "fp16 autocast (CUDA); reduced precision is cached separately",
    )


def add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    """The sets scored and where results go (ood_eval.py and sweep.py)."""
    parser.add_argument(
        "--out-datasets",
        nargs="+",
        default=None,
        help=f"OOD set names or folders (default: the papers' sets, {' '.join(CIFAR_OOD_SETS)} on CIFAR, "
        f"{' '.join(IMAGENET_OOD_SETS)} on ImageNet; extra: FashionMNIST gaussian uniform)",
    )
    parser.add_argument(
        "--contrib",
        default=None,
        help="LINe contributions file (default: the one precompute.py wrote in --cache-dir)",
    )
    parser.add_argument(
        "--feat-stat", default=None, help="DICE mean-feature file (default: the one in --cache-dir)"
    )
    parser.add_argument(
        "--max-samples",
        default=None,
        type=positive_int,
        help="use N images spread evenly over each set (quick runs)",
    )
    parser.add_argument("--base-dir", default="output/ood_scores", help="result directory")


def config_values(args: argparse.Namespace, config_class) -> dict:
    """The fields of ``config_class`` that the parsed flags hold (``--no-progress`` -> progress)."""
    values = dict(vars(args))
    values["progress"] = not values.pop("no_progress", False)
    names = {f.name for f in fields(config_class)}
    return {k: v for k, v in values.items() if k in names}


# -- detector flags ----------------------------------------------------------------------------
def param_dest(param: Param) -> str:
    return param.flags[0].lstrip("-").replace("-", "_")


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """One flag per detector hyperparameter of the registry; unset flags are None."""
    group = parser.add_argument_group("detector parameters (defaults: each paper's setting)")
    for param, users in registry.all_params():
        help_text = f"{param.help} [{', '.join(users)}]"
        if param.is_switch:
            group.add_argument(
                *param.flags, dest=param_dest(param), action="store_const", const=param.const, help=help_text
            )
        else:
            group.add_argument(
                *param.flags, dest=param_dest(param), type=param.type, default=None, help=help_text
            )


def given_params(args: argparse.Namespace, detector_class) -> dict:
    """The hyperparameters of ``detector_class`` set on the command line."""
    out = {}
    for param in detector_class.params:
        value = getattr(args, param_dest(param), None)
        if value is not None:
            out[param.name] = value
    return out


def flags_of(detector) -> list[str]:
    """The command-line flags that set ``detector``'s parameters as they are (switches when set)."""
    out = []
    for param in detector.params:
        value = getattr(detector, param.name)
        if param.is_switch:
            out += [param.flags[0]] if value == param.const else []
        elif value is not None:
            out += [param.flags[0], f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def method_choices() -> list[str]:
    return registry.method_names() + list(registry.aliases())


def method_arg(text: str) -> str:
    """argparse type: a method name or alias of the registry (LINe ablation parts in any order)."""
    try:
        registry.lookup(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_method_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        default=None,
        type=method_arg,
        metavar="METHOD",
        help="one method (default: energy; energy with --p is DICE, with --clip_threshold ReAct, as in "
        f"the original code): {', '.join(method_choices())}",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods evaluated from one feature extraction into one table, e.g. "
        "energy,react,dice,line,ash_s,knn; LINe ablations: line_ac, line_ap_wp, line_none, ...",
    )


def parse_methods(text: str) -> list[str]:
    """Method names of --methods, validated, duplicates removed (order kept)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    bad = []
    for token in tokens:
        try:
            registry.lookup(token)
        except UserError:
            bad.append(token)
    if bad or not tokens:
        raise UserError(
            f"--methods: unknown method(s) {', '.join(bad) or '(none given)'}; choose from "
            f"{', '.join(method_choices())} (LINe ablations: line_<ac|ap|wp joined by _>)"
        )
    return list(dict.fromkeys(tokens))


def original_method(args: argparse.Namespace) -> str:
    """--method as the original DICE/LINe code reads it: energy with --p is DICE, with
    --clip_threshold ReAct."""
    method = args.method or "energy"
    if method == "energy" and args.p is not None:
        return "dice"
    if method == "energy" and args.clip_threshold is not None:
        return "react"
    return method


def detector_runs(args: argparse.Namespace, in_dataset: str) -> list[DetectorRun]:
    """The detectors the flags ask for, each configured from its flags over the papers' defaults.

    A detector flag that none of the chosen methods takes, or that has no effect on them
    (``--p-a`` with ``--no-ap``), is an error naming both.
    """
    if args.method is not None and args.methods is not None:
        raise UserError("give --method or --methods, not both")
    if args.methods is not None:
        flags = parse_methods(args.methods)
        names = flags
    else:
        flags = [args.method or "energy"]
        names = [original_method(args)]
    runs, used = [], set()
    for flag, name in zip(flags, names):
        cls, _ = registry.lookup(name)
        given = given_params(args, cls)
        run = DetectorRun(flag, registry.build(name, in_dataset, given))
        used |= {param_dest(p) for p in cls.params if p.name not in run.detector.inert_params()}
        if run.method not in {r.method for r in runs}:  # line,taylor: one method, evaluated once
            runs.append(run)
    unused = [
        param.flags[0]
        for param, _ in registry.all_params()
        if getattr(args, param_dest(param), None) is not None and param_dest(param) not in used
    ]
    if unused:
        raise UserError(
            f"{', '.join(unused)} applies to none of the chosen method(s) "
            f"{', '.join(r.method for r in runs)} (or has no effect on them); drop the flag or choose a "
            "method that takes it"
        )
    return runs
