"""The import guardrails: imports point down the layer order, never up; no import circles; plugins use the facade.

Every ``import`` counts, lazy ones inside functions included (they are still
a dependency); imports under ``if TYPE_CHECKING:`` do not (they never run).
Layers, lowest first::

    ground ← definition ← compiler/storage ← execution ← contract ← drivers ← surfaces ← plugins

A module may import its own layer or any layer below. A new module not listed
here is a surface (it may import anything in the core, and nothing in the core
may import it); put it lower in ``LAYERS`` when core code needs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ORDER = ["ground", "definition", "compiler/storage", "execution", "contract", "drivers", "surfaces", "plugins"]

LAYERS = {
    "ground": [
        "mlpipe._version",
        "mlpipe.errors",
        "mlpipe.hashing",
        "mlpipe.typecheck",
        "mlpipe.ir",
        "mlpipe.config",
        "mlpipe.progress",
        "mlpipe.plugins",
        "mlpipe.provenance",
        "mlpipe.files",
        "mlpipe.trust",
        "mlpipe.layout",
    ],
    "definition": ["mlpipe.trace", "mlpipe.step", "mlpipe.fingerprint"],
    "compiler/storage": [
        "mlpipe.graphview",
        "mlpipe.graph",
        "mlpipe.code",
        "mlpipe.materializers",
        "mlpipe.commit",
        "mlpipe.store",
        "mlpipe.metadata",
        "mlpipe.cache",
        "mlpipe.ledger",
        "mlpipe.records",
        "mlpipe.staging",
    ],
    "execution": ["mlpipe.executor", "mlpipe.mapping", "mlpipe.tracking", "mlpipe.run", "mlpipe.runtime"],
    "contract": ["mlpipe.handles", "mlpipe.backend"],
    "drivers": ["mlpipe.local", "mlpipe.launch", "mlpipe.planning"],
    "plugins": ["mlpipe.extend"],
}

#: What a plugin distribution may import from the core (besides ``mlpipe`` itself, the facade).
PLUGIN_API = {"mlpipe", "mlpipe.extend", "mlpipe.errors", "mlpipe.ir"}


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules ``path`` imports at run time (module level or inside functions), by dotted name."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(sub) for sub in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def _layer(module: str) -> str:
    if module == "mlpipe" or module == "mlpipe.__main__":
        return "surfaces"
    for layer, modules in LAYERS.items():
        if module in modules:
            return layer
    return "surfaces"


CORE = {_module_name(p, ROOT): p for p in (ROOT / "mlpipe").rglob("*.py")}
PLUGIN_FILES = sorted(ROOT.glob("backends/*/src/*/**/*.py"))


def test_every_listed_module_exists() -> None:
    listed = {m for modules in LAYERS.values() for m in modules}
    assert listed <= set(CORE), f"LAYERS names modules that are gone: {sorted(listed - set(CORE))}"


@pytest.mark.parametrize("module", sorted(CORE))
def test_imports_point_down_the_layers(module: str) -> None:
    rank = ORDER.index(_layer(module))
    upward = [
        f"{target} ({_layer(target)})"
        for target in sorted(_imports(CORE[module], set(CORE)))
        if target in CORE and target != module and ORDER.index(_layer(target)) > rank
    ]
    assert not upward, (
        f"{module} ({_layer(module)}) imports up the layer order: {', '.join(upward)}. Move the shared code down, "
        "or pass it in (see tests/test_layers.py)"
    )


def test_no_import_circles() -> None:
    import networkx as nx

    graph = nx.DiGraph()
    for module, path in CORE.items():
        for target in _imports(path, set(CORE)):
            if target in CORE and target != module:
                graph.add_edge(module, target)
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, f"import circles among mlpipe modules: {circles}"


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_facade(path: Path) -> None:
    core = [m for m in _imports(path, set(CORE)) if m == "mlpipe" or m.startswith("mlpipe.")]
    outside = sorted(set(core) - PLUGIN_API)
    assert not outside, (
        f"{path.relative_to(ROOT)} imports {outside} from the core; plugins import only {sorted(PLUGIN_API)} "
        "(add what is missing to mlpipe/extend.py)"
    )
