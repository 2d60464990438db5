"""Deployment targets: the contract, the registry of kinds, and the local server target.

A target makes a platform match a :class:`~mlpipe.deploy.DeploymentState`
(:meth:`DeployTarget.apply`) and, where the platform measures traffic, reports
live metrics per role. Built in: ``local`` (``mlpipe serve --deployment``)
and ``kserve`` (an ``InferenceService`` manifest). Plugins add kinds through
the entry point group ``mlpipe.deploy_targets`` (``mlpipe-sagemaker`` adds
``sagemaker``).
"""

from __future__ import annotations

import importlib
import json
import time
import urllib.request
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mlpipe.deploy._state import DeploymentError, DeploymentState, TargetSpec
from mlpipe.store import ArtifactStore

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DeployTarget", "LocalTarget", "available_targets", "get_target"]

ENTRY_POINT_GROUP = "mlpipe.deploy_targets"
_BUILTIN = {"local": "mlpipe.deploy._target:LocalTarget", "kserve": "mlpipe.deploy._kserve:KServeTarget"}


class DeployTarget(ABC):
    """Where a deployment runs. Subclasses set ``kind`` and ``Options`` (a pydantic model of their options).

    Contract:
        - :meth:`apply` is idempotent: applying the same state twice changes nothing the second time.
        - It raises :class:`~mlpipe.errors.MlpipeError` (with the platform's message and a fix) and
          leaves the stored state untouched when the platform refuses.
    """

    kind: ClassVar[str]

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.Options(**options)
        except ValidationError as exc:
            valid = ", ".join(sorted(self.Options.model_fields)) or "none"
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise DeploymentError(
                f"invalid options for the {self.kind} target: {problems} (valid options: {valid})", target=self.kind
            ) from None

    @abstractmethod
    def apply(self, state: DeploymentState, store: ArtifactStore) -> dict[str, Any]:
        """Make the platform serve ``state`` (models, traffic, shadow); return details worth recording."""

    def confirm(self, state: DeploymentState, store: ArtifactStore) -> None:  # noqa: B027 - optional hook
        """Called after the state is saved (the local server picks it up from the store then)."""

    def live_metrics(self, state: DeploymentState, store: ArtifactStore) -> dict[str, dict[str, Any]]:
        """Metrics per role since the current stage began; empty when the platform reports none."""
        return {}

    def current_data(self, state: DeploymentState, store: ArtifactStore) -> pd.DataFrame | None:
        """The challenger's inputs since the current stage began, if the target logs them."""
        return None


def available_targets() -> dict[str, str]:
    """Target kind -> where it comes from (built in, or the plugin's entry point)."""
    found = {name: f"built in ({path})" for name, path in _BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, f"{ep.value} ({ep.dist.name if ep.dist else '?'})")
    return found


def get_target(spec: TargetSpec) -> DeployTarget:
    """An instance of the target ``spec.kind`` with ``spec.options``."""
    path = _BUILTIN.get(spec.kind)
    cls: Any = None
    if path is not None:
        module, _, attr = path.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec.kind:
                cls = ep.load()
                break
    if cls is None:
        raise DeploymentError(
            f"unknown deployment target {spec.kind!r}; installed: {', '.join(sorted(available_targets()))} "
            "(install mlpipe-sagemaker for sagemaker)",
            target=spec.kind,
        )
    if not (isinstance(cls, type) and issubclass(cls, DeployTarget)):
        raise DeploymentError(f"the deployment target {spec.kind!r} ({cls!r}) is not a DeployTarget subclass")
    return cls(**spec.options)


class LocalTarget(DeployTarget):
    """The local scoring server: ``mlpipe serve --deployment NAME`` follows the state in the store.

    Options:
        url: The server's address (``http://127.0.0.1:8080``). When given, each change waits until the
            server serves the new revision, and live metrics are read from it directly (else from the
            counters it writes to the store every few seconds).
        wait: Seconds to wait for the server to take a new revision.
    """

    kind = "local"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        url: str | None = None
        wait: float = 30.0

    options: Options  # type: ignore[assignment]

    def apply(self, state: DeploymentState, store: ArtifactStore) -> dict[str, Any]:
        return {
            "serve": f"mlpipe serve --deployment {state.name}",
            **({"url": self.options.url} if self.options.url else {}),
        }

    def _get(self, path: str) -> Any:
        assert self.options.url is not None
        with urllib.request.urlopen(self.options.url.rstrip("/") + path, timeout=5) as response:
            return json.loads(response.read())

    def confirm(self, state: DeploymentState, store: ArtifactStore) -> None:
        if self.options.url is None:
            return
        deadline = time.monotonic() + self.options.wait
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self._get("/health")
                if last.get("revision") == state.revision:
                    return
            except OSError as exc:
                if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                    return  # no server yet: it reads the state when it starts
                last = str(exc)
            time.sleep(0.1)
        raise DeploymentError(
            f"the local server at {self.options.url} did not take revision {state.revision} of deployment "
            f"{state.name!r} within {self.options.wait:g} s (it answers: {last}); is it running with "
            f"mlpipe serve --deployment {state.name} on the same store?",
            deployment=state.name,
        )

    def live_metrics(self, state: DeploymentState, store: ArtifactStore) -> dict[str, dict[str, Any]]:
        if self.options.url is not None:
            try:
                stats = self._get("/stats")
                if stats.get("revision") == state.revision:
                    return {k: dict(v) for k, v in stats.get("variants", {}).items()}
            except OSError:
                pass
        from mlpipe.serving._log import load_live_stats

        return load_live_stats(state.name, state.revision, store=store)

    def current_data(self, state: DeploymentState, store: ArtifactStore) -> pd.DataFrame | None:
        from mlpipe.serving._log import load_predictions

        frame = load_predictions(state.name, store=store, variant="challenger", since=state.stage_started)
        if frame.empty:
            return None
        return frame.drop(columns=[c for c in frame.columns if c.startswith(("mlpipe_", "prediction"))])
