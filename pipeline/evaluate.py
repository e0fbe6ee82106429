"""The one evaluation path: a list of one or more detectors, one feature extraction.

1. Before any forward pass, each detector's settings are checked against the sizes known then
   (``Detector.check_sizes``: D, C, the training images) and every statistics file it needs is
   loaded and checked. A lone ``--method`` stops there with the message; with ``--methods`` a
   detector that cannot run is said, left out and given a row in the table, the others go on,
   and ``ood_eval.py`` exits 1 at the end (``DetectorsFailed``); so does a fit or score failing.
2. The training set is extracted (or read from the cache) when a detector fits on its features,
   then the ID test set and every OOD set: one forward pass per image, ever. Under torchrun every
   process forwards its share and rank 0 alone goes on.
3. Each detector in turn is fitted, scores every set (network-level detectors run the network
   on the images instead), and its run is kept in a folder of its own settings
   (``pipeline/runs.py``): ``{base_dir}/{in_dataset}/{method}/{name}/runs/<run id>/``, copied as
   the method's latest to ``{base_dir}/{in_dataset}/{method}/{name}/`` (results.json,
   scores/<set>.npy, plots/); the original code's per-image text files go to their own paths
   (``pipeline/original_files.py``).

``--in-dist-only`` / ``--out-dist-only`` score part of the sets into the same run folder, and the
metrics follow once both parts are there; ``--cal-metric`` computes them from a saved run alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from util import distributed
from util.errors import UserError
from util.io import save_scores, sha256_file
from util.runtime import code_version, ensure_writable_dir

from . import original_files, report, setup
from . import runs as runs_store
from .config import EvalConfig
from .layers import layer_choice
from .report import MethodResult
from .scoring import max_softmax, score_cached, score_images
from .session import open_session

# Statistics loaded before any forward pass, so that a missing file or layer fails first.
CHECKED_FIRST = ("mean_feature", "contributions", "batchnorm")
# The flags besides the detector's that a saved run must share for --cal-metric to use it.
SAVED_RUN_FIELDS = (
    "model_arch", "checkpoint", "epochs", "precision", "data_root", "max_samples",
    "contrib", "feat_stat", "detail", "id_root", "class_map", "num_classes", "head",
    "image_size", "mean", "std", "max_ood_samples", "noise_samples",
)  # fmt: skip
TRAIN_STATISTICS = ("train_features", "train_labels", "train_layers")


def evaluate(config: EvalConfig) -> list[MethodResult]:
    """Evaluate every detector of ``config``; returns the results (rank 0; [] on other ranks)."""
    if config.cal_metric:
        return metrics_from_saved(config)
    start = time.time()
    ensure_writable_dir(config.cache_dir, "cache directory")
    config.device = distributed.setup(config.device)  # torchrun: join the process group
    session = open_session(config, lambda tf: _sets_scored(config, tf))
    failures = _check_first(config, session)  # before any forward pass
    runs = [run for run in config.detectors if run.method not in failures]
    ensure_writable_dir(config.base_dir, "output directory")
    features = _extract(runs, session)
    if not distributed.leave():  # torchrun: ranks > 0 are done; rank 0 fits and scores alone
        return []
    if features:  # scored from features: say what extracting them cost
        extractor = session.extractor
        if extractor.images_forwarded == 0:
            print(
                f"all features loaded from the cache in {Path(config.cache_dir) / 'features'}: "
                "no forward pass"
            )
        else:
            print(f"forward pass over {extractor.images_forwarded} images (now cached)")
    base = {
        **config.settings(),
        "methods_run": [run.flag for run in config.detectors],
        "code_version": code_version(),
        "device": str(session.extractor.device),
        "num_images": {k: len(v) for k, v in session.datasets.items()},
        # images this run put through the network for the feature cache (each at most once; 0 when
        # every set was cached); network-level detectors run the network again on their own
        "images_forwarded": session.extractor.images_forwarded,
    }
    results, fits = [], {}
    owners = original_files.owners([run.method for run in runs])
    seconds = {}
    for run in runs:
        t0 = time.time()
        try:
            owns = run.method in owners
            result, fits[run.method] = _evaluate_one(config, run, session, features, base, owns)
        except (UserError, ValueError) as exc:  # --methods: the others go on
            failures[run.method] = _failed(config, run, exc)
            continue
        seconds[run.method] = time.time() - t0
        if result is not None:
            results.append(result)
    if seconds:
        print("fitted and scored in " + ", ".join(f"{m} {s:.1f} s" for m, s in seconds.items()))
    _print_tables(config, results, session.names, fits, failures)
    note = accuracy_note(config, session.model_key, features.get("in"))
    if note:
        print(note)
    print(f"forward passes: {session.extractor.images_forwarded} images ({time.time() - start:.1f} s in all)")
    if failures:
        raise DetectorsFailed(results, failures)
    return results


class DetectorsFailed(Exception):
    """Raised by ``evaluate`` after everything else was fitted, scored, written and printed, when
    some detectors of ``--methods`` failed (``ood_eval.py`` exits with status 1). ``results``: the
    others' results; ``failures``: method -> one-line reason."""

    def __init__(self, results: list, failures: dict[str, str]):
        done = len(results)
        super().__init__(
            f"{len(failures)} method(s) failed: {', '.join(failures)} (why: their rows in the table); "
            f"the results of the other {done} are written"
        )
        self.results, self.failures = results, failures


def _failed(config: EvalConfig, run, exc: Exception) -> str:
    """The one-line reason a detector of --methods failed (said now, in full); a lone --method's
    error stops the run as it is."""
    if len(config.detectors) == 1:
        raise exc if isinstance(exc, UserError) else UserError(f"{run.method}: {exc}") from None
    message = str(exc).removeprefix(f"{run.method}: ")
    print(f"{run.method} failed: {message} (the other methods go on)")
    return message.splitlines()[0]


# The ID accuracy this many percentage points below the published top-1 of the weights is pointed out.
ACCURACY_GAP = 5.0


def accuracy_note(config: EvalConfig, model_key: dict, id_features) -> str | None:
    """A line when the classifier's ID accuracy (argmax of its logits on the ID test set scored) is
    more than ``ACCURACY_GAP`` points below the top-1 its published weights spec gives
    (``models.weights``) on that dataset's test set; None when that is not known."""
    weights = setup.known_weights(config, model_key)
    if id_features is None or weights is None or weights.top1 is None or weights.dataset != config.label:
        return None
    accuracy = 100 * float(np.mean(np.argmax(id_features.logits, axis=1) == id_features.labels))
    if weights.top1 - accuracy <= ACCURACY_GAP:
        return None
    n = len(id_features.labels)
    subset = f"; this run scored a --max-samples subset of {n} images" if config.max_samples else ""
    return (
        f"note: the classifier's ID accuracy, {accuracy:.2f}% on {n} images, is "
        f"{weights.top1 - accuracy:.1f} points below the {weights.top1:g}% published for these weights "
        f"({weights.source}) on the {weights.dataset} test set{subset}. Usual causes: other images "
        "(e.g. JPEG copies of the test set) or other preprocessing (see the input line at the start)"
    )


def _sets_scored(config: EvalConfig, tf) -> tuple[dict, list[str]]:
    """(datasets, OOD names) of the run: all of them, or the ID or OOD part (--*-dist-only)."""
    datasets, names = setup.test_sets(config, tf, config.out_datasets, ood=config.only != "in")
    if config.only == "out":  # --out-dist-only
        datasets = {k: v for k, v in datasets.items() if k != "in"}
    return datasets, names


def _needs(runs: list) -> set[str]:
    """The statistics the detectors ``runs`` fit on."""
    return {name for run in runs for name in run.detector.needs()}


def _check_first(config: EvalConfig, session) -> dict[str, str]:
    """{method: one-line reason} of the detectors that cannot run, found before any forward pass:
    settings the sizes cannot take (``Detector.check_sizes``: D, C, training images) and statistics
    files missing or not matching (``CHECKED_FIRST``). A lone detector's problem, or problems of
    every detector, stop the run with the messages; otherwise each is said and the others go on."""
    errors = _size_problems(config, session)
    others = [run for run in config.detectors if run.method not in errors]
    errors.update(_statistics_problems(others, session.stats))
    if not errors:
        return {}
    if len(errors) == len(config.detectors):
        raise UserError("\n".join(errors.values()))
    reasons = {method: message.removeprefix(f"{method}: ") for method, message in errors.items()}
    for method, reason in reasons.items():
        if distributed.is_main():
            print(f"{method} cannot run: {reason} (the other methods go on)")
    return {method: reason.splitlines()[0] for method, reason in reasons.items()}


def _size_problems(config: EvalConfig, session) -> dict[str, str]:
    """{method: its size problems} (``Detector.check_sizes``); the training images are counted
    (no forward pass) only for detectors that fit on training features."""
    fc, out = session.fc, {}
    for run in config.detectors:
        detector = run.detector
        fits_on_training_set = set(detector.needs()) & {*TRAIN_STATISTICS, "train_images"}
        num_train = len(session.train_dataset()) if fits_on_training_set else None
        problems = detector.check_sizes(fc.in_features, fc.out_features, num_train)
        if problems and config.max_samples:
            problems[-1] += f" (--max-samples {config.max_samples} limits the training images)"
        if hasattr(detector, "check_layers"):  # a multi-layer detector: the tapped modules
            problems += detector.check_layers(layer_choice(config)[0])
        if problems:
            out[run.method] = f"{run.method}: " + "; ".join(problems)
    return out


def _statistics_problems(runs: list, stats) -> dict[str, str]:
    """{method: message} of the statistics files (``CHECKED_FIRST``) the detectors ``runs`` need
    that are missing or do not match; under torchrun rank 0 reads them and tells every rank."""
    errors = {}
    if distributed.is_main():  # only rank 0 reads the cache directory (no shared file system needed)
        for run in runs:
            try:
                for name in CHECKED_FIRST:
                    if name in run.detector.needs():
                        stats.get(name)
            except UserError as exc:
                errors[run.method] = str(exc)
    if distributed.active():
        errors = distributed.broadcast(errors)
    return errors


def _extract(runs: list, session) -> dict:
    """Features of the training set (when a detector of ``runs`` fits on them) and of every set
    scored from features, after checking the cache's disk space; {} when only network-level
    detectors run."""
    needs = _needs(runs)
    by_features = any(run.detector.kind == "features" for run in runs)
    if by_features:
        extractor = session.extractor
        needed = sum(extractor.bytes_needed(ds, session.tags[k]) for k, ds in session.datasets.items())
        extractor.require_space(needed, "the test and OOD sets")
    if needs & set(TRAIN_STATISTICS):
        session.extract_train()  # every process takes part under torchrun
    return session.extract_sets() if by_features else {}


def _evaluate_one(config: EvalConfig, run, session, features: dict, base: dict, owns_files: bool):
    """Fit and score one detector, save its run and original-format files; (result or None, the
    training images its fit used)."""
    t0 = time.time()
    scores, preds, labels, confidence = _fit_and_score(run, session, features)
    report.check_scores(scores)
    extractor, stats = session.extractor, session.stats
    skipped = {k: extractor.skipped[t] for k, t in session.tags.items() if t in extractor.skipped}
    fit = _training_images(run.detector, stats, config)
    files = stats.files_for(run.detector)
    checkpoint = {
        "path": setup.weights_source(session.checkpoint),
        "sha256": session.model_key["checkpoint_sha256"],
    }
    settings = {
        **base,
        "method": run.method,
        "method_flag": run.flag,
        "detector": {**run.detector.get_params(), **run.detector.fitted_values()},
        "files": {"checkpoint": checkpoint} | files,
        "num_images_used": {k: len(v) for k, v in scores.items()},
        "skipped_bad_images": skipped,
        "training_images": fit,
    }
    if getattr(run.detector, "taps", ()):  # a multi-layer detector: the modules it read
        settings["feature_layers"] = list(layer_choice(config)[0])
    run_dir = _run_dir(config, run, _run_key(config, run, session.model_key, files))
    previous = runs_store.read_run(run_dir) if (run_dir / "run.json").is_file() else {}
    settings["sets_scored"] = list(dict.fromkeys([*previous.get("sets_scored", []), *scores]))
    save_scores(run_dir, scores)
    id_predictions = None
    if "in" in scores:
        id_predictions = {"labels": labels, "predictions": preds["in"], "confidence": confidence}
        runs_store.save_id_predictions(run_dir, **id_predictions)
    runs_store.write_run(run_dir, settings)  # last: it lists the sets whose scores are saved
    if owns_files:
        _write_original_files(config, run.method, scores, id_predictions, run_dir)
    for key, unreadable in skipped.items():
        print(
            f"{key}: {len(session.datasets[key])} images requested, {len(unreadable)} unreadable skipped, "
            f"{len(scores[key])} used (--skip-bad-images; listed in results.json)"
        )
    settings["seconds_to_score"] = round(time.time() - t0, 2)
    result = _complete(config, run.method, run_dir, session.names, settings, config.only)
    return result, fit


def _write_original_files(config: EvalConfig, method: str, scores, id_predictions, run_dir: Path) -> None:
    """The original code's per-image text files of ``method`` (``pipeline/original_files.py``; where
    they went is said once, after the table); a note when the folder holds files of other runs."""
    nat, others = original_files.write_original_files(
        config.base_dir, config.label, config.name, method, config.detail, scores, id_predictions, run_dir
    )
    if others:
        listed = ", ".join(f"{f} ({w['method']})" for f, w in list(others.items())[:6])
        more = f" and {len(others) - 6} more" if len(others) > 6 else ""
        print(f"  note: {nat}/ also holds files of other runs: {listed}{more} (see written_by.json)")


def _run_key(config: EvalConfig, run, model_key: dict, files: dict) -> dict:
    """Everything that changes a run's numbers: another value gives another run folder."""
    return {
        "in_dataset": config.in_dataset,
        "name": config.name,
        "model": model_key,
        "method": run.method,
        "detector": run.detector.get_params(),
        "precision": config.precision,
        "max_samples": config.max_samples,
        "data_root": str(Path(config.data_root).resolve()),
        "statistics": {k: v["sha256"] for k, v in files.items()},
        # Set only away from the defaults, so that the keys of earlier runs stay as they were.
        **{
            k: v
            for k, v in {
                "id_root": config.id_root and str(Path(config.id_root).resolve()),
                "class_map": config.class_map and sha256_file(config.class_map),
                "input": repr(setup.input_spec(config))
                if any(getattr(config, f) is not None for f in ("image_size", "mean", "std"))
                else None,
                "max_ood_samples": config.max_ood_samples,
                "noise_samples": config.noise_samples,
                "benchmark": config.benchmark,
                "layers": layer_choice(config)[0] if getattr(run.detector, "taps", ()) else None,
            }.items()
            if v is not None
        },
    }


def _method_folder(config: EvalConfig, run) -> tuple[Path, str]:
    """(the method's results folder, the readable part of its run ids) of a detector run."""
    detector = run.detector
    readable = runs_store.readable_settings(
        detector.get_params(), detector.inert_params(), config.max_samples, config.max_ood_samples
    )
    return runs_store.method_dir(config.base_dir, config.label, run.method, config.name), readable


def _run_dir(config: EvalConfig, run, key: dict) -> Path:
    folder, readable = _method_folder(config, run)
    return folder / runs_store.RUNS / runs_store.run_id(readable, key)


def _training_images(detector, stats, config: EvalConfig) -> dict | None:
    """How many training images the detector's fit used, and from where (None: no fit on data)."""
    needs = detector.needs()
    if "train_images" in needs:  # a fit that runs the network on training images (AdaSCALE)
        n = len(getattr(detector, "fit_features_", ()))
        where = f"--max-samples {config.max_samples} subset" if config.max_samples else "training set"
        return {
            "count": n,
            "source": f"images of the {where}, run through the network",
            "max_samples": config.max_samples,
        }
    if set(needs) & set(TRAIN_STATISTICS):
        n = len(stats.get("train_labels"))
        where = f"--max-samples {config.max_samples} subset" if config.max_samples else "training set"
        return {"count": n, "source": f"cached training features, {where}", "max_samples": config.max_samples}
    for name in ("contributions", "mean_feature"):
        if name in needs:
            record = stats.files[name].get("record") or {}
            return {
                "count": record.get("num_images"),
                "source": stats.files[name]["path"],
                "max_samples": record.get("max_samples"),
            }
    return None


def _complete(config: EvalConfig, method: str, run_dir: Path, names: list[str], settings: dict, only=None):
    """The MethodResult of a run folder holding the ID scores and those of every OOD set ``names``
    (written to results.json there and published as the method's latest), else None with a line
    saying what is missing."""
    saved = runs_store.read_run(run_dir).get("sets_scored", [])
    if "in" not in saved:
        print(
            f"{method}: OOD scores saved in {run_dir}/; no ID test scores with these settings yet, so no "
            "metrics: run once with --in-dist-only (or without --out-dist-only)"
        )
        return None
    ood = [n for n in names if n in saved] if only == "in" else names
    predictions = runs_store.load_id_predictions(run_dir)
    accuracy = float(np.mean(predictions["predictions"] == predictions["labels"]))
    if only == "in" and not ood:
        print(
            f"{method}: ID test scores saved in {run_dir}/ (ID accuracy {100 * accuracy:.2f}%); the "
            "metrics follow once --out-dist-only scores the OOD sets with the same settings"
        )
        return None
    scores = runs_store.load_scores(run_dir, ["in", *ood])
    groups = setup.ood_groups(config, ood)
    result = report.method_result(method, scores, accuracy, ood, settings, groups)
    title = f"{method} on {config.label} ({config.name})"
    report.write_result(run_dir, result, config.plots, title, config.fpr_convention)
    latest = runs_store.method_dir(config.base_dir, config.label, method, config.name)
    runs_store.publish(run_dir, latest, ["in", *ood])  # where: one line after the table (_print_tables)
    return result


def _print_tables(
    config: EvalConfig, results: list, names: list[str], fits: dict, failures: dict[str, str] | None = None
) -> None:
    """The table of the methods (a row for each of ``failures``, {method: one-line reason}), notes
    on their training images, one line saying where the results went and, for a run that wrote
    them, one saying where the original code's files went."""
    failures = failures or {}
    label, name = config.label, config.name
    if results and results[0].groups:  # OpenOOD benchmark: each set, near and far averages, both FPR95s
        for r in results:
            print(report.benchmark_table(r, label, name))
        if len(results) > 1 or failures:
            print(report.benchmark_summary(results, label, name, failures))
    elif len(results) == 1 and not failures:
        print(report.single_table(results[0], label, name, config.fpr_convention))
    elif results or failures:
        names = [n for n in names if all(n in r.ood for r in results)]
        print(report.methods_table(results, names, label, name, config.fpr_convention, failures))
    for line in report.training_notes(fits, config.max_samples):
        print(line)
    if results:
        plots = config.fpr_convention if config.plots else None
        print(runs_store.results_line(config.base_dir, label, name, [r.method for r in results], plots))
    if not config.cal_metric:  # the original code's files are written when scoring, not from saved runs
        methods = [run.method for run in config.detectors if run.method not in failures]
        line = original_files.location_line(config.base_dir, label, name, methods)
        if line:
            print(line)


def metrics_from_saved(config: EvalConfig) -> list[MethodResult]:
    """--cal-metric: the metrics of runs saved earlier with these settings, from their per-image
    scores alone (no network, no data): the latest such run of each method."""
    results, fits = [], {}
    for run in config.detectors:
        detector = run.detector
        folder, readable = _method_folder(config, run)
        wanted = json.loads(json.dumps({k: getattr(config, k) for k in SAVED_RUN_FIELDS}))
        params = json.loads(json.dumps(detector.get_params()))
        candidates = []
        for d in runs_store.find_runs(folder, readable):
            saved = runs_store.read_run(d)
            saved_params = {k: saved.get("detector", {}).get(k) for k in params}
            if saved_params == params and all(saved.get(k) == v for k, v in wanted.items()):
                candidates.append(d)
        if not candidates:
            there = [p.name for p in (folder / runs_store.RUNS).glob("*")] if folder.is_dir() else []
            raise UserError(
                f"--cal-metric: no saved scores of {run.method} with {readable} and these flags "
                f"({', '.join(f'{k} {v}' for k, v in wanted.items())}) under {folder / runs_store.RUNS}/; "
                f"saved there: {', '.join(there) or 'nothing'}. Run ood_eval.py with these flags and "
                "without --cal-metric first."
            )
        if len(candidates) > 1:  # same flags, other file contents (a checkpoint or statistics file changed)
            raise UserError(
                f"--cal-metric: {len(candidates)} saved runs of {run.method} match these flags, made with "
                f"different checkpoint or statistics files: {', '.join(d.name for d in candidates)}; pass "
                "--base-dir of one, or rerun ood_eval.py without --cal-metric"
            )
        run_dir = candidates[0]
        settings = runs_store.read_run(run_dir)
        saved = [n for n in settings.get("sets_scored", []) if n != "in"]
        names = config.out_datasets or saved
        missing = [n for n in names if n not in saved]
        if missing:
            raise UserError(f"--cal-metric: {run_dir} holds no scores of {', '.join(missing)}")
        if not names:
            raise UserError(
                f"--cal-metric: {run_dir} holds no OOD scores (an --in-dist-only run); score the OOD sets "
                "with --out-dist-only and the same flags first"
            )
        result = _complete(config, run.method, run_dir, names, settings)
        if result is not None:
            results.append(result)
            fits[run.method] = settings.get("training_images")
    names = list(config.out_datasets or (results[0].ood if results else []))
    _print_tables(config, results, names, fits)
    return results


def _fit_and_score(run, session, features: dict):
    """(scores, predictions per set, ID labels, ID max softmax) of one detector: fitted on the head
    and its statistics and scored from the cache, or for a network-level detector, on the images.
    Without an ID set (--out-dist-only) the last two are None."""
    detector = run.detector
    if detector.kind == "network":
        try:
            stats = session.stats.for_detector(detector)  # training statistics, if it needs any
            detector.fit(session.extractor.model, setup.input_std(session.transform), **stats)
        except ValueError as exc:  # a setting the network cannot take
            raise UserError(f"{run.method}: {exc}") from None
        scores, preds, labels, confidence = score_images(
            detector, session.datasets, session.extractor, session.tags
        )
        return scores, preds, labels.get("in"), confidence.get("in")
    try:
        detector.fit(session.fc, **session.stats.for_detector(detector))
        scores, preds = score_cached(detector, features)
    except ValueError as exc:  # a setting the data cannot take (k above the bank, dim above D)
        raise UserError(f"{run.method}: {exc}") from None
    if "in" not in features:
        return scores, preds, None, None
    return scores, preds, features["in"].labels, max_softmax(detector, features["in"].features)
