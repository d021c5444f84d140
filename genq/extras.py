"""Which of genq's extras are installed here, read from genq's own metadata (pyproject.toml's extras).

The base install is the client alone; a command that runs the server's code (`genq up`, `genq admin`)
checks its extras first and says what to `pip install` instead of failing on a missing module later,
in a child process or halfway through a start.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def requirement_name(requirement: str) -> str:
    """`psycopg[binary]>=3.1` -> `psycopg`, lower case."""
    return _NAME.match(requirement).group(1).lower()  # type: ignore[union-attr]


def installed_requires(distribution: str) -> list[str]:
    """The requirements an installed distribution declares (with their markers); [] if not installed."""
    try:
        return importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def declared(extras: Iterable[str]) -> set[str]:
    """The distributions `genq[extras]` adds to the base install (a `genq[server]` inside one is
    followed); empty when genq runs from a source tree that was never installed."""
    requirements = installed_requires("genq")
    wanted, names = set(extras), set()
    pending = list(wanted)
    while pending:
        extra = pending.pop()
        for requirement in requirements:
            spec, _, marker = requirement.partition(";")
            found = _EXTRA.search(marker)
            if found is None or found.group(1) != extra:
                continue
            name, inner = _NAME.match(spec).groups()  # type: ignore[union-attr]
            if name.lower() != "genq":
                names.add(name.lower())
                continue
            for nested in (e.strip() for e in (inner or "").split(",")):
                if nested and nested not in wanted:
                    wanted.add(nested)
                    pending.append(nested)
    return names


def missing(extras: Iterable[str]) -> list[str]:
    """The distributions of `genq[extras]` that are not installed here, sorted."""
    absent = []
    for name in declared(extras):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(name)
    return sorted(absent)
