"""mp.File / mp.Directory: a step that reads external data is recomputed when the data changes.

Local files and directories by content, S3 objects by ETag and version id
(moto's server on 127.0.0.1: an emulator, no real S3 here), GCS objects by
generation (gcp-storage-emulator on 127.0.0.1, as the Vertex tests use).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlpipe as mp
from mlpipe.explain import explain
from mlpipe.store import open_store


@mp.step
def count_rows(path: mp.File) -> int:
    import fsspec

    with fsspec.open(path, "r") as f:
        return len(f.read().strip().splitlines()) - 1  # minus the header


@mp.step
def count_files(folder: mp.Directory) -> int:
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    return len(fs.find(root))


@mp.pipeline
def rows(path: mp.File = mp.File("data/companies.csv")) -> int:
    return count_rows(path)


@mp.pipeline
def files(folder: mp.Directory = mp.Directory("data/parts")) -> int:
    return count_files(folder)


def _twice_then_edit(pipe: mp.Pipeline, step: str, edit: object, **params: object) -> tuple[mp.Run, mp.Run, mp.Run]:
    first = pipe.run(**params)
    again = pipe.run(**params)
    edit()  # type: ignore[operator]
    after = pipe.run(**params)
    for run in (first, again, after):
        assert run.status == "succeeded", {n: s.error for n, s in run.steps.items()}
    assert not first.steps[step].cached
    assert again.steps[step].cached, "unchanged data must stay a hit"
    assert not after.steps[step].cached, "changed data was served from the cache"
    return first, again, after


def test_a_local_file_that_changes_is_an_input_that_changed() -> None:
    data = Path("data")
    data.mkdir()
    (data / "companies.csv").write_text("name\nacme\nglobex\n")
    first, _again, after = _twice_then_edit(
        rows, "count_rows", lambda: (data / "companies.csv").write_text("name\nacme\nglobex\ninitech\n")
    )
    assert (first.output("count_rows"), after.output("count_rows")) == (2, 3)
    text = explain(open_store(".mlpipe"), after.id, "count_rows")
    assert "file data/companies.csv changed (xxh3 " in text, text
    # the same content again: a hit on the first entry
    (data / "companies.csv").write_text("name\nacme\nglobex\n")
    assert rows.run().steps["count_rows"].cached


def test_another_path_is_a_parameter_change() -> None:
    Path("a.csv").write_text("x\n1\n")
    Path("b.csv").write_text("x\n1\n")
    rows.run(path="a.csv")
    run = rows.run(path="b.csv")
    assert not run.steps["count_rows"].cached
    assert "file parameter 'path': 'a.csv' → 'b.csv'" in explain(open_store(".mlpipe"), run.id, "count_rows")


def test_a_file_added_to_a_directory_is_a_change() -> None:
    parts = Path("data/parts")
    parts.mkdir(parents=True)
    (parts / "1.csv").write_text("x\n")
    first, _again, after = _twice_then_edit(files, "count_files", lambda: (parts / "2.csv").write_text("y\n"))
    assert (first.output("count_files"), after.output("count_files")) == (1, 2)
    text = explain(open_store(".mlpipe"), after.id, "count_files")
    assert "directory data/parts changed (xxh3 " in text and "files 1 → 2" in text, text


def test_the_cli_runs_a_file_pipeline_and_explains_it(tmp_path: Path) -> None:
    Path("p.py").write_text(
        "import mlpipe as mp\n\n\n@mp.step\ndef size(path: mp.File) -> int:\n"
        "    return len(open(path).read())\n\n\n@mp.pipeline\ndef sized(path: mp.File = mp.File('in.txt')) -> int:\n"
        "    return size(path)\n"
    )
    Path("in.txt").write_text("abc")
    cli = [sys.executable, "-m", "mlpipe"]
    env = {**os.environ, "NO_COLOR": "1"}
    subprocess.run([*cli, "run", "p.py:sized"], check=True, capture_output=True, env=env, timeout=120)
    Path("in.txt").write_text("abcdef")
    out = subprocess.run([*cli, "run", "p.py:sized"], check=True, capture_output=True, text=True, env=env, timeout=120)
    assert "size.output = 6" in out.stdout
    run_id = re.search(r"run (\S+) succeeded", out.stdout + out.stderr).group(1)  # type: ignore[union-attr]
    explained = subprocess.run(
        [*cli, "cache", "explain", run_id, "size"], check=True, capture_output=True, text=True, env=env, timeout=120
    )
    assert "file in.txt changed" in explained.stdout


# -- object stores -------------------------------------------------------------------------------

BUCKET = "mlpipe-files"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    try:
        yield endpoint
    finally:
        server.stop()


def test_an_s3_object_that_changes_is_recomputed(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs")
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    key = f"{uuid.uuid4().hex[:8]}/companies.csv"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"name\nacme\n")
    url = f"s3://{BUCKET}/{key}"
    first, _again, after = _twice_then_edit(
        rows, "count_rows", lambda: s3.put_object(Bucket=BUCKET, Key=key, Body=b"name\nacme\nglobex\n"), path=url
    )
    assert (first.output("count_rows"), after.output("count_rows")) == (1, 2)
    text = explain(open_store(".mlpipe"), after.id, "count_rows")
    assert f"file {url} changed (etag " in text and "version_id " in text, text
    # the same bytes again: same ETag, but a new version of the object, so still a change
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"name\nacme\nglobex\n")
    assert not rows.run(path=url).steps["count_rows"].cached


@pytest.fixture(scope="module")
def gcs() -> Iterator[str]:
    pytest.importorskip("gcsfs")
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        server.stop()


def test_a_gcs_object_that_changes_is_recomputed(gcs: str) -> None:
    import fsspec

    url = f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}/companies.csv"

    def write(text: str) -> None:
        with fsspec.open(url, "w") as f:
            f.write(text)

    write("name\nacme\n")
    first, _again, after = _twice_then_edit(rows, "count_rows", lambda: write("name\nacme\nglobex\n"), path=url)
    assert (first.output("count_rows"), after.output("count_rows")) == (1, 2)
    text = explain(open_store(".mlpipe"), after.id, "count_rows")
    assert f"file {url} changed (generation " in text, text
