"""mlpipe-dask as a plugin: discovery, options, what it imports (no cluster needed)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mlpipe_dask
import pytest
from mlpipe_dask import DaskBackend

from mlpipe.backend import available_backends, get_backend_class
from mlpipe.errors import ConfigError

SRC = Path(mlpipe_dask.__file__).parent


def test_entry_point_names_the_backend() -> None:
    assert get_backend_class("dask") is DaskBackend
    assert available_backends()["dask"] == "mlpipe-dask (mlpipe_dask.backend:DaskBackend)"


def test_importing_the_plugin_does_not_import_dask() -> None:
    code = "import sys, mlpipe_dask; mlpipe_dask.DaskBackend; print(sorted({'dask', 'distributed'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_plugin_imports_only_the_facade() -> None:
    allowed = {"mlpipe", "mlpipe.extend", "mlpipe.errors", "mlpipe.ir"}
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mlpipe":
                assert node.module in allowed, f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("mlpipe.") or alias.name in allowed, path.name


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"Valid options: address, n_workers"):
        DaskBackend({"adress": "tcp://127.0.0.1:8786"})
    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        DaskBackend({"address": "http://127.0.0.1:8786"})
    assert DaskBackend({"address": "127.0.0.1:8786"}).opts.address == "tcp://127.0.0.1:8786"


def test_unreachable_scheduler_is_a_clear_error() -> None:
    from resources.dask_cluster import free_port

    from mlpipe.errors import BackendError

    backend = DaskBackend({"address": f"tcp://127.0.0.1:{free_port()}", "connect_timeout": 1})
    with pytest.raises(BackendError, match=r"cannot reach the scheduler at tcp://127\.0\.0\.1:\d+ within 1 s"):
        backend.client()
