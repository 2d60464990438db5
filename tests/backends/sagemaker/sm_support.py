"""Constants and helpers shared by the SageMaker backend's tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlpipe:1.0"
BUCKET = "mlpipe-sm-tests"
OPTIONS: dict[str, str] = {"role": ROLE, "region": "us-east-1"}

def runtime_env(endpoint: str) -> dict[str, str]:
    """The environment a SageMaker container would bring besides the definition's: credentials (from the role
    there, fake here), the region, the S3 endpoint (moto), and an image in which the test pipelines import."""
    python_dir = os.path.dirname(sys.executable)
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR", "SYSTEMROOT")}
    return {
        **keep,
        "PATH": python_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
    }
