"""A run whose driver died with its cluster is not `running` forever: a new process sees it failed, with why.

Each case starts a cluster of its own (a scheduler and one worker without a
nanny), submits with `mlpipe submit` (which exits at once), SIGKILLs the
worker running the driver (and, in one case, the scheduler) in the middle of
a step, and follows the run with `mlpipe runs show --json` in new processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from resources.dask_cluster import DaskCluster, worker_env

from mlpipe.extend import open_store

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("killed", ["worker", "cluster"])
def test_a_run_whose_driver_died_shows_as_failed_with_the_reason(killed: str, tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path / "cluster", resources=["cpu=1,memory=4e9"]).start()
    try:
        work = tmp_path / "project"
        work.mkdir()
        (work / "pipe.py").write_text("from resources.dask_pipelines import killable\n")
        (work / "mlpipe.toml").write_text(
            f'[profiles.cluster]\nbackend = "dask"\nstore = "{tmp_path / "store"}"\n'
            f'options = {{ address = "{cluster.address}", heartbeat = 0.5 }}\n'
        )
        env = worker_env()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mlpipe", *args], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=60, check=False)  # fmt: skip

        def show(run_id: str) -> dict[str, Any]:
            shown = cli("runs", "show", run_id, "--profile", "cluster", "--json")
            assert shown.returncode == 0, shown.stderr
            return dict(json.loads(shown.stdout))

        submitted = cli("submit", "pipe.py:killable", "--profile", "cluster", "-p", "seconds=60")
        assert submitted.returncode == 0, submitted.stderr
        found = re.search(r"submitted run (\S+) to dask", submitted.stdout)
        assert found, submitted.stdout
        run_id = found.group(1)
        store = open_store(str(tmp_path / "store"))
        attempts = f"runs/{run_id}/attempts/long_step"
        deadline = time.monotonic() + 60
        while not [n for n in store.listdir(attempts) if n.endswith(".json")]:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.1)
        beat = store.get_json(f"runs/{run_id}/dask-driver.json")
        assert beat["pid"] == cluster.workers[0].pid and beat["host"]
        assert show(run_id)["run"]["status"] == "running"  # alive and beating: the launcher is long gone

        victims = [w.proc for w in cluster.workers] + ([cluster.scheduler] if killed == "cluster" else [])
        for proc in victims:
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

        deadline = time.monotonic() + 60
        doc = show(run_id)
        while doc["run"]["status"] == "running":
            assert time.monotonic() < deadline, doc
            time.sleep(0.5)
            doc = show(run_id)
        run = doc["run"]
        assert run["status"] == "failed", run
        error = run["error"]
        assert error.startswith("interrupted: its driver (pid ") and "last beat" in error, error
        if killed == "cluster":
            assert f"the scheduler at {cluster.address} cannot be reached" in error, error
        else:  # the scheduler lives, with no worker left to run the driver again
            assert f"the scheduler at {cluster.address} has no worker left to run the driver's task" in error, error
        steps = doc["steps"]
        assert steps["pause"]["status"] == "succeeded"
        assert steps["long_step"]["status"] == "failed" and "interrupted" in steps["long_step"]["error"]
        assert steps["add"]["status"] == "skipped"
        assert show(run_id)["run"]["status"] == "failed"  # closed in the store: the same answer next time
        text = cli("runs", "show", run_id, "--profile", "cluster").stdout
        assert "status failed" in text and "error: interrupted: its driver" in text, text
    finally:
        cluster.stop()
