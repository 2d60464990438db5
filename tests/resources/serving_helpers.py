"""Helpers for the serving and deployment tests (imported as ``resources.serving_helpers``).

A real MLflow model registry (sqlite, no server) with two versions of a scikit-learn model.

``registry`` trains two logistic regressions on the iris-like data below,
registers them as ``scorer`` v1 (alias ``champion``) and v2 (alias
``challenger``), and returns the tracking URI, the training frame and the
versions. Servers in these tests listen on 127.0.0.1, on free ports.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

KSERVE_CRD = Path(__file__).resolve().parent / "kserve" / "serving.kserve.io_inferenceservices.yaml.gz"


@dataclass
class Registry:
    uri: str
    train: Any  # pandas DataFrame of the features
    labels: Any
    name: str = "scorer"


def make_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.normal(size=300)})
    labels = (frame["x1"] + 0.5 * frame["x2"] > 0).astype(int)
    # What was set, not get_tracking_uri()'s default: restoring that would set MLFLOW_TRACKING_URI to
    # sqlite:///<cwd>/mlflow.db for every later test of the session.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    here = os.getcwd()
    os.chdir(root)  # a session fixture runs before the per-test working directory: write nothing in the checkout
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _register(mlflow, MlflowClient, LogisticRegression, uri, root, frame, labels, previous)
    finally:
        os.chdir(here)
    return Registry(uri, frame, labels)


def _register(
    mlflow: Any,
    MlflowClient: Any,
    LogisticRegression: Any,
    uri: str,
    root: Any,
    frame: Any,
    labels: Any,
    previous: str | None,
) -> None:
    try:
        exp = MlflowClient(uri).create_experiment("serving-tests", artifact_location=str(root / "artifacts"))
        for c in (1.0, 0.01):
            model = LogisticRegression(C=c).fit(frame, labels)
            with mlflow.start_run(experiment_id=exp):
                mlflow.sklearn.log_model(
                    model,
                    name="model",
                    registered_model_name="scorer",
                    pip_requirements=["scikit-learn", "skops"],
                )
        client = MlflowClient(uri)
        client.set_registered_model_alias("scorer", "champion", "1")
        client.set_registered_model_alias("scorer", "challenger", "2")
    finally:
        mlflow.set_tracking_uri(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(url: str, document: Any, content_type: str = "application/json") -> tuple[int, Any, dict[str, str]]:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), {k.lower(): v for k, v in exc.headers.items()}


def get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())


def count_roles(url: str, frame: Any, n: int) -> dict[str, int]:
    """Send ``n`` one-row requests; how many each variant answered."""
    seen: dict[str, int] = {}
    for i in range(n):
        row = frame.iloc[[i % len(frame)]]
        status, body, headers = post(f"{url}/invocations", {"dataframe_records": row.to_dict("records")})
        assert status == 200, body
        seen[headers["x-mlpipe-variant"]] = seen.get(headers["x-mlpipe-variant"], 0) + 1
    return seen
