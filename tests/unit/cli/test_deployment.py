"""The deployment files, checked without a Docker engine: the compose file parsed as YAML, the
Dockerfiles read, and the worker entrypoint's GPU claiming run with a fake `nvidia-smi`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.__main__ import worker_commands

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "worker-entrypoint.sh"
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "GENQ_SIGNING_SECRET")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.load(COMPOSE.read_text(), Loader=UniqueKeyLoader)  # a SafeLoader that refuses repeated keys


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; compose files must not repeat a service."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [key.value for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
        repeated = {key for key in keys if keys.count(key) > 1 and key != "<<"}
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"repeated keys {sorted(repeated)}", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def test_services_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "postgres", "minio", "createbucket", "migrate", "api", "worker"} <= set(services)
    for name in ("redis", "postgres", "minio", "api", "worker"):
        assert "test" in services[name]["healthcheck"], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    # One-shot jobs run once; the rest come back after a crash.
    assert services["migrate"]["restart"] == "no" and services["createbucket"]["restart"] == "no"
    assert services["migrate"]["command"] == ["genq", "migrate"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["createbucket"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_webhooks_have_a_light_worker_of_their_own(compose: dict[str, Any]) -> None:
    service = compose["services"]["webhooks"]
    assert service["command"] == ["python", "-m", "worker.webhooks"] and service["entrypoint"] == []
    assert "deploy" not in service  # no GPU
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_redis_keeps_every_message(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_worker_is_one_gpu_process_and_scalable(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    # The one worker command line (shared/worker_launch.py), named as the healthcheck pings it.
    assert worker["command"][:3] == ["python", "-m", "worker"] and "--hostname=celery@%h" in worker["command"]
    assert "--destination celery@" in " ".join(worker["healthcheck"]["test"])
    [(_, argv)] = worker_commands([], ["genq.train"], hostname="celery@%h")
    for flag in (
        "--concurrency 1",
        "--prefetch-multiplier 1",
        "--pool-start-method spawn",
        "--hostname celery@%h",
    ):
        assert flag in " ".join(argv)
    # `--scale worker=N` needs no fixed name and no published port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["environment"]["GENQ_DEVICE"] == "cuda"


def test_production_settings_and_no_default_secrets(compose: dict[str, Any]) -> None:
    for name in ("api", "worker", "migrate"):
        env = compose["services"][name]["environment"]
        assert env["GENQ_ENVIRONMENT"] == "production"
        assert env["GENQ_STORAGE_BACKEND"] == "s3"
        assert env["GENQ_S3_PUBLIC_ENDPOINT_URL"]
    text = COMPOSE.read_text()
    for secret in SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        assert all(use.startswith(":?") for use in uses), f"{secret} must have no default: {uses}"
    # Every secret-looking setting of every service is a required variable, never a literal.
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{name}: {key}={value}"


def test_dockerfiles() -> None:
    api = (ROOT / "docker" / "api.Dockerfile").read_text()
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "FROM python:3.11-slim" in api
    assert '".[api]"' in api and "torch" not in api.lower().replace("no torch", "")
    assert "COPY worker" not in api and "COPY genq" in api  # `genq migrate` runs from the API image
    assert "torch==2.13.0" in worker and "nvidia/cuda" in worker and '".[worker]"' in worker
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".genq"} <= set(ignored)


def _fake_nvidia_smi(tmp_path: Path, gpus: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    lines = "\n".join(f"echo 'GPU {i}: Fake (UUID: GPU-{i})'" for i in range(gpus))
    script.write_text(f"#!/bin/sh\n{lines}\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return {
        **env,
        "PATH": f"{bin_dir}:{env['PATH']}",
        "GENQ_GPU_LOCK_DIR": str(tmp_path / "locks"),
        "GENQ_GPU_CLAIM_TRIES": "1",
    }


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock (util-linux)")
def test_entrypoint_gives_each_replica_its_own_gpu(tmp_path: Path) -> None:
    env = _fake_nvidia_smi(tmp_path, gpus=2)
    ready = tmp_path / "ready"
    # The first replica keeps its GPU while it runs.
    first = subprocess.Popen(
        ["bash", str(ENTRYPOINT), "sh", "-c", f'echo "$CUDA_VISIBLE_DEVICES" > {ready}; sleep 30'], env=env
    )
    try:
        for _ in range(100):
            if ready.exists() and ready.read_text().strip():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert ready.read_text().strip() == "0"
        second = subprocess.run(
            ["bash", str(ENTRYPOINT), "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"'],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 0 and second.stdout.strip() == "1"
        # The second one exited: its GPU is free again; both taken means a clear refusal.
        holder = subprocess.Popen(["bash", str(ENTRYPOINT), "sleep", "30"], env=env)
        try:
            subprocess.run(["sleep", "0.3"], check=True)
            third = subprocess.run(
                ["bash", str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=30
            )
            assert third.returncode == 1 and "all 2 GPUs are taken" in third.stderr
        finally:
            holder.kill()
            holder.wait()
    finally:
        first.kill()
        first.wait()


def test_entrypoint_without_gpus_runs_the_command_as_is(tmp_path: Path) -> None:
    env = _fake_nvidia_smi(tmp_path, gpus=0)
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]"
