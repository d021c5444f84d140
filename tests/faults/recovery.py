"""Recovery times the fault cases measure (seconds from the fault to the recovery), printed at the end of
the run and, with GENQ_FAULTS_REPORT=<path>, written as JSON (RELIABILITY.md quotes them)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Recovery:
    case: str
    what: str
    seconds: float


MEASURED: list[Recovery] = []


def record(case: str, what: str, seconds: float) -> None:
    MEASURED.append(Recovery(case, what, round(seconds, 1)))


def report_lines() -> list[str]:
    return [f"{m.case:<52} {m.what:<32} {m.seconds:6.1f} s" for m in MEASURED]


def write_report() -> None:
    path = os.environ.get("GENQ_FAULTS_REPORT")
    if path and MEASURED:
        with open(path, "w") as out:
            json.dump([asdict(m) for m in MEASURED], out, indent=1)
