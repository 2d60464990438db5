"""Materializers: how values of each type become bytes in the store, and back.

Built in, tried in this order: pandas DataFrame → Parquet (pyarrow), numpy
array → ``.npy``, pydantic model → canonical JSON, JSON-able value →
canonical JSON, and cloudpickle as the fallback for anything else (recorded as
such in the object's sidecar, with the Python version, since a pickle only
loads on the same Python minor version).

Types are matched by their qualified class names, so this module never
imports pandas or numpy to decide whether a value is one of theirs. Users add
materializers with :func:`register_materializer`; third-party packages add
them through the ``mlpipe.materializers`` entry point group, loaded the first
time a value matches no built-in materializer.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import sys
import threading
import typing
from abc import ABC, abstractmethod
from typing import IO, Any, ClassVar

from mlpipe.errors import MaterializerError, MlpipeError
from mlpipe.hashing import canonical_json, json_safe
from mlpipe.typecheck import is_any, type_name, validate

__all__ = [
    "HtmlReport",
    "Materializer",
    "for_annotation",
    "for_value",
    "get_materializer",
    "register_materializer",
    "type_path",
]

ENTRY_POINT_GROUP = "mlpipe.materializers"
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def type_path(tp: type) -> str:
    return f"{tp.__module__}:{tp.__qualname__}"


def import_type(path: str) -> Any:
    """The class recorded in a sidecar as ``module:qualname``.

    Raises:
        MaterializerError: the class cannot be imported here (for example a
            class defined in ``__main__`` of another process).
    """
    module, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise MaterializerError(
            f"cannot load a {qualname} object: its class {module}.{qualname} is not importable in this process "
            f"({exc}). Define the class in an importable module, or pass its type when loading",
            type=path,
        ) from exc
    return obj


def _mro_names(tp: type) -> set[str]:
    try:
        return {f"{c.__module__}.{c.__qualname__}" for c in tp.__mro__}
    except AttributeError:
        return set()


class Materializer(ABC):
    """Turns values of some types into bytes and back.

    Subclasses set ``name`` (unique, stable: it is written into sidecars),
    ``version`` (part of every cache key of outputs it stores: bump it when the
    byte format changes) and either ``type_names`` (qualified class names, which
    avoids importing the library) or override :meth:`handles_type`.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    type_names: ClassVar[frozenset[str]] = frozenset()
    #: File suffix when the values it stores are reports meant for a person (``"html"``):
    #: the executor then copies each such output to ``runs/<run>/reports/<step>.<output>.<suffix>``
    #: and lists it under ``reports`` in the step record, which ``mlpipe runs show`` prints.
    report_suffix: ClassVar[str | None] = None

    def handles_type(self, tp: Any) -> bool:
        """Whether values annotated/typed ``tp`` are stored by this materializer."""
        return isinstance(tp, type) and bool(self.type_names & _mro_names(tp))

    def handles_value(self, value: Any) -> bool:
        return self.handles_type(type(value))

    def buffers(self, value: Any) -> tuple[list[Any], dict[str, Any]] | None:
        """The exact bytes :meth:`save` would write, as in-memory buffers, or None.

        Materializers whose values already hold their bytes (numpy arrays) return
        them, with the sidecar extras: the store then hashes them in memory on a
        second thread while :meth:`save` writes into the destination file.
        """
        return None

    @abstractmethod
    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        """Write ``value`` to ``f``; return extra sidecar fields (may be empty)."""

    @abstractmethod
    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        """Rebuild the value from the bytes ``save`` wrote."""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


class PandasMaterializer(Materializer):
    name = "pandas.parquet"
    # 2: frames whose object columns Parquet would change are refused (the store pickles them);
    # 3: so are frames whose labels, index or dtypes would not come back as they are
    version = "3"
    # pandas >= 3 reports DataFrame's module as "pandas", earlier versions as "pandas.core.frame".
    type_names = frozenset({"pandas.DataFrame", "pandas.core.frame.DataFrame"})
    # What an object column may hold (pandas' infer_dtype, nulls skipped) and still read back
    # as the same values: strings, bytes, decimals, dates, times, booleans.
    _FAITHFUL = frozenset({"string", "bytes", "decimal", "date", "time", "boolean", "empty"})

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        self._refuse_lossy_columns(value)
        self._refuse_lossy_schema(value)
        value.to_parquet(f, engine="pyarrow", compression="snappy")
        return {"rows": len(value), "columns": [str(c) for c in value.columns][:50]}

    def _refuse_lossy_columns(self, value: Any) -> None:
        """Raise ValueError when Parquet would read a column back as different values.

        Lists, tuples and sets come back as numpy arrays, dicts as structs with
        every key (missing ones None, ints beside them turned to floats), and
        object columns of numbers with None as float64 with NaN. A step served
        from the cache must get what the step returned, so such frames are
        refused here and the store falls back to cloudpickle (recorded in the
        sidecar as ``fallback_from``/``fallback_reason``). Numeric, bool,
        datetime, categorical and string dtypes are not scanned.
        """
        from pandas.api.types import infer_dtype

        for name, column in value.items():
            if column.dtype == object:
                kind = infer_dtype(column, skipna=True)
                if kind not in self._FAITHFUL:
                    types = sorted({type(v).__name__ for v in column.dropna().head(1000)})
                    raise ValueError(
                        f"column {name!r} holds {'/'.join(types) or kind} values, "
                        "which Parquet would not read back unchanged"
                    )

    def _refuse_lossy_schema(self, value: Any) -> None:
        """Raise ValueError when the frame's labels, index or dtypes would not come back as they are.

        Parquet turns column labels of mixed types (``[0, 1, "Labels"]``) or
        tuples into strings, and an index or dtype it cannot express into
        another. The frame's zero-row slice is written and read back (about a
        millisecond, whatever the size) and compared: column labels with their
        types, the column index's kind and names, the index's kind, dtype and
        names, and the dtype of every column that is not ``object`` (object
        columns are checked by value above, and strings in them come back as
        pandas' string dtype).
        """
        import warnings

        import pandas as pd
        from pandas.api.types import infer_dtype, is_object_dtype

        for level in range(value.index.nlevels):
            index = value.index.get_level_values(level)
            if is_object_dtype(index.dtype):
                kind = infer_dtype(index, skipna=True)
                if kind not in self._FAITHFUL:
                    raise ValueError(f"the index holds {kind} values, which Parquet would not read back unchanged")
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # pandas warns about mixed labels; the comparison below says it exactly
            warnings.simplefilter("ignore")
            value.iloc[:0].to_parquet(buffer, engine="pyarrow")
        buffer.seek(0)
        back = pd.read_parquet(buffer, engine="pyarrow")
        labels = [(type(c).__name__, c) for c in value.columns]
        if labels != [(type(c).__name__, c) for c in back.columns]:
            raise ValueError(
                f"column labels {list(value.columns)!r} would come back as {list(back.columns)!r} from Parquet"
            )
        if type(back.columns) is not type(value.columns) or list(back.columns.names) != list(value.columns.names):
            raise ValueError(
                f"the column index ({type(value.columns).__name__}, names {list(value.columns.names)}) would come "
                f"back as {type(back.columns).__name__}, names {list(back.columns.names)} from Parquet"
            )
        if (
            type(back.index) is not type(value.index)
            or list(back.index.names) != list(value.index.names)
            or [str(d) for d in _index_dtypes(back.index)] != [str(d) for d in _index_dtypes(value.index)]
        ):
            raise ValueError(
                f"the index ({type(value.index).__name__} of {[str(d) for d in _index_dtypes(value.index)]}, "
                f"names {list(value.index.names)}) would come back as {type(back.index).__name__} of "
                f"{[str(d) for d in _index_dtypes(back.index)]}, names {list(back.index.names)} from Parquet"
            )
        for position, (label, dtype) in enumerate(value.dtypes.items()):
            returned = back.dtypes.iloc[position]
            if not is_object_dtype(dtype) and returned != dtype:
                raise ValueError(f"column {label!r} of dtype {dtype!r} would come back as {returned!r} from Parquet")

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(data)).to_pandas()


def _index_dtypes(index: Any) -> list[Any]:
    return [index.get_level_values(level).dtype for level in range(index.nlevels)]


class NumpyMaterializer(Materializer):
    name = "numpy.npy"
    version = "1"
    type_names = frozenset({"numpy.ndarray"})

    def handles_value(self, value: Any) -> bool:
        return self.handles_type(type(value)) and not value.dtype.hasobject

    def buffers(self, value: Any) -> tuple[list[Any], dict[str, Any]] | None:
        import numpy as np

        if not value.flags.c_contiguous:
            return None
        header = io.BytesIO()
        self._write_header(value, header)
        data = memoryview(value.reshape(-1).view(np.uint8))
        return [header.getvalue(), data], {"shape": list(value.shape), "dtype": str(value.dtype)}

    @staticmethod
    def _write_header(value: Any, f: IO[bytes]) -> None:
        fmt = __import__("numpy").lib.format
        header = fmt.header_data_from_array_1_0(value)
        try:
            fmt.write_array_header_1_0(f, header)
        except ValueError:  # a header over 64 KiB needs format 2.0
            fmt.write_array_header_2_0(f, header)

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        import numpy as np

        fmt = np.lib.format
        if value.flags.c_contiguous:
            # The same bytes np.save writes, without its chunked copies: the array's
            # own buffer goes straight to the file. Into a real file, through
            # ndarray.tofile as np.save does: on this project's machines one
            # write(2) from numpy fills the page cache about 30% faster than the
            # same write(2) from FileIO.write (measured, not understood).
            self._write_header(value, f)
            if isinstance(f, io.FileIO):
                value.tofile(f)
            else:
                f.write(memoryview(value.reshape(-1).view(np.uint8)))
        else:
            fmt.write_array(f, value, allow_pickle=False)
        return {"shape": list(value.shape), "dtype": str(value.dtype)}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        import numpy as np

        fmt = np.lib.format
        view = memoryview(data)
        header = io.BytesIO(bytes(view[:65536]))
        version = fmt.read_magic(header)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(header)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(header)
        else:
            return fmt.read_array(io.BytesIO(bytes(view)), allow_pickle=False)
        count = 1
        for dim in shape:
            count *= dim
        # Zero-copy on the store's buffer (a private memory map for large objects).
        arr = np.frombuffer(view, dtype=dtype, count=count, offset=header.tell()) if count else np.empty(0, dtype)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        return arr.copy() if view.readonly else arr


class PydanticMaterializer(Materializer):
    name = "pydantic.json"
    version = "1"
    type_names = frozenset({"pydantic.main.BaseModel"})

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        f.write(canonical_json(value.model_dump(mode="json")).encode())
        return {}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        cls = annotation if self.handles_type(annotation) else import_type(meta["type"])
        return cls.model_validate_json(bytes(data))


class HtmlReport(str):
    """A self-contained HTML document returned by a step (a drift report, an evaluation page).

    It is a ``str``; annotating an output ``-> HtmlReport`` stores it as an
    ``.html`` report that the run record lists under ``reports``.
    """

    __slots__ = ()


class HtmlReportMaterializer(Materializer):
    name = "html"
    version = "1"
    type_names = frozenset({"mlpipe.materializers.HtmlReport"})
    report_suffix = "html"

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        f.write(str(value).encode("utf-8"))
        return {}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        return HtmlReport(bytes(data).decode("utf-8"))


_JSON_TYPES = (type(None), bool, int, float, str, list, dict)


class JsonMaterializer(Materializer):
    name = "json"
    version = "1"

    def handles_type(self, tp: Any) -> bool:
        if tp in _JSON_TYPES:
            return True
        origin = typing.get_origin(tp)
        if origin in (list, dict):
            return all(self.handles_type(a) for a in typing.get_args(tp))
        return False

    def handles_value(self, value: Any) -> bool:
        return json_safe(value)

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        f.write(canonical_json(value).encode())
        return {}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        value = json.loads(bytes(data))
        return value if is_any(annotation) else validate(annotation, value)


_stable_ids = threading.local()
_stable_ids_installed = False


def _stable_class_ids() -> None:
    """Make cloudpickle name a class it pickles by value after the class, not after a random uuid.

    cloudpickle tags every class it pickles by value (defined in ``__main__``, a
    notebook, a function) with an id that lets repeated loads in one process
    share one class object. The id is ``uuid4()``, so the same value pickles to
    different bytes in every process: a new address each run, no early cutoff,
    no dedup. Here the id is the SHA-256 of the class pickled by value (its own
    id left as a placeholder meanwhile), the same in every process for the same
    definition. Classes with equal definitions share an id, which is what the
    id is for. With a cloudpickle that lacks these internals, ids stay random.
    """
    global _stable_ids_installed
    if _stable_ids_installed:
        return
    from cloudpickle import cloudpickle as cp

    by_class = getattr(cp, "_DYNAMIC_CLASS_TRACKER_BY_CLASS", None)
    by_id = getattr(cp, "_DYNAMIC_CLASS_TRACKER_BY_ID", None)
    lock = getattr(cp, "_DYNAMIC_CLASS_TRACKER_LOCK", None)
    if by_class is None or by_id is None or lock is None or not hasattr(cp, "_get_or_create_tracker_id"):
        _stable_ids_installed = True
        return

    def tracker_id(class_def: type) -> str:
        known: str | None = by_class.get(class_def)
        if known is not None:
            return known
        pending = getattr(_stable_ids, "pending", None)
        if pending is None:
            pending = _stable_ids.pending = set()
        if class_def in pending:  # the class refers to itself while its definition is hashed
            return "0" * 32
        pending.add(class_def)
        try:
            blob = cp.dumps(class_def, protocol=5)
        finally:
            pending.discard(class_def)
        with lock:
            found: str = by_class.setdefault(class_def, hashlib.sha256(blob).hexdigest()[:32])
            by_id.setdefault(found, class_def)
        return found

    cp._get_or_create_tracker_id = tracker_id
    _stable_ids_installed = True


class CloudpickleMaterializer(Materializer):
    """The fallback. Pickles load only on the Python minor version that wrote them."""

    name = "cloudpickle"
    version = "1"

    def handles_type(self, tp: Any) -> bool:
        return False  # never chosen statically: only as the recorded fallback

    def handles_value(self, value: Any) -> bool:
        return True

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        import cloudpickle

        _stable_class_ids()
        try:
            cloudpickle.dump(value, f, protocol=5)
        except Exception as exc:  # pickling can fail with any error type
            raise MaterializerError(
                f"no materializer can store a value of type {type_name(type(value))}: cloudpickle failed "
                f"({type(exc).__name__}: {exc}). Register one with mp.register_materializer(...) "
                "(see docs/materializers.md), or return a different type",
                type=type_name(type(value)),
            ) from exc
        return {"python": PY_VERSION, "fallback": True}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        import cloudpickle

        written = meta.get("python")
        if written and written != PY_VERSION:
            raise MaterializerError(
                f"this object was pickled by Python {written} and cannot be loaded safely by Python "
                f"{PY_VERSION}; run with Python {written} or give the type a materializer",
                python=written,
            )
        try:
            return cloudpickle.loads(data)
        except (ImportError, AttributeError) as exc:  # pickled by reference to a module or class not found here
            kind = meta.get("type", "?").replace(":", ".")
            raise MaterializerError(
                f"cannot load a pickled {kind} object: {exc}. Run from the project whose code defined it (so the "
                "module is importable), or give the type a materializer",
                type=kind,
            ) from exc


_lock = threading.Lock()
_registry: list[Materializer] = [
    PandasMaterializer(),
    NumpyMaterializer(),
    PydanticMaterializer(),
    HtmlReportMaterializer(),
    JsonMaterializer(),
]
_fallback = CloudpickleMaterializer()
_plugins_loaded = False


def register_materializer(materializer: Materializer | type[Materializer], *, first: bool = True) -> Materializer:
    """Register a materializer. With ``first=True`` (default) it wins over the built-ins.

    Raises:
        MaterializerError: if it is not a Materializer or its name is taken.
    """
    if isinstance(materializer, type) and issubclass(materializer, Materializer):
        materializer = materializer()
    if not isinstance(materializer, Materializer):
        raise MaterializerError(
            f"register_materializer() needs a mlpipe.Materializer subclass or instance, got {materializer!r}"
        )
    with _lock:
        for existing in _registry:
            if existing.name == materializer.name:
                if type(existing) is type(materializer):
                    return existing
                raise MaterializerError(
                    f"a materializer named {materializer.name!r} is already registered "
                    f"({type(existing).__qualname__}); choose another name",
                    name=materializer.name,
                )
        if first:
            _registry.insert(0, materializer)
        else:
            _registry.append(materializer)
    return materializer


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from mlpipe.plugins import MATERIALIZERS

    for name, eps in MATERIALIZERS.entry_points().items():
        try:
            obj = MATERIALIZERS.load(name)
        except MlpipeError as exc:  # a broken plugin must say which one
            ep = eps[0]
            raise MaterializerError(
                f"materializer plugin {name!r} ({ep.value}) from distribution "
                f"{ep.dist.name if ep.dist else '?'} failed to load: {exc}",
            ) from exc
        register_materializer(obj, first=False)


def for_value(value: Any) -> Materializer:
    """The materializer that will store ``value`` (cloudpickle when nothing else fits)."""
    for m in _registry:
        if m.handles_value(value):
            return m
    if not _plugins_loaded:
        _load_plugins()
        return for_value(value)
    return _fallback


def for_annotation(tp: Any) -> Materializer | None:
    """The materializer chosen statically for an annotation, or None when only the value decides.

    A type no built-in handles loads the plugins first, so the choice (and with
    it the cache key) is the same before and after a plugin is first used.
    """
    if is_any(tp):
        return None
    for m in _registry:
        try:
            if m.handles_type(tp):
                return m
        except TypeError:
            continue
    if not _plugins_loaded:
        _load_plugins()
        return for_annotation(tp)
    return None


def get_materializer(name: str) -> Materializer:
    for m in _registry:
        if m.name == name:
            return m
    if name == _fallback.name:
        return _fallback
    if not _plugins_loaded:
        _load_plugins()
        return get_materializer(name)
    raise MaterializerError(
        f"no materializer named {name!r} is registered; install or register the package that provides it",
        name=name,
    )


def report_suffix(name: str) -> str | None:
    """The report file suffix of the registered materializer ``name``, or None when it stores no reports."""
    for m in _registry:
        if m.name == name:
            return m.report_suffix
    return None


def registry_signature() -> str:
    """Names and versions of every registered materializer, for cache keys of ``Any`` outputs."""
    _load_plugins()
    return ",".join(m.key for m in [*_registry, _fallback])
