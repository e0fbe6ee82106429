"""Energy score (Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020).

score = logsumexp_c (W h + b)_c, temperature 1 (the negated free energy).
"""

from __future__ import annotations

from .base import Detector


class Energy(Detector):
    name = "energy"
    paper = "Liu et al., NeurIPS 2020"
    family = "logit"
