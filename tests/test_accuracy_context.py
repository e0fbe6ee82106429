"""An ID accuracy far below what the weights' spec says they reach is pointed out once, after the
tables, with the usual causes (other images such as JPEG copies, other preprocessing)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import ood_eval
from models.weights import WEIGHTS
from pipeline.config import EvalConfig
from pipeline.evaluate import ACCURACY_GAP, accuracy_note

DICE_CIFAR10 = {"checkpoint_sha256": WEIGHTS["CIFAR-10", "densenet"].sha256, "num_classes": 10}


def _features(accuracy: float, n: int = 1000):
    labels = np.arange(n) % 10
    predictions = np.where(np.arange(n) < round(accuracy * n), labels, (labels + 1) % 10)
    return SimpleNamespace(labels=labels, logits=np.eye(10)[predictions])


def test_an_accuracy_far_below_the_published_top1_says_so_with_the_usual_causes():
    note = accuracy_note(EvalConfig(in_dataset="CIFAR-10"), DICE_CIFAR10, _features(0.826))
    assert note.startswith("note: the classifier's ID accuracy, 82.60% on 1000 images, is 11.9 points below")
    assert "94.5% published for these weights (the DICE code's DenseNet-101 for CIFAR-10)" in note
    assert "JPEG copies" in note and "preprocessing" in note
    assert "--max-samples" not in note


def test_an_accuracy_within_the_gap_says_nothing():
    assert ACCURACY_GAP == 5.0
    assert accuracy_note(EvalConfig(in_dataset="CIFAR-10"), DICE_CIFAR10, _features(0.90)) is None


def test_weights_without_a_published_top1_say_nothing():
    unknown = {"checkpoint_sha256": "0" * 64, "num_classes": 10}
    assert accuracy_note(EvalConfig(in_dataset="CIFAR-10"), unknown, _features(0.2)) is None
    cifar100 = {"checkpoint_sha256": WEIGHTS["CIFAR-100", "densenet"].sha256, "num_classes": 100}
    assert accuracy_note(EvalConfig(in_dataset="CIFAR-100"), cifar100, _features(0.2)) is None


def test_a_subset_run_says_it_scored_a_subset():
    note = accuracy_note(EvalConfig(in_dataset="CIFAR-10", max_samples=50), DICE_CIFAR10, _features(0.5, 50))
    assert "this run scored a --max-samples subset of 50 images" in note


def test_the_shared_jpeg_copies_get_the_note_after_the_table(shared, cifar10_checkpoint, tmp_path, capsys):
    flags = ["--in-dataset", "CIFAR-10", "--data-root", str(shared / "data")]
    flags += ["--checkpoint", str(cifar10_checkpoint), "--cache-dir", str(tmp_path / "cache")]
    flags += ["--base-dir", str(tmp_path / "out"), "--max-samples", "50", "--workers", "0", "--no-progress"]
    ood_eval.main([*flags, "--out-datasets", "gaussian", "--method", "energy"])
    out = capsys.readouterr().out
    assert "weights: " in out and "published top-1 94.5% on CIFAR-10" in out
    note = next(line for line in out.splitlines() if line.startswith("note: the classifier's ID accuracy"))
    assert out.index("ID accuracy (") < out.index(note)  # after the table
    assert "JPEG copies" in note
