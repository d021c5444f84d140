"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records every request
(headers, body, arrival time) and answers with scripted status codes, optionally holding each request until
released (a slow receiver)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when the request arrived


class Receiver:
    def __init__(self, statuses: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.statuses = list(statuses or [])  # answered in order, then 200
        self.hold = hold  # when set: each request waits (at most 60 s) for this event before answering
        self.received: list[Received] = []
        self.answered = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                        )
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.hold is not None:
                    receiver.hold.wait(60)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver._lock:
                    receiver.answered += 1

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.received]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float = 60.0) -> list[Received]:
        """Poll until `condition(received)` holds; the requests so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                received = list(self.received)
            if condition(received):
                return received
            time.sleep(0.05)
        raise TimeoutError(f"receiver: condition not met after {timeout}s; got {len(received)} requests")

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running(statuses: list[int] | None = None, hold: threading.Event | None = None) -> Iterator[Receiver]:
    receiver = Receiver(statuses, hold).start()
    try:
        yield receiver
    finally:
        receiver.stop()
