"""mlpipe.materializers: built-in formats, the cloudpickle fallback, registration and entry points."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlpipe as mp
from mlpipe import materializers
from mlpipe.errors import MaterializerError
from mlpipe.materializers import for_annotation, for_value, get_materializer, register_materializer
from mlpipe.store import ArtifactStore


class Point(pydantic.BaseModel):
    x: float
    y: float
    tags: list[str] = []


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


class CelsiusMaterializer(mp.Materializer):
    name = "test.celsius"
    version = "2"
    type_names = frozenset({f"{__name__}.Celsius"})

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        f.write(str(value.degrees).encode())
        return {"unit": "C"}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        return Celsius(float(bytes(data)))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"))


@pytest.fixture
def registry() -> Iterator[None]:
    """Restore the materializer registry and plugin state after a test changes them."""
    saved = list(materializers._registry)
    loaded = materializers._plugins_loaded
    yield
    materializers._registry[:] = saved
    materializers._plugins_loaded = loaded


def test_pandas_goes_to_parquet_and_round_trips(store: ArtifactStore) -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, None, 1.5]})
    info = store.put_value(df)
    assert info.materializer == "pandas.parquet"
    meta = store.meta(info.digest)
    assert meta["rows"] == 3 and meta["columns"] == ["a", "b", "c"]
    assert meta["type"] == "pandas:DataFrame"
    assert "fallback" not in meta
    assert store.get_bytes(store.object_path(info.digest))[:4] == b"PAR1"
    back = store.get_value(info.digest)
    pd.testing.assert_frame_equal(back, df)
    assert for_annotation(pd.DataFrame) is get_materializer("pandas.parquet")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype="float32").reshape(3, 4),
        np.arange(6, dtype="int16").reshape(2, 3).T,  # Fortran order
        np.array([True, False]),
        np.zeros((0, 3), dtype="complex128"),
        np.array(3.5),
    ],
)
def test_numpy_goes_to_npy_and_round_trips(store: ArtifactStore, array: np.ndarray) -> None:
    info = store.put_value(array)
    assert info.materializer == "numpy.npy"
    meta = store.meta(info.digest)
    assert meta["shape"] == list(array.shape) and meta["dtype"] == str(array.dtype)
    back = store.get_value(info.digest)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert for_annotation(np.ndarray) is get_materializer("numpy.npy")


def test_numpy_object_arrays_fall_back_to_pickle(store: ArtifactStore) -> None:
    info = store.put_value(np.array([{"a": 1}, None], dtype=object))
    assert info.materializer == "cloudpickle"


def test_pydantic_goes_to_canonical_json(store: ArtifactStore) -> None:
    point = Point(x=1, y=2.5, tags=["t"])
    info = store.put_value(point)
    assert info.materializer == "pydantic.json"
    raw = store.get_bytes(store.object_path(info.digest))
    assert json.loads(raw) == {"tags": ["t"], "x": 1.0, "y": 2.5}
    assert raw == b'{"tags":["t"],"x":1.0,"y":2.5}'
    back = store.get_value(info.digest)
    assert back == point and type(back) is Point
    assert store.get_value(info.digest, Point) == point


@pytest.mark.parametrize("value", [None, True, 3, 2.5, "text", [1, "a", None], {"b": 1, "a": [1.5, {"c": None}]}])
def test_json_values(store: ArtifactStore, value: Any) -> None:
    info = store.put_value(value)
    assert info.materializer == "json"
    assert store.get_value(info.digest) == value


def test_json_is_canonical_so_equal_dicts_share_an_object(store: ArtifactStore) -> None:
    a = store.put_value({"a": 1, "b": 2})
    b = store.put_value({"b": 2, "a": 1})
    assert a.digest == b.digest


def test_json_load_validates_against_the_annotation(store: ArtifactStore) -> None:
    info = store.put_value([1, 2])
    assert store.get_value(info.digest, list[float]) == [1.0, 2.0]


@pytest.mark.parametrize("value", [Opaque(3), (1, "a"), {1: "int keys"}, {"nan": float("nan")}, b"bytes"])
def test_cloudpickle_fallback_is_recorded_in_the_sidecar(store: ArtifactStore, value: Any) -> None:
    info = store.put_value(value)
    assert info.materializer == "cloudpickle"
    meta = store.meta(info.digest)
    assert meta["fallback"] is True
    assert meta["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    back = store.get_value(info.digest)
    if isinstance(value, Opaque):
        assert back.value == 3
    elif isinstance(value, dict) and "nan" in value:
        assert back["nan"] != back["nan"]
    else:
        assert back == value


def test_cloudpickle_from_another_python_is_refused(store: ArtifactStore) -> None:
    fallback = get_materializer("cloudpickle")
    with pytest.raises(MaterializerError, match=r"pickled by Python 2\.7 and cannot be loaded safely"):
        fallback.load(b"", None, {"python": "2.7"})


def test_unpicklable_value_names_the_type_and_the_fix(store: ArtifactStore) -> None:
    from resources.pipelines import Holder

    with pytest.raises(MaterializerError) as caught:
        store.put_value(Holder())
    message = str(caught.value)
    assert "no materializer can store a value of type Holder" in message
    assert "mp.register_materializer" in message
    assert "lock" in message
    assert caught.value.type == "Holder"
    assert caught.value.exit_code == 1
    # nothing half-written is left behind
    assert list(store.iter_objects()) == []
    tmp = Path(store.url, "objects", "tmp")  # small values are serialised in memory: often no temporary at all
    assert not tmp.exists() or not any(tmp.iterdir())


def test_register_materializer_wins_over_builtins(store: ArtifactStore, registry: None) -> None:
    assert for_value(Celsius(3)).name == "cloudpickle"
    registered = register_materializer(CelsiusMaterializer)
    assert isinstance(registered, CelsiusMaterializer)
    assert mp.register_materializer is register_materializer
    assert for_value(Celsius(3)) is registered
    assert for_annotation(Celsius) is registered
    assert registered.key == "test.celsius@2"
    info = store.put_value(Celsius(21.5))
    meta = store.meta(info.digest)
    assert (meta["materializer"], meta["materializer_version"], meta["unit"]) == ("test.celsius", "2", "C")
    assert store.get_value(info.digest).degrees == 21.5
    # registering the same class again is a no-op
    assert register_materializer(CelsiusMaterializer()) is registered


def test_register_materializer_errors(registry: None) -> None:
    with pytest.raises(MaterializerError, match=r"needs a mlpipe.Materializer subclass or instance"):
        register_materializer(object())  # type: ignore[arg-type]

    class Impostor(CelsiusMaterializer):
        pass

    register_materializer(CelsiusMaterializer)
    with pytest.raises(MaterializerError, match=r"a materializer named 'test.celsius' is already registered"):
        register_materializer(Impostor)


def test_register_last_keeps_builtins_first(registry: None) -> None:
    class GreedyJson(CelsiusMaterializer):
        name = "test.greedy"

        def handles_value(self, value: Any) -> bool:
            return True

    register_materializer(GreedyJson, first=False)
    assert for_value([1]).name == "json"
    assert for_value(Celsius(1)).name == "test.greedy"


def test_unknown_materializer_name(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(materializers, "_plugins_loaded", True)
    with pytest.raises(MaterializerError, match=r"no materializer named 'nope' is registered"):
        get_materializer("nope")


def _fake_entry_points(*eps: EntryPoint) -> Any:
    def entry_points(group: str | None = None, **_: Any) -> list[EntryPoint]:
        return [ep for ep in eps if ep.group == group]

    return entry_points


def test_entry_point_plugins_are_discovered(registry: None, monkeypatch: pytest.MonkeyPatch,
                                            store: ArtifactStore) -> None:
    ep = EntryPoint(name="celsius", value=f"{__name__}:CelsiusMaterializer", group="mlpipe.materializers")
    monkeypatch.setattr("importlib.metadata.entry_points", _fake_entry_points(ep))
    monkeypatch.setattr(materializers, "_plugins_loaded", False)
    monkeypatch.delenv("MLPIPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    # plugins load the first time a value matches no built-in materializer
    assert for_value(Celsius(1)).name == "test.celsius"
    info = store.put_value(Celsius(4))
    assert info.materializer == "test.celsius"


def test_entry_point_plugins_load_for_unknown_names(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="celsius", value=f"{__name__}:CelsiusMaterializer", group="mlpipe.materializers")
    monkeypatch.setattr("importlib.metadata.entry_points", _fake_entry_points(ep))
    monkeypatch.setattr(materializers, "_plugins_loaded", False)
    assert get_materializer("test.celsius").name == "test.celsius"


def test_broken_entry_point_names_the_plugin(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="broken", value="no_such_module_xyz:Thing", group="mlpipe.materializers")
    monkeypatch.setattr("importlib.metadata.entry_points", _fake_entry_points(ep))
    monkeypatch.setattr(materializers, "_plugins_loaded", False)
    with pytest.raises(MaterializerError, match=r"materializer plugin 'broken' \(no_such_module_xyz:Thing\)"):
        for_value(Celsius(1))


def test_plugin_autoload_can_be_disabled(registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(name="celsius", value=f"{__name__}:CelsiusMaterializer", group="mlpipe.materializers")
    monkeypatch.setattr("importlib.metadata.entry_points", _fake_entry_points(ep))
    monkeypatch.setattr(materializers, "_plugins_loaded", False)
    monkeypatch.setenv("MLPIPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert for_value(Celsius(1)).name == "cloudpickle"


def test_for_annotation() -> None:
    assert for_annotation(Any) is None
    assert for_annotation(int).name == "json"  # type: ignore[union-attr]
    assert for_annotation(dict[str, list[int]]).name == "json"  # type: ignore[union-attr]
    assert for_annotation(Point).name == "pydantic.json"  # type: ignore[union-attr]
    assert for_annotation(Opaque) is None
    assert for_annotation(tuple[int, int]) is None


def test_save_writes_through_a_file_object() -> None:
    buf = io.BytesIO()
    get_materializer("json").save({"b": 1, "a": 2}, buf)
    assert buf.getvalue() == b'{"a":2,"b":1}'


def test_pickle_of_a_class_that_is_not_importable_here(store: ArtifactStore, tmp_path: Path) -> None:
    import subprocess

    module = tmp_path / "gone_module_xyz.py"
    module.write_text("class Box:\n    def __init__(self, v):\n        self.v = v\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import gone_module_xyz\n"
        "from mlpipe.store import ArtifactStore\n"
        "print(ArtifactStore(sys.argv[2]).put_value(gone_module_xyz.Box(1)).digest)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), store.url], capture_output=True, text=True,
                         check=True)
    digest = out.stdout.strip()
    with pytest.raises(MaterializerError, match=r"cannot load a pickled gone_module_xyz.Box object: No module named"):
        store.get_value(digest)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(value=_json_values)
def test_property_json_values_round_trip_with_one_address(tmp_path_factory: pytest.TempPathFactory,
                                                          value: Any) -> None:
    store = ArtifactStore(str(tmp_path_factory.getbasetemp() / "json-prop"))
    info = store.put_value(value)
    assert info.materializer == "json"
    assert store.get_value(info.digest) == value
    if isinstance(value, dict):
        reordered = dict(reversed(list(value.items())))
        assert store.put_value(reordered).digest == info.digest


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ([{"a": 1}, {"a": 2, "b": 3}], "dict"),  # Parquet: a struct with every key, b=None, 3 -> 3.0
        ([[1, 2], [3]], "list"),  # numpy arrays
        ([(1, 2), (3, 4)], "tuple"),
        ([{1}, {2}], "set"),
        (pd.Series([1, None], dtype=object), "int"),  # float64 with NaN
        (pd.Series([1.5, None], dtype=object), "float"),
    ],
)
def test_frames_parquet_would_change_are_pickled_and_come_back_equal(
    store: ArtifactStore, column: Any, kind: str
) -> None:
    df = pd.DataFrame({"c": column, "n": [1, 2]})
    info = store.put_value(df)
    meta = store.meta(info.digest)
    assert (info.materializer, meta["fallback_from"]) == ("cloudpickle", "pandas.parquet")
    reason = f"ValueError: column 'c' holds {kind} values, which Parquet would not read back unchanged"
    assert meta["fallback_reason"] == reason
    back = ArtifactStore(store.url).get_value(info.digest)
    pd.testing.assert_frame_equal(back, df)
    assert list(back["c"]) == list(df["c"]) and [type(v) for v in back["c"]] == [type(v) for v in df["c"]]


def test_object_columns_parquet_keeps_stay_parquet(store: ArtifactStore) -> None:
    import datetime as dt
    import decimal

    df = pd.DataFrame({
        "s": pd.Series(["a", None], dtype=object), "b": [b"x", b"y"], "d": [decimal.Decimal("1.1"), None],
        "day": [dt.date(2020, 1, 1), None], "t": [dt.time(1, 2), None], "flag": pd.Series([True, None], dtype=object),
        "x": [1.5, 2.5],
    })  # fmt: skip
    info = store.put_value(df)
    assert info.materializer == "pandas.parquet"
    back = ArtifactStore(store.url).get_value(info.digest)
    for name in ("b", "d", "day", "t", "flag", "x"):
        assert list(back[name]) == list(df[name]), name
    assert list(back["s"].fillna("-")) == ["a", "-"]  # pandas 3 reads strings as its str dtype


_SCRIPT = """
import sys

import mlpipe as mp


class Thing:  # defined in __main__: cloudpickle stores the class by value
    def __init__(self, size: int) -> None:
        self.size = size

    def grown(self) -> "Thing":
        return Thing(self.size + SHIFT)


SHIFT = 1


@mp.step(cache=False)  # recomputed every run, in a new process each time
def make() -> Thing:
    return Thing(3)


@mp.step
def use(thing: Thing) -> int:
    print("use ran", file=sys.stderr)
    return thing.grown().size


@mp.pipeline
def things() -> int:
    return use(make())


if __name__ == "__main__":
    run = things.run()
    print(run.steps["make"].outputs["output"].digest, run.steps["use"].cached, run.output("use"))
"""


def test_classes_from_main_pickle_to_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "things.py"
    script.write_text(_SCRIPT)

    def run() -> list[str]:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    first, second = run(), run()
    assert first == [first[0], "False", "4"]
    assert second == [first[0], "True", "4"]  # same bytes: early cutoff, `use` is a hit
    script.write_text(_SCRIPT.replace("return Thing(self.size + SHIFT)", "return Thing(self.size + 2 * SHIFT)"))
    changed = run()
    assert changed[0] != first[0] and changed[1:] == ["False", "5"]  # another definition, another address


def test_a_value_the_chosen_format_cannot_hold_falls_back_to_pickle_with_the_reason(store: ArtifactStore) -> None:
    df = pd.DataFrame({"z": [1 + 2j, 3j]})  # Arrow has no complex type
    info = store.put_value(df)
    assert info.materializer == "cloudpickle"
    meta = store.meta(info.digest)
    assert meta["fallback"] is True
    assert meta["fallback_from"] == "pandas.parquet"
    assert meta["fallback_reason"].startswith("ArrowNotImplementedError")
    pd.testing.assert_frame_equal(store.get_value(info.digest), df)
    with pytest.raises(Exception, match="complex"):  # an explicit materializer is never replaced
        store.put_value(df, get_materializer("pandas.parquet"))
    mixed = pd.DataFrame({"mixed": [1, "x"]})
    with pytest.raises(ValueError, match=r"column 'mixed' holds int/str values"):
        store.put_value(mixed, get_materializer("pandas.parquet"))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (
            pd.DataFrame([[1, 2, "a"]], columns=[0, 1, "Labels"]),
            "column labels [0, 1, 'Labels'] would come back as ['0', '1', 'Labels'] from Parquet",
        ),
        (
            pd.DataFrame([[1, 2]], columns=[("a", 1), ("b", 2)]),
            "column labels [('a', 1), ('b', 2)] would come back as",
        ),
        (
            pd.DataFrame({"x": [1, 2]}, index=pd.Index([5, 6], name=0)),
            "the index (Index of ['int64'], names [0]) would come back as Index of ['int64'], names ['0']",
        ),
        (
            pd.DataFrame({"x": [1, 2]}, index=pd.Index([pd.Timestamp("2020-01-01"), "a"], dtype=object)),
            "the index holds mixed values",
        ),
        (pd.DataFrame({"c": pd.Categorical([1, 2])}), "column 'c' of dtype CategoricalDtype("),
        (
            pd.DataFrame({"s": pd.array(["a", "b"], dtype="string[python]")}),
            "column 's' of dtype <StringDtype(storage='python'",
        ),
    ],
    ids=["mixed labels", "tuple labels", "index name", "mixed index", "int categories", "python strings"],
)
def test_frames_whose_labels_index_or_dtypes_parquet_would_change_are_pickled(
    store: ArtifactStore, frame: pd.DataFrame, reason: str
) -> None:
    info = store.put_value(frame)
    meta = store.meta(info.digest)
    assert (info.materializer, meta["fallback_from"]) == ("cloudpickle", "pandas.parquet")
    assert reason in meta["fallback_reason"], meta["fallback_reason"]
    back = ArtifactStore(store.url).get_value(info.digest)
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert [type(c) for c in back.columns] == [type(c) for c in frame.columns]


@mp.step
def labelled() -> pd.DataFrame:
    return pd.DataFrame([[1, 2, "a"], [3, 4, "b"]], columns=[0, 1, "Labels"])


@mp.step
def first_column_total(df: pd.DataFrame) -> int:
    return int(df[0].sum())  # KeyError: 0 if the labels came back as strings


@mp.pipeline
def mixed_labels() -> int:
    return first_column_total(labelled())


def test_mixed_type_column_labels_reach_the_consumer_unchanged() -> None:
    run = mixed_labels.run()
    assert run.status == "succeeded", run.steps["first_column_total"].error
    assert run.output("first_column_total") == 4
    assert list(run.output("labelled").columns) == [0, 1, "Labels"]
    again = mixed_labels.run(cache=False)  # the consumer reads the pickled frame back from the store
    assert again.output("first_column_total") == 4


class Scored(pydantic.BaseModel):
    accuracy: float
    label: str = "ok"


seen_by_consumer: list[Any] = []


@mp.step
def scored_as_dict() -> Scored:
    return {"accuracy": 1, "label": "from a dict"}  # type: ignore[return-value]


@mp.step
def consume_scored(s: Scored) -> str:
    seen_by_consumer.append(s)
    return f"{type(s).__name__} {s.accuracy!r}"


@mp.pipeline
def scored_pipeline() -> str:
    return consume_scored(scored_as_dict())


def test_a_pydantic_step_returning_a_dict_stores_the_validated_model() -> None:
    seen_by_consumer.clear()
    run = scored_pipeline.run()
    assert run.status == "succeeded", {n: s.error for n, s in run.steps.items()}
    output = run.output("scored_as_dict")
    assert output == Scored(accuracy=1.0, label="from a dict") and type(output) is Scored
    assert run.output("consume_scored") == "Scored 1.0"
    assert seen_by_consumer == [output]
    info = run.steps["scored_as_dict"].outputs["output"]
    assert info.materializer == "pydantic.json"
    assert open_store_meta(info.digest)["type"].endswith("Scored")


def open_store_meta(digest: str) -> dict[str, Any]:
    from mlpipe.store import open_store

    return open_store(".mlpipe").meta(digest)


@mp.step
def scored_wrong() -> Scored:
    return {"accuracy": "high"}  # type: ignore[return-value]


@mp.pipeline
def scored_wrong_pipeline() -> Scored:
    return scored_wrong()


def test_a_dict_that_is_not_the_model_fails_the_step_and_stores_nothing() -> None:
    run = scored_wrong_pipeline.run()
    step = run.steps["scored_wrong"]
    assert step.status == "failed" and not step.outputs
    assert "output expected Scored" in (step.error or "") and "accuracy" in (step.error or "")
