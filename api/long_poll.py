"""`?wait=N` on job and batch reads: answer as soon as the view changes, or after N seconds.

With `If-None-Match` the wait lasts while the client's copy is current (a stale copy is answered at
once); without it, until the next change. The request's database session is closed while it waits, so
a waiting client holds no connection, only its thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Response, request

from api.conditional import conditional, view_tag
from api.context import api, db
from api.validation import query_int

MAX_WAIT_SECONDS = 60


def wait_seconds() -> int:
    """The `wait` query parameter: 0 (answer now) to MAX_WAIT_SECONDS."""
    return query_int("wait", 0, 0, MAX_WAIT_SECONDS)


def long_poll(item_id: str, read: Callable[[], tuple[dict[str, Any], bool]], seconds: int) -> Response:
    """`read()` gives (the view, whether the item is final). Waits up to `seconds` for a view whose tag
    differs from the client's copy (its If-None-Match) or, lacking one, from the first read's."""
    if seconds <= 0:
        return conditional(read()[0])
    waiters = api().waiters
    with waiters.watch(item_id) as changed:
        view, final = read()
        tag = view_tag(view)
        known = request.if_none_match
        if final or (known and not known.contains(tag)):
            return conditional(view, tag)
        baseline = tag
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            db().close()  # no connection held while waiting
            if waiters.wait(changed, left):
                changed.clear()
            view, final = read()
            tag = view_tag(view)
            if final or tag != baseline:
                break
    return conditional(view, tag)
