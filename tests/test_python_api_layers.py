"""Multi-layer detectors from Python: ``pipeline.api.evaluate``, ``Detector.fit_loader`` and
``Detector.score`` read the statistics of intermediate layers (``util.layer_taps``) in the same
single forward pass as the penultimate features, on the modules ``feature_layers`` names or the
built-in architecture's default.

The detectors here are defined in the tests (a pooled one, a NAC one, a network-level one that
fits on ``train_layers``), so the tests depend on no registered multi-layer detector; references
read the layer outputs with hooks of their own, in float64.
"""

import numpy as np
import pytest
import torch
from tiny_convnet import TinyConvNet
from torch.utils.data import DataLoader, TensorDataset

from detectors import registry
from detectors.base import LayerDetector, NetworkDetector
from models.densenet import DenseNet3
from pipeline.api import evaluate
from util.errors import UserError
from util.features import FeatureExtractor
from util.layer_taps import TapSpec

LAYERS = ("block1", "block2", "block3")  # DenseNet's default (models.MODELS["densenet"].layers)
SIZES = {"train": 20, "in": 8, "ood": 6}


class Images(TensorDataset):
    """Random images the feature cache can key (a fingerprint)."""

    def fingerprint(self):
        return {"images": len(self), "sum": float(self.tensors[0].sum())}


class PooledDistance(LayerDetector):
    """score = -sum_l ||pooled_l(x) - mean_l||^2, mean_l the training images' mean (float64)."""

    name = "pooled_distance"
    taps = ("pooled",)

    def fit(self, fc, train_layers, train_labels):
        super().fit(fc)
        self.means_ = [np.asarray(a, dtype=np.float64).mean(axis=0) for a in train_layers.arrays["pooled"]]
        self.classes_seen_ = len(np.unique(train_labels))
        return self

    def score_layers(self, h, layers):
        parts = [
            ((f.double() - torch.from_numpy(m)) ** 2).sum(dim=1)
            for f, m in zip(layers["pooled"], self.means_)
        ]
        return -sum(parts), self.logits(h)


class NacSum(LayerDetector):
    """score = sum over layers and channels of the NAC statistic (no training statistic used)."""

    name = "nac_sum"
    taps = ("nac",)

    def fit(self, fc, train_layers):
        return super().fit(fc)

    def score_layers(self, h, layers):
        return sum(f.double().sum(dim=1) for f in layers["nac"]), self.logits(h)


class LayerMeans(NetworkDetector):
    """A network-level detector fitted on ``train_layers``: keeps them; scores the logits' max."""

    name = "layer_means"
    taps = ("pooled",)

    def fit(self, model, input_std, train_layers, train_labels):
        super().fit(model, input_std)
        self.seen_ = train_layers
        return self

    def score_images(self, images):
        with torch.no_grad():
            logits = self.model_(images)
        return logits.max(dim=1).values, logits


def tiny_net():
    torch.manual_seed(0)
    return DenseNet3(depth=10, num_classes=5).eval()


def images(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return Images(torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 5)


def loaders(size=32):
    """(train, ID test, {"ood": OOD}) loaders over random images, unshuffled, batches of 4."""
    sets = {k: images(n, seed, size) for seed, (k, n) in enumerate(SIZES.items())}
    made = {k: DataLoader(v, batch_size=4) for k, v in sets.items()}
    return made["train"], made["in"], {"ood": made["ood"]}


def pooled_reference(model, x, names):
    """Per layer, the mean over positions of the module's output, by hooks of the test's own (float64)."""
    kept = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: kept.update({n: o})) for n in names]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return [kept[n].double().mean(dim=(2, 3)).numpy() for n in names]


def distance_reference(model, train_x, x, names):
    """-sum_l ||pooled_l(x) - mean over the training images of pooled_l||^2, in float64."""
    means = [p.mean(axis=0) for p in pooled_reference(model, train_x, names)]
    return -sum(((p - m) ** 2).sum(axis=1) for p, m in zip(pooled_reference(model, x, names), means))


def all_images(loader):
    return loader.dataset.tensors[0]


def test_a_layer_detector_evaluated_from_python_scores_as_a_plain_hook_reference():
    model, (train, id_loader, ood) = tiny_net(), loaders()
    result = evaluate(model, [PooledDistance()], train, id_loader, ood)
    for key, loader in (("in", id_loader), ("ood", ood["ood"])):
        want = distance_reference(model, all_images(train), all_images(loader), LAYERS)
        np.testing.assert_allclose(result.scores["pooled_distance"][key], want, rtol=1e-5, atol=1e-7)


def test_evaluate_forwards_each_image_once_with_layer_detectors():
    model, (train, id_loader, ood) = tiny_net(), loaders()
    forwarded = []
    handle = model.register_forward_hook(lambda m, args, out: forwarded.append(len(args[0])))
    evaluate(model, [PooledDistance(), registry.build("energy", None)], train, id_loader, ood)
    handle.remove()
    assert sum(forwarded) == sum(SIZES.values())


def test_layer_statistics_come_from_the_feature_cache_on_a_second_call(tmp_path):
    model, (train, id_loader, ood) = tiny_net(), loaders()
    first = evaluate(model, [PooledDistance()], train, id_loader, ood, cache_dir=tmp_path)
    forwarded = []
    handle = model.register_forward_hook(lambda m, args, out: forwarded.append(len(args[0])))
    second = evaluate(model, [PooledDistance()], train, id_loader, ood, cache_dir=tmp_path)
    handle.remove()
    assert forwarded == []
    want = distance_reference(model, all_images(train), all_images(id_loader), LAYERS)
    np.testing.assert_allclose(first.scores["pooled_distance"]["in"], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(
        second.scores["pooled_distance"]["in"], first.scores["pooled_distance"]["in"]
    )


def test_a_cache_entry_without_layer_statistics_is_refilled_with_them(tmp_path):
    model, (train, id_loader, ood) = tiny_net(), loaders()
    evaluate(model, ["energy"], train, id_loader, ood, cache_dir=tmp_path)
    result = evaluate(model, [PooledDistance()], train, id_loader, ood, cache_dir=tmp_path)
    want = distance_reference(model, all_images(train), all_images(ood["ood"]), LAYERS)
    np.testing.assert_allclose(result.scores["pooled_distance"]["ood"], want, rtol=1e-5, atol=1e-7)


def test_a_model_of_a_built_in_class_reads_its_architectures_default_layers(capsys):
    model, (train, id_loader, ood) = tiny_net(), loaders()
    result = evaluate(model, [PooledDistance()], train, id_loader, ood)
    assert result["pooled_distance"].settings["feature_layers"] == list(LAYERS)
    assert "feature_layers: block1, block2, block3 (densenet's default" in capsys.readouterr().out


def test_an_external_model_without_feature_layers_is_a_user_error_naming_feature_layers():
    (train, id_loader, ood) = loaders(size=8)
    with pytest.raises(UserError, match=r"feature_layers=\[") as error:
        evaluate(TinyConvNet(classes=5), [PooledDistance()], train, id_loader, ood)
    assert "conv1, block1, block2, fc" in str(error.value)  # its top-level modules, to choose from


def test_an_external_models_layers_are_the_feature_layers_given():
    model, (train, id_loader, ood) = TinyConvNet(classes=5), loaders(size=8)
    result = evaluate(model, [PooledDistance()], train, id_loader, ood, feature_layers=["conv1", "block1"])
    want = distance_reference(model, all_images(train), all_images(id_loader), ("conv1", "block1"))
    np.testing.assert_allclose(result.scores["pooled_distance"]["in"], want, rtol=1e-5, atol=1e-7)


def test_fit_loader_and_score_agree_with_evaluate():
    model, (train, id_loader, ood) = tiny_net(), loaders()
    evaluated = evaluate(model, [PooledDistance()], train, id_loader, ood).scores["pooled_distance"]["in"]
    detector = PooledDistance().fit_loader(model, train)
    assert detector.feature_layers_ == LAYERS
    scores = torch.cat([detector.score(model, x) for x, _ in id_loader]).numpy()
    np.testing.assert_allclose(scores, evaluated, rtol=1e-6, atol=1e-7)


def test_fit_loader_reads_the_feature_layers_given_and_score_taps_the_same_modules():
    model, (train, id_loader, _) = tiny_net(), loaders()
    detector = PooledDistance().fit_loader(model, train, feature_layers=["block2", "block3"])
    scores = detector.score(model, all_images(id_loader)).numpy()
    want = distance_reference(model, all_images(train), all_images(id_loader), ("block2", "block3"))
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-7)


def test_nac_statistics_from_python_are_the_command_lines_feature_cache_statistics(tmp_path):
    model, (train, id_loader, ood) = tiny_net(), loaders()
    result = evaluate(model, [NacSum()], train, id_loader, ood, feature_layers=["block2"])
    extractor = FeatureExtractor(model, {"t": 1}, tmp_path, device="cpu", num_workers=0, progress=False)
    extractor.set_taps(TapSpec(("block2",), ("nac",)))
    want = extractor.extract(id_loader.dataset, "in").layers.arrays["nac"][0].astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(result.scores["nac_sum"]["in"], want, rtol=1e-4, atol=1e-7)


def test_a_network_detector_gets_the_training_layers_its_fit_names():
    model, (train, id_loader, ood) = tiny_net(), loaders()
    detector = LayerMeans()
    evaluate(model, [detector], train, id_loader, ood, input_std=(1.0, 1.0, 1.0))
    want = pooled_reference(model, all_images(train), LAYERS)
    assert detector.seen_.names == LAYERS
    for got, ref in zip(detector.seen_.arrays["pooled"], want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_fit_loader_gives_a_network_detector_the_training_layers_its_fit_names():
    model, (train, _, _) = tiny_net(), loaders()
    detector = LayerMeans().fit_loader(model, train, input_std=(1.0, 1.0, 1.0), feature_layers=["block3"])
    want = pooled_reference(model, all_images(train), ("block3",))[0]
    np.testing.assert_allclose(detector.seen_.arrays["pooled"][0], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["gram", "multi_mahalanobis", "nac_ue", "mds_ensemble"])
def test_registered_multi_layer_detectors_run_from_python(method):
    if method not in registry.method_names():
        pytest.skip(f"{method} is not registered")
    model, (train, id_loader, ood) = tiny_net(), loaders()
    result = evaluate(model, [method], train, id_loader, ood)
    assert all(np.isfinite(v).all() for v in result.scores[method].values())
