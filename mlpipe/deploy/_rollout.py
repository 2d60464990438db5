"""Gradual rollout: start, advance (gated), promote, roll back, set traffic by hand.

Every function loads the deployment's state from the store, asks the target
to serve the new state, and only then saves it with an event (so a target
that refuses leaves the state as it was). The registry's aliases follow:
promotion points ``champion`` at the challenger's version; every change tags
the versions involved with ``mlpipe.deployment.<name>``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from mlpipe.deploy._gates import Gate, GateContext, parse_gates
from mlpipe.deploy._state import (
    DeploymentError,
    DeploymentEvent,
    DeploymentState,
    ModelRef,
    TargetSpec,
    check_name,
    load_events,
    load_state,
    save_state,
)
from mlpipe.deploy._target import get_target
from mlpipe.store import ArtifactStore, open_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Decision", "advance", "history", "promote", "rollback", "set_traffic", "start", "status"]

StoreLike = str | os.PathLike[str] | ArtifactStore | None


class Decision(BaseModel):
    """What :func:`advance` did, and why."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    action: Literal["advanced", "held", "promoted", "rolled_back"]
    state: DeploymentState
    reasons: list[str]
    metrics: dict[str, Any]


def _store(store: StoreLike) -> ArtifactStore:
    return open_store(os.fspath(store) if isinstance(store, os.PathLike) else store)


def _client(tracking_uri: str | None) -> Any:
    from mlpipe.serving._model import _client as client

    return client(tracking_uri)


def _ref(model: str, alias: str, tracking_uri: str | None) -> ModelRef | None:
    """The version behind ``model@alias``, or None when the alias is not set (the model must exist)."""
    from mlflow.exceptions import MlflowException

    from mlpipe.serving._model import UnknownModelError, resolve_version

    try:
        info = resolve_version(f"models:/{model}@{alias}", tracking_uri)
    except UnknownModelError as exc:
        if "no model named" in str(exc):
            raise
        return None
    run_tag = None
    try:
        mv = _client(tracking_uri).get_model_version(model, info.version)
        run_tag = (mv.tags or {}).get("mlpipe.run_id")
    except MlflowException:
        pass
    assert info.version is not None
    return ModelRef(
        name=model,
        version=info.version,
        uri=f"models:/{model}/{info.version}",
        alias=alias,
        run_id=info.run_id,
        source=info.source,
        mlpipe_run_id=run_tag,
    )


def _check_stages(stages: Sequence[int]) -> list[int]:
    out = [int(s) for s in stages]
    if not out or any(not 0 < s <= 100 for s in out) or any(b <= a for a, b in itertools.pairwise(out)):
        raise DeploymentError(
            f"stages must be increasing percents between 1 and 100 (e.g. 10,50,100), got {list(stages)}",
        )
    return out


def _split(champion: int, challenger: int) -> dict[str, int]:
    if champion < 0 or challenger < 0 or champion + challenger != 100:
        raise DeploymentError(
            f"a traffic split must give each model 0-100 % and sum to 100; got champion {champion} % + "
            f"challenger {challenger} % = {champion + challenger} %; for example --split 90/10",
        )
    return {"champion": champion, "challenger": challenger}


def _apply(state: DeploymentState, store: ArtifactStore, action: str, **record: Any) -> DeploymentEvent:
    target = get_target(state.target)
    state.details = target.apply(state, store)
    event = save_state(store, state, action, **record)
    target.confirm(state, store)
    _tag_versions(state, action)
    return event


def _tag_versions(state: DeploymentState, action: str) -> None:
    """Record the deployment on the registry versions too (best effort: the store is the record)."""
    try:
        client = _client(state.tracking_uri)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for role, ref in state.models().items():
            share = state.traffic.get(role, 0)
            shadow = " (shadow)" if state.shadow and role == "challenger" else ""
            client.set_model_version_tag(
                ref.name,
                ref.version,
                f"mlpipe.deployment.{state.name}",
                f"{stamp} {action}: {role} {share} %{shadow} on {state.target.kind}, revision {state.revision}",
            )
    except Exception:  # the registry may be read-only for this user; the store holds the lineage
        pass


def start(
    name: str,
    model: str,
    *,
    target: str | TargetSpec = "local",
    target_options: Mapping[str, Any] | None = None,
    champion: str = "champion",
    challenger: str = "challenger",
    stages: Sequence[int] = (10, 50, 100),
    shadow: bool = False,
    gates: Sequence[Gate] = (),
    min_requests: int = 0,
    store: StoreLike = None,
    tracking_uri: str | None = None,
) -> DeploymentState:
    """Deploy ``model@champion`` and, if ``model@challenger`` is another version, start rolling it out.

    The challenger gets ``stages[0]`` % of the traffic (or, with ``shadow=True``, a copy of every request
    and none of the answers). Without a challenger the champion serves everything (status ``serving``).

    Raises:
        DeploymentError: bad name, stages, target options, or a rollout already in progress.
        UnknownModelError: the model or its champion alias is not in the registry.
    """
    from mlpipe.serving._model import UnknownModelError

    check_name(name)
    st = _store(store)
    spec = target if isinstance(target, TargetSpec) else TargetSpec(kind=target, options=dict(target_options or {}))
    get_target(spec)  # validate the options before touching anything
    plan = _check_stages(stages)
    revision = 1
    try:
        previous = load_state(st, name)
    except DeploymentError:
        previous = None
    if previous is not None:
        if previous.status == "rolling":
            raise DeploymentError(
                f"deployment {name!r} is rolling out {previous.challenger.label if previous.challenger else '?'} "
                f"({previous.traffic.get('challenger', 0)} %); advance, promote or roll it back first",
                deployment=name,
            )
        revision = previous.revision + 1
    champ = _ref(model, champion, tracking_uri)
    if champ is None:
        chall_only = _ref(model, challenger, tracking_uri)
        if chall_only is None:
            raise UnknownModelError(
                f"model {model!r} has neither a {champion!r} nor a {challenger!r} alias; set one "
                f"(mlpipe.integrations.mlflow.promote, or MlflowClient().set_registered_model_alias)",
                model=model,
            )
        champ, chall = chall_only, None  # the first deployment: the only candidate serves alone
    else:
        chall = _ref(model, challenger, tracking_uri)
    if chall is not None and chall.version == champ.version:
        chall = None
    if chall is None:
        traffic, status = {"champion": 100}, "serving"
    else:
        status = "rolling"
        traffic = {"champion": 100, "challenger": 0} if shadow else _split(100 - plan[0], plan[0])
    state = DeploymentState(
        name=name,
        model=model,
        tracking_uri=tracking_uri,
        target=spec,
        champion=champ,
        challenger=chall,
        traffic=traffic,
        shadow=shadow and chall is not None,
        stages=plan,
        stage=0,
        gates=[g.model_dump(mode="json") for g in gates],
        min_requests=min_requests,
        revision=revision,
        status=status,  # type: ignore[arg-type]
    )
    _apply(state, st, "start")
    return state


def _next(state: DeploymentState, action: str) -> DeploymentState:
    data = state.model_dump()
    data.update(revision=state.revision + 1, stage_started=time.time())
    return DeploymentState.model_validate(data)


def _rolling(store: ArtifactStore, name: str) -> DeploymentState:
    state = load_state(store, name)
    if state.status != "rolling" or state.challenger is None:
        raise DeploymentError(
            f"deployment {name!r} has no rollout in progress (status {state.status}, champion "
            f"{state.champion.label}); start one with mlpipe deploy start",
            deployment=name,
        )
    return state


def advance(
    name: str,
    *,
    metrics: Mapping[str, float] | None = None,
    current: pd.DataFrame | None = None,
    store: StoreLike = None,
) -> Decision:
    """Check the gates on the current stage's live metrics; move on, wait, or roll back.

    All gates pass: the challenger gets the next stage's traffic (shadow mode ends with the first
    stage); after the last stage it is promoted. A gate fails: rollback. Not enough data (fewer
    than ``min_requests`` challenger requests, or a metric missing): nothing changes.

    Args:
        name: The deployment.
        metrics: Metrics of the challenger you measured yourself (``{"accuracy": 0.93}``).
        current: The challenger's recent inputs, for a drift gate (default: what the target logged).
        store: The store holding the deployment.
    """
    st = _store(store)
    state = _rolling(st, name)
    target = get_target(state.target)
    live = target.live_metrics(state, st)
    observed = {role: dict(values) for role, values in live.items()}
    observed.setdefault("challenger", {}).update(dict(metrics or {}))
    if current is None and any(g.get("kind") == "drift" for g in state.gates):
        current = target.current_data(state, st)
    requests = observed["challenger"].get("requests")
    if live and state.min_requests and (requests or 0) < state.min_requests:
        reasons = [f"WAIT the challenger has seen {requests or 0} of {state.min_requests} requests"]
        return Decision(action="held", state=state, reasons=reasons, metrics=observed)
    context = GateContext(metrics=observed, current=current, shadow=state.shadow)
    verdicts = [gate.check(context) for gate in parse_gates(state.gates)]
    reasons = [f"{v.outcome.upper()} {v.reason}" for v in verdicts]
    if any(v.outcome == "fail" for v in verdicts):
        rolled = rollback(
            name, reason="; ".join(r for r in reasons if r.startswith("FAIL")), store=st, _metrics=observed
        )
        return Decision(action="rolled_back", state=rolled, reasons=reasons, metrics=observed)
    if any(v.outcome == "wait" for v in verdicts):
        return Decision(action="held", state=state, reasons=reasons, metrics=observed)
    if not verdicts:
        reasons = ["PASS no gates"]
    if state.shadow:
        new = _next(state, "advance")
        new.shadow = False
        new.traffic = _split(100 - state.stages[0], state.stages[0])
        _apply(new, st, "advance", reasons=reasons, metrics=observed)
        return Decision(action="advanced", state=new, reasons=reasons, metrics=observed)
    if state.stage + 1 >= len(state.stages) or state.stages[state.stage] >= 100:
        done = promote(name, store=st, _reasons=reasons, _metrics=observed)
        return Decision(action="promoted", state=done, reasons=reasons, metrics=observed)
    new = _next(state, "advance")
    new.stage = state.stage + 1
    share = state.stages[new.stage]
    if share >= 100:
        done = promote(name, store=st, _reasons=reasons, _metrics=observed)
        return Decision(action="promoted", state=done, reasons=reasons, metrics=observed)
    new.traffic = _split(100 - share, share)
    _apply(new, st, "advance", reasons=reasons, metrics=observed)
    return Decision(action="advanced", state=new, reasons=reasons, metrics=observed)


def promote(
    name: str,
    *,
    store: StoreLike = None,
    alias: str = "champion",
    _reasons: list[str] | None = None,
    _metrics: dict[str, Any] | None = None,
) -> DeploymentState:
    """The challenger takes all traffic and becomes the champion (the registry alias moves to it)."""
    st = _store(store)
    state = _rolling(st, name)
    assert state.challenger is not None
    winner = state.challenger
    new = _next(state, "promote")
    new.champion = winner.model_copy(update={"alias": alias})
    new.challenger = None
    new.shadow = False
    new.traffic = {"champion": 100}
    new.status = "promoted"
    _apply(new, st, "promote", reasons=_reasons or ["promoted by hand"], metrics=_metrics)
    client = _client(state.tracking_uri)
    client.set_registered_model_alias(winner.name, alias, winner.version)
    return new


def rollback(
    name: str,
    *,
    reason: str = "rolled back by hand",
    store: StoreLike = None,
    _metrics: dict[str, Any] | None = None,
) -> DeploymentState:
    """The champion takes all traffic again; the challenger is removed from the target."""
    st = _store(store)
    state = _rolling(st, name)
    new = _next(state, "rollback")
    new.challenger = None
    new.shadow = False
    new.traffic = {"champion": 100}
    new.status = "rolled_back"
    _apply(new, st, "rollback", reasons=[reason], metrics=_metrics)
    assert state.challenger is not None
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _client(state.tracking_uri).set_model_version_tag(
            state.challenger.name,
            state.challenger.version,
            f"mlpipe.deployment.{name}",
            f"{stamp} rolled back: {reason}",
        )
    except Exception:  # best effort, as in _tag_versions
        pass
    return new


def set_traffic(name: str, champion: int, challenger: int, *, store: StoreLike = None) -> DeploymentState:
    """Set the split by hand (``90, 10``); the two must sum to 100."""
    traffic = _split(champion, challenger)
    st = _store(store)
    state = _rolling(st, name)
    new = _next(state, "traffic")
    new.traffic = traffic
    new.shadow = False
    _apply(new, st, "traffic", reasons=[f"set by hand to {champion}/{challenger}"])
    return new


def status(name: str, *, store: StoreLike = None) -> DeploymentState:
    """The deployment's current state."""
    return load_state(_store(store), name)


def history(name: str, *, store: StoreLike = None) -> list[DeploymentEvent]:
    """Every change of the deployment, oldest first: versions, runs, traffic, time, reasons."""
    return load_events(_store(store), name)
