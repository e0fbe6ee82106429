"""WeiPer (detectors/weiper.py) against a plain loop reference written here.

Synthetic features: non-negative like post-ReLU penultimate features, continuous (no ties).
"""

import numpy as np
import pytest
import torch
from reference import synthetic_problem

from detectors.base import score_features
from detectors.weiper import WeiPer

C, D = 5, 24
SMALL = dict(r=7, delta=1.8, n_bins=12, lambda_1=1.5, lambda_2=0.7, s1=3, s2=4, seed=11)


@pytest.fixture(scope="module")
def setup():
    s = synthetic_problem(num_classes=C, dim=D)
    s["test"][0] += 50.0  # far outside the training range: every value falls outside the bins
    return s


# -- the reference -----------------------------------------------------------------------------
def perturbed_rows(W, r, delta, seed):
    """[(class, w~)] in repeat-major order: w_c + delta ||w_c|| eta / ||eta||, eta drawn per repeat
    as a (C, D) float64 standard normal matrix from a torch generator seeded with ``seed``, held
    in float32."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(r):
        eta = torch.randn((len(W), W.shape[1]), generator=generator, dtype=torch.float64).numpy()
        for c in range(len(W)):
            w = W[c] + delta * np.linalg.norm(W[c]) * eta[c] / np.linalg.norm(eta[c])
            rows.append((c, w.astype(np.float32).astype(np.float64)))
    return rows


def perturbed_logits(x, rows, b):
    return [float(np.dot(w, x)) + b[c] for c, w in rows]


def histogram(values, lo, hi, n_bins):
    """Share of the values in each of n_bins equal bins on [lo, hi] (outside values dropped)."""
    out = np.zeros(n_bins)
    for v in values:
        t = (v - lo) / (hi - lo) * n_bins
        if 0 <= t <= n_bins:
            out[min(int(np.floor(t)), n_bins - 1)] += 1
    return out / len(values)


def box_smooth(q, size):
    left = (size - 1) // 2
    n = len(q)
    return np.array(
        [np.mean([q[min(max(k + t, 0), n - 1)] for t in range(-left, size - left)]) for k in range(n)]
    )


def sym_kl(p, q, eps):
    p = (p + eps) / np.sum(p + eps)
    q = (q + eps) / np.sum(q + eps)
    return sum(pk * np.log(pk / qk) for pk, qk in zip(p, q)) + sum(
        qk * np.log(qk / pk) for pk, qk in zip(p, q)
    )


def msp_w(x, rows, b, r):
    logits = perturbed_logits(x, rows, b)
    total = 0.0
    for i in range(r):
        z = np.array(logits[i * C : (i + 1) * C])
        total += np.max(np.exp(z - z.max()) / np.sum(np.exp(z - z.max())))
    return total / r


def weiper_reference(s, train, r, delta, n_bins, lambda_1, lambda_2, s1, s2, seed):
    W, b = s["W"], s["b"]
    rows = perturbed_rows(W, r, delta, seed)
    train64 = train.astype(np.float64)
    train_logits = [perturbed_logits(x, rows, b) for x in train64]
    z_lo, z_hi = train64.min(), train64.max()
    w_lo, w_hi = min(map(min, train_logits)), max(map(max, train_logits))
    p_z = np.mean([histogram(x, z_lo, z_hi, n_bins) for x in train64], axis=0)
    p_w = np.mean([histogram(v, w_lo, w_hi, n_bins) for v in train_logits], axis=0)
    scores = []
    for x in s["test"].astype(np.float64):
        q_z = box_smooth(histogram(x, z_lo, z_hi, n_bins), s1)
        q_w = box_smooth(histogram(perturbed_logits(x, rows, b), w_lo, w_hi, n_bins), s2)
        kld = sym_kl(p_z, q_z, 0.01) + lambda_1 * sym_kl(p_w, q_w, 0.025)
        scores.append(-(kld - lambda_2 * msp_w(x, rows, b, r)))
    return np.array(scores)


def fitted(s, **params):
    det = WeiPer(**params)
    return det.fit(s["fc"], **({"train_features": s["train"]} if det.needs() else {}))


# -- behaviour ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes", [{}, {"s1": 1, "s2": 7, "n_bins": 9}, {"delta": 0.0, "lambda_2": 0.0}, {"r": 2, "s1": 30}]
)
def test_kld_score_matches_the_loop_reference(setup, changes):
    s = setup
    params = {**SMALL, **changes}
    scores, preds = score_features(fitted(s, **params), s["test"], chunk=17)
    np.testing.assert_allclose(scores, weiper_reference(s, s["train"], **params), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(preds, (s["test"] @ s["W"].T + s["b"]).argmax(1))


def test_msp_variant_is_the_mean_msp_over_the_perturbed_heads_and_needs_no_statistics(setup):
    s = setup
    det = WeiPer("msp", r=7, delta=2.4, seed=5).fit(s["fc"])
    assert det.needs() == () and det.run_name() == "weiper_msp"
    scores, _ = score_features(det, s["test"], chunk=17)
    rows = perturbed_rows(s["W"], 7, 2.4, 5)
    expected = [msp_w(x, rows, s["b"], 7) for x in s["test"].astype(np.float64)]
    np.testing.assert_allclose(scores, expected, rtol=1e-10)


def test_every_perturbed_vector_lies_at_delta_times_its_class_norm_from_the_class_vector(setup):
    s = setup
    det = fitted(s, **{**SMALL, "delta": 2.2})
    perturbed = det.perturbed_weight_.double().numpy().reshape(SMALL["r"], C, D)
    distances = np.linalg.norm(perturbed - s["W"][None], axis=2)
    np.testing.assert_allclose(
        distances, 2.2 * np.linalg.norm(s["W"], axis=1)[None].repeat(SMALL["r"], 0), rtol=1e-6
    )


def test_a_sample_outside_the_training_range_has_an_empty_histogram(setup):
    s = setup
    det = fitted(s, **SMALL)
    far = torch.from_numpy(s["test"][:1])
    assert (far.numpy() > det.feature_max_).all()
    scores, _ = det.score_batch(far)
    assert np.isfinite(scores.numpy()).all()
    assert scores.item() < score_features(det, s["test"][1:])[0].min()


def test_the_seed_fixes_the_perturbations_and_so_the_scores(setup):
    s = setup
    first = score_features(fitted(s, **SMALL), s["test"])[0]
    again = score_features(fitted(s, **SMALL), s["test"])[0]
    other = score_features(fitted(s, **{**SMALL, "seed": 12}), s["test"])[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


def test_scores_do_not_depend_on_the_batch_and_an_empty_batch_gives_no_scores(setup, monkeypatch):
    import detectors.weiper as weiper_module

    s = setup
    det = fitted(s, **SMALL)
    whole = score_features(det, s["test"])[0]
    monkeypatch.setattr(weiper_module, "BLOCK_VALUES", 50)  # tiny internal row blocks
    np.testing.assert_allclose(score_features(det, s["test"], chunk=7)[0], whole, rtol=1e-12)
    scores, logits = det.score_batch(torch.zeros(0, D))
    assert scores.shape == (0,) and logits.shape == (0, C)


def test_memory_mapped_training_features_give_the_same_fit(setup, tmp_path, monkeypatch):
    import detectors.weiper as weiper_module

    s = setup
    path = tmp_path / "train.npy"
    np.save(path, s["train"])
    monkeypatch.setattr(weiper_module, "TRAIN_ROWS", 64)
    monkeypatch.setattr(weiper_module, "GROUP_WEIGHTS", 2 * C * D)  # groups of two repeats
    streamed = WeiPer(**SMALL).fit(s["fc"], train_features=np.load(path, mmap_mode="r"))
    expected = weiper_reference(s, s["train"], **SMALL)
    np.testing.assert_allclose(score_features(streamed, s["test"])[0], expected, rtol=1e-9, atol=1e-12)


def test_fraction_fits_on_a_seeded_random_subset_of_the_training_rows(setup, monkeypatch):
    import detectors.weiper as weiper_module

    s = setup
    monkeypatch.setattr(weiper_module, "TRAIN_ROWS", 50)  # the subset spans several blocks
    det = fitted(s, **SMALL, fraction=0.3)
    keep = np.sort(np.random.default_rng(SMALL["seed"]).choice(400, 120, replace=False))
    assert det.train_rows_ == 120
    expected = weiper_reference(s, s["train"][keep], **SMALL)
    np.testing.assert_allclose(score_features(det, s["test"])[0], expected, rtol=1e-9, atol=1e-12)


def test_score_only_parameters_reuse_the_fit_and_perturbation_parameters_refit(setup):
    s = setup
    det = fitted(s, **SMALL)
    for change in ({"lambda_1": 0.2}, {"lambda_2": 3.0}, {"s1": 9}, {"s2": 1}):
        assert det.with_params(**change).perturbed_weight_ is det.perturbed_weight_
    for change in ({"delta": 2.4}, {"r": 3}, {"seed": 1}, {"n_bins": 50}, {"fraction": 0.5}):
        assert not det.with_params(**change).is_fitted


def test_defaults_are_the_authors_published_settings():
    assert WeiPer.defaults_for("CIFAR-10") == dict(
        r=100, delta=1.8, n_bins=100, lambda_1=2.5, lambda_2=0.1, s1=4, s2=15
    )
    assert WeiPer.defaults_for("CIFAR-100") == dict(
        r=100, delta=2.4, n_bins=100, lambda_1=0.1, lambda_2=1.0, s1=4, s2=40
    )
    assert WeiPer.defaults_for("imagenet") == dict(
        r=100, delta=2.4, n_bins=100, lambda_1=2.5, lambda_2=0.25, s1=40, s2=15, fraction=0.234
    )
    det = WeiPer()
    assert (det.score, det.r, det.delta, det.seed, det.fraction) == ("kld", 100, 1.8, 0, 1.0)


def test_variants_name_the_kld_and_msp_scores_and_msp_ignores_the_kld_parameters():
    assert WeiPer.variants() == {"weiper": {"score": "kld"}, "weiper_msp": {"score": "msp"}}
    assert WeiPer().run_name() == "weiper" and WeiPer().needs() == ("train_features",)
    assert WeiPer("msp").inert_params() == {"n_bins", "lambda_1", "lambda_2", "s1", "s2", "fraction"}
    assert all(flag.startswith("--weiper-") for p in WeiPer.params for flag in p.flags)
    assert set(WeiPer.search_space(342)) <= {p.name for p in WeiPer.params}


def test_invalid_settings_and_constant_training_features_are_rejected(setup):
    with pytest.raises(ValueError, match="score"):
        WeiPer("energy").fit(setup["fc"], train_features=setup["train"])
    with pytest.raises(ValueError, match="r must"):
        WeiPer(r=0).fit(setup["fc"], train_features=setup["train"])
    with pytest.raises(ValueError, match="fraction"):
        WeiPer(fraction=0).fit(setup["fc"], train_features=setup["train"])
    with pytest.raises(ValueError, match="all equal"):
        WeiPer(**SMALL).fit(setup["fc"], train_features=np.ones((10, D), np.float32))
    with pytest.raises(ValueError, match="training features"):
        WeiPer(**SMALL).fit(setup["fc"])
