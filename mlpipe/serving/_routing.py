"""The traffic split of a scoring server: which model answers how much of the traffic.

Its own module, with no dependencies, so that deployment state (:mod:`mlpipe.deploy`)
can describe a split without importing the server, and the server can read deployment
state without the two importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Routing"]


@dataclass(frozen=True)
class Routing:
    """Which model answers how much of the traffic.

    Attributes:
        revision: Increases with every change of the split (counters restart with it).
        models: Role (``champion``, ``challenger``, ``primary``) -> model reference.
        weights: Role -> percent of requests it answers; they sum to 100.
        shadow: A role that sees a copy of every request and answers none (its
            predictions are logged and compared with the answering model's).
    """

    revision: int
    models: Mapping[str, str]
    weights: Mapping[str, int]
    shadow: str | None = None

    def __post_init__(self) -> None:
        if sum(self.weights.values()) != 100:
            raise ValueError(f"traffic weights must sum to 100, got {dict(self.weights)}")
        unknown = (set(self.weights) | {self.shadow} - {None}) - set(self.models)
        if unknown:
            raise ValueError(f"traffic for roles without a model: {sorted(str(u) for u in unknown)}")
