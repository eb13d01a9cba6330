"""Cine training data for ``kadapt train ads``: prepared 2D+t slices, batches and family line masks.

Each slice ``(T, C, H, W)`` of a ``kadapt data build --frames T`` volume is prepared once, in the scale
the dynamic vSHARP bundle sees (docs/trainer.md, "train ads"; C3 of issue 5):

- ``scale``: :func:`kadapt.kspace.preprocess.acs_scale` of the frame-averaged ACS
  (:func:`kadapt.kspace.dynamic.frame_averaged_acs`; seed 004 eq. B1, the 99.5th percentile of |ACS|);
- ``sens``: :func:`kadapt.kspace.dynamic.frame_averaged_acs_sensitivities` of the normalised k-space --
  the same ACS-estimated maps the gateway computes, so the bundle's ``sens`` input and every ADS encoder
  image (the SENSE image so far) match serving;
- ``target``: the RSS of the fully sampled normalised coil images per frame ``(T, H, W)`` (fastMRI's
  multi-coil ground truth on the normalised scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from kadapt.data.cine import list_cine, read_cine
from kadapt.data.manifest import Split
from kadapt.errors import InvalidInputError
from kadapt.kspace.coils import rss
from kadapt.kspace.dynamic import frame_averaged_acs, frame_averaged_acs_sensitivities
from kadapt.kspace.fft import ifft2c
from kadapt.kspace.preprocess import acs_scale
from kadapt.masks import get_family, make_mask


@dataclass(frozen=True)
class CineSlice:
    """One prepared slice: normalised ``kspace (T, C, H, W)`` complex64, ACS maps ``sens (C, H, W)``,
    RSS ``target (T, H, W)`` float32, and the ``scale`` the k-space was divided by."""

    volume: str
    slice_index: int
    kspace: NDArray[np.complex64]
    sens: NDArray[np.complex64]
    target: NDArray[np.float32]
    scale: float


def prepare_cine_slice(volume: str, index: int, kspace: NDArray[np.complex64], num_acs: int) -> CineSlice:
    """Normalise one fully sampled slice ``kspace (T, C, H, W)`` and derive its maps and target."""
    scale = acs_scale(frame_averaged_acs(kspace, num_acs), num_acs)
    normalised = (kspace / np.float32(scale)).astype(np.complex64)
    sens = frame_averaged_acs_sensitivities(normalised, num_acs)
    target = rss(ifft2c(normalised), axis=1).astype(np.float32)
    return CineSlice(volume, index, normalised, sens, target, scale)


class CineDataset:
    """The prepared slices of one split of a cine dataset folder (``kadapt.data.cine``).

    ``max_slices`` caps the slices (volume by volume, in file order). ``geometry`` is ``(T, C, H, W)``;
    ``volumes`` maps a volume name to the indices of its slices.
    """

    def __init__(self, root: Path, split: Split, num_acs: int, max_slices: int | None = None) -> None:
        paths = list_cine(Path(root), split)
        if not paths:
            raise InvalidInputError(f"cine dataset {root} has no volume in split {split!r}")
        self.split = split
        self.num_acs = num_acs
        self.slices: list[CineSlice] = []
        self.volumes: dict[str, list[int]] = {}
        for path in paths:
            if max_slices is not None and len(self.slices) >= max_slices:
                break
            volume = read_cine(path)
            count = volume.kspace.shape[0]
            take = count if max_slices is None else min(count, max_slices - len(self.slices))
            for index in range(take):
                self.volumes.setdefault(path.stem, []).append(len(self.slices))
                self.slices.append(prepare_cine_slice(path.stem, index, volume.kspace[index], num_acs))
        shapes = {item.kspace.shape for item in self.slices}
        if len(shapes) != 1:
            raise InvalidInputError(f"split {split!r} of {root} mixes geometries {sorted(shapes)}")
        frames, coils, height, width = shapes.pop()
        self.geometry: tuple[int, int, int, int] = (int(frames), int(coils), int(height), int(width))

    def __len__(self) -> int:
        return len(self.slices)


def channels(array: NDArray[np.complexfloating]) -> torch.Tensor:
    """complex ``(...)`` -> float32 tensor ``(..., 2)`` (real, imaginary last)."""
    return torch.from_numpy(np.stack([array.real, array.imag], axis=-1).astype(np.float32))


@dataclass(frozen=True)
class CineBatch:
    """Float32 tensors: fully sampled normalised ``kspace (B, T, C, H, W, 2)``, ACS maps ``sens
    (B, C, H, W, 2)``, RSS ``target (B, T, H, W)``. Masks are applied by the training step (the ADS
    masks depend on the model)."""

    kspace: torch.Tensor
    sens: torch.Tensor
    target: torch.Tensor

    def to(self, device: torch.device) -> CineBatch:
        return CineBatch(self.kspace.to(device), self.sens.to(device), self.target.to(device))


def make_cine_batch(items: list[CineSlice]) -> CineBatch:
    """Stack prepared slices into a :class:`CineBatch`."""
    return CineBatch(
        kspace=channels(np.stack([item.kspace for item in items])),
        sens=channels(np.stack([item.sens for item in items])),
        target=torch.from_numpy(np.stack([item.target for item in items])),
    )


def apply_mask(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``kspace (B, T, C, H, W, 2)`` times a line mask ``(B, T, W)`` (differentiable in the mask)."""
    return kspace * mask[:, :, None, None, :, None]


def family_masks(
    family: str,
    batch: int,
    frames: int,
    width: int,
    acceleration: float,
    num_acs: int,
    rng: np.random.Generator,
) -> NDArray[np.bool_]:
    """``(batch, T, W)`` bool line masks of ``family``: kt families draw ``(T, W)`` per item (``frames``),
    1D families one ``(W,)`` per item broadcast over the frames; every draw from ``rng``."""
    if get_family(family).dims == "kt":
        drawn = make_mask(
            family,
            width=width,
            acceleration=acceleration,
            num_acs=num_acs,
            rng=rng,
            frames=frames,
            batch=batch,
        )
        return np.asarray(drawn, dtype=bool).reshape(batch, frames, width)
    lines = make_mask(family, width=width, acceleration=acceleration, num_acs=num_acs, rng=rng, batch=batch)
    rows = np.asarray(lines, dtype=bool).reshape(batch, 1, width)
    return np.ascontiguousarray(np.broadcast_to(rows, (batch, frames, width)))


def fixed_family_masks(
    families: tuple[str, ...],
    accelerations: tuple[float, ...],
    frames: int,
    width: int,
    num_acs: int,
    seed: int,
) -> dict[tuple[str, float], NDArray[np.bool_]]:
    """One fixed validation mask ``(T, W)`` per (family, R), each from ``SeedSequence(seed, spawn_key=(i,))``,
    so every epoch and a resumed run validate on the same masks."""
    fixed: dict[tuple[str, float], NDArray[np.bool_]] = {}
    pairs = [(family, r) for family in families for r in accelerations]
    for index, (family, acceleration) in enumerate(pairs):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        fixed[(family, acceleration)] = family_masks(family, 1, frames, width, acceleration, num_acs, rng)[0]
    return fixed


def centre_crop(images: NDArray[np.floating], fraction: float = 2.0 / 3.0) -> NDArray[np.floating]:
    """The centre ``fraction`` of the last two axes (H, W) of ``images (..., H, W)`` (issue 5's metric
    region: a centre crop of 2/3 per axis)."""
    height, width = images.shape[-2:]
    keep_h, keep_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return images[..., top : top + keep_h, left : left + keep_w]
