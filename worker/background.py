"""The command line shared by the worker's background services (the sweeper, the scheduler): run once and
print what was done, or run until interrupted. In a deployment they run as threads in every worker's
main process instead (worker/celery_app.py); this is for running one alone or by hand."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from shared.settings import Settings, get_settings


class Service(Protocol):
    def join(self) -> None: ...

    def stop(self) -> None: ...


def serve(
    prog: str,
    description: str,
    once: Callable[[Settings], dict[str, Any]],
    start: Callable[[Settings], Service],
    argv: list[str] | None = None,
) -> None:
    """`prog [--once]`: `once(settings)` printed as JSON, or `start(settings)` joined until Ctrl-C."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--once", action="store_true", help="one round, printed as JSON, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    if args.once:
        print(json.dumps(once(settings)))
        return
    service = start(settings)
    try:
        service.join()
    except KeyboardInterrupt:
        service.stop()
