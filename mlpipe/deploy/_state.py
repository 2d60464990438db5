"""A deployment's state and history in the store: ``deployments/<name>/``.

``state.json`` is what the target should look like now (models, traffic,
stage, status); every change also writes ``events/<revision>.json``, the
deployment's lineage: which model version from which run took how much
traffic, when, and why. The store is the truth; targets are made to match it.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlpipe.errors import MlpipeError, ObjectNotFoundError
from mlpipe.store import ArtifactStore

__all__ = [
    "DeploymentError",
    "DeploymentEvent",
    "DeploymentState",
    "ModelRef",
    "TargetSpec",
    "list_deployments",
    "load_events",
    "load_state",
    "save_state",
]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class DeploymentError(MlpipeError):
    """A deployment cannot be started or moved as asked (CLI exit 2)."""

    exit_code = 2


class ModelRef(BaseModel):
    """One registered model version in a deployment.

    Attributes:
        name: Registered model name.
        version: Its version.
        uri: ``models:/<name>/<version>`` (pinned: an alias that moves later does not change it).
        alias: The alias it was taken from (``champion``, ``challenger``).
        run_id: The MLflow run that logged it.
        source: Where its files are (the registry's source URI).
        mlpipe_run_id: The mlpipe run that registered it, if it carries that tag.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    uri: str
    alias: str | None = None
    run_id: str | None = None
    source: str | None = None
    mlpipe_run_id: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


class TargetSpec(BaseModel):
    """Where a deployment runs: a target kind and its options."""

    model_config = ConfigDict(frozen=True)

    kind: str
    options: dict[str, Any] = {}


Status = Literal["serving", "rolling", "promoted", "rolled_back"]


class DeploymentState(BaseModel):
    """What a deployment is now.

    Attributes:
        name: Deployment name (lowercase letters, digits, dashes; used for endpoint names).
        model: Registered model name.
        tracking_uri: The MLflow registry.
        target: Where it runs.
        champion: The version answering most traffic.
        challenger: The version being rolled out, if any.
        traffic: Role -> percent of requests (sums to 100).
        shadow: The challenger gets a copy of every request and answers none.
        stages: Challenger percents, in order; the last is normally 100.
        stage: Index of the current stage in ``stages``.
        gates: The gates each stage must pass (their JSON form).
        min_requests: Requests the challenger must have seen before a stage can pass.
        revision: Increases with every change.
        status: ``serving`` (champion only), ``rolling``, ``promoted``, ``rolled_back``.
        stage_started: When the current stage began (Unix time).
        details: What the target reported (endpoint names, manifest path...).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    tracking_uri: str | None = None
    target: TargetSpec
    champion: ModelRef
    challenger: ModelRef | None = None
    traffic: dict[str, int]
    shadow: bool = False
    stages: list[int] = Field(default_factory=list)
    stage: int = 0
    gates: list[dict[str, Any]] = Field(default_factory=list)
    min_requests: int = 0
    revision: int = 1
    status: Status = "serving"
    stage_started: float = Field(default_factory=time.time)
    details: dict[str, Any] = Field(default_factory=dict)

    def models(self) -> dict[str, ModelRef]:
        out = {"champion": self.champion}
        if self.challenger is not None:
            out["challenger"] = self.challenger
        return out

    def routing(self) -> Any:
        """The local server's :class:`~mlpipe.serving.Routing` for this state."""
        from mlpipe.serving._routing import Routing

        return Routing(
            self.revision,
            {role: ref.uri for role, ref in self.models().items()},
            dict(self.traffic),
            "challenger" if self.shadow and self.challenger is not None else None,
        )


class DeploymentEvent(BaseModel):
    """One change of a deployment, as recorded in its lineage."""

    model_config = ConfigDict(extra="forbid")

    deployment: str
    revision: int
    action: str  # start, advance, hold, promote, rollback, traffic
    time: float
    target: str
    champion: ModelRef
    challenger: ModelRef | None = None
    traffic: dict[str, int]
    shadow: bool = False
    status: str
    reasons: list[str] = []
    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {}


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise DeploymentError(
            f"deployment name {name!r} must be 1-63 lowercase letters, digits and dashes, starting and ending "
            "with a letter or digit (it names endpoints and Kubernetes objects)",
            deployment=name,
        )
    return name


def _dir(name: str) -> str:
    return f"deployments/{check_name(name)}"


def load_state(store: ArtifactStore, name: str) -> DeploymentState:
    """The current state of deployment ``name``.

    Raises:
        DeploymentError: there is no such deployment (the message lists the known ones).
    """
    try:
        return DeploymentState.model_validate(store.get_json(f"{_dir(name)}/state.json"))
    except ObjectNotFoundError:
        known = ", ".join(list_deployments(store)) or "none"
        raise DeploymentError(
            f"there is no deployment {name!r} in the store {store.url} (deployments: {known}); "
            "start one with mlpipe deploy start",
            deployment=name,
        ) from None


def save_state(
    store: ArtifactStore,
    state: DeploymentState,
    action: str,
    *,
    reasons: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
) -> DeploymentEvent:
    """Write the event first, then the state: a crash between the two leaves history ahead, never behind."""
    event = DeploymentEvent(
        deployment=state.name,
        revision=state.revision,
        action=action,
        time=time.time(),
        target=state.target.kind,
        champion=state.champion,
        challenger=state.challenger,
        traffic=dict(state.traffic),
        shadow=state.shadow,
        status=state.status,
        reasons=list(reasons or []),
        metrics=dict(metrics or {}),
        details=dict(state.details),
    )
    base = _dir(state.name)
    store.put_json(f"{base}/events/{state.revision:06d}-{action}.json", event.model_dump(mode="json"))
    store.put_json(f"{base}/state.json", state.model_dump(mode="json"))
    return event


def load_events(store: ArtifactStore, name: str) -> list[DeploymentEvent]:
    """The deployment's lineage, oldest first."""
    directory = f"{_dir(name)}/events"
    if not store.has(directory):
        load_state(store, name)  # the error that lists the known deployments
        return []
    return [
        DeploymentEvent.model_validate(store.get_json(f"{directory}/{entry}"))
        for entry in sorted(store.listdir(directory))
        if entry.endswith(".json")
    ]


def list_deployments(store: ArtifactStore) -> list[str]:
    if not store.has("deployments"):
        return []
    return sorted(n for n in store.listdir("deployments") if store.has(f"deployments/{n}/state.json"))
