"""detectors/temp_scaling.py: T minimises the NLL of the labelled training logits (the same T that
the libraries' L-BFGS reaches when run to convergence); the score is max softmax(z / T)."""

import math

import numpy as np
import pytest
import torch
from reference import logits, softmax, synthetic_problem

from detectors import registry
from detectors import temp_scaling as module
from detectors.base import score_features
from detectors.temp_scaling import TemperatureScaling, fit_temperature

C, D = 5, 24


@pytest.fixture(scope="module")
def s():
    """A synthetic problem whose training labels are the head's predictions, a quarter of them
    replaced by random classes (random labels alone leave NLL falling as T grows)."""
    s = synthetic_problem(seed=6, num_classes=C, dim=D, n_train=300, labels=True)
    labels = head_logits(s, s["train"]).argmax(axis=1)
    noisy = np.random.default_rng(1).random(300) < 0.25
    labels[noisy] = s["labels"][noisy]
    return {**s, "labels": labels}


def head_logits(s, rows):
    """float32 logits of the problem's float32 head, as the detector computes them."""
    with torch.no_grad():
        return s["fc"](torch.from_numpy(rows)).numpy()


def reference_nll(t, z, y):
    """mean_i [log sum_c exp(z_ic / T) - z_{i,y_i} / T], a loop in float64."""
    total = 0.0
    for row, label in zip(z.astype(np.float64), y):
        m = max(row / t)
        total += m + math.log(sum(math.exp(v / t - m) for v in row)) - row[label] / t
    return total / len(y)


def fitted(s, **params):
    return TemperatureScaling(**params).fit(s["fc"], s["train"], s["labels"])


def test_the_score_is_the_max_softmax_probability_at_the_fitted_temperature(s):
    detector = fitted(s)
    t = detector.temperature_
    expected = [max(softmax(logits(x, s) / t)) for x in s["test"]]
    scores, _ = score_features(detector, s["test"], chunk=17)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_the_fitted_temperature_minimises_the_nll_on_a_fine_grid(s):
    z = head_logits(s, s["train"])
    t = fitted(s).temperature_
    grid = np.exp(np.linspace(math.log(t) - 0.05, math.log(t) + 0.05, 41))
    nll = [reference_nll(g, z, s["labels"]) for g in grid]
    assert reference_nll(t, z, s["labels"]) <= min(nll) + 1e-12
    # and it is the stationary point: the slope of NLL in log T vanishes there
    eps = 1e-5
    slope = reference_nll(t * math.exp(eps), z, s["labels"]) - reference_nll(
        t * math.exp(-eps), z, s["labels"]
    )
    assert abs(slope / (2 * eps)) < 1e-8


@pytest.mark.parametrize("start", [1.5, 1.0])  # OpenOOD's and pytorch-ood's initial T
def test_lbfgs_on_t_run_to_convergence_reaches_the_same_temperature(s, start):
    z = torch.from_numpy(head_logits(s, s["train"])).double()
    y = torch.from_numpy(s["labels"])
    t = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimiser = torch.optim.LBFGS(
        [t], lr=1, max_iter=100, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14
    )

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / t, y)
        loss.backward()
        return loss

    optimiser.step(closure)
    assert fitted(s).temperature_ == pytest.approx(t.item(), rel=1e-7)


def lbfgs_as_the_libraries(z, y, start):
    """T by the libraries' settings: L-BFGS on T, float32, lr 0.01, at most 50 iterations."""
    z, y = torch.from_numpy(z), torch.from_numpy(y)
    t = torch.nn.Parameter(torch.tensor(start))
    optimiser = torch.optim.LBFGS([t], lr=0.01, max_iter=50)

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / t, y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return t.item()


def test_the_nll_at_the_fit_is_lower_than_after_the_libraries_50_lbfgs_steps():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 400)
    z = rng.normal(0, 1, (400, 10))
    z[np.arange(400), y] += 2.0
    z = (10 * z).astype(np.float32)  # T near 5: lr 0.01 moves T too slowly to get there in 50 steps
    t = fit_temperature(z, y)
    for start in (1.5, 1.0):
        theirs = lbfgs_as_the_libraries(z, y, start)
        assert theirs < 0.5 * t and reference_nll(t, z, y) < reference_nll(theirs, z, y) - 0.1


def test_scaling_the_logits_by_a_scales_the_temperature_by_a(s):
    z = head_logits(s, s["train"]).astype(np.float64)
    t = fit_temperature(z, s["labels"])
    assert fit_temperature(4.0 * z, s["labels"]) == pytest.approx(4.0 * t, rel=1e-10)


def test_the_fit_does_not_depend_on_the_block_size(s, monkeypatch):
    t = fitted(s).temperature_
    monkeypatch.setattr(module, "CHUNK", 7)
    assert fitted(s).temperature_ == pytest.approx(t, rel=1e-12)


def test_a_fraction_fits_on_the_seeded_subset_and_reads_a_memory_mapped_file(s, tmp_path):
    path = tmp_path / "train.npy"
    np.save(path, s["train"])
    mapped = np.load(path, mmap_mode="r")
    detector = TemperatureScaling(fraction=0.5, seed=3).fit(s["fc"], mapped, s["labels"])
    keep = np.sort(np.random.default_rng(3).choice(300, 150, replace=False))
    subset = TemperatureScaling().fit(s["fc"], s["train"][keep], s["labels"][keep])
    assert detector.temperature_ == subset.temperature_
    assert (
        TemperatureScaling(fraction=0.5, seed=4).fit(s["fc"], mapped, s["labels"]).temperature_
        != subset.temperature_
    )


def test_a_given_temperature_needs_no_statistics_and_t_1_is_msp(s):
    detector = registry.build("temp_scaling", "CIFAR-10", {"temperature": 1.0})
    assert detector.needs() == () and detector.inert_params() == {"fraction", "seed"}
    ours, _ = score_features(detector.fit(s["fc"]), s["test"])
    msp, _ = score_features(registry.build("msp", "CIFAR-10").fit(s["fc"]), s["test"])
    np.testing.assert_array_equal(ours, msp)
    assert registry.build("temp_scaling", "CIFAR-10").needs() == ("train_features", "train_labels")


def test_the_fit_records_the_temperature_and_the_nll_before_and_after(s):
    values = fitted(s).fitted_values()
    assert set(values) == {"temperature_", "nll_at_1_", "nll_"} and values["nll_"] <= values["nll_at_1_"]
    z = head_logits(s, s["train"])
    assert values["nll_"] == pytest.approx(reference_nll(values["temperature_"], z, s["labels"]), rel=1e-12)


def test_training_images_all_classified_correctly_have_no_minimiser_and_name_the_flag(s):
    predicted = head_logits(s, s["train"]).argmax(axis=1)
    with pytest.raises(
        ValueError, match=r"falls below 0.0001 \(0 misclassified\).*--temp-scaling-temperature"
    ):
        TemperatureScaling().fit(s["fc"], s["train"], predicted)


def test_labels_no_better_than_the_mean_logit_have_no_minimiser(s):
    worst = head_logits(s, s["train"]).argmin(axis=1)
    with pytest.raises(ValueError, match="rises above 10000.*--temp-scaling-temperature"):
        TemperatureScaling().fit(s["fc"], s["train"], worst)


@pytest.mark.parametrize(
    "params", [{"temperature": 0.0}, {"temperature": -1.0}, {"fraction": 0.0}, {"fraction": 1.5}]
)
def test_a_temperature_or_fraction_out_of_range_is_refused(params):
    with pytest.raises(ValueError, match="temp_scaling"):
        TemperatureScaling(**params).check_params()


def test_imagenet_fits_on_two_percent_of_the_training_images_about_the_papers_25000():
    assert registry.build("temp_scaling", "imagenet").fraction == 0.02
    assert registry.build("temp_scaling", "CIFAR-10").fraction == 1.0
