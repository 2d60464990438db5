"""Helpers for the MLflow integration tests (imported as ``resources.mlflow_helpers``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Tracked:
    """A profile with tracking on, written to the test's working directory, and a client to inspect it."""

    uri: str
    experiment: str
    work: Path

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def runs(self) -> list[Any]:
        exp = self.client.get_experiment_by_name(self.experiment)
        assert exp is not None, f"experiment {self.experiment!r} was not created"
        return list(self.client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]))

    def tree(self, mlpipe_run_id: str) -> tuple[Any, dict[str, Any]]:
        """The parent MLflow run of an mlpipe run and its children by step name."""
        runs = [r for r in self.runs() if r.data.tags.get("mlpipe.run_id") == mlpipe_run_id]
        parents = [r for r in runs if r.data.tags.get("mlpipe.kind") == "pipeline"]
        assert len(parents) == 1, f"expected one parent run, got {len(parents)}"
        children = {r.data.tags["mlpipe.step"]: r for r in runs if r.data.tags.get("mlpipe.kind") == "step"}
        return parents[0], children


def write_profile(work: Path, uri: str, experiment: str) -> None:
    (work / "mlpipe.toml").write_text(
        f'[profiles.tracked]\nstore = ".mlpipe"\ntracking_uri = "{uri}"\nexperiment = "{experiment}"\n'
    )
