"""The MLflow model registry from steps: registration with lineage, aliases, promotion gates, loading by alias."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from resources import mlflow_pipelines as mpl
from resources.mlflow_helpers import Tracked

from mlpipe.integrations import mlflow as mpm

pytestmark = [
    # mlflow's own code: its pyfunc module warns about its own Any hints on import, and its
    # input-example conversion compares columns with a range (deprecated in pandas 3)
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated:DeprecationWarning"),
]
# (mlflow also says once that mlpipe's pyfunc wrapper has no type hints on predict(), on purpose:
# it takes whatever the wrapped model takes. mlflow emits that one under its own "once" filter,
# so it shows in the warnings summary and cannot be filtered here.)


def _name() -> str:
    return f"model-{uuid.uuid4().hex[:8]}"


def _version(tracked: Tracked, name: str, alias: str) -> Any:
    return tracked.client.get_model_version_by_alias(name, alias)


def test_register_with_lineage_promote_and_load_the_champion(tracked: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc

    name = _name()
    run = mpl.registry.run(name=name)
    assert run.status == "succeeded", {n: s.error for n, s in run.steps.items()}
    promotion = run.output("decide")
    assert promotion.promoted and promotion.version == "1" and promotion.previous is None
    assert len(promotion.reasons) == 1 and promotion.reasons[0].startswith("PASS accuracy = ")

    champion = _version(tracked, name, "champion")
    assert str(champion.version) == "1"  # the sqlite store answers an int, the server a string
    assert str(_version(tracked, name, "challenger").version) == "1"

    # lineage on the version: mlpipe run, step, cache key, input artifacts, data digest, the MLflow runs
    _, children = tracked.tree(run.id)
    tags = champion.tags
    train_digest = next(iter(run.steps["frames"].outputs.values())).digest
    assert champion.run_id == children["register"].info.run_id
    assert tags["mlpipe.run_id"] == run.id
    assert tags["mlpipe.pipeline"] == "registry"
    assert tags["mlpipe.step"] == "register"
    assert tags["mlpipe.cache_key"] == run.steps["register"].key
    assert tags["mlpipe.input.train_df"].endswith(train_digest)
    assert tags["mlpipe.input.model"].endswith(run.steps["fit"].outputs["output"].digest)
    assert tags["mlpipe.data.training.digest"] == train_digest
    assert tags["mlpipe.promotion.champion"] == "promoted"
    assert "PASS" in tags["mlpipe.promotion.champion.reason"]
    # the training data is an mlflow.data input of the step's run, digest = mlpipe's content hash
    inputs = tracked.client.get_run(children["register"].info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("training", train_digest[:36])]

    eval_df = run.output("frames", 1)
    expected = list(run.output("fit").predict(eval_df[mpl.FEATURES]))
    model = mpm.load_model(f"models:/{name}@champion", tracking_uri=tracked.uri)
    assert list(model.predict(eval_df[mpl.FEATURES])) == expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.uri)  # plain mlflow, as a serving process would
    assert list(mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(eval_df[mpl.FEATURES])) == expected


def test_failing_threshold_leaves_the_champion_in_place(served: Tracked) -> None:
    name = _name()
    assert mpl.registry.run(name=name).output("decide").promoted
    weak = mpl.registry.run(name=name, c=0.0001)  # a near-constant model: about half right
    promotion = weak.output("decide")
    assert not promotion.promoted and promotion.version == "2" and promotion.previous == "1"
    assert "below the threshold 0.8" in promotion.reasons[0]
    assert _version(served, name, "champion").version == "1"
    assert _version(served, name, "challenger").version == "2"
    rejected = served.client.get_model_version(name, "2").tags
    assert rejected["mlpipe.promotion.champion"] == "rejected"
    assert "below the threshold 0.8" in rejected["mlpipe.promotion.champion.reason"]


def test_better_than_champion_on_the_same_evaluation_data(served: Tracked) -> None:
    name = _name()
    first = mpl.registry.run(name=name, c=0.0001, threshold=0.0, gate="better").output("decide")
    assert first.promoted and "no champion yet" in first.reasons[1]
    better = mpl.registry.run(name=name, c=1.0, threshold=0.0, gate="better").output("decide")
    assert better.promoted and better.previous == "1"
    assert "beats champion v1" in better.reasons[1]
    worse = mpl.registry.run(name=name, c=0.0002, threshold=0.0, gate="better").output("decide")
    assert not worse.promoted
    assert "does not beat champion v2" in worse.reasons[1]
    assert _version(served, name, "champion").version == "2"
    assert "replaced by v2" in served.client.get_model_version(name, "1").tags["mlpipe.demoted.champion"]

    # other evaluation data: the champion's recorded score does not count; without a scorer the gate fails
    other = mpl.registry.run(name=name, c=3.0, threshold=0.0, gate="better", eval_seed=7).output("decide")
    assert not other.promoted and "pass scorer=" in other.reasons[1]
    # with a scorer the champion is re-scored on the candidate's evaluation data
    rescored = mpl.registry.run(name=name, c=3.0, threshold=0.0, gate="better", eval_seed=7, rescore=True)
    # a step that acts on the registry is not cached (docs/caching.md): the same model registers again
    assert not rescored.steps["register"].cached and rescored.steps["fit"].cached
    decision = rescored.output("decide")
    assert decision.version == "5" and "champion v2" in decision.reasons[1]
    rescored_tags = served.client.get_model_version(name, "2").tags
    # the champion now carries its accuracy on both evaluation data sets, keyed by their digests
    assert len([k for k in rescored_tags if k.startswith("mlpipe.eval.") and k.endswith(".accuracy")]) == 2


def test_a_model_without_a_flavor_is_served_through_pyfunc(served: Tracked) -> None:
    import pandas as pd

    name = _name()
    run = mpl.custom.run(name=name)
    assert run.status == "succeeded", run.steps["publish_custom"].error
    ref = run.output("publish_custom")
    assert isinstance(ref, mpm.ModelVersionRef) and ref.aliases == ("champion",)
    model = mpm.load_model(f"models:/{name}@champion", tracking_uri=served.uri)
    assert list(model.predict(pd.DataFrame({"a": [1.0, 2.5]}))) == [2.0, 5.0]


def test_register_needs_a_tracked_step() -> None:
    run = mpl.custom.run(name="never")
    assert run.status == "failed"
    assert "inside a step of a run tracked in MLflow" in (run.steps["publish_custom"].error or "")


def test_a_fresh_tracking_server_is_not_served_a_stale_registry_result(
    served: Tracked, fresh_mlflow_server: str
) -> None:
    from resources.mlflow_helpers import write_profile

    from mlpipe.explain import explain
    from mlpipe.store import open_store

    name = _name()
    first = mpl.registry.run(name=name)
    assert first.status == "succeeded", {n: s.error for n, s in first.steps.items()}
    # the same project and store, now tracked in a new, empty MLflow server
    write_profile(served.work, fresh_mlflow_server, served.experiment)
    fresh = Tracked(fresh_mlflow_server, served.experiment, served.work)
    again = mpl.registry.run(name=name)
    assert again.status == "succeeded", {n: s.error for n, s in again.steps.items()}
    assert again.steps["fit"].cached, "the model itself is still served from the cache"
    assert not again.steps["register"].cached and not again.steps["decide"].cached
    ref = again.output("register")
    version = fresh.client.get_model_version(name, ref.version)  # it exists where this run is tracked
    assert version.run_id == ref.mlflow_run_id
    assert str(_version(fresh, name, "champion").version) == ref.version
    text = explain(open_store(".mlpipe"), again.id, "register")
    assert "mlpipe.integrations.mlflow.register_model" in text and "MLflow model registry" in text
    assert f"the tracking server {fresh_mlflow_server}" in text
    assert "cache=True" in text
