"""Post-hoc OOD detectors computed from cached penultimate features and the classifier (W, b).

Every detector follows one protocol: parameters in ``__init__``; ``fit(fc, stats)`` builds the
fitted state (trailing underscore) from the classifier and ID training statistics;
``logits(h)`` gives the logits it uses (for ID accuracy) and ``score(h)`` the OOD score,
higher meaning more in-distribution.
"""

from .base import Detector, TrainStats, score_features
from .dice import DICE
from .line import LINe
from .logit import MSP, Energy, ReAct

__all__ = ["Detector", "TrainStats", "score_features", "MSP", "Energy", "ReAct", "DICE", "LINe"]
