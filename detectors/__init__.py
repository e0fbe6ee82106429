"""Post-hoc OOD detectors computed from cached penultimate features and the classifier (W, b).

Every detector follows one protocol: parameters in ``__init__``; ``fit(fc, stats)`` builds the
fitted state (trailing underscore) from the classifier and ID training statistics;
``logits(h)`` gives the logits it uses (for ID accuracy) and ``score(h)`` the OOD score,
higher meaning more in-distribution.
"""

from .ash import ASH
from .base import Detector, TrainStats, score_features, score_sets
from .dice import DICE
from .gradnorm import GradNorm
from .knn import KNN
from .line import LINe
from .logit import MSP, Energy, ReAct
from .mahalanobis import Mahalanobis
from .scale import SCALE
from .vim import ViM

__all__ = [
    "Detector",
    "TrainStats",
    "score_features",
    "score_sets",
    "MSP",
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
