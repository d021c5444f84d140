"""`?wait=N` on job and batch reads: answer as soon as the view changes, or after N seconds.

With `If-None-Match` the wait lasts while the client's copy is current (a stale copy is answered at
once); without it, until the next change. The request's database session is closed while it waits, so
a waiting client holds no connection, only its thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Response, request

from api.conditional import conditional
from api.context import api, db
from api.validation import query_int

MAX_WAIT_SECONDS = 60


def wait_seconds() -> int:
    """The `wait` query parameter: 0 (answer now) to MAX_WAIT_SECONDS."""
    return query_int("wait", 0, 0, MAX_WAIT_SECONDS)


def _tag(response: Response) -> str | None:
    response.add_etag()
    return response.get_etag()[0]


def long_poll(item_id: str, read: Callable[[], tuple[Response, bool]], seconds: int) -> Response:
    """`read()` gives (the JSON reply, whether the item is final). Waits up to `seconds` for a reply
    that differs from the client's copy (its If-None-Match) or, lacking one, from the first read."""
    if seconds <= 0:
        return conditional(read()[0])
    waiters = api().waiters
    with waiters.watch(item_id) as changed:
        response, final = read()
        current = _tag(response)
        known = request.if_none_match
        if final or (known and not known.contains(current or "")):
            return conditional(response)
        baseline = current
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            db().close()  # no connection held while waiting
            if waiters.wait(changed, left):
                changed.clear()
            response, final = read()
            if final or _tag(response) != baseline:
                break
    return conditional(response)
