"""``mlpipe init``: a new project with an example pipeline, a profile and tests that pass.

The example uses the standard library and pydantic only (mlpipe's own
dependencies), so ``pytest`` and ``mlpipe run pipeline.py`` work in any
environment where mlpipe is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlpipe.errors import ConfigError

__all__ = ["FILES", "init_project"]

PIPELINE = '''\
"""An example pipeline: `mlpipe run pipeline.py`, then `mlpipe runs list` and `mlpipe graph pipeline.py`.

It learns a threshold on noisy one-dimensional data. Replace the steps with
your own: each is a typed function; the pipeline wires them together.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import pydantic

import mlpipe as mp


class Dataset(pydantic.BaseModel):
    x: list[float]
    y: list[int]


class Split(NamedTuple):
    train: Dataset
    test: Dataset


class Metrics(pydantic.BaseModel):
    accuracy: float
    threshold: float
    n_test: int


@mp.step
def load(n: int, seed: int) -> Dataset:
    """n points in [0, 1), labelled 1 above 0.6, with one label in ten flipped."""
    rng = random.Random(seed)
    x = [rng.random() for _ in range(n)]
    y = [int((v > 0.6) != (rng.random() < 0.1)) for v in x]
    return Dataset(x=x, y=y)


@mp.step
def split(data: Dataset, test_fraction: float) -> Split:
    cut = int(len(data.x) * (1 - test_fraction))
    return Split(Dataset(x=data.x[:cut], y=data.y[:cut]), Dataset(x=data.x[cut:], y=data.y[cut:]))


def accuracy(threshold: float, data: Dataset) -> float:
    hits = sum(int(v > threshold) == label for v, label in zip(data.x, data.y, strict=True))
    return hits / len(data.x) if data.x else 0.0


@mp.step
def train(data: Dataset) -> float:
    """The threshold with the best training accuracy (a real model goes here)."""
    return max(sorted(data.x), key=lambda t: accuracy(t, data))


@mp.step
def evaluate(threshold: float, data: Dataset) -> Metrics:
    return Metrics(accuracy=accuracy(threshold, data), threshold=threshold, n_test=len(data.x))


@mp.pipeline
def example(n: int = 500, seed: int = 0, test_fraction: float = 0.25) -> Metrics:
    parts = split(load(n, seed), test_fraction)
    return evaluate(train(parts.train), parts.test)


if __name__ == "__main__":
    run = example.run()
    print(run.status, run.output("evaluate"))
'''

PROFILE = """\
# mlpipe profiles: choose one with --profile NAME or MLPIPE_PROFILE (docs/profiles.md).
default_profile = "dev"

[profiles.dev]
backend = "local"
store = ".mlpipe"  # relative to this file: the project's runs, cache and artifacts

# The same pipeline on Kubeflow Pipelines (pip install mlpipe-kubeflow):
# [profiles.kfp]
# backend = "kubeflow"
# store = "s3://my-bucket/mlpipe"
# image = "registry.example.com/my-project:latest"  # built from `mlpipe image pipeline.py`
"""

CONFTEST = '''\
"""Tests import the project's modules from the directory above, and run pipelines in a store of their own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory: pipeline.run() uses the default profile and the store ./.mlpipe in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLPIPE_PROFILE", raising=False)
    yield tmp_path / ".mlpipe"
'''

TESTS = '''\
"""Steps are plain functions outside a pipeline; the pipeline runs on the local backend."""

from __future__ import annotations

from pathlib import Path

from pipeline import Dataset, evaluate, example, train


def test_train_finds_the_boundary() -> None:
    data = Dataset(x=[0.1, 0.2, 0.7, 0.9], y=[0, 0, 1, 1])
    threshold = train(data)
    assert 0.2 <= threshold < 0.7
    assert evaluate(threshold, data).accuracy == 1.0


def test_the_pipeline_runs_then_comes_from_the_cache(store_dir: Path) -> None:
    run = example.run(n=300)
    assert run.status == "succeeded", run.error
    metrics = run.output("evaluate")
    assert metrics.n_test == 75 and metrics.accuracy > 0.75
    again = example.run(n=300)
    assert all(step.cached for step in again.steps.values())
    assert store_dir.is_dir()
'''

GITIGNORE = """\
# mlpipe's local store: runs, cache entries and artifacts
.mlpipe/
__pycache__/
"""

#: What ``mlpipe init`` writes, relative to the project directory.
FILES: dict[str, str] = {
    "pipeline.py": PIPELINE,
    "mlpipe.toml": PROFILE,
    "tests/conftest.py": CONFTEST,
    "tests/test_pipeline.py": TESTS,
    ".gitignore": GITIGNORE,
}


def init_project(directory: str | os.PathLike[str] = ".") -> list[Path]:
    """Write the example project into ``directory`` (created if needed); return the files written.

    Raises:
        ConfigError: one of the files exists already (nothing is written), or
            the directory cannot be written.
    """
    root = Path(directory)
    existing = [rel for rel in FILES if (root / rel).exists()]
    if existing:
        raise ConfigError(
            f"not overwriting {', '.join(str(root / rel) for rel in existing)}: `mlpipe init` only creates new "
            "files; choose an empty directory (mlpipe init DIR) or move them aside"
        )
    written: list[Path] = []
    try:
        for rel, text in FILES.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x", encoding="utf-8") as f:  # "x": never replace a file created meanwhile
                f.write(text)
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the project into {root}: {exc.strerror or exc}") from None
    return written
