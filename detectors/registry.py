"""The one list of detectors. Every name the command line, the sweep, the results table and the
demos know comes from here.

Adding a detector: one module defining a ``Detector`` subclass (name, paper, ``param_help``,
defaults, search space, ``fit`` with the statistics it needs, the score) and one line in
``DETECTORS``; its flags and their help are generated from those.
The order of ``DETECTORS`` is the order of the results table.
"""

from __future__ import annotations

from typing import Any

from util.argtypes import closest_name
from util.datasets import preset_of
from util.errors import UserError

from .adascale import AdaSCALE
from .ash import ASH
from .base import Detector, Param, init_params
from .bats import BATS
from .cadref import CADRef, CARef
from .cfood import CFOOD
from .dice import DICE
from .energy import Energy
from .entropy import Entropy
from .fdbd import FDBD
from .gen import GEN
from .gmm import GMM
from .gradnorm import GradNorm
from .graduncertainty import GradUncertainty
from .gram import Gram
from .grood import GrOOD
from .iodin import IODIN
from .kl_matching import KLMatching
from .knn import KNN
from .line import LINe
from .lts import LTS
from .mahalanobis import Mahalanobis
from .mahalanobis_odin import MahalanobisODIN
from .mahalanobis_pp import MahalanobisPP
from .maxlogit import MaxLogit
from .mds_ensemble import MDSEnsemble
from .msp import MSP
from .multi_mahalanobis import MultiMahalanobis
from .nac_ue import NACUE
from .nci import NCI
from .neco import NECO
from .nnguide import NNGuide
from .odin import ODIN
from .openmax import OpenMax
from .optfs import OptFS
from .pnml import PNML
from .rankfeat import RankFeat
from .react import ReAct
from .relation import Relation
from .residual import Residual
from .rmds import RelativeMahalanobis
from .scale import SCALE
from .she import SHE
from .temp_scaling import TemperatureScaling
from .vim import ViM
from .vra import VRA
from .weiper import WeiPer

DETECTORS: tuple[type[Detector], ...] = (
    # logit-based
    MSP,
    TemperatureScaling,
    MaxLogit,
    Energy,
    GEN,
    Entropy,
    KLMatching,
    # feature-based: activation shaping and weight sparsification
    ReAct,
    BATS,
    DICE,
    ASH,
    SCALE,
    LTS,
    VRA,
    OptFS,
    GradNorm,
    GradUncertainty,
    # feature-based: distances and subspaces
    Mahalanobis,
    MahalanobisPP,
    MultiMahalanobis,
    RelativeMahalanobis,
    GMM,
    OpenMax,
    KNN,
    NNGuide,
    CFOOD,
    GrOOD,
    Relation,
    ViM,
    Residual,
    PNML,
    SHE,
    NECO,
    FDBD,
    NCI,
    CARef,
    CADRef,
    WeiPer,
    LINe,
    # feature-based: several layers
    Gram,
    NACUE,
    # network-level
    ODIN,
    IODIN,
    AdaSCALE,
    MahalanobisODIN,
    MDSEnsemble,
    RankFeat,
)


def method_names() -> list[str]:
    """Every method name (variants included, aliases not), in table order."""
    return [name for cls in DETECTORS for name in cls.variants()]


def aliases() -> dict[str, str]:
    """Alias -> canonical method name (``taylor`` -> ``line``)."""
    return {alias: cls.name for cls in DETECTORS for alias in cls.aliases}


def lookup(name: str) -> tuple[type[Detector], dict[str, Any]]:
    """(detector class, the parameters the name fixes) of a method name or alias."""
    cls, variant = resolve(name)
    return cls, dict(cls.variants()[variant])


def resolve(name: str) -> tuple[type[Detector], str]:
    """(detector class, the variant it names) of a method name or alias."""
    name = aliases().get(name, name)
    for cls in DETECTORS:
        variant = cls.canonical(name)
        if variant is not None:
            return cls, variant
    valid = method_names() + list(aliases())
    close = closest_name(name, valid)
    if close:  # the likely one, not the whole list
        raise UserError(f"unknown method {name!r}; did you mean {close!r}? (every method: method_names())")
    raise UserError(f"unknown method {name!r}: choose from {', '.join(valid)}")


def build(name: str, in_dataset: str | None, given: dict[str, Any] | None = None) -> Detector:
    """The detector ``name`` for ``in_dataset`` (a dataset name in any spelling its spec lists, or
    an image folder; ``util.datasets.preset_of``; None: no dataset): its own defaults, then the
    papers' setting of the dataset's preset, then what the name fixes (``ash_s``, ``line_ac_wp``),
    then ``given`` values; ``check_params`` raises ValueError on a value the detector cannot take."""
    cls, variant = resolve(name)
    fixed = cls.variants()[variant]
    accepted = set(init_params(cls))
    given = dict(given or {})
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise UserError(
            f"{name} has no parameter {', '.join(unknown)}; its parameters: {', '.join(sorted(accepted))}"
        )
    preset = None if in_dataset is None else preset_of(in_dataset)
    detector = cls(**{**cls.defaults_for(preset, variant), **fixed, **given})
    detector.check_params()  # a bad value fails here, before any data is read
    return detector


def run_names() -> list[str]:
    """Every name a configured detector's results can carry (``dice_react`` too), in table order."""
    return [name for cls in DETECTORS for name in cls.run_names()]


def order_key(method: str) -> int:
    """Position of a results name in table order (unknown names last)."""
    names = run_names()
    return names.index(method) if method in names else len(names)


def paper_of(method: str) -> str:
    """The citation of a results name (a variant cites its detector's paper)."""
    return next((cls.paper for cls in DETECTORS if method in cls.run_names()), "")


FAMILIES = {"logit": "logit-based", "feature": "feature-based", "network": "network-level"}


def family_of(method: str) -> str:
    """The group of a results name in tables: ``logit``, ``feature`` or ``network`` (a variant is its
    detector's; an unknown name ``feature``)."""
    return next((cls.family for cls in DETECTORS if method in cls.run_names()), "feature")


def all_params() -> list[tuple[Param, list[str]]]:
    """Each distinct hyperparameter spec, with the names of the detectors that take it."""
    out: dict[tuple, tuple[Param, list[str]]] = {}
    for cls in DETECTORS:
        for param in cls.params:
            key = param.flags
            if key in out and out[key][0].name != param.name:
                raise ValueError(f"flag {key[0]} names two parameters: {out[key][0].name}, {param.name}")
            out.setdefault(key, (param, []))[1].append(cls.name)
    return list(out.values())
