"""docs/python-api.md's block on the layers underneath runs as written, from a repository-like root (real
checkpoint)."""

import re

from conftest import REPO

import precompute


def python_api_block() -> str:
    text = (REPO / "docs" / "python-api.md").read_text()
    section = text[text.index("## The layers underneath") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_snippet_runs_as_written(shared, tmp_path, monkeypatch, capsys):
    cifar = shared / "data" / "CIFAR-10"
    for split, n in (("train", 7), ("test", 2)):
        for cls in sorted(p.name for p in (cifar / split).iterdir()):
            (tmp_path / "datasets" / "CIFAR-10" / split / cls).mkdir(parents=True)
            for f in sorted((cifar / split / cls).iterdir())[:n]:
                (tmp_path / "datasets" / "CIFAR-10" / split / cls / f.name).symlink_to(f)
    (tmp_path / "checkpoints").symlink_to(shared / "checkpoints")
    monkeypatch.chdir(tmp_path)
    precompute.main(["--in-dataset", "CIFAR-10", "--no-progress", "--workers", "0"])  # the README's step
    capsys.readouterr()

    namespace = {}
    exec(compile(python_api_block(), "README.md", "exec"), namespace)

    assert tuple(namespace["h"].shape) == (16, 342)
    assert tuple(namespace["contrib"].shape) == (10, 342)
    assert namespace["line_scores"].shape == namespace["dice_scores"].shape == (16,)
    assert namespace["knn_scores"].shape == (16,)
    assert "tensor(" in capsys.readouterr().out
