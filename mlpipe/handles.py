"""The pydantic models of the backend contract: :class:`RunHandle`, :class:`RunStatus`, :class:`BackendOptions`.

They live apart from :mod:`mlpipe.backend`, which re-exports them on first
use: a local run needs none of them, and importing pydantic costs 0.07 s.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["BackendOptions", "RunHandle", "RunStatus"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class RunHandle(BaseModel):
    """A serialisable reference to a submitted run, enough to find it again later.

    Attributes:
        backend: Backend name.
        run_id: mlpipe's run id (records live under ``runs/<run_id>/`` in the store).
        pipeline: Pipeline name.
        store: Store URL.
        external_id: The backend's own id (KFP run id, Vertex job name, SageMaker execution ARN).
        url: A link to the run in the backend's UI, when there is one.
        data: Backend-specific extras.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    backend: str
    run_id: str
    pipeline: str
    store: str
    external_id: str | None = None
    url: str | None = None
    data: dict[str, Any] = {}

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RunHandle:
        return cls.model_validate_json(text)


class RunStatus(BaseModel):
    """A backend's view of a run's state. ``state`` is one of pending, running, succeeded, failed, cancelled."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    state: str
    message: str | None = None
    steps: dict[str, str] = {}

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


class BackendOptions(BaseModel):
    """Base of a backend's options model. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
