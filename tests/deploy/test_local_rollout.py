"""Gradual rollout on the local scoring server: canary stages, shadow mode, gates, promotion, rollback, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient
from resources.serving_helpers import Registry, count_roles, free_port, get, post

from mlpipe import deploy
from mlpipe.deploy import Agreement, DeploymentError, Drift, ErrorRate, Metric
from mlpipe.serving import ScoringServer, load_predictions
from mlpipe.serving._model import UnknownModelError


def _server(store: Path, name: str, port: int, **kw: object) -> ScoringServer:
    return ScoringServer(
        deployment=name, store=store, port=port, poll=0.05, flush_interval=0.1, seed=7, **kw
    ).start()


def test_canary_moves_in_gated_stages_and_promotes(reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = deploy.start(
        "scorer-live", "scorer", target="local", target_options={"url": url}, stages=[10, 50, 100],
        gates=[ErrorRate(max=0.05), Metric(name="latency_p99_ms", max=5000)], min_requests=10,
        store=store, tracking_uri=reg.uri,
    )
    assert state.status == "rolling" and state.traffic == {"champion": 90, "challenger": 10}
    assert (state.champion.label, state.challenger.label if state.challenger else None) == ("scorer/1", "scorer/2")
    server = _server(store, "scorer-live", port)
    try:
        assert get(f"{url}/health")[1]["traffic"] == {"champion": 90, "challenger": 10}
        seen = count_roles(url, reg.train, 200)
        assert 5 <= seen.get("challenger", 0) <= 45 and seen["champion"] > 150
        # fewer challenger requests than the stage needs: hold
        held = deploy.advance("scorer-live", store=store) if seen["challenger"] < 10 else None
        if held is not None:
            assert held.action == "held"
            count_roles(url, reg.train, 200)
        first = deploy.advance("scorer-live", store=store)
        assert first.action == "advanced", first.reasons
        assert first.state.traffic == {"champion": 50, "challenger": 50}
        assert any(r.startswith("PASS error rate 0.00%") for r in first.reasons)
        assert get(f"{url}/health")[1]["revision"] == first.state.revision  # confirm() waited for the switch
        seen = count_roles(url, reg.train, 100)
        assert 25 <= seen["challenger"] <= 75
        final = deploy.advance("scorer-live", store=store)
        assert final.action == "promoted"
        assert final.state.champion.label == "scorer/2" and final.state.traffic == {"champion": 100}
        assert count_roles(url, reg.train, 10) == {"champion": 10}
        assert get(f"{url}/health")[1]["models"] == {"champion": "scorer/2"}
    finally:
        server.stop()
    client = MlflowClient(reg.uri)
    assert str(client.get_model_version_by_alias("scorer", "champion").version) == "2"
    assert "promote" in client.get_model_version("scorer", "2").tags["mlpipe.deployment.scorer-live"]
    events = deploy.history("scorer-live", store=store)
    assert [e.action for e in events] == ["start", "advance", "promote"]
    assert [e.traffic for e in events] == [
        {"champion": 90, "challenger": 10}, {"champion": 50, "challenger": 50}, {"champion": 100}
    ]
    assert events[0].challenger is not None and events[0].challenger.run_id  # the run that logged v2
    assert events[0].time <= events[1].time <= events[2].time
    logged = load_predictions("scorer-live", store=store)
    assert set(logged["mlpipe_variant"]) == {"champion", "challenger"}
    assert set(logged["mlpipe_model"]) == {"scorer/1", "scorer/2"}


def test_a_failing_user_metric_rolls_back(reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    deploy.start("scorer-rb", "scorer", gates=[Metric(name="accuracy", min=0.9)], store=store, tracking_uri=reg.uri)
    waiting = deploy.advance("scorer-rb", store=store)
    assert waiting.action == "held" and "no accuracy" in waiting.reasons[0]
    decision = deploy.advance("scorer-rb", metrics={"accuracy": 0.62}, store=store)
    assert decision.action == "rolled_back"
    assert decision.state.traffic == {"champion": 100} and decision.state.challenger is None
    assert "accuracy = 0.62 is below 0.9" in decision.reasons[0]
    assert str(MlflowClient(reg.uri).get_model_version_by_alias("scorer", "champion").version) == "1"
    assert "rolled back" in MlflowClient(reg.uri).get_model_version("scorer", "2").tags["mlpipe.deployment.scorer-rb"]
    last = deploy.history("scorer-rb", store=store)[-1]
    assert last.action == "rollback" and "accuracy" in last.reasons[0]
    assert last.metrics["challenger"]["accuracy"] == 0.62
    with pytest.raises(DeploymentError, match="no rollout in progress"):
        deploy.advance("scorer-rb", store=store)


def test_shadow_mirrors_traffic_then_drift_gate_decides(reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    reference = tmp_path / "train.parquet"
    reg.train.to_parquet(reference)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gates = [Agreement(min=0.6), Drift(reference=str(reference), min_rows=25)]
    deploy.start("scorer-sh", "scorer", target_options={"url": url}, shadow=True, gates=gates, store=store,
                 tracking_uri=reg.uri)
    server = _server(store, "scorer-sh", port)
    try:
        # every answer comes from the champion; the challenger sees a copy of each request
        records = reg.train.head(100).to_dict("records")
        status, _body, headers = post(f"{url}/invocations", {"dataframe_records": records})
        assert status == 200 and headers["x-mlpipe-variant"] == "champion"
        server.engine._shadow_pool.submit(lambda: None).result(timeout=10)  # the mirrored request is scored
        server.engine.log.flush(force=True)  # what the flusher does every flush_interval
        decision = deploy.advance("scorer-sh", store=store)
        assert decision.action == "advanced", decision.reasons
        assert decision.state.traffic == {"champion": 90, "challenger": 10} and not decision.state.shadow
        assert any("agreement with the champion" in r for r in decision.reasons)
        assert any(r.startswith("PASS inputs: no drift") for r in decision.reasons)
        # now the challenger's live inputs move away from the training data: the drift gate rolls back
        shifted = reg.train.assign(x1=reg.train["x1"] + 4.0)
        count_roles(url, shifted, 300)
        server.engine.log.flush(force=True)
        rolled = deploy.advance("scorer-sh", store=store)
        assert rolled.action == "rolled_back", rolled.reasons
        assert any(r.startswith("FAIL inputs: drift detected") and "x1" in r for r in rolled.reasons)
    finally:
        server.stop()
    logged = load_predictions("scorer-sh", store=store, variant="challenger")
    assert len(logged) >= 100 and set(logged["mlpipe_model"]) == {"scorer/2"}


def test_bad_input_is_refused_clearly(reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(DeploymentError, match="must be 1-63 lowercase"):
        deploy.start("Bad_Name", "scorer", store=store, tracking_uri=reg.uri)
    with pytest.raises(DeploymentError, match="increasing percents"):
        deploy.start("s1", "scorer", stages=[50, 10], store=store, tracking_uri=reg.uri)
    with pytest.raises(UnknownModelError, match="no model named 'ghost'"):
        deploy.start("s1", "ghost", store=store, tracking_uri=reg.uri)
    with pytest.raises(UnknownModelError, match="neither a 'gold' nor a 'silver' alias"):
        deploy.start("s1", "scorer", champion="gold", challenger="silver", store=store, tracking_uri=reg.uri)
    with pytest.raises(DeploymentError, match=r"invalid options for the local target.*valid options: url, wait"):
        deploy.start("s1", "scorer", target_options={"port": 1}, store=store, tracking_uri=reg.uri)
    with pytest.raises(DeploymentError, match="unknown deployment target 'nomad'"):
        deploy.start("s1", "scorer", target="nomad", store=store, tracking_uri=reg.uri)
    deploy.start("s1", "scorer", store=store, tracking_uri=reg.uri)
    with pytest.raises(DeploymentError, match=r"sum to 100.*70 % \+ challenger 20 % = 90 %"):
        deploy.set_traffic("s1", 70, 20, store=store)
    with pytest.raises(DeploymentError, match="is rolling out scorer/2"):
        deploy.start("s1", "scorer", store=store, tracking_uri=reg.uri)
    with pytest.raises(DeploymentError, match=r"no deployment 'nope'.*deployments: s1"):
        deploy.status("nope", store=store)
    assert deploy.set_traffic("s1", 75, 25, store=store).traffic == {"champion": 75, "challenger": 25}


def test_the_server_refuses_a_deployment_of_another_target(reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    deploy.start("kube", "scorer", target="kserve", target_options={"storage_uri": "s3://m/{name}/{version}"},
                 store=store, tracking_uri=reg.uri)
    from mlpipe.errors import MlpipeError

    with pytest.raises(MlpipeError, match="targets kserve, not the local server"):
        ScoringServer(deployment="kube", store=store, port=0)


def test_deploy_step_starts_a_rollout_from_a_pipeline(reg: Registry, tmp_path: Path, monkeypatch) -> None:
    import mlpipe as mp

    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    store = str(tmp_path / "store")
    rollout = deploy.deploy_step("from-pipe", "scorer", stages=[20, 100], store=store)

    @mp.step
    def promoted() -> str:
        return "scorer/2"

    @mp.pipeline
    def release() -> deploy.Deployed:
        return rollout(promoted())

    run = release.run()
    assert run.status == "succeeded"
    out = run.output("deploy")
    assert (out.challenger, out.traffic, out.status) == ("scorer/2", {"champion": 80, "challenger": 20}, "rolling")
    assert deploy.status("from-pipe", store=store).revision == out.revision == 1
    again = release.run()  # never cached: a second run is refused while the first rollout is in progress
    assert again.status == "failed" and "is rolling out scorer/2" in (again.steps["deploy"].error or "")
