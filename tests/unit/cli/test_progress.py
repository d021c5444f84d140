"""What genq shows about jobs and batches: the summary lines, and tqdm's bar, drawn on a terminal and
silent elsewhere."""

from __future__ import annotations

import datetime as dt
import io

from genq.progress import ProgressBar, batch_line, format_duration, job_line, time_budget


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations() -> None:
    assert [format_duration(s) for s in (None, -1, 0, 59.4, 75, 3725)] == [
        "?",
        "?",
        "00:00",
        "00:59",
        "01:15",
        "1:02:05",
    ]


def test_job_lines() -> None:
    running = {
        "status": "running",
        "progress": {"phase": "train", "step": 1200, "total": 5000, "percent": 24.0, "eta_seconds": 190},
    }
    line = job_line(running)
    assert "running" in line and "train" in line and "1200/5000" in line and "24.0%" in line
    assert "eta 03:10" in line
    assert "position 3" in job_line({"status": "queued", "queue_position": 3, "progress": None})
    # No percent from the server: step/total; a finished job is full whatever its last progress said.
    assert "50.0%" in job_line({"status": "running", "progress": {"step": 5, "total": 10}})
    assert "100.0%" in job_line({"status": "succeeded", "progress": {"step": 9, "total": 10}})


def test_batch_line() -> None:
    line = batch_line({"total": 10, "counts": {"succeeded": 4, "failed": 1, "running": 2, "queued": 3}})
    assert "5/10 done" in line and "succeeded 4" in line and "failed 1" in line and "queued 3" in line
    assert "canceled" not in line
    assert "0/0 done" in batch_line({"counts": {}})


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream)
    bar.show_job({"status": "running", "progress": {"phase": "train", "step": 1, "total": 4}})
    bar.show_job({"status": "running", "progress": {"phase": "train", "step": 2, "total": 4}})
    bar.show_job({"status": "succeeded", "progress": {"phase": "train", "step": 4, "total": 4}})
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and "\r" in text
    final = text.rsplit("\r", 1)[1]
    assert "succeeded" in final and "100.0%" in final and "#" * 28 in final


def test_a_batch_bar_counts_ended_jobs() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream)
    bar.show_batch({"total": 0, "counts": {}})  # a batch read before its jobs are counted
    bar.show_batch({"total": 4, "counts": {"succeeded": 1, "failed": 1, "running": 2}})
    bar.close()
    final = stream.getvalue().rsplit("\r", 1)[1]
    assert "2/4 done" in final and "#" * 14 in final and "#" * 15 not in final


def test_nothing_is_drawn_when_the_output_is_no_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    for step in range(100):
        bar.show_job({"status": "running", "progress": {"step": step, "total": 100}})
    bar.close()
    assert stream.getvalue() == ""


def test_a_time_budget_drives_the_bar_when_it_runs_out_first() -> None:
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90)
    job = {
        "status": "running",
        "started_at": started.isoformat(),
        "params": {"max_seconds": 120},
        "progress": {"phase": "train", "step": 300, "total": 3000, "percent": 10.0, "eta_seconds": 810},
    }
    fraction, left = time_budget(job) or (0, 0)
    assert 0.74 < fraction < 0.8 and 25 < left < 31
    line = job_line(job)
    assert "300/3000" in line and " 7" in line.split("%")[0][-5:]  # ~75%, not 10%
    assert "eta 00:2" in line or "eta 00:3" in line  # ~30s left, not 13 minutes
    assert time_budget({**job, "status": "succeeded"}) is None
    assert time_budget({**job, "params": {}}) is None
