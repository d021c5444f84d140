"""Engine unit tests run on one thread: the machine is shared, and results must not depend on thread count."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)
