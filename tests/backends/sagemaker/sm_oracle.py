"""The same pipeline built with the SageMaker Python SDK's own objects, for comparison with our emitter.

Only the tests use the SDK. The oracle shares nothing with the emitter's JSON
code: it builds ``Processor`` + ``ProcessingStep`` + typed parameters +
``ExecutionVariables`` + ``Join`` from the IR and lets ``Pipeline.definition()``
write the text. It does reuse the compiler's *choices* (instance type, max
runtime, environment, retry counts), since what is proven here is the
definition's form, not the mapping policy, which has its own tests.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

from mlpipe_sagemaker.compiler import (
    CACHE_PARAMETER,
    environment,
    max_runtime,
    parameter_type,
    reports_metrics,
    sagemaker_pipeline_name,
    step_image,
)
from mlpipe_sagemaker.instances import choose_instance_type
from mlpipe_sagemaker.options import SageMakerOptions

from mlpipe.ir import ConditionSpec, PipelineIR


def sdk_definition(ir: PipelineIR, *, store_url: str, ir_digest: str, options: SageMakerOptions,
                   image: str | None) -> str:
    # tests/conftest.py sets AWS_DEFAULT_REGION (needed to import sagemaker.mlops) and AWS_EC2_METADATA_DISABLED.
    logging.getLogger("sagemaker").setLevel(logging.ERROR)  # "Popping out 'ProcessingJobName'" on every step
    with warnings.catch_warnings():
        # The SDK's import and its PipelineSession warn ("No Job being started"); only inside this builder.
        warnings.simplefilter("ignore")
        return _build(ir, store_url=store_url, ir_digest=ir_digest, options=options, image=image)


def _build(ir: PipelineIR, *, store_url: str, ir_digest: str, options: SageMakerOptions, image: str | None) -> str:
    import boto3
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output
    from sagemaker.core.workflow.conditions import ConditionEquals
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import (
        ParameterBoolean,
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.retry import (
        SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum,
        StepRetryPolicy,
    )
    from sagemaker.mlops.workflow.steps import CacheConfig, ProcessingStep

    session = PipelineSession(boto_session=boto3.Session(region_name="us-east-1"), default_bucket="unused")
    classes = {"Integer": ParameterInteger, "Float": ParameterFloat, "String": ParameterString,
               "Boolean": ParameterBoolean}
    params: dict[str, Any] = {}
    for spec in ir.params:
        if spec.required:
            default: Any = None
            kind = parameter_type(spec)
        elif spec.default is None:
            default, kind = "null", "String"
        else:
            kind = parameter_type(spec)
            if kind == "String" and spec.kind != "str":
                default = json.dumps(spec.default, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            else:
                default = {"Integer": int, "Float": float, "Boolean": bool, "String": str}[kind](spec.default)
        params[spec.name] = classes[kind](name=spec.name, default_value=default)
    cache = ParameterString(name=CACHE_PARAMETER, default_value="true")
    steps: dict[str, Any] = {}
    tests = ir.published_tests()
    files: dict[str, Any] = {}
    for spec in ir.steps:
        processor = Processor(
            role=options.role,
            image_uri=step_image(spec, image),
            instance_count=1,
            instance_type=choose_instance_type(spec.name, spec.resources, default=options.default_instance_type,
                                               overrides=options.instance_types),
            entrypoint=[options.python, "-m", "mlpipe.runtime"],
            volume_size_in_gb=options.volume_size_gb,
            max_runtime_in_seconds=max_runtime(spec),
            env=environment(spec, options),
            sagemaker_session=session,
        )
        arguments: list[Any] = ["--store", store_url, "--ir", ir_digest,
                                "--run-id", ExecutionVariables.PIPELINE_EXECUTION_ID, "--step", spec.name,
                                "--backend", "sagemaker", "--cache", cache]
        for p in ir.params:
            arguments += ["--param", Join(on="", values=[f"{p.name}=", params[p.name]])]
        outputs: list[Any] = []
        step_files: list[Any] = []
        # its mp.when results, and the numbers of its pydantic outputs, travel as property files
        for wanted, kind, flag, file in ((spec.name in tests, "when", "--when-json", "when.json"),
                                         (reports_metrics(spec, store_url), "metrics", "--metrics-json",
                                          "metrics.json")):
            if not wanted:
                continue
            arguments += [flag, f"/opt/ml/processing/mlpipe-{kind}/{file}"]
            step_files.append(PropertyFile(name=f"mlpipe-{kind}", output_name=f"mlpipe-{kind}", path=file))
            uri = Join(on="/", values=[f"{store_url}/runs", ExecutionVariables.PIPELINE_EXECUTION_ID, kind,
                                       spec.name])
            outputs.append(ProcessingOutput(output_name=f"mlpipe-{kind}", s3_output=ProcessingS3Output(
                s3_uri=uri, local_path=f"/opt/ml/processing/mlpipe-{kind}", s3_upload_mode="EndOfJob")))
        if spec.name in tests:
            files[spec.name] = step_files[0]
        policies: list[Any] = []
        if spec.retries:
            attempts = min(spec.retries, 20)
            policies = [
                StepRetryPolicy(exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
                                max_attempts=attempts, interval_seconds=10, backoff_rate=2.0),
                SageMakerJobStepRetryPolicy(
                    exception_types=[SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                                     SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                                     SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT],
                    max_attempts=attempts, interval_seconds=60, backoff_rate=2.0),
            ]
        steps[spec.name] = ProcessingStep(
            name=spec.name,
            step_args=processor.run(arguments=arguments, outputs=outputs or None),
            depends_on=[steps[u] for u in dict.fromkeys(spec.upstream)] or None,
            retry_policies=policies or None,
            cache_config=CacheConfig(enable_caching=False),
            property_files=step_files or None,
        )
    counter = [0]

    def level(specs: list[Any], depth: int) -> list[Any]:  # each mp.when test: one ConditionStep, ~c its else
        out: list[Any] = []
        branches: dict[Any, tuple[list[Any], list[Any]]] = {}
        for spec in specs:
            if len(spec.when) == depth:
                out.append(steps[spec.name])
                continue
            test = spec.when[depth].test()
            if test not in branches:
                branches[test] = ([], [])
                out.append(test)
            branches[test][1 if spec.when[depth].negate else 0].append(spec)
        for i, item in enumerate(out):
            if isinstance(item, ConditionSpec):
                counter[0] += 1
                left = JsonGet(step_name=item.step, property_file=files[item.step],
                               json_path=f"mlpipe_when_{tests[item.step].index(item)}")
                out[i] = ConditionStep(name=f"when-{counter[0]}", conditions=[ConditionEquals(left=left, right=True)],
                                       if_steps=level(branches[item][0], depth + 1),
                                       else_steps=level(branches[item][1], depth + 1), depends_on=[steps[item.step]])
        return out

    pipeline = Pipeline(name=sagemaker_pipeline_name(ir, options), parameters=[*params.values(), cache],
                        steps=level(list(ir.steps), 0), sagemaker_session=session, pipeline_experiment_config=None)
    return str(pipeline.definition())
