"""Hyperparameter sweep of one detector, selected without test OOD data.

The ID test set is split (seeded) into a validation part and a test part. Every setting of the
detector's search space (``Detector.search_space``, axes overridable) is scored on the ID test
set, a validation OOD set (``gaussian`` noise by default, never one of the test OOD sets) and the
test OOD sets; the setting with the lowest FPR95 (then highest AUROC) of ID-validation against
the validation OOD set is selected and reported on the ID-test part against the test OOD sets.
Settings tied at the printed precision (``select_setting``) are named in a warning and the paper's
setting is kept when it is among them; a validation set that ties every setting is said to be
unable to discriminate (``--val-ood`` with real images is the remedy).

Feature-level detectors are scored from the feature cache (no forward pass once the sets are
cached), all sets stacked into one array per setting; a setting that changes only parameters the
fitted state does not depend on (LINe's tau, KNN's k) reuses the fit. Network-level detectors
(ODIN) run the network on the images for every setting.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from detectors import registry
from detectors.base import score_features
from util.datasets import OOD_SETS
from util.errors import UserError
from util.io import atomic_write_json
from util.layer_taps import LayerArrays
from util.metrics import auroc, fpr_at_95_tpr, ood_metrics
from util.openood import get_benchmark
from util.runtime import ensure_writable_dir

from . import setup
from .config import SweepConfig
from .evaluate import TRAIN_STATISTICS
from .runs import method_dir
from .scoring import score_images
from .session import open_session


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (validation, test) index arrays, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(order[:k]), np.sort(order[k:])


def grid_of(config: SweepConfig, feature_dim: int) -> dict[str, tuple]:
    """The detector's search space with the axes of ``config.grid`` replaced."""
    cls, fixed = registry.lookup(config.method)
    inert = registry.build(config.method, config.dataset.preset).inert_params()
    space = {k: v for k, v in cls.search_space(feature_dim).items() if k not in inert}
    for name, values in config.grid.items():
        if name in fixed:
            raise UserError(f"--grid {name}: {config.method} fixes {name} = {fixed[name]!r}")
        if name in inert:
            raise UserError(f"--grid {name}: {name} has no effect on {config.method}")
        space[name] = tuple(values)
    return space


@dataclass(frozen=True)
class Validation:
    """Where a sweep selects its setting: the ID validation images (a list of their own, key
    ``id_key``, or a seeded ``fraction`` of the ID test set), the validation OOD set (key
    ``ood_key``) and the rule (best AUROC, OpenOOD's; else lowest FPR95, then highest AUROC)."""

    ood_key: str
    id_key: str | None
    fraction: float | None
    seed: int | None
    description: str
    selection: str
    by_auroc: bool

    def split(self, part: dict) -> tuple[np.ndarray, np.ndarray]:
        """(ID validation scores, ID test scores) of one setting's scores."""
        if self.id_key is not None:
            return part[self.id_key], part["in"]
        val_idx, test_idx = split_indices(len(part["in"]), self.fraction, self.seed)
        return part["in"][val_idx], part["in"][test_idx]

    def select(self, rows: list[dict], axes: list[str], paper: dict) -> Selection:
        return select_setting(rows, axes, paper, by_auroc=self.by_auroc)


# Validation metrics are printed as percentages with two decimals; settings equal at that
# precision are tied (the table cannot tell them apart, and on a few thousand validation images a
# smaller difference is a few images' worth of noise).
TIE_DECIMALS = 2


def shown(value: float) -> float:
    """A metric (a fraction) as the table prints it: a percentage rounded to ``TIE_DECIMALS``."""
    return round(100 * value, TIE_DECIMALS)


@dataclass(frozen=True)
class Selection:
    """The selected row; ``tied``: the rows tied with it on the validation criterion (itself
    included; one row when there is no tie), in grid order; ``paper``: the paper's setting on the
    swept axes; ``tie_rule``: why the rows tie; ``undiscriminating``: every setting tied (the
    validation set cannot rank them)."""

    row: dict
    tied: list[dict]
    reason: str
    paper: dict
    tie_rule: str = ""
    undiscriminating: bool = False


def same_setting(row: dict, setting: dict, axes: list[str]) -> bool:
    return all(a in setting and row[a] == setting[a] for a in axes)


def select_setting(rows: list[dict], axes: list[str], paper: dict, by_auroc: bool = False) -> Selection:
    """The best row by validation FPR95 then AUROC (``by_auroc``: AUROC then FPR95, OpenOOD's rule),
    both compared as printed (``shown``). Rows equal to the best are tied; when every row's FPR95 is
    100% (FPR95-first rule only: no threshold keeping 95% of the ID images rejects any OOD image, as
    with easy noise scored oddly) all rows are tied. Of tied rows the paper's setting (``paper``,
    the preset's values on ``axes``) is kept when it is among them, else the first in grid order."""

    def key(row: dict) -> tuple:
        fpr, auc = shown(row["val_FPR95"]), shown(row["val_AUROC"])
        return (-auc, fpr) if by_auroc else (fpr, -auc)

    best = min(key(r) for r in rows)
    no_fpr_rank = not by_auroc and len(rows) > 1 and all(shown(r["val_FPR95"]) == 100 for r in rows)
    tied = list(rows) if no_fpr_rank else [r for r in rows if key(r) == best]
    undiscriminating = len(rows) > 1 and len(tied) == len(rows)
    if len(tied) == 1:
        return Selection(tied[0], tied, "the best validation result", paper)
    kept = next((r for r in tied if same_setting(r, paper, axes)), None)
    if kept is not None:
        reason = "the paper's setting"
    else:
        reason = (
            f"the first in grid order; the paper's setting ({setting_text(paper, axes)}) is not among the "
            "tied ones"
        )
    rule = (
        "val FPR95 100.00 for every setting: no threshold keeping 95% of the ID images rejects an OOD one"
        if no_fpr_rank
        else f"equal val {'AUROC and FPR95' if by_auroc else 'FPR95 and AUROC'} to two decimals"
    )
    return Selection(kept or tied[0], tied, reason, paper, rule, undiscriminating)


def setting_text(setting: dict, axes: list[str]) -> str:
    """``p_w=90, p_a=90`` (a value the setting lacks as ?)."""
    return ", ".join(f"{a}={setting.get(a, '?')}" for a in axes) or "the defaults"


def validation_of(config: SweepConfig) -> Validation:
    """An OpenOOD benchmark's validation lists (its spec names them), else --val-fraction of the
    ID test set against --val-ood."""
    if config.benchmark:
        bench = get_benchmark(config.benchmark)
        return Validation(
            f"val_{bench.val_ood}", "in_val", None, None, f"ID validation list val_{bench.id_set}",
            f"best AUROC of ID val_{bench.id_set} against OOD val_{bench.val_ood} (OpenOOD v1.5's search)",
            by_auroc=True,
        )  # fmt: skip
    return Validation(
        config.val_ood, None, config.val_fraction, config.seed,
        f"ID validation share {config.val_fraction:g} (seed {config.seed})",
        f"lowest FPR95 (then highest AUROC) of the ID validation share against {config.val_ood}",
        by_auroc=False,
    )  # fmt: skip


def _sweep_sets(config: SweepConfig, validation: Validation, tf) -> tuple[dict, list[str]]:
    """The test sets plus the validation sets (a benchmark's lists, or the --val-ood set)."""
    own_lists = validation.id_key is not None
    extra = () if own_lists else (validation.ood_key,)
    datasets, names = setup.test_sets(config, tf, config.out_datasets, extra=extra, val=own_lists)
    if validation.ood_key in names:
        raise UserError(f"the validation OOD set {validation.ood_key!r} is also a test OOD set; pick another")
    return datasets, names


def sweep(config: SweepConfig) -> dict:
    """Score every setting of the grid, select on the validation data, report and write sweep.json."""
    start = time.time()
    if not 0 < config.val_fraction < 1:
        raise UserError(f"--val-fraction {config.val_fraction} must be between 0 and 1")
    ensure_writable_dir(config.cache_dir, "cache directory")
    validation = validation_of(config)
    session = open_session(config, lambda tf: _sweep_sets(config, validation, tf))
    groups = setup.ood_groups(config, session.names)
    space = grid_of(config, session.fc.in_features)
    base = registry.build(config.method, config.dataset.preset)
    settings = _grid_settings(config, base, space, session)
    score, forward_note = _scorer(config, base, session)
    extracted = time.time()
    print(
        f"{config.method}: {len(settings)} settings of {', '.join(space) or '(no parameter)'}; "
        f"features ready in {extracted - start:.1f} s ({forward_note}); {validation.description}; "
        f"validation OOD: {validation.ood_key}"
    )
    rows, val_images = [], 0
    for setting in settings:
        part = score(setting)
        val_images = len(validation.split(part)[0])
        rows.append(_row(setting, part, validation, session.names, groups))
    axes = list(space)
    paper = {a: v for a, v in base.get_params().items() if a in space}
    chosen = validation.select(rows, axes, paper)
    _print_rows(rows, chosen, axes, session.names, validation.selection, time.time() - extracted)
    for line in tie_warning(chosen, validation, axes):
        print(line)
    _print_groups(chosen.row, groups)
    out_dir = method_dir(config.base_dir, config.label, f"{base.run_name()}_sweep", config.name)
    summary = {
        "method": base.run_name(),
        "defaults": base.get_params(),
        "grid": {a: list(v) for a, v in space.items()},
        "selected": chosen.row,
        "selected_because": chosen.reason,
        "tied": [{a: r[a] for a in axes} for r in chosen.tied] if len(chosen.tied) > 1 else [],
        "paper_setting": paper,
        "validation_discriminates": not chosen.undiscriminating,
        "rows": rows,
        "selection": validation.selection,
        "val_ood": validation.ood_key,
        "val_fraction": validation.fraction,
        "val_images": val_images,
        "seed": validation.seed,
        "groups": groups,
        "test_sets": session.names,
        "images_forwarded": session.extractor.images_forwarded,
        "settings": config.settings(),
    }
    atomic_write_json(out_dir / "sweep.json", summary)
    if len(space) >= 2:
        _heatmap(config, base.run_name(), out_dir, rows, chosen.row, axes)
    print(f"results: {out_dir / 'sweep.json'}  ({time.time() - start:.1f} s in all)")
    return summary


def tie_warning(
    chosen: Selection, validation: Validation, axes: list[str], shown_at_most: int = 8
) -> list[str]:
    """The WARNING lines of a tie (none without one): the tied settings, which one was kept and why,
    and, when the validation set ties every setting, that it cannot discriminate and what to pass."""
    if len(chosen.tied) < 2:
        return []
    names = [setting_text(r, axes) for r in chosen.tied]
    more = f", and {len(names) - shown_at_most} more (in sweep.json)" if len(names) > shown_at_most else ""
    lines = [
        f"WARNING: {len(names)} settings tie on the validation set ({validation.description} against "
        f"{validation.ood_key}; {chosen.tie_rule}): {'; '.join(names[:shown_at_most])}{more}; "
        f"selected {setting_text(chosen.row, axes)} ({chosen.reason})"
    ]
    if chosen.undiscriminating:
        lines.append(
            f"WARNING: the validation set cannot discriminate between the {len(names)} settings; "
            + _validation_remedy(validation)
        )
    return lines


def _validation_remedy(validation: Validation) -> str:
    """What to change when a validation set ties every setting: real images instead of synthetic
    noise (an OOD set spec without a path), else a larger or harder validation set."""
    if validation.id_key is not None:
        return "these benchmark validation lists do not rank this detector's settings"
    spec = OOD_SETS.get(validation.ood_key)
    if spec is not None and spec.path is None:
        return "pass --val-ood with a real OOD set (an image folder unlike the ID classes, not a test set)"
    return "a larger (--val-fraction, more --val-ood images) or harder validation OOD set may separate them"


def _grid_settings(config: SweepConfig, base, space: dict, session) -> list[dict]:
    """Every setting of the grid ``space``, checked before any forward pass: a value the detector
    cannot take is an error; a setting the sizes cannot take is left out (said)."""
    settings = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    for setting in settings:
        try:
            base.with_params(**setting).check_params()
        except ValueError as exc:
            raise UserError(f"{config.method} {setting}: {exc}") from None
    return _settings_the_sizes_take(config, base, settings, session)


def _settings_the_sizes_take(config: SweepConfig, base, settings: list[dict], session) -> list[dict]:
    """The grid's settings that D, C and the training images can take (``Detector.check_sizes``,
    known before any forward pass); each dropped one is said, and none left is an error."""
    num_train = len(session.train_dataset()) if set(base.needs()) & set(TRAIN_STATISTICS) else None
    fc, kept = session.fc, []
    for setting in settings:
        problems = base.with_params(**setting).check_sizes(fc.in_features, fc.out_features, num_train)
        if problems:
            print(f"{config.method} {setting} left out of the sweep: {'; '.join(problems)}")
        else:
            kept.append(setting)
    if not kept:
        raise UserError(f"{config.method}: no setting of the grid can run here (see the lines above)")
    return kept


def _scorer(config: SweepConfig, base, session):
    """(setting -> {set key: scores}, what extracting the sets cost). Feature-level detectors score
    all sets stacked from the cache, refitting only when a setting changes what the fit depends on;
    network-level ones run the network on the images for each setting."""
    if base.kind == "network":
        last_network = [base]

        def score_network(setting: dict) -> dict:
            try:
                detector = last_network[0].with_params(**setting)  # shares a fit its changes keep
                if not detector.is_fitted:
                    stats = session.stats.for_detector(detector)
                    detector.fit(session.extractor.model, setup.input_std(session.transform), **stats)
                last_network[0] = detector
            except ValueError as exc:
                raise UserError(f"{config.method} {setting}: {exc}") from None
            return score_images(detector, session.datasets, session.extractor, session.tags)[0]

        return score_network, "a network-level detector: the network runs on every set for each setting"
    for name in base.needs():  # the files fail here, before any forward pass
        session.stats.get(name)
    features = session.extract_sets()
    stacked = np.concatenate([np.asarray(fs.features, dtype=np.float32) for fs in features.values()])
    bounds = dict(zip(features, np.cumsum([0, *(len(fs) for fs in features.values())])))
    held = [fs.layers for fs in features.values()]
    layers = LayerArrays.concatenate(held) if all(held) else None  # for multi-layer detectors
    last = [base]

    def score_features_of(setting: dict) -> dict:
        detector = last[0].with_params(**setting)  # shares the fit when only unfitted params changed
        try:
            if not detector.is_fitted:
                detector.fit(session.fc, **session.stats.for_detector(detector))
            last[0] = detector
            scores, _ = score_features(detector, stacked, layers=layers)
        except ValueError as exc:
            raise UserError(f"{config.method} {setting}: {exc}") from None
        return {k: scores[bounds[k] : bounds[k] + len(fs)] for k, fs in features.items()}

    return score_features_of, session.forward_note()


def _row(setting: dict, part: dict, validation: Validation, test_names: list[str], groups: dict) -> dict:
    """One setting's validation and test metrics (test: each set, their mean, each group's mean)."""
    id_val, id_test = validation.split(part)
    test = {s: ood_metrics(id_test, part[s], with_ood_positive=True) for s in test_names}
    keys = ("FPR95", "FPR95_OOD_POSITIVE", "AUROC")
    row = {
        **setting,
        "val_FPR95": fpr_at_95_tpr(id_val, part[validation.ood_key]),
        "val_AUROC": auroc(id_val, part[validation.ood_key]),
        "test": {s: {k: m[k] for k in keys} for s, m in test.items()},
        "test_FPR95": float(np.mean([m["FPR95"] for m in test.values()])),
        "test_AUROC": float(np.mean([m["AUROC"] for m in test.values()])),
    }
    if groups:
        row["groups"] = {
            g: {k: float(np.mean([row["test"][s][k] for s in sets])) for k in keys}
            for g, sets in groups.items()
        }
    return row


def _print_rows(
    rows: list[dict], chosen: Selection, axes: list[str], test_names, selection: str, seconds: float
):
    """The table of every setting (the selected one and the ones tied with it marked) and the
    selection line."""
    head = "".join(f"{a:>16}" for a in axes)
    print(
        f"{head} | {'val FPR95':>9}{'val AUROC':>10} | {'test FPR95':>10}{'test AUROC':>11}"
        f"   (test = mean over {', '.join(test_names)}; %)"
    )
    best, tied = chosen.row, {id(r) for r in chosen.tied} if len(chosen.tied) > 1 else set()
    for r in rows:
        mark = "  <- selected" if r is best else "  (tied)" if id(r) in tied else ""
        print(
            "".join(f"{r[a]!s:>16}" for a in axes)
            + f" | {100 * r['val_FPR95']:>9.2f}{100 * r['val_AUROC']:>10.2f} | {100 * r['test_FPR95']:>10.2f}"
            f"{100 * r['test_AUROC']:>11.2f}{mark}"
        )
    how = (
        f"by {selection}"
        if len(chosen.tied) < 2
        else f"among {len(chosen.tied)} tied settings ({chosen.reason})"
    )
    print(
        f"{len(rows)} settings scored in {seconds:.1f} s; selected {how}: {setting_text(best, axes)} -> "
        f"test FPR95 {100 * best['test_FPR95']:.2f}, AUROC {100 * best['test_AUROC']:.2f}"
    )


def _print_groups(best: dict, groups: dict) -> None:
    """The selected setting's average over each OOD group (near, far) of a benchmark."""
    for g, m in best.get("groups", {}).items():
        print(
            f"  {g} AVG ({', '.join(groups[g])}): FPR95 (ID+) {100 * m['FPR95']:.2f}, FPR95 (OOD+) "
            f"{100 * m['FPR95_OOD_POSITIVE']:.2f}, AUROC {100 * m['AUROC']:.2f}"
        )


def _heatmap(
    config: SweepConfig, method: str, out_dir, rows: list[dict], best: dict, axes: list[str]
) -> None:
    """Average test FPR95 over the first two axes, the others at the selected values (PNG)."""
    from util.plots import plot_sweep_heatmap  # matplotlib only when there is a grid to draw

    x, y = axes[1], axes[0]
    others = {a: best[a] for a in axes[2:]}
    cells = [r | {"FPR95": r["test_FPR95"]} for r in rows if all(r[a] == v for a, v in others.items())]
    suffix = "".join(f"_{a}{v:g}" if isinstance(v, float) else f"_{a}{v}" for a, v in others.items())
    heatmap = plot_sweep_heatmap(
        cells,
        out_dir / f"heatmap{suffix}.png",
        title=f"{method} on {config.label}: average test FPR95"
        + (f" at {', '.join(f'{a}={v:g}' for a, v in others.items())}" if others else ""),
        rows_key=y,
        cols_key=x,
    )
    print(f"heat map: {heatmap}")
