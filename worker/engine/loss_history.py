"""The loss curve's data: debiased moving averages of named losses, kept every N steps with the step
they belong to, and the steps where training resumed after an interruption.

The curve is drawn against these steps: a run of 2,216 steps recorded every 5 steps ends its x axis at
2,216, not at its 443rd point. The state travels in the checkpoint, so a resumed run continues the same
curve and marks where it picked up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.engine.images import loss_curve_png

HISTORY_POINTS = 1000  # the curve keeps at most about this many points
DECAY = 0.98  # moving-average weight of the previous value


class LossHistory:
    def __init__(self, names: Iterable[str], total_steps: int, points: int = HISTORY_POINTS) -> None:
        self.total = total_steps
        self.every = max(1, total_steps // points)
        self.series: dict[str, list[float]] = {name: [] for name in names}
        self.steps: list[int] = []  # the training step of each recorded point
        self.resumed_at: list[int] = []
        self._sums = dict.fromkeys(self.series, 0.0)  # biased moving averages (start from 0)
        self._step = 0

    def update(self, step: int, values: dict[str, float]) -> None:
        """Fold in the losses of step `step` (1-based: the count of steps done); record a point every
        `every` steps and at the last step."""
        self._step = step
        for name in self.series:
            self._sums[name] = DECAY * self._sums[name] + (1 - DECAY) * float(values[name])
        if step % self.every == 0 or step == self.total:
            averages = self.averages()
            for name, series in self.series.items():
                series.append(averages[name])
            self.steps.append(step)

    def averages(self) -> dict[str, float]:
        """The debiased moving average of each loss (as TensorBoard smooths)."""
        debias = 1.0 - DECAY ** max(self._step, 1)
        return {name: total / debias for name, total in self._sums.items()}

    def resumed(self, step: int) -> None:
        self._step = step
        self.resumed_at.append(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "steps": self.steps,
            "resumed_at": self.resumed_at,
            "sums": self._sums,
            "step": self._step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.series = {name: list(values) for name, values in state["series"].items()}
        self.steps = list(state["steps"])
        self.resumed_at = list(state["resumed_at"])
        self._sums = dict(state["sums"])
        self._step = int(state["step"])

    def png(self, y_label: str) -> bytes:
        return loss_curve_png(self.series, steps=self.steps, resumed_at=self.resumed_at, y_label=y_label)
