"""mlpipe.fingerprint: cosmetic edits keep a step's fingerprint, semantic edits of any reached user code change it.

Each comparison writes two versions of a small project into two temporary
directories and imports each fresh under the same (unique) module names, so
the fingerprints differ only by the edit.
"""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlpipe.fingerprint import Fingerprint, clear_memo, fingerprint, is_user_module

_counter = itertools.count()


class Project:
    """Loads versions of a tiny multi-module project and fingerprints its ``step``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = f"fp{uuid.uuid4().hex[:8]}"

    def name(self, module: str) -> str:
        return f"{module}_{self.tag}"

    def load(self, modules: dict[str, str], attr: str = "step") -> Fingerprint:
        directory = self.root / f"v{next(_counter)}"
        directory.mkdir(parents=True)
        for module, source in modules.items():
            text = textwrap.dedent(source).replace("{TAG}", self.tag)
            (directory / f"{self.name(module)}.py").write_text(text)
        for module in modules:
            sys.modules.pop(self.name(module), None)
        sys.path.insert(0, str(directory))
        try:
            clear_memo()
            importlib.invalidate_caches()
            main = importlib.import_module(self.name("main"))
            return fingerprint(getattr(main, attr))
        finally:
            sys.path.remove(str(directory))
            for module in modules:
                sys.modules.pop(self.name(module), None)

    def compare(self, before: dict[str, str], after: dict[str, str]) -> tuple[bool, set[str]]:
        """(same digest?, the manifest labels that differ), with module tags removed from labels."""
        a, b = self.load(before), self.load(after)
        changed = {k for k in set(a.manifest) | set(b.manifest) if a.manifest.get(k) != b.manifest.get(k)}
        return a.digest == b.digest, {label.replace(f"_{self.tag}", "") for label in changed}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


BASE = '''
import mlpipe as mp
import helpers_{TAG} as helpers
from helpers_{TAG} import scale

THRESHOLD = 3
WEIGHTS = {"a": 1.0, "b": 2.0}


def deep(x):
    """Two calls below the step."""
    return x + THRESHOLD


def shallow(x):
    return deep(x) * 2


class Model:
    factor = 2

    def predict(self, x):
        return self._inner(x) * self.factor

    def _inner(self, x):
        return x - 1

    @staticmethod
    def build():
        return Model()


def make_adder(k):
    def add(x):
        return x + k
    return add


ADD = make_adder(5)
SQUARE = lambda x: x * x  # noqa: E731


@mp.step(retries=1)
def step(x: int, offset: int = 7) -> float:
    """Compute something."""
    # a comment
    y = shallow(x) + Model.build().predict(x) + ADD(x) + SQUARE(x)
    return helpers.clean(y) + scale(y) + WEIGHTS["a"] + offset
'''

HELPERS = '''
import math

RATE = 0.5


def _private(v):
    return v * RATE


def clean(v):
    return math.floor(_private(v))


def scale(v):
    return v * 10
'''


def _both(main: str = BASE, helpers: str = HELPERS) -> dict[str, str]:
    return {"main": main, "helpers": helpers}


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# -- cosmetic edits keep the fingerprint ------------------------------------------------------

COSMETIC = {
    "docstring": ('"""Compute something."""', '"""Compute something else entirely, with more words."""'),
    "helper docstring": ('"""Two calls below the step."""', '"""Reworded."""'),
    "comment": ("# a comment", "# another comment\n    # and one more"),
    "blank lines": ("\n\nclass Model:", "\n\n\n\n# a section\n\nclass Model:"),
    "formatting": ("y = shallow(x) + Model.build().predict(x) + ADD(x) + SQUARE(x)",
                   "y = (\n        shallow(x)\n        + Model.build().predict(x)\n"
                   "        + ADD(x)\n        + SQUARE(x)\n    )"),
    "quotes": ('WEIGHTS["a"]', "WEIGHTS['a']"),
    "decorator options": ("@mp.step(retries=1)", "@mp.step(retries=3, timeout='1h')"),
    "unrelated function added": ("\n\nclass Model:", "\n\ndef unused():\n    return 42\n\n\nclass Model:"),
    "unrelated constant changed": ("THRESHOLD = 3\n", "THRESHOLD = 3\nUNUSED = 99\n"),
    "class docstring": ("class Model:\n", 'class Model:\n    """A model."""\n\n'),
}


@pytest.mark.parametrize("edit", sorted(COSMETIC))
def test_cosmetic_edits_keep_the_fingerprint(project: Project, edit: str) -> None:
    old, new = COSMETIC[edit]
    same, changed = project.compare(_both(), _both(main=_edit(BASE, old, new)))
    assert same, changed


def test_cosmetic_edits_in_an_imported_module(project: Project) -> None:
    edited = _edit(HELPERS, "def clean(v):\n", 'def clean(v):\n    """Clean."""\n    # floor it\n')
    same, changed = project.compare(_both(), _both(helpers="# header comment\n" + edited))
    assert same, changed


# -- semantic edits change it, naming what changed ---------------------------------------------

SEMANTIC = {
    "the step body": ("return helpers.clean(y)", "return helpers.clean(y + 1)", "function main.step"),
    "a helper two calls deep": ("return x + THRESHOLD", "return x - THRESHOLD", "function main.deep"),
    "a module constant": ("THRESHOLD = 3", "THRESHOLD = 4", "constant main.THRESHOLD"),
    "a dict constant": ('"b": 2.0', '"b": 2.5', "constant main.WEIGHTS"),
    "a method": ("return x - 1", "return x - 2", "function main.Model._inner"),
    "a class attribute": ("factor = 2", "factor = 3", "class main.Model"),
    "a staticmethod": ("return Model()", "return Model() if True else None", "function main.Model.build"),
    "a closure variable": ("make_adder(5)", "make_adder(6)", "closure main.make_adder.<locals>.add.k"),
    "a closure body": ("return x + k", "return x + k + 1", "function main.make_adder.<locals>.add"),
    "a lambda": ("lambda x: x * x", "lambda x: x * x * x", "function main.<lambda>"),
    "a default argument": ("offset: int = 7", "offset: int = 8", "function main.step default 0"),
}


@pytest.mark.parametrize("edit", sorted(SEMANTIC))
def test_semantic_edits_change_the_fingerprint(project: Project, edit: str) -> None:
    old, new, label = SEMANTIC[edit]
    same, changed = project.compare(_both(), _both(main=_edit(BASE, old, new)))
    assert not same
    assert label in changed, changed


@pytest.mark.parametrize(
    ("old", "new", "label"),
    [
        ("return v * 10", "return v * 11", "function helpers.scale"),  # from helpers import scale
        ("return math.floor(_private(v))", "return math.ceil(_private(v))", "function helpers.clean"),  # helpers.clean
        ("return v * RATE", "return v / RATE", "function helpers._private"),  # reached through clean
        ("RATE = 0.5", "RATE = 0.25", "constant helpers.RATE"),
    ],
)
def test_edits_in_an_imported_local_module_change_it(project: Project, old: str, new: str, label: str) -> None:
    same, changed = project.compare(_both(), _both(helpers=_edit(HELPERS, old, new)))
    assert not same
    assert label in changed, changed


LOCAL_IMPORTS = """
def step(x: int) -> int:
    import json

    import pydantic

    import helpers_{TAG}
    from helpers_{TAG} import scale

    return helpers_{TAG}.clean(x) + scale(x) + len(json.dumps(pydantic.VERSION))
"""


@pytest.mark.parametrize(
    ("old", "new", "label"),
    [
        ("return v * 10", "return v * 11", "function helpers.scale"),
        ("return v * RATE", "return v / RATE", "function helpers._private"),
    ],
)
def test_modules_imported_inside_the_step_body_are_followed(project: Project, old: str, new: str, label: str) -> None:
    same, changed = project.compare({"main": LOCAL_IMPORTS, "helpers": HELPERS},
                                    {"main": LOCAL_IMPORTS, "helpers": _edit(HELPERS, old, new)})
    assert not same
    assert label in changed, changed
    fp = project.load({"main": LOCAL_IMPORTS, "helpers": HELPERS})
    assert fp.packages == frozenset({"pydantic"})  # recorded with its version; json is the standard library


TABLES = """
import functools


def h1(x):
    return x + 1


def h2(x):
    return x * 2


class Config:
    def __init__(self, k):
        self.k = k


DISPATCH = {"a": h1, "b": h2}
CHAIN = (h1, h2)
CONFIG = Config(3)
PARTIAL = functools.partial(h2, 5)


def step(x: int) -> int:
    return DISPATCH["a"](x) + CHAIN[1](x) + CONFIG.k + PARTIAL()
"""


def test_containers_of_functions_are_stable_across_loads(project: Project) -> None:
    # repr() of a function holds its address, which differs in every process: it must not reach the hash
    same, changed = project.compare({"main": TABLES}, {"main": TABLES})
    assert same, changed


@pytest.mark.parametrize(
    ("old", "new", "label"),
    [
        ("return x + 1", "return x + 2", "function main.h1"),  # reached only through DISPATCH and CHAIN
        ("return x * 2", "return x * 3", "function main.h2"),  # and through the partial
        ("Config(3)", "Config(4)", "constant main.CONFIG"),  # an instance's state
        ('"b": h2', '"b": h1', "constant main.DISPATCH"),
        ("partial(h2, 5)", "partial(h2, 6)", "constant main.PARTIAL"),
    ],
)
def test_functions_and_state_inside_constants_are_followed(project: Project, old: str, new: str, label: str) -> None:
    same, changed = project.compare({"main": TABLES}, {"main": _edit(TABLES, old, new)})
    assert not same
    assert label in changed, changed


def test_the_manifest_names_every_reached_object(project: Project) -> None:
    fp = project.load(_both())
    labels = {label.replace(f"_{project.tag}", "") for label in fp.manifest}
    assert {
        "function main.step", "function main.shallow", "function main.deep", "constant main.THRESHOLD",
        "constant main.WEIGHTS", "class main.Model", "function main.Model.predict", "function main.Model._inner",
        "function main.make_adder.<locals>.add", "closure main.make_adder.<locals>.add.k", "function main.<lambda>",
        "function helpers.clean", "function helpers._private", "constant helpers.RATE", "function helpers.scale",
        "function main.step default 0",
    } <= labels
    # installed libraries and the standard library are not hashed, only named
    assert not any("mlpipe" in label.split(" ")[1].split(".")[0] for label in labels)
    assert not any(label.startswith("function math.") for label in labels)
    assert "math" not in fp.packages
    assert len(fp.digest) == 64


def test_installed_packages_reached_are_named(project: Project) -> None:
    fp = project.load({"main": """
        import pydantic
        from pydantic import BaseModel

        def step(x: int) -> int:
            return len(pydantic.VERSION) + len(BaseModel.model_fields) + x
    """})
    assert fp.packages == frozenset({"pydantic"})
    assert [label.split(" ")[0] for label in fp.manifest] == ["function"]


def test_installed_library_code_is_not_hashed() -> None:
    import json as stdlib_json

    import pydantic

    assert not is_user_module("json")
    assert not is_user_module(pydantic.__name__)
    assert not is_user_module("mlpipe.step")
    assert is_user_module("__main__")
    assert not is_user_module(None)
    assert stdlib_json  # used


def test_memo_and_clear(project: Project) -> None:
    fp = project.load(_both())
    assert isinstance(fp, Fingerprint)

    def local(x: int) -> int:
        return x

    assert fingerprint(local) is fingerprint(local)
    clear_memo()
    assert fingerprint(local).digest == fingerprint(local).digest


# -- property-style: hypothesis generates the edits ------------------------------------------------

TEMPLATE = '''
LIMIT = {limit}


def helper(x):
    {helper_doc}return x * {factor} + LIMIT{comment}


def step(x: int) -> int:
{blank}    return helper(x) + {offset}
'''


@st.composite
def cosmetic_variants(draw: st.DrawFn) -> dict[str, str]:
    text = st.text(alphabet="abcdefghij klmnop", min_size=0, max_size=20)
    return {
        "helper_doc": draw(st.sampled_from(["", '"""Doc."""\n    ', "# note\n    "]))
        .replace("Doc", draw(text).strip() or "Doc"),
        "comment": draw(st.sampled_from(["", "  # trailing", "  # " + draw(text)])),
        "blank": draw(st.sampled_from(["", "\n", "    # leading comment\n"])),
    }


PLAIN = {"helper_doc": "", "comment": "", "blank": ""}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.tuples(st.integers(-5, 50), st.integers(-5, 50), st.integers(-5, 50)),
    cosmetic=cosmetic_variants(),
)
def test_property_cosmetic_variants_keep_the_fingerprint(
    tmp_path_factory: pytest.TempPathFactory, values: tuple[int, int, int], cosmetic: dict[str, str]
) -> None:
    limit, factor, offset = values
    project = Project(tmp_path_factory.mktemp("prop"))
    plain = TEMPLATE.format(limit=limit, factor=factor, offset=offset, **PLAIN)
    dressed = TEMPLATE.format(limit=limit, factor=factor, offset=offset, **cosmetic)
    same, changed = project.compare({"main": plain}, {"main": dressed})
    assert same, changed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.tuples(st.integers(-5, 50), st.integers(-5, 50), st.integers(-5, 50)),
    after=st.tuples(st.integers(-5, 50), st.integers(-5, 50), st.integers(-5, 50)),
    cosmetic=cosmetic_variants(),
)
def test_property_semantic_changes_change_the_fingerprint(
    tmp_path_factory: pytest.TempPathFactory,
    before: tuple[int, int, int],
    after: tuple[int, int, int],
    cosmetic: dict[str, str],
) -> None:
    project = Project(tmp_path_factory.mktemp("prop"))
    a = TEMPLATE.format(limit=before[0], factor=before[1], offset=before[2], **PLAIN)
    b = TEMPLATE.format(limit=after[0], factor=after[1], offset=after[2], **cosmetic)
    same, changed = project.compare({"main": a}, {"main": b})
    assert same == (before == after), changed
    expected = set()
    if before[0] != after[0]:
        expected.add("constant main.LIMIT")
    if before[1] != after[1]:
        expected.add("function main.helper")
    if before[2] != after[2]:
        expected.add("function main.step")
    assert changed == expected


# -- functions defined in __main__ ---------------------------------------------------------------

MAIN_SCRIPT = '''
import json
import sys

from mlpipe.fingerprint import fingerprint

OFFSET = {offset}


def helper(x):
    # {comment}
    return x + OFFSET * {factor}


def step(x: int) -> int:
    return helper(x)


print(json.dumps({{"digest": fingerprint(step).digest, "manifest": fingerprint(step).manifest}}))
'''


def _fingerprint_main(tmp_path: Path, **values: object) -> dict[str, object]:
    script = tmp_path / f"script_{next(_counter)}.py"
    script.write_text(MAIN_SCRIPT.format(**values))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, cwd=tmp_path)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_functions_in_main(tmp_path: Path) -> None:
    base = _fingerprint_main(tmp_path, offset=1, factor=2, comment="one")
    assert "function __main__.helper" in base["manifest"]  # type: ignore[operator]
    assert "constant __main__.OFFSET" in base["manifest"]  # type: ignore[operator]
    assert _fingerprint_main(tmp_path, offset=1, factor=2, comment="two")["digest"] == base["digest"]
    assert _fingerprint_main(tmp_path, offset=1, factor=3, comment="one")["digest"] != base["digest"]
    assert _fingerprint_main(tmp_path, offset=2, factor=2, comment="one")["digest"] != base["digest"]


def _notebook_cell(source: str, cell: int) -> dict[str, object]:
    """Run ``source`` the way IPython runs a cell: compiled under a pseudo file name kept in linecache."""
    import linecache
    import types

    filename = f"<ipython-input-{cell}-{uuid.uuid4().hex[:8]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType("__main__")  # a notebook's namespace; not registered in sys.modules
    namespace = module.__dict__
    exec(compile(source, filename, "exec"), namespace)
    return namespace


NOTEBOOK = '''
LIMIT = {limit}


class Scaler:
    def scale(self, x):
        return x * {factor}


def helper(x):
    # {comment}
    return Scaler().scale(x) + LIMIT


def step(x: int) -> int:
    return helper(x)
'''


def test_functions_defined_in_notebook_cells() -> None:
    def fp(**values: object) -> Fingerprint:
        namespace = _notebook_cell(NOTEBOOK.format(**values), next(_counter))
        clear_memo()
        return fingerprint(namespace["step"])

    base = fp(limit=1, factor=2, comment="a")
    assert {"function __main__.step", "function __main__.helper", "class __main__.Scaler",
            "function __main__.Scaler.scale", "constant __main__.LIMIT"} <= set(base.manifest)
    assert fp(limit=1, factor=2, comment="another comment").digest == base.digest
    assert fp(limit=2, factor=2, comment="a").digest != base.digest
    changed = fp(limit=1, factor=3, comment="a")
    assert changed.manifest["function __main__.Scaler.scale"] != base.manifest["function __main__.Scaler.scale"]


SHARED_MODULE = """
import helpers_{TAG} as helpers


def inner(x):
    return helpers.scale(x)


def step(x: int) -> int:
    return helpers.clean(x) + inner(x)
"""


def test_a_module_used_by_several_functions_is_followed_for_each_of_their_attributes(project: Project) -> None:
    # step reaches helpers.clean and inner reaches helpers.scale: both must be hashed
    same, changed = project.compare({"main": SHARED_MODULE, "helpers": HELPERS},
                                    {"main": SHARED_MODULE, "helpers": _edit(HELPERS, "v * 10", "v * 12")})
    assert not same
    assert changed == {"function helpers.scale"}


LIBRARY_CONSTANT = """
import re
WORD = re.compile(r"[a-z]+")

def step(text: str) -> list:
    return WORD.findall(text)
"""


def test_library_objects_held_in_constants_are_hashed_by_their_state(project: Project) -> None:
    same, changed = project.compare({"main": LIBRARY_CONSTANT},
                                    {"main": LIBRARY_CONSTANT.replace("[a-z]+", "[a-z0-9]+")})
    assert not same
    assert changed == {"constant main.WORD"}
    fp = project.load({"main": LIBRARY_CONSTANT})
    assert fp.manifest[f"constant main_{project.tag}.WORD"].startswith("pickle ")
    assert fp.previews[f"constant main_{project.tag}.WORD"] == "re.compile('[a-z]+')"


FRAMES = """
import numpy as np
import pandas as pd

LOOKUP = pd.DataFrame({{"k": ["a", "b"], "v": [1.0, {v}]}})
SERIES = pd.Series([1, 2, 3], name="s")
ARRAY = np.arange(4) * {a}
TABLES = {{"lookup": LOOKUP}}


def step(x: int) -> float:
    return float(LOOKUP["v"].sum() + SERIES.sum() + ARRAY.sum() + len(TABLES)) + x
"""


def test_data_constants_are_hashed_by_content(project: Project) -> None:
    base = {"main": FRAMES.format(v=2.0, a=1)}
    same, changed = project.compare(base, base)
    assert same, changed
    same, changed = project.compare(base, {"main": FRAMES.format(v=3.0, a=1)})
    assert not same and {"constant main.LOOKUP", "constant main.TABLES"} <= changed
    same, changed = project.compare(base, {"main": FRAMES.format(v=2.0, a=2)})
    assert changed == {"constant main.ARRAY"}


def test_libraries_imported_inside_a_step_are_not_imported_by_fingerprinting(tmp_path: Path) -> None:
    (tmp_path / "lazy_step.py").write_text(
        "def step(x: int) -> int:\n    import sklearn.ensemble\n    return x\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import lazy_step\n"
        "from mlpipe.fingerprint import fingerprint\n"
        "fp = fingerprint(lazy_step.step)\n"
        "print(sorted(fp.packages), 'sklearn' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['sklearn'] False"


_AWKWARD = '''
import mlpipe as mp


@mp.step
def plain(x: int) -> int:
    return x + 1


@mp.step(
    retries=1,
)
def signature_on_lines(
    x: int,
    y: int = 2,
) -> int:
    return x * y


def text_in_column_zero() -> str:
    return """
not code: this line starts in column 0
def neither(): ...
"""  # the definition goes on past those lines


# a comment between definitions
def brackets_in_column_zero() -> list[int]:
    return [
1, 2,
]


def step() -> int:
    return plain(1) + signature_on_lines(1) + len(text_in_column_zero()) + sum(brackets_in_column_zero())
'''


def test_a_module_level_function_parsed_alone_hashes_as_in_the_whole_module(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fingerprints parse a module-level function's own lines (fast for modules of thousands of steps);
    # where a line in column 0 continues a string or a bracket, that parse fails and the whole module is used.
    import mlpipe.fingerprint as fp

    parsed_alone: dict[str, bool] = {}
    real = fp._top_level_node

    def spy(obj: object, *args: object) -> object:
        node = real(obj, *args)  # type: ignore[arg-type]
        parsed_alone[obj.__name__] = node is not None  # type: ignore[attr-defined]
        return node

    monkeypatch.setattr(fp, "_top_level_node", spy)
    alone = project.load({"main": _AWKWARD})
    assert parsed_alone == {"step": True, "plain": True, "signature_on_lines": True,
                            "text_in_column_zero": False, "brackets_in_column_zero": False}
    monkeypatch.setattr(fp, "_top_level_node", lambda *args: None)
    whole = project.load({"main": _AWKWARD})
    assert alone.manifest == whole.manifest and alone.digest == whole.digest
    monkeypatch.undo()
    edited = project.load({"main": _AWKWARD.replace("def neither(): ...", "def neither(): pass")})
    changed = {k for k in edited.manifest if edited.manifest[k] != alone.manifest.get(k)}
    assert {k.replace(f"_{project.tag}", "") for k in changed} == {"function main.text_in_column_zero"}
