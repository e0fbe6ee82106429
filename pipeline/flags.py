"""Command-line flags shared by the scripts, and their translation into typed configurations.

The detector flags are not written here: they are generated from each detector's ``__init__``,
``param_help`` and ``defaults`` (``detectors.base``), so a new detector's flags appear with it.
``FLAG_ALIASES`` keeps the original repositories' spellings (``--p``, ``--p-w``, ``--p-a``,
``--clip_threshold``) and older ones (ODIN's ``--temperature``, ``--noise``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import torch

from detectors import registry
from detectors.base import Param
from models import MODEL_NAMES, check_arch
from models.checkpoints import CHECKPOINT_EPOCH
from util.argtypes import (
    name_arg,
    name_or_folder_arg,
    nonnegative_int,
    positive_int,
    three_floats,
    three_positive_floats,
)
from util.datasets import ID_DATASETS, OOD_SETS, id_names
from util.errors import UserError
from util.openood import BENCHMARKS

from .config import DetectorRun


def arch_arg(text: str) -> str:
    """argparse type for --model-arch: a built-in name or torchvision:/timm:/module:function."""
    try:
        return check_arch(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


arch_arg.__name__ = "model"


def layer_names_arg(text: str) -> tuple[str, ...]:
    """argparse type of --feature-layers: comma-separated module names (dotted for deeper ones)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give module names, comma-separated, e.g. layer1,layer2")
    return names


layer_names_arg.__name__ = "module names"


def add_run_args(
    parser: argparse.ArgumentParser, in_dataset_flags=("--in-dataset",), in_dataset_default="CIFAR-10"
) -> None:
    """The classifier, the data and the extraction: the same flags in every script."""
    parser.set_defaults(script_in_dataset=in_dataset_default)
    parser.add_argument(
        "--benchmark",
        default=None,
        type=name_arg(sorted(BENCHMARKS), "benchmark"),
        help="an OpenOOD v1.5 benchmark: its image lists under --data-root (benchmark_imglist/, "
        "images_classic/, images_largescale/): ID train/test, near- and far-OOD test sets, validation lists "
        "for sweep.py; "
        f"{', '.join(BENCHMARKS)} (default: none)",
    )
    parser.add_argument(
        *in_dataset_flags,
        dest="in_dataset",
        default=None,
        type=name_or_folder_arg(list(ID_DATASETS), "dataset", id_names()),
        metavar="{" + ",".join(sorted(ID_DATASETS)) + "} or FOLDER",
        help="in-distribution dataset: a name, or an image folder holding train/<class>/* and test/<class>/* "
        f"(or val/) (default: {in_dataset_default or 'every one whose data is present'})",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="network name: checkpoints/{in_dataset}/{name}/ and cache file names; a name that is an "
        "architecture also selects it, as in the LINe code (default: the architecture)",
    )
    parser.add_argument(
        "--model-arch",
        "--model_arch",
        dest="model_arch",
        default=None,
        type=arch_arg,
        help=f"architecture: {', '.join(MODEL_NAMES)}, torchvision:NAME (any torchvision classifier), "
        "timm:NAME (timm installed) or package.module:function (your function returning the model) "
        "(default: --name when it is one, else densenet on CIFAR and resnet50 on imagenet)",
    )
    parser.add_argument(
        "--num-classes",
        type=positive_int,
        default=None,
        help="classifier outputs where the in-dataset does not imply them (an image folder evaluated "
        "by a larger head, with --class-map) (default: the in-dataset's classes)",
    )
    parser.add_argument(
        "--class-map",
        default=None,
        help="image-folder --in-dataset: file mapping class folder names to output indices ('folder index' "
        "per line, or one folder per line in output order) (default: sorted train/ folders)",
    )
    parser.add_argument(
        "--head",
        default=None,
        help="module name of the output nn.Linear, e.g. classifier.1 (default: the last Linear the forward "
        "pass runs)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="input crop size in pixels (default: the model's, else 32 on CIFAR and 224 elsewhere)",
    )
    parser.add_argument(
        "--mean",
        type=three_floats,
        default=None,
        help="input normalisation mean R,G,B (default: the model's or dataset's)",
    )
    parser.add_argument(
        "--std",
        type=three_positive_floats,
        default=None,
        help="input normalisation std R,G,B (default: the model's or dataset's)",
    )
    parser.add_argument(
        "--epochs",
        default=CHECKPOINT_EPOCH,
        type=positive_int,
        help="the default checkpoint is checkpoints/{in_dataset}/{name}/checkpoint_{epochs}.pth.tar "
        f"(default: {CHECKPOINT_EPOCH})",
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
        "--gpu",
        default=None,
        metavar="N",
        help="GPU index, as in the original code: --gpu N is --device cuda:N (the CPU, said once, on a "
        "machine without a GPU) (default: --device)",
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


def _default_ood_sets_text() -> str:
    """Each ID dataset's default OOD sets, as the --out-datasets help shows them."""
    return "; ".join(f"{' '.join(d.ood_sets)} on {name}" for name, d in ID_DATASETS.items())


def add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    """The sets scored and where results go (ood_eval.py and sweep.py)."""
    parser.add_argument(
        "--out-datasets",
        nargs="+",
        default=None,
        help=f"OOD set names or folders (default: the papers' sets, {_default_ood_sets_text()}; "
        f"named sets: {' '.join(OOD_SETS)})",
    )
    parser.add_argument(
        "--max-ood-samples",
        type=positive_int,
        default=None,
        help="score at most this many images of each OOD set, spread evenly over it (default: all)",
    )
    parser.add_argument(
        "--noise-samples",
        type=positive_int,
        default=None,
        help="images of each synthetic noise set (gaussian, uniform); image i is the same in any size "
        "(default: as many as the ID test set, at most 10,000)",
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
        help="use N images spread evenly over each test and OOD set, and the class-balanced subset of N "
        "training images for the fits on training features (quick runs; default: all)",
    )
    parser.add_argument(
        "--base-dir", default="output/ood_scores", help="result directory (default: output/ood_scores)"
    )
    parser.add_argument(
        "--feature-layers",
        default=None,
        type=layer_names_arg,
        metavar="NAMES",
        help="modules whose outputs the multi-layer detectors (gram, multi_mahalanobis, mds_ensemble, "
        "nac_ue) read, comma-separated, e.g. layer1,layer2 (default: the architecture's stages, "
        "densenet: block1,block2,block3; resnet50: layer1..layer4)",
    )


# Flags of the originals' ood_eval.py that configure what this code does not have (adversarial
# attacks, corruption severity, the architecture size, which the checkpoint fixes): accepted, so
# their commands run unchanged, and named once as ignored.
IGNORED_ORIGINAL_FLAGS = {
    "--epsilon": "attack strength",
    "--iters": "attack iterations",
    "--iter-size": "attack step size",
    "--severity-level": "corruption severity",
    "--layers": "DenseNet depth; the architecture is --model-arch",
    "--depth": "ResNet depth; the architecture is --model-arch",
    "--width": "ResNet width; the architecture is --model-arch",
}


def add_original_eval_args(parser: argparse.ArgumentParser) -> None:
    """The originals' ood_eval.py flags beyond the shared ones: the sets scored, metrics from saved
    scores, LINe's file suffix, and the flags accepted but ignored here."""
    group = parser.add_argument_group("flags of the original LINe and DICE ood_eval.py")
    only = group.add_mutually_exclusive_group()
    only.add_argument(
        "--in-dist-only",
        dest="only",
        action="store_const",
        const="in",
        help="score only the ID test set (its scores and accuracy; metrics follow with --out-dist-only)",
    )
    only.add_argument(
        "--out-dist-only",
        dest="only",
        action="store_const",
        const="out",
        help="score only the OOD sets; metrics use the ID scores an earlier run with the same settings saved",
    )
    group.add_argument(
        "--cal-metric",
        action="store_true",
        help="compute the metrics from the per-image scores an earlier run with these settings saved, "
        "without loading the network or any data",
    )
    group.add_argument(
        "--detail",
        default=None,
        help="LINe: suffix of the contributions file {in_dataset}_{name}_taylor_{detail}.npy and of the "
        "original-format score files (default: mean_class)",
    )
    for flag, what in IGNORED_ORIGINAL_FLAGS.items():
        group.add_argument(flag, default=None, help=f"accepted and ignored ({what}; default: unset)")


def _device_of_gpu(values: dict) -> None:
    """--gpu N (the originals' flag) -> device cuda:N; on a machine without a GPU the CPU, said once."""
    gpu = values.pop("gpu", None)
    if gpu is None:
        return
    if values.get("device") is not None:
        raise UserError(f"give --device or --gpu, not both (--device {values['device']}, --gpu {gpu})")
    indices = [i.strip() for i in str(gpu).split(",") if i.strip()]
    if not indices or not all(i.isdigit() for i in indices):
        raise UserError(f"--gpu {gpu!r}: expected a GPU index such as 0 (or a list such as 0,1)")
    if not torch.cuda.is_available():
        print(f"--gpu {gpu}: this machine has no CUDA GPU; running on the CPU")
        values["device"] = "cpu"
        return
    if len(indices) > 1:
        print(f"--gpu {gpu}: one process uses one GPU, cuda:{indices[0]}; run torchrun for several")
    values["device"] = f"cuda:{indices[0]}"


def _note_ignored(values: dict) -> None:
    given = []
    for flag in IGNORED_ORIGINAL_FLAGS:
        value = values.pop(flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            given.append(f"{flag} {value}")
    if given:
        print(f"ignored (flags of the original code with no effect here): {', '.join(given)}")


def config_values(args: argparse.Namespace, config_class) -> dict:
    """The fields of ``config_class`` that the parsed flags hold (``--no-progress`` -> progress,
    ``--gpu N`` -> device); flags of the originals that have no effect here are named once."""
    values = dict(vars(args))
    default = values.pop("script_in_dataset", None)
    if values.get("in_dataset") is None and not values.get("benchmark"):
        values["in_dataset"] = default  # with --benchmark, the benchmark's ID dataset
    values["progress"] = not values.pop("no_progress", False)
    _device_of_gpu(values)
    _note_ignored(values)
    if values.get("detail") is None:
        values.pop("detail", None)
    names = {f.name for f in fields(config_class)}
    return {k: v for k, v in values.items() if k in names}


# -- detector flags ----------------------------------------------------------------------------
# Each detector parameter's flag, --<method>-<param>, comes from the detector (``Detector.params``).
# This table keeps the spellings of the original LINe and DICE code and of earlier versions of this
# one: spelling -> (parameter, the methods whose parameter it sets). A spelling of several methods
# sets the parameter in each chosen method that takes it.
CLIPPING_METHODS = ("react", "dice", "line")
FLAG_ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "--p": ("p", ("dice",)),
    "--p-w": ("p_w", ("line",)),
    "--p-a": ("p_a", ("line",)),
    "--clip_threshold": ("clip_threshold", CLIPPING_METHODS),
    "--clip-threshold": ("clip_threshold", CLIPPING_METHODS),
    "--no-clip": ("activation_clipping", ("line",)),
    "--no-ap": ("activation_pruning", ("line",)),
    "--no-wp": ("weight_pruning", ("line",)),
    "--temperature": ("temperature", ("odin",)),
    "--noise": ("noise", ("odin",)),
    "--bats-lambda": ("lam", ("bats",)),
    "--vra-global": ("per_unit", ("vra",)),
    "--weiper-bins": ("n_bins", ("weiper",)),
    "--weiper-lambda1": ("lambda_1", ("weiper",)),
    "--weiper-lambda2": ("lambda_2", ("weiper",)),
}


@dataclass(frozen=True)
class DetectorFlag:
    """One detector option of the parser: it sets parameter ``param.name`` in each chosen method of
    ``methods``; ``param.flags``: its spellings, the first naming it in messages and giving its
    ``dest``. A generated flag (``--knn-k``) has one method, an alias may have several."""

    param: Param
    methods: tuple[str, ...]

    @property
    def shown(self) -> str:
        return self.param.flags[0]

    @property
    def dest(self) -> str:
        return self.shown.lstrip("-").replace("-", "_")


def _alias_flag(name: str, methods: tuple[str, ...], specs: dict) -> DetectorFlag | None:
    """The option of the ``FLAG_ALIASES`` spellings that set ``name`` in ``methods``, parsed as the
    methods' own flags are (``specs``: (method, parameter) -> Param); None when no method has it."""
    present = tuple(m for m in methods if (m, name) in specs)
    if not present:
        return None
    own = [specs[m, name] for m in present]
    if len({(p.type, p.const) for p in own}) > 1:
        raise ValueError(f"{' and '.join(p.flags[0] for p in own)} parse their values differently")
    spellings = tuple(flag for flag, key in FLAG_ALIASES.items() if key == (name, methods))
    each = " in each chosen method that takes it, defaults" if len(present) > 1 else ", default"
    help_text = f"same as {', '.join(p.flags[0] for p in own)}{each} included"
    return DetectorFlag(Param(name, spellings, help_text, own[0].type, own[0].const), present)


def detector_flags() -> list[DetectorFlag]:
    """Every detector option: each parameter's generated flag, then each alias (``FLAG_ALIASES``)."""
    out, specs = [], {}
    for param, users in registry.all_params():
        out.append(DetectorFlag(param, tuple(users)))
        specs.update({(user, param.name): param for user in users})
    for name, methods in dict.fromkeys(FLAG_ALIASES.values()):
        alias = _alias_flag(name, methods, specs)
        out += [alias] if alias else []
    return out


def add_detector_args(parser: argparse.ArgumentParser) -> None:
    """One option per detector flag (``detector_flags``); unset options are None."""
    group = parser.add_argument_group("detector parameters (defaults: each paper's setting)")
    for flag in detector_flags():
        param = flag.param
        help_text = f"{param.help} [{', '.join(flag.methods)}]".replace("%", "%%")  # argparse's % format
        if param.is_switch:
            group.add_argument(
                *param.flags, dest=flag.dest, action="store_const", const=param.const, help=help_text
            )
        else:
            group.add_argument(
                *param.flags, dest=flag.dest, type=param.type, metavar=param.name.upper(), help=help_text
            )


def given_params(args: argparse.Namespace, detector_class) -> dict:
    """The hyperparameters of ``detector_class`` set on the command line (its generated flag before
    an alias, where both are given)."""
    names = {p.name for p in detector_class.params}
    out = {}
    for flag in detector_flags():
        value = getattr(args, flag.dest, None)
        if value is not None and detector_class.name in flag.methods and flag.param.name in names:
            out.setdefault(flag.param.name, value)
    return out


def shown_flag(method: str, param: Param) -> str:
    """The spelling of ``method``'s ``param`` that ``flags_of`` prints: the original code's (an alias)
    where there is one, else the generated flag."""
    aliases = (f for f, (name, methods) in FLAG_ALIASES.items() if name == param.name and method in methods)
    return next(aliases, param.flags[0])


def flags_of(detector) -> list[str]:
    """The command-line flags that set ``detector``'s parameters as they are (switches when set;
    parameters without effect left out, as ``detector_runs`` refuses them)."""
    out = []
    inert = detector.inert_params()
    for param in (p for p in detector.params if p.name not in inert):
        value = getattr(detector, param.name)
        flag = shown_flag(detector.name, param)
        if param.is_switch:
            out += [flag] if value == param.const else []
        elif value is not None:
            out += [flag, flag_value(value)]
    return out


def flag_value(value) -> str:
    """A parameter value as a flag takes it: 0.1, 50, a comma list for one value per layer."""
    if isinstance(value, (tuple, list)):
        return ",".join(flag_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


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
        help="comma-separated methods evaluated from one feature extraction into one table (default: none, "
        "see --method), e.g. "
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
    --clip_threshold ReAct (the original spellings only: ``args.p``, ``args.clip_threshold``)."""
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
    runs, used, options = [], set(), detector_flags()
    for flag, name in zip(flags, names):
        cls, _ = registry.lookup(name)
        given = given_params(args, cls)
        try:
            run = DetectorRun(flag, registry.build(name, in_dataset, given), given)
        except ValueError as exc:  # a value the detector cannot take (argparse checks most)
            raise UserError(f"{name}: {exc}") from None
        inert = run.detector.inert_params()
        used |= {o.dest for o in options if cls.name in o.methods and o.param.name not in inert}
        if run.method not in {r.method for r in runs}:  # line,taylor: one method, evaluated once
            runs.append(run)
    unused = [o.shown for o in options if getattr(args, o.dest, None) is not None and o.dest not in used]
    if getattr(args, "detail", None) is not None and not any(r.detector.name == "line" for r in runs):
        unused.append("--detail")
    if unused:
        raise UserError(
            f"{', '.join(unused)} applies to none of the chosen method(s) "
            f"{', '.join(r.method for r in runs)} (or has no effect on them); drop the flag or choose a "
            "method that takes it"
        )
    return runs
