"""util.metrics against hand-worked cases and scikit-learn (ID is the positive class)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from util.metrics import aupr_in, aupr_out, auroc, average_metrics, fpr_at_95_tpr, ood_metrics


def test_fpr95_uses_the_sorted_id_score_at_index_round_5_percent():
    id_scores = np.arange(20, dtype=float)  # round(0.05 * 20) = 1 -> threshold = 1.0
    ood_scores = np.array([0.0, 1.0, 1.5, 2.0, 19.0])
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(3 / 5)  # strictly above 1.0


def test_fpr95_counts_ood_scores_tied_with_the_threshold_as_negatives():
    id_scores = np.array([5.0] * 40)
    assert fpr_at_95_tpr(id_scores, np.array([5.0, 5.0, 6.0, 4.0])) == pytest.approx(0.25)


def test_fpr95_is_zero_when_ood_scores_are_all_below_id():
    assert fpr_at_95_tpr(np.linspace(1, 2, 100), np.linspace(-2, 0, 50)) == 0.0


def test_fpr95_matches_a_plain_loop_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    id_scores = rng.integers(0, 30, 333).astype(float)
    ood_scores = rng.integers(0, 30, 171).astype(float)
    threshold = sorted(id_scores)[int(round(0.05 * len(id_scores)))]
    expected = sum(1 for s in ood_scores if s > threshold) / len(ood_scores)
    assert fpr_at_95_tpr(id_scores, ood_scores) == pytest.approx(expected)


def test_auroc_and_aupr_equal_sklearn_with_id_positive():
    rng = np.random.default_rng(1)
    id_scores = rng.normal(1, 1, 400).round(1)
    ood_scores = rng.normal(0, 1, 300).round(1)
    labels = np.r_[np.ones(400), np.zeros(300)]
    scores = np.r_[id_scores, ood_scores]
    assert auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, scores))
    assert aupr_in(id_scores, ood_scores) == pytest.approx(average_precision_score(labels, scores))
    assert aupr_out(id_scores, ood_scores) == pytest.approx(average_precision_score(1 - labels, -scores))


def test_auroc_counts_pairs_with_ties_as_one_half():
    id_scores, ood_scores = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0])
    pairs = [(i > o) + 0.5 * (i == o) for i in id_scores for o in ood_scores]
    assert auroc(id_scores, ood_scores) == pytest.approx(np.mean(pairs))


def test_metrics_refuse_nan_scores_with_a_message():
    with pytest.raises(ValueError, match="NaN or infinite"):
        ood_metrics(np.array([1.0, np.nan]), np.array([0.0]))


def test_average_is_the_plain_mean_over_sets():
    per_set = {
        "a": dict(FPR95=0.2, AUROC=0.9, AUPR_IN=0.8, AUPR_OUT=0.7),
        "b": dict(FPR95=0.4, AUROC=0.7, AUPR_IN=0.6, AUPR_OUT=0.5),
    }
    assert average_metrics(per_set) == pytest.approx(dict(FPR95=0.3, AUROC=0.8, AUPR_IN=0.7, AUPR_OUT=0.6))
