"""What a run prints and names: one line for where the results went, aligned tables that define
their metrics, a row for each failed method, OOD folders by their base name (issue 25, finding 6).

The tables are checked on made-up metrics (unit tests); one end-to-end run of the real DenseNet-101
on a tiny image-folder copy of the shared CIFAR-10 JPEGs checks the printed lines and file names.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import ood_eval
from pipeline import runs
from pipeline.report import MethodResult, benchmark_summary, benchmark_table, methods_table, single_table
from tests.reference import random_images
from util.io import save_scores, short_names

FULL = {"FPR95": 1.0, "FPR95_OOD_POSITIVE": 1.0, "AUROC": 1.0, "AUPR_IN": 1.0, "AUPR_OUT": 1.0}
SOME = {"FPR95": 0.0525, "FPR95_OOD_POSITIVE": 0.1, "AUROC": 0.9, "AUPR_IN": 0.875, "AUPR_OUT": 0.5}


def result(method: str, sets: list[str], metrics: dict, groups: dict | None = None) -> MethodResult:
    groups = groups or {}
    averages = {g: metrics for g in groups}
    settings = {"detector": {"k": 5}}
    return MethodResult(method, 1.0, {s: metrics for s in sets}, metrics, settings, {}, groups, averages)


def token_ends(line: str) -> list[int]:
    """Where each header ends; words one space apart are one header (``FPR95 (ID+)``)."""
    return [m.end() for m in re.finditer(r"\S+(?: \S+)*", line)]


def assert_numbers_under_headers(header: str, rows: list[str]) -> None:
    """Every number of each row ends where its column's header ends (right-aligned columns)."""
    for row in rows:
        numbers = [m.end() for m in re.finditer(r"\d+\.\d\d", row)]
        assert numbers == token_ends(header)[-len(numbers) :], f"\n{header}\n{row}"


# Tables ----------------------------------------------------------------------------------------
def test_several_methods_table_holds_100_00_aligned_under_its_headers():
    sets = ["dtd", "SVHN", "places365"]
    results = [result("line", sets, FULL), result("energy", sets, SOME)]
    lines = methods_table(results, sets, "CIFAR-10", "densenet", "id").splitlines()
    header, rows = lines[3], lines[4:]
    assert header.split()[:3] == ["method", "FPR95", "AUROC"] and header.split()[-2:] == ["AUPR-IN", "acc"]
    assert "100.00 100.00" not in rows[0]  # a space at least between two full columns
    assert_numbers_under_headers(header, rows)


def test_short_set_names_align_in_the_one_method_table():
    table = single_table(result("msp", ["ab", "cd"], SOME), "CIFAR-10", "densenet", "id")
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("OOD set"))
    rows = [line for line in lines if line.startswith(("ab ", "cd ", "AVG "))]
    assert len(rows) == 3
    assert_numbers_under_headers(header, rows)


def test_a_partial_benchmark_group_stays_apart_from_its_set_names():
    groups = {"near (partial)": ["tin"], "far": ["mnist", "svhn"]}
    r = result("msp", ["tin", "mnist", "svhn"], FULL, groups)
    lines = benchmark_table(r, "openood-cifar10", "densenet").splitlines()
    rows = [line for line in lines if line.startswith(("near", "far"))]
    assert rows[0].split()[:3] == ["near", "(partial)", "tin"]
    assert rows[1].split()[:5] == ["near", "(partial)", "near", "(partial)", "AVG"]
    header = next(line for line in lines if line.startswith("group"))
    assert_numbers_under_headers(header, rows)
    summary = benchmark_summary([r, result("energy", ["tin", "mnist", "svhn"], SOME, groups)], "b", "d")
    lines = summary.splitlines()
    assert "near (partial) AVG" in lines[2]
    assert_numbers_under_headers(lines[3], lines[4:])


def test_every_table_names_aupr_in_as_results_json_does_and_defines_each_metric_in_its_header():
    r = result("msp", ["dtd"], SOME, {"near": ["dtd"]})
    plain = result("msp", ["dtd"], SOME)
    tables = [
        single_table(plain, "CIFAR-10", "densenet", "id"),
        methods_table([plain, plain], ["dtd"], "CIFAR-10", "densenet", "ood"),
        benchmark_table(r, "openood-cifar10", "densenet"),
        benchmark_summary([r, r], "openood-cifar10", "densenet"),
    ]
    for table in tables:
        assert "AUIN" not in table
        definitions = table.splitlines()[1]
        assert "AUPR-IN: area under the precision-recall curve, ID positive" in definitions
        assert "AUROC: area under the ROC curve" in definitions and "FPR95" in definitions


def test_a_failed_method_gets_a_row_saying_why():
    failures = {"knn": "KNN k = 1000 exceeds the 30 training features: lower --knn-k"}
    ok = result("energy", ["dtd"], SOME)
    table = methods_table([ok], ["dtd"], "CIFAR-10", "densenet", "id", failures=failures)
    assert re.search(r"^knn +failed: KNN k = 1000 exceeds the 30 training features", table, re.M)
    assert re.search(r"^energy +\d", table, re.M)
    one = single_table(ok, "CIFAR-10", "densenet", "id", failures=failures)
    assert re.search(r"^knn +failed: KNN k = 1000", one, re.M)
    groups = {"near": ["dtd"]}
    bench = benchmark_summary([result("msp", ["dtd"], SOME, groups)], "b", "d", failures=failures)
    assert re.search(r"^knn +failed: KNN k = 1000", bench, re.M)
    only_failed = methods_table([], ["dtd"], "CIFAR-10", "densenet", "id", failures=failures)
    assert re.search(r"^knn +failed:", only_failed, re.M)


# Folder OOD sets -------------------------------------------------------------------------------
def test_a_folder_goes_by_its_base_name_and_two_with_one_base_name_stay_apart():
    names = ["in", "dtd", "/tmp/x/myood/", "/data/a/other", "/data/b/other", "/data/ood_datasets/dtd"]
    assert short_names(names) == {
        "in": "in",
        "dtd": "dtd",
        "/tmp/x/myood/": "myood",
        "/data/a/other": "a/other",
        "/data/b/other": "b/other",
        "/data/ood_datasets/dtd": "ood_datasets/dtd",  # a folder named dtd is not the set dtd
    }


def test_one_folder_given_twice_or_a_folder_named_like_a_set_at_the_root_is_refused():
    from util.errors import UserError

    with pytest.raises(UserError, match="would both be called 'tmp/myood': give each once"):
        short_names(["/tmp/myood", "/tmp/myood/"])
    with pytest.raises(UserError, match="would both be called 'dtd'"):
        short_names(["/dtd", "dtd"])


def test_results_json_keys_a_folder_by_its_base_name_and_keeps_its_full_path():
    r = result("msp", ["dtd", "/tmp/x/myood"], SOME)
    saved = r.as_json()
    assert set(saved["ood"]) == {"dtd", "myood"}
    assert saved["ood_paths"] == {"myood": "/tmp/x/myood"}


def test_scores_of_two_folders_with_one_base_name_stay_apart_across_runs_into_one_folder(tmp_path):
    run_dir = tmp_path / "run"
    save_scores(run_dir, {"in": np.zeros(3), "/data/a/myood": np.ones(2)})
    save_scores(run_dir, {"/data/b/myood": np.full(4, 2.0)})  # a later --out-dist-only run
    assert (run_dir / "scores" / "myood.npy").is_file() and (run_dir / "scores" / "b_myood.npy").is_file()
    loaded = runs.load_scores(run_dir, ["in", "/data/a/myood", "/data/b/myood"])
    assert loaded["/data/a/myood"].tolist() == [1.0, 1.0] and loaded["/data/b/myood"].tolist() == [2.0] * 4


# One run, end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(shared, cifar10_checkpoint, tmp_path_factory):
    """Two test images of each CIFAR-10 class (symlinks) and two OOD folders named ``myood``."""
    root = tmp_path_factory.mktemp("output")
    for cls in sorted((shared / "data" / "CIFAR-10" / "test").iterdir()):
        target = root / "data" / "CIFAR-10" / "test" / cls.name
        target.mkdir(parents=True)
        for f in sorted(cls.iterdir())[:2]:
            (target / f.name).symlink_to(f)
    rng = np.random.default_rng(0)
    for parent in ("a", "b"):
        random_images(root / parent / "myood", 6, rng)
    common = [
        "--in-dataset", "CIFAR-10", "--data-root", str(root / "data"), "--cache-dir", str(root / "cache"),
        "--checkpoint", str(cifar10_checkpoint), "--no-progress", "--device", "cpu", "--workers", "0",
        "--base-dir", str(root / "out"), "--out-datasets", "gaussian", str(root / "a" / "myood"),
        str(root / "b" / "myood"), "--max-samples", "12",
    ]  # fmt: skip
    return root, common


def test_a_run_says_where_results_went_in_one_line_and_names_folders_by_base_name(tiny, capsys):
    root, common = tiny
    ood_eval.main([*common, "--methods", "energy,msp"])
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "results.json" in line]) == 1
    assert f"results: {root / 'out' / 'CIFAR-10' / '<method>' / 'densenet' / 'results.json'}" in out
    assert "per-image scores in the original code's format" not in out
    nat = [line for line in out.splitlines() if "/nat/" in line]
    assert len(nat) == 1 and "energy, msp" in nat[0]
    assert str(root / "a") not in out  # the folders by name, not path
    header = next(line for line in out.splitlines() if "AVG" in line)
    assert header.split()[:3] == ["gaussian", "a/myood", "b/myood"]
    latest = root / "out" / "CIFAR-10" / "energy" / "densenet"
    saved = json.loads((latest / "results.json").read_text())
    assert set(saved["ood"]) == {"gaussian", "a/myood", "b/myood"}
    assert saved["ood_paths"]["a/myood"] == str(root / "a" / "myood")
    assert sorted(p.name for p in (latest / "scores").glob("*.npy")) == [
        "a_myood.npy", "b_myood.npy", "gaussian.npy", "in.npy",
    ]  # fmt: skip
    assert (
        root / "out" / "CIFAR-10" / "energy" / "densenet" / "nat" / "a_myood" / "out_scores.txt"
    ).is_file()

    ood_eval.main([*common, "--methods", "energy,msp", "--cal-metric"])  # finds the folders' scores
    again = capsys.readouterr().out
    assert header in again and "/nat/" not in again


def test_split_runs_meet_on_a_folder_set(tiny, capsys):
    root, common = tiny
    split = [*common, "--method", "energy", "--base-dir", str(root / "split")]
    ood_eval.main([*split, "--in-dist-only"])
    ood_eval.main([*split, "--out-dist-only"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("a/myood ", "b/myood "))]
    assert len(rows) == 2
