"""Request latency of ``mlpipe serve`` against ``mlflow models serve`` on the same model, on 127.0.0.1.

A logistic regression (4 features) is logged to a sqlite MLflow registry in a
temporary directory; both servers serve ``models:/bench-model/1`` in their own
process (``mlflow models serve --env-manager local``, one worker; ``mlpipe
serve`` with its prediction log on, as deployed). One client sends the same
one-row ``dataframe_split`` request over a kept-alive HTTP/1.1 connection
to each, interleaved (request i goes to both servers, the first one
alternating), so both are measured in the same minutes under the same load:
``warmup`` requests, then ``n`` timed ones; the load average before and
after is in the result. Bounded: 180 s per server start,
60 s per request, every process stopped at the end.

    python benchmarks/bench_serving.py [-n 1000] [--output serving.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

START_TIMEOUT = 180.0
BODY = json.dumps({"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[0.1, -1.2, 0.3, 2.0]]}}).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _register(root: Path) -> str:
    import warnings

    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    import pandas as pd

    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("bench", artifact_location=str(root / "artifacts"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run(experiment_id=exp):
            mlflow.sklearn.log_model(LogisticRegression().fit(frame, y), name="model",
                                     registered_model_name="bench-model", pip_requirements=["scikit-learn", "skops"])
    return uri


def _start(command: list[str], port: int, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], float]:
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > START_TIMEOUT:
            _stop(proc)
            raise RuntimeError(f"{command[:4]} not ready after {START_TIMEOUT:g} s: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _summary(samples: list[float], n: int, answer: Any) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "n": n,
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "max_ms": round(ordered[-1], 3),
        "answer": answer,
    }


def _measure(ports: dict[str, int], n: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Interleaved: request i goes to every server in turn (the first one alternating), so each sees the same load."""
    conns = {label: http.client.HTTPConnection("127.0.0.1", port, timeout=60) for label, port in ports.items()}
    headers = {"Content-Type": "application/json"}
    samples: dict[str, list[float]] = {label: [] for label in ports}
    answers: dict[str, Any] = {}
    labels = list(ports)
    for i in range(warmup + n):
        for label in labels if i % 2 == 0 else labels[::-1]:
            conn = conns[label]
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body=BODY, headers=headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200:
                raise RuntimeError(f"{label}: request {i} answered {response.status}: {data[:300]!r}")
            if i >= warmup:
                samples[label].append(elapsed * 1000)
            answers[label] = json.loads(data)
    for conn in conns.values():
        conn.close()
    return {label: _summary(samples[label], n, answers[label]) for label in labels}


def measure(n: int = 1000, warmup: int = 50) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mlpipe-bench-serve-") as tmp:
        root = Path(tmp)
        uri = _register(root)
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # mlflow execs `uvicorn` from PATH
        out: dict[str, Any] = {"model": "models:/bench-model/1 (sklearn LogisticRegression, 4 features, 1 row)"}
        servers = {
            "mlpipe serve": [sys.executable, "-m", "mlpipe", "serve", "models:/bench-model/1", "--port", "{port}",
                             "--host", "127.0.0.1"],
            "mlflow models serve": [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/bench-model/1",
                                    "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "-w", "1"],
        }
        procs: list[subprocess.Popen[bytes]] = []
        ports: dict[str, int] = {}
        ready: dict[str, float] = {}
        try:
            for label, template in servers.items():
                port = _free_port()
                command = [part.replace("{port}", str(port)) for part in template]
                log = root / f"{label.split()[0]}.log"
                proc, ready[label] = _start(command, port, {**env, "PYTHONUNBUFFERED": "1"}, log)
                procs.append(proc)
                ports[label] = port
            out["load_before"] = round(os.getloadavg()[0], 2)
            measured = _measure(ports, n, warmup)
            out["load_after"] = round(os.getloadavg()[0], 2)
        finally:
            for proc in procs:
                _stop(proc)
        for label, got in measured.items():
            got["ready_s"] = round(ready[label], 1)
            out[label] = got
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="mlpipe-bench-cwd-"))  # mlpipe serve logs into ./.mlpipe here
    result = measure(args.n, args.warmup)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
