"""Helpers every repository shares: ids, timestamps, JSON columns."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any


def new_id() -> str:
    """A short random id (12 hex digits), like the spec's ids but with fewer collisions."""
    return uuid.uuid4().hex[:12]


def new_blob_id() -> str:
    """A full random id (32 hex digits) for a blob file."""
    return uuid.uuid4().hex


def now_iso() -> str:
    """UTC timestamp with milliseconds, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def dumps(value: Any, *, allow_nan: bool = True) -> str:
    """Compact JSON text for a JSON column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)


def loads(text: str | None) -> Any:
    """A JSON column's value (None stays None)."""
    return None if text is None else json.loads(text)


#: Columns holding JSON text, whatever the table.
JSON_COLUMNS = frozenset({
    "rle", "metadata", "patient", "classification", "detections", "segmentation", "vqa_history",
    "result", "coordinates", "style", "data", "payload", "files", "options", "missing", "tracking",
})


def decode_row(row: dict, json_columns: frozenset[str] | tuple[str, ...] = JSON_COLUMNS) -> dict:
    """A row with its JSON columns decoded."""
    return {k: (loads(v) if k in json_columns else v) for k, v in row.items()}


def row_dict(cursor: Any, row: tuple) -> dict:
    """A row fetched from a raw cursor, as a dict keyed by column name."""
    return dict(zip([d[0] for d in cursor.description], row, strict=True))
