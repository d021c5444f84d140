"""Bulk generation stores chunk N while chunk N+1 is generated: order, bounded backlog, errors surfaced,
and the generate runner's outputs, progress and cancel the same inline and in the background."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from shared.settings import Settings
from shared.storage import LocalStore
from worker.chunk_pipeline import ChunkPipeline
from worker.engine.runtime import Canceled, Progress, RunContext
from worker.outputs import JobOutputs
from worker.runners import generate as generate_runner
from worker.runners.base import JobRun


@pytest.mark.parametrize("background", [True, False])
def test_chunks_are_stored_in_order_and_counted(background: bool) -> None:
    stored: list[int] = []
    pipeline = ChunkPipeline(lambda chunk: stored.extend(chunk) or len(chunk), background=background)
    for start in range(0, 30, 3):
        pipeline.submit(list(range(start, start + 3)))
    assert pipeline.close() == 30
    assert stored == list(range(30))


def test_the_backlog_is_bounded() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def store(chunk: int) -> int:
        started.release()
        release.wait(5)
        return 1

    pipeline = ChunkPipeline(store, depth=2)
    pipeline.submit(0)
    pipeline.submit(1)
    assert started.acquire(timeout=5)  # chunk 0 is being stored, chunk 1 waits
    blocked = threading.Thread(target=pipeline.submit, args=(2,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a third chunk waits for the oldest to be stored
    release.set()
    blocked.join(5)
    assert pipeline.close() == 3


def test_an_error_while_storing_reaches_the_caller() -> None:
    def store(chunk: int) -> int:
        if chunk == 1:
            raise OSError("disk full")
        return 1

    pipeline = ChunkPipeline(store, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for chunk in range(5):
            pipeline.submit(chunk)
        pipeline.close()
    pipeline.abort()


def test_abort_drops_chunks_not_started() -> None:
    release = threading.Event()
    stored: list[int] = []

    def store(chunk: int) -> int:
        release.wait(5)
        stored.append(chunk)
        return 1

    pipeline = ChunkPipeline(store, depth=3)
    for chunk in range(3):
        pipeline.submit(chunk)
    threading.Timer(0.1, release.set).start()
    pipeline.abort()
    assert stored == [0]


# The runner, with a stand-in engine: images a function of their seeds, 8x8 grey.


def _fake_generate(
    model: Any, seeds: list[int], labels: Any, *, chunk_size: int, **_: Any
) -> Iterator[np.ndarray]:
    for start in range(0, len(seeds), chunk_size):
        yield np.stack([
            np.random.default_rng(seed).integers(0, 256, (8, 8, 1), dtype=np.uint8)
            for seed in seeds[start : start + chunk_size]
        ])  # fmt: skip


def _job(tmp_path: Path, params: dict[str, Any], ctx: RunContext) -> JobRun:
    settings = Settings(data_dir=tmp_path, storage_backend="local")
    store = LocalStore(settings)
    tenant, job_id = uuid.uuid4(), uuid.uuid4()
    workdir = tmp_path / f"work-{job_id}"
    workdir.mkdir()
    return JobRun(
        job_id=job_id,
        tenant_id=tenant,
        params={"model_id": str(uuid.uuid4()), **params},
        checkpoint_key=None,
        lease=None,  # type: ignore[arg-type]
        ctx=ctx,
        settings=settings,
        sessions=None,  # type: ignore[arg-type]
        store=store,
        outputs=JobOutputs(store, tenant, job_id, attempt=1),
        workdir=workdir,
    )


@pytest.fixture()
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    row = SimpleNamespace(id=uuid.uuid4(), name="m", version=1)
    model = SimpleNamespace(num_classes=0, image_size=8, version_hash="h")
    monkeypatch.setattr(generate_runner, "model_row", lambda *_: row)
    monkeypatch.setattr(generate_runner, "load_model", lambda *_: model)
    monkeypatch.setattr(generate_runner.engine, "generate", _fake_generate)
    monkeypatch.setattr(generate_runner, "CHUNK_SIZE", 4)


def _outputs(job: JobRun) -> dict[str, bytes]:
    """Every stored object by name; the shards as their members, the manifest without the job's id."""
    found: dict[str, bytes] = {}
    for stored in job.outputs.stored:
        data = job.store.get_bytes(stored.key)
        if stored.name.startswith("shards/"):
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                for member in archive.getmembers():
                    found[f"{stored.name}/{member.name}"] = archive.extractfile(member).read()  # type: ignore[union-attr]
        elif stored.name == "manifest.json":
            document = json.loads(data)
            document.pop("job_id")
            found[stored.name] = json.dumps(document).encode()
        else:
            found[stored.name] = data
    return found


@pytest.mark.usefixtures("fake_engine")
def test_background_storing_writes_what_inline_storing_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs, reports = [], []
    for background in (False, True):
        monkeypatch.setattr(generate_runner, "store_in_background", lambda _, b=background: b)
        seen: list[int] = []
        ctx = RunContext(on_progress=lambda p, s=seen: s.append(p.step), device=torch.device("cpu"))
        job = _job(tmp_path, {"count": 18, "seed": 3, "shard_size": 5}, ctx)
        assert generate_runner.run(job).result["count"] == 18
        outputs.append(_outputs(job))
        reports.append(seen)
    assert outputs[0] == outputs[1]
    assert len([n for n in outputs[0] if n.endswith(".png") and n.startswith("shards/")]) == 18
    for seen in reports:
        assert seen == sorted(seen) and seen[-1] == 18


@pytest.mark.usefixtures("fake_engine")
def test_progress_counts_images_stored_not_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate_runner, "store_in_background", lambda _: True)
    release = threading.Event()
    real_add = generate_runner.ShardWriter.add

    def slow_add(self: Any, index: int, png: bytes) -> tuple[str, str]:
        release.wait(5)
        return real_add(self, index, png)

    monkeypatch.setattr(generate_runner.ShardWriter, "add", slow_add)
    seen: list[Progress] = []

    def on_progress(progress: Progress) -> None:
        seen.append(progress)
        if len(seen) == 2:
            release.set()

    job = _job(tmp_path, {"count": 12}, RunContext(on_progress=on_progress, device=torch.device("cpu")))
    generate_runner.run(job)
    assert seen[0].step == 0  # the first chunk was generated, none stored yet
    assert seen[-1].step == 12


@pytest.mark.usefixtures("fake_engine")
@pytest.mark.parametrize("background", [True, False])
def test_cancel_stops_before_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    monkeypatch.setattr(generate_runner, "store_in_background", lambda _: background)
    reports: list[int] = []
    ctx = RunContext(
        on_progress=lambda p: reports.append(p.step),
        should_stop=lambda: len(reports) >= 2,
        device=torch.device("cpu"),
    )
    job = _job(tmp_path, {"count": 40, "shard_size": 2}, ctx)
    with pytest.raises(Canceled):
        generate_runner.run(job)
    assert len(reports) == 2
    assert "manifest.json" not in {s.name for s in job.outputs.stored}


@pytest.mark.usefixtures("fake_engine")
def test_an_error_while_storing_fails_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate_runner, "store_in_background", lambda _: True)

    def broken(*_: Any, **__: Any) -> list[bytes]:
        raise OSError("encoder failed")

    monkeypatch.setattr(generate_runner.engine, "encode_pngs", broken)
    job = _job(tmp_path, {"count": 40}, RunContext(device=torch.device("cpu")))
    with pytest.raises(OSError, match="encoder failed"):
        generate_runner.run(job)
