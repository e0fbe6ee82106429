"""The ID training statistics detectors are fitted on: the files precompute.py writes (LINe's
contributions, DICE's mean feature), checked against their provenance records, and the cached
training features and labels.

Files (the original repositories' names and orientations, so theirs load here and ours there):
- ``{in_dataset}_{name}_{method}_mean_class.npy``: contributions, shape (D, C);
- ``{in_dataset}_{name}_feat_stat.npy``: mean training feature, shape (D,);
- ``{file}.json`` next to each: what produced it (dataset, architecture, checkpoint sha256,
  cache version, number of images) and the file's own sha256.

Those names hold statistics of the whole training set. ``precompute.py --max-samples N`` writes
its own files, ``..._mean_class_nN.npy`` and ``..._feat_stat_nN.npy``, and never replaces the
whole set's. ``ood_eval.py`` (and ``sweep.py``) read the files of their ``--max-samples``: without
it the whole set's; with ``--max-samples N`` the ``_nN`` files, or where precompute.py has not
written those, the whole set's with a note saying so (the table's training notes repeat it); never
another subset's. ``--contrib`` / ``--feat-stat`` name a file and always win.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.heads import last_batchnorm
from util.errors import UserError
from util.features import CACHE_VERSION
from util.io import sha256_file
from util.openood import BENCHMARKS

from . import setup


def subset_suffix(max_samples: int | None) -> str:
    """``_nN`` for statistics of a --max-samples N training subset; empty for the whole set."""
    return f"_n{max_samples}" if max_samples else ""


def contributions_path(
    cache_dir,
    in_dataset: str,
    name: str,
    method: str = "taylor",
    detail: str = "mean_class",
    max_samples: int | None = None,
) -> Path:
    """LINe's class-mean contributions, shape (D, C): ``{in_dataset}_{name}_{method}_{detail}.npy``
    (``detail`` is the LINe code's ``--detail``, ``mean_class`` for class means), with ``_nN``
    before ``.npy`` for a ``max_samples`` subset."""
    return Path(cache_dir) / f"{in_dataset}_{name}_{method}_{detail}{subset_suffix(max_samples)}.npy"


def feat_stat_path(cache_dir, in_dataset: str, name: str, max_samples: int | None = None) -> Path:
    """DICE's mean training feature, shape (D,): ``{in_dataset}_{name}_feat_stat.npy``, with ``_nN``
    before ``.npy`` for a ``max_samples`` subset."""
    return Path(cache_dir) / f"{in_dataset}_{name}_feat_stat{subset_suffix(max_samples)}.npy"


def _require_finite(values: np.ndarray, path: Path) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise UserError(f"{path} holds {bad} NaN or infinite values of {values.size}; rerun precompute.py.")


def load_feat_stat(path: Path, feature_dim: int) -> np.ndarray:
    """Mean feature (D,) float64 from a DICE ``feat_stat`` file; checks it fits the model."""
    try:
        stat = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read feature statistics {path}: {exc}") from None
    stat = np.asarray(stat, dtype=np.float64).squeeze()
    if stat.shape != (feature_dim,):
        raise UserError(
            f"{path} holds shape {stat.shape}; this model needs a mean feature of shape "
            f"({feature_dim},). It was made for another model: rerun precompute.py."
        )
    _require_finite(stat, path)
    return stat


def load_contributions(path: Path, num_classes: int, feature_dim: int) -> np.ndarray:
    """Class-mean contributions (C, D) from a ``mean_class`` file stored as (D, C)."""
    try:
        stored = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read contributions {path}: {exc}") from None
    if stored.shape != (feature_dim, num_classes):
        raise UserError(
            f"{path} holds shape {stored.shape}; this model needs (features, classes) = "
            f"({feature_dim}, {num_classes}). It was made for another model: rerun precompute.py."
        )
    _require_finite(stored, path)
    return np.asarray(stored, dtype=np.float64).T


def check_provenance(
    path: Path, model_key: dict, in_dataset: str, flag: str | None = None, inputs: dict | None = None
) -> dict | None:
    """Check the record ``{path}.json`` that precompute.py writes next to a statistics file.

    Files without a record (made by the original LINe/DICE code) are accepted; their shape is
    checked when loaded. A record that names another model, or describes other file contents, is
    an error: the message says to rerun precompute.py (or, for a file given with ``flag``, names
    the mismatch). ``inputs`` (``setup.statistics_inputs``: image folder, class map, transform,
    head) is compared when the record has it. Returns the record, or None.
    """
    record_path = path.with_suffix(".json")
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {record_path} (record of {path}): {exc}; rerun precompute.py") from None
    expected = {
        "in_dataset": in_dataset,
        "model_arch": model_key.get("arch"),
        "checkpoint_sha256": model_key.get("checkpoint_sha256"),
        "cache_version": CACHE_VERSION,
        "sha256": sha256_file(path),
    }
    if inputs is not None:
        expected["inputs"] = json.loads(json.dumps(inputs))
    mismatches = []
    for k, v in expected.items():
        if k not in record or record[k] == v:
            continue
        if isinstance(v, dict) and isinstance(record[k], dict):  # name only the entries that differ
            mismatches += [
                f"{k}.{sub}: file made with {record[k].get(sub)!r}, now {v.get(sub)!r}"
                for sub in sorted(set(v) | set(record[k]))
                if record[k].get(sub) != v.get(sub)
            ]
        else:
            mismatches.append(f"{k}: file made with {record[k]!r}, now {v!r}")
    if not mismatches:
        return record
    what = "\n  ".join(mismatches)
    if "sha256" in record and record["sha256"] != expected["sha256"]:
        advice = (
            f"{path} was changed after precompute.py wrote it (or precompute.py was interrupted); "
            f"rerun precompute.py, or delete {record_path} to use the file as it is"
        )
    elif flag:
        advice = f"pass a {flag} file made for this checkpoint, or rerun precompute.py for it"
    else:
        dataset = (inputs or {}).get("id_root") or in_dataset
        which = f"--benchmark {dataset}" if dataset in BENCHMARKS else f"--in-dataset {dataset}"
        advice = (
            f"rerun `python precompute.py {which}` with this --checkpoint (and this run's "
            f"--class-map, --image-size, ... where given) and --cache-dir {path.parent} to recompute it"
        )
    given = f" (given with {flag})" if flag else ""
    raise UserError(f"{path}{given} does not match this run:\n  {what}\n{advice}")


class TrainingStatistics:
    """The statistics of one run, each loaded (and checked) once, on first request.

    ``mean_feature`` and ``contributions`` come from files (``--feat-stat`` / ``--contrib`` or the
    ones precompute.py wrote in the cache directory); ``train_features``, ``train_labels`` and
    ``train_layers`` (the statistics of the tapped layers) from the feature cache through
    ``extract_train`` (which runs the network only for a set not cached); ``train_images``, the
    training set itself, for fits that run the network on its images (AdaSCALE).
    ``batchnorm`` (BATS) is read from the classifier: (beta, gamma) of its last BatchNorm layer with
    D channels. ``files`` records each file used: path, sha256 and provenance record.
    """

    def __init__(
        self,
        config,
        model_key: dict,
        num_classes: int,
        feature_dim: int,
        extract_train,
        model=None,
        train_dataset=None,
    ):
        self.config = config
        self.train_dataset = train_dataset  # () -> the ID training set, for ``train_images``
        self.model = model
        self.model_key = model_key
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.extract_train = extract_train
        self.files: dict[str, dict] = {}
        self._values: dict[str, np.ndarray] = {}

    def get(self, name: str):
        if name not in self._values:
            if name == "train_images":  # the training set itself, for fits that run the network
                self._values[name] = self.train_dataset()
            elif name in ("train_features", "train_labels", "train_layers"):
                fs = self.extract_train()
                self._values.update(
                    train_features=fs.features, train_labels=fs.labels, train_layers=fs.layers
                )
            else:
                self._values[name] = getattr(self, f"_load_{name}")()
        return self._values[name]

    def for_detector(self, detector) -> dict:
        """The keyword arguments of ``detector.fit`` after the head."""
        return {name: self.get(name) for name in detector.needs()}

    def files_for(self, detector) -> dict:
        return {k: v for k, v in self.files.items() if k in detector.needs()}

    def _load_batchnorm(self) -> tuple[np.ndarray, np.ndarray]:
        found = last_batchnorm(self.model, self.feature_dim) if self.model is not None else None
        if found is None:
            raise UserError(
                f"bats needs a BatchNorm layer with {self.feature_dim} channels (the penultimate features') "
                f"in the classifier; {self.config.model_arch} has none. Choose another method for this model."
            )
        name, bn = found
        if bn.weight is None or bn.bias is None:
            raise UserError(
                f"bats: the BatchNorm layer {name!r} of {self.config.model_arch} has no affine parameters"
            )
        return bn.bias.detach().double().cpu().numpy(), bn.weight.detach().double().cpu().numpy()

    def _record(self, key: str, path: Path, flag: str | None) -> None:
        inputs = setup.statistics_inputs(self.config)
        record = check_provenance(path, self.model_key, self.config.label, flag, inputs)
        self.files[key] = {"path": str(path), "sha256": sha256_file(path), "record": record}

    def _find(self, what: str, flag: str, path_of) -> Path:
        """The statistics file of this run's training images: ``path_of(name, max_samples)`` by
        --name, else by --model-arch (the original code's naming); with --max-samples N the ``_nN``
        file, else the whole set's with a note; else an error naming the file and the command."""
        c = self.config
        max_samples = getattr(c, "max_samples", None)

        def present(subset):
            return next(
                (p for p in (path_of(n, subset) for n in (c.name, c.model_arch)) if p.is_file()), None
            )

        wanted = path_of(c.name, max_samples)
        command = f"python precompute.py {c.dataset_flags}" + (
            f" --max-samples {max_samples}" if max_samples else ""
        )
        path = present(max_samples) if max_samples else None
        if path is None:
            path = present(None)
            if path is not None and max_samples:
                print(
                    f"note: {what}: no {wanted.name} (--max-samples {max_samples}) in {wanted.parent}; "
                    f"using {path.name}, written without --max-samples (`{command}` writes the matching one)"
                )
        if path is not None:
            return path
        whole = path_of(c.name, None)
        others = sorted(p.name for p in whole.parent.glob(f"{whole.stem}_n*.npy"))
        there = f"; there are files of other --max-samples: {', '.join(others)}" if others else ""
        raise UserError(
            f"{what} {wanted} not found: run `{command}` with the same --cache-dir, or pass {flag}{there}"
        )

    def _load_mean_feature(self) -> np.ndarray:
        c = self.config
        if c.feat_stat:
            path = Path(c.feat_stat)
            if not path.is_file():
                raise UserError(f"DICE feature statistics {path} (given with --feat-stat) not found")
        else:
            path = self._find(
                "DICE feature statistics",
                "--feat-stat",
                lambda n, m: feat_stat_path(c.cache_dir, c.label, n, m),
            )
        self._record("mean_feature", path, "--feat-stat" if c.feat_stat else None)
        return load_feat_stat(path, self.feature_dim)

    def _load_contributions(self) -> np.ndarray:
        c = self.config
        detail = getattr(c, "detail", "mean_class")
        if c.contrib:
            path = Path(c.contrib)
            if not path.is_file():
                raise UserError(f"LINe contributions {path} (given with --contrib) not found")
        else:
            path = self._find(
                "LINe contributions",
                "--contrib",
                lambda n, m: contributions_path(c.cache_dir, c.label, n, detail=detail, max_samples=m),
            )
        self._record("contributions", path, "--contrib" if c.contrib else None)
        return load_contributions(path, self.num_classes, self.feature_dim)
