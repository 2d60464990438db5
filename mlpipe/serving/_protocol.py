"""The MLflow scoring protocol: request bodies in, predictions out.

``POST /invocations`` takes JSON with exactly one of ``dataframe_split``
(``{"columns": [...], "data": [[...]]}``), ``dataframe_records``
(``[{"col": value}, ...]``), ``instances`` or ``inputs`` (tensors: lists, or
a dict of named lists), plus optional ``params``; or ``text/csv``. The answer
is ``{"predictions": [...]}``, as from ``mlflow models serve``.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

__all__ = ["BadRequest", "parse_request", "predictions_json"]

_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class BadRequest(ValueError):
    """The request body does not follow the scoring protocol (answered with 400 and this message)."""


def parse_request(body: bytes, content_type: str) -> tuple[Any, dict[str, Any] | None]:
    """The model input (a DataFrame for tabular forms, else arrays) and the ``params``, if any."""
    import pandas as pd

    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "text/csv":
        try:
            return pd.read_csv(io.BytesIO(body)), None
        except Exception as exc:  # pandas' parser errors have no common base
            raise BadRequest(f"the CSV body cannot be parsed: {exc}") from exc
    if kind not in ("application/json", ""):
        raise BadRequest(f"unsupported content type {content_type!r}; send application/json or text/csv")
    try:
        document = json.loads(body or b"null")
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest(f"the JSON body must be an object with one of the keys {', '.join(_KEYS)}")
    given = [k for k in _KEYS if k in document]
    if len(given) != 1:
        unknown = sorted(set(document) - {*_KEYS, "params"})
        extra = f" (unknown keys: {', '.join(unknown)})" if unknown else ""
        raise BadRequest(
            f"the JSON body must have exactly one of the keys {', '.join(_KEYS)}; it has "
            f"{', '.join(given) or 'none'}{extra}"
        )
    params = document.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("params must be a JSON object")
    key = given[0]
    value = document[key]
    try:
        if key == "dataframe_split":
            if not isinstance(value, dict) or "data" not in value:
                raise BadRequest('dataframe_split must be {"columns": [...], "data": [[...], ...]}')
            return pd.DataFrame(value["data"], columns=value.get("columns"), index=value.get("index")), params
        if key == "dataframe_records":
            if not isinstance(value, list):
                raise BadRequest('dataframe_records must be a list of records ([{"col": value}, ...])')
            return pd.DataFrame.from_records(value), params
    except (ValueError, TypeError) as exc:
        if isinstance(exc, BadRequest):
            raise
        raise BadRequest(f"{key} cannot be read as a table: {exc}") from exc
    return _tensor(value, key), params


def _tensor(value: Any, key: str) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(value, dict):
        try:
            return {name: np.asarray(column) for name, column in value.items()}
        except ValueError as exc:
            raise BadRequest(f"{key}: a named input is not a regular array: {exc}") from exc
    if not isinstance(value, list):
        raise BadRequest(f"{key} must be a list (rows) or an object of named lists")
    if value and all(isinstance(row, dict) for row in value):
        return pd.DataFrame.from_records(value)  # a list of records is a table (what mlflow does too)
    try:
        return np.asarray(value)
    except ValueError as exc:
        raise BadRequest(f"{key} is not a regular array (rows of different lengths?): {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        return _plain(value.item())
    return value


def predictions_json(predictions: Any) -> list[Any] | dict[str, list[Any]]:
    """Predictions as JSON values: a list (one per row), or column -> list for a DataFrame."""
    import numpy as np
    import pandas as pd

    if isinstance(predictions, pd.DataFrame):
        frame = predictions.astype(object).where(predictions.notna(), None)
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    if isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    if isinstance(predictions, np.ndarray):
        return [_plain(v) if not isinstance(v, list) else v for v in predictions.tolist()]
    if isinstance(predictions, dict):
        return {k: list(predictions_json(v)) for k, v in predictions.items()}
    if isinstance(predictions, list | tuple):
        return [_plain(v) for v in predictions]
    return [_plain(predictions)]
