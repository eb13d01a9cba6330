"""Population sampling patterns served as ``fixed-mask`` bundles: LOUPE line logits and the energy density.

A ``fixed-mask`` bundle (docs/sampler.md, "Fixed-mask bundles") holds ``mask.npy``, line scores ``(W,)``;
the sampler serves ``ACS ∪ acquired ∪`` the top-scored free lines up to ``round(W / R)`` for every R
in the manifest's ``accelerations``. One score vector therefore serves every budget, and the masks of
different R are nested.

- :class:`LoupeLines`: LOUPE (seed 000 section 1.4 and baseline settings, [BWDS20]) over ky lines:
  learnable logits ``xi (W,)``, probabilities ``sigmoid(slope * xi)``, LOUPE rescaling to the budget's
  sparsity over the free lines (seed 000 eq. 7), straight-through binarisation; the served scores are
  ``slope * xi`` (the same order as the probabilities, but distinct where float32 sigmoids saturate).
- :func:`energy_profile` / :func:`energy_density_scores`: seed 000 section 3.1's energy-density sampler
  (each training image's k-space energy per line, normalised per image, averaged), turned into a fixed
  line order whose every top-k prefix is a draw from that density (see the function).

:func:`served_fixed_plan` (what the sampler serves from such scores) lives in the core,
:mod:`kadapt.bundles.sampler_masks`, and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import JsonValue
from torch import Tensor, nn

from kadapt.bundles import Bundle, BundleGeometry, Manifest, TensorSpec, utc_now, write_bundle
from kadapt.bundles.sampler_masks import served_fixed_plan
from kadapt.errors import InvalidInputError
from kadapt.masks import acs_mask
from kadapt.masks.mechanics import sparsity_for
from kadapt.masks.torch_ops import loupe_rescale, stochastic_threshold_binarise
from kadapt.masks.torch_ops import topk_plan as torch_topk_plan
from kadapt.trainer.data import PreparedSlice

__all__ = [
    "MASK_FILE",
    "LoupeLines",
    "energy_density_scores",
    "energy_profile",
    "served_fixed_plan",
    "served_lines",
    "write_fixed_mask_bundle",
]

MASK_FILE = "mask.npy"
_PROBABILITY_EPS = 1e-3


def energy_profile(slices: Sequence[PreparedSlice]) -> NDArray[np.float64]:
    """Mean normalised k-space energy per ky line ``(W,)`` over ``slices`` (each ``kspace (C, H, W)``).

    Seed 000 section 3.1 ("energy-density based sampler"): per image, the energy of each line (here
    summed over coils and readout), normalised to sum 1 for that image, then averaged over the
    training images. Sums to 1.
    """
    if not slices:
        raise InvalidInputError("the energy profile needs at least one training slice")
    total: NDArray[np.float64] | None = None
    for item in slices:
        energy = (np.abs(item.kspace.astype(np.complex128)) ** 2).sum(axis=(0, 1))
        share = energy / max(float(energy.sum()), np.finfo(np.float64).tiny)
        total = share if total is None else total + share
    if total is None:  # unreachable: slices is non-empty; kept for the type checker
        raise InvalidInputError("no slice")
    profile: NDArray[np.float64] = total / len(slices)
    return profile


def energy_density_scores(
    profile: NDArray[np.floating[Any]], rng: np.random.Generator
) -> NDArray[np.float32]:
    """Line scores ``(W,)`` in ``(0, 1]`` from an energy ``profile (W,)`` (>= 0), one draw from ``rng``.

    Seed 000 samples its energy-density baseline from the density; the sampler serves a deterministic
    top-k. Both hold with one successive-sampling order: the Gumbel-top-k keys ``log(profile) + G``
    (G ~ Gumbel(0, 1), the :mod:`kadapt.masks.sampling` trick) rank the lines so that for every budget k
    the k best lines are a weighted sample without replacement from the density -- also restricted to
    the free lines, so the served mask at any R is the ``energy-density`` family's draw. The ranks
    (distinct) are stored, so the plan never depends on a tie-break. Ranking the profile itself instead
    would serve the centred block (the density sits at low frequencies), i.e. ``centre-only``.
    """
    energy = np.asarray(profile, dtype=np.float64)
    if energy.ndim != 1 or not np.all(np.isfinite(energy)) or np.any(energy < 0):
        raise InvalidInputError(f"profile must be a finite (W,) array >= 0, got shape {energy.shape}")
    keys = np.full(energy.shape, -np.inf)
    keys[energy > 0] = np.log(energy[energy > 0])
    gumbel = np.asarray(rng.gumbel(size=energy.shape[0]), dtype=np.float64)
    keys = keys + gumbel
    order = np.lexsort((-gumbel, -keys))  # descending keys; zero-energy lines last, in random order
    width = energy.shape[0]
    scores = np.empty(width, dtype=np.float32)
    scores[order] = np.arange(width, 0, -1, dtype=np.float32) / width
    return scores


def served_lines(
    scores: NDArray[np.floating[Any]], num_acs: int, accelerations: Sequence[float]
) -> dict[str, JsonValue]:
    """``{"R4": [ky, ...], ...}``: the served plan of ``scores (W,)`` at each R (for the manifest)."""
    return {
        f"R{r:g}": [int(ky) for ky in np.flatnonzero(served_fixed_plan(scores, num_acs, r))]
        for r in accelerations
    }


def _npy_bytes(array: NDArray[np.float32]) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_fixed_mask_bundle(
    scores: NDArray[np.floating[Any]],
    repository: Path,
    *,
    name: str,
    version: str,
    accelerations: Sequence[float],
    num_acs: int,
    training: dict[str, JsonValue],
    validation: dict[str, JsonValue],
    code_version: str,
) -> Bundle:
    """Write ``scores (W,)`` as ``mask.npy`` (float32) in a ``fixed-mask`` bundle ``name/version`` of
    ``repository`` (geometry ``ky = W`` only: a line pattern is coil- and readout-agnostic); returns it
    loaded, checksums verified. ``training`` must carry a ``description`` (shown by ``/v1/policies``)."""
    values = np.asarray(scores, dtype=np.float32)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise InvalidInputError(f"fixed-mask scores must be a finite (W,) array, got shape {values.shape}")
    if not isinstance(training.get("description"), str):
        raise InvalidInputError(f"bundle {name!r}: training needs a 'description' string")
    width = int(values.shape[0])
    manifest = Manifest(
        name=name,
        version=version,
        kind="fixed-mask",
        geometry=BundleGeometry(ky=width),
        accelerations=tuple(float(r) for r in accelerations),
        num_acs=num_acs,
        outputs=(TensorSpec(name="scores", shape=(width,), dtype="float32"),),
        normalisation="none",
        training=training,
        validation=validation,
        code_version=code_version,
        created=utc_now(),
    )
    return write_bundle(repository, manifest, {MASK_FILE: _npy_bytes(values)})


class LoupeLines(nn.Module):
    """LOUPE over ky lines (seed 000 section 1.4 / [BWDS20], one logit per line): ``xi (W,)``.

    ``slope`` sharpens ``p = sigmoid(slope * xi)`` (LOUPE's slope); the logits start so that ``p`` is
    uniform on ``(eps, 1 - eps)``, drawn from ``generator`` (no global seeding).
    """

    def __init__(self, width: int, slope: float, generator: torch.Generator) -> None:
        super().__init__()
        if width < 1 or not slope > 0:
            raise InvalidInputError(f"LoupeLines needs width >= 1 and slope > 0, got {width}, {slope}")
        self.slope = float(slope)
        uniform = torch.rand(width, generator=generator) * (1 - 2 * _PROBABILITY_EPS) + _PROBABILITY_EPS
        self.logits = nn.Parameter(torch.logit(uniform) / self.slope)

    def probabilities(self) -> Tensor:
        """``sigmoid(slope * xi)`` ``(W,)``."""
        return torch.sigmoid(self.slope * self.logits)

    def scores(self) -> NDArray[np.float32]:
        """The served line scores ``(W,)`` float32: ``slope * xi`` (monotone in the probabilities)."""
        served: NDArray[np.float32] = (self.slope * self.logits).detach().cpu().numpy().astype(np.float32)
        return served

    def sample_masks(
        self,
        batch: int,
        num_acs: int,
        budget: int,
        *,
        binariser: str,
        generator: torch.Generator,
        threshold_slope: float = 10.0,
    ) -> Tensor:
        """Training masks ``(batch, W)`` float 0/1 with straight-through gradients to the logits.

        The probabilities over the free lines are LOUPE-rescaled to the sparsity that yields
        ``budget - num_acs`` new lines in expectation (seed 000 eq. 7); ``binariser`` ``"bernoulli"``
        thresholds at uniforms from ``generator`` with the slope-``threshold_slope`` sigmoid surrogate
        gradient (seed 004 Alg. A2 / A3; budget exact in expectation), ``"topk"`` takes the exact top
        budget (identity gradient, the served rule). The ACS lines are always 1 and carry no gradient.
        """
        width = self.logits.shape[0]
        acs = torch.from_numpy(acs_mask(width, num_acs)).to(self.logits.device)
        free = (~acs).expand(batch, width)
        sparsity = sparsity_for(budget, num_acs, width)
        rescaled = loupe_rescale(self.probabilities().expand(batch, width), sparsity, free=free)
        if binariser == "bernoulli":
            bits = stochastic_threshold_binarise(rescaled, generator, threshold_slope)
        elif binariser == "topk":
            hard = torch_topk_plan(rescaled.detach(), acs.expand(batch, width), budget).to(rescaled.dtype)
            bits = hard + rescaled - rescaled.detach()
        else:
            raise InvalidInputError(f"unknown LOUPE binariser {binariser!r}; use 'bernoulli' or 'topk'")
        return torch.where(acs, torch.ones_like(bits), bits * free.to(bits.dtype))
