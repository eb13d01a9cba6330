"""Images and measurements for the diffusion-prior pattern learner (seed 003), at a CPU-friendly size.

Seed 003 trains and evaluates on complex MVUE images -- the SENSE combination of the fully sampled coil
images with the coil maps (appendix B.1) -- and measures them with ``A = M F S`` (eq. 10). Here each slice
of a ``build_dataset`` folder (:class:`kadapt.trainer.data.SliceDataset`) is

1. cut to the central ``size x size`` of its k-space (a lower-resolution acquisition of the same field
   of view: the CPU size is 64, the same code runs at full size with ``size=None``);
2. prepared as every trainer slice is (:func:`kadapt.trainer.data.prepare_slice`: ACS scale, ACS coil maps);
3. combined by SENSE into ``image`` (the MVUE of seed 003) and scaled, with its k-space, by one positive
   number so that ``max |image| = 1``: each of the two channels then lies in ``[-1, 1]`` as in seed 003's
   data scaling (appendix B.1), but by a pure scale, so the measurement model stays linear (no offset).

Layouts are the physics module's: ``kspace (C, H, W)`` complex, ``sens (C, H, W)``, ``image (H, W)``;
as tensors ``(B, C, H, W, 2)`` / ``(B, H, W, 2)`` and ``(B, 2, H, W)`` for the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from kadapt.data.manifest import Split
from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import sense_combine
from kadapt.kspace.fft import ifft2c
from kadapt.trainer.data import SliceDataset, prepare_slice

__all__ = [
    "DiffusionSlice",
    "crop_kspace",
    "diffusion_slice",
    "load_diffusion_slices",
    "stack_images",
    "stack_measurement_inputs",
]


@dataclass(frozen=True)
class DiffusionSlice:
    """One slice scaled so ``max |image| = 1``: ``kspace (C, H, W)``, ``sens (C, H, W)``, ``image (H, W)``
    complex64 (``image`` the SENSE combination of the k-space's coil images with ``sens``)."""

    volume: str
    slice_index: int
    kspace: NDArray[np.complex64]
    sens: NDArray[np.complex64]
    image: NDArray[np.complex64]


def crop_kspace(kspace: NDArray[np.complex64], size: int) -> NDArray[np.complex64]:
    """The central ``size x size`` of ``kspace (..., H, W)`` (the fftshift centre ``H // 2`` kept central)."""
    height, width = kspace.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise InvalidInputError(f"cannot crop k-space of {height}x{width} to {size}x{size}")
    top, left = height // 2 - size // 2, width // 2 - size // 2
    return np.ascontiguousarray(kspace[..., top : top + size, left : left + size])


def diffusion_slice(
    volume: str, slice_index: int, kspace: NDArray[np.complex64], num_acs: int, size: int | None
) -> DiffusionSlice:
    """Crop (``size`` or the full matrix), prepare and scale one fully sampled slice ``kspace (C, H, W)``."""
    cropped = kspace if size is None else crop_kspace(kspace, size)
    prepared = prepare_slice(volume, slice_index, cropped, num_acs)
    image = sense_combine(ifft2c(prepared.kspace), prepared.sens)
    peak = float(np.abs(image).max())
    if not peak > 0.0:
        raise InvalidInputError(f"slice {volume}[{slice_index}] has an empty SENSE image")
    return DiffusionSlice(
        volume,
        slice_index,
        (prepared.kspace / peak).astype(np.complex64),
        prepared.sens,
        (image / peak).astype(np.complex64),
    )


def load_diffusion_slices(
    data_dir: Path, split: Split, *, num_acs: int, size: int | None = 64, max_slices: int | None = None
) -> list[DiffusionSlice]:
    """The slices of one split of a dataset folder as :class:`DiffusionSlice` (see the module doc)."""
    dataset = SliceDataset(data_dir, split, num_acs, max_slices)
    return [
        diffusion_slice(item.volume, item.slice_index, item.kspace * np.float32(item.scale), num_acs, size)
        for item in dataset.slices
    ]


def _real(array: NDArray[np.complex64]) -> torch.Tensor:
    return torch.from_numpy(np.stack([array.real, array.imag], axis=-1).astype(np.float32))


def stack_images(slices: Sequence[DiffusionSlice]) -> torch.Tensor:
    """The images as the network's input ``(B, 2, H, W)`` float32 (real, imaginary)."""
    if not slices:
        raise InvalidInputError("no slice to stack")
    return _real(np.stack([item.image for item in slices])).permute(0, 3, 1, 2).contiguous()


def stack_measurement_inputs(slices: Sequence[DiffusionSlice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fully sampled ``kspace (B, C, H, W, 2)`` and ``sens (B, C, H, W, 2)`` float32 of ``slices``."""
    if not slices:
        raise InvalidInputError("no slice to stack")
    return _real(np.stack([item.kspace for item in slices])), _real(np.stack([item.sens for item in slices]))
