"""The detector protocol, and chunked scoring of feature arrays.

A detector follows scikit-learn's estimator conventions: ``__init__`` stores its hyperparameters
and nothing else (``check_params``, called by ``fit``, validates them); ``fit`` takes the
classifier's head and exactly the ID training statistics its signature names, and stores fitted
state in attributes ending in ``_``; scoring before ``fit`` raises ``NotFittedError``;
``score_batch(h)`` gives (scores, logits) of a batch of penultimate features, higher scores
meaning more in-distribution.

Class attributes describe a detector to the registry (``detectors.registry``), the command line
and the sweep, so that a new detector is one new module plus one registry line:

- ``name``: the canonical method name, which is also its results folder; ``aliases``: other
  names accepted for it (``taylor`` for ``line``); ``variants()``: further names that fix some
  parameters (``ash_s``, ``line_ac_wp``), and ``run_name()`` gives a configured detector's name.
- ``paper``: the citation; ``param_help``: one line per hyperparameter that gets a flag
  (``param_types``: a value parser where the ``__init__`` annotation is not enough); ``params``,
  the ``Param`` specs (flag ``--<method>-<param>``, parser, help with each preset's default), is
  generated from them; ``defaults``: the papers' settings per preset (the dataset specs'
  ``preset``: CIFAR-10, CIFAR-100, imagenet);
  ``search_space(feature_dim)``: the grid ``sweep.py`` scores; ``fit_params``: the parameters
  the fitted state depends on (a sweep changes the others without refitting).
- ``kind``: ``"features"`` (scored from cached features) or ``"network"`` (needs the network and
  the images, like ODIN; see ``NetworkDetector``).
- ``check_sizes(D, C, N)``: what the settings cannot take from the sizes known before any forward
  pass (KNN's k above its bank, ViM's dimension at D; ``needs_each_class``: a training image per
  class), each message naming the flag to change.
- ``family``: how the results table groups it: ``"logit"`` (a function of the logits alone),
  ``"feature"`` (uses the penultimate features, the head's weights or training statistics) or
  ``"network"`` (runs the network).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from models.heads import cpu_copy
from util.argtypes import parsed_number, positive_int
from util.io import row_blocks


class NotFittedError(RuntimeError):
    """A detector scored (or its fitted state read) before ``fit``."""


def real_number(text: str) -> float:
    """argparse type: any number (a threshold may be negative for features without a final ReLU)."""
    return parsed_number(text, float, "a number")


# Value parser of a parameter that ``param_types`` leaves out, by its ``__init__`` annotation
# (``| None`` dropped); a bool parameter is a switch.
ANNOTATION_TYPES: dict[str, Callable[[str], Any]] = {"int": positive_int, "float": real_number}


def init_signature(cls) -> dict[str, inspect.Parameter]:
    """The hyperparameters of a detector class (its ``__init__`` arguments) by name."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p for p in params if p.kind in kinds and p.name != "self"}


def init_params(cls) -> list[str]:
    """Names of the hyperparameters of a detector class: its ``__init__`` arguments."""
    return list(init_signature(cls))


def shown_value(value: Any) -> str:
    """A parameter value as help texts show it: 0.1, none, on, off."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):  # one value per layer, as the flag takes them
        return ",".join(shown_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_values(cls, name: str) -> str:
    """``default: 50; imagenet: 1000``: the ``__init__`` default of parameter ``name``, then the
    value of each preset of ``cls.defaults`` and each variant that differs from it; ``default:
    90 (ash_p), 95 (ash_s)`` when every variant sets its own."""
    default = init_signature(cls)[name].default
    presets = {preset: values[name] for preset, values in cls.defaults.items() if name in values}
    variants = {v: cls.defaults_for("", v).get(name, default) for v in cls.variants()}
    if all(v != default for v in variants.values()):
        return "default: " + ", ".join(f"{shown_value(v)} ({k})" for k, v in variants.items())
    own = [f"{k}: {shown_value(v)}" for k, v in {**presets, **variants}.items() if v != default]
    return "; ".join([f"default: {shown_value(default)}", *own])


def annotation_name(parameter: inspect.Parameter) -> str:
    """``int``, ``float``, ``bool``, ``str``...: a parameter's annotation without ``| None`` (the
    default's type where it has none)."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return type(parameter.default).__name__
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace(" | None", "").replace("None | ", "")
    return text.removeprefix("Optional[").removesuffix("]") if text.startswith("Optional[") else text


def param_spec(cls, name: str) -> Param:
    """The command-line spec of parameter ``name``: flag ``--<method>-<param>`` (``--<method>-no-
    <param>`` for a switch that is on by default), help from ``param_help`` and ``default_values``,
    value parser from ``param_types`` or the annotation."""
    parameter = init_signature(cls)[name]
    annotation = annotation_name(parameter)
    flag = f"--{cls.name}-{name}".replace("_", "-")
    described = cls.param_help[name]
    if annotation == "bool":
        if parameter.default:
            flag, described = f"--{cls.name}-no-{name}".replace("_", "-"), f"switch off: {described}"
        help_text = f"{described} ({default_values(cls, name)})"
        return Param(name, (flag,), help_text, const=not parameter.default)
    parser = cls.param_types.get(name) or ANNOTATION_TYPES.get(annotation)
    if parser is None:
        raise TypeError(f"{cls.__name__}: give the value parser of {name!r} ({annotation}) in param_types")
    return Param(name, (flag,), f"{described} ({default_values(cls, name)})", parser)


def param_specs(cls) -> tuple[Param, ...]:
    """The specs of the parameters ``cls.param_help`` describes, in ``__init__`` order."""
    signature = init_signature(cls)
    unknown = sorted(set(cls.param_help) - set(signature))
    if unknown:
        raise TypeError(f"{cls.__name__}.param_help describes no __init__ argument: {', '.join(unknown)}")
    return tuple(param_spec(cls, name) for name in signature if name in cls.param_help)


@dataclass(frozen=True)
class Param:
    """A hyperparameter as the command line shows it.

    ``flags``: its generated option string, ``--<method>-<param>`` (``pipeline.flags`` adds the
    original code's spellings); ``type``: parses one value, raising ``argparse.ArgumentTypeError``
    with the reason; ``const``: for a switch (no argument), the value it sets.
    """

    name: str
    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    const: Any = None

    @property
    def is_switch(self) -> bool:
        return self.type is None


class Detector:
    """Base class of detectors scored from penultimate features h with logits W h + b.

    Default score: Energy, logsumexp over the logits that ``logits(h)`` gives. Detectors live on
    the CPU: ``fit`` keeps a float32 CPU copy of the head, and scoring reads cached features.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""
    kind: ClassVar[str] = "features"
    family: ClassVar[str] = "feature"
    param_help: ClassVar[dict[str, str]] = {}  # one line per parameter that has a flag
    param_types: ClassVar[dict[str, Callable[[str], Any]]] = {}  # value parsers beyond ANNOTATION_TYPES
    params: ClassVar[tuple[Param, ...]] = ()  # generated from the two above and ``__init__``
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    fit_params: ClassVar[tuple[str, ...] | None] = None  # None: the fitted state depends on all
    needs_each_class: ClassVar[bool] = False  # the fit needs training features of every class

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "params" in vars(cls):
            raise TypeError(f"{cls.__name__}: describe the parameters in param_help; params is generated")
        cls.params = param_specs(cls)

    # -- description (class level) -------------------------------------------------------------
    @classmethod
    def variants(cls) -> dict[str, dict[str, Any]]:
        """Method names this class answers to, each with the parameters it fixes."""
        return {cls.name: {}}

    @classmethod
    def run_names(cls) -> list[str]:
        """Every name ``run_name()`` can give (results folders), in table order."""
        return list(cls.variants())

    @classmethod
    def canonical(cls, name: str) -> str | None:
        """The variant a method name means (variants may accept spellings of their own), or None."""
        return name if name in cls.variants() else None

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        """Values of each swept parameter (``sweep.py --method NAME``); empty: one setting."""
        return {}

    @classmethod
    def defaults_for(cls, in_dataset: str, variant: str | None = None) -> dict[str, Any]:
        """The papers' parameters for ``in_dataset`` (empty where they give none) for the method
        name ``variant`` (one of ``variants()``; ASH's default percentile depends on it)."""
        return dict(cls.defaults.get(in_dataset, {}))

    # -- configuration (instance level) --------------------------------------------------------
    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def __getattr__(self, name: str):
        """Called only for a missing attribute: a fitted one (``fc_``, ``route_``) read before
        ``fit`` is a NotFittedError."""
        if name.endswith("_") and not name.startswith("_") and not self.is_fitted:
            raise NotFittedError(f"{self.name} is not fitted: call {self.fit_call()} first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def fit_call(self) -> str:
        """How to fit this detector, e.g. ``fit(fc, contributions)``."""
        return f"fit({', '.join(('fc', *self.needs()))})"

    def check_params(self) -> None:
        """Raises ValueError on a parameter value the detector cannot take; ``fit`` calls it first."""

    def check_sizes(self, feature_dim: int, num_classes: int, num_train: int | None) -> list[str]:
        """What this configuration cannot take from features of ``feature_dim`` values (D), a head of
        ``num_classes`` outputs (C) and ``num_train`` training images (None: not known), known
        before any forward pass: one message per problem, naming the flag to change (``flag``).
        Default: a detector that fits class statistics (``needs_each_class``) needs at least one
        training image per class; subclasses add their own sizes."""
        if self.needs_each_class and num_train is not None and num_train < num_classes:
            return [
                f"{self.name} needs a training image of each of the {num_classes} classes, but only "
                f"{num_train} training images are used; use more training images"
            ]
        return []

    def flag(self, param: str) -> str:
        """The generated command-line flag of parameter ``param`` (``--knn-k``)."""
        return next(p.flags[0] for p in self.params if p.name == param)

    def run_name(self) -> str:
        """The method name of this configuration: its results folder and table row."""
        return self.name

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters (the ``__init__`` arguments), as scikit-learn's ``get_params``."""
        return {k: getattr(self, k) for k in init_params(type(self))}

    def fitted_values(self) -> dict[str, Any]:
        """Scalar fitted values worth recording (a threshold or dimension chosen by ``fit``)."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and isinstance(v, (int, float))}

    def inert_params(self) -> set[str]:
        """Parameters that have no effect given the others (ReAct's percentile when tau is given)."""
        return set()

    def needs(self) -> tuple[str, ...]:
        """The statistics ``fit`` needs: its required arguments after the head."""
        signature = inspect.signature(self.fit).parameters.values()
        return tuple(p.name for p in list(signature)[1:] if p.default is inspect.Parameter.empty)

    @property
    def is_fitted(self) -> bool:
        return any(k.endswith("_") for k in vars(self))

    def with_params(self, **changes) -> Detector:
        """A new detector with ``changes`` applied; this one is left as it is.

        When ``fit`` does not depend on any changed parameter (``fit_params``), the new detector
        shares this one's fitted state, so a sweep over such a parameter fits once.
        """
        params = self.get_params()
        new = type(self)(**{**params, **changes})
        depends = params if self.fit_params is None else self.fit_params
        changed = [k for k, v in changes.items() if k not in params or params[k] != v]
        if not any(k in depends for k in changed):
            new.check_params()
            new.__dict__.update({k: v for k, v in vars(self).items() if k.endswith("_")})
        return new

    # -- fitting and scoring -------------------------------------------------------------------
    def fit(self, fc: nn.Linear) -> Detector:
        """Keeps a float32 CPU copy of the head; ``fc`` itself (often on the GPU, inside the model
        that still extracts features) is left where and as it is."""
        self.check_params()
        self.fc_ = cpu_copy(fc)
        return self

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_(h)

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Energy score: logsumexp over classes (temperature 1)."""
        return torch.logsumexp(logits, dim=1)

    def score_batch(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), logits (B, C)) of a batch of features; distance-based detectors override it.

        Default: ``score_logits(logits(h))``, so logit-based detectors only define those two.
        """
        z = self.logits(h)
        return self.score_logits(z), z

    def score_array(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, predictions) of a whole (N, D) array at once, or None to score it in chunks.

        A detector whose cost depends on how rows are grouped (LINe: one masked weight per
        predicted class) overrides this to see every row together.
        """
        return None

    # -- from a model and images (detectors.from_loader) ---------------------------------------
    def fit_loader(
        self, model: nn.Module, loader, head: str | None = None, input_std=None, feature_layers=None
    ) -> Detector:
        """Fitted on ``model`` and one pass over the training ``loader`` (batches ``x``, ``(x, y,
        ...)`` or dicts): the statistics ``fit`` names, computed as precompute.py computes them;
        a network-level detector takes the model (and ``input_std``, else the loader's
        Normalize). A multi-layer detector (``taps``) reads the modules ``feature_layers``
        (default: the built-in architecture's). The model is left as it was. Returns the detector."""
        from .from_loader import fit_loader

        return fit_loader(self, model, loader, head, input_std, feature_layers)

    def score(self, model: nn.Module, x: torch.Tensor, head: str | None = None) -> torch.Tensor:
        """Scores (B,) float64 of a batch of images run through ``model`` (higher = more ID);
        ``detectors.wrap.OODClassifier`` gives the logits too."""
        from .from_loader import score_with_model

        return score_with_model(self, model, x, head)[0]


class NetworkDetector(Detector):
    """A detector that needs the network and the images (input gradients), not cached features.

    ``fit(model, input_std)`` gets the classifier and the per-channel std of the input
    normalisation; ``score_images(images)`` gives (scores (B,), logits (B, C)) of one batch.
    """

    kind: ClassVar[str] = "network"
    family: ClassVar[str] = "network"

    def fit(self, model: nn.Module, input_std) -> NetworkDetector:
        self.check_params()
        self.model_ = model
        self.input_std_ = tuple(float(s) for s in input_std)
        return self

    def needs(self) -> tuple[str, ...]:
        """The training statistics ``fit`` needs after the model and the input std (none for
        ODIN; the training features for Mahalanobis with input pre-processing)."""
        signature = inspect.signature(self.fit).parameters.values()
        return tuple(p.name for p in list(signature)[2:] if p.default is inspect.Parameter.empty)

    def fit_call(self) -> str:
        return f"fit({', '.join(('model', 'input_std', *self.needs()))})"

    def score_batch(self, h: torch.Tensor):
        raise TypeError(f"{self.name} needs the images, not features: use score_images")


class LayerDetector(Detector):
    """A detector that reads statistics of intermediate layers (``util.layer_taps``: ``pooled``,
    ``gram``, ``nac``) which the feature cache fills in the same forward pass as the penultimate
    features. ``taps`` names the kinds it reads; ``fit(fc, train_layers, ...)`` gets a
    ``LayerArrays`` of the training images; ``score_layers(h, layers)`` gives (scores (B,),
    logits (B, C)) of a batch from its penultimate features and ``layers`` =
    ``{kind: [one (B, ...) tensor per layer]}``."""

    taps: ClassVar[tuple[str, ...]] = ("pooled",)

    def check_layers(self, layers: tuple[str, ...]) -> list[str]:
        """What this configuration cannot take from the tapped modules ``layers`` (known before any
        forward pass, like ``check_sizes``): one message per problem, naming the flag."""
        return []

    def score_layers(self, h: torch.Tensor, layers: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), logits (B, C)): each multi-layer detector defines its own."""
        raise TypeError(f"{type(self).__name__} defines no score_layers(h, layers); a LayerDetector must")

    def score_batch(self, h: torch.Tensor):
        raise TypeError(f"{self.name} reads intermediate layers: score with score_layers(h, layers)")


def head_float64(fc) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (C, D), b (C,)) of a linear head in float64 (b = 0 without a bias)."""
    weight = fc.weight.detach().double()
    bias = fc.bias.detach().double() if fc.bias is not None else torch.zeros(len(weight), dtype=torch.float64)
    return weight, bias


def score_features(
    detector: Detector, features: np.ndarray, chunk: int | None = None, layers=None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) float64 and predicted classes (N,) of ``features``, ``chunk`` rows at a time.

    Without a chunk the detector may score the whole array at once (``score_array``); otherwise
    its ``score_chunk`` attribute if it has one, else 8192 rows per chunk. A ``LayerDetector``
    also gets the same rows of ``layers`` (``util.layer_taps.LayerArrays``).
    """
    if not isinstance(detector, LayerDetector):
        layers = None  # another detector scores the features alone, as without layer statistics
    elif layers is None and len(features):
        raise ValueError(f"{detector.name} reads intermediate layers: pass their statistics (layers=)")
    if chunk is None and layers is None:
        result = detector.score_array(features)
        if result is not None:
            return result
    chunk = chunk or getattr(detector, "score_chunk", 8192)
    scores, preds = [], []
    with torch.inference_mode():
        for start, block in zip(range(0, len(features), chunk), row_blocks(features, chunk)):
            h = torch.from_numpy(block.astype(np.float32, copy=False))  # read, not mapped in
            if isinstance(detector, LayerDetector):
                s, z = detector.score_layers(h, layers.block(start, start + len(h)))
            else:
                s, z = detector.score_batch(h)
            scores.append(s.double().numpy())
            preds.append(z.argmax(dim=1).numpy())
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(preds)


def score_sets(
    detector: Detector, features: dict[str, np.ndarray], layers: dict | None = None
) -> tuple[dict, dict]:
    """(scores, predicted classes) of each named (N, D) feature array, by ``score_features``
    (with the set's ``LayerArrays`` from ``layers`` for a ``LayerDetector``)."""
    layers = layers or {}
    scored = {
        name: score_features(detector, array, layers=layers.get(name)) for name, array in features.items()
    }
    return {k: s for k, (s, _) in scored.items()}, {k: p for k, (_, p) in scored.items()}
