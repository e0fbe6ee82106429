"""The two FPR95 conventions: ID positive (papers, default) and OOD positive (OpenOOD)."""

import numpy as np
import pytest

from util.metrics import (
    FPR_CONVENTIONS,
    average_metrics,
    format_table,
    fpr_at_95_tpr,
    fpr_at_95_tpr_ood_positive,
    ood_metrics,
)

ID_40 = np.arange(10.5, 50.0)  # 40 ID scores 10.5, 11.5, ..., 49.5
OOD_20 = np.arange(0.0, 20.0)  # 20 OOD scores 0..19


def test_hand_worked_case_gives_different_numbers_for_the_two_conventions():
    # ID positive: t = sorted(id)[round(0.05 * 40) = 2] = 12.5; OOD above it: 13..19 -> 7 / 20.
    assert fpr_at_95_tpr(ID_40, OOD_20) == pytest.approx(0.35)
    # OOD positive: flag OOD when score <= s; 95% of 20 OOD = 19 flagged first at s = 18;
    # ID scores <= 18: 10.5..17.5 -> 8 / 40.
    assert fpr_at_95_tpr_ood_positive(ID_40, OOD_20) == pytest.approx(0.20)


def test_ood_positive_fpr_with_tied_scores_follows_sklearn_roc_curve_as_openood():
    # ID 10..29 and OOD 0..19 tie at 10..19. At s = 18, 19 / 20 OOD and 9 / 20 ID are flagged, but
    # roc_curve drops that collinear point (each tied threshold adds one ID and one OOD), so the
    # next kept point, s = 19, is used: 10 / 20 ID flagged.
    assert fpr_at_95_tpr_ood_positive(np.arange(10.0, 30.0), OOD_20) == pytest.approx(0.50)


def test_ood_positive_fpr_is_zero_for_separated_scores_and_one_for_reversed():
    assert fpr_at_95_tpr_ood_positive(np.linspace(1, 2, 50), np.linspace(-2, 0, 40)) == 0.0
    assert fpr_at_95_tpr_ood_positive(np.linspace(-2, 0, 50), np.linspace(1, 2, 40)) == 1.0


def test_ood_positive_fpr_matches_a_plain_threshold_loop_on_untied_scores():
    rng = np.random.default_rng(3)
    id_scores, ood_scores = rng.normal(1, 1, 301), rng.normal(0, 1, 207)
    expected = None
    for s in sorted(np.r_[id_scores, ood_scores]):  # lowest threshold first: flag score <= s
        if np.mean(ood_scores <= s) >= 0.95:
            expected = np.mean(id_scores <= s)
            break
    assert fpr_at_95_tpr_ood_positive(id_scores, ood_scores) == pytest.approx(expected)


def test_ood_metrics_report_both_conventions_on_request_and_the_average_covers_both():
    assert "FPR95_OOD_POSITIVE" not in ood_metrics(ID_40, OOD_20)
    per_set = {
        "a": ood_metrics(ID_40, OOD_20, with_ood_positive=True),
        "b": ood_metrics(np.linspace(1, 2, 50), np.linspace(-2, 0, 40), with_ood_positive=True),
    }
    assert per_set["a"]["FPR95"] == pytest.approx(0.35)
    assert per_set["a"]["FPR95_OOD_POSITIVE"] == pytest.approx(0.20)
    assert average_metrics(per_set)["FPR95_OOD_POSITIVE"] == pytest.approx(0.10)


def test_table_prints_the_chosen_convention_column():
    per_set = {"a": ood_metrics(ID_40, OOD_20, with_ood_positive=True)}
    key, header = FPR_CONVENTIONS["ood"]
    table = format_table(per_set, header, fpr_key=key)
    assert "OOD as positive" in table.splitlines()[0]
    assert "20.00" in table.splitlines()[2]
    assert "35.00" in format_table(per_set).splitlines()[1]
