"""Reads of jobs and batches: `304` for a current copy (from this process's remembered tags when it can),
and `?wait=N`: answer as soon as the view changes, or after N seconds.

With `If-None-Match` the wait lasts while the client's copy is current (a stale copy is answered at
once); without it, until the next change. The request's database session is closed while it waits, so
a waiting client holds no connection, only its thread.

A copy whose tag this process remembers (api/tag_cache.py) is answered `304` without reading SQL. Only
views that stay the same while their rows do are remembered: not a queued job's (its queue position,
ETA and what it waits for move as other jobs are dispatched, and no notification names it when they
do), nor a running job's (its ETA and, under a time budget, its percent are computed from the clock at
each read, and its progress writes notify several times a second, so a tag would rarely live long
enough to answer a poll anyway). Finished and canceling jobs, and batches, are remembered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Response, g, request

from api.auth import tenant_id
from api.conditional import conditional, not_modified, view_tag
from api.context import api
from api.tag_cache import CachedTag, Scope
from api.validation import query_int

MAX_WAIT_SECONDS = 60
CLOCK_DEPENDENT_STATUSES = frozenset({"queued", "running"})  # job views that change without a write


def wait_seconds() -> int:
    """The `wait` query parameter: 0 (answer now) to MAX_WAIT_SECONDS."""
    return query_int("wait", 0, 0, MAX_WAIT_SECONDS)


def _rememberable(view: dict[str, Any]) -> bool:
    """Whether the view is a function of its rows alone (batch views carry no `status`)."""
    return view.get("status") not in CLOCK_DEPENDENT_STATUSES


def _close_session() -> None:
    session = g.get("db")
    if session is not None:
        session.close()  # no connection held while waiting


def long_poll(item_id: str, read: Callable[[], tuple[dict[str, Any], bool]], seconds: int) -> Response:
    """`read()` gives (the view, whether the item is final). Waits up to `seconds` for a view whose tag
    differs from the client's copy (its If-None-Match) or, lacking one, from the first read's."""
    ctx = api()
    waiters = ctx.waiters
    tags = waiters.tags
    waiters.ensure_listening()  # the subscription that keeps remembered tags honest
    scope = Scope(request.endpoint, tenant_id())
    known = request.if_none_match

    def remembered() -> CachedTag | None:
        """The remembered tag, when the client's copy carries it."""
        if not known:
            return None
        cached = tags.get(item_id, scope, ctx.urls.epoch())
        return cached if cached is not None and known.contains_weak(cached.tag) else None

    def fresh() -> tuple[dict[str, Any], bool, str]:
        with tags.reading(item_id) as reading:  # entered before the row is read
            view, final = read()
            epoch = ctx.urls.epoch()
            tag = view_tag(view, epoch)
            if _rememberable(view):
                tags.put(reading, scope, tag, epoch, final)
        return view, final, tag

    if seconds <= 0:
        if (hit := remembered()) is not None:
            return not_modified(hit.tag)
        view, _, tag = fresh()
        return conditional(view, tag)

    with waiters.watch(item_id) as changed:  # entered before the tags are asked or the row read
        view: dict[str, Any] | None = None
        if (hit := remembered()) is not None:
            if hit.final:
                return not_modified(hit.tag)
            baseline = hit.tag
        else:
            view, final, tag = fresh()
            if final or (known and not known.contains(tag)):
                return conditional(view, tag)
            baseline = tag
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            _close_session()
            if waiters.wait(changed, left):
                changed.clear()
            elif view is None and remembered() is not None:
                continue  # no change, and the remembered tag still vouches for the client's copy
            view, final, tag = fresh()
            if final or tag != baseline:
                break
    if view is None:
        return not_modified(baseline)
    return conditional(view, tag)
