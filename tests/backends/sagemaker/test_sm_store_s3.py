"""mlpipe's artifact store on s3:// through s3fs, against moto's S3 on 127.0.0.1 (an emulator, not AWS)."""

from __future__ import annotations

import boto3
import pytest
import sm_pipelines
from sm_support import BUCKET

from mlpipe.cache import lookup
from mlpipe.errors import CorruptObjectError
from mlpipe.local import LocalBackend
from mlpipe.run import Run
from mlpipe.store import open_store
from mlpipe.testing import run_on


def test_objects_round_trip_and_are_written_once(s3_url: str) -> None:
    store = open_store(s3_url)
    info = store.put_value({"a": [1, 2.5], "b": "x"})
    again = store.put_value({"b": "x", "a": [1, 2.5]})
    assert info == again
    assert store.exists(info.digest)
    assert store.get_value(info.digest) == {"a": [1, 2.5], "b": "x"}
    assert store.meta(info.digest)["materializer"] == info.materializer
    assert [d for d, _ in store.iter_objects()] == [info.digest]


def test_corruption_on_s3_is_detected_and_quarantined(s3_url: str) -> None:
    store = open_store(s3_url)
    info = store.put_value(list(range(100)))
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{store.object_path(info.digest)}", Body=b"[1]")
    fresh = open_store(s3_url)
    with pytest.raises(CorruptObjectError):
        fresh.get_value(info.digest)
    assert not fresh.exists(info.digest)
    assert any(name.startswith(info.digest) for name in fresh.listdir("quarantine"))


def test_documents_written_by_another_process_are_seen_after_a_listing(s3_url: str) -> None:
    """A launcher polls step records while SageMaker's containers write them: no stale listing may hide one."""
    store = open_store(s3_url)
    store.put_json("runs/r1/steps/a.json", {"step": "a"})
    assert store.listdir("runs/r1/steps") == ["a.json"]
    assert not store.has("runs/r1/steps/b.json")
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/runs/r1/steps/b.json", Body=b'{"step": "b"}')
    assert store.listdir("runs/r1/steps") == ["a.json", "b.json"]
    assert store.has("runs/r1/steps/b.json")
    assert store.get_json("runs/r1/steps/b.json") == {"step": "b"}


def test_runs_and_cache_entries_on_s3_with_the_local_backend(s3_url: str) -> None:
    store = open_store(s3_url)
    first = run_on(LocalBackend(), sm_pipelines.required, store, x=3)
    assert first.status == "succeeded" and first.output("add") == 12
    key = first.steps["square"].key
    assert key is not None and lookup(store, key) is not None
    loaded = Run.load(open_store(s3_url), first.id)
    assert loaded.status == "succeeded" and loaded.output("add") == 12
    second = run_on(LocalBackend(), sm_pipelines.required, open_store(s3_url), x=3, limit=1)
    assert second.steps["square"].cached and not second.steps["clip"].cached
    assert second.output("add") == 10


def test_bucket_listing_shows_the_layout(s3_url: str) -> None:
    store = open_store(s3_url)
    run = run_on(LocalBackend(), sm_pipelines.required, store, x=2)
    prefix = s3_url.split(f"{BUCKET}/", 1)[1]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
    tops = {k[len(prefix) + 1:].split("/", 1)[0] for k in keys}
    assert {"objects", "cache", "runs", "pipelines"} <= tops
    assert f"{prefix}/runs/{run.id}/run.json" in keys
