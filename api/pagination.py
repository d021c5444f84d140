"""Keyset pagination, newest first: an opaque cursor holds the last row's (created_at, id).

Stable under concurrent inserts (new rows land before the first page, never inside a later one) and
served by the (tenant_id, created_at, id) indexes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from api.errors import field_error

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
T = TypeVar("T")


def encode_cursor(created_at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "id": str(row_id)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        created_at = dt.datetime.fromisoformat(data["t"])
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at.astimezone(dt.UTC), uuid.UUID(data["id"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise field_error(400, "invalid_parameter", "cursor", "not a cursor this API returned") from None


def page_query(
    query: Select[Any],
    created_at: InstrumentedAttribute[Any],
    row_id: InstrumentedAttribute[Any],
    cursor: str | None,
    limit: int,
) -> Select[Any]:
    """`query` restricted to rows after `cursor`, newest first, one extra row to see if more follow."""
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(or_(created_at < after_time, and_(created_at == after_time, row_id < after_id)))
    return query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)


def page(rows: Sequence[T], limit: int) -> tuple[Sequence[T], str | None]:
    """The page's rows and the cursor of the next page (None on the last)."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)  # type: ignore[attr-defined]
