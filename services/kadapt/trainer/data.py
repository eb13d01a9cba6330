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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from kadapt.data.manifest import DatasetManifest, Split, load_manifest
from kadapt.errors import InvalidInputError
from kadapt.fastmri.files import read_fastmri
from kadapt.kspace.coils import acs_sensitivities, rss, sense_combine
from kadapt.kspace.fft import fft2c, ifft2c
from kadapt.kspace.preprocess import acs_block, acs_scale
from kadapt.masks import line_budget, make_mask


@dataclass(frozen=True)
class PreparedSlice:
    """One slice: normalised fully sampled ``kspace (C, H, W)`` complex64, ACS maps ``sens (C, H, W)``,
    normalised RSS ``target (H, W)`` complex64 (SENSE phase), and the ACS ``scale`` it was divided by.

    ``acs`` is the ACS block ``(C, H, num_acs)`` of the k-space as read, before normalisation -- what a
    scanner sends the sampler (``--policy`` plans are computed from it); ``None`` for derived slices
    (flipped), whose ACS is ``acs_block(kspace) * scale``."""

    volume: str
    slice_index: int
    kspace: NDArray[np.complex64]
    sens: NDArray[np.complex64]
    target: NDArray[np.complex64]
    scale: float
    acs: NDArray[np.complex64] | None = None

    def raw_acs(self, num_acs: int) -> NDArray[np.complex64]:
        """The ACS block ``(C, H, num_acs)`` on the data's own scale (see ``acs``)."""
        if self.acs is not None and self.acs.shape[-1] == num_acs:
            return self.acs
        return (acs_block(self.kspace, num_acs) * np.float32(self.scale)).astype(np.complex64)


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
    acs = np.ascontiguousarray(acs_block(kspace, num_acs), dtype=np.complex64)
    return PreparedSlice(volume, slice_index, normalised, sens, target, scale, acs)


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


#: Image-domain flips of a slice: ``(along the readout H, along the phase encode W)``.
Flips = tuple[bool, bool]
NO_FLIPS: Flips = (False, False)
ALL_FLIPS: tuple[Flips, ...] = ((False, False), (False, True), (True, False), (True, True))


def draw_flips(rng: np.random.Generator) -> Flips:
    """Each flip with probability 1/2 (two uniforms from ``rng``)."""
    flips = rng.random(2) < 0.5
    return (bool(flips[0]), bool(flips[1]))


def flip_kspace(kspace: NDArray[np.complex64], flips: Flips) -> NDArray[np.complex64]:
    """k-space ``(..., H, W)`` of the image mirrored along H and / or W (``flips``)."""
    axes = tuple(axis for axis, flip in zip((-2, -1), flips, strict=True) if flip)
    if not axes:
        return kspace
    return fft2c(np.flip(ifft2c(kspace), axis=axes)).astype(np.complex64)


def flip_slice(item: PreparedSlice, flips: Flips) -> PreparedSlice:
    """``item`` mirrored in the image domain along the readout H and / or the phase encode W: k-space
    through the coil images, maps and target flipped alike (``item`` itself for :data:`NO_FLIPS`)."""
    axes = tuple(axis for axis, flip in zip((-2, -1), flips, strict=True) if flip)
    if not axes:
        return item
    kspace = flip_kspace(item.kspace, flips)
    sens = np.ascontiguousarray(np.flip(item.sens, axis=axes))
    target = np.ascontiguousarray(np.flip(item.target, axis=axes))
    return PreparedSlice(item.volume, item.slice_index, kspace, sens, target, item.scale)


def random_flip(item: PreparedSlice, rng: np.random.Generator) -> PreparedSlice:
    """``item`` mirrored in the image domain along the readout H and / or the phase encode W (each with
    probability 1/2, drawn from ``rng``): k-space through the coil images, maps and target flipped alike.
    A data augmentation for the small simulated training set (80 slices by default)."""
    return flip_slice(item, draw_flips(rng))


def check_budgets(width: int, accelerations: tuple[float, ...], num_acs: int) -> None:
    """Raise :class:`InvalidAccelerationError` (via :func:`kadapt.masks.line_budget`) when an R leaves
    fewer lines than the ACS block, before any data is loaded."""
    for acceleration in accelerations:
        line_budget(width, acceleration, num_acs)


#: A training item's identity for per-slice masks: (index into the dataset's slices, its flips).
SliceKey = tuple[int, Flips]


class SlicePlans(Protocol):
    """Per-slice masks of one sampler policy (``kadapt.trainer.policy_masks.PolicyPlans``)."""

    def masks(self, keys: Sequence[SliceKey], acceleration: float) -> NDArray[np.bool_]:
        """``(len(keys), W)`` bool: the policy's plan for each slice (and flips) at R."""
        ...


class MaskSampler:
    """Draws the masks of a training batch: one source and one R per batch (uniformly from the lists),
    a mask per item, all from the explicit generator ``rng``.

    Sources are the mask ``families`` (an independent draw per item) followed by the sampler
    ``policies`` (name -> :class:`SlicePlans`: the policy's plan for each item's slice, no draw).
    With families only, the generator's stream is what it was before policies existed.
    """

    def __init__(
        self,
        families: tuple[str, ...],
        accelerations: tuple[float, ...],
        width: int,
        num_acs: int,
        rng: np.random.Generator,
        policies: Mapping[str, SlicePlans] | None = None,
    ) -> None:
        self.families = families
        self.policies: dict[str, SlicePlans] = dict(policies or {})
        self.sources: tuple[str, ...] = (*families, *self.policies)
        if not self.sources:
            raise InvalidInputError("no mask source: give mask families and / or sampler policies")
        self.accelerations = accelerations
        self.width = width
        self.num_acs = num_acs
        self.rng = rng

    def choose(self) -> tuple[str, float]:
        """``(source, R)`` of the next batch."""
        source = self.sources[int(self.rng.integers(len(self.sources)))]
        acceleration = self.accelerations[int(self.rng.integers(len(self.accelerations)))]
        return source, acceleration

    def masks(
        self, source: str, acceleration: float, batch: int, keys: Sequence[SliceKey] | None = None
    ) -> NDArray[np.bool_]:
        """``(batch, W)`` bool: a family's independent draws, or a policy's plans for ``keys``."""
        if source in self.policies:
            if keys is None or len(keys) != batch:
                raise InvalidInputError(f"policy {source!r} needs one slice key per item ({batch})")
            return self.policies[source].masks(keys, acceleration)
        masks = make_mask(
            source,
            width=self.width,
            acceleration=acceleration,
            num_acs=self.num_acs,
            rng=self.rng,
            batch=batch,
        )
        return np.asarray(masks, dtype=bool).reshape(batch, self.width)

    def draw(self, batch: int) -> tuple[str, float, NDArray[np.bool_]]:
        """``(family, R, masks (batch, W) bool)`` for families only (policies need slice keys)."""
        source, acceleration = self.choose()
        return source, acceleration, self.masks(source, acceleration, batch)


def draw_batch(
    dataset: SliceDataset,
    sampler: MaskSampler,
    batch_size: int,
    rng: np.random.Generator,
    augment_rng: np.random.Generator | None,
) -> tuple[str, float, list[PreparedSlice], NDArray[np.bool_]]:
    """One training batch: slices picked from ``rng`` (with replacement only when the split is smaller
    than the batch), the sampler's source and R, flips from ``augment_rng`` (``None``: no
    augmentation), and the masks -- a policy's plan of each item's own (flipped) slice.
    Returns ``(source, R, items, masks (B, W))``."""
    picks = rng.choice(len(dataset), size=batch_size, replace=len(dataset) < batch_size)
    source, acceleration = sampler.choose()
    flips = [draw_flips(augment_rng) if augment_rng is not None else NO_FLIPS for _ in picks]
    items = [flip_slice(dataset.slices[int(i)], f) for i, f in zip(picks, flips, strict=True)]
    keys = [(int(i), f) for i, f in zip(picks, flips, strict=True)]
    return source, acceleration, items, sampler.masks(source, acceleration, batch_size, keys)


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
