"""`mlpipe plan`: before anything is sent, which steps are cache hits and why the others will run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlpipe.cli import app
from mlpipe.planning import plan_run
from mlpipe.store import open_store
from mlpipe.testing import basic

FLOW = '''import mlpipe as mp


@mp.step
def load(n: int) -> list[int]:
    return list(range(n))


@mp.step
def total(values: list[int], scale: float = 1.0) -> float:
    return sum(values) * scale


@mp.step(cache=False)
def report(value: float) -> str:
    return f"total {value}"


@mp.pipeline(name="planned")
def flow(n: int = 4, scale: float = 1.0) -> str:
    return report(total(load(n), scale=scale))
'''


@pytest.fixture
def project() -> Path:
    Path("flow.py").write_text(FLOW)
    Path("mlpipe.toml").write_text(
        '[profiles.dev]\nbackend = "local"\nstore = ".mlpipe"\n\n'
        '[profiles.kfp]\nbackend = "kubeflow"\nstore = ".mlpipe"\nimage = "python:3.11-slim"\n'
        'options = { mode = "local" }\n'
    )
    return Path.cwd()


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_plan_before_any_run_names_the_first_computation(project: Path) -> None:
    code, out = invoke("plan", "flow.py:flow", "--profile", "kfp")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("plan of pipeline 'planned' on kubeflow") and "0 cache hits, 3 steps to run" in lines[0]
    assert "load    RUN  no earlier cache entry for step 'load' of pipeline 'planned': first computation" in out
    assert "total   RUN  upstream step 'load' will run, so its inputs are not known yet" in out
    assert "report  RUN  the step is declared with cache=False" in out
    assert not Path(".mlpipe/runs").exists()  # nothing was run or recorded


def test_plan_after_a_run_says_which_steps_hit_and_why_the_others_run(project: Path) -> None:
    assert invoke("run", "flow.py:flow", "--profile", "dev")[0] == 0
    code, out = invoke("plan", "flow.py:flow", "--profile", "kfp", "-p", "scale=2.0")
    assert code == 0, out
    assert "1 cache hit, 2 steps to run" in out
    assert "load    HIT  served from the cache entry written by run " in out
    assert "total   RUN  1 component of the cache key changed" in out
    assert "- parameter 'scale': 1.0 → 2.0" in out  # cache explain's wording for the difference
    assert "submit leaves the 1 hit(s) out of the kubeflow spec and starts 2 task(s)" in out

    code, out = invoke("plan", "flow.py:flow", "--profile", "dev", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["hits"] == ["load", "total"] and doc["run"] == ["report"]
    assert doc["backend"] == "local" and doc["pruned"] == [] and doc["tasks"] is None
    load = doc["steps"][0]
    assert load["verdict"] == "hit" and len(load["key"]) == 64 and load["outputs"]["output"]["digest"]
    assert doc["steps"][2] == {"step": "report", "verdict": "run", "reason": "the step is declared with cache=False",
                               "key": None}


def test_plan_keys_equal_the_keys_a_run_records() -> None:
    store = open_store(".mlpipe")
    from mlpipe.local import LocalBackend
    from mlpipe.testing import run_on

    run = run_on(LocalBackend(), basic, store, n=3)
    plan = plan_run(basic.ir, store, basic.validate_params({"n": 3}))
    assert plan.hits == tuple(run.steps)
    assert {s.step: s.key for s in plan.steps} == {name: s.record["key"] for name, s in run.steps.items()}
    fresh = plan_run(basic.ir, store, basic.validate_params({"n": 3}), cache=False)
    assert {s.reason for s in fresh.steps} == {"the run is started with --no-cache / cache=False"}


def test_fully_cached_plan_says_submit_starts_no_task(project: Path) -> None:
    Path("flow.py").write_text(FLOW.replace("@mp.step(cache=False)", "@mp.step"))
    assert invoke("run", "flow.py:flow", "--profile", "dev")[0] == 0
    code, out = invoke("plan", "flow.py:flow", "--profile", "kfp")
    assert code == 0, out
    assert "every step is a cache hit: submit sends nothing to kubeflow and starts no task" in out
    assert json.loads(invoke("plan", "flow.py:flow", "--profile", "kfp", "--json")[1])["tasks"] == 0


@pytest.mark.parametrize(("args", "code", "words"), [
    (["-p", "bogus=1"], 2, "pipeline 'planned' has no parameter 'bogus'"),
    (["-p", "n=abc"], 2, "expected int"),
    (["-p", "n"], 2, "-p expects key=value"),
    (["--profile", "nope"], 2, "profile 'nope' is not defined"),
])
def test_bad_input_is_one_line(project: Path, args: list[str], code: int, words: str) -> None:
    argv = ["plan", "flow.py:flow", *args] if "--profile" in args else ["plan", "flow.py:flow", "--profile", "kfp",
                                                                          *args]
    exit_code, out = invoke(*argv)
    assert exit_code == code, out
    assert words in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1


def test_missing_file_is_one_line(project: Path) -> None:
    exit_code, out = invoke("plan", "nope.py:flow", "--profile", "kfp")
    assert exit_code == 2 and "does not exist" in out and "Traceback" not in out
