"""The one evaluation path: a list of one or more detectors, one feature extraction.

1. Every statistics file the detectors need is loaded and checked first, so a missing or
   mismatched file fails before any forward pass.
2. The training set is extracted (or read from the cache) when a detector fits on its features,
   then the ID test set and every OOD set: one forward pass per image, ever. Under torchrun every
   process forwards its share and rank 0 alone goes on.
3. Each detector in turn is fitted, scores every set (network-level detectors run the network
   on the images instead), and its result is written to
   ``{base_dir}/{in_dataset}/{method}/{name}/``: results.json, scores/<set>.npy, plots/.
"""

from __future__ import annotations

import time
from pathlib import Path

from util import distributed
from util.errors import UserError
from util.runtime import code_version, ensure_writable_dir

from . import report, setup
from .config import EvalConfig
from .report import MethodResult
from .scoring import score_cached, score_images
from .statistics import TrainingStatistics

FILE_STATISTICS = ("mean_feature", "contributions")
TRAIN_STATISTICS = ("train_features", "train_labels")


def evaluate(config: EvalConfig) -> list[MethodResult]:
    """Evaluate every detector of ``config``; returns the results (rank 0; [] on other ranks)."""
    start = time.time()
    ensure_writable_dir(config.cache_dir, "cache directory")
    config.device = distributed.setup(config.device)  # torchrun: join the process group
    tf = setup.transform(config)
    datasets, names = setup.test_sets(config, tf, config.out_datasets)
    model, model_key, checkpoint = setup.load_classifier(config)
    fc = model.get_classifier()
    extractor = setup.make_extractor(config, model, model_key)
    tags = {key: setup.set_tag(config, key) for key in datasets}

    train: dict = {}

    def extract_train():
        """The training set's FeatureSet (None on ranks > 0), extracted or loaded once per run."""
        if "set" not in train:
            train["set"] = extractor.extract(setup.train_set(config, tf), setup.tag(config, "train"))
        return train["set"]

    stats = TrainingStatistics(config, model_key, setup.num_classes(config), fc.in_features, extract_train)
    runs = config.detectors
    needs = {name for run in runs for name in run.detector.needs()}
    error = None
    if distributed.is_main():  # only rank 0 reads the cache directory (no shared file system needed)
        try:
            for name in FILE_STATISTICS:
                if name in needs:
                    stats.get(name)
        except UserError as exc:
            error = str(exc)
    if distributed.active():
        error = distributed.broadcast(error)
    if error is not None:
        raise UserError(error)
    ensure_writable_dir(config.base_dir, "output directory")
    by_features = any(run.detector.kind == "features" for run in runs)
    if by_features:
        needed = sum(extractor.bytes_needed(ds, tags[key]) for key, ds in datasets.items())
        extractor.require_space(needed, "the test and OOD sets")
    if needs & set(TRAIN_STATISTICS):
        extract_train()  # every process takes part under torchrun
    features = {key: extractor.extract(ds, tags[key]) for key, ds in datasets.items()} if by_features else {}
    if not distributed.leave():  # torchrun: ranks > 0 are done; rank 0 fits and scores alone
        return []
    if by_features:
        if extractor.images_forwarded == 0:
            print(
                f"all features loaded from the cache in {Path(config.cache_dir) / 'features'}: "
                "no forward pass"
            )
        else:
            print(f"forward pass over {extractor.images_forwarded} images (now cached)")

    base = {
        **config.settings(),
        "methods_run": [run.flag for run in runs],
        "code_version": code_version(),
        "device": str(extractor.device),
        "num_images": {k: len(v) for k, v in datasets.items()},
    }
    results = []
    for run in runs:
        t0 = time.time()
        scores, preds, labels = _fit_and_score(run, fc, stats, features, datasets, extractor, tags, tf)
        skipped = {k: extractor.skipped[t] for k, t in tags.items() if t in extractor.skipped}
        settings = {
            **base,
            "method": run.method,
            "method_flag": run.flag,
            "detector": {**run.detector.get_params(), **run.detector.fitted_values()},
            "files": {"checkpoint": {"path": str(checkpoint), "sha256": model_key["checkpoint_sha256"]}}
            | stats.files_for(run.detector),
            "num_images_used": {k: len(v) for k, v in scores.items()},
            "skipped_bad_images": skipped,
        }
        result = report.method_result(run.method, scores, preds, labels, names, settings)
        result.settings["seconds"] = round(time.time() - t0, 2)
        out_dir = report.result_dir(config.base_dir, config.in_dataset, run.method, config.name)
        title = f"{run.method} on {config.in_dataset} ({config.name})"
        report.write_result(out_dir, result, config.plots, title)
        for key, files in skipped.items():
            print(
                f"{key}: {len(datasets[key])} images requested, {len(files)} unreadable skipped, "
                f"{len(scores[key])} used (--skip-bad-images; listed in results.json)"
            )
        print(f"{run.method}: {time.time() - t0:.1f} s -> {out_dir / 'results.json'}")
        results.append(result)
    if len(results) == 1:
        print(report.single_table(results[0], config.in_dataset, config.name, config.fpr_convention))
    else:
        print(report.methods_table(results, names, config.in_dataset, config.name, config.fpr_convention))
    print(f"forward passes: {extractor.images_forwarded} images ({time.time() - start:.1f} s in all)")
    return results


def _fit_and_score(run, fc, stats, features, datasets, extractor, tags, tf):
    """(scores, predictions per set, ID labels) of one detector: fitted on the head and its
    statistics and scored from the cache, or for a network-level detector, on the images."""
    detector = run.detector
    if detector.kind == "network":
        detector.fit(extractor.model, setup.input_std(tf))
        scores, preds, labels = score_images(detector, datasets, extractor, tags)
        return scores, preds, labels["in"]
    try:
        detector.fit(fc, **stats.for_detector(detector))
    except ValueError as exc:
        raise UserError(f"{run.method}: {exc}") from None
    scores, preds = score_cached(detector, features)
    return scores, preds, features["in"].labels
