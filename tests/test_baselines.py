"""Post-hoc baselines (detectors/) against plain numpy / loop references written here.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties).
"""

import numpy as np
import pytest
import torch
from reference import logsumexp
from sklearn.covariance import EmpiricalCovariance

from detectors import ASH, KNN, SCALE, GradNorm, LINe, Mahalanobis, ReAct, ViM, score_features
from detectors.gradnorm import gradnorm_network_scores
from detectors.vim import default_principal_dim
from models.route import RouteLINe

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    fc = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(rng.normal(0, 0.5, (C, D))))
        fc.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, C)))
    fc = fc.float()
    W = fc.weight.detach().double().numpy()
    b = fc.bias.detach().double().numpy()
    train = np.maximum(rng.normal(0.3, 1.0, (400, D)), 0).astype(np.float32) + rng.uniform(
        0, 1e-3, (400, D)
    ).astype(np.float32)
    labels = rng.integers(0, C, 400)
    labels[:C] = np.arange(C)
    test = np.maximum(rng.normal(0.3, 1.2, (60, D)), 0).astype(np.float32) + rng.uniform(
        0, 1e-3, (60, D)
    ).astype(np.float32)
    contrib = np.array([(train[labels == c] * W[c]).mean(0) for c in range(C)])
    stats = dict(train_features=train, train_labels=labels, contributions=contrib)
    return dict(fc=fc, W=W, b=b, train=train, labels=labels, test=test, contrib=contrib, stats=stats)


def fitted(detector, s, fc=None):
    """``detector`` fitted on the head and the statistics its ``fit`` asks for."""
    return detector.fit(fc if fc is not None else s["fc"], **{k: s["stats"][k] for k in detector.needs()})


def scores_of(detector, s):
    fitted(detector, s)
    return score_features(detector, s["test"], chunk=17)


def energy_ref(rows, W, b):
    return np.array([logsumexp(W @ x + b) for x in rows])


def test_react_clips_at_the_percentile_of_all_training_activations(setup):
    s = setup
    tau = np.percentile(s["train"].astype(np.float64), 85)
    det = ReAct(percentile=85)
    scores, _ = scores_of(det, s)
    assert det.threshold_ == tau and det.clip_threshold is None  # fit sets only fitted state
    expected = energy_ref([np.minimum(x.astype(np.float64), tau) for x in s["test"]], s["W"], s["b"])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def ash_ref(x, p, variant):
    x = x.astype(np.float64)
    k = len(x) - int(round(len(x) * p / 100))
    order = np.argsort(-x)
    kept = np.zeros_like(x)
    for j in order[:k]:
        kept[j] = x[j]
    if variant == "p":
        return kept
    if variant == "b":
        return np.array([x.sum() / k if j in order[:k] else 0.0 for j in range(len(x))])
    return kept * np.exp(x.sum() / kept.sum())


@pytest.mark.parametrize("variant,p", [("p", 90), ("b", 90), ("s", 95), ("s", 60), ("b", 33)])
def test_ash_variants_match_a_per_sample_sort_reference(setup, variant, p):
    s = setup
    scores, preds = scores_of(ASH(variant, p), s)
    shaped = [ash_ref(x, p, variant) for x in s["test"]]
    np.testing.assert_allclose(scores, energy_ref(shaped, s["W"], s["b"]), rtol=1e-5)
    np.testing.assert_array_equal(preds, [np.argmax(s["W"] @ x + s["b"]) for x in shaped])


def test_ash_defaults_are_90_for_p_and_b_and_95_for_s():
    assert (ASH("p").percentile, ASH("b").percentile, ASH("s").percentile) == (90, 90, 95)
    with pytest.raises(ValueError, match="variant"):
        ASH("x")


def test_scale_keeps_every_activation_and_scales_by_exp_s1_over_s2(setup):
    s = setup
    p = 85
    scores, _ = scores_of(SCALE(p), s)
    expected = []
    for x in s["test"].astype(np.float64):
        k = D - int(round(D * p / 100))
        s2 = sum(sorted(x, reverse=True)[:k])
        expected.append(logsumexp(s["W"] @ (x * np.exp(x.sum() / s2)) + s["b"]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_mahalanobis_is_minus_the_smallest_class_distance_with_tied_covariance(setup):
    s = setup
    scores, preds = scores_of(Mahalanobis(), s)
    X, y = s["train"].astype(np.float64), s["labels"]
    means = np.array([X[y == c].mean(0) for c in range(C)])
    precision = EmpiricalCovariance(assume_centered=False).fit(X - means[y]).precision_
    expected = [
        -min((x - means[c]) @ precision @ (x - means[c]) for c in range(C))
        for x in s["test"].astype(np.float64)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_is_minus_the_distance_to_the_kth_normalised_training_neighbour(setup, k):
    s = setup
    det = KNN(k=k, block=13)
    scores, _ = scores_of(det, s)
    bank = [t / (np.linalg.norm(t) + 1e-10) for t in s["train"].astype(np.float64)]
    expected = []
    for x in s["test"].astype(np.float64):
        z = x / (np.linalg.norm(x) + 1e-10)
        expected.append(-sorted(np.linalg.norm(z - t) for t in bank)[k - 1])
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_streams_a_bank_too_large_for_memory_from_its_file_with_the_same_scores(
    setup, k, tmp_path, monkeypatch
):
    import detectors.knn as knn_module

    s = setup
    path = tmp_path / "train.npy"
    np.save(path, s["train"])
    bank = np.load(path, mmap_mode="r")  # as the feature cache returns it
    in_memory = KNN(k=k).fit(fitted(KNN(k=k), s).fc_, train_features=bank)
    monkeypatch.setattr(knn_module, "MAX_BANK_BYTES", 1000)  # force streaming
    monkeypatch.setattr(knn_module, "BANK_ROWS", 37)  # several blocks, the last one partial
    streamed = KNN(k=k).fit(in_memory.fc_, train_features=bank)
    assert streamed.bank_ is bank and streamed.bank_norm_.shape == (len(bank),)
    expected, _ = score_features(in_memory, s["test"])
    got, _ = score_features(streamed, s["test"])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_knn_fraction_uses_that_share_of_the_training_set(setup):
    det = fitted(KNN(k=3, fraction=0.25), setup)
    assert det.bank_.shape == (100, D)


def test_vim_is_energy_minus_alpha_times_the_residual_norm(setup):
    s = setup
    dim = 10
    scores, _ = scores_of(ViM(dim=dim), s)
    W, b, X = s["W"], s["b"], s["train"].astype(np.float64)
    u = -np.linalg.pinv(W) @ b
    cov = EmpiricalCovariance(assume_centered=True).fit(X - u).covariance_
    vals, vecs = np.linalg.eig(cov)
    residual_basis = vecs.real[:, np.argsort(-vals.real)[dim:]]
    alpha = np.mean([max(W @ x + b) for x in X]) / np.mean(
        [np.linalg.norm((x - u) @ residual_basis) for x in X]
    )
    expected = [
        logsumexp(W @ x + b) - alpha * np.linalg.norm((x - u) @ residual_basis)
        for x in s["test"].astype(np.float64)
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


def test_vim_default_principal_dim_follows_the_feature_size():
    assert [default_principal_dim(d) for d in (2048, 1024, 768, 342)] == [1000, 512, 512, 171]


def test_gradnorm_from_features_equals_the_autograd_weight_gradient_l1_norm(setup):
    s = setup
    for temperature in (1.0, 3.0):
        scores, _ = scores_of(GradNorm(temperature), s)
        expected = []
        for x in s["test"]:
            fc = torch.nn.Linear(D, C).double()
            fc.load_state_dict({k: v.double() for k, v in s["fc"].state_dict().items()})
            z = fc(torch.from_numpy(x.astype(np.float64))[None])
            target = torch.full((1, C), 1.0 / C, dtype=torch.float64)
            loss = torch.sum(-target * torch.log_softmax(z / temperature, dim=1))
            loss.backward()
            expected.append(fc.weight.grad.abs().sum().item())
        np.testing.assert_allclose(scores, expected, rtol=1e-5)


class _TinyNet(torch.nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, D), torch.nn.ReLU())
        self.fc = fc

    def forward_features(self, x):
        return self.body(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.forward_features(x))


def test_gradnorm_network_scores_equal_the_feature_formula(setup):
    torch.manual_seed(0)
    net = _TinyNet(torch.nn.Linear(D, C)).eval()
    images = torch.randn(9, 3, 2, 2)
    network = gradnorm_network_scores(net, images).numpy()
    with torch.no_grad():
        h = net.forward_features(images).numpy()
    det = GradNorm().fit(net.get_classifier())
    from_features, _ = score_features(det, h)
    np.testing.assert_allclose(network, from_features, rtol=1e-5)


def line_ref(h, W, b, contrib, p_w, p_a, tau, ac, ap, wp):
    rows = []
    for x in h.astype(np.float64):
        x = np.minimum(x, tau) if ac else x
        c = int(np.argmax(W @ x + b))
        ap_mask = contrib[c] > np.percentile(contrib[c], p_a) if ap else np.ones(D, bool)
        R = np.abs(contrib[c])[None, :] * W
        wp_mask = R > np.percentile(R, p_w) if wp else np.ones((C, D), bool)
        logits = [
            sum(W[k, j] * x[j] for j in range(D) if wp_mask[k, j] and ap_mask[j]) + b[k] for k in range(C)
        ]
        rows.append(logsumexp(logits))
    return np.array(rows)


@pytest.mark.parametrize("ac", [True, False])
@pytest.mark.parametrize("ap", [True, False])
@pytest.mark.parametrize("wp", [True, False])
def test_line_ablation_switches_each_component_off(setup, ac, ap, wp):
    s = setup
    det = LINe(
        p_w=70, p_a=40, clip_threshold=0.8, activation_clipping=ac, activation_pruning=ap, weight_pruning=wp
    )
    scores, _ = scores_of(det, s)
    expected = line_ref(s["test"], s["W"], s["b"], s["contrib"], 70, 40, 0.8, ac, ap, wp)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make", [lambda: LINe(p_w=10, p_a=10), lambda: ReAct(clip_threshold=1.0), lambda: ViM(), lambda: KNN()]
)
def test_fitting_a_detector_leaves_the_given_head_where_and_as_it_was(setup, make):
    """The model's head keeps extracting features (on the GPU) after detectors are fitted."""
    fc = torch.nn.Linear(D, C).double()
    with torch.no_grad():
        fc.weight.copy_(setup["fc"].weight)
        fc.bias.copy_(setup["fc"].bias)
    weight = fc.weight
    detector = fitted(make(), setup, fc)
    assert fc.weight is weight and fc.weight.dtype == torch.float64
    assert detector.fc_ is not fc and detector.fc_.weight.dtype == torch.float32
    torch.testing.assert_close(detector.fc_.weight, fc.weight.float())


def test_class_mean_contributions_leave_the_given_head_as_it_was(setup):
    from detectors.statistics import class_mean_contributions

    fc = torch.nn.Linear(D, C).double()
    class_mean_contributions(fc, setup["train"], setup["labels"])
    assert fc.weight.dtype == torch.float64


@pytest.mark.parametrize("ap,wp", [(True, False), (False, True), (False, False)])
def test_line_ablations_are_masks_of_the_one_route_line_layer(setup, ap, wp):
    """AP off = an all-true AP mask, WP off = no weight cut; the layer is still RouteLINe."""
    det = fitted(LINe(p_w=10, p_a=10, activation_pruning=ap, weight_pruning=wp), setup)
    full = fitted(LINe(p_w=10, p_a=10), setup)
    assert isinstance(det.route_, RouteLINe)
    if ap:
        assert torch.equal(det.route_.ap_mask, full.route_.ap_mask)
    else:
        assert bool(det.route_.ap_mask.all())
    for c in range(C):
        expected = full.route_.weight_mask(c) if wp else torch.ones(C, D, dtype=torch.bool)
        assert torch.equal(det.route_.weight_mask(c), expected)


def test_line_without_clipping_clips_at_infinity(setup):
    det = LINe(clip_threshold=0.5, activation_clipping=False)
    assert det.tau == float("inf") and LINe(clip_threshold=0.5).tau == 0.5


@pytest.mark.parametrize("p", [0, 37.5, 90, 99.9, 100])
def test_react_percentile_over_a_memory_mapped_file_equals_numpy_percentile_of_the_float64_copy(tmp_path, p):
    rng = np.random.default_rng(3)
    train = np.maximum(rng.normal(0, 1, (5003, 17)), 0).astype(np.float32)  # half exact zeros: ties
    train[::7, 3] = np.round(train[::7, 3], 1)
    np.save(tmp_path / "features.npy", train)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    det = ReAct(percentile=p).fit(torch.nn.Linear(17, 3), train_features=mapped)
    assert det.threshold_ == np.percentile(train.astype(np.float64), p)


def test_row_blocks_of_a_memory_mapped_file_are_the_rows_in_order(tmp_path):
    from util.io import row_blocks

    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(np.concatenate(list(row_blocks(mapped, 64))), x)
    np.testing.assert_array_equal(np.concatenate(list(row_blocks(mapped[10:], 64))), x[10:])


def test_take_rows_of_a_memory_mapped_file_are_those_rows_in_that_order(tmp_path):
    from util.io import take_rows

    x = np.random.default_rng(1).normal(size=(300, 9)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = np.array([299, 0, 17, 17, 150])
    got = take_rows(mapped, rows)
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x[rows])
    np.testing.assert_array_equal(take_rows(x, rows), x[rows])


def test_knn_fraction_of_a_memory_mapped_bank_keeps_the_same_rows_as_of_an_array(setup, tmp_path):
    s = setup
    np.save(tmp_path / "train.npy", s["train"])
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    from_array = fitted(KNN(k=3, fraction=0.25), s)
    from_file = KNN(k=3, fraction=0.25).fit(s["fc"], train_features=mapped)
    torch.testing.assert_close(from_file.bank_, from_array.bank_, rtol=0, atol=0)
