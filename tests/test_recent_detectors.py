"""MaxLogit, GEN, KL-Matching, Relative Mahalanobis, SHE, NNGuide, fDBD, NECO and BATS against plain
references written here: loops over samples and classes, float64, the papers' formulas.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties).
"""

import numpy as np
import pytest
import scipy.stats
import torch
from reference import synthetic_problem
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from detectors import registry
from detectors.base import score_features
from detectors.bats import BATS
from detectors.fdbd import FDBD
from detectors.gen import GEN
from detectors.kl_matching import KLMatching
from detectors.maxlogit import MaxLogit
from detectors.neco import NECO
from detectors.nnguide import NNGuide
from detectors.rmds import RelativeMahalanobis
from detectors.she import SHE
from models.heads import last_batchnorm

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    return synthetic_problem(seed=3, num_classes=C, dim=D, labels=True)


def scores_of(detector, s, **stats):
    given = {"train_features": s["train"], "train_labels": s["labels"], **stats}
    detector.fit(s["fc"], **{k: given[k] for k in detector.needs()})
    return score_features(detector, s["test"], chunk=17)[0]


def logits(x, s):
    return s["W"] @ np.asarray(x, np.float64) + s["b"]


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


# -- logit-based -------------------------------------------------------------------------------
def test_maxlogit_is_the_largest_logit(s):
    expected = [max(logits(x, s)) for x in s["test"]]
    np.testing.assert_allclose(scores_of(MaxLogit(), s), expected, rtol=1e-6, atol=1e-6)  # float32 head


@pytest.mark.parametrize("gamma, m", [(0.1, 100), (0.5, 3), (2.0, 1)])
def test_gen_is_minus_the_generalized_entropy_of_the_m_largest_probabilities(s, gamma, m):
    expected = []
    for x in s["test"]:
        p = sorted(softmax(logits(x, s)), reverse=True)[: min(m, C)]
        expected.append(-sum(q**gamma * (1 - q) ** gamma for q in p))
    # The head runs in float32: (1 - p) of a confident p carries its rounding, hence 1e-5.
    np.testing.assert_allclose(scores_of(GEN(gamma, m), s), expected, rtol=1e-5, atol=1e-10)


def test_gen_defaults_are_the_papers_gamma_and_m():
    assert (GEN().gamma, GEN().m) == (0.1, 100)


def test_kl_matching_is_minus_the_smallest_kl_to_the_mean_softmax_of_each_predicted_class(s):
    probs = np.array([softmax(logits(x, s)) for x in s["train"]])
    preds = probs.argmax(1)
    templates = [probs[preds == c].mean(0) if (preds == c).any() else np.eye(C)[c] for c in range(C)]
    expected = []
    for x in s["test"]:
        p = softmax(logits(x, s))
        expected.append(-min(scipy.stats.entropy(p, d) for d in templates))
    np.testing.assert_allclose(scores_of(KLMatching(), s), expected, rtol=1e-6)


def test_kl_matching_gives_a_never_predicted_class_the_one_hot_template(s):
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(s["W"]))
        fc.bias.copy_(torch.tensor([0, 0, 0, 0, -1e4]))  # class 4 is never predicted
    detector = KLMatching().fit(fc, s["train"])
    assert detector.classes_never_predicted_ == 1
    np.testing.assert_array_equal(detector.templates_[4].numpy(), np.eye(C)[4])
    assert np.isfinite(score_features(detector, s["test"])[0]).all()


# -- feature-based -----------------------------------------------------------------------------
def test_relative_mahalanobis_is_the_background_distance_minus_the_smallest_class_distance(s):
    x, y = s["train"].astype(np.float64), s["labels"]
    means = [x[y == c].mean(0) for c in range(C)]
    tied = EmpiricalCovariance().fit(np.concatenate([x[y == c] - means[c] for c in range(C)]))
    whole = EmpiricalCovariance().fit(x)
    expected = []
    for h in s["test"].astype(np.float64):
        md0 = (h - whole.location_) @ whole.precision_ @ (h - whole.location_)
        expected.append(max(-(h - m) @ tied.precision_ @ (h - m) + md0 for m in means))
    np.testing.assert_allclose(scores_of(RelativeMahalanobis(), s), expected, rtol=1e-6)


def test_she_is_the_inner_product_with_the_mean_of_correctly_classified_training_features(s):
    x, y = s["train"].astype(np.float64), s["labels"]
    pred = np.array([np.argmax(logits(h, s)) for h in x])
    right = [(y == c) & (pred == c) for c in range(C)]
    assert sum(r.any() for r in right) >= 3  # most classes have correctly classified images
    patterns = [x[r].mean(0) if r.any() else x[y == c].mean(0) for c, r in enumerate(right)]
    expected = [h @ patterns[int(np.argmax(logits(h, s)))] for h in s["test"].astype(np.float64)]
    np.testing.assert_allclose(scores_of(SHE(), s), expected, rtol=1e-6)


def test_she_falls_back_to_the_class_mean_for_a_class_never_classified_correctly(s):
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(s["W"]))
        fc.bias.copy_(torch.tensor([0, 0, 0, 0, -1e4]))
    detector = SHE().fit(fc, s["train"], s["labels"])
    assert detector.classes_without_correct_images_ == 1
    np.testing.assert_allclose(
        detector.patterns_[4].numpy(), s["train"][s["labels"] == 4].astype(np.float64).mean(0)
    )


@pytest.mark.parametrize("k, fraction", [(5, 1.0), (3, 0.25)])
def test_nnguide_is_energy_times_the_mean_top_k_similarity_to_the_confidence_scaled_bank(s, k, fraction):
    detector = NNGuide(k=k, fraction=fraction, seed=4)
    scores = scores_of(detector, s)
    n = len(s["train"])
    count = round(fraction * n)
    rows = np.sort(np.random.default_rng(4).choice(n, count, False)) if count < n else np.arange(n)
    energy = lambda h: scipy.special.logsumexp(logits(h, s))  # noqa: E731
    bank = [h / np.linalg.norm(h) * energy(h) for h in s["train"][rows].astype(np.float64)]
    expected = []
    for h in s["test"].astype(np.float64):
        sims = sorted((h / np.linalg.norm(h) @ g for g in bank), reverse=True)
        expected.append(energy(h) * np.mean(sims[:k]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_nnguide_refuses_k_above_the_bank(s):
    detector = NNGuide(k=50, fraction=0.1).fit(s["fc"], s["train"])
    with pytest.raises(ValueError, match="k = 50 exceeds the bank of 40"):
        score_features(detector, s["test"])


@pytest.mark.parametrize("normalizer", ["distance", "norm"])
def test_fdbd_is_the_mean_boundary_distance_over_the_other_classes_over_the_feature_distance(s, normalizer):
    mu = s["train"].astype(np.float64).mean(0)
    W = s["W"]
    expected = []
    for h in s["test"].astype(np.float64):
        z = logits(h, s)
        y = int(np.argmax(z))
        dist = [abs(z[y] - z[c]) / np.linalg.norm(W[y] - W[c]) for c in range(C) if c != y]
        expected.append(np.mean(dist) / np.linalg.norm(h - mu if normalizer == "distance" else h))
    np.testing.assert_allclose(scores_of(FDBD(normalizer), s), expected, rtol=1e-6)


@pytest.mark.parametrize("dim, maxlogit", [(None, False), (7, False), (3, True)])
def test_neco_is_the_norm_ratio_of_the_leading_principal_projection_of_standardised_features(
    s, dim, maxlogit
):
    scaler = StandardScaler().fit(s["train"].astype(np.float64))
    pca = PCA(D).fit(scaler.transform(s["train"].astype(np.float64)))
    d = C - 1 if dim is None else dim
    expected = []
    for h in s["test"].astype(np.float64):
        x = scaler.transform(h[None])[0]
        score = np.linalg.norm(pca.transform(x[None])[0, :d]) / np.linalg.norm(x)
        expected.append(score * max(logits(h, s)) if maxlogit else score)
    np.testing.assert_allclose(scores_of(NECO(dim, maxlogit), s), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [0.5, 1.05, 3.25])
def test_bats_is_energy_of_features_truncated_to_the_batchnorm_typical_set(s, lam):
    rng = np.random.default_rng(5)
    beta, gamma = rng.uniform(0.2, 0.8, D), rng.normal(0, 0.4, D)
    expected = []
    for h in s["test"].astype(np.float64):
        t = [
            min(max(v, beta[j] - lam * abs(gamma[j])), beta[j] + lam * abs(gamma[j])) for j, v in enumerate(h)
        ]
        expected.append(scipy.special.logsumexp(logits(t, s)))
    np.testing.assert_allclose(scores_of(BATS(lam), s, batchnorm=(beta, gamma)), expected, rtol=1e-6)


def test_bats_defaults_are_the_authors_lambda_per_dataset():
    assert registry.build("bats", "CIFAR-10").lam == 3.25 and registry.build("bats", "imagenet").lam == 1.05


def test_the_last_batchnorm_with_the_feature_width_is_found_in_the_densenet():
    from models.densenet import DenseNet3

    model = DenseNet3(10, 10)
    name, bn = last_batchnorm(model, model.get_classifier().in_features)
    assert name == "bn1" and bn.num_features == model.get_classifier().in_features
    assert last_batchnorm(torch.nn.Sequential(torch.nn.Linear(3, 3)), 3) is None


def test_bats_with_feature_statistics_truncates_to_the_training_mean_plus_minus_lambda_std(s):
    x = s["train"].astype(np.float64)
    m, sd, lam = x.mean(0), x.std(0), 1.5
    expected = [
        scipy.special.logsumexp(logits(np.clip(h, m - lam * sd, m + lam * sd), s))
        for h in s["test"].astype(np.float64)
    ]
    detector = BATS(lam, statistics="features")
    assert detector.needs() == ("train_features",)
    np.testing.assert_allclose(scores_of(detector, s), expected, rtol=1e-6)


def test_the_training_statistics_give_bats_beta_and_gamma_of_the_models_last_batchnorm():
    from types import SimpleNamespace

    from models.densenet import DenseNet3
    from pipeline.statistics import TrainingStatistics
    from util.errors import UserError

    model = DenseNet3(10, 10)
    with torch.no_grad():
        model.bn1.weight.uniform_(-1, 1)
        model.bn1.bias.uniform_(-1, 1)
    d = model.get_classifier().in_features
    config = SimpleNamespace(model_arch="densenet")
    stats = TrainingStatistics(config, {}, 10, d, extract_train=None, model=model)
    beta, gamma = stats.for_detector(BATS())["batchnorm"]
    np.testing.assert_array_equal(beta, model.bn1.bias.detach().double().numpy())
    np.testing.assert_array_equal(gamma, model.bn1.weight.detach().double().numpy())
    no_bn = TrainingStatistics(config, {}, 10, d, extract_train=None, model=torch.nn.Linear(d, 10))
    with pytest.raises(
        UserError, match=f"bats needs a BatchNorm layer with {d} channels .* densenet has none"
    ):
        no_bn.get("batchnorm")
