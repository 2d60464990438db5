"""Every exception mlpipe raises on purpose.

The hierarchy is small and flat. Each error carries its context as attributes
(``pipeline``, ``step``, ``argument``, ...) as well as in its message, and
inherits a builtin where the meaning matches, so ``except TypeError`` keeps
working for code that does not know mlpipe::

    MlpipeError
    ├── DefinitionError (TypeError)        a step or pipeline is defined wrongly
    │   └── StepSignatureError             a call does not match a step's signature
    ├── GraphError (ValueError)            the traced graph is invalid
    │   └── TypeMismatchError (TypeError)  producer and consumer annotations disagree
    ├── ParameterError (ValueError)        a pipeline parameter is unknown or invalid
    ├── OutputTypeError (TypeError)        a step returned what its annotation forbids
    ├── MaterializerError (TypeError)      no materializer can store / load a value
    ├── StoreError (OSError)               the artifact store cannot do what is asked
    │   ├── ObjectNotFoundError (FileNotFoundError)
    │   ├── DamagedFileError (ValueError)  a record, entry, sidecar or index is truncated or unreadable
    │   └── CorruptObjectError             an object's bytes no longer match its hash
    │       └── UntrustedObjectError       a pickle nothing trusted vouches for (never loaded)
    ├── ConfigError (ValueError)           mlpipe.toml / profile problems
    ├── BackendError                       a backend failed or refused
    │   ├── BackendNotFoundError (LookupError)
    │   ├── UnsupportedFeatureError        a backend cannot express what the pipeline asks
    │   └── MissingDependencyError (ImportError)
    ├── StepFailedError (RuntimeError)     a step raised, timed out or was skipped
    ├── RunNotFoundError (LookupError)
    └── TrackingError (ConnectionError)    the tracking server (MLflow) cannot be used

``exit_code`` says what the CLI returns for the error: 2 for usage and
validation problems, 1 for a pipeline that ran and failed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "BackendNotFoundError",
    "ConfigError",
    "CorruptObjectError",
    "DamagedFileError",
    "DefinitionError",
    "GraphError",
    "MaterializerError",
    "MissingDependencyError",
    "MlpipeError",
    "ObjectNotFoundError",
    "OutputTypeError",
    "ParameterError",
    "RunNotFoundError",
    "StepFailedError",
    "StepSignatureError",
    "StoreError",
    "TrackingError",
    "TypeMismatchError",
    "UnsupportedFeatureError",
    "UntrustedObjectError",
]


class MlpipeError(Exception):
    """Base of every error mlpipe raises on purpose.

    Keyword arguments given to the constructor become attributes, so callers can
    read ``err.step`` or ``err.pipeline`` instead of parsing the message.
    """

    exit_code: int = 2

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in context.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class DefinitionError(MlpipeError, TypeError):
    """A step or pipeline function cannot be used as defined."""


class StepSignatureError(DefinitionError):
    """A step was called with arguments that do not match its signature."""


class GraphError(MlpipeError, ValueError):
    """The traced pipeline graph is invalid (cycle, foreign handle, ...)."""


class TypeMismatchError(GraphError, TypeError):
    """A producer's return annotation does not fit a consumer's parameter."""


class ParameterError(MlpipeError, ValueError):
    """A pipeline parameter is unknown, missing or of the wrong type."""


class OutputTypeError(MlpipeError, TypeError):
    """A step returned a value that does not match its return annotation."""

    exit_code = 1


class MaterializerError(MlpipeError, TypeError):
    """No materializer can store or load a value."""

    exit_code = 1


class StoreError(MlpipeError, OSError):
    """The artifact store cannot complete an operation."""

    exit_code = 1


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """An object is not in the store."""


class DamagedFileError(StoreError, ValueError):
    """A JSON document of the store (record, cache entry, sidecar, IR) or the index cannot be read; names the file."""


class CorruptObjectError(StoreError):
    """An object's bytes do not match the content hash it is stored under."""


class UntrustedObjectError(CorruptObjectError):
    """A pickle whose bytes no trusted record vouches for; it is refused, never unpickled (see mlpipe.trust)."""


class ConfigError(MlpipeError, ValueError):
    """The configuration file or a profile is invalid."""


class BackendError(MlpipeError):
    """A backend failed or refused an operation."""

    exit_code = 1


class BackendNotFoundError(BackendError, LookupError):
    """No backend is installed under the requested name."""

    exit_code = 2


class UnsupportedFeatureError(BackendError):
    """The backend cannot express a feature the pipeline asks for."""

    exit_code = 2


class MissingDependencyError(BackendError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    exit_code = 2


class StepFailedError(MlpipeError, RuntimeError):
    """A step raised, timed out, or could not run."""

    exit_code = 1


class RunNotFoundError(MlpipeError, LookupError):
    """No run with the given id is recorded in the store."""


class TrackingError(MlpipeError, ConnectionError):
    """The tracking server named by the profile cannot be reached or used; the message names its URI."""
