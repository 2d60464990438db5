"""The implementer facade: its surface is pinned, and the plugin recipe of docs/backends/plugins.md,
written against `mlpipe.extend` alone, passes the conformance suite."""

from __future__ import annotations

import pytest
from resources.subprocess_backend import SubprocessBackend

import mlpipe.extend as extend
from mlpipe.testing import BackendConformance


def test_facade_is_sorted_and_complete() -> None:
    assert extend.__all__ == sorted(extend.__all__)
    assert all(hasattr(extend, name) for name in extend.__all__)
    for name in (
        "Backend",
        "RunRecord",
        "StepOutcome",
        "write_ir",
        "load_ir",
        "execute_remote_step",
        "ship",
        "resolve_code",
        "Materializer",
        "register_materializer",
        "RunState",
        "StepStatus",
    ):
        assert name in extend.__all__


def test_the_recipe_uses_only_the_facade() -> None:
    import ast
    from pathlib import Path

    import resources.subprocess_backend as recipe

    tree = ast.parse(Path(recipe.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("mlpipe")} == {"mlpipe", "mlpipe.extend"}
    assert "run.json" not in Path(recipe.__file__).read_text()


@pytest.mark.slow
class TestSubprocessRecipe(BackendConformance):
    @pytest.fixture
    def backend(self) -> SubprocessBackend:
        return SubprocessBackend()
