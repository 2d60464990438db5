"""The profile's storage_options on their way into a compiled spec: what travels, what stays out, bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mlpipe.errors import ConfigError, ParameterError
from mlpipe.runtime import storage_options
from mlpipe.staging import task_storage_options


def test_endpoint_and_region_travel_credentials_stay_out_with_one_warning() -> None:
    options = {
        "endpoint_url": "http://minio.minio.svc:9000",
        "key": "minioadmin",
        "secret": "minio-secret-123",
        "token": "t0k3n",
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "nested-secret"},
        "config_kwargs": {"signature_version": "s3v4"},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = task_storage_options(options, "kubeflow")
    assert text == ('{"anon":false,"client_kwargs":{"region_name":"eu-west-1"},'
                    '"config_kwargs":{"signature_version":"s3v4"},"endpoint_url":"http://minio.minio.svc:9000"}')
    for secret in ("minioadmin", "minio-secret-123", "t0k3n", "nested-secret"):
        assert secret not in text
    (warning,) = caught
    message = str(warning.message)
    assert "storage_options key, secret, token, client_kwargs.aws_secret_access_key look like" in message
    assert "not written into the kubeflow spec" in message and "AWS_ACCESS_KEY_ID" in message


def test_a_url_with_a_password_is_withheld_and_nothing_left_is_none() -> None:
    with pytest.warns(UserWarning, match="endpoint_url look like credentials"):
        assert task_storage_options({"endpoint_url": "http://admin:hunter22@minio:9000"}, "vertex") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing withheld: no warning
        assert task_storage_options({}, "vertex") is None
        assert task_storage_options({"endpoint_url": "http://minio:9000"}, "vertex") == (
            '{"endpoint_url":"http://minio:9000"}')


def test_gcsfs_token_modes_are_settings_a_token_file_is_a_credential() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert task_storage_options({"token": "anon"}, "vertex") == '{"token":"anon"}'
    with pytest.warns(UserWarning, match="storage_options token look like credentials"):
        assert task_storage_options({"token": "/home/me/sa.json"}, "vertex") is None


def test_an_azure_connection_string_is_a_credential() -> None:
    with pytest.warns(UserWarning, match="connection_string"):
        text = task_storage_options({"connection_string": "AccountName=a;AccountKey=abc", "account_name": "a"},
                                    "kubeflow")
    assert text == '{"account_name":"a"}'


def test_an_option_that_is_not_json_is_refused_in_one_line() -> None:
    import datetime

    with pytest.raises(ConfigError, match=r"storage_options: .*not JSON serializable.*as JSON"):
        task_storage_options({"since": datetime.datetime(2026, 1, 1)}, "sagemaker")


def test_runtime_merges_the_specs_options_with_the_tasks_environment() -> None:
    assert storage_options(None, None) is None
    assert storage_options('{"endpoint_url": "http://minio:9000"}', '{"key": "k", "secret": "s"}') == {
        "endpoint_url": "http://minio:9000", "key": "k", "secret": "s"}
    assert storage_options('{"anon": true}', '{"anon": false}') == {"anon": False}  # the environment wins
    with pytest.raises(ParameterError, match="MLPIPE_STORAGE_OPTIONS must be a JSON object"):
        storage_options(None, "key=k")
    with pytest.raises(ParameterError, match="--storage-options must be a JSON object"):
        storage_options("[1]", None)


def test_runtime_with_bad_storage_options_exits_2_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mlpipe.runtime", "--store", str(tmp_path), "--ir", "0" * 64,
                           "--run-id", "r", "--step", "x", "--storage-options", "{oops"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--storage-options must be a JSON object" in proc.stderr and "Traceback" not in proc.stderr
