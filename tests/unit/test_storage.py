"""Storage failures become the project's errors, bounded in time: refused, hung and 5xx S3 endpoints, an
unwritable local directory, missing keys; attempt-scoped keys; safe download names."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.storage import (
    LocalStore,
    ObjectNotFound,
    S3Store,
    StorageError,
    StorageUnavailable,
    attempt_key,
    job_prefix,
    probe_store,
    safe_filename,
)
from tests.conftest import free_port

BOUND_SECONDS = 30.0  # far above what a bounded call takes; only a hang reaches it


def s3_settings(endpoint: str, **values: object) -> Settings:
    return Settings(
        storage_backend="s3",
        s3_endpoint_url=endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        **values,  # type: ignore[arg-type]
    )


def finishes(call, *args: object) -> BaseException | None:  # type: ignore[no-untyped-def]
    """Run `call` in a thread, bounded by BOUND_SECONDS; the exception it raised (None if none)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call(*args)
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND_SECONDS)
    assert not thread.is_alive(), f"the storage call hung for more than {BOUND_SECONDS}s"
    return outcome[0]


class Failing(BaseHTTPRequestHandler):
    """Answers every request with 503, counting them."""

    requests = 0

    def _fail(self) -> None:
        type(self).requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _fail

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def failing_s3() -> Iterator[str]:
    Failing.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def hung_s3() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections and never answers (a black hole), keeping each connection it accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_5xx_is_retried_a_bounded_number_of_times_then_unavailable(failing_s3: str) -> None:
    store = S3Store(s3_settings(failing_s3, s3_max_attempts=3))
    error = finishes(store.put_bytes, "tenants/t/jobs/j/attempts/1/grid.png", b"png", "image/png")
    assert isinstance(error, StorageUnavailable), error
    assert Failing.requests == 3  # max_attempts tries in all, then it gives up

    Failing.requests = 0
    assert isinstance(
        finishes(probe_store(s3_settings(failing_s3, s3_max_attempts=5)).check), StorageUnavailable
    )
    assert Failing.requests == 1  # the probe never retries


def test_a_hung_endpoint_times_out_as_unavailable(hung_s3: tuple[str, list[socket.socket]]) -> None:
    endpoint, accepted = hung_s3
    probe = probe_store(s3_settings(endpoint), timeout=0.3)
    assert isinstance(finishes(probe.check), StorageUnavailable)

    store = S3Store(s3_settings(endpoint, s3_read_timeout_seconds=0.3, s3_max_attempts=2))
    before = len(accepted)
    error = finishes(store.get_bytes, "tenants/t/jobs/j/attempts/1/model.pt")
    assert isinstance(error, StorageUnavailable), error
    assert len(accepted) - before == 2  # one connection per try: the read timeout fired and it retried once


def test_a_refused_connection_is_unavailable() -> None:
    store = S3Store(s3_settings(f"http://127.0.0.1:{free_port()}", s3_max_attempts=1))
    for call, args in (
        (store.check, ()),
        (store.get_bytes, ("k/x",)),
        (store.put_bytes, ("k/x", b"", "a/b")),
    ):
        assert isinstance(finishes(call, *args), StorageUnavailable), call


def test_local_store_unwritable_directory_is_unavailable_and_missing_keys_not_found(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the storage directory should be")
    store = LocalStore(Settings(local_storage_dir=blocker / "objects"))  # starts anyway
    with pytest.raises(StorageUnavailable):
        store.put_bytes("tenants/t/datasets/d/data.npz", b"x", "application/octet-stream")
    with pytest.raises(StorageUnavailable):
        store.check()

    store = LocalStore(Settings(local_storage_dir=tmp_path / "objects"))
    store.check()
    with pytest.raises(ObjectNotFound):
        store.get_bytes("tenants/t/jobs/j/none.png")
    with pytest.raises(ObjectNotFound):
        store.download_file("tenants/t/jobs/j/none.png", tmp_path / "out")
    with pytest.raises(StorageError):
        store.put_bytes("tenants/../etc/passwd", b"", "text/plain")
    assert not issubclass(ObjectNotFound, StorageUnavailable)


def test_local_store_lists_and_deletes_under_a_prefix(tmp_path: Path) -> None:
    store = LocalStore(Settings(local_storage_dir=tmp_path / "objects"))
    keys = [attempt_key("t", "j", 1, "grid.png"), attempt_key("t", "j", 2, "shards/00000.tar")]
    for key in [*keys, attempt_key("t", "other", 1, "grid.png")]:
        store.put_bytes(key, b"x", "image/png")
    assert sorted(store.list_keys(job_prefix("t", "j"))) == sorted(keys)
    assert list(store.list_keys(job_prefix("t", "nothing"))) == []
    store.delete_many(keys)
    store.delete_many(keys)  # idempotent
    assert list(store.list_keys(job_prefix("t", "j"))) == []
    assert store.exists(attempt_key("t", "other", 1, "grid.png"))


def test_attempt_keys_never_collide() -> None:
    first, second = attempt_key("t", "j", 1, "model.pt"), attempt_key("t", "j", 2, "model.pt")
    assert first == "tenants/t/jobs/j/attempts/1/model.pt" and first != second
    assert first.startswith(job_prefix("t", "j"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("preview.png", "preview.png"),
        ("a\r\nSet-Cookie: x=1.png", "a__Set-Cookie: x=1.png"),
        ("nul\x00.png", "nul_.png"),
        ('quote".png', "quote_.png"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("\x00\r\n", "___"),
        ("", "fallback.png"),
        (None, "fallback.png"),
        ("..", "fallback.png"),
    ],
)
def test_safe_filename(given: str | None, expected: str) -> None:
    assert safe_filename(given, "fallback.png") == expected


def test_download_urls_carry_only_safe_names(tmp_path: Path) -> None:
    store = LocalStore(Settings(local_storage_dir=tmp_path / "objects"))
    url = store.download_url("tenants/t/jobs/j/attempts/1/grid.png", "evil\r\n.png")
    assert "%0D" not in url.upper() and "%0A" not in url.upper()
    s3 = S3Store(s3_settings("http://127.0.0.1:9"))
    presigned = s3.download_url("tenants/t/jobs/j/attempts/1/grid.png", 'x"\n.png')
    assert "filename%3D%22x__.png%22" in presigned and "%0A" not in presigned.upper()
