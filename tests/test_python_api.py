"""Your model from Python: fit from a loader, score images, evaluate to a table, metrics of any scores.

The real-data tests run precompute.py and ood_eval.py on a small image-folder CIFAR-10 (6 training
and 1 test image per class, linked from ../shared) and one OOD folder, and the Python API on
DataLoaders over the same images in the same order with the same transform. The API reads the
features with a hook during ``model(x)`` in the loader's batches; the command line runs
``forward_features`` in channels-last micro-batches. Other kernels give features that differ in
the last float32 bits, so statistics and scores are compared to a tolerance, and metrics, which
depend only on the order of the scores, exactly.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO
from reference import random_images
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets import ImageFolder

import ood_eval
import precompute
from detectors import registry, score_features
from detectors.base import NotFittedError
from detectors.from_loader import batch_parts, training_statistics
from detectors.wrap import OODClassifier
from models import get_model
from pipeline.api import evaluate
from pipeline.statistics import load_contributions, load_feat_stat
from util.datasets import id_transform
from util.errors import UserError
from util.metrics import metrics_from_scores, ood_metrics

METHODS = ["line", "dice", "knn", "mahalanobis", "odin"]


# -- the command line and the API on the same images ---------------------------------------------
@pytest.fixture(scope="module")
def cifar_run(shared, tmp_path_factory):
    """precompute.py and ood_eval.py (LINe, DICE, KNN, Mahalanobis, ODIN) on 60 training, 10 test
    and 10 OOD images; returns the folders, the DenseNet and its loaders."""
    root = tmp_path_factory.mktemp("python_api_cifar")
    cifar = shared / "data" / "CIFAR-10"
    for split, n in (("train", 6), ("test", 1)):
        for cls in sorted(p.name for p in (cifar / split).iterdir()):
            folder = root / "datasets" / "CIFAR-10" / split / cls
            folder.mkdir(parents=True)
            for f in sorted((cifar / split / cls).iterdir())[:n]:
                (folder / f.name).symlink_to(f)
    texture = shared / "data" / "ood_datasets" / "dtd" / "images" / "braided"
    (root / "textures" / "braided").mkdir(parents=True)
    for f in sorted(texture.iterdir())[:10]:
        (root / "textures" / "braided" / f.name).symlink_to(f)
    checkpoint = shared / "checkpoints" / "CIFAR-10" / "densenet" / "checkpoint_100.pth.tar"
    common = [
        "--in-dataset",
        "CIFAR-10",
        "--data-root",
        str(root / "datasets"),
        "--checkpoint",
        str(checkpoint),
    ]
    common += ["--cache-dir", str(root / "cache"), "--no-progress", "--workers", "0"]
    precompute.main(common)
    ood_eval.main(
        [*common, "--base-dir", str(root / "out"), "--methods", ",".join(METHODS)]
        + ["--out-datasets", str(root / "textures")]
    )
    tf = id_transform("CIFAR-10")
    loaders = {
        split: DataLoader(ImageFolder(root / "datasets" / "CIFAR-10" / split, tf), batch_size=25)
        for split in ("train", "test")
    }
    loaders["textures"] = DataLoader(ImageFolder(root / "textures", tf), batch_size=25)
    return root, get_model("densenet", 10, checkpoint=checkpoint), loaders


def test_statistics_fitted_from_a_loader_equal_precompute_files(cifar_run):
    root, model, loaders = cifar_run
    fc, stats = training_statistics(model, loaders["train"], ("contributions", "mean_feature"))
    contrib = load_contributions(root / "cache" / "CIFAR-10_densenet_taylor_mean_class.npy", 10, 342)
    mean = load_feat_stat(root / "cache" / "CIFAR-10_densenet_feat_stat.npy", 342)
    assert fc is model.get_classifier()
    np.testing.assert_allclose(stats["contributions"], contrib, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["mean_feature"], mean, rtol=1e-5, atol=1e-7)


def test_line_fitted_from_a_loader_has_the_masks_of_line_fitted_on_the_file(cifar_run):
    root, model, loaders = cifar_run
    from_loader = registry.build("line", "CIFAR-10").fit_loader(model, loaders["train"])
    contrib = load_contributions(root / "cache" / "CIFAR-10_densenet_taylor_mean_class.npy", 10, 342)
    from_file = registry.build("line", "CIFAR-10").fit(model.get_classifier(), contrib)
    for name, buffer in from_file.route_.named_buffers():
        if buffer.dtype == torch.bool:
            assert torch.equal(buffer, dict(from_loader.route_.named_buffers())[name]), name


@pytest.fixture(scope="module")
def api_result(cifar_run):
    root, model, loaders = cifar_run
    return evaluate(
        model, METHODS, loaders["train"], loaders["test"], {"textures": loaders["textures"]},
        in_dataset="cifar10", name="densenet",
    )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_evaluate_gives_the_metrics_of_ood_eval_results_json(cifar_run, api_result, method):
    root = cifar_run[0]
    saved = json.loads((root / "out" / "CIFAR-10" / method / "densenet" / "results.json").read_text())
    (cli,) = saved["ood"].values()
    assert api_result[method].ood["textures"] == pytest.approx(cli, abs=1e-12)
    assert api_result[method].average == pytest.approx(saved["average"], abs=1e-12)
    assert api_result[method].id_accuracy == saved["id_accuracy"]
    cli_scores = np.load(root / "out" / "CIFAR-10" / method / "densenet" / "scores" / "in.npy")
    np.testing.assert_allclose(api_result.scores[method]["in"], cli_scores, rtol=1e-4, atol=1e-5)


def test_printing_the_evaluation_gives_ood_eval_table_with_every_method(api_result):
    table = str(api_result)
    assert table.splitlines()[0].startswith("5 methods on CIFAR-10 (densenet)")
    assert all(re.search(rf"^{m}\s+\d", table, re.M) for m in METHODS)
    saved = api_result.to_dict()
    assert set(saved["methods"]) == set(METHODS)
    assert {"FPR95", "FPR95_OOD_POSITIVE", "AUROC", "AUPR_IN", "AUPR_OUT"} <= set(
        saved["methods"]["line"]["average"]
    )
    json.dumps(api_result.to_dict(scores=True))


def test_the_wrapper_scores_equal_the_detector_scores_on_cached_features(cifar_run):
    root, model, loaders = cifar_run
    (entry,) = (root / "cache" / "features").glob("CIFAR-10_densenet_test-*")
    cached = np.load(entry / "features.npy")
    needs = ("contributions", "mean_feature", "train_features")
    fc, stats = training_statistics(model, loaders["train"], needs)
    x = torch.cat([x for x, _ in loaders["test"]])
    for method in ("line", "dice", "knn"):
        detector = registry.build(method, "CIFAR-10")
        detector.fit(fc, **{k: stats[k] for k in detector.needs()})
        expected, predicted = score_features(detector, cached)
        logits, scores = OODClassifier(model, detector)(x)
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-5, err_msg=method)
        assert np.array_equal(logits.argmax(1).numpy(), predicted), method


# -- any model, any loader, the model left as it was ---------------------------------------------
def _tiny_model(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=classes)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_dice_wrapper_logits_are_the_sparsified_layer_applied_to_the_penultimate_features():
    model = _tiny_model().eval()
    train = DataLoader(TensorDataset(_images(12, 1), torch.arange(12) % 3), batch_size=5)
    dice = registry.build("dice", "cifar10").fit_loader(model, train)
    x = _images(4, 2)
    logits, scores = OODClassifier(model, dice)(x)
    with torch.no_grad():
        h = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)  # fmt: skip
        full = model.fc(h)
    torch.testing.assert_close(logits, dice.route_(h), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, full)  # sparsified, not the model's own logits
    torch.testing.assert_close(scores, torch.logsumexp(logits.double(), 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["odin", "rankfeat"])
def test_network_detectors_through_the_wrapper_equal_their_own_score_images(method):
    model = _tiny_model().eval()
    detector = registry.build(method, "cifar10").fit_loader(model, None, input_std=(0.5, 0.5, 0.5))
    x = _images(3, 3)
    logits, scores = OODClassifier(model, detector)(x)
    expected, expected_logits = detector.score_images(x)
    torch.testing.assert_close(scores, expected.double())
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(detector.score(model, x), scores)


def test_fit_score_and_evaluate_leave_the_model_as_it_was(capsys):
    model = _tiny_model().train()
    model.layer1.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    train = DataLoader(TensorDataset(_images(12, 1), torch.arange(12) % 3), batch_size=5)
    test = DataLoader(TensorDataset(_images(6, 2), torch.arange(6) % 3), batch_size=4)
    ood = DataLoader(TensorDataset(_images(6, 3)), batch_size=4)
    knn = registry.build("knn", "cifar10", {"k": 3})
    result = evaluate(model, ["line", knn, "odin"], train, test, {"noise": ood}, in_dataset="cifar10")
    registry.build("line", "cifar10").fit_loader(model, train).score(model, _images(2, 4))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == [
        not n.startswith("layer1.") for n, _ in model.named_parameters()
    ]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert set(result.results) == {"line", "knn", "odin"}


def test_batches_of_x_alone_take_the_models_predictions_as_labels_said_once(capsys):
    model = _tiny_model().eval()
    x = _images(12, 1)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    unlabelled = DataLoader(TensorDataset(x), batch_size=5)
    labelled = DataLoader(TensorDataset(x, predicted), batch_size=5)
    _, stats = training_statistics(model, unlabelled, ("contributions", "train_labels"))
    out = capsys.readouterr().out
    assert out.count("the model's predicted classes serve as labels") == 1
    _, same = training_statistics(model, labelled, ("contributions", "train_labels"))
    np.testing.assert_array_equal(stats["train_labels"], predicted.numpy())
    np.testing.assert_allclose(stats["contributions"], same["contributions"])


class _Triples(Dataset):
    """(x, y, index) items, as some users' datasets return."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def test_batches_with_extra_items_or_as_dicts_give_the_same_statistics():
    model = _tiny_model().eval()
    x, y = _images(10, 1), torch.arange(10) % 3
    needs = ("contributions", "mean_feature")
    _, pairs = training_statistics(model, DataLoader(TensorDataset(x, y), batch_size=4), needs)
    _, triples = training_statistics(model, DataLoader(_Triples(x, y), batch_size=4), needs)
    dicts = [{"image": x[i : i + 4], "label": y[i : i + 4]} for i in range(0, 10, 4)]
    _, from_dicts = training_statistics(model, dicts, needs)
    for other in (triples, from_dicts):
        np.testing.assert_allclose(other["contributions"], pairs["contributions"])
        np.testing.assert_allclose(other["mean_feature"], pairs["mean_feature"])
    with pytest.raises(UserError, match="a loader batch is str"):
        batch_parts("images")


def test_a_model_whose_output_is_not_its_last_linear_is_refused_with_what_to_do():
    model = torch.nn.Sequential(_tiny_model().eval(), torch.nn.Softmax(dim=1))
    train = DataLoader(TensorDataset(_images(6, 1), torch.arange(6) % 3), batch_size=3)
    with pytest.raises(UserError, match="pass head="):
        registry.build("dice", "cifar10").fit_loader(model, train)


def test_wrapping_an_unfitted_detector_says_to_fit_it():
    with pytest.raises(NotFittedError, match="not fitted"):
        OODClassifier(_tiny_model(), registry.build("line", "cifar10"))


def test_a_second_evaluate_with_a_cache_dir_reads_every_feature_from_the_cache(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in range(3):
        random_images(tmp_path / "train" / f"c{c}", 4, rng)
        random_images(tmp_path / "test" / f"c{c}", 2, rng)
    random_images(tmp_path / "ood" / "noise", 5, rng)
    tf = torchvision.transforms.ToTensor()
    loader = {k: DataLoader(ImageFolder(tmp_path / k, tf), batch_size=4) for k in ("train", "test", "ood")}
    model = _tiny_model()
    args = (
        model,
        ["dice", registry.build("knn", "cifar10", {"k": 3})],
        loader["train"],
        loader["test"],
        {"ood": loader["ood"]},
    )
    first = evaluate(*args, cache_dir=tmp_path / "cache", in_dataset="cifar10")
    assert "forward pass, now cached" in capsys.readouterr().out
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    second = evaluate(*args, cache_dir=tmp_path / "cache", in_dataset="cifar10")
    assert calls == []  # not one forward pass
    assert capsys.readouterr().out.count("features from the cache") == 3
    for method in ("dice", "knn"):
        assert second[method].ood == first[method].ood
        np.testing.assert_array_equal(second.scores[method]["ood"], first.scores[method]["ood"])


# -- metrics of any scores -------------------------------------------------------------------------
def test_higher_is_ood_scores_give_the_metrics_of_the_negated_higher_is_id_scores():
    rng = np.random.default_rng(0)
    id_scores, ood_scores = rng.normal(1, 1, 200), rng.normal(0, 1, 300)
    as_id = metrics_from_scores(id_scores, ood_scores)
    as_ood = metrics_from_scores(-id_scores, -ood_scores, higher_is="ood")
    assert as_ood == as_id
    assert as_id == ood_metrics(id_scores, ood_scores, with_ood_positive=True)
    with pytest.raises(ValueError, match="higher_is"):
        metrics_from_scores(id_scores, ood_scores, higher_is="OOD positive")


def test_scores_from_another_library_join_the_table_as_a_row(api_result):
    line = api_result["line"]
    outlier = {k: -v for k, v in line.scores.items()}  # pytorch-ood's sign: higher = more OOD
    row = api_result.add_scores(
        "line_elsewhere", outlier["in"], {"textures": outlier["textures"]}, higher_is="ood"
    )
    try:
        assert row.ood == line.ood
        assert "line_elsewhere" in str(api_result)
    finally:
        del api_result.results["line_elsewhere"]


# -- the README's block ------------------------------------------------------------------------------
def readme_python_api_block() -> str:
    """The first ```python block after README.md's ``### Python API`` heading."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_block_runs_from_loaders_alone(tmp_path, monkeypatch, capsys):
    """In a folder with no cache/, no checkpoint and no statistics file: two small image folders
    (train/, test/, 3 classes) and one OOD folder, random images."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "fox"):
        random_images(tmp_path / "data" / "train" / c, 20, rng, 40)
        random_images(tmp_path / "data" / "test" / c, 5, rng, 40)
    random_images(tmp_path / "data" / "ood" / "noise", 15, rng, 40)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_python_api_block(), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert re.search(r"^line\s+\d", out, re.M) and re.search(r"^dice\s+\d", out, re.M)
    assert namespace["scores"].shape == (len(namespace["x"]),)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written: no cache/, no output/
