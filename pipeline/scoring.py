"""Scores of one fitted detector on every set: from cached features, or by running the network on
the images for network-level detectors (ODIN)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import DataLoader

from detectors.base import Detector, score_sets
from util.data import BAD_IMAGE_LABEL, image_path
from util.errors import UserError
from util.features import FeatureExtractor, bad_image_message
from util.io import row_blocks


def score_cached(detector: Detector, features: dict) -> tuple[dict, dict]:
    """(scores, predictions) per set from the cached FeatureSets."""
    layers = {key: fs.layers for key, fs in features.items()}
    return score_sets(detector, {key: fs.features for key, fs in features.items()}, layers)


def max_softmax(detector: Detector, features: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Max softmax probability of the detector's logits for each row (the confidence column of the
    original code's in_labels file).

    A detector that scores whole arrays its own way (LINe groups the rows by predicted class)
    computes it the same way: a copy of it whose score of a logit block is the max softmax.
    """
    confidence = copy.copy(detector)
    confidence.score_logits = lambda z: torch.softmax(z.double(), dim=1).max(dim=1).values
    whole = confidence.score_array(features)
    if whole is not None:
        return whole[0]
    out = [np.zeros(0)]
    with torch.inference_mode():
        for block in row_blocks(features, chunk):
            h = torch.from_numpy(block.astype(np.float32, copy=False))
            out.append(torch.softmax(detector.logits(h).double(), dim=1).max(dim=1).values.numpy())
    return np.concatenate(out)


def score_images(
    detector: Detector, datasets: dict, extractor: FeatureExtractor, tags: dict
) -> tuple[dict, dict, dict, dict]:
    """(scores, predictions, labels, max softmax) per set for a network-level detector, batch by batch.

    Unreadable images stop the run with their name, or with --skip-bad-images are left out and
    listed in ``extractor.skipped`` under the set's tag, as the feature cache does.
    """
    scores, preds, labels, confidence = {}, {}, {}, {}
    for key, ds in datasets.items():
        loader = DataLoader(ds, batch_size=extractor.batch_size, num_workers=extractor.num_workers)
        s, p, y, c, seen = [np.zeros(0)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)], 0
        for images, targets in loader:
            bad = np.flatnonzero(targets.numpy() == BAD_IMAGE_LABEL)
            files = [image_path(ds, seen + int(i)) for i in bad]
            seen += len(targets)
            if files and not extractor.skip_bad_images:
                raise UserError(bad_image_message(files, len(ds)))
            if files:
                listed = extractor.skipped.setdefault(tags[key], [])  # the cache may have listed them
                listed += [f for f in files if f not in listed]
                keep = targets != BAD_IMAGE_LABEL
                images, targets = images[keep], targets[keep]
            if len(targets) == 0:
                continue
            sc, out = detector.score_images(images.to(extractor.device))
            s.append(sc.double().cpu().numpy())
            p.append(out.argmax(1).cpu().numpy())
            y.append(targets.numpy())
            c.append(torch.softmax(out.detach().double(), dim=1).max(dim=1).values.cpu().numpy())
        scores[key], preds[key], labels[key] = np.concatenate(s), np.concatenate(p), np.concatenate(y)
        confidence[key] = np.concatenate(c)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return scores, preds, labels, confidence
