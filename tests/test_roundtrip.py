"""precompute.py -> ood_eval.py on about 200 real images of ../shared (DenseNet-101, CIFAR-10)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import line_logits

import ood_eval
import precompute


@pytest.fixture(scope="module")
def data_root(shared, tmp_path_factory):
    """A tiny data root of symlinks: 100 train, 50 test, 40 dtd images, plus a plain image folder."""
    root = tmp_path_factory.mktemp("data")
    cifar = shared / "data" / "CIFAR-10"
    for split, n in (("train", 10), ("test", 5)):
        for cls in sorted(p.name for p in (cifar / split).iterdir()):
            (root / "CIFAR-10" / split / cls).mkdir(parents=True)
            for f in sorted((cifar / split / cls).iterdir())[:n]:
                (root / "CIFAR-10" / split / cls / f.name).symlink_to(f)
    dtd = shared / "data" / "ood_datasets" / "dtd" / "images"
    for cls in sorted(p.name for p in dtd.iterdir()):
        (root / "ood_datasets" / "dtd" / "images" / cls).mkdir(parents=True)
        for f in sorted((dtd / cls).iterdir())[:10]:
            (root / "ood_datasets" / "dtd" / "images" / cls / f.name).symlink_to(f)
    plain = root / "plain"
    plain.mkdir()
    for f in sorted((dtd / "bubbly").iterdir())[:6]:
        (plain / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def run(data_root, cifar10_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    common = [
        "--in-dataset",
        "CIFAR-10",
        "--data-root",
        str(data_root),
        "--checkpoint",
        str(cifar10_checkpoint),
        "--cache-dir",
        str(work / "cache"),
        "--no-progress",
        "-b",
        "32",
        "--workers",
        "0",
    ]

    def call(script, *args):
        script.main([*common, *args])

    call(precompute)
    return call, work, common


def test_precompute_writes_contributions_and_feat_stat_in_the_original_layout(run):
    _, work, _ = run
    contrib = np.load(work / "cache" / "CIFAR-10_densenet_taylor_mean_class.npy")
    stat = np.load(work / "cache" / "CIFAR-10_densenet_feat_stat.npy")
    assert contrib.shape == (342, 10) and stat.shape == (342,)
    meta = json.loads((work / "cache" / "CIFAR-10_densenet_taylor_mean_class.json").read_text())
    assert meta["num_images"] == 100 and meta["images_per_class"] == [10] * 10


def load_head(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return state["fc.weight"].double().numpy(), state["fc.bias"].double().numpy()


def test_line_round_trip_writes_results_and_scores_equal_to_the_reference(
    run, data_root, cifar10_checkpoint, capsys
):
    call, work, _ = run
    plain = str(data_root / "plain")
    call(
        ood_eval,
        "--p-w",
        "90",
        "--p-a",
        "90",
        "--method",
        "taylor",
        "--clip_threshold",
        "1.0",
        "--out-datasets",
        "dtd",
        plain,
        "--base-dir",
        str(work / "out"),
    )
    out = capsys.readouterr().out
    assert "FPR95" in out and "AVG" in out and "ID accuracy" in out
    result_dir = work / "out" / "CIFAR-10" / "line" / "densenet"
    results = json.loads((result_dir / "results.json").read_text())
    folder = Path(plain).name  # a folder set goes by its base name; results.json keeps its path
    assert set(results["ood"]) == {"dtd", folder} and results["ood_paths"] == {folder: plain}
    assert set(results["average"]) == {"FPR95", "AUROC", "AUPR_IN", "AUPR_OUT", "FPR95_OOD_POSITIVE"}
    assert results["settings"]["files"]["contributions"]["sha256"]
    in_scores = np.load(result_dir / "scores" / "in.npy")
    assert len(in_scores) == 50
    assert len(np.load(result_dir / "scores" / f"{folder}.npy")) == 6

    entry = next((work / "cache" / "features").glob("CIFAR-10_densenet_test-*"))
    h = np.load(entry / "features.npy").astype(np.float64)
    contrib = np.load(work / "cache" / "CIFAR-10_densenet_taylor_mean_class.npy").T.astype(np.float64)
    W, b = load_head(cifar10_checkpoint)
    ref = line_logits(h, W, b, contrib, 90, 90, 1.0)
    np.testing.assert_allclose(in_scores, [np.log(np.exp(r).sum()) for r in ref], rtol=1e-5)
    labels = np.load(entry / "labels.npy")
    assert results["id_accuracy"] == pytest.approx(np.mean(ref.argmax(1) == labels))


def test_a_second_run_with_other_settings_does_no_forward_pass(run, capsys):
    call, work, _ = run
    call(
        ood_eval,
        "--p-w",
        "80",
        "--p-a",
        "70",
        "--method",
        "taylor",
        "--clip_threshold",
        "0.9",
        "--out-datasets",
        "dtd",
        "--base-dir",
        str(work / "out2"),
    )
    call(ood_eval, "--p", "90", "--out-datasets", "dtd", "--base-dir", str(work / "out2"))
    out = capsys.readouterr().out
    assert out.count("no forward pass") == 2
    assert (work / "out2" / "CIFAR-10" / "dice" / "densenet" / "results.json").is_file()


def test_energy_scores_are_logsumexp_of_the_cached_logits(run, capsys):
    call, work, _ = run
    call(ood_eval, "--out-datasets", "dtd", "--base-dir", str(work / "out3"))
    scores = np.load(work / "out3" / "CIFAR-10" / "energy" / "densenet" / "scores" / "dtd.npy")
    entry = next((work / "cache" / "features").glob("CIFAR-10_densenet_dtd-*"))
    logits = np.load(entry / "logits.npy").astype(np.float64)
    np.testing.assert_allclose(scores, np.log(np.exp(logits).sum(1)), rtol=1e-5)


def test_sweep_scores_every_setting_from_the_cache_and_selects_on_the_validation_set(run, data_root, capsys):
    import sweep
    from pipeline.sweep import select_setting

    _, work, common = run
    call = run[0]
    call(ood_eval, "--out-datasets", "dtd", str(data_root / "plain"), "--base-dir", str(work / "warm"))
    sweep.main(
        [
            *common,
            "--out-datasets",
            "dtd",
            "--val-ood",
            str(data_root / "plain"),
            "--grid",
            "p_w=50,90",
            "--grid",
            "p_a=10,90",
            "--grid",
            "clip_threshold=1.0,inf",
            "--base-dir",
            str(work / "sweep"),
        ]
    )
    out = capsys.readouterr().out
    result = json.loads((work / "sweep" / "CIFAR-10" / "line_sweep" / "densenet" / "sweep.json").read_text())
    assert len(result["rows"]) == 8
    # The best validation row; of rows tied as printed, the paper's setting (tests/test_sweep_ties.py).
    best = select_setting(result["rows"], list(result["grid"]), result["paper_setting"]).row
    assert result["selected"] == best
    assert result["images_forwarded"] == 0 and "no forward pass: every set came from the cache" in out


def test_sweep_validation_split_is_seeded_and_disjoint():
    from pipeline.sweep import split_indices

    val, test = split_indices(100, 0.2, seed=0)
    assert len(val) == 20 and len(test) == 80 and not set(val) & set(test)
    np.testing.assert_array_equal(val, split_indices(100, 0.2, seed=0)[0])


@pytest.mark.parametrize(
    "method,grid",
    [("dice", "p=50,90"), ("react", "percentile=80,90"), ("knn", "k=1,5"), ("line", None)],
)
def test_sweep_of_each_detector_runs_from_the_cache_without_a_forward_pass(
    run, data_root, capsys, method, grid
):
    import sweep
    from pipeline.sweep import select_setting

    _, work, common = run
    args = [
        *common,
        "--out-datasets",
        "dtd",
        "--val-ood",
        str(data_root / "plain"),
        "--base-dir",
        str(work / "sw"),
    ]
    sweep.main(
        [*args, "--method", "line", "--grid", "p_w=90", "--grid", "p_a=90", "--grid", "clip_threshold=1.0"]
    )
    sweep.main([*args, "--method", method, *(["--grid", grid] if grid else [])])  # every set is cached now
    name = {"react": "react", "dice": "dice", "knn": "knn", "line": "line"}[method]
    result = json.loads((work / "sw" / "CIFAR-10" / f"{name}_sweep" / "densenet" / "sweep.json").read_text())
    assert result["images_forwarded"] == 0
    expected = 100 if method == "line" else 2  # LINe's default grid: 5 p_w x 5 p_a x 4 tau
    assert len(result["rows"]) == expected
    selected = select_setting(result["rows"], list(result["grid"]), result["paper_setting"]).row
    assert result["selected"] == selected  # the best row; of rows tied as printed, the paper's setting


def test_sweep_of_a_network_level_detector_runs_the_network_for_each_setting(run, data_root):
    import sweep

    _, work, common = run
    sweep.main(
        [*common, "--method", "odin", "--out-datasets", "dtd", "--val-ood", str(data_root / "plain"),
         "--max-samples", "8", "--grid", "temperature=1,1000", "--grid", "noise=0",
         "--base-dir", str(work / "sw")]
    )  # fmt: skip
    result = json.loads((work / "sw" / "CIFAR-10" / "odin_sweep" / "densenet" / "sweep.json").read_text())
    assert [r["temperature"] for r in result["rows"]] == [1.0, 1000.0]
    assert len({r["val_AUROC"] for r in result["rows"]} | {r["test_AUROC"] for r in result["rows"]}) > 1
