"""Code fingerprints: a hash of a step's code and of all the user code it reaches.

The fingerprint of a function is built from its *normalised* source: the
abstract syntax tree without comments, docstrings, formatting or (for the
step itself) decorators, so cosmetic edits keep the fingerprint and semantic
edits change it. From the function it follows, transitively, every name it
uses that resolves to user code: helper functions, classes (their whole body,
methods included), module-level constants, functions reached through
``import helpers; helpers.clean(...)``, closure variables and default
arguments. Installed libraries and the standard library are not hashed; their
top-level package names are collected so the run metadata can record their
versions.

The result keeps a *manifest*, one hash per reached object
(``function pkg.mod.clean``, ``constant pkg.mod.THRESHOLD``), so that
``mlpipe cache explain`` can say exactly which one changed. Module sources are
parsed once per process and fingerprints are memoised per function object.

The memo never outlives what it covers: while walking, the fingerprint
records every binding it read (the function's ``__code__``, defaults and
closure cells, each global and module attribute it followed, each reached
class's members and bases) and keeps its mutable constants. A memoised
fingerprint is served only while every binding still holds the same object
and every mutable constant still hashes the same, so redefining a helper in a
notebook cell, rebinding a module constant, editing a dict in place or
reloading a module all give a fresh fingerprint. Checking costs a dictionary
lookup per binding, plus re-hashing the mutable constants. What steps change
while a run executes (a list they append to, a dict they memoise into) is the
run's own doing, not an edit: :func:`settle`, called when a run ends, takes the
new contents as the baseline.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import dis
import enum
import functools
import hashlib
import importlib.util
import linecache
import os
import pathlib
import pickle
import re
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mlpipe.hashing import canonical_json, digest_json

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["EXTERNAL", "Fingerprint", "external_system", "fingerprint", "is_user_module", "settle", "unchanged"]

EXTERNAL = "__mlpipe_external__"
"""Attribute naming the external system a library function acts on (see :func:`external_system`)."""


def external_system(system: str) -> Callable[[_F], _F]:
    """Mark a library function as acting on an external system (``"the MLflow model registry"``).

    A step whose code reaches a marked function gets a manifest entry
    ``external <module>.<name>``, and is not cached unless declared with
    ``cache=True``: its result depends on state the store cannot see.
    """

    def mark(fn: _F) -> _F:
        setattr(fn, EXTERNAL, system)
        return fn

    return mark


@dataclass(frozen=True)
class Fingerprint:
    """The code fingerprint of a step.

    Attributes:
        digest: SHA-256 over the manifest.
        manifest: One entry per reached user object: ``"function mod.qualname"``,
            ``"class mod.qualname"`` or ``"constant mod.NAME"`` to its hash.
        packages: Top-level names of the installed packages the code reaches.
        previews: Short readable values of the constants in the manifest (JSON
            values and library objects with a stable repr), so ``cache explain``
            can show what a constant changed from and to. Not part of the digest.
    """

    digest: str
    manifest: dict[str, str] = field(default_factory=dict)
    packages: frozenset[str] = frozenset()
    previews: dict[str, str] = field(default_factory=dict)


_lock = threading.RLock()
_memo: dict[int, tuple[Any, Fingerprint, _Bindings]] = {}
_user_modules: dict[str, bool] = {}
_module_index: dict[str, tuple[list[str], dict[str, list[ast.AST]]]] = {}
# (file, first line) -> (linecache's lines, the definition parsed alone): see _top_level_node.
_segments: dict[tuple[str, int], tuple[list[str], ast.AST]] = {}
_library_roots: tuple[str, ...] | None = None
_MAX_CONSTANT_BYTES = 64 * 1024 * 1024
_MAX_DEPTH = 8


def _roots() -> tuple[str, ...]:
    global _library_roots
    if _library_roots is None:
        import site

        roots = {os.path.realpath(os.path.dirname(os.__file__))}  # the standard library
        with contextlib.suppress(AttributeError):  # virtualenv's old site.py lacks these
            roots.update(os.path.realpath(p) for p in [*site.getsitepackages(), site.getusersitepackages()])
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
            roots.add(os.path.realpath(os.path.join(prefix, "lib")))
        roots.add(os.path.realpath(os.path.dirname(os.path.abspath(__file__))))  # mlpipe itself
        _library_roots = tuple(sorted(r + os.sep for r in roots))
    return _library_roots


def is_user_module(name: str | None) -> bool:
    """Whether module ``name`` is the user's own code (not stdlib, not installed, not mlpipe)."""
    if not name:
        return False
    cached = _user_modules.get(name)
    if cached is not None:
        return cached
    module = sys.modules.get(name)
    result = False
    if name == "__main__":
        result = True
    elif module is not None and name.split(".")[0] not in sys.builtin_module_names:
        path = getattr(module, "__file__", None)
        if path:
            real = os.path.realpath(path)
            result = not any(real.startswith(root) for root in _roots()) and "site-packages" not in real
    _user_modules[name] = result
    return result


def fingerprint(fn: Any) -> Fingerprint:
    """Fingerprint a function and all user code it reaches.

    Memoised per function object, and the memo is checked against every binding
    the walk read (see the module docstring), so an edit made in the same
    process (a notebook cell, a REPL, ``importlib.reload``) gives a fresh
    fingerprint.
    """
    fn = getattr(fn, "fn", fn)  # a Step
    key = id(fn)
    with _lock:
        hit = _memo.get(key)
        if hit is not None and hit[0] is fn and hit[2].hold():
            return hit[1]
        _checked_files.clear()
        walker = _Walker()
        walker.visit_function(fn, root=True)
        result = Fingerprint(
            digest_json(walker.manifest),
            dict(sorted(walker.manifest.items())),
            frozenset(walker.packages),
            dict(sorted(walker.previews.items())),
        )
        _memo[key] = (fn, result, walker.bindings)
        return result


_MISSING = object()
# Values that cannot change in place: the binding that holds them is enough to check.
_IMMUTABLE = (
    int,
    float,
    complex,
    str,
    bytes,
    bool,
    type(None),
    range,
    enum.Enum,
    re.Pattern,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    pathlib.PurePath,
)


def _immutable(value: Any) -> bool:
    if isinstance(value, _IMMUTABLE):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_immutable(v) for v in value)
    return False


def _constant_token(value: Any) -> str:
    """What a mutable constant holds, including the code of any functions inside it."""
    walker = _Walker()
    digest = walker._value_hash(value)
    return digest if not walker.manifest else digest_json([digest, walker.manifest])


class _Bindings:
    """What a fingerprint read, to tell whether a memoised fingerprint still holds.

    ``names``: (namespace, name, object) for globals, module attributes and
    class members (``_MISSING`` when the name was absent); ``attrs``: (object,
    attribute, object) for ``__code__``, defaults and bases; ``cells``: closure
    cells and their contents; ``constants``: mutable constants and their token.
    Every check is by identity except for the mutable constants, which are
    hashed again.
    """

    __slots__ = ("attrs", "cells", "constants", "names", "sizes")

    def __init__(self) -> None:
        self.names: list[tuple[Any, str, Any]] = []
        self.attrs: list[tuple[Any, str, Any]] = []
        self.cells: list[tuple[Any, Any]] = []
        self.constants: list[tuple[Any, str]] = []
        self.sizes: list[tuple[Any, int]] = []

    def hold(self, contents: bool = True) -> bool:
        """Whether every binding still holds (and, with ``contents``, every mutable constant hashes the same)."""
        for namespace, name, value in self.names:
            if namespace.get(name, _MISSING) is not value:
                return False
        for obj, attr, value in self.attrs:
            if getattr(obj, attr, _MISSING) is not value:
                return False
        for cell, value in self.cells:
            try:
                if cell.cell_contents is not value:
                    return False
            except ValueError:  # emptied
                return False
        for namespace, size in self.sizes:  # a member added to a class
            if len(namespace) != size:
                return False
        return not contents or all(_constant_token(value) == token for value, token in self.constants)

    def settle(self) -> None:
        self.constants = [(value, _constant_token(value)) for value, _token in self.constants]


def unchanged(fn: Any) -> Callable[[], bool]:
    """A check that is true while no binding ``fn``'s fingerprint read was rebound (contents not compared).

    For tracing: re-running a pipeline function because a list it reads was
    appended to would repeat its side effects for nothing; a rebound name
    (``N = 30`` in a later cell) or a redefined step is what changes a trace.
    """
    fingerprint(fn)
    with _lock:
        bindings = _memo[id(getattr(fn, "fn", fn))][2]
    return lambda: bindings.hold(contents=False)


def settle() -> None:
    """Take the current contents of memoised mutable constants as the baseline (called when a run ends).

    Memo entries whose bindings no longer hold are dropped: they would be
    recomputed anyway, and dropping them frees what they reference.
    """
    with _lock:
        for key, (_fn, _result, bindings) in list(_memo.items()):
            if bindings.hold(contents=False):
                bindings.settle()
            else:
                del _memo[key]


_PREVIEW_CHARS = 120


# Names and contents that mark a constant as a credential: it is hashed into the fingerprint but
# never previewed, so it stays out of cache entries, step records, the IR and the index.
_SECRET_NAME = re.compile(
    r"key|token|secret|passw|pwd|credential|creds|auth|cookie|session|private|signature|bearer|dsn|cert"
    r"|conn_?str|connection_?string",
    re.IGNORECASE,
)
_SECRET_TEXT = re.compile(
    r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|\bBearer\s|\bBasic\s+[A-Za-z0-9+/=]{8}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20}|\bxox[abprs]-|\bsk-[A-Za-z0-9]{16}|\bdapi[0-9a-f]{16}|://[^/\s:@]+:[^/\s@]+@",
)
_ENV_MIN_CHARS = 6  # shorter environment values ("1", "true", "en_US") are too common to mean anything


def credential_like(name: str, value: Any) -> bool:
    """Whether a named setting looks like a credential by its own name or its text (no environment lookup).

    The same rules that keep credentials out of previews: a name such as
    ``key``, ``secret``, ``token``, ``password`` or ``connection_string``, or
    text such as an AWS access key id, a private key or a URL with a password
    in it. ``signature_version`` (botocore's signing algorithm) is a setting.
    """
    if name in _NOT_CREDENTIALS:
        return False
    return bool(_SECRET_NAME.search(name)) or (isinstance(value, str) and bool(_SECRET_TEXT.search(value)))


_NOT_CREDENTIALS = frozenset({"signature_version"})


def _is_secret(name: str, value: Any) -> bool:
    """Whether a constant must not be previewed: a credential-like name, or a value from the environment.

    A value read with ``os.environ.get`` / ``os.getenv`` / ``os.environ[...]`` is
    recognised by equality with (or containment of) a current environment
    value, so a header dict built from a token is caught too.
    """
    if _SECRET_NAME.search(name):
        return True
    env_values = [v for v in os.environ.values() if len(v) >= _ENV_MIN_CHARS]
    stack, seen = [value], 0
    while stack and seen < 10_000:
        item = stack.pop()
        seen += 1
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        if isinstance(item, str):
            if _SECRET_TEXT.search(item) or any(v in item for v in env_values):
                return True
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and _SECRET_NAME.search(k):
                    return True
                stack.extend((k, v))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def _preview(value: Any, name: str = "") -> str | None:
    """A short, stable text of a constant's value, or None (too long, its repr holds an address, or a secret)."""
    try:
        text = canonical_json(value)
    except (TypeError, ValueError):
        text = repr(value)
        if " at 0x" in text or text.startswith("<"):
            return None
    if len(text) > _PREVIEW_CHARS or _is_secret(name, value) or _is_secret("", text):
        return None
    return text


def clear_memo() -> None:
    """Forget memoised fingerprints and parsed modules (tests that edit source files use it)."""
    with _lock:
        _memo.clear()
        _module_index.clear()
        _segments.clear()
        _user_modules.clear()
        _checked_files.clear()
        linecache.clearcache()


# -- source lookup -----------------------------------------------------------------


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _child_bodies(node: ast.AST) -> list[list[ast.stmt]]:
    """The statement lists directly inside a statement (defs and classes only live there)."""
    bodies = []
    for field_name in ("body", "orelse", "finalbody"):
        value = getattr(node, field_name, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            bodies.append(value)
    for handler in getattr(node, "handlers", None) or ():
        bodies.append(handler.body)
    for case in getattr(node, "cases", None) or ():
        bodies.append(case.body)
    return bodies


def _index_definitions(tree: ast.Module) -> dict[str, list[ast.AST]]:
    """Map qualnames (CPython's convention, ``outer.<locals>.inner``) to definition nodes.

    Walks statements only: definitions never hide inside expressions, and
    skipping expressions makes indexing a large module cheap.
    """
    index: dict[str, list[ast.AST]] = {}
    stack: list[tuple[list[ast.stmt], str]] = [(tree.body, "")]
    while stack:
        body, prefix = stack.pop()
        for stmt in body:
            if isinstance(stmt, _DEFS):
                qualname = prefix + stmt.name
                index.setdefault(qualname, []).append(stmt)
                inner = qualname + (".<locals>." if not isinstance(stmt, ast.ClassDef) else ".")
                stack.append((stmt.body, inner))
            else:
                stack.extend((child, prefix) for child in _child_bodies(stmt))
    return index


_checked_files: set[str] = set()


def _lines(filename: str, module_globals: dict[str, Any] | None) -> list[str]:
    if filename not in _checked_files:
        # Once per walk: a module edited on disk and reloaded must not be read from linecache's old copy.
        # (Notebook cells are registered without a modification time, and checkcache keeps them.)
        _checked_files.add(filename)
        linecache.checkcache(filename)
    return linecache.getlines(filename, module_globals)


def _index_for(filename: str, module_globals: dict[str, Any] | None) -> dict[str, list[ast.AST]] | None:
    lines = _lines(filename, module_globals)
    if not lines:
        return None
    cached = _module_index.get(filename)
    if cached is not None and cached[0] is lines:  # linecache hands out the same list until the file changes
        return cached[1]
    try:
        tree = ast.parse("".join(lines), filename)
    except SyntaxError:
        return None
    index = _index_definitions(tree)
    _module_index[filename] = (lines, index)
    return index


_CONTINUES = frozenset(" \t\r\n#)]}")  # a line starting so (or empty) cannot start a top-level statement


def _top_level_node(obj: Any, filename: str, firstlineno: int, module_globals: dict[str, Any] | None) -> ast.AST | None:
    """A module-level function's definition, parsed from its own lines only (None: parse the whole module).

    Its lines run from its first decorator to the next line that starts a
    top-level statement. Inside the body, a line starting in column 0 can only
    continue a string or bracket, and cutting there leaves a syntax error, so
    whatever parses is the whole definition. For a module of 10,000 steps this
    parses each step's few lines instead of the whole file.
    """
    lines = _lines(filename, module_globals)
    cached = _segments.get((filename, firstlineno))
    if cached is not None and cached[0] is lines:
        return cached[1]
    start = firstlineno - 1
    end = start
    while end < len(lines) and not lines[end].startswith(("def ", "async def ")):
        end += 1  # decorators
    end += 1
    while end < len(lines) and (not lines[end] or lines[end][0] in _CONTINUES):
        end += 1
    try:
        tree = ast.parse("".join(lines[start:end]), filename)
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name != obj.__name__:
        return None
    if min([node.lineno] + [d.lineno for d in node.decorator_list]) != 1:
        return None
    _segments[(filename, firstlineno)] = (lines, node)
    return node


def _find_node(obj: Any, filename: str | None, firstlineno: int | None) -> ast.AST | None:
    if not filename:
        return None
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if firstlineno is not None and obj.__qualname__ == obj.__name__ and not isinstance(obj, type):
        node = _top_level_node(obj, filename, firstlineno, getattr(module, "__dict__", None))
        if node is not None:
            return node
    index = _index_for(filename, getattr(module, "__dict__", None))
    if index is None:
        return None
    candidates = index.get(obj.__qualname__)
    if not candidates:
        return None
    if firstlineno is None:
        return candidates[-1]
    for node in candidates:
        decorators = getattr(node, "decorator_list", [])
        start = min([node.lineno] + [d.lineno for d in decorators])  # type: ignore[attr-defined]
        if firstlineno in (start, node.lineno):  # type: ignore[attr-defined]
            return node
    # No definition starts where the code does: the source is not this code's (a replaced
    # ``__code__``, a file edited since import), so the caller hashes the bytecode instead.
    return None


def _normalised_hash(node: ast.AST, strip_decorators: bool) -> str:
    """Hash of the AST without docstrings (and decorators, for the step itself).

    The tree is edited in place and restored afterwards (callers hold ``_lock``):
    copying a tree costs more than dumping it.
    """
    saved: list[tuple[ast.AST, str, Any]] = []
    if strip_decorators and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        saved.append((node, "decorator_list", node.decorator_list))
        node.decorator_list = []
    stack: list[ast.AST] = [node]
    while stack:
        sub = stack.pop()
        body = getattr(sub, "body", None)
        if (
            isinstance(sub, _DEFS)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            saved.append((sub, "body", body))
            sub.body = body[1:] or [ast.Pass()]
        for child_body in _child_bodies(sub):
            stack.extend(child_body)
    try:
        return hashlib.sha256(ast.dump(node, annotate_fields=False).encode()).hexdigest()
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def _code_hash(code: types.CodeType, doc: str | None) -> str:
    """Fallback when no source exists: bytecode, constants and names (Python-version specific)."""
    h = hashlib.sha256()
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            h.update(_code_hash(const, None).encode())
        elif not (doc is not None and const == doc):
            h.update(repr(const).encode())
    return h.hexdigest()


_IMPORT_NAME = dis.opmap["IMPORT_NAME"]


def _local_imports(code: types.CodeType, package: str) -> list[str]:
    """Absolute names of the modules a code object (and its nested code) imports, in order."""
    found: list[str] = []
    if bytes([_IMPORT_NAME]) in code.co_code:  # cheap filter before disassembling
        level: Any = 0
        for ins in dis.get_instructions(code):
            if ins.opname == "LOAD_CONST" and isinstance(ins.argval, int):
                level = ins.argval
            elif ins.opname == "IMPORT_NAME":
                name = str(ins.argval)
                if level:
                    with contextlib.suppress(ImportError, ValueError):
                        found.append(importlib.util.resolve_name("." * level + name, package))
                else:
                    found.append(name)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(_local_imports(const, package))
    return found


def _import_user_module(name: str) -> types.ModuleType | None:
    """The module ``name`` if it is the user's own code, importing it when the step has not run yet."""
    module = sys.modules.get(name)
    if module is None:
        # Decide from the top-level package, which find_spec locates without importing anything:
        # a library the step imports lazily (``import sklearn.ensemble`` inside it) stays unimported.
        top = name.partition(".")[0]
        if top in sys.modules and not is_user_module(top):
            return None
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        origin = getattr(spec, "origin", None)
        locations = list(getattr(spec, "submodule_search_locations", None) or [])
        where = origin if origin and os.path.isfile(origin) else (locations[0] if locations else None)
        if where is None:
            return None
        real = os.path.realpath(where)
        if any(real.startswith(root) for root in _roots()) or "site-packages" in real:
            return None
        try:
            module = importlib.import_module(name)
        except Exception:  # the step will raise it when it runs; the fingerprint cannot follow it
            return None
        _user_modules.pop(name, None)
    return module if is_user_module(name) else None


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


# -- the walk ----------------------------------------------------------------------


class _Walker:
    def __init__(self) -> None:
        self.manifest: dict[str, str] = {}
        self.previews: dict[str, str] = {}
        self.packages: set[str] = set()
        self.bindings = _Bindings()
        self._seen: set[int] = set()
        self._seen_attrs: set[tuple[int, str]] = set()

    def _library(self, module: str | None) -> None:
        if module:
            top = module.split(".")[0]
            if top and top not in sys.stdlib_module_names and top != "builtins":
                self.packages.add(top)

    def visit_function(self, fn: Any, root: bool = False) -> None:
        if id(fn) in self._seen:
            return
        self._seen.add(id(fn))
        code: types.CodeType | None = getattr(fn, "__code__", None)
        module = getattr(fn, "__module__", None)
        label = f"function {module}.{fn.__qualname__}"
        if code is None:
            return
        attrs = self.bindings.attrs
        attrs.append((fn, "__code__", code))
        attrs.append((fn, "__defaults__", getattr(fn, "__defaults__", None)))
        attrs.append((fn, "__kwdefaults__", getattr(fn, "__kwdefaults__", None)))
        node = None if fn.__name__ == "<lambda>" else _find_node(fn, code.co_filename, code.co_firstlineno)
        # Global names and attribute names the code uses, from the code objects
        # (exact, and far cheaper than walking the syntax tree).
        names = _code_names(code)
        self.manifest[label] = (
            _normalised_hash(node, strip_decorators=root) if node is not None else _code_hash(code, fn.__doc__)
        )
        for i, default in enumerate(getattr(fn, "__defaults__", None) or ()):
            self.visit_value(default, f"{label} default {i}", names=set())
        for name, default in (getattr(fn, "__kwdefaults__", None) or {}).items():
            self.visit_value(default, f"{label} default {name}", names=set())
        closure = getattr(fn, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            self.bindings.cells.append((cell, value))
            self.visit_reference(value, f"closure {module}.{fn.__qualname__}.{name}", names)
        fn_globals = getattr(fn, "__globals__", {})
        read = self.bindings.names
        for name in sorted(names - set(code.co_freevars)):
            value = fn_globals.get(name, _MISSING)
            read.append((fn_globals, name, value))  # absent too: defining it later shadows a builtin
            if value is not _MISSING:
                self.visit_reference(value, f"constant {module}.{name}", names)
        # Modules imported inside the function body are not in its globals: follow them too.
        for imported in _local_imports(code, fn_globals.get("__package__") or ""):
            target = _import_user_module(imported)
            if target is not None:
                read.append((sys.modules, imported, target))
                self.visit_reference(target, f"module {imported}", names)
            else:
                self._library(imported)

    def visit_reference(self, value: Any, label: str, names: set[str]) -> None:
        """A name the code uses. For a user module, follow the attributes the code names on it."""
        if isinstance(value, types.ModuleType):
            if not is_user_module(value.__name__):
                self._library(value.__name__)
                if value.__name__.startswith("mlpipe."):  # ``mpm.register_model(...)``: marked functions
                    namespace = vars(value)
                    for attr in names:
                        self._external(namespace.get(attr))
                return
            # Each function names its own attributes of the module (``helpers.a`` here, ``helpers.b`` in a
            # helper), so the module is followed once per attribute, not once per walk.
            namespace = vars(value)
            for attr in sorted(names):
                if attr in namespace and (id(value), attr) not in self._seen_attrs:
                    self._seen_attrs.add((id(value), attr))
                    self.bindings.names.append((namespace, attr, namespace[attr]))
                    self.visit_reference(namespace[attr], f"constant {value.__name__}.{attr}", names)
            return
        self.visit_value(value, label, names)

    def visit_value(self, value: Any, label: str, names: set[str]) -> None:
        fn = getattr(value, "fn", None)
        if fn is not None and type(value).__name__ == "Step" and type(value).__module__ == "mlpipe.step":
            value = fn
        wrapped = getattr(value, "__wrapped__", None)
        if wrapped is not None and callable(value) and not isinstance(value, type):
            value = wrapped  # functools.wraps / lru_cache: fingerprint the function inside
        if isinstance(value, (types.FunctionType, types.MethodType)):
            target = value.__func__ if isinstance(value, types.MethodType) else value
            if is_user_module(getattr(target, "__module__", None)):
                self.visit_function(target)
            else:
                self._library(getattr(target, "__module__", None))
                self._external(target)
            return
        if isinstance(value, type):
            if is_user_module(value.__module__):
                self.visit_class(value)
            else:
                self._library(value.__module__)
            return
        if isinstance(value, (types.BuiltinFunctionType, types.ModuleType)):
            self._library(getattr(value, "__module__", None) or getattr(value, "__name__", None))
            return
        self.manifest[label] = self._value_hash(value)
        if not _immutable(value):
            self.bindings.constants.append((value, _constant_token(value)))
        preview = _preview(value, label.rsplit(" ", 1)[-1].rsplit(".", 1)[-1])
        if preview is not None:
            self.previews[label] = preview

    def _external(self, fn: Any) -> None:
        system = getattr(fn, EXTERNAL, None) if isinstance(fn, types.FunctionType) else None
        if isinstance(system, str):
            public = ".".join(part for part in fn.__module__.split(".") if not part.startswith("_"))
            label = f"external {public}.{fn.__qualname__}"
            self.manifest[label] = hashlib.sha256(system.encode()).hexdigest()
            self.previews[label] = system

    def visit_class(self, cls: type) -> None:
        if id(cls) in self._seen:
            return
        self._seen.add(id(cls))
        label = f"class {cls.__module__}.{cls.__qualname__}"
        module = sys.modules.get(cls.__module__)
        filename = getattr(module, "__file__", None)
        node = None
        if filename:
            node = _find_node(cls, filename, None)
        if node is None:
            # Classes from notebooks/__main__ without a file: fall back to their methods' code.
            first = next((v for v in vars(cls).values() if isinstance(v, types.FunctionType)), None)
            if first is not None:
                node = _find_node(cls, first.__code__.co_filename, None)
        self.manifest[label] = _normalised_hash(node, strip_decorators=False) if node is not None else "opaque"
        members = vars(cls)
        self.bindings.attrs.append((cls, "__bases__", cls.__bases__))
        self.bindings.names.extend((members, attr, member) for attr, member in members.items())
        self.bindings.sizes.append((members, len(members)))
        for base in cls.__bases__:
            if base is not object:
                self.visit_value(base, f"class {base.__module__}.{base.__qualname__}", names=set())
        for _attr, member in sorted(vars(cls).items()):
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                for accessor in (member.fget, member.fset, member.fdel):
                    if accessor is not None:
                        self.visit_function(accessor)
            elif isinstance(member, types.FunctionType):
                self.visit_function(member)

    def _value_hash(self, value: Any) -> str:
        if isinstance(value, enum.Enum):
            return digest_json([type(value).__qualname__, repr(value.value)])
        try:
            return hashlib.sha256(canonical_json(value).encode()).hexdigest()
        except (TypeError, ValueError):
            pass
        cls = type(value)
        if cls.__module__.split(".")[0] == "numpy" and getattr(value, "nbytes", 0) < _MAX_CONSTANT_BYTES:
            h = hashlib.sha256(repr((value.dtype, value.shape)).encode())
            h.update(value.tobytes())
            return h.hexdigest()
        if cls.__module__.split(".")[0] == "pandas" and hasattr(value, "memory_usage"):
            # A lookup table read at import time: its content is part of what the step computes.
            import pandas as pd

            with contextlib.suppress(TypeError, ValueError):
                h = hashlib.sha256(repr((cls.__qualname__, getattr(value, "columns", None), value.dtypes)).encode())
                h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
                return h.hexdigest()
        if is_user_module(cls.__module__) or isinstance(value, (set, frozenset, tuple, list, dict, functools.partial)):
            # Containers and instances of user classes: hashed by structure, following the functions
            # and classes inside (a dispatch table of helpers), never by repr (which holds addresses).
            return digest_json(self._structure(value, 0))
        return self._library_value(value)

    def _library_value(self, value: Any) -> str:
        """A constant of a library type (a compiled regex, a datetime, a Path...).

        Hashed by its pickle, which such types define from the state that
        matters (``re.compile`` pickles as its pattern and flags); only values
        that cannot be pickled stay opaque, which ``cache explain`` shows.
        """
        cls = type(value)
        self._library(cls.__module__)
        try:
            data = pickle.dumps(value, protocol=4)
        except Exception:  # unpicklable objects raise anything
            return f"opaque {cls.__module__}.{cls.__qualname__}"
        return "pickle " + hashlib.sha256(data).hexdigest()

    def _structure(self, value: Any, depth: int) -> Any:
        """A JSON-able description of a constant that changes when anything it holds changes."""
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return repr(value)
        if depth > _MAX_DEPTH:
            return "..."
        cls = type(value)
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": hashlib.sha256(value).hexdigest()}
        if isinstance(value, enum.Enum):
            return [cls.__qualname__, repr(value.value)]
        if isinstance(value, functools.partial):
            return [
                "partial",
                self._structure(value.func, depth + 1),
                self._structure(value.args, depth + 1),
                self._structure(value.keywords, depth + 1),
            ]
        if callable(value) and (
            isinstance(value, (type, types.FunctionType, types.MethodType, types.BuiltinFunctionType))
            or hasattr(value, "__wrapped__")
            or (cls.__name__ == "Step" and cls.__module__ == "mlpipe.step")
        ):
            self.visit_value(value, "", set())  # functions and classes enter the manifest under their own names
            target = getattr(value, "fn", value)
            return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', cls.__qualname__)}"
        if isinstance(value, (list, tuple)):
            return [cls.__qualname__, [self._structure(v, depth + 1) for v in value]]
        if isinstance(value, (set, frozenset)):
            return [cls.__qualname__, sorted(canonical_json(self._structure(v, depth + 1)) for v in value)]
        if isinstance(value, dict):
            items = [
                [canonical_json(self._structure(k, depth + 1)), self._structure(v, depth + 1)] for k, v in value.items()
            ]
            return [cls.__qualname__, sorted(items, key=lambda item: str(item[0]))]
        if cls.__module__.split(".")[0] in ("numpy", "pandas"):
            return self._value_hash(value)
        if is_user_module(cls.__module__):
            self.visit_class(cls)
            state = vars(value) if hasattr(value, "__dict__") else None
            return [f"{cls.__module__}.{cls.__qualname__}", self._structure(state, depth + 1)]
        return self._library_value(value)
