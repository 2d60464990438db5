"""A tiny mlpipe backend: every step runs as `python -m mlpipe.runtime` in a subprocess.

This is the recipe of docs/backends/plugins.md, tested with the conformance suite
(tests/test_extend.py). It imports only `mlpipe` and `mlpipe.extend`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

import mlpipe as mp
from mlpipe.extend import RunRecord, write_ir


class SubprocessOptions(mp.BackendOptions):
    python: str = sys.executable  # the interpreter that runs each step


class SubprocessBackend(mp.Backend):
    name = "subprocess"
    capabilities = mp.Capabilities(parallel=False, retries=False, timeouts=False, resources=False, gates=True)
    Options = SubprocessOptions

    def __init__(self, options: Any = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._stop: dict[str, threading.Event] = {}

    def submit(
        self,
        ir: mp.PipelineIR,
        store: mp.ArtifactStore,
        *,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool = True,
    ) -> mp.RunHandle:
        digest = write_ir(store, ir)  # the IR (and any pickled step code) goes into the store
        record = RunRecord.open(store, ir, run_id, backend=self.name, params=params, ir_digest=digest, cache=cache)
        stop = self._stop[run_id] = threading.Event()
        args = (ir, record, digest, dict(params), cache, stop)
        threading.Thread(target=self._run_all, args=args, daemon=True).start()
        return mp.RunHandle(backend=self.name, run_id=run_id, pipeline=ir.name, store=store.url)

    def _run_all(
        self,
        ir: mp.PipelineIR,
        record: RunRecord,
        digest: str,
        params: dict[str, Any],
        cache: bool,
        stop: threading.Event,
    ) -> None:
        succeeded: set[str] = set()
        for spec in ir.steps:  # the IR lists steps in a topological order
            if stop.is_set():
                break
            if not set(spec.upstream) <= succeeded:
                continue  # an upstream step failed: settle() records this one as skipped, and why
            cmd = [
                self.options.python,
                "-m",
                "mlpipe.runtime",
                "--store",
                record.store.url,
                "--ir",
                digest,
                "--run-id",
                record.run_id,
                "--step",
                spec.name,
                "--backend",
                self.name,
            ]
            cmd += [f"--param={k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in params.items()]
            if not cache:
                cmd.append("--no-cache")
            if subprocess.run(cmd, capture_output=True, check=False).returncode == 0:  # the runtime records the step
                succeeded.add(spec.name)
        record.settle(ir, cancelled=stop.is_set())  # a record for every step that did not run
        record.close("cancelled" if stop.is_set() else None)  # else: succeeded when every step did

    def status(self, handle: mp.RunHandle) -> mp.RunStatus:
        run = mp.Run.load(handle.store, handle.run_id)
        return mp.RunStatus(state=run.status, steps={n: s.status for n, s in run.steps.items()})

    def cancel(self, handle: mp.RunHandle) -> None:
        stop = self._stop.get(handle.run_id)
        if stop is not None:  # idempotent; unknown or finished runs are left alone
            stop.set()
