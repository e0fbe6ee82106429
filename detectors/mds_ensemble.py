"""Mahalanobis on several layers, each with input pre-processing, combined with per-layer weights
(Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018, Algorithm 1; OpenOOD's ``mds_ensemble`` postprocessor).

For each tapped layer l (module names of the feature cache, ``--feature-layers``), f_l(x) is
its output averaged over positions; class means mu_lc and a tied covariance Sigma_l (pseudo-
inverse P_l) are fitted in float64 on the cached pooled outputs of the training images (as
``multi_mahalanobis``). Per image and layer: c* = argmin_c M_lc(x), M_lc = (f_l(x) - mu_lc)^T P_l
(f_l(x) - mu_lc); x~_l = x - eps * s_l / std with s_l = +1 where dM_lc*/dx >= 0, else -1 (the
authors' and OpenOOD's sign; the authors divide by the normalisation's std, OpenOOD by 0.5);
S_l = max_c -M_lc(x~_l). Score = sum_l alpha_l S_l. The paper and OpenOOD (without an
``alpha_list``) fit alpha by logistic regression on validation OOD data, not post-hoc on ID
data alone; the default is OpenOOD's config's ``alpha_list: [1]`` for every layer. Default eps =
0.0014, OpenOOD's ``mds_ensemble.yml`` (``noise``); the search space is the authors' list. Cost per
batch: one forward and L backward passes, then one forward per layer. Predictions are the
classifier's own argmax on the unperturbed image (OpenOOD: the closest class mean of the last
layer). The gradient is of the batch's sum of distances (the authors': their mean).
"""

from __future__ import annotations

import torch

from models.split import model_device
from util.argtypes import nonnegative_float
from util.errors import UserError
from util.layer_taps import LayerArrays, LayerTaps, TapSpec, pooled

from .base import NetworkDetector
from .mahalanobis_odin import NOISE_GRID, check_noise, classifier_head, closest_distance, preprocessed
from .multi_mahalanobis import check_weights, layer_gaussians, layer_weights, weight_list


def ran(taps: LayerTaps) -> list[torch.Tensor]:
    """The tapped outputs of the last forward pass; a UserError naming a module that did not run."""
    missing = [name for name, z in zip(taps.spec.layers, taps.outputs) if z is None]
    if missing:
        raise UserError(f"--feature-layers: module(s) {', '.join(missing)} did not run in the forward pass")
    return taps.outputs


class MDSEnsemble(NetworkDetector):
    name = "mds_ensemble"
    paper = "Lee et al., NeurIPS 2018"
    needs_each_class = True
    taps = ("pooled",)  # the training images' pooled layer outputs it fits on come from the cache
    param_help = {
        "noise": "input pre-processing magnitude eps (pixel units, divided by the input std)",
        "weights": "per-layer weights alpha_l of the sum, one per tapped layer (none: 1 each)",
    }
    param_types = {"noise": nonnegative_float, "weights": weight_list}
    fit_params = ()  # the per-layer means and covariances depend on neither

    def __init__(self, noise: float = 0.0014, weights: tuple[float, ...] | None = None):
        self.noise = noise
        self.weights = weights

    @classmethod
    def search_space(cls, feature_dim: int) -> dict[str, tuple]:
        return {"noise": NOISE_GRID}

    def check_params(self) -> None:
        check_noise(self)
        check_weights(self.weights, self.flag("weights"))

    def fit(self, model, input_std, train_layers: LayerArrays, train_labels) -> MDSEnsemble:
        super().fit(model, input_std)
        layer_weights(self.weights, len(train_layers.names), self.flag("weights"))
        self.spec_ = TapSpec(tuple(train_layers.names), ("pooled",))
        LayerTaps(model, self.spec_)  # every layer name resolves to a module, else a UserError
        num_classes = classifier_head(model, self.name).out_features
        device = model_device(model)
        self.gaussians_ = [
            (means.to(device), precision.to(device))
            for means, precision in layer_gaussians(train_layers, train_labels, num_classes)
        ]
        return self

    def score_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum_l alpha_l max_c -M_lc(x~_l) (float64) and the logits of the unperturbed images."""
        gaussians = [(m.to(images.device), p.to(images.device)) for m, p in self.gaussians_]
        columns = []
        with LayerTaps(self.model_, self.spec_) as taps, torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            logits = self.model_(x)
            clean = [pooled(z) for z in ran(taps)]
            for layer, (f, (means, precision)) in enumerate(zip(clean, gaussians)):
                if self.noise == 0:  # x~ = x: the clean pass's distances
                    columns.append(-closest_distance(f.detach(), means, precision))
                    continue
                x_tilde = preprocessed(x, closest_distance(f, means, precision), self.noise, self.input_std_)
                with torch.no_grad():
                    self.model_(x_tilde)
                    columns.append(-closest_distance(pooled(taps.outputs[layer]), means, precision))
        weights = layer_weights(self.weights, len(columns), self.flag("weights")).to(images.device)
        return torch.stack(columns, dim=1) @ weights, logits.detach()
