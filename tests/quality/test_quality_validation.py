"""Schemas with every rule kind, passing and failing, and the report of every planted violation."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from pydantic import ValidationError

from mlpipe import quality as q
from mlpipe.fingerprint import fingerprint


def good_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "age": [20, 35, 41, 58, 63, 70],
            "score": [0.1, 0.5, 0.2, 0.9, 0.3, 0.7],
            "income": [1000.0, None, 2500.0, 3000.0, None, 1200.0],
            "city": ["berlin", "paris", "rome", "paris", "rome", "berlin"],
            "email": ["a@x.de", "b@y.fr", "c@z.it", "d@x.de", "e@y.fr", "f@z.it"],
            "shop": ["s1", "s1", "s2", "s2", "s3", "s3"],
            "day": [1, 2, 1, 2, 1, 2],
        }
    )


FULL = q.Schema(
    columns={
        "id": q.Column("int64", unique=True),
        "age": q.Column("int64", ge=18, le=99),
        "score": q.Column("float64", gt=0, lt=1),
        "income": q.Column("float64", ge=0, nullable=True),
        "city": q.Column("str", isin=["berlin", "paris", "rome"]),
        "email": q.Column("str", pattern=r"^[^@\s]+@[^@\s]+\.[a-z]+$"),
        "shop": q.Column("str"),
        "day": q.Column("int64"),
    },
    min_rows=3,
    max_rows=100,
    unique=("shop", "day"),
    strict=True,
    name="customers",
)


def test_every_rule_kind_passes_on_good_data() -> None:
    data, report = q.validate(good_frame(), FULL)
    assert report.passed, report.to_text()
    assert report.violations == []
    assert (report.rows, report.columns, report.schema_name) == (6, 8, "customers")
    assert report.summary() == "validation of 'customers' passed (6 rows, 8 columns)"
    pd.testing.assert_frame_equal(data, good_frame())


def _set(frame: pd.DataFrame, column: str, row: int, value: object) -> pd.DataFrame:
    frame = frame.copy()
    if isinstance(value, str) and frame[column].dtype != object and not pd.api.types.is_string_dtype(frame[column]):
        frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


# (how to break the good frame, column, rule, failing count, examples)
CASES = [
    (lambda f: f.assign(id=f["id"].astype("float64")), "id", "dtype", 6, ["float64"]),
    (lambda f: _set(f, "id", 1, 1), "id", "unique", 2, [1]),
    (lambda f: _set(f, "score", 2, None), "score", "nullable", 1, [None]),
    (lambda f: _set(f, "age", 0, 17), "age", "ge", 1, [17]),
    (lambda f: _set(f, "age", 0, 120), "age", "le", 1, [120]),
    (lambda f: _set(f, "score", 0, 0.0), "score", "gt", 1, [0.0]),
    (lambda f: _set(f, "score", 0, 1.0), "score", "lt", 1, [1.0]),
    (lambda f: _set(f, "city", 3, "atlantis"), "city", "isin", 1, ["atlantis"]),
    (lambda f: _set(f, "email", 4, "not-an-email"), "email", "pattern", 1, ["not-an-email"]),
    (lambda f: f.drop(columns=["shop", "day"]).assign(day=f["day"]), "shop", "required", 1, []),
    (lambda f: f.assign(extra=1), "extra", "unexpected", 1, []),
    (lambda f: f.head(2), None, "min_rows", 1, [2]),
    (lambda f: pd.concat([f] * 20, ignore_index=True).assign(id=range(120), day=range(120)),
     None, "max_rows", 1, [120]),
    (lambda f: _set(f, "day", 1, 1), "shop, day", "unique", 2, [["s1", 1], ["s1", 1]]),
]


@pytest.mark.parametrize(("breaker", "column", "rule", "failing", "examples"), CASES, ids=[c[2] for c in CASES])
def test_each_rule_kind_fails(breaker, column, rule, failing, examples) -> None:  # type: ignore[no-untyped-def]
    _data, report = q.validate(breaker(good_frame()), FULL)
    assert not report.passed
    found = [v for v in report.violations if v.rule == rule and v.column == column]
    assert found, report.to_text()
    assert found[0].failing == failing
    assert found[0].examples == examples


def test_report_lists_every_planted_violation() -> None:
    frame = pd.DataFrame(
        {
            "id": [0, 0, 2, 3, 4, 5, 6, 7],
            "age": [20, 30, -5, 200, 40, 50, 60, None],
            "income": [1.0, 2.0, 3.0, 4.0, -1.0, -2.0, 5.0, 6.0],
            "city": ["berlin", "paris", "rome", "rome", "rome", "atlantis", "paris", "paris"],
            "extra": [1] * 8,
        }
    )
    schema = q.Schema(
        columns={
            "id": q.Column("int64", unique=True),
            "age": q.Column("int64", ge=0, le=120),
            "income": q.Column("float64", ge=0, nullable=True),
            "city": q.Column("str", isin=["berlin", "paris", "rome"]),
            "zip": q.Column("str"),
        },
        min_rows=10,
        strict=True,
        name="users",
    )
    data, report = q.validate(frame, schema)
    assert data is frame
    got = {(v.column, v.rule): (v.failing, v.examples) for v in report.violations}
    assert got == {
        ("id", "unique"): (2, [0]),
        ("age", "dtype"): (8, ["float64"]),  # the null turned the int column into floats
        ("age", "nullable"): (1, [None]),
        ("age", "ge"): (1, [-5.0]),
        ("age", "le"): (1, [200.0]),
        ("income", "ge"): (2, [-1.0, -2.0]),
        ("city", "isin"): (1, ["atlantis"]),
        ("zip", "required"): (1, []),
        ("extra", "unexpected"): (1, []),
        (None, "min_rows"): (1, [8]),
    }
    # Schema order, then rule order; table rules last.
    assert [v.column for v in report.violations][:4] == ["id", "age", "age", "age"]
    assert report.violations[-1].rule == "min_rows"
    text = report.to_text()
    assert text.startswith("validation of 'users' failed: 10 violations in 6 columns and the table (8 rows)")
    for needle in ("unique", "dtype(int64)", "not null", "ge(0)", "le(120)", "isin(['berlin', 'paris', 'rome'])",
                   "required", "unexpected column", "min_rows(10)", "'atlantis'", "-5", "200"):
        assert needle in text, needle
    assert len(text.splitlines()) == 2 + len(report.violations)


def test_examples_are_distinct_and_capped() -> None:
    frame = pd.DataFrame({"x": [-1.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, 1.0]})
    _d, report = q.validate(frame, q.Schema(columns={"x": q.Column("float64", ge=0)}), max_examples=3)
    (violation,) = report.violations
    assert violation.failing == 7
    assert violation.examples == [-1.0, -2.0, -3.0]


def test_coerce_returns_converted_data() -> None:
    frame = pd.DataFrame({"n": ["1", "2", "3"]})
    data, report = q.validate(frame, q.Schema(columns={"n": q.Column("int64", coerce=True, ge=1)}))
    assert report.passed
    assert str(data["n"].dtype) == "int64"


def test_schema_definition_errors() -> None:
    with pytest.raises(ValidationError, match="min_rows=5 is larger than max_rows=2"):
        q.Schema(min_rows=5, max_rows=2)
    with pytest.raises(ValidationError, match="unique= names columns"):
        q.Schema(columns={"a": q.Column()}, unique=("a", "b"))
    with pytest.raises(ValidationError, match="Extra inputs"):
        q.Column("int64", between=3)
    assert q.Column("int64", ge=0) == q.Column(dtype="int64", ge=0)


def test_infer_schema_from_reference() -> None:
    reference = good_frame()
    schema = q.infer_schema(reference, name="ref", max_categories=3)
    assert schema.columns["age"] == q.Column("int64", ge=20, le=70)
    assert schema.columns["income"].nullable
    assert schema.columns["city"].isin == ("berlin", "paris", "rome")
    assert schema.columns["email"].isin is None  # 6 distinct values > max_categories
    assert q.validate(reference, schema)[1].passed
    _d, report = q.validate(_set(reference, "age", 0, 90), schema)
    assert [(v.column, v.rule) for v in report.violations] == [("age", "le")]
    wide = q.infer_schema(reference, margin=0.5)
    assert wide.columns["age"].le == 70 + 25


def test_validate_step_stop_raises_gate_error_when_called_eagerly() -> None:
    check = q.validate_step(FULL, on_failure="stop", name="check_customers")
    assert check.name == "check_customers" and check.gate
    _data, report = check(good_frame())
    assert report.passed
    with pytest.raises(q.QualityGateError) as info:
        check(_set(good_frame(), "age", 0, 5))
    assert isinstance(info.value.result, q.ValidationReport)
    assert "age" in str(info.value) and "ge(18)" in str(info.value)


def test_validate_step_warn_logs_and_continues(caplog: pytest.LogCaptureFixture) -> None:
    check = q.validate_step(FULL, on_failure="warn")
    assert not check.gate
    broken = _set(good_frame(), "city", 0, "atlantis")
    with caplog.at_level(logging.WARNING, logger="mlpipe.quality"):
        data, report = check(broken)
    assert not report.passed
    assert data is broken
    assert "isin" in caplog.text and "atlantis" in caplog.text


def test_validate_step_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        q.validate_step(FULL, on_failure="explode")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"mlpipe\.quality\.Schema"):
        q.validate_step({"a": 1})  # type: ignore[arg-type]


def test_schema_edits_change_the_step_fingerprint() -> None:
    """The schema is part of the step's code fingerprint, so editing a rule is a cache miss."""
    one = q.validate_step(q.Schema(columns={"a": q.Column(ge=0)}))
    same = q.validate_step(q.Schema(columns={"a": q.Column(ge=0)}))
    other = q.validate_step(q.Schema(columns={"a": q.Column(ge=1)}))
    assert fingerprint(one).digest == fingerprint(same).digest
    assert fingerprint(one).digest != fingerprint(other).digest


def test_other_dtypes_categories_booleans_timestamps_objects() -> None:
    frame = pd.DataFrame(
        {
            "cat": pd.Categorical(["a", "b", "z"]),
            "flag": [True, False, True],
            "t": pd.to_datetime(["2026-01-01", "2026-01-02", None]),
            "obj": pd.Series(["x", 1, None], dtype=object),
        }
    )
    schema = q.Schema(
        columns={
            "cat": q.Column("category", isin=["a", "b"]),
            "flag": q.Column("bool", isin=[True]),
            "t": q.Column(),
            "obj": q.Column(pattern="^x$", nullable=True),
        }
    )
    _d, report = q.validate(frame, schema)
    got = {(v.column, v.rule): v.examples for v in report.violations}
    assert got == {
        ("cat", "isin"): ["z"],
        ("flag", "isin"): [False],
        ("t", "nullable"): [None],
        ("obj", "pattern"): [1],
    }
    inferred = q.infer_schema(frame)
    assert inferred.columns["obj"].isin == (1, "x")
    assert q.validate(frame, inferred)[1].passed
