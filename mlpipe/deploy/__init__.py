"""From the registry to production: champion/challenger deployments with gated, staged rollout.

``start`` deploys ``model@champion`` and rolls ``model@challenger`` out in
stages (10 % → 50 % → 100 % by default, or in shadow first); ``advance``
checks the gates on the live metrics of the current stage and moves on,
waits, or rolls back; ``promote`` and ``rollback`` end a rollout by hand.
Targets: the local scoring server, KServe manifests, and (plugin)
SageMaker endpoints. Every change is recorded in the
store under ``deployments/<name>/`` (``history``). See docs/deployment.md.
"""

from __future__ import annotations

from mlpipe.deploy._gates import Agreement, Drift, ErrorRate, Gate, GateContext, GateVerdict, Latency, Metric
from mlpipe.deploy._kserve import KServeTarget, validate_manifest
from mlpipe.deploy._rollout import Decision, advance, history, promote, rollback, set_traffic, start, status
from mlpipe.deploy._state import DeploymentError, DeploymentEvent, DeploymentState, ModelRef, TargetSpec
from mlpipe.deploy._step import Deployed, deploy_step
from mlpipe.deploy._target import DeployTarget, LocalTarget, available_targets, get_target

__all__ = [
    "Agreement",
    "Decision",
    "Deployed",
    "DeployTarget",
    "DeploymentError",
    "DeploymentEvent",
    "DeploymentState",
    "Drift",
    "ErrorRate",
    "Gate",
    "GateContext",
    "GateVerdict",
    "KServeTarget",
    "Latency",
    "LocalTarget",
    "Metric",
    "ModelRef",
    "TargetSpec",
    "advance",
    "available_targets",
    "deploy_step",
    "get_target",
    "history",
    "promote",
    "rollback",
    "set_traffic",
    "start",
    "status",
    "validate_manifest",
]
