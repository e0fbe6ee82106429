"""ood_eval.py --methods: one extraction, one table, one results.json per method; plots; conventions.

Runs the real DenseNet-101 on a tiny image-folder copy (symlinks) of the shared CIFAR-10 JPEGs.
"""

import json

import numpy as np
import pytest

import ood_eval
import precompute
from detectors import registry
from pipeline.flags import parse_methods
from util.errors import UserError

PER_CLASS_TRAIN, PER_CLASS_TEST = 3, 2
METHODS = "energy,line,line_none,line_ac_wp,react,ash_s,scale,mahalanobis,knn,vim,gradnorm"


@pytest.fixture(scope="module")
def run(shared, cifar10_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    for split, n in (("train", PER_CLASS_TRAIN), ("test", PER_CLASS_TEST)):
        for cls in sorted((shared / "data" / "CIFAR-10" / split).iterdir()):
            target = root / "data" / "CIFAR-10" / split / cls.name
            target.mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (target / f.name).symlink_to(f)
    common = [
        "--in-dataset", "CIFAR-10", "--data-root", str(root / "data"), "--cache-dir", str(root / "cache"),
        "--checkpoint", str(cifar10_checkpoint), "--no-progress", "--device", "cpu", "-b", "32",
    ]  # fmt: skip
    precompute.main(common)
    return root, common


def evaluate(run, capsys, *extra):
    root, common = run
    ood_eval.main([*common, "--out-datasets", "gaussian", "uniform", "--max-samples", "16", *extra])
    return capsys.readouterr().out


def test_methods_share_one_extraction_and_each_writes_its_results_json(run, capsys):
    root, _ = run
    out = evaluate(run, capsys, "--methods", METHODS, "--knn-k", "3", "--base-dir", str(root / "out"))
    entries = sorted(p.name.rsplit("-", 1)[0] for p in (root / "cache" / "features").iterdir())
    assert entries == ["CIFAR-10_densenet_gaussian", "CIFAR-10_densenet_test", "CIFAR-10_densenet_train",
                       "CIFAR-10_densenet_uniform"]  # fmt: skip
    assert "forward passes: 48 images" in out  # 16 ID test + 2 x 16 noise, once (train: precompute)
    table = out[out.index("methods on CIFAR-10") :]
    assert "ID as positive" in table
    results = {}
    for method in ["energy", "line", "line_none", "line_ac_wp", "react", "ash_s", "scale", "mahalanobis",
                   "knn", "vim", "gradnorm"]:  # fmt: skip
        assert f"\n{method} " in table
        path = root / "out" / "CIFAR-10" / method / "densenet" / "results.json"
        results[method] = json.loads(path.read_text())
        assert set(results[method]) == {"id_accuracy", "ood", "average", "settings"}
        assert set(results[method]["ood"]) == {"gaussian", "uniform"}
        assert {"FPR95", "FPR95_OOD_POSITIVE", "AUROC"} <= set(results[method]["average"])
        assert results[method]["settings"]["fpr_convention"] == "id"
    assert results["line_none"]["ood"] == results["energy"]["ood"]  # no AC/AP/WP: plain energy
    assert results["line_ac_wp"]["settings"]["detector"]["activation_pruning"] is False
    assert results["knn"]["settings"]["detector"]["k"] == 3
    assert "contributions" in results["line"]["settings"]["files"]
    assert "contributions" not in results["knn"]["settings"]["files"]
    in_scores = np.load(root / "out" / "CIFAR-10" / "knn" / "densenet" / "scores" / "in.npy")
    assert in_scores.shape == (16,)


def test_single_method_plots_and_ood_positive_convention(run, capsys):
    root, _ = run
    base = root / "single"
    out = evaluate(run, capsys, "--method", "line", "--no-ap", "--plots", "--fpr-convention", "ood",
                   "--base-dir", str(base))  # fmt: skip
    assert "OOD as positive" in out
    result_dir = base / "CIFAR-10" / "line_ac_wp" / "densenet"
    result = json.loads((result_dir / "results.json").read_text())
    assert result["settings"]["fpr_convention"] == "ood"
    avg_line = next(line for line in out.splitlines() if line.startswith("AVG"))
    assert f"{100 * result['average']['FPR95_OOD_POSITIVE']:.2f}" in avg_line
    assert f"results: {result_dir / 'results.json'} (per-image scores in scores/, plots (OOD positive)" in out
    pngs = sorted(p.name for p in (result_dir / "plots").iterdir())
    assert pngs == ["hist_gaussian.png", "hist_uniform.png", "roc_gaussian.png", "roc_uniform.png"]
    assert (result_dir / "plots" / "roc_uniform.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_names_are_refused_with_the_choices():
    assert parse_methods("energy, knn,energy,line_wp_ac") == ["energy", "knn", "line_wp_ac"]
    with pytest.raises(UserError, match="line_xx.*choose from"):
        parse_methods("energy,line_xx")


SMALL_BANKS = {
    "knn": ["--knn-k", "3"],
    "nnguide": ["--nnguide-k", "3", "--nnguide-fraction", "0.5"],
}
# Methods this tiny set (16 training images, one or two per class) cannot fit, and why.
CANNOT_FIT = {"openmax": "a Weibull fit per class needs two different distances"}


def method_flags(name: str) -> list[str]:
    """KNN and NNGuide need k below the training images of this tiny set; every other method its
    defaults."""
    return SMALL_BANKS.get(name, [])


def test_method_x_and_methods_x_give_identical_scores_and_results_keys_for_every_method(run, capsys):
    root, _ = run
    names = [n for n in registry.method_names() + list(registry.aliases()) if n not in CANNOT_FIT]
    together = root / "together"
    small = [flag for flags in SMALL_BANKS.values() for flag in flags]
    evaluate(run, capsys, "--methods", ",".join(names), *small, "--base-dir", str(together))
    for name in names:
        alone = root / "alone" / name
        evaluate(run, capsys, "--method", name, *method_flags(name), "--base-dir", str(alone))
        method = registry.build(name, "CIFAR-10").run_name()
        a = alone / "CIFAR-10" / method / "densenet"
        b = together / "CIFAR-10" / method / "densenet"
        for key in ("in", "gaussian", "uniform"):
            assert (
                np.load(a / "scores" / f"{key}.npy").tobytes()
                == np.load(b / "scores" / f"{key}.npy").tobytes()
            ), (name, key)
        ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
        assert set(ra) == set(rb) and set(ra["settings"]) == set(rb["settings"]), name
        assert set(ra["settings"]["detector"]) == set(rb["settings"]["detector"]), name
        assert ra["ood"] == rb["ood"] and ra["id_accuracy"] == rb["id_accuracy"], name
        assert ra["settings"]["method_flag"] == name
