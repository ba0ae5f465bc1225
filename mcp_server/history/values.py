"""Conversions at the history's edges: Python values in (timestamps, JSON), JSON-friendly values out, rows."""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from typing import Any

UTC = dt.timezone.utc

_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def utc(value: Any) -> dt.datetime | None:
    """A timestamp as an aware UTC datetime: from a datetime (naive means UTC), epoch seconds, or ISO text."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        return utc(dt.datetime.fromisoformat(value))
    raise TypeError(f"not a timestamp: {value!r} (give a datetime, epoch seconds or ISO 8601 text)")


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _finite(value: Any) -> Any:
    """Replace non-finite floats (which JSON cannot carry) by their names, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column (None stays NULL)."""
    return None if value is None else json.dumps(_finite(value), separators=(",", ":"), default=str)


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def jsonable(value: Any) -> Any:
    """A value fetched from DuckDB as something json.dumps and pydantic take as is."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def first_row(result: Any) -> tuple | None:
    """The first row of a DuckDB result, consuming it all: duckdb 2 refuses some calls (register, …) on a
    connection whose last result was not fetched to the end, which `fetchone()` leaves it in."""
    rows = result.fetchall()
    return rows[0] if rows else None
