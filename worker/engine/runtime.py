"""What a run is given and what it reports: the engine's half of the job contract.

The engine never touches SQL, S3 or Celery. A job hands it a `RunContext`: a progress callback, a cancel
check, a checkpoint callback (with the checkpoint to resume from, if any) and a time budget. Every family's
training loop calls `ctx.step_done(...)` once per optimisation step; that single call reports progress,
raises `Canceled` when the job was canceled, saves checkpoints on schedule and says when the time budget
is spent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


class Canceled(Exception):
    """The job was canceled; raised at the next step check."""


class ConfigError(ValueError):
    """A model or job option is invalid; the message names the field."""


@dataclass(frozen=True)
class Progress:
    phase: str  # "train", "generate", "edit", "evaluate"
    step: int
    total: int
    metrics: dict[str, float] = field(default_factory=dict)  # losses, samples_per_sec, ...


def _ignore(_: Any) -> None:
    return None


def _never() -> bool:
    return False


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 convolutions and matmuls in hardware: CUDA GPUs from Ampere on, and
    CPUs with AVX512-BF16 or AMX. Elsewhere (AVX2-only CPUs) bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, probe, lambda: False)() for probe in BF16_CPU_PROBES)
    return False


# torch.cpu's feature probes (private, hence looked up by name: a torch without them means no bf16).
BF16_CPU_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def training_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """Mixed precision for training steps: bf16 autocast where the hardware has native bf16 (measured
    faster there, BENCHMARKS.md), float32 elsewhere. Weights, optimiser state, losses and evaluation stay
    float32, and runs stay deterministic on a given machine."""
    on = enabled and native_bf16(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def inference_rows(device: torch.device) -> int:
    """Rows per evaluation pass (classifier logits and features, VAE ELBO and encodings).

    Small on CPU: larger passes allocate activations big enough that the allocator maps and unmaps them
    on every pass, and the page faults cost more than the convolutions (the same results, in about a
    third of the time at 64 rows: BENCHMARKS.md, "Throughput"). tune_allocator() does not make this moot:
    blocks above its 32 MiB ceiling are still mapped per pass. On CUDA, large passes keep the device
    busy."""
    return 1024 if device.type == "cuda" else 64


# glibc mallopt parameters (malloc.h) and the values genq sets in engine processes.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for this parameter
TRIM_THRESHOLD_BYTES = 1 << 30


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the kernel after each step.

    glibc serves blocks above a (dynamic) threshold with mmap and returns them on free, so every training
    step and inference pass page-faults its activations in again. Serving blocks up to 32 MiB from the
    heap and trimming it only above 1 GiB free trains faster at large batches (BENCHMARKS.md,
    "Throughput"). The cost: a process keeps up to its peak memory. False where the C library is not
    glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def configure_threads(threads: int | None = None) -> int:
    """Pin intra-op threads (default: every core): one worker process per core set, no oversubscription
    with data work. The worker passes its settings' torch_threads."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


@dataclass
class RunContext:
    on_progress: Callable[[Progress], None] = _ignore
    should_stop: Callable[[], bool] = _never
    # Called with (checkpoint bytes, step). None: no periodic checkpoints.
    on_checkpoint: Callable[[bytes, int], None] | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = None
    resume_from: bytes | None = None
    max_seconds: float | None = None  # training time budget, counted across resumes
    mixed_precision: bool = True  # bf16 autocast in training where the device has native bf16
    device: torch.device = field(default_factory=pick_device)
    # Seconds already spent before this process resumed the run (restored from the checkpoint).
    elapsed_before: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)
    _last_checkpoint: float = field(default_factory=time.monotonic, repr=False)

    def check(self) -> None:
        if self.should_stop():
            raise Canceled()

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._started

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds

    def report(self, phase: str, step: int, total: int, **metrics: float) -> None:
        self.on_progress(Progress(phase, step, total, {k: float(v) for k, v in metrics.items()}))

    def checkpoint_due(self, step: int) -> bool:
        if self.on_checkpoint is None:
            return False
        if self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0:
            return True
        return bool(
            self.checkpoint_every_seconds
            and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_seconds
        )

    def step_done(
        self,
        step: int,
        total: int,
        make_checkpoint: Callable[[], bytes],
        phase: str = "train",
        **metrics: float,
    ) -> bool:
        """Report one finished step; save a checkpoint when due. Returns True when training must stop
        for the time budget. Raises Canceled when the job was canceled."""
        self.report(phase, step, total, **metrics)
        self.check()
        if self.checkpoint_due(step):
            assert self.on_checkpoint is not None
            self.on_checkpoint(make_checkpoint(), step)
            self._last_checkpoint = time.monotonic()
        return self.out_of_time()


def capture_rng(*generators: torch.Generator) -> dict[str, Any]:
    """Every random state a training run draws from, so a resumed run continues exactly."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pack_checkpoint(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unpack_checkpoint(data: bytes, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only: a checkpoint is data; loading one must never run code.
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
