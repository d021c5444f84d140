"""Per-item latents and the small latent-space math shared by the GAN and the VAE.

Item i of a generation job draws its latent from its own generator seeded with its own seed, so it is the
same image whatever the batch size, the chunking or the worker that runs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

SAMPLE_BLOCK = 64  # rows per generator/decoder pass when sampling (see in_fixed_blocks)


def item_seed(job_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for item `index` of a job seeded `job_seed` (stable across versions)."""
    digest = hashlib.blake2b(f"{job_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def latents_for_seeds(seeds: Sequence[int], dim: int, truncation: float = 1.0) -> torch.Tensor:
    """(B, dim) standard-normal latents, row i drawn from seed i alone.

    truncation < 1 redraws (per item, deterministically) every coordinate whose magnitude exceeds it
    - the truncation trick: sharper, less varied samples. truncation >= 1 keeps plain N(0, I)."""
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        z = torch.randn(dim, generator=generator)
        if truncation < 1.0:
            if truncation <= 0:
                raise ValueError("truncation must be positive")
            for _ in range(64):  # each redraw keeps a coordinate with p >= 0.07 at t=0.1
                outside = z.abs() > truncation
                if not outside.any():
                    break
                z[outside] = torch.randn(int(outside.sum()), generator=generator)
            z.clamp_(-truncation, truncation)
        rows.append(z)
    return torch.stack(rows) if rows else torch.empty(0, dim)


def in_fixed_blocks(
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    rows: torch.Tensor,
    extra: torch.Tensor | None = None,
    block: int = SAMPLE_BLOCK,
) -> torch.Tensor:
    """fn(rows, extra) computed on blocks of exactly `block` rows (the last padded with zero rows), the
    padding cut off and the blocks concatenated: (len(rows), ...).

    Eval-mode networks treat rows independently in exact arithmetic, but kernels pick their blocking by
    batch size, which changes float rounding in the last bits (and so, sometimes, a uint8 pixel: measured
    for the VAE decoder, batch 1 against batch 300). With every pass the same size, row i's result depends
    on row i alone, so item i is bit-identical whatever the job's chunking."""
    if not len(rows):
        return fn(rows, extra)  # nothing to pad: one empty pass gives the right trailing shape
    outputs = []
    for start in range(0, len(rows), block):
        count = min(block, len(rows) - start)
        part = None if extra is None else _padded(extra[start : start + block], block)
        outputs.append(fn(_padded(rows[start : start + block], block), part)[:count])
    return torch.cat(outputs)


def _padded(rows: torch.Tensor, block: int) -> torch.Tensor:
    missing = block - len(rows)
    return rows if missing == 0 else torch.cat([rows, rows.new_zeros(missing, *rows.shape[1:])])


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents a, b (D,) at fractions t (T,) -> (T, D).

    For Gaussian latents the straight line passes through low-norm, atypical points; the great circle
    keeps every frame at a typical norm. Falls back to a straight line when a and b are (anti)parallel."""
    a_unit, b_unit = a / a.norm(), b / b.norm()
    omega = torch.arccos((a_unit * b_unit).sum().clamp(-1.0, 1.0))
    t = t.reshape(-1, 1)
    so = torch.sin(omega)
    if so.abs() < 1e-4:  # (anti)parallel: the great circle is not unique
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def masked_psnr(restored: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB over the masked pixels only, images in [-1, 1] of shape (B, C, H, W), mask (H, W)
    True where pixels were missing. Peak-to-peak range is 2."""
    region = mask.bool().expand_as(original)
    mse = (restored - original)[region].pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(4.0 / mse)).item()


GRID_COLUMNS = 8
GRID_MAX_CLASS_ROWS = 16


FILL_TOLERANCE = 1.5  # inpaint: fits within this factor of the best known-pixel error are averaged


def blend_close_fits(
    fills: torch.Tensor, errors: torch.Tensor, tolerance: float = FILL_TOLERANCE
) -> torch.Tensor:
    """fills (R, N, C, H, W): R candidate completions of N images; errors (R, N): each one's error on
    the known pixels. -> (N, C, H, W): per image, the mean of the candidates within `tolerance` times
    its best error. Candidates that fit the known pixels about as well are about as plausible; the
    hidden pixels are uncertain, and the mean of plausible guesses is nearer the truth in squared error
    (PSNR) than any one of them. tolerance 1 keeps the best alone (ties averaged)."""
    close = (errors <= tolerance * errors.min(dim=0).values).to(fills.dtype)  # (R, N)
    weights = close / close.sum(dim=0)
    return (fills * weights[..., None, None, None]).sum(dim=0)


def sample_grid_plan(
    num_classes: int, class_names: Sequence[str]
) -> tuple[list[int], list[int] | None, list[str] | None]:
    """(seeds, labels, row labels) of a run's sample grid, GRID_COLUMNS images a row.

    Unconditional: 8x8 fixed seeds. Conditional: one row per class (the first 16), named after it, and
    the same seeds in every row, so each column shows one latent drawn as every class."""
    if not num_classes:
        return list(range(GRID_COLUMNS * GRID_COLUMNS)), None, None
    rows = min(num_classes, GRID_MAX_CLASS_ROWS)
    seeds = [column for _ in range(rows) for column in range(GRID_COLUMNS)]
    labels = [row for row in range(rows) for _ in range(GRID_COLUMNS)]
    names = [str(class_names[row]) if row < len(class_names) else str(row) for row in range(rows)]
    return seeds, labels, names
