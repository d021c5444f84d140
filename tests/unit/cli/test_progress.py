"""The progress bar: lines for jobs and batches, redraw on a terminal, throttled lines in a log."""

from __future__ import annotations

import datetime as dt
import io

from genq.progress import ProgressBar, batch_line, format_bar, format_duration, job_line, time_budget


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_and_bar() -> None:
    assert [format_duration(s) for s in (None, -1, 0, 59.4, 75, 3725)] == [
        "?",
        "?",
        "0s",
        "59s",
        "1m15s",
        "1h02m",
    ]
    assert format_bar(0.5, width=10) == "[#####.....]"
    assert format_bar(7.0, width=4) == "[####]"
    assert format_bar(-1, width=4) == "[....]"


def test_job_lines() -> None:
    running = {
        "status": "running",
        "progress": {"phase": "train", "step": 1200, "total": 5000, "percent": 24.0, "eta_seconds": 190},
    }
    line = job_line(running)
    assert "running" in line and "train" in line and "1200/5000" in line and "24.0%" in line
    assert "eta 3m10s" in line
    assert "position 3" in job_line({"status": "queued", "queue_position": 3, "progress": None})
    # No percent from the server: step/total; a finished job is full whatever its last progress said.
    assert "50.0%" in job_line({"status": "running", "progress": {"step": 5, "total": 10}})
    assert job_line({"status": "succeeded", "progress": {"step": 9, "total": 10}}).startswith("[" + "#" * 28)


def test_batch_line() -> None:
    line = batch_line({"total": 10, "counts": {"succeeded": 4, "failed": 1, "running": 2, "queued": 3}})
    assert "5/10 done" in line and "succeeded 4" in line and "failed 1" in line and "queued 3" in line
    assert "canceled" not in line
    assert "0/0 done" in batch_line({"counts": {}})


def test_terminal_redraws_one_line() -> None:
    stream = FakeTerminal()
    bar = ProgressBar(stream)
    bar.update("a long first line")
    bar.update("short")
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    # The shorter line is padded so nothing of the longer one is left on screen.
    assert "\rshort" + " " * len(" first line") in text


def test_log_output_is_throttled_and_ends_with_the_final_state() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, log_interval=3600)
    for step in range(100):
        bar.update(f"step {step}")
    bar.close()
    assert stream.getvalue().splitlines() == ["step 0", "step 99"]
    unchanged = io.StringIO()
    bar = ProgressBar(unchanged, log_interval=0)
    bar.update("same")
    bar.update("same")
    bar.close()
    assert unchanged.getvalue().splitlines() == ["same"]


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
    assert "eta 2" in line or "eta 3" in line  # ~30s left, not 13 minutes
    assert time_budget({**job, "status": "succeeded"}) is None
    assert time_budget({**job, "params": {}}) is None
