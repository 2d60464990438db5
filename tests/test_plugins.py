"""One plugin loader for backends, materializers and trackers (mlpipe.plugins)."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

import mlpipe as mp
from mlpipe.backend import get_backend_class
from mlpipe.errors import BackendNotFoundError, ConfigError, MissingDependencyError
from mlpipe.plugins import TRACKERS
from mlpipe.tracking import Tracker, _load_tracker_class


class FakeTracker(Tracker):  # type: ignore[misc]  # abstract methods are never called here
    name = "fake"


def _patch(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    def entry_points(group: str | None = None, **_: Any) -> list[EntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    monkeypatch.delenv("MLPIPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def test_a_typo_gets_did_you_mean_and_no_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch)
    with pytest.raises(BackendNotFoundError) as caught:
        get_backend_class("locl")
    message = str(caught.value)
    assert message == "no backend named 'locl' is installed (installed: local); did you mean 'local'?"
    assert "pip install" not in message
    with pytest.raises(BackendNotFoundError, match=r"check the name$"):
        get_backend_class("zzzz")


def test_a_shipped_plugin_gets_its_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch)
    with pytest.raises(BackendNotFoundError, match=r"pip install ./backends/kubeflow"):
        get_backend_class("kubeflow")
    with pytest.raises(BackendNotFoundError, match=r"pip install ./backends/kubeflow"):
        get_backend_class("kubeflwo")  # a typo of a shipped plugin is pointed at it


def test_trackers_come_from_their_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch, EntryPoint(name="fake", value=f"{__name__}:FakeTracker", group="mlpipe.trackers"))
    assert _load_tracker_class("fake") is FakeTracker
    assert set(TRACKERS.names()) == {"fake", "mlflow"}
    with pytest.raises(ConfigError, match=r"no tracker named 'nope' is installed \(installed: fake, mlflow\)"):
        _load_tracker_class("nope")


def test_a_failed_plugin_import_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(
        monkeypatch,
        EntryPoint(name="kubeflow", value="no_such_kfp_module_xyz:Backend", group="mlpipe.backends"),
        EntryPoint(name="wrong", value=f"{__name__}:FakeTracker", group="mlpipe.trackers"),
    )
    with pytest.raises(MissingDependencyError) as caught:
        get_backend_class("kubeflow")
    assert "needs 'no_such_kfp_module_xyz'" in str(caught.value)
    assert "pip install ./backends/kubeflow" in str(caught.value)
    import dataclasses

    import mlpipe.plugins

    broken = dataclasses.replace(TRACKERS, builtins={"mlflow": "no_such_mlflow_xyz:T"})
    monkeypatch.setattr(mlpipe.plugins, "TRACKERS", broken)
    with pytest.raises(MissingDependencyError, match=r"pip install 'mlpipe\[mlflow\]'"):
        _load_tracker_class("mlflow")


def test_run_submit_compile_take_their_options_by_keyword() -> None:
    @mp.step
    def one(n: int) -> int:
        return n

    @mp.pipeline
    def p(n: int = 1):
        return one(n)

    with pytest.raises(TypeError, match="positional"):
        p.run(200)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):
        p.submit("prod")  # type: ignore[misc]
