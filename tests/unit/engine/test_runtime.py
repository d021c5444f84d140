from __future__ import annotations

import platform

import pytest
import torch

from worker.engine import cnn, runtime
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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_allocator_applies_on_glibc() -> None:
    assert runtime.tune_allocator() is True
    # Memory still works both sides of the 32 MiB threshold.
    assert float(torch.ones(16 << 20, dtype=torch.uint8).sum()) == 16 << 20
    assert float(torch.ones(64 << 20, dtype=torch.uint8).sum()) == 64 << 20


def test_evaluation_pass_size_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    config = cnn.Config(width=8)
    model = cnn.build_model(config).eval()
    images = torch.rand(150, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert runtime.inference_rows(CPU) == 64
    by_64 = cnn.classify(model, images), cnn.features(model, images)
    monkeypatch.setattr(cnn, "inference_rows", lambda device: 1000)
    by_1000 = cnn.classify(model, images), cnn.features(model, images)
    for small, large in zip(by_64, by_1000, strict=True):
        assert small.shape == large.shape and small.shape[0] == 150
        torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-5)
