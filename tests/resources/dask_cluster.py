"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

Each process is a subprocess in its own session, on a free port, with its
log in a file; :meth:`DaskCluster.start` waits until the scheduler answers
and every worker has joined, and :meth:`DaskCluster.stop` always ends them
(SIGTERM, then SIGKILL). Workers run without a nanny, so a worker killed by a
test stays dead (Dask reruns its tasks on the others), and its pid is the
pid that mlpipe's attempt markers record.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT = 60.0
TESTS = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test worker: offline, and able to import the tests' pipelines."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
        "MLPIPE_RETRY_BACKOFF": "0.05",
    }
    env.update(extra or {})
    return env


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class DaskCluster:
    """A scheduler and ``len(resources)`` workers, one thread each; ``resources[i]`` is worker i's."""

    root: Path
    resources: list[str] = field(default_factory=lambda: ["cpu=1,memory=4e9", "cpu=1,memory=4e9"])
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)  # a command run before the workers (e.g. unshare)
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[Worker] = field(default_factory=list)

    def start(self) -> DaskCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        env = worker_env(self.env)
        try:
            self.scheduler = self._spawn(
                [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                 "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],
                self.root / "scheduler.log", env,
            )  # fmt: skip
            self._wait_for_port(port)
            for i, res in enumerate(self.resources):
                name = f"w{i}"
                log = self.root / f"{name}.log"
                cmd = [*self.prefix, sys.executable, "-m", "dask", "worker", self.address, "--host", "127.0.0.1",
                       "--nthreads", "1", "--no-nanny", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
                       "--name", name, "--local-directory", str(self.root / name),
                       "--memory-limit", "0"]  # fmt: skip
                if res:
                    cmd += ["--resources", res]
                self.workers.append(Worker(name, self._spawn(cmd, log, env), log))
            self._wait_for_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.root
            )

    def _wait_for_port(self, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.scheduler is not None
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited:\n{self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"dask scheduler not listening after {READY_TIMEOUT:g} s:\n{self.logs()}")

    def _wait_for_workers(self) -> None:
        from distributed import Client

        with Client(self.address, timeout=READY_TIMEOUT, set_as_default=False) as client:
            deadline = time.monotonic() + READY_TIMEOUT
            while len(client.scheduler_info(n_workers=-1)["workers"]) < len(self.workers):
                for worker in self.workers:
                    if worker.proc.poll() is not None:
                        raise RuntimeError(f"dask worker {worker.name} exited:\n{self.logs()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dask workers did not join after {READY_TIMEOUT:g} s:\n{self.logs()}")
                time.sleep(0.1)

    def worker_by_pid(self, pid: int) -> Worker:
        return next(w for w in self.workers if w.pid == pid)

    def logs(self) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Workers first, then the scheduler: SIGTERM, and SIGKILL for whatever is still there after 5 s."""
        self._end([w.proc for w in self.workers])
        if self.scheduler is not None:
            self._end([self.scheduler])

    @staticmethod
    def _end(procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
