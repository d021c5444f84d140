"""A Gaussian mixture fitted to a trained VAE's latents: a sampling prior closer to where the decoder
was trained than N(0, I) (the aggregate posterior leaves "holes" in the standard normal).

Stored in the checkpoint as plain tensors; sampling draws item i from its own seed alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.engine.latents import item_seed, latents_for_seeds

REG_COVAR = 1e-4  # ridge added to every covariance: keeps Cholesky factors valid for tight clusters


@dataclass
class MixturePrior:
    weights: torch.Tensor  # (K,) sums to 1
    means: torch.Tensor  # (K, D)
    scale_tril: torch.Tensor  # (K, D, D) lower Cholesky factors of the covariances

    @property
    def latent_dim(self) -> int:
        return int(self.means.shape[1])

    def latents(
        self, seeds: Sequence[int], truncation: float = 1.0, temperature: float = 1.0
    ) -> torch.Tensor:
        """(B, D) float32 latents, row i from seeds[i] alone: a component drawn with a generator seeded
        from the item's seed, then mean + temperature * L @ eps with eps = latents_for_seeds (so the
        truncation trick applies to the within-component noise)."""
        eps = latents_for_seeds(seeds, self.latent_dim, truncation)  # (B, D)
        cumulative = self.weights.double().cumsum(0)
        picks = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(item_seed(int(seed), 1))
            u = torch.rand((), generator=generator, dtype=torch.float64) * cumulative[-1]
            picks.append(min(int(torch.searchsorted(cumulative, u, right=True)), len(cumulative) - 1))
        index = torch.tensor(picks, dtype=torch.long)
        spread = (self.scale_tril[index] @ eps.unsqueeze(-1)).squeeze(-1)
        return (self.means[index] + temperature * spread).float()

    def to_state(self) -> dict[str, Any]:
        return {"weights": self.weights, "means": self.means, "scale_tril": self.scale_tril}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MixturePrior:
        return cls(state["weights"].float(), state["means"].float(), state["scale_tril"].float())


def fit_mixture(latents: torch.Tensor, components: int, seed: int) -> MixturePrior:
    """Full-covariance Gaussian mixture (sklearn, fixed random_state) fitted to (N, D) latents."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    points = latents.detach().double().cpu().numpy()
    components = max(1, min(components, len(points)))
    mixture = GaussianMixture(
        n_components=components,
        covariance_type="full",
        reg_covar=REG_COVAR,
        max_iter=200,
        random_state=seed % 2**32,
    )
    with warnings.catch_warnings():
        # A capped EM run is still a usable prior; the warning must not fail a training job.
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(points)
    scale_tril = np.linalg.cholesky(mixture.covariances_)
    return MixturePrior(
        torch.from_numpy(mixture.weights_).float(),
        torch.from_numpy(mixture.means_).float(),
        torch.from_numpy(scale_tril).float(),
    )
