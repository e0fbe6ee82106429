"""The detector protocol, and chunked scoring of feature arrays.

A detector follows scikit-learn's estimator conventions: hyperparameters are set in ``__init__``
and never changed by ``fit``; ``fit`` takes the classifier's head and exactly the ID training
statistics its signature names, and stores fitted state in attributes ending in ``_``;
``score_batch(h)`` gives (scores, logits) of a batch of penultimate features, higher scores
meaning more in-distribution.

Class attributes describe a detector to the registry (``detectors.registry``), the command line
and the sweep, so that a new detector is one new module plus one registry line:

- ``name``: the canonical method name, which is also its results folder; ``aliases``: other
  names accepted for it (``taylor`` for ``line``); ``variants()``: further names that fix some
  parameters (``ash_s``, ``line_ac_wp``), and ``run_name()`` gives a configured detector's name.
- ``paper``: the citation; ``params``: the hyperparameters as ``Param`` specs (option strings,
  value type, help); ``defaults``: the papers' settings per in-distribution dataset;
  ``search_space(feature_dim)``: the grid ``sweep.py`` scores; ``fit_params``: the parameters
  the fitted state depends on (a sweep changes the others without refitting).
- ``kind``: ``"features"`` (scored from cached features) or ``"network"`` (needs the network and
  the images, like ODIN; see ``NetworkDetector``).
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
from util.io import row_blocks


def init_params(cls) -> list[str]:
    """Names of the hyperparameters of a detector class: its ``__init__`` arguments."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


@dataclass(frozen=True)
class Param:
    """A hyperparameter as the command line shows it.

    ``flags``: option strings (the first names it in messages); ``type``: parses one value,
    raising ``argparse.ArgumentTypeError`` with the reason; ``const``: for a switch (no
    argument), the value it sets.
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
    params: ClassVar[tuple[Param, ...]] = ()
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    fit_params: ClassVar[tuple[str, ...] | None] = None  # None: the fitted state depends on all

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
    def defaults_for(cls, in_dataset: str) -> dict[str, Any]:
        """The papers' parameters for ``in_dataset`` (empty where they give none)."""
        return dict(cls.defaults.get(in_dataset, {}))

    # -- configuration (instance level) --------------------------------------------------------
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
            new.__dict__.update({k: v for k, v in vars(self).items() if k.endswith("_")})
        return new

    # -- fitting and scoring -------------------------------------------------------------------
    def fit(self, fc: nn.Linear) -> Detector:
        """Keeps a float32 CPU copy of the head; ``fc`` itself (often on the GPU, inside the model
        that still extracts features) is left where and as it is."""
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


class NetworkDetector(Detector):
    """A detector that needs the network and the images (input gradients), not cached features.

    ``fit(model, input_std)`` gets the classifier and the per-channel std of the input
    normalisation; ``score_images(images)`` gives (scores (B,), logits (B, C)) of one batch.
    """

    kind: ClassVar[str] = "network"
    family: ClassVar[str] = "network"

    def fit(self, model: nn.Module, input_std) -> NetworkDetector:
        self.model_ = model
        self.input_std_ = tuple(float(s) for s in input_std)
        return self

    def needs(self) -> tuple[str, ...]:
        return ()

    def score_batch(self, h: torch.Tensor):
        raise TypeError(f"{self.name} needs the images, not features: use score_images")


def score_features(
    detector: Detector, features: np.ndarray, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N,) float64 and predicted classes (N,) of ``features``, ``chunk`` rows at a time.

    Without a chunk the detector may score the whole array at once (``score_array``); otherwise
    its ``score_chunk`` attribute if it has one, else 8192 rows per chunk.
    """
    if chunk is None:
        result = detector.score_array(features)
        if result is not None:
            return result
    chunk = chunk or getattr(detector, "score_chunk", 8192)
    scores, preds = [], []
    with torch.inference_mode():
        for block in row_blocks(features, chunk):  # a memory-mapped file is read, not mapped in
            h = torch.from_numpy(block.astype(np.float32, copy=False))
            s, z = detector.score_batch(h)
            scores.append(s.double().numpy())
            preds.append(z.argmax(dim=1).numpy())
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(scores), np.concatenate(preds)


def score_sets(detector: Detector, features: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(scores, predicted classes) of each named (N, D) feature array, by ``score_features``."""
    scored = {name: score_features(detector, array) for name, array in features.items()}
    return {k: s for k, (s, _) in scored.items()}, {k: p for k, (_, p) in scored.items()}
