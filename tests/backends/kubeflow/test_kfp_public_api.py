"""The public surface of mlpipe_kubeflow is pinned."""

from __future__ import annotations

import mlpipe_kubeflow
from mlpipe_kubeflow import background, client, compiler, control, local_runner, naming, yamlout


def test_facade() -> None:
    assert mlpipe_kubeflow.__all__ == sorted(mlpipe_kubeflow.__all__)
    assert mlpipe_kubeflow.__all__ == ["KubeflowBackend", "KubeflowOptions", "StepOverrides", "Toleration",
                                       "__version__"]
    assert all(getattr(mlpipe_kubeflow, name) for name in mlpipe_kubeflow.__all__)


def test_modules_export_what_they_own() -> None:
    assert compiler.__all__ == ["ARTIFACT_SCHEMA_VERSION", "DEFAULT_IMAGE", "ENGINE_RUN_ID_INPUT",
                                "EXECUTOR_INPUT_PLACEHOLDER", "RECORD_OUTPUT", "RUN_ID_INPUT", "ParamPlan",
                                "PipelinePlan", "TaskPlan", "build", "plan", "prune", "spec_documents", "spec_header",
                                "task_specs", "write_spec"]
    assert yamlout.__all__ == ["dump_all", "dumps"]
    assert local_runner.__all__ == ["container_components_as_subprocess", "execute_spec"]
    assert background.__all__ == ["LOCAL_STOPPED", "LOG_NAME", "LocalRuns", "close_after_engine", "close_succeeded",
                                  "execute_locally", "refuse_in_local_mode", "step_states"]
    assert control.__all__ == ["WHEN_OUTPUT", "GroupPlan", "Layout", "TaskWiring", "channel", "group_documents",
                               "outer_input", "plan_layout"]
    assert naming.__all__ == ["MAX_NAME", "check_parameter_budget", "k8s_name", "pipeline_name", "task_names"]
    assert "create_run" in client.__all__ and "connect" in client.__all__


def test_backend_contract() -> None:
    from mlpipe_kubeflow import KubeflowBackend

    from mlpipe.backend import Backend

    assert issubclass(KubeflowBackend, Backend)
    assert KubeflowBackend.name == "kubeflow"
    caps = KubeflowBackend.capabilities
    assert (caps.resources, caps.retries, caps.timeouts, caps.schedules, caps.gates) == (True, True, True, True, False)
    assert caps.conditions
