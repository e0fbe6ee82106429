"""OOD metrics in the DICE/LINe convention: in-distribution (ID) is the positive class.

Scores are "higher means more in-distribution".

- FPR95: t = sort(id)[round(0.05 * n_id)]; FPR95 = mean(ood > t), the false-positive rate on OOD
  data at the threshold that keeps (about) 95% of ID samples.
- AUROC: area under the ROC curve with ID positive (= sklearn ``roc_auc_score``).
- AUPR-In: average precision with ID positive; AUPR-Out: OOD positive on negated scores.

OpenOOD and pytorch-ood take OOD as positive, so their "FPR95" is a different number; it is
reported too, as FPR95_OOD_POSITIVE (``fpr_at_95_tpr_ood_positive``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

METRIC_NAMES = ("FPR95", "AUROC", "AUPR_IN", "AUPR_OUT")
# --fpr-convention: the metric key printed as FPR95 and how the table header names it.
FPR_CONVENTIONS = {
    "id": ("FPR95", "FPR95 at 95% TPR with ID as positive (DICE/LINe convention)"),
    "ood": ("FPR95_OOD_POSITIVE", "FPR95 at 95% TPR with OOD as positive (OpenOOD/pytorch-ood convention)"),
}


def _as_scores(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{what} scores are empty: no image was scored")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"{bad.sum()} of {x.size} {what} scores are NaN or infinite "
            "(features or logits overflowed); the metrics are undefined"
        )
    return x


def fpr_at_95_tpr(id_scores, ood_scores) -> float:
    """Fraction of OOD scores above the ID threshold t = sorted(id)[round(0.05 * n_id)]."""
    id_scores = np.sort(_as_scores(id_scores, "ID"))
    ood_scores = _as_scores(ood_scores, "OOD")
    threshold = id_scores[round(0.05 * id_scores.size)]
    return float(np.mean(ood_scores > threshold))


def fpr_at_95_tpr_ood_positive(id_scores, ood_scores) -> float:
    """FPR95 with OOD as the positive class, exactly as OpenOOD computes it.

    OOD is flagged when -score >= t. ``sklearn.metrics.roc_curve(is_ood, -scores)`` lists t from
    high to low; take the first ROC point whose TPR (fraction of OOD samples flagged) is >= 0.95
    and return its FPR: the fraction of ID samples flagged as OOD at that threshold. With untied
    scores this is the fraction of ID samples whose score is <= the smallest score s such that
    at least 95% of OOD scores are <= s. (roc_curve drops collinear intermediate points, as in
    OpenOOD; with tied scores that can move the value to the next kept point.)
    """
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(1 - labels, -scores)
    return float(fpr[np.argmax(tpr >= 0.95)])


def _labels_and_scores(id_scores, ood_scores):
    id_scores = _as_scores(id_scores, "ID")
    ood_scores = _as_scores(ood_scores, "OOD")
    labels = np.concatenate([np.ones(id_scores.size), np.zeros(ood_scores.size)])
    return labels, np.concatenate([id_scores, ood_scores])


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive. Ties count one half."""
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    return float(roc_auc_score(labels, scores))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID as the positive class."""
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    return float(average_precision_score(labels, scores))


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD as the positive class and negated scores."""
    labels, scores = _labels_and_scores(id_scores, ood_scores)
    return float(average_precision_score(1 - labels, -scores))


def ood_metrics(id_scores, ood_scores, with_ood_positive: bool = False) -> dict[str, float]:
    """The four metrics as fractions in [0, 1]; with ``with_ood_positive`` also
    FPR95_OOD_POSITIVE (OpenOOD's FPR95, ``fpr_at_95_tpr_ood_positive``)."""
    metrics = {
        "FPR95": fpr_at_95_tpr(id_scores, ood_scores),
        "AUROC": auroc(id_scores, ood_scores),
        "AUPR_IN": aupr_in(id_scores, ood_scores),
        "AUPR_OUT": aupr_out(id_scores, ood_scores),
    }
    if with_ood_positive:
        metrics["FPR95_OOD_POSITIVE"] = fpr_at_95_tpr_ood_positive(id_scores, ood_scores)
    return metrics


def average_metrics(per_set: dict[str, dict[str, float]]) -> dict[str, float]:
    """Plain mean over the OOD sets of each metric that every set has."""
    rows = list(per_set.values())
    names = [m for m in rows[0] if all(m in r for r in rows)] if rows else list(METRIC_NAMES)
    return {m: float(np.mean([r[m] for r in rows])) for m in names}


def format_table(per_set: dict[str, dict[str, float]], title: str = "", fpr_key: str = "FPR95") -> str:
    """Per-set and AVG rows of FPR95 (``fpr_key``), AUROC, AUPR-IN (AUPR_IN) in percent with two
    decimals, aligned for any set name and for 100.00."""
    width = max([len("OOD set"), *(len(k) for k in per_set)]) + 2
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'OOD set':<{width}}{'FPR95':>9}{'AUROC':>9}{'AUPR-IN':>9}")
    rows = list(per_set.items()) + [("AVG", average_metrics(per_set))]
    for name, r in rows:
        lines.append(
            f"{name:<{width}}{100 * r[fpr_key]:>9.2f}{100 * r['AUROC']:>9.2f}{100 * r['AUPR_IN']:>9.2f}"
        )
    return "\n".join(lines)


# What each key of results.json's metrics means (recorded with every result).
METRIC_CONVENTIONS = {
    "FPR95": "fraction of OOD scores above the ID threshold at 95% ID TPR (ID positive; DICE/LINe papers)",
    "FPR95_OOD_POSITIVE": "fraction of ID samples flagged when 95% of OOD is flagged (OOD positive; OpenOOD)",
    "AUROC": "ID positive (the same number with OOD positive on negated scores)",
    "AUPR_IN": "average precision, ID positive",
    "AUPR_OUT": "average precision, OOD positive, negated scores",
}


def metrics_from_scores(id_scores, ood_scores, higher_is: str = "id") -> dict[str, float]:
    """The metrics of any two score arrays (another library's included), as fractions in [0, 1]:
    FPR95 (ID positive), FPR95_OOD_POSITIVE (OpenOOD's), AUROC, AUPR_IN, AUPR_OUT.

    ``higher_is``: ``"id"`` when a higher score means more in-distribution (this repository's
    detectors, OpenOOD's ``conf``), ``"ood"`` when it means more out-of-distribution (pytorch-ood's
    outlier scores); those are negated first, so the same detector gives the same numbers either way.
    """
    if higher_is not in ("id", "ood"):
        raise ValueError(f"higher_is must be 'id' or 'ood', not {higher_is!r}")
    sign = 1.0 if higher_is == "id" else -1.0
    id_scores = sign * _as_scores(id_scores, "ID")
    return ood_metrics(id_scores, sign * _as_scores(ood_scores, "OOD"), with_ood_positive=True)
