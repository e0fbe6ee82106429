"""detectors/line.py: LINe and its ablations against a per-sample, per-weight loop reference."""

import numpy as np
import pytest
import torch
from reference import fitted, logsumexp, problem_with_statistics
from reference import scores_and_predictions as scores_of

from detectors import LINe
from models.route import RouteLINe

C, D = 5, 24


@pytest.fixture(scope="module")
def setup():
    return problem_with_statistics(seed=0, num_classes=C, dim=D)


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
        kept = full.route_.wp_rank >= full.route_.wp_cutoff[c]
        expected = kept if wp else torch.ones(C, D, dtype=torch.bool)
        assert torch.equal(det.route_.wp_rank >= det.route_.wp_cutoff[c], expected)


def test_line_without_clipping_clips_at_infinity(setup):
    det = LINe(clip_threshold=0.5, activation_clipping=False)
    assert det.tau == float("inf") and LINe(clip_threshold=0.5).tau == 0.5
