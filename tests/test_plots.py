"""util.plots writes readable PNGs: per-set histograms and ROC curves, and the sweep heat map."""

import matplotlib.image as mpimg
import numpy as np
import pytest

from util.plots import plot_results, plot_sweep_heatmap


def test_plot_results_writes_a_histogram_and_a_roc_png_per_ood_set(tmp_path):
    rng = np.random.default_rng(0)
    scores = {"in": rng.normal(2, 1, 300), "dtd": rng.normal(0, 1, 200), "a/b": rng.normal(1, 1, 100)}
    written = plot_results(scores, tmp_path / "plots", "energy on CIFAR-10")
    assert sorted(p.name for p in written) == ["hist_a_b.png", "hist_dtd.png", "roc_a_b.png", "roc_dtd.png"]
    for path in written:
        image = mpimg.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0  # not a blank canvas


def test_sweep_heatmap_accepts_a_partial_grid_and_both_key_names(tmp_path):
    rows = [dict(p_w=pw, p_a=pa, FPR95=0.5 - pw / 1000) for pw in (10, 90) for pa in (10, 50)]
    rows.append(dict(p_w=50, p_a=10, avg_FPR95=0.2))
    path = plot_sweep_heatmap(rows, tmp_path / "sweep.png")
    assert mpimg.imread(path).shape[0] > 100
    with pytest.raises(ValueError, match="at least one"):
        plot_sweep_heatmap([], tmp_path / "empty.png")
