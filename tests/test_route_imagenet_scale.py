"""RouteLINe at ImageNet's C = 1,000 classes: exact numpy.percentile thresholds, reference logits."""

import numpy as np
import pytest
import torch
from torch import nn

from models import exact_percentile
from models.exact_percentile import ColumnSorted, lerp, percentile_positions
from models.route import RouteLINe


def make_head(C=1000, D=256, seed=0, decimals=3):
    """Random W and contributions rounded to ``decimals`` (many exact ties), some zero columns."""
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 0.05, (C, D)).round(decimals).astype(np.float32)
    b = rng.normal(0, 0.1, C).astype(np.float32)
    contrib = (rng.normal(0, 0.1, (C, D)) * (rng.random((C, D)) < 0.8)).round(decimals)
    fc = nn.Linear(D, C)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(W))
        fc.bias.copy_(torch.from_numpy(b))
    return fc, W.astype(np.float64), b.astype(np.float64), contrib


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 256_000])
@pytest.mark.parametrize("p", [0, 0.5, 10, 33.3, 50, 90, 99.99, 100])
def test_linear_interpolation_matches_numpy_percentile(n, p):
    x = np.sort(np.random.default_rng(n).normal(size=n))
    k0, k1, gamma = percentile_positions(n, p)
    assert lerp(x[k0], x[k1], gamma) == np.percentile(x, p)


@pytest.mark.parametrize("p_w", [10, 90])
def test_class_thresholds_equal_numpy_percentile_bit_for_bit(p_w):
    fc, W, _, contrib = make_head()
    abs_contrib = np.abs(contrib)
    thresholds, cutoffs = ColumnSorted(W).percentiles(abs_contrib, p_w)
    for c in range(len(W)):
        R = abs_contrib[c][None, :] * W
        assert thresholds[c] == np.percentile(R, p_w), c
    for c in (0, 1, 499, 999):  # cutoffs count the entries <= t_c of each column
        R = abs_contrib[c][None, :] * W
        np.testing.assert_array_equal(cutoffs[c], (R <= thresholds[c]).sum(axis=0))


@pytest.mark.parametrize("p_w", [10, 50, 90])
def test_thresholds_of_classes_with_all_zero_or_mostly_zero_contributions_equal_numpy(p_w):
    """Classes without training images have zero contributions: every entry of R_c is +-0."""
    fc, W, _, contrib = make_head(C=60, D=80)
    scales = np.abs(contrib)
    scales[:20] = 0.0
    scales[20:30, :70] = 0.0
    thresholds, cutoffs = ColumnSorted(W).percentiles(scales, p_w)
    for c in range(len(W)):
        R = scales[c][None, :] * W
        assert thresholds[c] == np.percentile(R, p_w), c
        np.testing.assert_array_equal(cutoffs[c], (R <= thresholds[c]).sum(axis=0))


def test_a_missed_sample_bracket_falls_back_to_the_exact_full_partition(monkeypatch):
    monkeypatch.setattr(exact_percentile, "MARGIN_SD", -40.0)  # brackets that exclude the answer
    fc, W, _, contrib = make_head(C=40, D=600, decimals=2)
    thresholds, _ = ColumnSorted(W).percentiles(np.abs(contrib), 10)
    for c in range(len(W)):
        assert thresholds[c] == np.percentile(np.abs(contrib[c])[None, :] * W, 10)


def test_weight_masks_equal_the_direct_comparison():
    fc, W, _, contrib = make_head(C=1000, D=64)
    route = RouteLINe(fc, contrib, 10, 10)
    for c in (0, 17, 500, 999):
        R = np.abs(contrib[c])[None, :] * W
        np.testing.assert_array_equal((route.wp_rank >= route.wp_cutoff[c]).numpy(), R > np.percentile(R, 10))


def reference_line_logits(h, W, b, contrib, p_w, p_a):
    """Plain LINe, one sample at a time, numpy.percentile on the spot (features already clipped)."""
    out = []
    for x in h:
        c = int(np.argmax(W @ x + b))
        ap = contrib[c] > np.percentile(contrib[c], p_a)
        R = np.abs(contrib[c])[None, :] * W
        wp = R > np.percentile(R, p_w)
        out.append((W * wp) @ (x * ap) + b)
    return np.array(out)


def test_route_line_at_1000_classes_equals_the_plain_reference():
    fc, W, b, contrib = make_head(C=1000, D=256, seed=1)
    rng = np.random.default_rng(2)
    h = np.minimum(np.maximum(rng.normal(0.3, 0.6, (300, 256)), 0), 0.8).astype(np.float32)
    route = RouteLINe(fc, contrib, 10, 10)
    got = route(torch.from_numpy(h)).double().numpy()
    ref = reference_line_logits(h.astype(np.float64), W, b, contrib, 10, 10)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert max(t.numel() for t in route.buffers()) <= 1000 * 256  # O(C*D) state


def test_whole_array_scoring_equals_chunked_scoring_and_the_reference():
    from detectors import LINe, score_features

    fc, W, b, contrib = make_head(C=1000, D=128, seed=3)
    h = np.maximum(np.random.default_rng(4).normal(0.3, 0.6, (400, 128)), 0).astype(np.float32)
    det = LINe(p_w=10, p_a=10, clip_threshold=0.8).fit(fc, contributions=contrib)
    whole, pred_whole = score_features(det, h)  # default: RouteLINe.score_array, one mask per class
    chunked, pred_chunked = score_features(det, h, chunk=64)
    np.testing.assert_allclose(whole, chunked, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pred_whole, pred_chunked)
    ref = reference_line_logits(np.minimum(h, 0.8).astype(np.float64), W, b, contrib, 10, 10)
    np.testing.assert_allclose(whole, [np.log(np.exp(r).sum()) for r in ref], rtol=1e-6)


@pytest.mark.parametrize("tau", [0.8, None])
def test_whole_array_scoring_in_small_chunks_of_float16_features_equals_the_reference(tau):
    """Chunks of 7 rows split class groups and fill the logit buffer across groups."""
    from detectors import LINe

    fc, W, b, contrib = make_head(C=50, D=96, seed=5)
    h = np.maximum(np.random.default_rng(6).normal(0.3, 0.6, (120, 96)), 0).astype(np.float16)
    det = LINe(p_w=10, p_a=10, clip_threshold=tau).fit(fc, contributions=contrib)
    scores, preds = det.route_.score_array(h, det.tau, det.score_logits, chunk=7)
    x = h.astype(np.float64) if tau is None else np.minimum(h.astype(np.float64), tau)
    ref = reference_line_logits(x, W, b, contrib, 10, 10)
    np.testing.assert_allclose(scores, [np.log(np.exp(r).sum()) for r in ref], rtol=1e-6)
    np.testing.assert_array_equal(preds, ref.argmax(axis=1))


def test_gradients_flow_through_route_line_to_the_features():
    """d(sum_k z_k)/dh = column sums of the predicted class's masked weight (as ODIN needs)."""
    fc, _, _, contrib = make_head(C=30, D=40, seed=7)
    route = RouteLINe(fc, contrib, 10, 10)
    h = torch.rand(5, 40, requires_grad=True)
    route(h).sum().backward()
    pred = route.predict(h.detach())
    expected = torch.stack([route.masked_weight(int(c)).sum(dim=0) for c in pred])
    torch.testing.assert_close(h.grad, expected)
