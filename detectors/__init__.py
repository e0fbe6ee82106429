"""Post-hoc OOD detectors computed from cached penultimate features and the classifier (W, b),
plus the network-level ones (ODIN, RankFeat) that need the images.

Every detector follows one protocol (``detectors.base``): parameters in ``__init__``;
``fit(fc, <statistics it needs>)`` builds the fitted state (trailing underscore); ``score_batch(h)``
gives (scores, logits), higher scores meaning more in-distribution. ``detectors.registry`` lists
them all, and every class it lists is exported here by its class name (``from detectors import
KNN``), so a new detector needs no line in this file.
"""

from .base import Detector, NetworkDetector, NotFittedError, Param, score_features, score_sets
from .registry import DETECTORS

globals().update({cls.__name__: cls for cls in DETECTORS})

__all__ = [
    "Detector",
    "NetworkDetector",
    "NotFittedError",
    "Param",
    "score_features",
    "score_sets",
    "DETECTORS",
    *(cls.__name__ for cls in DETECTORS),
]
