"""With --methods, one detector that cannot run does not take the others down: they are fitted,
scored, written and tabled, the failing one gets a row saying why, and the command exits 1."""

from __future__ import annotations

import json

import pytest
from reference import pets_folder

import ood_eval
import precompute

METHODS = ["line", "dice", "energy", "knn", "mahalanobis", "vim"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An image folder (3 classes, 4 training and 2 test images each), a random 3-class ResNet-18,
    its statistics; then the six methods of the issue, KNN with ImageNet's k = 1000 on a 1% bank."""
    root = tmp_path_factory.mktemp("failing_detector")
    pets_folder(root, 4, 2)
    flags = ["--in-dataset", str(root / "pets"), "--model-arch", "torchvision:resnet18"]
    flags += ["--checkpoint", str(root / "r18.pth"), "--image-size", "32", "--cache-dir", str(root / "cache")]
    flags += ["--workers", "0", "--no-progress"]
    precompute.main(flags)
    return root, flags


def test_the_others_are_tabled_and_written_and_the_command_exits_1(run, capsys):
    root, flags = run
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        ood_eval.main(
            [
                *flags,
                "--base-dir",
                str(root / "out"),
                "--out-datasets",
                "gaussian",
                "--methods",
                ",".join(METHODS),
            ]
        )
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "knn cannot run: --knn-k 1000 exceeds the 1 training features kept by --knn-fraction 0.01" in out
    table = out[out.index("FPR95") :]
    for method in ("line", "dice", "energy", "mahalanobis", "vim"):
        assert f"\n{method} " in table, method
        result = json.loads(
            (root / "out" / "pets" / method / "torchvision-resnet18" / "results.json").read_text()
        )
        assert set(result["ood"]) == {"gaussian"}
    knn_row = next(line for line in table.splitlines() if line.startswith("knn "))
    assert "--knn-k 1000 exceeds" in knn_row
    assert not (root / "out" / "pets" / "knn").exists()
    assert any((root / "cache" / "features").glob("pets_torchvision-resnet18_test-*"))  # features stay


def test_a_detector_that_fails_while_fitting_leaves_the_others(run, capsys, monkeypatch):
    """A failure found only when fitting (not by a size check) is handled the same way."""
    from detectors.vim import ViM

    root, flags = run

    def broken_fit(self, fc, train_features, chunk=8192):
        raise ValueError("ViM cannot fit these features")

    monkeypatch.setattr(ViM, "fit", broken_fit)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        ood_eval.main(
            [
                *flags,
                "--base-dir",
                str(root / "out2"),
                "--out-datasets",
                "gaussian",
                "--methods",
                "energy,vim",
            ]
        )
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "vim failed: ViM cannot fit these features" in out
    assert (root / "out2" / "pets" / "energy" / "torchvision-resnet18" / "results.json").is_file()
