"""What a scoring server remembers: sampled inputs and predictions, and live counters per variant.

Both go into the mlpipe store, under ``serving/<service>/``:

- ``predictions/<time>-<writer>-<n>.parquet``: batches of sampled rows (the
  input columns, ``prediction`` columns, and ``mlpipe_time``,
  ``mlpipe_variant``, ``mlpipe_model``, ``mlpipe_request``). Bounded: a
  batch holds at most ``batch_rows`` rows and the log keeps the newest
  ``max_batches`` batches (older ones are deleted when a new one is written).
- ``stats/<revision>/<variant>-<writer>.json``: requests, errors and latency
  quantiles since the deployment's current revision (traffic split) began,
  which is what rollout gates read.

:func:`load_predictions` reads the log back as a DataFrame, the ``current``
data of :func:`mlpipe.quality.compute_drift`.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipe.store import ArtifactStore, open_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LiveStats", "PredictionLog", "load_live_stats", "load_predictions"]

META_COLUMNS = ("mlpipe_time", "mlpipe_variant", "mlpipe_model", "mlpipe_request")
_LATENCIES_KEPT = 10_000


def as_store(store: str | os.PathLike[str] | ArtifactStore | None) -> ArtifactStore:
    """An :class:`ArtifactStore` from a URL, a path or a store (None: ``.mlpipe``)."""
    return open_store(os.fspath(store) if isinstance(store, os.PathLike) else store)


def _service_dir(service: str) -> str:
    if not service or "/" in service or service.startswith("."):
        raise ValueError(f"service name {service!r} must be non-empty, without '/' and not start with '.'")
    return f"serving/{service}"


@dataclass
class LiveStats:
    """Counters of one variant since a revision began.

    Attributes:
        variant: ``champion``, ``challenger`` (or ``primary`` for a single model).
        requests: Requests answered by (or, in shadow mode, mirrored to) the variant.
        errors: Requests whose prediction raised.
        latencies_ms: The most recent prediction latencies (at most 10,000).
        agreements: Shadow mode: rows where the challenger predicted what the champion did.
        compared: Shadow mode: rows compared.
    """

    variant: str
    requests: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCIES_KEPT))
    agreements: int = 0
    compared: int = 0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def q(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        return {
            "variant": self.variant,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "latency_p50_ms": q(0.5),
            "latency_p99_ms": q(0.99),
            "agreement": self.agreements / self.compared if self.compared else None,
            "compared": self.compared,
        }


class PredictionLog:
    """A sampled, bounded log of one service's inputs and predictions in the store.

    Args:
        store: The mlpipe store (a URL or an :class:`~mlpipe.store.ArtifactStore`).
        service: The service's name (a directory under ``serving/``).
        sample: Share of rows kept, 0 to 1.
        batch_rows: Rows per stored batch; a full batch is written at once.
        max_batches: Batches kept; the oldest are deleted beyond it.
        flush_interval: Seconds after which a partial batch is written anyway.
        seed: Seed of the sampler (tests).
        background: A writer thread calls :meth:`flush` (the scoring server's): :meth:`record`
            only keeps the request and sets :attr:`wake` when a batch may be full, so no
            request waits for a parquet file or an fsync. Otherwise :meth:`record` writes
            what is due itself.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | ArtifactStore | None,
        service: str,
        *,
        sample: float = 1.0,
        batch_rows: int = 1000,
        max_batches: int = 100,
        flush_interval: float = 5.0,
        seed: int | None = None,
        background: bool = False,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample must be between 0 and 1, got {sample}")
        if batch_rows < 1 or max_batches < 1:
            raise ValueError("batch_rows and max_batches must be at least 1")
        self.store = as_store(store)
        self.service = service
        self.dir = _service_dir(service)
        self.sample = sample
        self.batch_rows = batch_rows
        self.max_batches = max_batches
        self.flush_interval = flush_interval
        self._random = random.Random(seed)
        self._rows: list[dict[str, Any]] = []
        self._pending: list[tuple[str, str, str, Any, Any, float]] = []  # requests not yet turned into rows
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: rows are sampled and written in request order
        self.background = background
        self.wake = threading.Event()
        self._writer = f"{os.getpid()}{uuid.uuid4().hex[:6]}"
        self._n = 0
        self._last_flush = time.monotonic()
        self.stats: dict[str, LiveStats] = {}
        self.revision = 0
        self.dropped = 0

    # -- recording ---------------------------------------------------------------------------
    def stats_for(self, variant: str) -> LiveStats:
        with self._lock:
            found = self.stats.get(variant)
            if found is None:
                found = self.stats[variant] = LiveStats(variant)
            return found

    def start_revision(self, revision: int) -> None:
        """A new traffic split: counters start again from zero (the old ones are written first)."""
        self.flush(force=True)
        with self._lock:
            self.revision = revision
            self.stats = {}

    def record(
        self, variant: str, model: str, request_id: str, inputs: Any, predictions: Any, latency_ms: float
    ) -> None:
        """Count a request and keep it; its rows (inputs with predictions) are sampled when the log is flushed."""
        stats = self.stats_for(variant)
        with self._lock:
            stats.requests += 1
            stats.latencies_ms.append(latency_ms)
            self._pending.append((variant, model, request_id, inputs, predictions, time.time()))
            full = len(self._pending) + len(self._rows) >= self.batch_rows
        if not self.background:
            self.flush()
        elif full:
            self.wake.set()

    def _take_pending(self) -> None:
        """Turn the kept requests into sampled rows (in the flushing thread, not the request's)."""
        with self._lock:
            pending, self._pending = self._pending, []
        rows: list[dict[str, Any]] = []
        for variant, model, request_id, inputs, predictions, when in pending:
            for row in self._rows_of(inputs, predictions):
                if self.sample >= 1.0 or self._random.random() < self.sample:
                    row.update(mlpipe_time=when, mlpipe_variant=variant, mlpipe_model=model, mlpipe_request=request_id)
                    rows.append(row)
        if rows:
            with self._lock:
                self._rows.extend(rows)

    def record_error(self, variant: str, latency_ms: float) -> None:
        stats = self.stats_for(variant)
        with self._lock:
            stats.requests += 1
            stats.errors += 1
            stats.latencies_ms.append(latency_ms)

    def record_comparison(self, variant: str, agreements: int, compared: int) -> None:
        stats = self.stats_for(variant)
        with self._lock:
            stats.agreements += agreements
            stats.compared += compared

    @staticmethod
    def _rows_of(inputs: Any, predictions: Any) -> list[dict[str, Any]]:
        import numpy as np
        import pandas as pd

        if isinstance(inputs, pd.DataFrame):  # the values of to_dict(orient="records"), at 1 % of its cost
            columns = [str(c) for c in inputs.columns]
            values = inputs.to_numpy(dtype=object).tolist()
            records = [dict(zip(columns, row, strict=True)) for row in values]
        elif isinstance(inputs, np.ndarray) and inputs.ndim == 2:
            records = [{f"input_{i}": v for i, v in enumerate(row)} for row in inputs.tolist()]
        elif isinstance(inputs, np.ndarray) and inputs.ndim == 1:
            records = [{"input": v} for v in inputs.tolist()]
        else:  # named tensors: one row holding the request as JSON
            records = [{"input": json.dumps({k: np.asarray(v).tolist() for k, v in dict(inputs).items()})}]
        preds = predictions if isinstance(predictions, list) else [predictions]
        if len(preds) != len(records):
            preds = [json.dumps(predictions, default=str)] + [None] * (len(records) - 1)
        rows: list[dict[str, Any]] = []
        for record, pred in zip(records, preds, strict=False):
            row = {str(k): v for k, v in record.items()}
            if isinstance(pred, dict):
                row.update({f"prediction.{k}": v for k, v in pred.items()})
            elif isinstance(pred, list):
                row["prediction"] = json.dumps(pred)
            else:
                row["prediction"] = pred
            rows.append(row)
        return rows

    # -- writing -----------------------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Write full batches, and a partial one if ``force`` or the flush interval has passed."""
        with self._flushing:
            self._take_pending()
            self._flush(force)

    def _flush(self, force: bool) -> None:
        with self._lock:
            due = force or time.monotonic() - self._last_flush >= self.flush_interval
            if not self._rows and not due:
                return
            batches: list[list[dict[str, Any]]] = []
            while len(self._rows) >= self.batch_rows:
                batches.append(self._rows[: self.batch_rows])
                self._rows = self._rows[self.batch_rows :]
            if due and self._rows:
                batches.append(self._rows)
                self._rows = []
            if due:
                self._last_flush = time.monotonic()
            stats = [s.summary() for s in self.stats.values()] if due else []
            revision = self.revision
        for batch in batches:
            self._write_batch(batch)
        for summary in stats:
            self.store.put_json(
                f"{self.dir}/stats/{revision}/{summary['variant']}-{self._writer}.json",
                {**summary, "revision": revision, "written": time.time()},
            )
        if batches:
            self._trim()

    def _write_batch(self, rows: list[dict[str, Any]]) -> None:
        import io

        import pandas as pd

        frame = pd.DataFrame.from_records(rows)
        buffer = io.BytesIO()
        try:
            frame.to_parquet(buffer, index=False)
        except (ValueError, TypeError):  # mixed-type object columns: store them as text
            for column in frame.columns:
                if frame[column].dtype == object:
                    frame[column] = frame[column].map(lambda v: None if v is None else str(v))
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
        self._n += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        self.store.put_bytes(f"{self.dir}/predictions/{stamp}-{self._writer}-{self._n:06d}.parquet", buffer.getvalue())

    def _trim(self) -> None:
        names = sorted(n for n in self.store.listdir(f"{self.dir}/predictions") if n.endswith(".parquet"))
        for name in names[: max(0, len(names) - self.max_batches)]:
            self.store.delete(f"{self.dir}/predictions/{name}")
            self.dropped += 1


def load_predictions(
    service: str,
    *,
    store: str | os.PathLike[str] | ArtifactStore | None = None,
    variant: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The logged inputs and predictions of a service, oldest first, as one DataFrame.

    Use it as the ``current`` data of a drift check::

        current = load_predictions("churn", store=".mlpipe", variant="challenger")
        compute_drift(train_df, current, columns=list(train_df.columns))

    Args:
        service: The service's name (``mlpipe serve --name``; default: the model's name).
        store: The store the server logged into (default ``.mlpipe``).
        variant: Only rows answered by this variant (``champion``, ``challenger``, ``primary``).
        since: Only rows logged at or after this Unix time.
        limit: At most this many of the newest rows.
        columns: Only these columns (the logging columns ``mlpipe_*`` are always there).

    Returns:
        A DataFrame of the input columns, ``prediction`` (or ``prediction.<name>``), and
        ``mlpipe_time``, ``mlpipe_variant``, ``mlpipe_model``, ``mlpipe_request``.
        Empty (no columns) when nothing was logged.
    """
    import io

    import pandas as pd

    st = as_store(store)
    directory = f"{_service_dir(service)}/predictions"
    names = sorted(n for n in st.listdir(directory) if n.endswith(".parquet")) if st.has(directory) else []
    frames = []
    for name in names:
        try:
            frame = pd.read_parquet(io.BytesIO(st.get_bytes(f"{directory}/{name}")))
        except FileNotFoundError:  # trimmed by the server while we listed
            continue
        if variant is not None:
            frame = frame[frame["mlpipe_variant"] == variant]
        if since is not None:
            frame = frame[frame["mlpipe_time"] >= since]
        if columns is not None:
            frame = frame[[c for c in frame.columns if c in columns or c in META_COLUMNS]]
        if len(frame):
            frames.append(frame)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    if limit is not None:
        out = out.iloc[-limit:].reset_index(drop=True)
    return out


def load_live_stats(
    service: str, revision: int, *, store: str | os.PathLike[str] | ArtifactStore | None = None
) -> dict[str, Any]:
    """The counters of each variant for one revision, summed over the server processes that wrote them."""
    st = as_store(store)
    directory = f"{_service_dir(service)}/stats/{revision}"
    out: dict[str, dict[str, Any]] = {}
    if not st.has(directory):
        return out
    for name in sorted(st.listdir(directory)):
        doc = st.get_json(f"{directory}/{name}")
        variant = doc["variant"]
        if variant not in out:
            out[variant] = dict(doc)
            continue
        acc = out[variant]
        total = acc["requests"] + doc["requests"]
        for key in ("latency_p50_ms", "latency_p99_ms"):  # request-weighted: exact with one writer
            values = [(acc[key], acc["requests"]), (doc[key], doc["requests"])]
            known = [(v, n) for v, n in values if v is not None]
            acc[key] = sum(v * n for v, n in known) / max(1, sum(n for _, n in known)) if known else None
        acc["requests"] = total
        acc["errors"] += doc["errors"]
        acc["error_rate"] = acc["errors"] / total if total else 0.0
        acc["compared"] = acc.get("compared", 0) + doc.get("compared", 0)
    return out
