"""One loader for every kind of plugin: backends, materializers and trackers.

Each kind is an entry point group (``mlpipe.backends``,
``mlpipe.materializers``, ``mlpipe.trackers``) plus the few built-ins the core
knows by name (the ``local`` backend, the ``mlflow`` tracker), written as
``module:attribute`` and imported only when first asked for, as fsspec's
registry does. ``MLPIPE_DISABLE_PLUGIN_AUTOLOAD=1`` switches entry point
discovery off (built-ins still load). What goes wrong is said once, here, the
same way for every kind:

- nothing under the name: the names that are installed, "did you mean" for a
  typo, and the install hint only for plugins this project ships;
- two distributions claim a name: both named;
- a plugin (or its optional dependency) fails to import:
  :class:`~mlpipe.errors.MissingDependencyError` naming what to install;
- the object is not of the kind's base class: named with its distribution.

What must not live here: anything a plugin does once loaded.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipe.errors import BackendError, BackendNotFoundError, ConfigError, MissingDependencyError, MlpipeError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["BACKENDS", "MATERIALIZERS", "TRACKERS", "PluginKind", "autoload_enabled", "entry_points"]

ENV_DISABLE_AUTOLOAD = "MLPIPE_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginKind:
    """A kind of plugin and how to find one.

    Attributes:
        noun: What users call it in messages ("backend").
        group: The entry point group.
        builtins: Names the core knows, mapped to ``module:attribute``.
        hints: What to install for a known name that is missing (plugins this project ships).
        not_found: The error raised when nothing has the name.
        invalid: The error raised for a duplicate name or an object of the wrong kind.
    """

    noun: str
    group: str
    builtins: Mapping[str, str] = field(default_factory=dict)
    hints: Mapping[str, str] = field(default_factory=dict)
    not_found: type[MlpipeError] = MlpipeError
    invalid: type[MlpipeError] = MlpipeError

    def entry_points(self) -> dict[str, list[EntryPoint]]:
        """Installed entry points of this kind by name ({} when autoload is off)."""
        return entry_points(self.group)

    def names(self) -> list[str]:
        """Every name that can be loaded: built-ins and installed entry points."""
        return sorted({*self.builtins, *self.entry_points()})

    def available(self) -> dict[str, str]:
        """Installed plugins of this kind: name → where it comes from (distribution and target)."""
        out = {name: f"mlpipe ({target})" for name, target in self.builtins.items()}
        for name, eps in self.entry_points().items():
            for ep in eps:
                where = f"{ep.dist.name if ep.dist else '?'} ({ep.value})"
                out[name] = where if name not in out else f"{out[name]}; {where}"
        return dict(sorted(out.items()))

    def load(self, name: str, base: type | None = None) -> Any:
        """The object registered under ``name`` (a class for backends and trackers).

        Raises:
            ``not_found``: nothing is installed under that name.
            ``invalid``: two distributions claim it, or it is not a ``base`` subclass.
            MissingDependencyError: the plugin or a library it needs failed to import.
        """
        if name in self.builtins:
            obj, source = self._import(name, self.builtins[name], "mlpipe"), "mlpipe"
        else:
            eps = self.entry_points().get(name, [])
            if not eps:
                raise self.not_found(self.missing_message(name), **{self.noun: name})
            if len(eps) > 1:
                dists = ", ".join(sorted(_dist(ep) for ep in eps))
                raise self.invalid(
                    f"{self.noun} name {name!r} is claimed by several distributions: {dists}; uninstall one",
                    **{self.noun: name},
                )
            ep = eps[0]
            source = _dist(ep)
            obj = self._import(name, ep.value, source, ep)
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise self.invalid(
                f"entry point {name!r} from {source} is not a {base.__module__.split('.')[0]}.{base.__name__} "
                f"subclass: {obj!r}",
                **{self.noun: name},
            )
        return obj

    def missing_message(self, name: str) -> str:
        installed = ", ".join(self.names()) or "(none)"
        message = f"no {self.noun} named {name!r} is installed (installed: {installed})"
        close = difflib.get_close_matches(name, [*self.names(), *self.hints], n=1, cutoff=0.6)
        if name in self.hints:
            return f"{message}; {self.hints[name]}"
        if close and close[0] not in self.names():  # a plugin this project ships, not installed
            return f"{message}; did you mean {close[0]!r}? It is not installed: {self.hints[close[0]]}"
        if close:
            return f"{message}; did you mean {close[0]!r}?"
        return f"{message}; check the name"

    def _import(self, name: str, target: str, source: str, ep: EntryPoint | None = None) -> Any:
        try:
            if ep is not None:
                return ep.load()
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError as exc:
            raise self.invalid(
                f"{self.noun} {name!r} from {source}: {target} does not exist: {exc}", **{self.noun: name}
            ) from exc
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            hint = self.hints.get(name) or "reinstall it with its dependencies"
            raise MissingDependencyError(
                f"{self.noun} {name!r} from {source} failed to import ({target}): {exc}. It needs {missing!r}: {hint}",
                **{self.noun: name},
            ) from exc


def autoload_enabled() -> bool:
    return not os.environ.get(ENV_DISABLE_AUTOLOAD)


def entry_points(group: str) -> dict[str, list[EntryPoint]]:
    """The installed entry points of ``group`` by name ({} when autoload is switched off)."""
    if not autoload_enabled():
        return {}
    from importlib.metadata import entry_points as installed

    found: dict[str, list[EntryPoint]] = {}
    for ep in installed(group=group):
        found.setdefault(ep.name, []).append(ep)
    return found


def _dist(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist else ep.value


def _plugin_hint(name: str) -> str:
    return f"pip install mlpipe-{name} (the plugin in the mlpipe checkout: pip install ./backends/{name})"


BACKENDS = PluginKind(
    noun="backend",
    group="mlpipe.backends",
    builtins={"local": "mlpipe.local:LocalBackend"},
    hints={name: _plugin_hint(name) for name in ("dask", "kubeflow", "sagemaker", "vertex")},
    not_found=BackendNotFoundError,
    invalid=BackendError,
)
TRACKERS = PluginKind(
    noun="tracker",
    group="mlpipe.trackers",
    builtins={"mlflow": "mlpipe.integrations.mlflow:MlflowTracker"},
    hints={"mlflow": "pip install 'mlpipe[mlflow]'"},
    not_found=ConfigError,
    invalid=ConfigError,
)
MATERIALIZERS = PluginKind(noun="materializer", group="mlpipe.materializers")
