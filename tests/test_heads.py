"""models/heads.py: finding the last BatchNorm layer before the classifier."""

import torch

from models.heads import last_batchnorm


def test_the_last_batchnorm_with_the_feature_width_is_found_in_the_densenet():
    from models.densenet import DenseNet3

    model = DenseNet3(10, 10)
    name, bn = last_batchnorm(model, model.get_classifier().in_features)
    assert name == "bn1" and bn.num_features == model.get_classifier().in_features
    assert last_batchnorm(torch.nn.Sequential(torch.nn.Linear(3, 3)), 3) is None
