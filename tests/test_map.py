"""Fan-out with step.map and fan-in of the collected list, on the local backend."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlpipe as mp
from mlpipe.errors import GraphError, TypeMismatchError, UnsupportedFeatureError
from mlpipe.local import LocalBackend
from mlpipe.store import open_store
from mlpipe.testing import run_on


@mp.step
def grid(n: int) -> list[float]:
    return [0.5 * i for i in range(n)]


@mp.step
def train(lr: float, epochs: int) -> float:
    return lr * epochs


@mp.step
def double(score: float) -> float:
    return score * 2


@mp.step
def best(scores: list[float]) -> float:
    return max(scores)


@mp.pipeline
def sweep(n: int = 3, epochs: int = 10):
    scores = train.map(lr=grid(n), epochs=mp.unmapped(epochs))
    return best(double.map(score=scores))


@mp.pipeline
def from_param(rates: list[float] = [0.1, 0.2], epochs: int = 10):
    return best(train.map(lr=rates, epochs=mp.unmapped(epochs)))


def test_one_run_per_item_collected_for_the_consumer(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    run = run_on(LocalBackend(), sweep, store, n=3)
    assert run.status == "succeeded"
    assert [n for n in run.steps if n.startswith("train")] == ["train", "train[0]", "train[1]", "train[2]"]
    assert run.output("train") == [0.0, 5.0, 10.0]
    assert run.output("double") == [0.0, 10.0, 20.0]
    assert run.output("best") == 20.0
    assert run.output("train[2]") == 10.0


def test_each_item_is_cached_by_its_own_key(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    run_on(LocalBackend(), sweep, store, n=3)
    more = run_on(LocalBackend(), sweep, store, n=4)  # one new item
    assert [more.steps[f"train[{i}]"].cached for i in range(4)] == [True, True, True, False]
    assert more.output("best") == 30.0
    again = run_on(LocalBackend(), sweep, store, n=4)
    assert all(s.cached for s in again.steps.values())


def test_a_list_parameter_or_constant_can_be_mapped(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    assert run_on(LocalBackend(), from_param, store, rates=[0.1, 0.3]).output("best") == 3.0

    @mp.pipeline
    def constant():
        return best(train.map(lr=[1.0, 2.0], epochs=[3, 4]))  # zipped

    assert run_on(LocalBackend(), constant, store).output("best") == 8.0


def test_a_mapped_step_whose_item_fails_fails_and_skips_its_consumers(tmp_path: Path) -> None:
    @mp.step
    def invert(x: float) -> float:
        return 1 / x

    @mp.pipeline
    def inverse(values: list[float] = [1.0, 0.0]):
        return best(invert.map(x=values))

    run = run_on(LocalBackend(), inverse, open_store(str(tmp_path / "s")))
    assert run.status == "failed"
    assert run.steps["invert[0]"].status == "succeeded"
    assert run.steps["invert[1]"].status == "failed"
    assert "1 of 2 items failed; invert[1]: ZeroDivisionError" in (run.steps["invert"].error or "")
    assert run.steps["best"].status == "skipped"


def test_run_time_lengths_must_match(tmp_path: Path) -> None:
    @mp.pipeline
    def uneven(n: int = 3):
        return best(train.map(lr=grid(n), epochs=[1, 2]))

    run = run_on(LocalBackend(), uneven, open_store(str(tmp_path / "s")))
    assert run.status == "failed"
    assert "mismatched map lengths (lr: 3, epochs: 2)" in (run.steps["train"].error or "")


def test_bad_maps_are_refused_when_the_graph_is_built() -> None:
    @mp.pipeline
    def not_a_list(epochs: int = 3):
        return train.map(lr=0.5, epochs=mp.unmapped(epochs))

    with pytest.raises(GraphError, match=r"mapped argument 'lr': got 0.5 \(float\); only lists can be mapped"):
        _ = not_a_list.ir

    @mp.pipeline
    def scalar_output(epochs: int = 3):
        return double.map(score=train(0.1, epochs))

    with pytest.raises(GraphError, match=r"is a float, and only lists can be mapped over"):
        _ = scalar_output.ir

    @mp.pipeline
    def lengths():
        return train.map(lr=[0.1, 0.2], epochs=[1, 2, 3])

    with pytest.raises(GraphError, match=r"mismatched map lengths \(lr: 2, epochs: 3\)"):
        _ = lengths.ir

    @mp.pipeline
    def wrong_items():
        return train.map(lr=["fast"], epochs=mp.unmapped(1))

    with pytest.raises(TypeMismatchError, match=r"item 0 'fast' is not a float"):
        _ = wrong_items.ir

    @mp.pipeline
    def nothing_mapped():
        return train.map(lr=mp.unmapped(0.1), epochs=mp.unmapped(1))

    with pytest.raises(GraphError, match=r"map\(\) got no argument to map over"):
        _ = nothing_mapped.ir


def test_map_outside_a_pipeline_says_to_loop() -> None:
    with pytest.raises(mp.MlpipeError, match=r"outside one, call train\(\) in a loop"):
        train.map(lr=[1.0], epochs=mp.unmapped(1))


def test_a_backend_without_map_refuses_at_check() -> None:
    class NoMap(mp.Backend):
        name = "nomap"

        def submit(self, *a: object, **k: object) -> mp.RunHandle:  # type: ignore[override]
            raise AssertionError

        def status(self, handle: mp.RunHandle) -> mp.RunStatus:
            raise AssertionError

        def cancel(self, handle: mp.RunHandle) -> None:
            raise AssertionError

    with pytest.raises(UnsupportedFeatureError, match=r"cannot run step 'train', a fan-out \(train.map over lr\)"):
        NoMap().check(sweep.ir)


def test_lineage_links_each_item_and_the_collected_list(tmp_path: Path) -> None:
    from mlpipe.explain import artifact_lineage, describe_artifact

    store = open_store(str(tmp_path / "s"))
    run = run_on(LocalBackend(), sweep, store, n=3)
    item = run.steps["train[1]"].outputs["output"].digest
    collected = run.steps["train"].outputs["output"].digest
    doc = artifact_lineage(store, item)
    assert doc["produced_by"]["step"] == "train[1]" and doc["produced_by"]["inputs"]["lr"] == {"value": 0.5}
    assert doc["collected_into"] == [{"run": run.id, "step": "train"}]
    text = describe_artifact(store, collected)
    assert "collected from the outputs of its 3 item(s): train[0], train[1], train[2]" in text
    assert artifact_lineage(store, collected)["produced_by"]["items"] == ["train[0]", "train[1]", "train[2]"]
