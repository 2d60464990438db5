"""Data validation: a declarative DataFrame schema, checked by pandera, and a typed report.

A :class:`Schema` is plain data (a pydantic model): per column a dtype,
nullability, uniqueness, a range and allowed values or a pattern, plus
row-count bounds and uniqueness over several columns. Being data, it is
hashed into the code fingerprint of the step that uses it, so editing a rule
re-runs the validation instead of serving a stale cache hit. :func:`validate`
translates it to a ``pandera.pandas.DataFrameSchema``, validates lazily (every
violation, not the first) and maps pandera's failure cases to a
:class:`ValidationReport`: one :class:`Violation` per column and rule, with
the failing count and example values. :func:`validate_step` wraps it as a
pipeline step that stops the pipeline (a quality gate) or warns and continues.

Drift between two data sets lives in :mod:`mlpipe.quality.drift`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlpipe.quality.base import QualityGateError, QualityResult
from mlpipe.step import Step, step

if TYPE_CHECKING:
    import pandera.pandas as pa

__all__ = [
    "Column",
    "Schema",
    "Validated",
    "ValidationReport",
    "Violation",
    "infer_schema",
    "validate",
    "validate_step",
]

logger = logging.getLogger("mlpipe.quality")

Scalar = bool | int | float | str | None

# Rules in the order they are reported for a column.
_RULE_ORDER = ("required", "dtype", "nullable", "unique", "ge", "gt", "le", "lt", "isin", "pattern")


class Column(BaseModel):
    """The rules for one column. Every rule is optional; ``Column()`` only requires the column to exist.

    Args:
        dtype: pandas dtype name: ``"int64"``, ``"float64"``, ``"str"``, ``"bool"``,
            ``"category"``, ``"datetime64[ns]"``... (positional, ``Column("int64", ge=0)``).
        nullable: Whether missing values are allowed.
        unique: Whether every value must be distinct.
        required: Whether the column must be present.
        ge, gt, le, lt: Range bounds (``>=``, ``>``, ``<=``, ``<``).
        isin: The allowed values.
        pattern: A regular expression every (string) value must match from its start.
        coerce: Convert the column to ``dtype`` before checking.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: str | None = None
    nullable: bool = False
    unique: bool = False
    required: bool = True
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    isin: tuple[Scalar, ...] | None = None
    pattern: str | None = None
    coerce: bool = False

    def __init__(self, dtype: str | None = None, /, **rules: Any) -> None:
        if dtype is not None:
            rules["dtype"] = dtype
        super().__init__(**rules)


class Schema(BaseModel):
    """A DataFrame schema: column rules plus table rules.

    Args:
        columns: Rules per column name.
        min_rows, max_rows: Bounds on the number of rows.
        unique: Columns whose combination must be unique (a composite key).
        strict: Columns not in ``columns`` are violations.
        name: A name for reports and errors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    columns: dict[str, Column] = Field(default_factory=dict)
    min_rows: int | None = Field(default=None, ge=0)
    max_rows: int | None = Field(default=None, ge=0)
    unique: tuple[str, ...] | None = None
    strict: bool = False
    name: str = "data"

    @model_validator(mode="after")
    def _check(self) -> Schema:
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"min_rows={self.min_rows} is larger than max_rows={self.max_rows}")
        missing = [c for c in self.unique or () if c not in self.columns]
        if missing:
            raise ValueError(f"unique= names columns the schema does not declare: {missing}")
        return self


class Violation(BaseModel):
    """One broken rule.

    Attributes:
        column: The column, ``"a, b"`` for a composite key, None for a table rule.
        rule: ``required``, ``unexpected``, ``dtype``, ``nullable``, ``unique``, ``ge``,
            ``gt``, ``le``, ``lt``, ``isin``, ``pattern``, ``min_rows``, ``max_rows`` or a
            pandera check name.
        check: The rule with its argument as declared, e.g. ``ge(0)`` or ``isin(['a', 'b'])``.
        failing: How many values (or rows) break it.
        examples: A few of the failing values (the actual dtype, or row count, for those rules).
    """

    model_config = ConfigDict(frozen=True)

    column: str | None
    rule: str
    check: str
    failing: int
    examples: list[Any] = Field(default_factory=list)

    def describe(self) -> str:
        where = self.column if self.column is not None else "(table)"
        shown = ", ".join(_short(v) for v in self.examples)
        return f"{where}: {self.check} fails for {self.failing}" + (f" (e.g. {shown})" if shown else "")


class ValidationReport(QualityResult):
    """The outcome of validating a DataFrame against a :class:`Schema`.

    Attributes:
        schema_name: The schema's name.
        rows: Rows validated.
        columns: Columns in the data.
        violations: Every broken rule, in schema order.
    """

    kind: Literal["validation"] = "validation"
    schema_name: str = "data"
    rows: int = 0
    columns: int = 0
    violations: list[Violation] = Field(default_factory=list)

    def summary(self) -> str:
        if self.passed:
            return f"validation of {self.schema_name!r} passed ({self.rows} rows, {self.columns} columns)"
        cols = {v.column for v in self.violations if v.column is not None}
        where = [f"{len(cols)} column{'s' if len(cols) != 1 else ''}"] if cols else []
        if any(v.column is None for v in self.violations):
            where.append("the table")
        n = len(self.violations)
        return (
            f"validation of {self.schema_name!r} failed: {n} violation{'s' if n != 1 else ''} "
            f"in {' and '.join(where)} ({self.rows} rows)"
        )

    def to_text(self) -> str:
        """The summary and a table with one line per violation (what a failed gate prints)."""
        if self.passed:
            return self.summary()
        rows = [("column", "rule", "failing", "examples")]
        for v in self.violations:
            rows.append(
                (
                    v.column if v.column is not None else "(table)",
                    v.check,
                    str(v.failing),
                    ", ".join(_short(e) for e in v.examples),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [self.summary()]
        for r in rows:
            lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip())
        return "\n".join(lines)


class Validated(NamedTuple):
    """What a validation step returns: the data (coerced when the schema says so) and the report."""

    data: pd.DataFrame
    report: ValidationReport


# -- schema -> pandera ---------------------------------------------------------------------


def _pandera() -> Any:
    try:
        import pandera.pandas as pa
    except ImportError as exc:
        from mlpipe.errors import MissingDependencyError

        raise MissingDependencyError(
            f"data validation needs pandera ({exc}); install it with: pip install 'mlpipe[data]'"
        ) from exc
    return pa


def _column_checks(col: Column) -> list[tuple[str, str, Any]]:
    """(rule, label, pandera check) for each value rule of a column, in check_number order."""
    pa = _pandera()
    out: list[tuple[str, str, Any]] = []
    for rule, method in (("ge", "ge"), ("gt", "gt"), ("le", "le"), ("lt", "lt")):
        bound = getattr(col, rule)
        if bound is not None:
            out.append((rule, f"{rule}({_short(bound)})", getattr(pa.Check, method)(bound)))
    if col.isin is not None:
        out.append(("isin", f"isin({list(col.isin)!r})", pa.Check.isin(list(col.isin))))
    if col.pattern is not None:
        out.append(("pattern", f"pattern({col.pattern!r})", pa.Check.str_matches(col.pattern)))
    return out


def _table_checks(schema: Schema) -> list[tuple[str, str, Any]]:
    pa = _pandera()
    out: list[tuple[str, str, Any]] = []
    if schema.min_rows is not None:
        n = schema.min_rows
        out.append(("min_rows", f"min_rows({n})", pa.Check(lambda df: len(df) >= n, error=f"min_rows({n})")))
    if schema.max_rows is not None:
        m = schema.max_rows
        out.append(("max_rows", f"max_rows({m})", pa.Check(lambda df: len(df) <= m, error=f"max_rows({m})")))
    return out


def to_pandera(schema: Schema) -> pa.DataFrameSchema:
    """The ``pandera.pandas.DataFrameSchema`` that checks ``schema``."""
    pandera = _pandera()
    columns = {
        name: pandera.Column(
            col.dtype,
            [c for _r, _l, c in _column_checks(col)],
            nullable=col.nullable,
            unique=col.unique,
            required=col.required,
            coerce=col.coerce,
            name=name,
        )
        for name, col in schema.columns.items()
    }
    built = pandera.DataFrameSchema(
        columns,
        checks=[c for _r, _l, c in _table_checks(schema)],
        strict=schema.strict,
        unique=list(schema.unique) if schema.unique else None,
        name=schema.name,
    )
    return cast("pa.DataFrameSchema", built)


# -- validation ----------------------------------------------------------------------------


def validate(df: pd.DataFrame, schema: Schema, *, max_examples: int = 5) -> tuple[pd.DataFrame, ValidationReport]:
    """Check ``df`` against ``schema`` and report every violation.

    Args:
        df: The data.
        schema: The rules.
        max_examples: How many distinct failing values each violation keeps.

    Returns:
        The data (coerced where the schema asks for it; unchanged when validation fails)
        and the :class:`ValidationReport`.
    """
    pa = _pandera()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"validate() needs a pandas DataFrame, got {type(df).__name__}")
    try:
        checked = to_pandera(schema).validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        violations = _violations(exc.failure_cases, df, schema, max_examples)
        return df, ValidationReport(
            passed=False, schema_name=schema.name, rows=len(df), columns=df.shape[1], violations=violations
        )
    return checked, ValidationReport(passed=True, schema_name=schema.name, rows=len(df), columns=df.shape[1])


def _violations(cases: pd.DataFrame, df: pd.DataFrame, schema: Schema, max_examples: int) -> list[Violation]:
    column_rules = {name: _column_checks(col) for name, col in schema.columns.items()}
    table_rules = _table_checks(schema)
    groups: dict[tuple[str | None, str, str], list[tuple[Any, Any]]] = {}
    for rec in cases.to_dict("records"):
        check = str(rec["check"])
        column = rec["column"] if isinstance(rec["column"], str) else None
        number = rec["check_number"]
        has_number = number is not None and not (isinstance(number, float) and math.isnan(number))
        failure, index = rec["failure_case"], rec["index"]
        key: tuple[str | None, str, str]
        if check == "column_in_dataframe":
            key = (str(failure), "required", "required")
        elif check == "column_in_schema":
            key = (str(failure), "unexpected", "unexpected column")
        elif check == "not_nullable":
            key = (column, "nullable", "not null")
        elif check == "field_uniqueness":
            key = (column, "unique", "unique")
        elif check == "multiple_fields_uniqueness":
            key = (", ".join(schema.unique or ()), "unique", f"unique({', '.join(schema.unique or ())})")
        elif check.startswith("dtype("):
            expected = schema.columns[column].dtype if column in schema.columns else check[6:-1]
            key = (column, "dtype", f"dtype({expected})")
        elif has_number and rec["schema_context"] == "Column" and column in column_rules:
            rule, label, _c = column_rules[column][int(number)]
            key = (column, rule, label)
        elif has_number and rec["schema_context"] == "DataFrameSchema" and int(number) < len(table_rules):
            rule, label, _c = table_rules[int(number)]
            key = (None, rule, label)
        else:
            key = (column, check, check)
        groups.setdefault(key, []).append((failure, index))

    out: list[Violation] = []
    for (column, rule, label), found in groups.items():
        examples: list[Any]
        if rule in ("required", "unexpected"):
            failing, examples = 1, []
        elif rule == "dtype":
            failing, examples = len(df), [str(df[column].dtype)] if column in df.columns else []
        elif rule in ("min_rows", "max_rows"):
            failing, examples = 1, [len(df)]
        elif rule == "unique" and column is not None and "," in column:
            idx = sorted({i for _f, i in found if i is not None}, key=str)
            failing = len(idx)
            cols = list(schema.unique or ())
            examples = []
            if all(c in df.columns for c in cols) and all(i in df.index for i in idx[:max_examples]):
                rows = df.loc[idx[:max_examples], cols].itertuples(index=False)
                examples = [list(map(_plain, row)) for row in rows]
        else:
            failing = len(found)
            examples = _distinct([_plain(f) for f, _i in found], max_examples)
        out.append(Violation(column=column, rule=rule, check=label, failing=failing, examples=examples))
    order = {name: i for i, name in enumerate(schema.columns)}

    def sort_key(v: Violation) -> tuple[int, int, str]:
        rank = _RULE_ORDER.index(v.rule) if v.rule in _RULE_ORDER else len(_RULE_ORDER)
        col = order.get(v.column or "", len(order) + (0 if v.column else 1))
        return col, rank, v.check

    return sorted(out, key=sort_key)


def _plain(value: Any) -> Any:
    """A JSON-friendly Python value for a failure case (numpy scalars, NaN, timestamps)."""
    if value is None:
        return None
    try:
        if pd.isna(value):  # NaN, NaT, pd.NA
            return None
    except (TypeError, ValueError):  # containers have no single truth value
        pass
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _distinct(values: Sequence[Any], limit: int) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
            if len(seen) >= limit:
                break
    return seen


def _short(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- inference -------------------------------------------------------------------------------


def infer_schema(
    df: pd.DataFrame,
    *,
    name: str = "data",
    margin: float = 0.0,
    max_categories: int = 20,
    nullable: bool | None = None,
) -> Schema:
    """A starting schema from reference data: dtypes, nullability, numeric ranges, categories.

    Args:
        df: The reference data (e.g. the training set).
        name: The schema's name.
        margin: Widen each numeric range by this fraction of its span on both sides.
        max_categories: String/categorical columns with at most this many values get ``isin``.
        nullable: Force nullability for every column (default: nullable where the data has nulls).
    """
    columns: dict[str, Column] = {}
    for col in df.columns:
        series = df[col]
        rules: dict[str, Any] = {
            "dtype": str(series.dtype),
            "nullable": bool(series.isna().any()) if nullable is None else nullable,
        }
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            lo, hi = series.min(), series.max()
            if pd.notna(lo) and pd.notna(hi):
                span = float(hi) - float(lo)
                rules["ge"], rules["le"] = float(lo) - margin * span, float(hi) + margin * span
        elif not pd.api.types.is_bool_dtype(series) and not pd.api.types.is_datetime64_any_dtype(series):
            values = series.dropna().unique()
            if len(values) <= max_categories:
                rules["isin"] = tuple(sorted((_plain(v) for v in values), key=lambda v: (type(v).__name__, str(v))))
        columns[str(col)] = Column(**rules)
    return Schema(columns=columns, name=name)


# -- the step -----------------------------------------------------------------------------


def validate_step(
    schema: Schema,
    *,
    on_failure: Literal["stop", "warn"] = "stop",
    name: str = "validate_data",
    max_examples: int = 5,
) -> Step[[pd.DataFrame], Validated]:
    """A pipeline step that validates its DataFrame input against ``schema``.

    Call it in a pipeline like any step: ``data, report = check(df)``. Pass
    ``data`` on, so that the steps that use it run after the check (and, with
    ``"stop"``, only if it passed).

    Args:
        schema: The rules.
        on_failure: ``"stop"``: the step is a quality gate; on any violation it
            fails with the full report (every violation: column, rule, failing
            count, examples), every step that depends on it is ``skipped`` with
            that reason, and the run is ``failed``. ``"warn"``: it logs the
            report on the ``mlpipe.quality`` logger and continues with the data
            unchanged; ``report.passed`` is False.
        name: The step's name in the pipeline.
        max_examples: Example values kept per violation.

    Returns:
        A :class:`~mlpipe.Step` taking ``df: pd.DataFrame`` and returning :class:`Validated`
        (``data`` and a :class:`ValidationReport`, both stored as artifacts).
    """
    if on_failure not in ("stop", "warn"):
        raise ValueError(f"on_failure must be 'stop' or 'warn', got {on_failure!r}")
    if not isinstance(schema, Schema):
        raise TypeError(f"validate_step() needs a mlpipe.quality.Schema, got {type(schema).__name__}")

    def validate_data(df: pd.DataFrame) -> Validated:
        data, report = validate(df, schema, max_examples=max_examples)
        if not report.passed:
            if on_failure == "stop":
                raise QualityGateError(report.to_text(), result=report)
            logger.warning("%s", report.to_text())
        return Validated(data, report)

    validate_data.__annotations__ = {"df": pd.DataFrame, "return": Validated}  # real types, as in drift_step
    return step(name=name, gate=on_failure == "stop")(validate_data)
