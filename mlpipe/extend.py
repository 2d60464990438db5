"""The implementer facade: everything a backend or materializer plugin needs from the core.

Plugins import only ``mlpipe``, ``mlpipe.extend``, ``mlpipe.errors`` and
``mlpipe.ir``; the modules behind these names are the core's own business and
may move. What is here is the plugin contract:

- the backend contract: :class:`Backend`, :class:`BackendOptions`,
  :class:`Capabilities`, :class:`RunHandle`, :class:`RunStatus`;
- the compiled pipeline (:class:`PipelineIR` and its parts) and its storage
  (:func:`write_ir`, :func:`load_ir`);
- the store: :class:`ArtifactStore`, :class:`ObjectInfo`, :func:`open_store`;
- the run record and its lifecycle: :class:`RunRecord` and friends (open a run,
  record a step, skip what a failure blocks, close the run, load it back);
- fan-out and conditions at run time (:func:`item_specs`, :func:`collect_items`,
  :func:`items_failed`, :func:`branch_not_taken`), the same on every backend;
- executing one step exactly as every backend does (:func:`execute_remote_step`,
  the body of ``python -m mlpipe.runtime``), and code shipping (:func:`ship`,
  :func:`resolve_code`);
- materializers: :class:`Materializer`, :func:`register_materializer`;
- deployment targets (entry point group ``mlpipe.deploy_targets``): :class:`DeployTarget`,
  :class:`DeploymentState`, :class:`ModelRef`, :class:`DeploymentError`.

Importing this module loads the execution machinery (but nothing heavy:
no pandas, kfp, sagemaker or mlflow).
"""

from __future__ import annotations

from mlpipe.backend import TERMINAL, Backend, BackendOptions, Capabilities, RunHandle, RunStatus, get_backend
from mlpipe.code import resolve as resolve_code
from mlpipe.code import ship
from mlpipe.deploy import DeploymentError, DeploymentState, DeployTarget, ModelRef
from mlpipe.executor import StepExecutor, StepHooks, UpstreamCorrupted
from mlpipe.ir import CodeRef, InputSpec, OutputRef, ParamSpec, PipelineIR, StepOutput, StepSpec
from mlpipe.launch import new_run_id
from mlpipe.launch import resolve as resolve_profile
from mlpipe.mapping import branch_not_taken, collect_items, item_specs, items_failed
from mlpipe.materializers import Materializer, register_materializer
from mlpipe.metadata import open_index
from mlpipe.planning import RunPlan, close_cached_run, plan_run, record_cached
from mlpipe.progress import Reporter
from mlpipe.records import (
    RUN_TERMINAL,
    RunRecord,
    RunState,
    StepOutcome,
    StepStatus,
    ir_digest,
    load_ir,
    load_step_records,
    run_path,
    skip_reason,
    step_record,
    write_ir,
)
from mlpipe.run import Run, StepRun
from mlpipe.runtime import StoreAttempts, decode_param, execute_remote_step
from mlpipe.staging import task_storage_options
from mlpipe.step import memory_bytes
from mlpipe.store import ArtifactStore, ObjectInfo, open_store
from mlpipe.tracking import join_run, track_skipped

__all__ = [
    "ArtifactStore",
    "Backend",
    "BackendOptions",
    "Capabilities",
    "CodeRef",
    "DeployTarget",
    "DeploymentError",
    "DeploymentState",
    "InputSpec",
    "Materializer",
    "ModelRef",
    "ObjectInfo",
    "OutputRef",
    "ParamSpec",
    "PipelineIR",
    "RUN_TERMINAL",
    "Reporter",
    "Run",
    "RunHandle",
    "RunPlan",
    "RunRecord",
    "RunState",
    "RunStatus",
    "StepExecutor",
    "StepHooks",
    "StepOutcome",
    "StepOutput",
    "StepRun",
    "StepSpec",
    "StepStatus",
    "StoreAttempts",
    "TERMINAL",
    "UpstreamCorrupted",
    "branch_not_taken",
    "close_cached_run",
    "collect_items",
    "decode_param",
    "execute_remote_step",
    "get_backend",
    "ir_digest",
    "item_specs",
    "items_failed",
    "join_run",
    "load_ir",
    "load_step_records",
    "memory_bytes",
    "new_run_id",
    "open_index",
    "open_store",
    "plan_run",
    "record_cached",
    "register_materializer",
    "reporter",
    "resolve_code",
    "resolve_profile",
    "run_path",
    "ship",
    "skip_reason",
    "step_record",
    "task_storage_options",
    "track_skipped",
    "write_ir",
]


def reporter() -> Reporter:
    """Where a backend reports its run's progress: what ``mlpipe run`` installed, else one that prints nothing.

    A backend whose engine does not run steps through mlpipe's executor calls
    ``run_started``, ``step_finished`` and ``run_finished`` itself.
    """
    from mlpipe.progress import REPORTER

    return REPORTER.get() or Reporter()
