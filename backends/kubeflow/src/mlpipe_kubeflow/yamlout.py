"""Block YAML text, byte for byte what ``yaml.dump(..., sort_keys=True)`` writes, in linear time.

kfp's compiler writes specs with PyYAML's pure-Python dumper, which spends
about a third of a millisecond per node (seconds for a few thousand steps).
A KFP spec is JSON-shaped (dicts of str keys, lists, str/int/float/bool/None)
and most of its strings are plain identifiers, so :func:`dump_all` writes the
block structure and those plain scalars itself and hands everything else to
PyYAML: a string that needs quoting, escaping or folding at 80 columns, a key
PyYAML would write as a complex key, a list inside a list. PyYAML renders
such a node at the same column it would have in the whole document (inside
dummy one-key mappings), so the line breaks and indentation are PyYAML's own;
the result is memoised per (node, column).

Equality with PyYAML is tested on random documents and on the golden specs
(``tests/backends/kubeflow/test_kfp_yaml_writer.py``). What must not live
here: anything about KFP.
"""

from __future__ import annotations

import functools
import gc
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

__all__ = ["dump_all", "dumps"]

# Strings PyYAML writes plain and unchanged whatever the column: no spaces (so never folded), no indicator
# characters, ASCII only, and not spelled like a bool or null (the only implicit types a letter can start).
_PLAIN = re.compile(r"(?:[A-Za-z_/]|--?[A-Za-z])[A-Za-z0-9_./=-]*")
_RESOLVED = frozenset(
    {
        "yes",
        "Yes",
        "YES",
        "no",
        "No",
        "NO",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "FALSE",
        "on",
        "On",
        "ON",
        "off",
        "Off",
        "OFF",
        "null",
        "Null",
        "NULL",
    }
)
_SIMPLE_KEY_MAX = 128  # PyYAML writes longer keys as complex keys ("? key")


def _plain(text: str) -> bool:
    return _PLAIN.fullmatch(text) is not None and text not in _RESOLVED


def _scalar(value: Any) -> str | None:
    """The plain text of a scalar when it needs no help from PyYAML, else None."""
    kind = type(value)
    if kind is str:
        return value if _plain(value) else None
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if not math.isfinite(value):
            return None
        text = repr(value).lower()
        return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
    return None


def _pyyaml(document: Any) -> str:
    import yaml  # type: ignore[import-untyped]

    text: str = yaml.dump(document, Dumper=yaml.SafeDumper, sort_keys=True, default_flow_style=False)
    return text


def _nest(document: Any, column: int) -> tuple[Any, int]:
    depth = column // 2
    for _ in range(depth):
        document = {"a": document}
    return document, depth


@functools.lru_cache(maxsize=4096, typed=True)
def _entry_by_pyyaml(key: str, value: Any, column: int) -> str:
    """``key: value`` as PyYAML writes it with the key at ``column`` (value a hashable scalar)."""
    document, depth = _nest({key: value}, column)
    return "".join(_pyyaml(document).splitlines(keepends=True)[depth:])


def _entry_unhashable(key: str, value: Any, column: int) -> str:
    document, depth = _nest({key: value}, column)
    return "".join(_pyyaml(document).splitlines(keepends=True)[depth:])


@functools.lru_cache(maxsize=4096, typed=True)
def _item_by_pyyaml(value: Any, column: int) -> str:
    """``- value`` as PyYAML writes it with the dash at ``column`` (value a hashable scalar)."""
    document, depth = _nest({"k": [value]}, column)
    return "".join(_pyyaml(document).splitlines(keepends=True)[depth + 1 :])


def _item_unhashable(value: Any, column: int) -> str:
    document, depth = _nest({"k": [value]}, column)
    return "".join(_pyyaml(document).splitlines(keepends=True)[depth + 1 :])


def _hashable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


# str -> its plain text, or None when PyYAML must render it; most strings of a spec repeat (keys, placeholders)
_STRINGS: dict[str, str | None] = {}
_STRINGS_MAX = 200_000


def _string(text: str) -> str | None:
    known = _STRINGS.get(text, "")
    if known != "":
        return known
    plain = text if _plain(text) else None
    if len(_STRINGS) < _STRINGS_MAX:
        _STRINGS[text] = plain
    return plain


def _mapping(out: list[str], mapping: Mapping[str, Any], column: int, first_prefix: str | None = None) -> None:
    """Write a non-empty block mapping whose keys start at ``column``.

    ``first_prefix`` replaces the indentation of the first line (``"- "`` for a mapping that is a list item).
    """
    pad = " " * column
    first = True
    for key in sorted(mapping):
        value = mapping[key]
        if first:
            prefix = pad if first_prefix is None else first_prefix
            first = False
        else:
            prefix = pad
        kind = type(value)
        if type(key) is not str or len(key) >= _SIMPLE_KEY_MAX or _string(key) is None:
            entry = (
                _entry_by_pyyaml(key, value, column)
                if _hashable(value) and isinstance(key, str)
                else _entry_unhashable(key, value, column)
            )
            out.append(prefix + entry[column:])
        elif kind is str:
            plain = _string(value)
            if plain is not None:
                out.append(f"{prefix}{key}: {plain}\n")
            else:
                out.append(prefix + _entry_by_pyyaml(key, value, column)[column:])
        elif kind is dict:
            if value:
                out.append(f"{prefix}{key}:\n")
                _mapping(out, value, column + 2)
            else:
                out.append(f"{prefix}{key}: {{}}\n")
        elif kind is list:
            if value:
                out.append(f"{prefix}{key}:\n")
                _sequence(out, value, column)
            else:
                out.append(f"{prefix}{key}: []\n")
        else:
            scalar = _scalar(value)
            if scalar is not None:
                out.append(f"{prefix}{key}: {scalar}\n")
            else:
                rendered = (
                    _entry_by_pyyaml(key, value, column) if _hashable(value) else _entry_unhashable(key, value, column)
                )
                out.append(prefix + rendered[column:])


def _sequence(out: list[str], items: list[Any], column: int) -> None:
    """Write a non-empty block sequence whose dashes are at ``column``."""
    pad = " " * column
    for item in items:
        kind = type(item)
        if kind is str:
            plain = _string(item)
            out.append(f"{pad}- {plain}\n" if plain is not None else _item_by_pyyaml(item, column))
        elif kind is dict:
            if item:
                _mapping(out, item, column + 2, first_prefix=pad + "- ")
            else:
                out.append(f"{pad}- {{}}\n")
        else:
            text = None if kind is list else _scalar(item)
            if text is not None:
                out.append(f"{pad}- {text}\n")
            else:
                out.append(_item_by_pyyaml(item, column) if _hashable(item) else _item_unhashable(item, column))


def dumps(document: Mapping[str, Any]) -> str:
    """One document (a mapping), as ``yaml.dump(document, sort_keys=True)`` writes it."""
    if not document or type(document) is not dict:
        return _pyyaml(document)
    out: list[str] = []
    paused = gc.isenabled()
    gc.disable()  # millions of small strings and no cycles: the collector would only rescan them
    try:
        _mapping(out, document, 0)
    finally:
        if paused:
            gc.enable()
    return "".join(out)


def dump_all(documents: Iterable[Mapping[str, Any]], stream: TextIO) -> None:
    """Write mappings as ``yaml.dump_all(documents, stream, sort_keys=True)`` does."""
    for index, document in enumerate(documents):
        if index:
            stream.write("---\n")
        stream.write(dumps(document))
