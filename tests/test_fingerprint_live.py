"""Long-lived processes: an edit made in the same process (a notebook cell, a REPL) is never a stale cache hit.

The fingerprint memo is checked against what it covers on every use: a step's
``__code__``, the globals and module attributes it read, its closures and
defaults, the classes it reached and its mutable constants. Each case below
runs a pipeline, makes one edit in the same process, and runs it again; the
second run must recompute and give the new result. Then the same in a real
Jupyter kernel, where a later cell redefines a helper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

HELPERS = """
FACTOR = 3


def triple(x):
    return x * FACTOR
"""

SCRIPT = r"""
import json
import sys

import mlpipe as mp
import helpers

SCALE = 2
WEIGHTS = {"a": 1}


def helper(x):
    return x + 1


class Scaler:
    def apply(self, x):
        return x * 2


def make_step(k):
    def closure_step(x: int) -> int:
        return x * k
    return mp.step(name="closure_step")(closure_step)


@mp.step
def by_scale(x: int) -> int:
    return x * SCALE


@mp.step
def by_helper(x: int) -> int:
    return helper(x)


@mp.step
def by_class(x: int) -> int:
    return Scaler().apply(x)


@mp.step
def by_module(x: int) -> int:
    return helpers.triple(x)


@mp.step
def by_weights(x: int) -> int:
    return x * WEIGHTS["a"]


@mp.step
def by_code(x: int) -> int:
    return x + 1


def _other(x: int) -> int:
    return x + 1000


def pipeline_of(step):
    @mp.pipeline(name=step.name)
    def p(x: int = 5) -> int:
        return step(x)
    return p


def twice(step, edit):
    pipe = pipeline_of(step)
    first = pipe.run()
    again = pipe.run()  # nothing changed: a hit
    edit()
    after = pipe.run()
    return {
        "first": first.output(step.name),
        "again_cached": again.steps[step.name].cached,
        "after": after.output(step.name),
        "after_cached": after.steps[step.name].cached,
    }


def set_scale():
    global SCALE
    SCALE = 100


def redefine_helper():
    global helper

    def helper(x):
        return x + 50


def edit_class():
    Scaler.apply = lambda self, x: x * 7


def edit_module_constant():
    helpers.FACTOR = 10


def edit_weights():
    WEIGHTS["a"] = 4


def swap_code():
    by_code.fn.__code__ = _other.__code__


@mp.step
def by_reloaded(x: int) -> int:
    return helpers.triple(x) + 1


def edit_file_and_reload():
    import importlib, pathlib

    path = pathlib.Path(helpers.__file__)
    path.write_text(path.read_text().replace("x * FACTOR", "x * FACTOR * 2") + "\n# edited\n")
    importlib.reload(helpers)


N = 3


@mp.step
def count(n: int) -> int:
    return n


@mp.pipeline
def passes_constant() -> int:
    return count(N)


def set_n():
    global N
    N = 30


def twice_pipeline(pipe, step_name, edit):
    first = pipe.run()
    again = pipe.run()
    edit()
    after = pipe.run()
    return {
        "first": first.output(step_name),
        "again_cached": again.steps[step_name].cached,
        "after": after.output(step_name),
        "after_cached": after.steps[step_name].cached,
    }


cell = {"k": 2}
closure_step = make_step(2)


def edit_closure():
    closure_step.fn.__closure__[0].cell_contents = 9


results = {
    "module constant in __main__ (SCALE)": twice(by_scale, set_scale),
    "helper redefined": twice(by_helper, redefine_helper),
    "class body edited": twice(by_class, edit_class),
    "constant of another module": twice(by_module, edit_module_constant),
    "mutable constant edited in place": twice(by_weights, edit_weights),
    "function __code__ replaced": twice(by_code, swap_code),
    "closure variable rebound": twice(closure_step, edit_closure),
    "module edited on disk and reloaded": twice(by_reloaded, edit_file_and_reload),
    "constant the pipeline passes to a step": twice_pipeline(passes_constant, "count", set_n),
}
print(json.dumps(results))
"""

EXPECTED = {
    "module constant in __main__ (SCALE)": (10, 500),
    "helper redefined": (6, 55),
    "class body edited": (10, 35),
    "constant of another module": (15, 50),
    "mutable constant edited in place": (5, 20),
    "function __code__ replaced": (6, 1005),
    "closure variable rebound": (10, 45),
    "module edited on disk and reloaded": (51, 31),  # the reload resets FACTOR to 3
    "constant the pipeline passes to a step": (3, 30),
}


@pytest.fixture(scope="module")
def script_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("live")
    (work / "helpers.py").write_text(HELPERS)
    (work / "script.py").write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, "script.py"], cwd=work, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_an_edit_in_the_same_process_recomputes(script_results: dict[str, Any], case: str) -> None:
    result = script_results[case]
    before, after = EXPECTED[case]
    assert result["first"] == before
    assert result["again_cached"] is True, "an unchanged step must stay a hit"
    assert result["after_cached"] is False, f"{case}: the edit was served from the cache"
    assert result["after"] == after


NOTEBOOK_CELLS = [
    "import mlpipe as mp",
    "def helper(x):\n    return x + 1",
    textwrap.dedent(
        """
        @mp.step
        def apply(x: int) -> int:
            return helper(x)


        @mp.pipeline
        def nb(x: int = 5) -> int:
            return apply(x)
        """
    ),
    "r1 = nb.run()\nprint('first', r1.output('apply'), r1.steps['apply'].cached)",
    "r2 = nb.run()\nprint('again', r2.output('apply'), r2.steps['apply'].cached)",
    "def helper(x):\n    return x * 100",
    "r3 = nb.run()\nprint('after', r3.output('apply'), r3.steps['apply'].cached)",
    "SCALE = 2\n\n@mp.step\ndef scaled(x: int) -> int:\n    return x * SCALE\n\n"
    "@mp.pipeline\ndef nb2(x: int = 5) -> int:\n    return scaled(x)",
    "print('scale2', nb2.run().output('scaled'))",
    "SCALE = 100",
    "r4 = nb2.run()\nprint('scale100', r4.output('scaled'), r4.steps['scaled'].cached)",
]


@pytest.mark.slow
def test_a_notebook_that_redefines_a_helper_recomputes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    printed = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":  # not libraries' warnings
                printed.extend(output["text"].strip().splitlines())
    assert printed == [
        "first 6 False",
        "again 6 True",
        "after 500 False",
        "scale2 10",
        "scale100 500 False",
    ]
