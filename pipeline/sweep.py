"""Hyperparameter sweep of one detector, selected without test OOD data.

The ID test set is split (seeded) into a validation part and a test part. Every setting of the
detector's search space (``Detector.search_space``, axes overridable) is scored on the ID test
set, a validation OOD set (``gaussian`` noise by default, never one of the test OOD sets) and the
test OOD sets; the setting with the lowest FPR95 (then highest AUROC) of ID-validation against
the validation OOD set is selected and reported on the ID-test part against the test OOD sets.

Feature-level detectors are scored from the feature cache (no forward pass once the sets are
cached), all sets stacked into one array per setting; a setting that changes only parameters the
fitted state does not depend on (LINe's tau, KNN's k) reuses the fit. Network-level detectors
(ODIN) run the network on the images for every setting.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from detectors import registry
from detectors.base import score_features
from util.data import paper_setting
from util.errors import UserError
from util.io import atomic_write_json
from util.metrics import auroc, fpr_at_95_tpr, ood_metrics
from util.openood import get_benchmark
from util.runtime import ensure_writable_dir

from . import setup
from .config import SweepConfig
from .runs import method_dir
from .scoring import score_images
from .statistics import TrainingStatistics


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(n) into (validation, test) index arrays, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(order[:k]), np.sort(order[k:])


def grid_of(config: SweepConfig, feature_dim: int) -> dict[str, tuple]:
    """The detector's search space with the axes of ``config.grid`` replaced."""
    cls, fixed = registry.lookup(config.method)
    inert = registry.build(config.method, paper_setting(config.in_dataset)).inert_params()
    space = {k: v for k, v in cls.search_space(feature_dim).items() if k not in inert}
    for name, values in config.grid.items():
        if name in fixed:
            raise UserError(f"--grid {name}: {config.method} fixes {name} = {fixed[name]!r}")
        if name in inert:
            raise UserError(f"--grid {name}: {name} has no effect on {config.method}")
        space[name] = tuple(values)
    return space


def sweep(config: SweepConfig) -> dict:
    start = time.time()
    if not 0 < config.val_fraction < 1:
        raise UserError(f"--val-fraction {config.val_fraction} must be between 0 and 1")
    ensure_writable_dir(config.cache_dir, "cache directory")
    tf = setup.transform(config)
    if config.benchmark:  # OpenOOD's automatic parameter search: its ID and OOD validation lists
        bench = get_benchmark(config.benchmark)
        datasets, test_names = setup.benchmark_sets(config, tf, config.out_datasets, val=True)
        val_ood = f"val_{bench.val_ood}"
        selection = f"best AUROC of ID val_{bench.id_set} against OOD {val_ood} (OpenOOD v1.5's search)"
    else:
        datasets, test_names = setup.test_sets(config, tf, config.out_datasets, extra=(config.val_ood,))
        if config.val_ood in test_names:
            raise UserError(f"the validation OOD set {config.val_ood!r} is also a test OOD set; pick another")
        val_ood = config.val_ood
        selection = f"lowest FPR95 (then highest AUROC) of the ID validation share against {val_ood}"
    groups = setup.ood_groups(config, test_names)
    model, model_key, _ = setup.load_classifier(config)
    fc = model.get_classifier()
    extractor = setup.make_extractor(config, model, model_key)
    tags = {key: setup.set_tag(config, key) for key in datasets}
    space = grid_of(config, fc.in_features)
    base = registry.build(config.method, paper_setting(config.in_dataset))
    settings = [dict(zip(space, values)) for values in itertools.product(*space.values())]
    stats = TrainingStatistics(
        config,
        model_key,
        setup.num_classes(config),
        fc.in_features,
        lambda: extractor.extract(setup.train_set(config, tf), setup.tag(config, "train")),
        model=model,
    )
    network = base.kind == "network"
    if not network:
        for name in base.needs():  # the files fail here, before any forward pass
            stats.get(name)
        features = {key: extractor.extract(ds, tags[key]) for key, ds in datasets.items()}
        blocks = [np.asarray(fs.features, dtype=np.float32) for fs in features.values()]
        stacked = np.concatenate(blocks)
        bounds = dict(zip(features, np.cumsum([0, *map(len, blocks)])))
        keys = list(features)
    extracted = time.time()
    if network:
        forward_note = "a network-level detector: the network runs on every set for each setting"
    elif extractor.images_forwarded == 0:
        forward_note = "no forward pass: every set came from the cache"
    else:
        forward_note = f"{extractor.images_forwarded} images forwarded (now cached)"
    val_idx = test_idx = None  # split once the ID scores exist: unreadable images are not scored
    validation = (
        f"ID validation list val_{get_benchmark(config.benchmark).id_set}"
        if config.benchmark
        else f"ID validation share {config.val_fraction:g} (seed {config.seed})"
    )
    print(
        f"{config.method}: {len(settings)} settings of {', '.join(space) or '(no parameter)'}; "
        f"features ready in {extracted - start:.1f} s ({forward_note}); {validation}; "
        f"validation OOD: {val_ood}"
    )

    rows, last = [], base
    for setting in settings:
        if network:
            detector = base.with_params(**setting).fit(extractor.model, setup.input_std(tf))
            part, _, _, _ = score_images(detector, datasets, extractor, tags)
        else:
            # Shares the previous setting's fit when only parameters the fit ignores changed.
            detector = last.with_params(**setting)
            if not detector.is_fitted:
                try:
                    detector.fit(fc, **stats.for_detector(detector))
                except ValueError as exc:
                    raise UserError(f"{config.method} {setting}: {exc}") from None
            last = detector
            try:
                scores, _ = score_features(detector, stacked)
            except ValueError as exc:
                raise UserError(f"{config.method} {setting}: {exc}") from None
            part = {k: scores[bounds[k] : bounds[k] + len(features[k])] for k in keys}
        if config.benchmark:
            id_val, id_test = part["in_val"], part["in"]
        else:
            if val_idx is None:
                val_idx, test_idx = split_indices(len(part["in"]), config.val_fraction, config.seed)
            id_val, id_test = part["in"][val_idx], part["in"][test_idx]
        test = {s: ood_metrics(id_test, part[s], with_ood_positive=True) for s in test_names}
        row = {
            **setting,
            "val_FPR95": fpr_at_95_tpr(id_val, part[val_ood]),
            "val_AUROC": auroc(id_val, part[val_ood]),
            "test": {s: {k: m[k] for k in ("FPR95", "FPR95_OOD_POSITIVE", "AUROC")} for s, m in test.items()},
            "test_FPR95": float(np.mean([m["FPR95"] for m in test.values()])),
            "test_AUROC": float(np.mean([m["AUROC"] for m in test.values()])),
        }
        if groups:
            row["groups"] = {
                g: {
                    k: float(np.mean([row["test"][s][k] for s in sets]))
                    for k in ("FPR95", "FPR95_OOD_POSITIVE", "AUROC")
                }
                for g, sets in groups.items()
            }
        rows.append(row)
    swept = time.time()
    if config.benchmark:
        best = max(rows, key=lambda r: (r["val_AUROC"], -r["val_FPR95"]))
    else:
        best = min(rows, key=lambda r: (r["val_FPR95"], -r["val_AUROC"]))
    axes = list(space)
    head = "".join(f"{a:>16}" for a in axes)
    print(
        f"{head} | {'val FPR95':>9}{'val AUROC':>10} | {'test FPR95':>10}{'test AUROC':>11}"
        f"   (test = mean over {', '.join(test_names)}; %)"
    )
    for r in rows:
        mark = "  <- selected" if r is best else ""
        print(
            "".join(f"{r[a]!s:>16}" for a in axes)
            + f" | {100 * r['val_FPR95']:>9.2f}{100 * r['val_AUROC']:>10.2f} | {100 * r['test_FPR95']:>10.2f}"
            f"{100 * r['test_AUROC']:>11.2f}{mark}"
        )
    chosen = ", ".join(f"{a}={best[a]}" for a in axes) or "the defaults"
    print(
        f"{len(rows)} settings scored in {swept - extracted:.1f} s; "
        f"selected by {selection}: {chosen} -> "
        f"test FPR95 {100 * best['test_FPR95']:.2f}, AUROC {100 * best['test_AUROC']:.2f}"
    )
    for g, m in best.get("groups", {}).items():
        print(
            f"  {g} AVG ({', '.join(groups[g])}): FPR95 (ID+) {100 * m['FPR95']:.2f}, FPR95 (OOD+) "
            f"{100 * m['FPR95_OOD_POSITIVE']:.2f}, AUROC {100 * m['AUROC']:.2f}"
        )
    out_dir = method_dir(config.base_dir, config.label, f"{base.run_name()}_sweep", config.name)
    summary = {
        "method": base.run_name(),
        "defaults": base.get_params(),
        "grid": {a: list(v) for a, v in space.items()},
        "selected": best,
        "rows": rows,
        "selection": selection,
        "val_ood": val_ood,
        "val_fraction": None if config.benchmark else config.val_fraction,
        "val_images": len(part["in_val"]) if config.benchmark else len(val_idx),
        "seed": None if config.benchmark else config.seed,
        "groups": groups,
        "test_sets": test_names,
        "images_forwarded": extractor.images_forwarded,
        "settings": config.settings(),
    }
    atomic_write_json(out_dir / "sweep.json", summary)
    if len(axes) >= 2:
        from util.plots import plot_sweep_heatmap  # matplotlib only when there is a grid to draw

        x, y = axes[1], axes[0]
        others = {a: best[a] for a in axes[2:]}
        cells = [r | {"FPR95": r["test_FPR95"]} for r in rows if all(r[a] == v for a, v in others.items())]
        suffix = "".join(f"_{a}{v:g}" if isinstance(v, float) else f"_{a}{v}" for a, v in others.items())
        heatmap = plot_sweep_heatmap(
            cells,
            out_dir / f"heatmap{suffix}.png",
            title=f"{base.run_name()} on {config.label}: average test FPR95"
            + (f" at {', '.join(f'{a}={v:g}' for a, v in others.items())}" if others else ""),
            rows_key=y,
            cols_key=x,
        )
        print(f"heat map: {heatmap}")
    print(f"results: {out_dir / 'sweep.json'}  ({time.time() - start:.1f} s in all)")
    return summary
