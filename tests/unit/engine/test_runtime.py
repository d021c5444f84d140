from __future__ import annotations

import pytest
import torch

from worker.engine import runtime
from worker.engine.runtime import native_bf16, training_autocast

CPU = torch.device("cpu")


def test_training_autocast_follows_the_hardware_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    with training_autocast(CPU):
        assert torch.is_autocast_enabled("cpu")
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with training_autocast(CPU, enabled=False):
        assert not torch.is_autocast_enabled("cpu")

    # A CPU without native bf16 (emulated bf16 is slower than float32) trains in float32.
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    with training_autocast(CPU):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_native_bf16_reads_the_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "BF16_CPU_PROBES", ("_genq_missing_probe",))
    assert native_bf16(CPU) is False  # a torch without the probes: no bf16
    monkeypatch.setattr(torch.cpu, "_genq_test_probe", lambda: True, raising=False)
    monkeypatch.setattr(runtime, "BF16_CPU_PROBES", ("_genq_missing_probe", "_genq_test_probe"))
    assert native_bf16(CPU) is True
    assert native_bf16(torch.device("meta")) is False
