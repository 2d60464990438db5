"""mlpipe-sagemaker: run mlpipe pipelines on SageMaker Pipelines.

Found by mlpipe through the entry point ``sagemaker`` in the group
``mlpipe.backends``; import it directly only for the extras below. Nothing
here imports boto3 or the SageMaker SDK at import time.
"""

from __future__ import annotations

from mlpipe_sagemaker.backend import SageMakerBackend, schedule_pipeline
from mlpipe_sagemaker.compiler import build_definition, dumps
from mlpipe_sagemaker.instances import INSTANCE_TABLE, choose_instance_type
from mlpipe_sagemaker.options import SageMakerOptions
from mlpipe_sagemaker.validate import DefinitionValidationError, validate_definition

__all__ = [
    "INSTANCE_TABLE",
    "DefinitionValidationError",
    "SageMakerBackend",
    "SageMakerOptions",
    "build_definition",
    "choose_instance_type",
    "dumps",
    "schedule_pipeline",
    "validate_definition",
]
__version__ = "0.1.0"
