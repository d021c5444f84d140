"""Strong ETags on reads, so a client polling an unchanged resource gets `304 Not Modified` and no body.

The tag is a hash of the exact bytes of the reply (werkzeug's `add_etag`), so it changes whenever
anything in the view does. Download URLs in a view are reused while most of their life is left
(api/download_urls.py), which keeps an unchanged job's view byte-identical between polls.
"""

from __future__ import annotations

from flask import Response, request


def conditional(response: Response) -> Response:
    """Tag the reply and answer `If-None-Match` with a bodiless 304 when the tag matches."""
    response.add_etag()
    return response.make_conditional(request)
