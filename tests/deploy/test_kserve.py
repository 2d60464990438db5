"""The KServe target: InferenceService manifests with canaryTrafficPercent, validated against KServe's CRD.

The CRD is KServe's own release file (tests/resources/kserve/, see its README): the schema a cluster
checks an InferenceService against. No cluster runs here, so applying the manifest is not tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from resources.serving_helpers import KSERVE_CRD, Registry

from mlpipe import deploy
from mlpipe.deploy import Metric, validate_manifest

OPTIONS = {"storage_uri": "s3://models/{name}/v{version}", "namespace": "ml", "min_replicas": 1}


def _manifest(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def test_canary_promote_and_rollback_manifests_are_valid(reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    out = tmp_path / "isvc.yaml"
    state = deploy.start("scorer-kube", "scorer", target="kserve", target_options={**OPTIONS, "output": str(out)},
                         stages=[10, 50, 100], gates=[Metric(name="accuracy", min=0.8)], store=store,
                         tracking_uri=reg.uri)
    first = _manifest(state.details["output"])
    assert validate_manifest(first, KSERVE_CRD) == []
    predictor = first["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"] == {"modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
                                  "storageUri": "s3://models/scorer/v2"}
    assert first["metadata"]["annotations"]["mlpipe.dev/champion"] == "scorer/1"

    assert deploy.advance("scorer-kube", metrics={"accuracy": 0.91}, store=store).action == "advanced"
    assert _manifest(str(out))["spec"]["predictor"]["canaryTrafficPercent"] == 50
    assert deploy.advance("scorer-kube", metrics={"accuracy": 0.92}, store=store).action == "promoted"
    promoted = _manifest(str(out))
    assert validate_manifest(promoted, KSERVE_CRD) == []
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["predictor"]["model"]["storageUri"] == "s3://models/scorer/v2"

    # a new challenger (v1 again, as if retrained) that fails its gate: back to the champion's spec
    from mlflow import MlflowClient

    MlflowClient(reg.uri).set_registered_model_alias("scorer", "challenger", "1")
    deploy.start("scorer-kube", "scorer", target="kserve", target_options={**OPTIONS, "output": str(out)},
                 gates=[Metric(name="accuracy", min=0.8)], store=store, tracking_uri=reg.uri)
    assert _manifest(str(out))["spec"]["predictor"]["model"]["storageUri"] == "s3://models/scorer/v1"
    assert deploy.advance("scorer-kube", metrics={"accuracy": 0.5}, store=store).action == "rolled_back"
    rolled = _manifest(str(out))
    assert validate_manifest(rolled, KSERVE_CRD) == []
    assert rolled["spec"]["predictor"]["model"]["storageUri"] == "s3://models/scorer/v2"
    assert "canaryTrafficPercent" not in rolled["spec"]["predictor"]
    revisions = [e.revision for e in deploy.history("scorer-kube", store=store)]
    assert revisions == [1, 2, 3, 4, 5]  # every revision's manifest is kept in the store too
    kept = sorted((store / "deployments" / "scorer-kube" / "kserve").iterdir())
    assert len(kept) == 5


def test_the_validator_catches_what_the_crd_forbids(reg: Registry, tmp_path: Path) -> None:
    state = deploy.start("scorer-k2", "scorer", target="kserve", target_options=OPTIONS, store=tmp_path / "s",
                         tracking_uri=reg.uri)
    good = yaml.safe_load(Path(state.details["manifest"]).read_text())
    assert validate_manifest(good, KSERVE_CRD) == []
    bad = yaml.safe_load(Path(state.details["manifest"]).read_text())
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    bad["spec"]["predictor"]["model"]["storageUrl"] = "s3://typo"
    problems = validate_manifest(bad, KSERVE_CRD)
    assert any("canaryTrafficPercent" in p and "'ten' is not of type 'integer'" in p for p in problems)
    assert any("storageUrl" in p for p in problems)
    bad = {**good, "apiVersion": "serving.kserve.io/v1alpha9"}
    assert "defines no version" in validate_manifest(bad, KSERVE_CRD)[0]
    no_predictor = {**good, "spec": {}}
    assert any("'predictor' is a required property" in p for p in validate_manifest(no_predictor, KSERVE_CRD))


def test_storage_it_cannot_read_is_a_clear_error(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(deploy.DeploymentError, match="which KServe cannot read; set the kserve option storage_uri"):
        deploy.start("scorer-k3", "scorer", target="kserve", store=tmp_path / "s", tracking_uri=reg.uri)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpipe", *args], check=False, env=env, capture_output=True,
                          text=True, timeout=180)


def test_cli_deploy_start_advance_history_and_bad_split(reg: Registry, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": reg.uri}
    started = _cli("deploy", "start", "cli-kube", "--model", "scorer", "--target", "kserve",
                   "-o", "storage_uri=s3://models/{name}/{version}", "--gate", "accuracy>=0.8", env=env)
    assert started.returncode == 0, started.stderr
    assert "traffic: champion scorer/1 90 %, challenger scorer/2 10 %" in started.stdout
    split = _cli("deploy", "traffic", "cli-kube", "--split", "70/20", env=env)
    assert split.returncode == 2 and "sum to 100" in split.stderr and "Traceback" not in split.stderr
    failed = _cli("deploy", "advance", "cli-kube", "--metric", "accuracy=0.4", env=env)
    assert failed.returncode == 1 and "rolled_back" in failed.stdout and "accuracy = 0.4 is below 0.8" in failed.stdout
    history = _cli("deploy", "history", "cli-kube", env=env)
    assert history.returncode == 0
    lines = history.stdout.splitlines()
    assert lines[0].split()[3:5] == ["start", "rolling"] and "challenger 10 %" in lines[0]
    assert any("challenger scorer/2  mlflow run" in line for line in lines)
    assert any(line.split()[3:5] == ["rollback", "rolled_back"] for line in lines)
    unknown = _cli("deploy", "start", "cli-kube", "--model", "scorer", "--champion", "nope", "--challenger", "nada",
                   "--target", "kserve", env=env)
    assert unknown.returncode == 2 and "neither a 'nope' nor a 'nada' alias" in unknown.stderr
