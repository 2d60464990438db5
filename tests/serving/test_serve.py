"""`mlpipe serve` and ScoringServer: a real uvicorn server on 127.0.0.1, called over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from resources.serving_helpers import Registry, free_port, get, post

from mlpipe.serving import ScoringServer, load_predictions
from mlpipe.serving._model import ModelLoadError, UnknownModelError
from mlpipe.serving._server import PortInUseError


def _rows(registry: Registry, n: int = 5) -> list[list[float]]:
    return registry.train.head(n).values.tolist()


def test_every_json_form_scores_like_the_model(registry: Registry, tmp_path: Path) -> None:
    with ScoringServer("scorer@champion", port=0, store=tmp_path / "store", tracking_uri=registry.uri) as server:
        status, health = get(f"{server.url}/health")
        assert status == 200 and health["models"] == {"primary": "scorer/1"}
        cols = ["x1", "x2"]
        rows = _rows(registry)
        records = registry.train.head(5).to_dict(orient="records")
        forms = [
            {"dataframe_split": {"columns": cols, "data": rows}},
            {"dataframe_records": records},
            {"instances": records},
            {"inputs": records},
        ]
        answers = []
        for form in forms:
            status, body, headers = post(f"{server.url}/invocations", form)
            assert status == 200, body
            assert headers["x-mlpipe-model"] == "scorer/1"
            answers.append(body["predictions"])
        csv = registry.train.head(5).to_csv(index=False).encode()
        status, body, _ = post(f"{server.url}/invocations", csv, "text/csv")
        assert status == 200
        answers.append(body["predictions"])
    truth = registry.labels.head(5).tolist()
    assert all(a == answers[0] for a in answers) and len(answers[0]) == 5
    assert sum(a == b for a, b in zip(answers[0], truth)) >= 4  # a fitted model, not a constant


def test_bad_requests_are_400_with_the_reason(registry: Registry) -> None:
    with ScoringServer("scorer@champion", port=0, tracking_uri=registry.uri) as server:
        status, body, _ = post(f"{server.url}/invocations", {"rows": [[1, 2]]})
        assert status == 400 and "exactly one of the keys" in body["message"] and "rows" in body["message"]
        status, body, _ = post(f"{server.url}/invocations", b"{not json", "application/json")
        assert status == 400 and "not valid JSON" in body["message"]
        status, body, _ = post(f"{server.url}/invocations", {"dataframe_split": {"columns": ["x1"], "data": [[1, 2]]}})
        assert status == 400 and "dataframe_split" in body["message"]
        status, body, _ = post(f"{server.url}/invocations", {"dataframe_records": [{"nope": 1}]})
        assert status == 500 and body["error_code"] == "MODEL_ERROR" and "scorer/1" in body["message"]


def test_predictions_are_logged_sampled_and_bounded(registry: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = ScoringServer(
        "scorer@champion", port=0, store=store, tracking_uri=registry.uri, batch_rows=10, max_batches=3, seed=1
    ).start()
    try:
        for i in range(12):  # 12 requests x 5 rows = 60 rows -> 6 batches of 10, of which 3 are kept
            frame = registry.train.iloc[i * 5 : i * 5 + 5]
            status, _body, _ = post(f"{server.url}/invocations", {"dataframe_records": frame.to_dict("records")})
            assert status == 200
        status, stats = get(f"{server.url}/stats")
        assert stats["variants"]["primary"]["requests"] == 12 and stats["variants"]["primary"]["errors"] == 0
    finally:
        server.stop()
    logged = load_predictions("scorer", store=store)
    assert len(logged) == 30  # the newest three batches
    assert {"x1", "x2", "prediction", "mlpipe_time", "mlpipe_variant", "mlpipe_model"} <= set(logged.columns)
    assert set(logged["mlpipe_model"]) == {"scorer/1"}
    # the newest rows: the last 30 rows sent, in order
    assert logged["x1"].tolist() == pytest.approx(registry.train["x1"].iloc[30:60].tolist())
    assert len(load_predictions("scorer", store=store, limit=7)) == 7
    assert load_predictions("nothing", store=store).empty

    sampled_store = tmp_path / "sampled"
    with ScoringServer(
        "scorer@champion", port=0, store=sampled_store, tracking_uri=registry.uri, sample=0.2, seed=3
    ) as server:
        records = registry.train.head(200).to_dict("records")
        assert post(f"{server.url}/invocations", {"dataframe_records": records})[0] == 200
    kept = len(load_predictions("scorer", store=sampled_store))
    assert 15 < kept < 65  # about 40 of 200


def test_the_log_feeds_the_drift_check(registry: Registry, tmp_path: Path) -> None:
    from mlpipe.quality import compute_drift

    store = tmp_path / "store"
    with ScoringServer("scorer@champion", port=0, store=store, tracking_uri=registry.uri) as server:
        shifted = registry.train.head(150).assign(x1=lambda d: d["x1"] + 3.0)
        assert post(f"{server.url}/invocations", {"dataframe_records": shifted.to_dict("records")})[0] == 200
        same = registry.train.tail(150)
        assert post(f"{server.url}/invocations", {"dataframe_records": same.to_dict("records")})[0] == 200
    current = load_predictions("scorer", store=store)
    result = compute_drift(registry.train, current.iloc[:150], columns=["x1", "x2"])
    assert result.column("x1").drifted and not result.column("x2").drifted
    calm = compute_drift(registry.train, current.iloc[150:], columns=["x1", "x2"])
    assert not calm.drifted


def test_unknown_alias_and_unloadable_model_are_clear_errors(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"no alias 'nope'.*challenger \(v2\), champion \(v1\)"):
        ScoringServer("scorer@nope", port=0, tracking_uri=registry.uri)
    with pytest.raises(UnknownModelError, match="no model named 'ghost'"):
        ScoringServer("ghost@champion", port=0, tracking_uri=registry.uri)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors: [this is not a flavor map\n")
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        ScoringServer(str(broken), port=0)


def test_a_port_in_use_is_refused(registry: Registry) -> None:
    with ScoringServer("scorer@champion", port=0, tracking_uri=registry.uri) as server:
        with pytest.raises(PortInUseError, match=f"port {server.port} on 127.0.0.1 is already in use"):
            ScoringServer("scorer@champion", port=server.port, tracking_uri=registry.uri)


def _cli(*args: str, env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlpipe", *args], check=False, env=env, capture_output=True, text=True, timeout=120, **kw
    )


def test_cli_serve_answers_over_http_and_stops_on_sigterm(registry: Registry, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.uri}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipe", "serve", "scorer@challenger", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, health = get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "mlpipe serve did not start"
                time.sleep(0.2)
        assert health["models"] == {"primary": "scorer/2"}
        status, body, _ = post(
            f"http://127.0.0.1:{port}/invocations", {"inputs": registry.train.head(3).to_dict("records")}
        )
        assert status == 200 and len(body["predictions"]) == 3
        # the port is taken now: a second server is refused, exit 2, one paragraph, no traceback
        second = _cli("serve", "scorer@challenger", "--port", str(port), env=env)
        assert second.returncode == 2
        assert "already in use" in second.stderr and "Traceback" not in second.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"serving scorer/2 on http://127.0.0.1:{port}" in err
    assert len(load_predictions("scorer", store=".mlpipe")) == 3


def test_cli_errors_exit_2_or_1_without_traceback(registry: Registry, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.uri}
    unknown = _cli("serve", "scorer@nope", "--port", "0", env=env)
    assert unknown.returncode == 2 and "no alias 'nope'" in unknown.stderr and "Traceback" not in unknown.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors: [\n")
    failed = _cli("serve", str(broken), "--port", "0", env=env)
    assert failed.returncode == 1 and "cannot be loaded" in failed.stderr and "Traceback" not in failed.stderr
    debug = _cli("--debug", "serve", str(broken), "--port", "0", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_connections_have_nagle_off_and_requests_never_write_the_log(registry: Registry, tmp_path: Path) -> None:
    """Without TCP_NODELAY every answer waited for the client's delayed ACK (40-50 ms a request on Linux)."""
    import http.client
    import json
    import socket

    store = tmp_path / "store"
    with ScoringServer("scorer@champion", port=0, store=store, tracking_uri=registry.uri, batch_rows=2) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        body = json.dumps({"dataframe_split": {"columns": ["x1", "x2"], "data": _rows(registry, 1)}})
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        assert conn.getresponse().read()
        (connection,) = server._server.server_state.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        log = server.engine.log
        assert log is not None and log.background  # requests only keep rows; the flusher thread writes them
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        assert conn.getresponse().read()
        conn.close()
        deadline = time.monotonic() + 30  # a full batch (2 rows) wakes the flusher before its 2 s interval
        while load_predictions("scorer", store=store).empty:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert len(load_predictions("scorer", store=store)) == 2
