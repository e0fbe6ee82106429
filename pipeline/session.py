"""The set-up that ``ood_eval.py`` and ``sweep.py`` share: the transform, the sets scored, the
classifier and its head, the feature extractor with each set's cache tag, and the ID training
statistics the detectors fit on. Nothing runs the network here: the sets are extracted (or read
from the cache) when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from detectors import registry
from util.features import FeatureExtractor

from . import setup
from .config import RunConfig
from .layers import tap_spec
from .run_block import print_run_block
from .statistics import TrainingStatistics


@dataclass
class Session:
    """One run's classifier, sets and statistics.

    ``datasets``: key -> dataset (``in`` the ID test set, then OOD and validation sets);
    ``names``: the test OOD sets, in order; ``tags``: key -> feature-cache tag; ``checkpoint``:
    the weights file (None for library weights); ``fc``: the classifier's output layer.
    """

    config: RunConfig
    transform: Callable
    datasets: dict
    names: list[str]
    model: nn.Module
    model_key: dict
    checkpoint: object
    fc: nn.Linear
    extractor: FeatureExtractor
    tags: dict[str, str]
    stats: TrainingStatistics | None = None
    _train: dict = field(default_factory=dict)

    def train_dataset(self):
        """The ID training set (``setup.train_set``), built once; reading it runs no network."""
        if "dataset" not in self._train:
            self._train["dataset"] = setup.train_set(self.config, self.transform)
        return self._train["dataset"]

    def extract_train(self):
        """The training set's FeatureSet (None on torchrun ranks > 0), extracted or loaded once."""
        if "set" not in self._train:
            train = self.train_dataset()
            self._train["set"] = self.extractor.extract(train, setup.tag(self.config, "train"))
        return self._train["set"]

    def extract_sets(self) -> dict:
        """key -> FeatureSet of every set (one forward pass per image not cached)."""
        return {key: self.extractor.extract(ds, self.tags[key]) for key, ds in self.datasets.items()}

    def forward_note(self) -> str:
        """What extracting the sets cost: no forward pass, or how many images."""
        if self.extractor.images_forwarded == 0:
            return "no forward pass: every set came from the cache"
        return f"{self.extractor.images_forwarded} images forwarded (now cached)"


def open_session(config: RunConfig, choose_sets: Callable) -> Session:
    """The session of ``config``; ``choose_sets(transform)`` gives (datasets, test OOD names)."""
    tf = setup.transform(config)
    datasets, names = choose_sets(tf)
    model, model_key, checkpoint = setup.load_classifier(config)
    # what will run, before any forward pass
    print_run_block(config, model, model_key, checkpoint, _detectors(config), datasets)
    extractor = setup.make_extractor(config, model, model_key)
    # the layer statistics the multi-layer detectors read, filled in the same forward pass
    extractor.set_taps(tap_spec(config, [detector for detector, _ in _detectors(config)]))
    tags = {key: setup.set_tag(config, key) for key in datasets}
    fc = model.get_classifier()
    session = Session(config, tf, datasets, names, model, model_key, checkpoint, fc, extractor, tags)
    session.stats = TrainingStatistics(
        config,
        model_key,
        setup.num_classes(config),
        fc.in_features,
        session.extract_train,
        model=model,
        train_dataset=session.train_dataset,
    )
    return session


def _detectors(config: RunConfig) -> list[tuple]:
    """(detector, the parameters flags set) of the run: ood_eval.py's, or the one a sweep starts
    from (its grid varies it)."""
    if getattr(config, "detectors", None):
        return [(run.detector, run.given) for run in config.detectors]
    method = getattr(config, "method", None)
    return [(registry.build(method, config.dataset.preset), {})] if method else []
