"""DICE and LINe layers (models.route) and detectors against the plain references in reference.py."""

import warnings

import numpy as np
import pytest
import torch
from reference import dice_logits, energy_scores, line_logits
from torch import nn

from detectors import DICE, Energy, LINe, ReAct, score_features
from models.route import RouteDICE, RouteLINe, SparsifiedClassifier


def make_problem(C=10, D=40, N=120, seed=0):
    """Random head, features and contributions with many exact ties (rounded values, zeros)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 1, (C, D)).round(1)
    b = rng.normal(0, 1, C).round(1)
    h = np.maximum(rng.normal(0.5, 1, (N, D)), 0).round(1)  # non-negative, ~30% zeros
    labels = rng.integers(0, C, N)
    contrib = np.stack([(h[labels == c] * W[c]).mean(0) for c in range(C)]).round(2)
    mean_feature = h.mean(0).round(1)
    fc = nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(W))
        fc.bias.copy_(torch.from_numpy(b))
    return (
        fc,
        W.astype(np.float32).astype(np.float64),
        b.astype(np.float32).astype(np.float64),
        h,
        contrib,
        mean_feature,
    )


@pytest.mark.parametrize("p", [0, 10, 50, 90, 100])
def test_route_dice_equals_the_reference_masked_logits(p, device):
    fc, W, b, h, _, m = make_problem()
    route = RouteDICE(fc, m, p).to(device)
    got = route(torch.from_numpy(h).float().to(device)).double().cpu().numpy()
    np.testing.assert_allclose(got, dice_logits(h, W, b, m, p), rtol=1e-5, atol=1e-5)


def test_route_dice_keeps_entries_strictly_above_the_percentile():
    fc, W, _, _, _, m = make_problem()
    V = m[None, :] * W
    expected = V > np.percentile(V, 90)
    assert torch.equal(RouteDICE(fc, m, 90).mask, torch.from_numpy(expected))


@pytest.mark.parametrize("p_w,p_a,tau", [(90, 90, 1.0), (90, 10, 1.0), (10, 10, 0.8), (50, 70, 0.5)])
def test_route_line_equals_the_reference_loop(p_w, p_a, tau, device):
    fc, W, b, h, contrib, _ = make_problem()
    h_clipped = torch.from_numpy(np.minimum(h, tau)).float().to(device)
    got = RouteLINe(fc, contrib, p_w, p_a).to(device)(h_clipped).double().cpu().numpy()
    np.testing.assert_allclose(got, line_logits(h, W, b, contrib, p_w, p_a, tau), rtol=1e-5, atol=1e-5)


def test_route_line_keeps_only_per_class_thresholds_not_masked_weight_copies():
    fc, *_, contrib, _ = make_problem(C=10, D=40)
    route = RouteLINe(fc, contrib, 90, 90)
    largest = max(t.numel() for t in route.buffers())
    assert largest <= 10 * 40  # O(C*D): no (C, C, D) tensor
    assert route.wp_threshold.shape == (10,)


def test_line_with_p_zero_and_huge_tau_equals_energy():
    """p_w = p_a = 0 prunes only the minimal entries (strict >); put them on a feature that is always 0."""
    fc, W, b, h, _, _ = make_problem()
    C, D = W.shape
    contrib = 1.0 + np.arange(C * D, dtype=float).reshape(C, D) / (C * D)  # row minimum at column 0
    W[:, 0] = -100.0  # the global minimum of every R_c = |Cm[c]| * W is in column 0
    with torch.no_grad():
        fc.weight[:, 0] = -100.0
    h[:, 0] = 0.0
    line_scores, _ = score_features(
        LINe(p_w=0, p_a=0, clip_threshold=1e9).fit(fc, contributions=contrib), h.astype(np.float32)
    )
    energy, _ = score_features(Energy().fit(fc), h.astype(np.float32))
    np.testing.assert_allclose(line_scores, energy, rtol=1e-6)
    np.testing.assert_allclose(line_scores, energy_scores(h, W, b), rtol=1e-6)


def test_line_detector_scores_equal_logsumexp_of_reference_logits():
    fc, W, b, h, contrib, _ = make_problem(seed=3)
    det = LINe(p_w=90, p_a=90, clip_threshold=1.0).fit(fc, contributions=contrib)
    got, _ = score_features(det, h.astype(np.float32))
    ref = line_logits(h, W, b, contrib, 90, 90, 1.0)
    np.testing.assert_allclose(got, [np.log(np.exp(r).sum()) for r in ref], rtol=1e-6)


def test_dice_react_scores_equal_the_reference_with_clipping():
    fc, W, b, h, _, m = make_problem(seed=4)
    det = DICE(p=90, clip_threshold=0.7).fit(fc, mean_feature=m)
    got, _ = score_features(det, h.astype(np.float32))
    ref = dice_logits(h, W, b, m, 90, tau=0.7)
    np.testing.assert_allclose(got, [np.log(np.exp(r).sum()) for r in ref], rtol=1e-6)


def test_react_threshold_is_the_percentile_of_all_training_activations():
    fc, W, b, h, _, _ = make_problem(seed=5)
    det = ReAct(percentile=90).fit(fc, train_features=h)
    assert det.threshold_ == np.percentile(h, 90) and det.clip_threshold is None  # fit sets only state
    got, _ = score_features(det, h.astype(np.float32))
    np.testing.assert_allclose(got, energy_scores(h, W, b, tau=np.percentile(h, 90)), rtol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda fc, c, m: LINe(90, 90, 1.0).fit(fc, contributions=c),
        lambda fc, c, m: DICE(90).fit(fc, mean_feature=m),
    ],
)
def test_scores_do_not_depend_on_the_chunk_size(make):
    fc, W, b, h, contrib, m = make_problem(N=300, seed=6)
    det = make(fc, contrib, m)
    whole, _ = score_features(det, h.astype(np.float32), chunk=1000)
    for chunk in (1, 7, 64):
        part, _ = score_features(det, h.astype(np.float32), chunk=chunk)
        np.testing.assert_allclose(part, whole, rtol=1e-6, atol=1e-6)


def test_sparsified_classifier_gives_route_logits_of_clipped_features():
    fc, W, b, h, contrib, _ = make_problem(D=40)

    class Tiny(nn.Module):
        def forward_features(self, x):
            return x

    route = RouteLINe(fc, contrib, 90, 90)
    x = torch.from_numpy(h).float()
    got = SparsifiedClassifier(Tiny(), route, clip_threshold=1.0)(x)
    torch.testing.assert_close(got, route(x.clamp(max=1.0)))


def test_route_line_rejects_contributions_of_the_wrong_shape():
    fc, *_ = make_problem(C=10, D=40)
    with pytest.raises(ValueError, match="contributions have shape"):
        RouteLINe(fc, np.zeros((40, 10)), 90, 90)


# LINe's batched path (issue 24): no loop over predicted classes; the default off the CPU.


def line_problem_with_ties(C, D, N, seed):
    """make_problem at another shape, with contributions rounded coarsely: many exact ties (a
    class with no rows gets all-zero contributions). The bias gets distinct offsets below the
    logits' 0.01 grid, so that no row's predicted class is a tie that float32 rounding decides."""
    with warnings.catch_warnings():  # the mean over a class's zero rows is NaN, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        fc, W, b, h, contrib, _ = make_problem(C=C, D=D, N=N, seed=seed)
    with torch.no_grad():
        fc.bias += torch.arange(C) * (0.005 / C)
    b = fc.bias.detach().double().numpy()
    return fc, W, b, h, np.nan_to_num(contrib).round(1)


@pytest.mark.parametrize("C,D,N,seed", [(3, 5, 20, 0), (17, 33, 40, 1), (64, 50, 30, 2), (10, 40, 120, 3)])
@pytest.mark.parametrize("p_w,p_a", [(90, 90), (10, 10), (50, 0)])
def test_batched_line_equals_the_per_sample_reference(C, D, N, seed, p_w, p_a):
    fc, W, b, h, contrib = line_problem_with_ties(C, D, N, seed)
    route = RouteLINe(fc, contrib, p_w, p_a, batched=True)
    got = route(torch.from_numpy(np.minimum(h, 1.0)).float()).double().numpy()
    np.testing.assert_allclose(got, line_logits(h, W, b, contrib, p_w, p_a, 1.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_batched_line_does_not_depend_on_the_chunk_size(chunk):
    fc, *_, h, contrib = line_problem_with_ties(C=20, D=30, N=100, seed=5)
    route = RouteLINe(fc, contrib, 90, 90)
    x = torch.from_numpy(h).float()
    whole = route.forward_batched(x, chunk=len(x))
    torch.testing.assert_close(route.forward_batched(x, chunk=chunk), whole, rtol=1e-6, atol=1e-6)


def test_batched_line_chunk_follows_the_memory_budget():
    fc, *_, contrib = line_problem_with_ties(C=20, D=30, N=10, seed=5)
    route = RouteLINe(fc, contrib, 90, 90)
    route.batched_bytes = 20 * 30 * 5 * 3  # three rows of a float mask and a bool mask
    assert route.chunk_rows() == 3
    route.batched_bytes = 1
    assert route.chunk_rows() == 1


def test_batched_line_builds_no_per_class_weight(monkeypatch):
    fc, *_, h, contrib = line_problem_with_ties(C=10, D=40, N=50, seed=6)
    route = RouteLINe(fc, contrib, 90, 90, batched=True)

    def per_class(*args, **kwargs):
        raise AssertionError("the batched path looped over classes")

    monkeypatch.setattr(route, "masked_weight", per_class)
    route(torch.from_numpy(h).float())


def test_line_on_the_cpu_defaults_to_the_grouped_path_unchanged():
    fc, *_, h, contrib = line_problem_with_ties(C=10, D=40, N=60, seed=7)
    route = RouteLINe(fc, contrib, 90, 90)
    x = torch.from_numpy(h).float()
    assert route.batched is None
    assert torch.equal(route(x), route.forward_grouped(x))


def test_batched_line_gradients_equal_the_grouped_ones():
    fc, *_, h, contrib = line_problem_with_ties(C=10, D=40, N=30, seed=8)
    route = RouteLINe(fc, contrib, 90, 90)
    grads = []
    for forward in (route.forward_batched, route.forward_grouped):
        x = torch.from_numpy(h).float().requires_grad_(True)
        torch.logsumexp(forward(x), dim=1).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_batched_line_of_an_empty_batch_is_empty():
    fc, *_, contrib = line_problem_with_ties(C=10, D=40, N=5, seed=9)
    assert RouteLINe(fc, contrib, 90, 90).forward_batched(torch.zeros(0, 40)).shape == (0, 10)


def test_sparsified_line_classifier_on_the_device_equals_the_reference(device):
    fc, W, b, h, contrib = line_problem_with_ties(C=10, D=40, N=50, seed=10)

    class Tiny(nn.Module):
        def forward_features(self, x):
            return x

    model = SparsifiedClassifier(Tiny(), RouteLINe(fc, contrib, 90, 90), clip_threshold=1.0).to(device)
    got = model(torch.from_numpy(h).float().to(device)).double().cpu().numpy()
    np.testing.assert_allclose(got, line_logits(h, W, b, contrib, 90, 90, 1.0), rtol=1e-5, atol=1e-5)
