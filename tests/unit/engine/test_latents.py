from __future__ import annotations

import torch

from worker.engine.latents import blend_close_fits


def test_blend_close_fits_averages_the_fits_near_the_best() -> None:
    fills = torch.stack([torch.full((2, 1, 2, 2), v) for v in (0.0, 1.0, 3.0)])  # (R=3, N=2, 1, 2, 2)
    errors = torch.tensor([[1.0, 5.0], [1.4, 1.0], [9.0, 1.2]])  # (R, N)
    blended = blend_close_fits(fills, errors, tolerance=1.5)
    assert blended.shape == (2, 1, 2, 2)
    assert torch.allclose(blended[0], torch.full((1, 2, 2), 0.5))  # fits 0 and 1; fit 2 is far off
    assert torch.allclose(blended[1], torch.full((1, 2, 2), 2.0))  # fits 1 and 2
    best_only = blend_close_fits(fills, errors, tolerance=1.0)
    assert torch.equal(best_only[0], fills[0, 0]) and torch.equal(best_only[1], fills[1, 1])
