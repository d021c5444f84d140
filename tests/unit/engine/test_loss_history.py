from __future__ import annotations

import pytest

from worker.engine.latents import sample_grid_plan
from worker.engine.loss_history import LossHistory


def test_points_carry_their_real_step() -> None:
    history = LossHistory(["loss"], total_steps=2216, points=440)  # one point every 5 steps
    for step in range(1, 2217):
        history.update(step, {"loss": 1.0})
    assert history.steps[0] == 5 and history.steps[-1] == 2216  # the last step is always recorded
    assert len(history.steps) == len(history.series["loss"]) == 2216 // 5 + 1
    assert history.averages()["loss"] == pytest.approx(1.0)  # debiased from the first step


def test_state_round_trips_and_resumes_are_marked() -> None:
    straight = LossHistory(["a", "b"], total_steps=10, points=5)
    for step in range(1, 11):
        straight.update(step, {"a": step, "b": -step})
    first = LossHistory(["a", "b"], total_steps=10, points=5)
    for step in range(1, 5):
        first.update(step, {"a": step, "b": -step})
    resumed = LossHistory(["a", "b"], total_steps=10, points=5)
    resumed.load_state_dict(first.state_dict())
    resumed.resumed(4)
    for step in range(5, 11):
        resumed.update(step, {"a": step, "b": -step})
    assert resumed.series == straight.series and resumed.steps == straight.steps == [2, 4, 6, 8, 10]
    assert resumed.resumed_at == [4] and straight.resumed_at == []
    assert resumed.png("loss").startswith(b"\x89PNG")


def test_sample_grid_rows_are_classes() -> None:
    seeds, labels, names = sample_grid_plan(3, ["circle", "square", "triangle"])
    assert labels == [0] * 8 + [1] * 8 + [2] * 8 and names == ["circle", "square", "triangle"]
    assert seeds == list(range(8)) * 3  # one latent per column, drawn as every class
    seeds, labels, names = sample_grid_plan(0, [])
    assert seeds == list(range(64)) and labels is None and names is None
    assert len(sample_grid_plan(40, [])[2] or []) == 16
