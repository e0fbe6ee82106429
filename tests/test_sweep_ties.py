"""sweep.py says when the validation set cannot choose (pipeline.sweep.select_setting): settings tied
on the validation criterion (equal as printed, two decimals of a percentage) are named, the paper's
setting is kept when it is among them, else the first tied one in grid order, and a validation set
that ties every setting (Gaussian noise scoring FPR95 100% for each) is said to be unable to
discriminate, with --val-ood as the remedy."""

from __future__ import annotations

import json

from pipeline.sweep import Validation, select_setting, tie_warning

AXES = ["p"]
PAPER = {"p": 90.0}
SPLIT = Validation("gaussian", None, 0.2, 0, "ID validation share 0.2 (seed 0)", "lowest FPR95", False)


def rows(*results) -> list[dict]:
    """One row per (p, val FPR95, val AUROC), fractions as the sweep stores them, in grid order."""
    return [{"p": p, "val_FPR95": fpr, "val_AUROC": auc} for p, fpr, auc in results]


def test_a_single_best_setting_is_selected_with_no_tie_and_no_warning():
    grid = rows((10.0, 0.40, 0.90), (50.0, 0.30, 0.91), (90.0, 0.35, 0.95))
    chosen = select_setting(grid, AXES, PAPER)
    assert chosen.row["p"] == 50.0 and chosen.tied == [chosen.row] and not chosen.undiscriminating
    assert tie_warning(chosen, SPLIT, AXES) == []


def test_tied_settings_keep_the_papers_setting_though_another_comes_first():
    grid = rows((10.0, 0.30, 0.91), (50.0, 0.40, 0.90), (90.0, 0.30, 0.91))
    chosen = select_setting(grid, AXES, PAPER)
    assert chosen.row["p"] == 90.0 and [r["p"] for r in chosen.tied] == [10.0, 90.0]
    assert chosen.reason == "the paper's setting" and not chosen.undiscriminating
    (line,) = tie_warning(chosen, SPLIT, AXES)
    assert line.startswith("WARNING: 2 settings tie on the validation set") and "p=10.0; p=90.0" in line
    assert "selected p=90.0 (the paper's setting)" in line


def test_a_tie_without_the_papers_setting_takes_the_first_in_grid_order_and_says_so():
    grid = rows((10.0, 0.30, 0.91), (50.0, 0.30, 0.91), (90.0, 0.50, 0.80))
    chosen = select_setting(grid, AXES, PAPER)
    assert chosen.row["p"] == 10.0
    assert chosen.reason == "the first in grid order; the paper's setting (p=90.0) is not among the tied ones"


def test_differences_below_the_printed_precision_are_ties():
    grid = rows((10.0, 0.123401, 0.951234), (90.0, 0.123449, 0.951201))  # 12.34 / 95.12 both, as printed
    assert select_setting(grid, AXES, PAPER).row["p"] == 90.0
    grid = rows((10.0, 0.1233, 0.95), (90.0, 0.1234, 0.95))  # 12.33 < 12.34: no tie
    assert select_setting(grid, AXES, PAPER).row["p"] == 10.0


def test_fpr95_of_100_for_every_setting_cannot_discriminate_and_keeps_the_papers_setting():
    # The case: DICE against Gaussian noise, FPR95 100.00 for all five p; the AUROCs differ
    # but rank settings that reject no OOD image at 95% TPR. Before, p = 10 (best AUROC) was taken.
    grid = rows(
        *(
            (p, 1.0, auc)
            for p, auc in [(10.0, 0.634), (30.0, 0.594), (50.0, 0.594), (70.0, 0.59), (90.0, 0.59)]
        )
    )
    chosen = select_setting(grid, AXES, PAPER)
    assert chosen.row["p"] == 90.0 and len(chosen.tied) == 5 and chosen.undiscriminating
    first, second = tie_warning(chosen, SPLIT, AXES)
    assert "val FPR95 100.00 for every setting" in first and "against gaussian" in first
    assert (
        "the validation set cannot discriminate between the 5 settings; pass --val-ood with a real OOD set"
        in second
    )


def test_openood_rule_ties_on_auroc_then_fpr95_and_ignores_the_fpr95_of_100_rule():
    grid = rows((10.0, 1.0, 0.70), (90.0, 1.0, 0.60))
    assert select_setting(grid, AXES, PAPER, by_auroc=True).row["p"] == 10.0
    grid = rows((10.0, 0.5, 0.70), (90.0, 0.5, 0.70))
    chosen = select_setting(grid, AXES, PAPER, by_auroc=True)
    assert chosen.row["p"] == 90.0 and chosen.tie_rule == "equal val AUROC and FPR95 to two decimals"


def test_the_paper_setting_matches_across_int_and_float_spellings_of_a_grid_value():
    grid = rows((10, 0.3, 0.9), (90, 0.3, 0.9))
    assert select_setting(grid, AXES, {"p": 90.0}).row["p"] == 90


def test_dice_sweep_on_gaussian_noise_warns_and_keeps_p_90(shared, cifar10_checkpoint, tmp_path, capsys):
    """End to end on 50 real CIFAR-10 images per set (about a minute on 2 CPU cores)."""
    import precompute
    import sweep

    common = [
        "--in-dataset",
        "CIFAR-10",
        "--data-root",
        str(shared / "data"),
        "--checkpoint",
        str(cifar10_checkpoint),
    ]
    common += [
        "--cache-dir",
        str(tmp_path / "cache"),
        "--max-samples",
        "50",
        "--workers",
        "0",
        "--no-progress",
    ]
    precompute.main(common)
    sweep.main([*common, "--method", "dice", "--out-datasets", "dtd", "--base-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    written = json.loads(
        (tmp_path / "out" / "CIFAR-10" / "dice_sweep" / "densenet" / "sweep.json").read_text()
    )
    assert written["validation_discriminates"] is False  # the case: FPR95 100.00 for every p
    assert written["selected"]["p"] == 90.0 and written["paper_setting"] == {"p": 90.0}
    assert written["tied"] == [{"p": p} for p in (10.0, 30.0, 50.0, 70.0, 90.0)]
    assert written["selected_because"] == "the paper's setting"
    assert (
        "WARNING: 5 settings tie on the validation set" in out and "pass --val-ood with a real OOD set" in out
    )
    assert "<- selected" in next(line for line in out.splitlines() if line.strip().startswith("90.0 |"))
