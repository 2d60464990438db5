"""Options of the Dask backend, validated from a profile's ``options`` table."""

from __future__ import annotations

from pydantic import Field, field_validator

from mlpipe.extend import BackendOptions

__all__ = ["DaskOptions"]


class DaskOptions(BackendOptions):
    """Where the cluster is, or how to start one on this machine.

    Attributes:
        address: The scheduler's address, e.g. ``"tcp://10.0.0.5:8786"``. Unset: the backend
            starts a ``distributed.LocalCluster`` on 127.0.0.1 for this process (the
            ``n_workers``, ``threads_per_worker`` and ``worker_resources`` below apply only then).
        n_workers: Worker processes of the local cluster.
        threads_per_worker: Threads (steps at once) of each local worker.
        worker_resources: Dask resources each local worker declares, e.g. ``{ gpu = 1 }``.
            Defaults: ``cpu`` = ``threads_per_worker``, ``memory`` = the worker's memory limit.
        memory_limit: Memory limit of each local worker (``"4GiB"``, ``"auto"``).
        connect_timeout: Seconds to wait for the scheduler and for the first worker.
        heartbeat: Seconds between the run driver's heartbeats in the store. A run whose
            driver missed two is checked with the scheduler by whoever asks for its status
            (``mlpipe runs show``), and closed as failed when the driver is gone.
    """

    address: str | None = None
    n_workers: int = Field(default=2, ge=1, le=256)
    threads_per_worker: int = Field(default=1, ge=1, le=256)
    worker_resources: dict[str, float] = Field(default_factory=dict)
    memory_limit: str = "auto"
    connect_timeout: float = Field(default=30.0, gt=0)
    heartbeat: float = Field(default=5.0, gt=0, le=3600)

    @field_validator("address")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "://" not in value:
            value = f"tcp://{value}"
        scheme = value.split("://", 1)[0]
        if scheme not in ("tcp", "tls", "ws", "wss", "inproc", "ucx"):
            raise ValueError(f"{value!r} is not a Dask scheduler address; expected tcp://HOST:PORT")
        return value
