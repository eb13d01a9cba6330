"""Training data: slices of one split of a ``build_dataset`` folder, and masks drawn per batch.

Each slice is prepared once, in the scale the exported bundle sees (the bundle contract, docs/trainer.md):

- ``scale``: :func:`kadapt.kspace.preprocess.acs_scale` (99.5th percentile of ``|ACS|``, seed 004 eq. B1).
  Every mask contains the ACS block, so the scale of the masked k-space equals that of the fully sampled
  one and is computed once per slice;
- ``sens``: :func:`kadapt.kspace.coils.acs_sensitivities` of the ACS block — the same block for every
  mask, so the maps are cached per (slice, ``num_acs``) by preparing them here;
- ``target``: fastMRI's multi-coil ground truth, the root-sum-of-squares of the fully sampled coil images
  (what ``reconstruction_rss``, ``kadapt bench recon`` and the replay score against), divided by the scale;
  stored complex with the phase of the SENSE combination (same maps), which the magnitude losses ignore.
  (Training against the SENSE combination instead left the noise floor of the RSS background unlearned:
  a MoDL that scored SSIM 0.84 against its SENSE target scored 0.53 against the RSS one.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from kadapt.data.manifest import DatasetManifest, Split, load_manifest
from kadapt.errors import InvalidInputError
from kadapt.fastmri.files import read_fastmri
from kadapt.kspace.coils import acs_sensitivities, rss, sense_combine
from kadapt.kspace.fft import fft2c, ifft2c
from kadapt.kspace.preprocess import acs_scale
from kadapt.masks import line_budget, make_mask


@dataclass(frozen=True)
class PreparedSlice:
    """One slice: normalised fully sampled ``kspace (C, H, W)`` complex64, ACS maps ``sens (C, H, W)``,
    normalised RSS ``target (H, W)`` complex64 (SENSE phase), and the ACS ``scale`` it was divided by."""

    volume: str
    slice_index: int
    kspace: NDArray[np.complex64]
    sens: NDArray[np.complex64]
    target: NDArray[np.complex64]
    scale: float


@dataclass(frozen=True)
class Batch:
    """Model inputs and target as float32 tensors, complex last: ``masked_kspace (B, C, H, W, 2)``,
    ``mask (B, 1, 1, W, 1)``, ``sens (B, C, H, W, 2)``, ``target (B, H, W, 2)``."""

    masked_kspace: torch.Tensor
    mask: torch.Tensor
    sens: torch.Tensor
    target: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(
            *(tensor.to(device) for tensor in (self.masked_kspace, self.mask, self.sens, self.target))
        )


def default_num_acs(width: int) -> int:
    """The ACS block used when the config gives none: ``W // 16`` (8 lines at W = 128), at least 4.

    One block serves every trained R, so it must leave free lines at the highest R: ``W // 8`` would make
    every R = 8 mask at W = 128 the ACS block alone (round(128 / 8) = 16 lines)."""
    return max(4, width // 16)


def prepare_slice(
    volume: str, slice_index: int, kspace: NDArray[np.complex64], num_acs: int
) -> PreparedSlice:
    """Normalise one fully sampled slice ``kspace (C, H, W)`` complex64 and derive its maps and target."""
    scale = acs_scale(kspace, num_acs)
    normalised = (kspace / scale).astype(np.complex64)
    sens = acs_sensitivities(normalised, num_acs)
    coil_images = ifft2c(normalised)
    phase = np.exp(1j * np.angle(sense_combine(coil_images, sens)))
    target = (rss(coil_images) * phase).astype(np.complex64)
    return PreparedSlice(volume, slice_index, normalised, sens, target, scale)


class SliceDataset:
    """The slices of one split (``train`` or ``val``, never mixed) of a dataset folder, prepared.

    ``max_slices`` caps the slices taken (volume by volume, in build order). ``geometry`` is
    ``(C, H, W)``; ``volumes`` maps a volume name to the indices of its slices in :attr:`slices`.
    """

    def __init__(self, data_dir: Path, split: Split, num_acs: int, max_slices: int | None = None) -> None:
        self.manifest: DatasetManifest = load_manifest(data_dir)
        records = self.manifest.volumes_in(split)
        if not records:
            raise InvalidInputError(f"dataset {data_dir} has no volume in split {split!r}")
        self.split = split
        self.num_acs = num_acs
        self.slices: list[PreparedSlice] = []
        self.volumes: dict[str, list[int]] = {}
        for record in records:
            if max_slices is not None and len(self.slices) >= max_slices:
                break
            volume = read_fastmri(Path(data_dir) / record.file)
            take = volume.slices if max_slices is None else min(volume.slices, max_slices - len(self.slices))
            for index in range(take):
                self.volumes.setdefault(record.name, []).append(len(self.slices))
                self.slices.append(prepare_slice(record.name, index, volume.kspace[index], num_acs))
        shapes = {item.kspace.shape for item in self.slices}
        if len(shapes) != 1:
            raise InvalidInputError(f"split {split!r} of {data_dir} mixes geometries {sorted(shapes)}")
        coils, height, width = shapes.pop()
        self.geometry: tuple[int, int, int] = (int(coils), int(height), int(width))

    def __len__(self) -> int:
        return len(self.slices)


def _channels(array: NDArray[np.complex64]) -> torch.Tensor:
    return torch.from_numpy(np.stack([array.real, array.imag], axis=-1).astype(np.float32))


def make_batch(items: list[PreparedSlice], masks: NDArray[np.bool_]) -> Batch:
    """Stack ``items`` with one line mask each, ``masks (B, W)`` bool, into a :class:`Batch`."""
    if masks.ndim != 2 or masks.shape[0] != len(items):
        raise InvalidInputError(f"need masks (B={len(items)}, W), got shape {masks.shape}")
    kspace = np.stack([item.kspace for item in items])
    line_mask = masks[:, None, None, :].astype(np.float32)
    # + 0.0 turns -0.0 into 0.0, so unacquired samples leak no sign (science.md, fastMRI traps).
    masked = (kspace * line_mask + 0.0).astype(np.complex64)
    return Batch(
        masked_kspace=_channels(masked),
        mask=torch.from_numpy(line_mask[..., None]),
        sens=_channels(np.stack([item.sens for item in items])),
        target=_channels(np.stack([item.target for item in items])),
    )


def random_flip(item: PreparedSlice, rng: np.random.Generator) -> PreparedSlice:
    """``item`` mirrored in the image domain along the readout H and / or the phase encode W (each with
    probability 1/2, drawn from ``rng``): k-space through the coil images, maps and target flipped alike.
    A data augmentation for the small simulated training set (80 slices by default)."""
    flips = rng.random(2) < 0.5
    axes = tuple(axis for axis, flip in zip((-2, -1), flips, strict=True) if flip)
    if not axes:
        return item
    kspace = fft2c(np.flip(ifft2c(item.kspace), axis=axes)).astype(np.complex64)
    sens = np.ascontiguousarray(np.flip(item.sens, axis=axes))
    target = np.ascontiguousarray(np.flip(item.target, axis=axes))
    return PreparedSlice(item.volume, item.slice_index, kspace, sens, target, item.scale)


def check_budgets(width: int, accelerations: tuple[float, ...], num_acs: int) -> None:
    """Raise :class:`InvalidAccelerationError` (via :func:`kadapt.masks.line_budget`) when an R leaves
    fewer lines than the ACS block, before any data is loaded."""
    for acceleration in accelerations:
        line_budget(width, acceleration, num_acs)


class MaskSampler:
    """Draws the masks of a training batch: one family and one R per batch (uniformly from the lists),
    an independent mask per item, all from the explicit generator ``rng``."""

    def __init__(
        self,
        families: tuple[str, ...],
        accelerations: tuple[float, ...],
        width: int,
        num_acs: int,
        rng: np.random.Generator,
    ) -> None:
        self.families = families
        self.accelerations = accelerations
        self.width = width
        self.num_acs = num_acs
        self.rng = rng

    def draw(self, batch: int) -> tuple[str, float, NDArray[np.bool_]]:
        """``(family, R, masks (batch, W) bool)``."""
        family = self.families[int(self.rng.integers(len(self.families)))]
        acceleration = self.accelerations[int(self.rng.integers(len(self.accelerations)))]
        masks = make_mask(
            family,
            width=self.width,
            acceleration=acceleration,
            num_acs=self.num_acs,
            rng=self.rng,
            batch=batch,
        )
        return family, acceleration, np.asarray(masks, dtype=bool).reshape(batch, self.width)


def validation_masks(
    families: tuple[str, ...], accelerations: tuple[float, ...], width: int, num_acs: int, seed: int
) -> dict[tuple[str, float], NDArray[np.bool_]]:
    """One fixed mask ``(W,)`` per (family, R), each from its own ``SeedSequence(seed, spawn_key=(i,))``,
    so every epoch (and a resumed run) validates on the same masks."""
    fixed: dict[tuple[str, float], NDArray[np.bool_]] = {}
    for index, (family, acceleration) in enumerate(
        (family, acceleration) for family in families for acceleration in accelerations
    ):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        mask = make_mask(family, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng)
        fixed[(family, acceleration)] = np.asarray(mask, dtype=bool).reshape(width)
    return fixed
