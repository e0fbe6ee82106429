"""Post-hoc OOD detectors computed from cached penultimate features and the classifier (W, b),
plus the network-level ones (ODIN) that need the images.

Every detector follows one protocol (``detectors.base``): parameters in ``__init__``;
``fit(fc, <statistics it needs>)`` builds the fitted state (trailing underscore); ``score_batch(h)``
gives (scores, logits), higher scores meaning more in-distribution. ``detectors.registry`` lists
them all.
"""

from .ash import ASH
from .base import Detector, NetworkDetector, Param, score_features, score_sets
from .dice import DICE
from .energy import Energy
from .gradnorm import GradNorm
from .knn import KNN
from .line import LINe
from .mahalanobis import Mahalanobis
from .msp import MSP
from .odin import ODIN
from .react import ReAct
from .scale import SCALE
from .vim import ViM

__all__ = [
    "Detector",
    "NetworkDetector",
    "Param",
    "score_features",
    "score_sets",
    "MSP",
    "ODIN",
    "Energy",
    "ReAct",
    "DICE",
    "LINe",
    "ASH",
    "SCALE",
    "Mahalanobis",
    "KNN",
    "ViM",
    "GradNorm",
]
