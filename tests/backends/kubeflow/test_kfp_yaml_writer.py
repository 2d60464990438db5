"""mlpipe_kubeflow.yamlout writes what PyYAML writes: random documents, awkward strings, the golden specs."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlpipe_kubeflow import yamlout

ROOT = Path(__file__).resolve().parents[3]
ATOMS = ["", " ", "a", "abc", "--store", "---x", "-", "-m", "-1", "1", "0x1f", "true", "True", "no", "null", "~", "=",
         "<<", "a: b", "a:b", "#x", "x #y", "{{$.inputs.parameters['lr']}}", '{"Concat": ["lr=", "x"]}', "étape_数据",
         "line\nbreak", "trailing ", " leading", "2001-01-01", "1.5", ".inf", "3e5", "a" * 130, "word " * 30,
         "mlpipe pipeline 'Resource_Settings': every task runs python -m mlpipe.runtime", "/tmp/x y/z", "a'b", 'a"b',
         "\t", "\x85", "\u2028", "@x", "`x", "%x", "!x", "&x", "*x", "|", ">", "?", "? x", "x?", "[", "]", ",", "a,b",
         "registry.example/ml/train:1.0", "file:///tmp/store", "s3://b/k", "exec-a-2", "comp-123", "123", "-.inf"]
NUMBERS: list[Any] = [0, 1, -5, 2**70, 0.5, 1.610612736, 1e16, 1e-7, 3.0, -0.0, float("inf"), float("nan"), True,
                      False, None]


def _document(rng: random.Random) -> dict[str, Any]:
    def scalar() -> Any:
        if rng.random() < 0.6:
            text = rng.choice(ATOMS)
            return text + rng.choice(ATOMS) if rng.random() < 0.3 else text
        return rng.choice(NUMBERS)

    def node(depth: int) -> Any:
        r = rng.random()
        if depth > 4 or r < 0.45:
            return scalar()
        if r < 0.75:
            return {str(scalar()): node(depth + 1) for _ in range(rng.randint(0, 4))}
        return [node(depth + 1) for _ in range(rng.randint(0, 4))]

    return {str(scalar()): node(1) for _ in range(rng.randint(1, 5))}


@pytest.mark.parametrize("seed", range(4))
def test_random_documents_are_written_as_pyyaml_writes_them(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        documents = [_document(rng) for _ in range(rng.randint(1, 2))]
        ours, theirs = io.StringIO(), io.StringIO()
        yamlout.dump_all(documents, ours)
        yaml.dump_all(documents, theirs, sort_keys=True)
        assert ours.getvalue() == theirs.getvalue(), documents


@pytest.mark.parametrize("path", sorted([*ROOT.glob("tests/resources/golden/kubeflow/*.yaml"),
                                         *ROOT.glob("tests/backends/*/golden/*.yaml")]), ids=lambda p: p.name)
def test_golden_specs_are_rewritten_unchanged(path: Path) -> None:
    text = path.read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    out = io.StringIO()
    yamlout.dump_all([d for d in yaml.safe_load_all(body) if d is not None], out)
    assert out.getvalue() == body


def test_empty_and_nested_containers() -> None:
    document = {"a": {}, "b": [], "c": [{}, [], [[1]], {"x": []}], "d": {"e": {"f": [{"g": {}}]}}}
    assert yamlout.dumps(document) == yaml.dump(document, sort_keys=True)
