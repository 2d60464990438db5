"""Configuration: profiles from ``mlpipe.toml`` or ``[tool.mlpipe]`` in ``pyproject.toml``.

The file is found from the working directory upwards (``mlpipe.toml`` wins
over ``pyproject.toml`` in the same directory). A profile is chosen by the
``profile=`` argument, then ``MLPIPE_PROFILE``, then the file's
``default_profile``. With no file at all the profile is the local backend with
the store in ``.mlpipe/``. Relative store paths are relative to the file's
directory, so a run from a subdirectory uses the project's store.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mlpipe.errors import ConfigError

__all__ = ["Profile", "find_config", "load_profile"]

DEFAULT_STORE = ".mlpipe"


class Profile(BaseModel):
    """A named choice of backend, store and backend options.

    ``tracking_uri`` turns experiment tracking on (MLflow: ``http://host:5000``
    or ``sqlite:///mlflow.db``; ``MLFLOW_TRACKING_URI`` does the same when the
    profile has none); ``experiment`` names the MLflow experiment (default
    ``mlpipe/<pipeline>``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = "default"
    backend: str = "local"
    store: str = DEFAULT_STORE
    image: str | None = None
    options: dict[str, Any] = {}
    storage_options: dict[str, Any] = {}
    tracking_uri: str | None = None
    experiment: str | None = None
    source: str | None = None

    @field_validator("store")
    @classmethod
    def _store_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: give a directory such as '.mlpipe' or a URL such as 's3://bucket/x'")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    default_profile: str | None = None
    profiles: dict[str, dict[str, Any]] = {}


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
    try:
        config = _File(**table)
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: {_errors(exc)}. Top-level keys are: default_profile, profiles", path=str(path)
        ) from None
    chosen = name or config.default_profile
    if chosen is None:
        if not config.profiles:
            return Profile(source=str(path), store=_resolve_store(DEFAULT_STORE, path))
        if len(config.profiles) == 1:
            chosen = next(iter(config.profiles))
        elif "default" in config.profiles:
            chosen = "default"
        else:
            raise ConfigError(
                f"{path}: several profiles ({', '.join(config.profiles)}) and no default_profile; "
                "set default_profile, MLPIPE_PROFILE or --profile",
                path=str(path),
            )
    if chosen not in config.profiles:
        if chosen in ("default", "local") and not config.profiles:
            return Profile(name=chosen, source=str(path), store=_resolve_store(DEFAULT_STORE, path))
        raise ConfigError(
            f"profile {chosen!r} is not defined in {path}; defined profiles: {', '.join(config.profiles) or '(none)'}",
            profile=chosen,
            path=str(path),
        )
    raw = dict(config.profiles[chosen])
    try:
        profile = Profile(name=chosen, source=str(path), **raw)
    except ValidationError as exc:
        valid = ", ".join(k for k in Profile.model_fields if k not in ("name", "source"))
        raise ConfigError(
            f"{path}, profile {chosen!r}: {_errors(exc)}. Valid keys: {valid}", profile=chosen, path=str(path)
        ) from None
    return profile.model_copy(update={"store": _resolve_store(profile.store, path)})


def _resolve_store(store: str, config_path: Path) -> str:
    if "://" in store:
        return store
    expanded = os.path.expanduser(store)
    if os.path.isabs(expanded):
        return expanded
    return str(config_path.parent / expanded)


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
