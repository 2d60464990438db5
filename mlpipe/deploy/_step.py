"""``deploy_step``: start a rollout from inside a pipeline, after the registration or promotion step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlpipe.deploy._gates import Gate
from mlpipe.step import Step, step

__all__ = ["Deployed", "deploy_step"]


class Deployed(BaseModel):
    """What a deploy step did: the deployment's revision, versions and traffic."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    revision: int
    status: str
    champion: str
    challenger: str | None
    traffic: dict[str, int]
    target: str


def deploy_step(
    deployment: str,
    model: str,
    *,
    target: str = "local",
    target_options: Mapping[str, Any] | None = None,
    stages: Sequence[int] = (10, 50, 100),
    shadow: bool = False,
    gates: Sequence[Gate] = (),
    min_requests: int = 0,
    store: str | None = None,
    tracking_uri: str | None = None,
    name: str = "deploy",
) -> Step[[Any], Deployed]:
    """A step that starts rolling out ``model@challenger`` against ``model@champion``.

    ``deployed = deploy(promotion)``: give it the output of the registration or promotion step so it
    runs after it (and is skipped when that step, or a quality gate before it, fails). It is never
    cached: each run deploys. The tracking URI defaults to ``MLFLOW_TRACKING_URI``.
    """
    options = dict(target_options or {})
    gate_list = list(gates)
    plan = list(stages)

    def deploy(after: Any) -> Deployed:
        import os

        from mlpipe.deploy._rollout import start

        state = start(
            deployment,
            model,
            target=target,
            target_options=options,
            stages=plan,
            shadow=shadow,
            gates=gate_list,
            min_requests=min_requests,
            store=store,
            tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        )
        return Deployed(
            deployment=state.name,
            revision=state.revision,
            status=state.status,
            champion=state.champion.label,
            challenger=state.challenger.label if state.challenger else None,
            traffic=dict(state.traffic),
            target=state.target.kind,
        )

    deploy.__annotations__ = {"after": Any, "return": Deployed}
    return step(name=name, cache=False)(deploy)
