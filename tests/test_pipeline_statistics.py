"""pipeline/statistics.py: the training statistics a detector's fit asks for."""

import numpy as np
import pytest
import torch

from detectors.bats import BATS


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
