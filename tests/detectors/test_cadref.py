"""CARef and CADRef (detectors/cadref.py) against plain float64 loop references written here.

Synthetic data as reference.synthetic_problem: non-negative continuous features, a random head, and
labels independent of the head, so that most training labels differ from the predicted classes.
"""

import numpy as np
import pytest
import torch
from reference import synthetic_problem

from detectors.base import score_features
from detectors.cadref import CADRef, CARef

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return synthetic_problem(num_classes=C, dim=D, labels=True)


def fitted(detector, s, fc=None):
    return detector.fit(fc or s["fc"], train_features=s["train"], train_labels=s["labels"])


def predicted(x, W, b):
    return int(np.argmax(W @ x.astype(np.float64) + b))


def class_means_by_prediction(s):
    """m_k: the mean of the training rows whose predicted class is k (loop)."""
    groups = {k: [] for k in range(C)}
    for x in s["train"]:
        groups[predicted(x, s["W"], s["b"])].append(x.astype(np.float64))
    assert all(groups.values()), "every class should be predicted for some training row here"
    return {k: np.mean(rows, axis=0) for k, rows in groups.items()}


def logit_score_ref(v, kind):
    v = np.asarray(v, dtype=np.float64)
    m = v.max()
    if kind == "energy":
        return m + np.log(sum(np.exp(t - m) for t in v))
    if kind == "maxlogit":
        return m
    p = np.exp(v - m) / sum(np.exp(t - m) for t in v)
    if kind == "msp":
        return p.max()
    top = sorted(p)[-min(max(len(v) // 10, 10), len(v)) :]
    return 1.0 / sum(q**0.1 * (1 - q) ** 0.1 for q in top)


def caref_ref(s):
    means = class_means_by_prediction(s)
    out = []
    for x in s["test"].astype(np.float64):
        m = means[predicted(x, s["W"], s["b"])]
        out.append(-sum(abs(x[j] - m[j]) for j in range(D)) / sum(abs(t) for t in x))
    return np.array(out)


def cadref_ref(s, kind):
    means = class_means_by_prediction(s)
    train_mean = np.mean([logit_score_ref(s["W"] @ x.astype(np.float64) + s["b"], kind) for x in s["train"]])
    out = []
    for x in s["test"].astype(np.float64):
        k = predicted(x, s["W"], s["b"])
        positive = negative = 0.0
        for j in range(D):
            dev = x[j] - means[k][j]
            if dev * s["W"][k, j] > 0:
                positive += abs(dev)
            elif dev * s["W"][k, j] < 0:
                negative += abs(dev)
        norm = sum(abs(t) for t in x)
        z = s["W"] @ x + s["b"]
        out.append(-(positive / norm / logit_score_ref(z, kind) + negative / norm / train_mean))
    return np.array(out)


def test_caref_is_minus_the_relative_l1_error_to_the_predicted_class_mean(setup):
    det = fitted(CARef(), setup)
    scores, preds = score_features(det, setup["test"], chunk=17)
    np.testing.assert_allclose(scores, caref_ref(setup), rtol=1e-9)
    assert list(preds) == [predicted(x, setup["W"], setup["b"]) for x in setup["test"]]


def test_class_aware_means_group_training_features_by_prediction_not_label(setup):
    det = fitted(CARef(), setup)
    means = class_means_by_prediction(setup)
    for k in range(C):
        np.testing.assert_allclose(det.means_[k].numpy(), means[k], rtol=1e-12)
        by_label = setup["train"][setup["labels"] == k].astype(np.float64).mean(0)
        assert not np.allclose(det.means_[k].numpy(), by_label)
    assert det.unpredicted_classes_ == 0


@pytest.mark.parametrize("kind", ["energy", "maxlogit", "msp", "gen"])
def test_cadref_scales_positive_error_by_the_sample_and_negative_by_the_training_logit_score(setup, kind):
    det = fitted(CADRef(logit_score=kind), setup)
    scores, _ = score_features(det, setup["test"], chunk=17)
    np.testing.assert_allclose(scores, cadref_ref(setup, kind), rtol=1e-9)


def test_cadref_default_logit_score_is_energy():
    assert CADRef().logit_score == "energy"
    assert CADRef.defaults == {}


def test_cadref_training_logit_score_is_the_mean_over_all_training_samples(setup):
    det = fitted(CADRef(), setup)
    expected = np.mean([logit_score_ref(setup["W"] @ x + setup["b"], "energy") for x in setup["train"]])
    assert det.fitted_values()["train_logit_score_mean"] == pytest.approx(expected, rel=1e-12)


def test_cadref_decoupled_errors_add_up_to_the_caref_error(setup):
    det = fitted(CADRef(), setup)
    h = torch.from_numpy(setup["test"])
    positive, negative, _ = det.decoupled_errors(h)
    caref, _ = fitted(CARef(), setup).score_batch(h)
    assert torch.all(positive > 0) and torch.all(negative > 0)
    torch.testing.assert_close(positive + negative, -caref, rtol=1e-12, atol=0)


def test_cadref_logit_score_changes_without_refitting(setup):
    det = fitted(CADRef(), setup)
    other = det.with_params(logit_score="msp")
    assert other.means_ is det.means_ and other.logit_score == "msp"
    scores, _ = score_features(other, setup["test"], chunk=17)
    np.testing.assert_allclose(scores, cadref_ref(setup, "msp"), rtol=1e-9)


def test_a_class_never_predicted_on_training_data_falls_back_to_its_label_mean(setup):
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(setup["fc"].weight)
        fc.bias.copy_(setup["fc"].bias)
        fc.bias[C - 1] = -1e3  # class C-1 is never predicted
    det = fitted(CARef(), setup, fc=fc)
    assert det.unpredicted_classes_ == 1
    by_label = setup["train"][setup["labels"] == C - 1].astype(np.float64).mean(0)
    np.testing.assert_allclose(det.means_[C - 1].numpy(), by_label, rtol=1e-12)


def test_fit_fails_for_a_class_neither_predicted_nor_labelled(setup):
    fc = torch.nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(setup["fc"].weight)
        fc.bias.copy_(setup["fc"].bias)
        fc.bias[C - 1] = -1e3
    keep = setup["labels"] != C - 1
    with pytest.raises(ValueError, match="neither predicted"):
        CARef().fit(fc, train_features=setup["train"][keep], train_labels=setup["labels"][keep])


@pytest.mark.parametrize("make", [CARef, CADRef])
def test_an_empty_batch_gives_no_scores(setup, make):
    det = fitted(make(), setup)
    scores, preds = score_features(det, np.zeros((0, D), np.float32), chunk=17)
    assert scores.shape == (0,) and preds.shape == (0,)
    s, z = det.score_batch(torch.zeros(0, D))
    assert s.shape == (0,) and z.shape == (0, C)


@pytest.mark.parametrize("make", [CARef, CADRef])
def test_an_all_zero_feature_gets_a_finite_score_below_every_other(setup, make):
    det = fitted(make(), setup)
    rows = np.vstack([setup["test"], np.zeros((1, D), np.float32)])
    scores, _ = score_features(det, rows, chunk=17)
    assert np.all(np.isfinite(scores)) and scores[-1] < scores[:-1].min()


@pytest.mark.parametrize("make", [CARef, CADRef])
def test_scores_do_not_depend_on_the_chunk_size(setup, make):
    det = fitted(make(), setup)
    one, _ = score_features(det, setup["test"], chunk=1)
    whole, _ = score_features(det, setup["test"], chunk=1000)
    np.testing.assert_allclose(one, whole, rtol=1e-12)  # float64 BLAS blocking only


def test_unknown_logit_score_is_rejected(setup):
    with pytest.raises(ValueError, match="choose from energy, maxlogit, msp, gen"):
        fitted(CADRef(logit_score="odin"), setup)


def test_needs_are_the_training_features_and_labels(setup):
    assert CARef().needs() == ("train_features", "train_labels")
    assert CADRef().needs() == ("train_features", "train_labels")
    assert CADRef.search_space(D) == {"logit_score": ("energy", "maxlogit", "msp", "gen")}


def test_fitting_from_a_memory_mapped_file_gives_the_same_state(setup, tmp_path):
    np.save(tmp_path / "train.npy", setup["train"])
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    det = CADRef().fit(setup["fc"], train_features=mapped, train_labels=setup["labels"])
    ref = fitted(CADRef(), setup)
    torch.testing.assert_close(det.means_, ref.means_, rtol=1e-12, atol=0)
    assert det.train_logit_scores_ == pytest.approx(ref.train_logit_scores_, rel=1e-12)
