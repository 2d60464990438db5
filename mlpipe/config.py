"""Configuration: profiles from ``mlpipe.toml`` or ``[tool.mlpipe]`` in ``pyproject.toml``.

The file is found from the working directory upwards (``mlpipe.toml`` wins
over ``pyproject.toml`` in the same directory). A profile is chosen by the
``profile=`` argument, then ``MLPIPE_PROFILE``, then the file's
``default_profile``. With no file at all the profile is the local backend with
the store in ``.mlpipe/``. Relative store paths are relative to the file's
directory, so a run from a subdirectory uses the project's store.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mlpipe.errors import ConfigError

__all__ = ["Profile", "find_config", "load_profile"]

DEFAULT_STORE = ".mlpipe"


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A named choice of backend, store and backend options.

    ``tracking_uri`` turns experiment tracking on (MLflow: ``http://host:5000``
    or ``sqlite:///mlflow.db``; ``MLFLOW_TRACKING_URI`` does the same when the
    profile has none); ``experiment`` names the MLflow experiment (default
    ``mlpipe/<pipeline>``). A plain frozen dataclass, checked by
    :func:`_checked` (no pydantic on the path of every run).
    """

    name: str = "default"
    backend: str = "local"
    store: str = DEFAULT_STORE
    image: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str | None = None
    experiment: str | None = None
    source: str | None = None

    model_fields: ClassVar[tuple[str, ...]] = (
        "name", "backend", "store", "image", "options", "storage_options", "tracking_uri", "experiment", "source",
    )  # fmt: skip

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Profile:
        return dataclasses.replace(self, **(update or {}))

    @classmethod
    def model_construct(cls, **values: Any) -> Profile:
        return cls(**values)


_FILE_KEYS = {"default_profile": "str | None", "profiles": "dict"}
_PROFILE_KEYS = {
    "name": "str", "backend": "str", "store": "str", "image": "str | None", "options": "dict",
    "storage_options": "dict", "tracking_uri": "str | None", "experiment": "str | None", "source": "str | None",
}  # fmt: skip


def _checked(data: dict[str, Any], schema: dict[str, str]) -> str | None:
    """What is wrong with ``data`` against ``schema`` (key -> "str", "str | None" or "dict"), or None."""
    problems: list[str] = []
    for key, value in data.items():
        kind = schema.get(key)
        if kind is None:
            problems.append(f"{key}: unknown key")
        elif kind == "dict" and not isinstance(value, dict):
            problems.append(f"{key}: Input should be a valid dictionary")
        elif kind.startswith("str") and not isinstance(value, str) and not (kind.endswith("None") and value is None):
            problems.append(f"{key}: Input should be a valid string")
        elif key == "store" and not value.strip():
            problems.append(
                "store: Value error, must not be empty: give a directory such as '.mlpipe' or a URL such as "
                "'s3://bucket/x'"
            )
    return "; ".join(problems) or None


def find_config(start: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The nearest configuration and its mlpipe table, searching upwards from ``start``."""
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "mlpipe.toml"
        if candidate.is_file():
            return candidate, _read(candidate)
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            table = _read(pyproject).get("tool", {}).get("mlpipe")
            if table is not None:
                return pyproject, table
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", path=str(path)) from None


def load_profile(name: str | None = None, start: str | os.PathLike[str] | None = None) -> Profile:
    """The profile ``name`` (or the default one), validated.

    Raises:
        ConfigError: unknown profile (lists the defined ones), unknown keys
            (lists the valid ones), or invalid TOML.
    """
    name = name or os.environ.get("MLPIPE_PROFILE") or None
    found = find_config(start)
    if found is None:
        if name not in (None, "default", "local"):
            raise ConfigError(
                f"profile {name!r} is not defined: no mlpipe.toml or [tool.mlpipe] found from {os.getcwd()} "
                "upwards. Create mlpipe.toml with a [profiles.NAME] table (see docs/profiles.md)",
                profile=name,
            )
        return Profile.model_construct(name=name or "default")  # defaults only: nothing to validate
    path, table = found
    problem = _checked(table, _FILE_KEYS)
    if problem:
        raise ConfigError(f"{path}: {problem}. Top-level keys are: default_profile, profiles", path=str(path))
    profiles: dict[str, dict[str, Any]] = table.get("profiles") or {}
    bad = [f"profiles.{k}: Input should be a valid dictionary" for k, v in profiles.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"{path}: {'; '.join(bad)}. Top-level keys are: default_profile, profiles", path=str(path))
    chosen = name or table.get("default_profile")
    if chosen is None:
        if not profiles:
            return Profile(source=str(path), store=_resolve_store(DEFAULT_STORE, path))
        if len(profiles) == 1:
            chosen = next(iter(profiles))
        elif "default" in profiles:
            chosen = "default"
        else:
            raise ConfigError(
                f"{path}: several profiles ({', '.join(profiles)}) and no default_profile; "
                "set default_profile, MLPIPE_PROFILE or --profile",
                path=str(path),
            )
    if chosen not in profiles:
        if chosen in ("default", "local") and not profiles:
            return Profile(name=chosen, source=str(path), store=_resolve_store(DEFAULT_STORE, path))
        raise ConfigError(
            f"profile {chosen!r} is not defined in {path}; defined profiles: {', '.join(profiles) or '(none)'}",
            profile=chosen,
            path=str(path),
        )
    raw = {"name": chosen, "source": str(path), **profiles[chosen]}
    problem = _checked(raw, _PROFILE_KEYS)
    if problem:
        valid = ", ".join(k for k in Profile.model_fields if k not in ("name", "source"))
        raise ConfigError(f"{path}, profile {chosen!r}: {problem}. Valid keys: {valid}", profile=chosen, path=str(path))
    profile = Profile(**raw)
    return profile.model_copy(update={"store": _resolve_store(profile.store, path)})


def _resolve_store(store: str, config_path: Path) -> str:
    if "://" in store:
        return store
    expanded = os.path.expanduser(store)
    if os.path.isabs(expanded):
        return expanded
    return str(config_path.parent / expanded)
